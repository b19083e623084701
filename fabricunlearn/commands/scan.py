"""`fabricunlearn scan`: the secrets (emails, IP addresses, keys) of every document of a corpus, as scan rows.

The corpus is read as a stream (:mod:`fabricunlearn.scan.sources`) by this process and scanned in chunks by
``--workers`` processes; chunks are written in input order, so the output does not depend on the number of
workers. The output is written through :class:`fabricunlearn.data.resumable.ResumableJSONL` (as `probe`'s): its
record also holds the counts so far, and running the same command again after an interruption goes on from the
next document, checking that the settings and the last document done are the same. Only documents with secrets
are written; OUTPUT and its partial files are owner-only (0600), because they hold secret values, which the
terminal never shows in full unless ``--show_values``.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

# Bumped when a change to the scanner changes what it finds, so that a partial scan is not resumed across it.
SCANNER_VERSION = 2
CHUNK_CHARS = 4_000_000  # a chunk also ends after this many characters, which bounds the memory per chunk

_WORKER_SCANNER = None


def _init_worker(plugins: list[str], tags: list[str], in_pool: bool = False) -> None:
    global _WORKER_SCANNER
    from fabricunlearn.scan import Scanner

    if in_pool:  # Ctrl-C is the main process's to handle: it stops the pool and keeps what was written
        import signal

        signal.signal(signal.SIGINT, signal.SIG_IGN)
    _WORKER_SCANNER = Scanner(plugins, tags)


def _scan_chunk(items: list[tuple[object, str, str | None]]) -> list[dict]:
    """Scan rows (with secrets only) for (doc_id, text, filename) items, in their order."""
    from fabricunlearn.scan.keys import DEFAULT_FILENAME

    rows = []
    for doc_id, text, filename in items:
        secrets = _WORKER_SCANNER.scan(text, filename or DEFAULT_FILENAME)
        if secrets:
            rows.append({"doc_id": doc_id, "text": text, "secrets": secrets})
    return rows


def _chunks(docs: Iterator, chunk_docs: int) -> Iterator[list]:
    chunk, chars = [], 0
    for doc in docs:
        chunk.append(doc)
        chars += len(doc.text or "")
        if len(chunk) >= chunk_docs or chars >= CHUNK_CHARS:
            yield chunk
            chunk, chars = [], 0
    if chunk:
        yield chunk


def _default_workers() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _new_state() -> dict:
    return {"rows": 0, "bytes": 0, "last_doc_id": None, "scanned": 0, "characters": 0, "with_secrets": 0,
            "skipped": {}, "secrets": {}, "examples": {}}  # fmt: skip


def _record(state: dict, chunk: list, rows: list[dict]) -> None:
    """Count a chunk into the state (the documents, bytes and last doc_id are the output's to count)."""
    skipped = Counter(state["skipped"])
    skipped.update(doc.skip for doc in chunk if doc.skip)
    state["skipped"] = dict(sorted(skipped.items()))
    state["scanned"] += sum(1 for doc in chunk if not doc.skip)
    state["characters"] += sum(len(doc.text) for doc in chunk if not doc.skip)
    state["with_secrets"] += len(rows)
    for row in rows:
        for s in row["secrets"]:
            by_type = state["secrets"].setdefault(s["tag"], {})
            by_type[s["type"]] = by_type.get(s["type"], 0) + 1
            state["examples"].setdefault(s["tag"], {"type": s["type"], "value": s["value"], "doc_id": row["doc_id"]})


def scan(
    input: Path,
    output: Path,
    workers: int | None = None,
    key_plugins: str = "default",
    tags: str = "EMAIL,IP_ADDRESS,KEY",
    max_chars: int = 1_000_000,
    chunk_docs: int = 256,
    summary: Path | None = None,
    show_values: bool = False,
    restart: bool = False,
    progress: bool = True,
) -> Path:
    """Find the secrets (emails, IP addresses, keys and tokens) of every document of a corpus, as CodeEraser does.

    Writes one JSONL row per document that has secrets: {"doc_id", "text", "secrets": [{"tag", "type", "value",
    "start", "end"}]}, with text[start:end] == value (character offsets, end exclusive), sorted by start; the
    file is owner-only. Emails and IPs: CodeEraser's expressions and filters (no private, loopback or documentation
    addresses, no example/test emails); keys: detect-secrets plugins, the gibberish check and the hash and
    placeholder filters. Binary, non-UTF-8, empty and too large documents are skipped and counted. An interrupted
    scan resumes when the same command is run again.

    Args:
        input: A JSONL, Parquet or CSV corpus (a `text` or `content` column, optional `doc_id`), a folder of source
            files (doc_id = the path in the folder), or a folder saved by `datasets`' save_to_disk.
        output: Where to write the scan rows (JSONL; owner-only, as it holds the secret values).
        workers: Processes that scan (default: the number of CPUs); the output is the same for any number.
        key_plugins: `default` (CodeEraser's detect-secrets plugins, plus the keyword and basic-auth plugins and
            fabricunlearn's npm-token and password plugins), `codeeraser` (the paper's list exactly), or a
            comma-separated mix of these and plugin class names (e.g. `codeeraser,KeywordDetector`).
        tags: Which kinds to find, comma-separated: EMAIL, IP_ADDRESS, KEY.
        max_chars: Documents longer than this many characters are skipped (and counted).
        chunk_docs: Documents per chunk (the unit of work of a process, and of resumption).
        summary: Also write the counts (per tag and type, skip reasons) to this JSON file.
        show_values: Print example secrets in full instead of redacted (`AKIA…X3Q (20 chars)`).
        restart: Start over, discarding an unfinished OUTPUT.partial and replacing an existing OUTPUT.
        progress: Show a progress bar.
    """
    from fabricunlearn.config import RecipeError
    from fabricunlearn.data.resumable import ResumableJSONL
    from fabricunlearn.scan import TAGS
    from fabricunlearn.scan.keys import resolve_plugins
    from fabricunlearn.scan.sources import count_documents, input_kind, iter_documents

    input, output = Path(input), Path(output)
    kind = input_kind(input)  # a missing or unknown input fails here, before anything is written
    workers = _default_workers() if workers is None else workers
    if workers < 1 or chunk_docs < 1 or max_chars < 1:
        raise RecipeError("--workers, --chunk_docs and --max_chars must be >= 1")
    tag_list = [t.strip().upper() for t in tags.split(",") if t.strip()]
    if not tag_list or set(tag_list) - set(TAGS):
        raise RecipeError(f"--tags: {tags!r}; use a comma-separated subset of {','.join(TAGS)}")
    try:
        plugins = resolve_plugins(key_plugins)
    except ValueError as err:
        raise RecipeError(f"--key_plugins: {err}") from None
    if output.resolve() == input.resolve():
        raise RecipeError(f"--output: {output} is the input; write the scan rows elsewhere")
    settings = {
        "input": str(input.resolve()),
        "kind": kind,
        "key_plugins": plugins,
        "tags": tag_list,
        "max_chars": max_chars,
        "scanner_version": SCANNER_VERSION,
    }
    out = ResumableJSONL(output, settings, _new_state(), restart=restart, what="scan")
    state = out.state
    exclude = frozenset(p.absolute() for p in out.files + ([summary] if summary else []))
    docs = iter_documents(input, max_chars, exclude)
    done = state["rows"]
    for i in range(done):  # what an earlier run did: skip it, checking that the input is the same
        doc = next(docs, None)
        if i == done - 1:
            out.check_skipped(i, None if doc is None else doc.doc_id, input)

    from tqdm import tqdm

    started = time.perf_counter()
    total = count_documents(input, exclude) if progress else None
    bar = tqdm(total=total, initial=done, unit="doc", disable=not progress, dynamic_ncols=True)
    pool, finished = None, False
    try:
        if workers == 1:
            _init_worker(plugins, tag_list)
            results = (
                (chunk, _scan_chunk([(d.doc_id, d.text, d.filename) for d in chunk if not d.skip]))
                for chunk in _chunks(docs, chunk_docs)
            )
        else:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            # spawn, not fork: this process may hold threads (tqdm, pyarrow) that a fork would copy mid-lock
            pool = ProcessPoolExecutor(
                workers,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_init_worker,
                initargs=(plugins, tag_list, True),
            )
            results = _in_order(pool, _chunks(docs, chunk_docs), 2 * workers)
        for chunk, rows in results:
            _record(state, chunk, rows)
            out.append(rows, len(chunk), chunk[-1].doc_id)
            bar.update(len(chunk))
            bar.set_postfix(secrets=sum(n for t in state["secrets"].values() for n in t.values()))
        finished = True
    finally:
        bar.close()
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        out.close(finished)
    report = {
        "input": str(input),
        "output": str(output),
        **{k: v for k, v in settings.items() if k != "input"},
        "documents": state["rows"],
        **{k: v for k, v in state.items() if k not in ("rows", "bytes", "last_doc_id", "examples")},
        "resumed_at": done,
        "seconds": round(time.perf_counter() - started, 2),
    }
    if summary is not None:
        from fabricunlearn.data.formats import write_json

        write_json(summary, report)
    _print_summary(report, state["examples"], workers, show_values)
    return output


def _in_order(pool, chunks: Iterator[list], in_flight: int) -> Iterator[tuple[list, list[dict]]]:
    """(chunk, rows) in input order, with at most ``in_flight`` chunks read ahead (the corpus stays on disk)."""
    from collections import deque

    pending: deque = deque()
    for chunk in chunks:
        items = [(d.doc_id, d.text, d.filename) for d in chunk if not d.skip]
        pending.append((chunk, pool.submit(_scan_chunk, items)))
        if len(pending) >= in_flight:
            chunk, future = pending.popleft()
            yield chunk, future.result()
    while pending:
        chunk, future = pending.popleft()
        yield chunk, future.result()


def _print_summary(report: dict, examples: dict, workers: int, show_values: bool) -> None:
    from fabricunlearn.scan import redact

    resumed = f" (resumed after {report['resumed_at']:,})" if report["resumed_at"] else ""
    n_secrets = sum(n for t in report["secrets"].values() for n in t.values())
    print(
        f"scanned {report['scanned']:,} of {report['documents']:,} documents ({report['characters'] / 1e6:.1f} M "
        f"characters) in {report['seconds']:.1f} s with {workers} worker{'s' * (workers > 1)}{resumed}: "
        f"{n_secrets:,} secrets in {report['with_secrets']:,} documents -> {report['output']} (owner-only)"
    )
    if report["skipped"]:
        print("  skipped: " + ", ".join(f"{n:,} {reason}" for reason, n in report["skipped"].items()))
    for tag, by_type in report["secrets"].items():
        types = ", ".join(f"{name} {n:,}" for name, n in sorted(by_type.items(), key=lambda kv: -kv[1]))
        example = examples[tag]
        shown = example["value"] if show_values else redact(example["value"])
        print(f"  {tag:<11}{sum(by_type.values()):>8,}  {types}")
        print(f"  {'':<11}{'':>8}  e.g. {shown} in {example['doc_id']!r}")
