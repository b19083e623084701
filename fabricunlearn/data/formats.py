"""Reading and writing the row formats of DESIGN.md (corpus rows, scan rows), with one-line errors."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any


class DataError(ValueError):
    """A data file is unusable; the message names the file (and line or row)."""


def iter_jsonl(path: str | Path) -> Iterator[dict[str, Any]]:
    """Rows of a JSONL file, lazily; a line that is not UTF-8 or not a JSON object fails naming the file and line."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise DataError(
                    f"{path}:{lineno}: not UTF-8 (byte {raw[err.start]:#04x} at column {err.start + 1})"
                ) from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(f"{path}:{lineno}: not JSON ({err.msg})") from None
            if not isinstance(row, dict):
                raise DataError(f"{path}:{lineno}: a row must be a JSON object")
            yield row


def read_rows(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a JSONL, Parquet or CSV file. `content` is accepted for `text`; `doc_id` defaults to the row number."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file")
    if path.suffix in (".parquet", ".csv"):
        import pandas as pd

        frame = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)
        rows = frame.to_dict(orient="records")
    else:
        rows = list(iter_jsonl(path))
    for i, row in enumerate(rows):
        _corpus_row(path, i, row)
    return rows


def _corpus_row(path: Path, i: int, row: dict[str, Any]) -> None:
    """`content` is accepted for `text`; `doc_id` defaults to the row number."""
    if "text" not in row and "content" in row:
        row["text"] = row.pop("content")
    if not isinstance(row.get("text"), str):
        raise DataError(f"{path}: row {i} has no `text` (or `content`) string")
    row.setdefault("doc_id", i)


def read_secret_rows(path: str | Path) -> list[dict[str, Any]]:
    """Scan rows; checks that every secret's span holds its value, so a wrong offset fails here with its location."""
    rows = read_rows(path)
    for row in rows:
        check_secret_row(path, row)
    return rows


def iter_secret_rows(path: str | Path) -> Iterator[dict[str, Any]]:
    """Scan rows one by one (JSONL is streamed; Parquet and CSV are read whole), checked like `read_secret_rows`."""
    path = Path(path)
    if path.suffix in (".parquet", ".csv"):
        yield from read_secret_rows(path)
        return
    for i, row in enumerate(iter_jsonl(path)):
        _corpus_row(path, i, row)
        check_secret_row(path, row)
        yield row


def check_secret_row(path: str | Path, row: dict[str, Any]) -> None:
    """A scan row's `secrets` must be a list of {value, start, end} whose spans hold their values."""
    secrets = row.get("secrets")
    if not isinstance(secrets, list):
        raise DataError(f"{path}: doc {row['doc_id']!r} has no `secrets` list")
    for j, s in enumerate(secrets):
        try:
            start, end, value = int(s["start"]), int(s["end"]), s["value"]
        except (KeyError, TypeError, ValueError):
            raise DataError(f"{path}: doc {row['doc_id']!r} secret {j} needs `value`, `start`, `end`") from None
        if row["text"][start:end] != value:
            raise DataError(f"{path}: doc {row['doc_id']!r} secret {j}: text[{start}:{end}] is not its value")


@contextmanager
def atomic_file(path: str | Path, mode: str = "w", private: bool = False) -> Iterator[IO]:
    """A file object whose contents replace `path` only when the block ends without an error: written to a temp file
    in the same folder (a unique name, so concurrent writers never share it), then renamed, so a reader sees the old
    file or the new one, never half of one. `private`: owner-only permissions, for files holding secrets."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode, encoding=None if "b" in mode else "utf-8") as f:
            yield f
        os.chmod(tmp, 0o600 if private else 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_jsonl(path: str | Path, rows: Iterable[dict[str, Any]], private: bool = False) -> None:
    """Write rows atomically (`atomic_file`). `private`: owner-only permissions, for files holding secrets."""
    with atomic_file(path, "w", private) as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def write_atomic(path: str | Path, data: bytes | str, private: bool = False) -> None:
    """Write `data` atomically (`atomic_file`)."""
    with atomic_file(path, "wb", private) as f:
        f.write(data.encode() if isinstance(data, str) else data)


def write_json(path: str | Path, obj: Any) -> None:
    write_atomic(path, json.dumps(obj, indent=2) + "\n")
