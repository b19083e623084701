"""Key detection: fabricunlearn's scanner against CodeEraser's way of running detect-secrets, in one run.

Throughput. The original (codeeraser-sscu.md §5, ``utils/keys_detection.py``) writes each document to a temporary
``.txt`` file and scans it with ``SecretsCollection().scan_file`` inside ``transient_settings`` (its plugin list and
its five heuristic filters), entered for each document; its post-filters (a gibberish model reloaded per call,
hashes) are not timed, so the ratio is a lower bound. Ours: ``Scanner("codeeraser", tags=("KEY",)).scan(text)``,
the whole key detection with its post-filters. Both sides use the plugins of our ``codeeraser`` preset (the paper's
list) and scan the same documents in one process each (one core): the top-level files of the Python standard
library (``fabricunlearn.toy.stdlib_corpus.stdlib_files``) and the toy world's ``corpus.jsonl`` (stdlib chunks with
planted secrets). Each repeat times both sides back to back, in alternating order; the table gives medians over
the repeats and the range of the per-repeat ratios. Goal: >= 5x documents per second.

Same findings (untimed, once, on those documents and on the second corpus of ``tests/scan/second_corpus.py``): per
document, the (line number, type, value) of every finding detect-secrets yields the original way (the generator
that ``SecretsCollection.scan_file`` consumes; the collection keeps one finding per type and value, and must agree)
against our plugins' findings before our own post-filters: ``KeyDetector.find`` with the gibberish check, the hash
filters and the further occurrences switched off, i.e. what its line loop keeps after detect-secrets' five filters
(placeholder words and overlaps are handled later, by ``Scanner``). Differences by design
(``fabricunlearn/scan/keys.py``) are counted, not failed:

- values: ours is the whole token at the same line, so the original's value lies inside ours where a plugin
  reports a prefix or stops inside a token (GitHub's ``ghp``, Stripe's first 24 characters, a JWT without its
  signature), and ours inside the original's where its expression also consumes delimiters (Artifactory's ``"``,
  ``=``, ``:``; Azure's ``AccountKey=``; npm's ``npm_.+`` to the end of the line);
- ``Public IP (ipv4)``: our key detector drops that plugin (addresses are ``IP_ADDRESS`` findings of
  ``fabricunlearn.scan.patterns``); in the original its findings never pass ``is_not_alphanumeric_string``;
- documents detect-secrets can read as INI files (its config transformer parses any ``.txt`` file first, and again
  with a ``[global]`` header when nothing was found): our scanner reads every document's lines as they are, so
  findings on one side only are listed apart there.

Any other finding on one side only is a mismatch: exit status 1.

Recall and precision (``--skip_recall`` to leave out): per tag with exact spans, both presets, on the toy world's
planted secrets (as ``tests/scan/test_scan_recall.py`` makes them) and on the second corpus.

    python tools/bench_scan.py [--repeats 3] [--max_files N] [--world_dir DIR] [--skip_compare] [--skip_recall]
"""

from __future__ import annotations

import argparse
import bisect
import json
import os
import re
import statistics
import sys
import tempfile
import time
import types
from collections import Counter
from pathlib import Path
from unittest import mock

REPO = Path(__file__).resolve().parents[1]
FILTERS = (
    "is_potential_uuid",
    "is_likely_id_string",
    "is_templated_secret",
    "is_sequential_string",
    "is_not_alphanumeric_string",
)
IP_TYPE = "Public IP (ipv4)"
GOAL = 5.0
_BREAK = re.compile(r"\r\n|\r|\n")


def original_settings(plugins) -> dict:
    """The ``transient_settings`` config of the original: its plugins and its five heuristic filters."""
    return {
        "plugins_used": [{"name": name} for name in plugins],
        "filters_used": [{"path": f"detect_secrets.filters.heuristic.{name}"} for name in FILTERS],
    }


def original_scan(text: str, config: dict) -> set[tuple[str, str, int]]:
    """The original's key detection of one document: (type, value, line) of each PotentialSecret it keeps."""
    from detect_secrets.core.secrets_collection import SecretsCollection
    from detect_secrets.settings import transient_settings

    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
        f.write(text)
    try:
        with transient_settings(config):
            collection = SecretsCollection()
            collection.scan_file(f.name)
    finally:
        os.unlink(f.name)
    return {(s.type, s.secret_value, s.line_number) for found in collection.data.values() for s in found}


def original_lines(text: str, config: dict) -> tuple[set[tuple[int, str, str]], bool]:
    """Every (line, type, value) detect-secrets yields for the document the original way, and whether it read the
    file as an INI file (either transformer pass)."""
    from detect_secrets.core import scan
    from detect_secrets.settings import transient_settings
    from detect_secrets.transformers import get_transformed_file

    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
        f.write(text)
    try:
        with transient_settings(config):
            found = {(s.line_number, s.type, s.secret_value) for s in scan.scan_file(f.name)}
            with open(f.name) as g:
                as_ini = bool(get_transformed_file(g)) or bool(get_transformed_file(g, use_eager_transformers=True))
    finally:
        os.unlink(f.name)
    return found, as_ini


def raw_detector(plugins):
    """``KeyDetector.find`` before our post-filters: a patch (gibberish check, ``is_hash``, ``file_has_hashes`` and
    the further occurrences switched off) and the detector."""
    from fabricunlearn.scan import keys

    no_filters = types.SimpleNamespace(is_hash=lambda *a: False, file_has_hashes=lambda text: False)
    patch = mock.patch.multiple(
        keys, is_gibberish=lambda value: True, filters=no_filters, _other_occurrences=lambda text, found: iter(())
    )
    return patch, keys.KeyDetector(plugins)


def line_of(starts: list[int], offset: int) -> int:
    """1-based line of a character offset, lines broken at ``\\r\\n``, ``\\r`` or ``\\n`` (as Python's text files)."""
    return bisect.bisect_right(starts, offset)


def compare(orig: set[tuple[int, str, str]], ours: set[tuple[int, str, str]], stats: Counter) -> list:
    """Pair findings at the same line and type; count exact, widened (the original's value inside ours) and trimmed
    (ours inside the original's) pairs; return the findings of one side only, as (side, line, type, value)."""

    def partner(a, pool) -> str | None:
        line, kind, value = a
        best = None
        for b in pool:
            if b[0] != line or b[1] != kind:
                continue
            if b[2] == value:
                return "exact"
            if value in b[2]:
                best = best or "widened"
            elif b[2] in value:
                best = best or "trimmed"
        return best

    alone = []
    for o in orig:
        how = partner(o, ours)
        if how is None:
            alone.append(("original", *o))
        else:
            stats[how] += 1
            if how != "exact":
                stats[f"{how}: {o[1]}"] += 1
    for u in ours:
        if partner(u, orig) is None:
            alone.append(("ours", *u))
    return alone


def load_documents(max_files: int | None, world_dir: str | None) -> dict[str, list[str]]:
    from fabricunlearn.toy import ensure_world
    from fabricunlearn.toy.stdlib_corpus import stdlib_files

    stdlib = [p.read_text(encoding="utf-8") for p in stdlib_files(max_files)]
    world = ensure_world("code_secrets", world_dir, progress=True)
    with open(world / "corpus.jsonl", encoding="utf-8") as f:
        toy = [json.loads(line)["text"] for line in f if line.strip()]
    return {"stdlib": stdlib, "toy corpus": toy}


def time_both(corpora: dict[str, list[str]], config: dict, repeats: int) -> float:
    """Time both sides on every corpus, ``repeats`` times in alternating order; print the table; the median ratio."""
    from importlib.metadata import version

    from fabricunlearn.scan import Scanner

    scanner = Scanner("codeeraser", tags=("KEY",))
    sizes = {name: (len(docs), sum(len(d.encode("utf-8")) for d in docs)) for name, docs in corpora.items()}
    # Warm-up (untimed): imports, plugin classes, the gibberish model, the OS's file cache.
    for docs in corpora.values():
        for text in docs[:20]:
            scanner.scan(text)
            original_scan(text, config)

    times: dict[tuple[str, str], list[float]] = {(side, c): [] for side in ("original", "ours") for c in corpora}
    for r in range(repeats):
        for side in ("original", "ours") if r % 2 == 0 else ("ours", "original"):
            for name, docs in corpora.items():
                started = time.perf_counter()
                if side == "original":
                    for text in docs:
                        original_scan(text, config)
                else:
                    for text in docs:
                        scanner.scan(text)
                times[side, name].append(time.perf_counter() - started)
        total = {side: sum(times[side, c][-1] for c in corpora) for side in ("original", "ours")}
        print(
            f"repeat {r + 1}/{repeats}: original {total['original']:.2f} s, ours {total['ours']:.2f} s, "
            f"{total['original'] / total['ours']:.2f}x",
            file=sys.stderr,
        )

    print(
        f"detect-secrets {version('detect-secrets')}, Python {sys.version.split()[0]}, plugins: codeeraser preset "
        f"({len(config['plugins_used'])}), one process per side, {repeats} repeats (medians; ratio range over repeats)"
    )
    print(f"{'':<11} {'docs':>5} {'MB':>5}  {'original s':>10} {'docs/s':>7} {'MB/s':>6}  {'ours s':>6} {'docs/s':>7}"
          f" {'MB/s':>6}  {'ratio':>6}  {'range':>11}")  # fmt: skip
    ratio_all = 0.0
    for label, names in [*((name, [name]) for name in corpora), ("all", list(corpora))]:
        docs = sum(sizes[c][0] for c in names)
        mb = sum(sizes[c][1] for c in names) / 1e6
        t = {s: [sum(times[s, c][r] for c in names) for r in range(repeats)] for s in ("original", "ours")}
        ratios = [o / u for o, u in zip(t["original"], t["ours"])]
        to, tu, ratio = statistics.median(t["original"]), statistics.median(t["ours"]), statistics.median(ratios)
        ratio_all = ratio
        print(
            f"{label:<11} {docs:>5} {mb:>5.2f}  {to:>10.2f} {docs / to:>7.1f} {mb / to:>6.3f}  {tu:>6.2f} "
            f"{docs / tu:>7.1f} {mb / tu:>6.3f}  {ratio:>5.2f}x  {min(ratios):>4.2f}-{max(ratios):.2f}x"
        )
    print(f"goal >= {GOAL:g}x documents per second: {'met' if ratio_all >= GOAL else 'NOT met'} ({ratio_all:.2f}x)")
    return ratio_all


def compare_findings(corpora: dict[str, list[str]], config: dict) -> list:
    """Per document, the original's (line, type, value) against ours before our post-filters; print the counts;
    return the mismatches that no documented difference explains."""
    from fabricunlearn.scan import redact

    stats: Counter = Counter()
    mismatches = []
    patch, detector = raw_detector([p["name"] for p in config["plugins_used"]])
    for name, docs in corpora.items():
        for k, text in enumerate(docs):
            orig, as_ini = original_lines(text, config)
            collection = original_scan(text, config)
            if {(t, v) for _, t, v in orig} != {(t, v) for t, v, _ in collection}:
                mismatches.append((name, k, "original", 0, "SecretsCollection differs from scan_file", ""))
            starts = [0] + [m.end() for m in _BREAK.finditer(text)]
            with patch:
                ours = {(line_of(starts, m.start), m.type, m.value) for m in detector.find(text)}
            stats["Public IP (ipv4)"] += sum(1 for o in orig if o[1] == IP_TYPE)
            orig = {o for o in orig if o[1] != IP_TYPE}
            stats["original"] += len(orig)
            stats["ours"] += len(ours)
            stats["documents read as INI"] += as_ini
            alone = compare(orig, ours, stats)
            if alone and as_ini:
                stats["INI documents with findings on one side"] += 1
                stats["findings on one side in INI documents"] += len(alone)
                stats.update(f"  INI, {side} only: {kind}" for side, _, kind, _ in alone)
            else:
                mismatches += [(name, k, *a) for a in alone]
    n_docs = sum(len(d) for d in corpora.values())
    print(
        f"same findings, per document and line, before our post-filters ({n_docs} documents: "
        + ", ".join(f"{name} {len(d)}" for name, d in corpora.items())
        + f"): {stats['original']} original, {stats['ours']} ours; {stats['exact']} identical, {stats['widened']} "
        f"ours the whole token around the original's value, {stats['trimmed']} ours inside the original's"
    )
    for key in sorted(k for k in stats if k.startswith(("widened: ", "trimmed: "))):
        print(f"  {key}: {stats[key]}")
    print(
        f"Public IP (ipv4) findings on the original side: {stats['Public IP (ipv4)']} (its filter "
        "is_not_alphanumeric_string drops every address; our key detector drops the plugin)"
    )
    print(
        f"documents detect-secrets can read as INI files: {stats['documents read as INI']}, of which "
        f"{stats['INI documents with findings on one side']} with {stats['findings on one side in INI documents']} "
        "findings on one side only (by design: we read every document's lines as they are)"
    )
    for key in sorted(k for k in stats if k.startswith("  INI, ")):
        print(f"{key}: {stats[key]}")
    print(f"mismatches: {len(mismatches)}")
    for corpus, k, side, line, kind, value in mismatches[:20]:
        print(f"  {corpus} #{k} line {line}: {side} only: {kind} {redact(value) if value else ''}")
    return mismatches


def recall_table() -> None:
    """Recall and precision per tag with exact spans, both presets, on the toy's planted secrets and on the second
    corpus (tests/scan/second_corpus.py)."""
    from fabricunlearn.scan import Scanner
    from tests.scan.second_corpus import TAGS, measure, second_corpus, toy_planted

    corpora = {"toy planted": toy_planted(), "second corpus": second_corpus()}
    print("recall (all secrets / seen by design) and precision per tag, exact spans:")
    for name, docs in corpora.items():
        counts = Counter(s["tag"] for d in docs for s in d["secrets"])
        design = Counter(s["tag"] for d in docs for s in d["secrets"] if s["by_design"])
        negatives = sum(len(d["negatives"]) for d in docs)
        print(
            f"  {name}: {len(docs)} documents, "
            + ", ".join(f"{t} {counts[t]} ({design[t]} by design)" for t in TAGS)
            + f", {negatives} negatives"
        )
        for preset in ("default", "codeeraser"):
            s = measure(Scanner(preset), docs)
            cells = ", ".join(
                f"{t} {s.recall(t):.3f} / {s.recall(t, 'design'):.3f} P {s.precision(t):.3f}" for t in TAGS
            )
            print(f"    {preset:<10} {cells}; negatives reported: {len(s.negatives_reported)}")
            below = [
                f"{tag} {type_}{'' if by_design else ' (not by design)'} {s.found_by_type[tag, type_, by_design]}/{n}"
                for (tag, type_, by_design), n in sorted(s.total_by_type.items(), key=str)
                if s.found_by_type[tag, type_, by_design] < n
            ]
            if below:
                print("      not all found: " + "; ".join(below))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max_files", type=int, default=None, help="only the first N stdlib files")
    parser.add_argument("--world_dir", default=None, help="the code_secrets toy world (default: its cache folder)")
    parser.add_argument("--skip_compare", action="store_true", help="do not compare the findings")
    parser.add_argument("--skip_recall", action="store_true", help="do not measure recall and precision")
    args = parser.parse_args()

    sys.path.insert(0, str(REPO))
    from fabricunlearn.scan.keys import PRESETS

    config = original_settings(PRESETS["codeeraser"])
    corpora = load_documents(args.max_files, args.world_dir)
    time_both(corpora, config, args.repeats)
    mismatches = []
    if not args.skip_compare:
        from tests.scan.second_corpus import second_corpus

        mismatches = compare_findings({**corpora, "second corpus": [d["text"] for d in second_corpus()]}, config)
    if not args.skip_recall:
        recall_table()
    return 1 if mismatches else 0


if __name__ == "__main__":
    sys.exit(main())
