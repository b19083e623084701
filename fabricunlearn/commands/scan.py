"""`fabricunlearn scan`: the secrets (emails, IP addresses, keys) of every document of a corpus, as scan rows.

The corpus is read as a stream (:mod:`fabricunlearn.scan.sources`) by this process and scanned in chunks by
``--workers`` processes; chunks are written in input order, so the output does not depend on the number of
workers. Each chunk is appended to ``OUTPUT.partial`` (flushed and synced), then ``OUTPUT.partial.json`` records
the settings, how many documents are done, how many bytes of the partial file are theirs, and the counts so far;
the finished file is renamed to OUTPUT. Running the same command again after an interruption cuts the partial file
back to what the record covers and goes on from the next document, checking that the settings and the last
document done are the same. Only documents with secrets are written; OUTPUT and its partial files are owner-only
(0600), because they hold secret values, which the terminal never shows in full unless ``--show_values``.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

# Bumped when a change to the scanner changes what it finds, so that a partial scan is not resumed across it.
SCANNER_VERSION = 1
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


def _write_private_json(path: Path, obj: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(json.dumps(obj, indent=1, ensure_ascii=False, default=str) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _same_id(a: object, b: object) -> bool:
    return json.loads(json.dumps(a, default=str)) == json.loads(json.dumps(b, default=str))


def _new_state() -> dict:
    return {"documents": 0, "bytes": 0, "last_doc_id": None, "scanned": 0, "characters": 0, "with_secrets": 0,
            "skipped": {}, "secrets": {}, "examples": {}}  # fmt: skip


def _record(state: dict, chunk: list, rows: list[dict], size: int) -> None:
    state["documents"] += len(chunk)
    state["bytes"] = size
    state["last_doc_id"] = chunk[-1].doc_id
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
    if output.exists() and not restart:
        raise RecipeError(f"--output: {output} exists (a finished scan); pass --restart to scan again")
    partial = output.with_name(output.name + ".partial")
    sidecar = output.with_name(output.name + ".partial.json")
    settings = {
        "input": str(input.resolve()),
        "kind": kind,
        "key_plugins": plugins,
        "tags": tag_list,
        "max_chars": max_chars,
        "scanner_version": SCANNER_VERSION,
    }
    state = _new_state()
    if partial.exists() and not restart:
        record = json.loads(sidecar.read_text()) if sidecar.exists() else None
        if record is None:
            raise RecipeError(f"{partial} has no {sidecar.name} to resume from; pass --restart")
        changed = [k for k in settings if record["settings"].get(k) != settings[k]]
        if changed:
            raise RecipeError(
                f"{partial} was started with another {changed[0]} ({record['settings'].get(changed[0])!r}); "
                "run with the same settings to resume, or pass --restart"
            )
        state = record["state"]
        os.truncate(partial, state["bytes"])  # drop a chunk written after the last record (a kill in between)
    else:
        output.parent.mkdir(parents=True, exist_ok=True)
        os.close(os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600))
        os.chmod(partial, 0o600)
        _write_private_json(sidecar, {"settings": settings, "state": state})

    excluded = [output, partial, sidecar, sidecar.with_name(f".{sidecar.name}.tmp")] + ([summary] if summary else [])
    exclude = frozenset(p.absolute() for p in excluded)
    docs = iter_documents(input, max_chars, exclude)
    done = state["documents"]
    for i in range(done):  # what an earlier run did: skip it, checking that the input is the same
        doc = next(docs, None)
        if doc is None or (i == done - 1 and not _same_id(doc.doc_id, state["last_doc_id"])):
            raise RecipeError(f"{partial} does not match {input} (document {i}); pass --restart to scan from the start")

    from tqdm import tqdm

    started = time.perf_counter()
    total = count_documents(input, exclude) if progress else None
    bar = tqdm(total=total, initial=done, unit="doc", disable=not progress, dynamic_ncols=True)
    pool = None
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
        with partial.open("a", encoding="utf-8") as f:
            for chunk, rows in results:
                f.write("".join(json.dumps(row, ensure_ascii=False, default=str) + "\n" for row in rows))
                f.flush()
                os.fsync(f.fileno())
                _record(state, chunk, rows, f.tell())
                _write_private_json(sidecar, {"settings": settings, "state": state})
                bar.update(len(chunk))
                bar.set_postfix(secrets=sum(n for t in state["secrets"].values() for n in t.values()))
    except BaseException:
        if state["documents"] == 0 and partial.exists():  # nothing to resume from: leave no trace
            partial.unlink()
            sidecar.unlink(missing_ok=True)
        raise
    finally:
        bar.close()
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
    os.replace(partial, output)
    sidecar.unlink(missing_ok=True)
    report = {
        "input": str(input),
        "output": str(output),
        **{k: v for k, v in settings.items() if k != "input"},
        **{k: v for k, v in state.items() if k not in ("bytes", "last_doc_id", "examples")},
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
