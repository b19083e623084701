"""A corpus as a stream of documents, in a fixed order, without holding it in memory.

Kinds of input (DESIGN.md): a JSONL, Parquet or CSV file with a ``text`` (or ``content``) column and an optional
``doc_id`` (default: the row number, counting from 0); a folder saved by ``datasets``' ``save_to_disk``; or any
other folder, whose files are the documents (``doc_id`` = the path relative to the folder, with ``/``).

Every row or file yields a :class:`Document`, also those that cannot be scanned, which carry the reason, so that
the n-th document is the same whether it is scanned or skipped, and a resumed scan can count its way back:

- ``binary``: a file with a NUL byte in its first 8 kB (git's test);
- ``invalid_utf8``: a file, or a JSONL line, that is not UTF-8, or a JSON string with an unpaired surrogate (it
  could not be written back as UTF-8). Such a document is skipped rather than decoded with replacement characters:
  the model being probed was trained on some decoding of those bytes, and a guess would put the spans of
  ``scan`` rows on text that the model never saw;
- ``empty``: no text, only whitespace, or a null;
- ``too_large``: more than ``max_chars`` characters (a file: more than ``4 * max_chars`` bytes, not even read);
- ``symlink``: a link in a folder (not followed: it may point outside the folder).

A row that is not a JSON object, or a file without a text column, is not a document that can be skipped but a
wrong input: :class:`~fabricunlearn.data.formats.DataError`, naming the file (and line).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from fabricunlearn.data.formats import DataError

SKIP_REASONS = ("binary", "invalid_utf8", "empty", "too_large", "symlink")
TEXT_COLUMNS = ("text", "content")
VCS_FOLDERS = frozenset({".git", ".hg", ".svn"})
BINARY_SNIFF_BYTES = 8192
_BATCH = 256
_INT = re.compile(r"-?(?:0|[1-9][0-9]*)")


@dataclass
class Document:
    doc_id: object
    text: str | None  # None when skipped
    skip: str | None = None
    filename: str | None = None  # a folder's file: its name selects the keyword plugin's language rules


def input_kind(path: Path) -> str:
    """``jsonl``, ``parquet``, ``csv``, ``datasets`` or ``folder``; a DataError for anything else."""
    if path.is_dir():
        if (path / "dataset_dict.json").is_file():
            splits = ", ".join(sorted(p.name for p in path.iterdir() if p.is_dir()))
            raise DataError(f"{path}: a datasets DatasetDict; give one split's folder ({splits})")
        if (path / "dataset_info.json").is_file() and (path / "state.json").is_file():
            return "datasets"
        return "folder"
    if not path.exists():
        raise DataError(f"{path}: no such file or folder")
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes[-1:] in ([".jsonl"], [".json"], [".ndjson"]):
        return "jsonl"
    if suffixes[-1:] == [".parquet"]:
        return "parquet"
    if suffixes[-1:] in ([".csv"], [".tsv"]):
        return "csv"
    raise DataError(f"{path}: not a corpus (use .jsonl, .parquet, .csv, a folder of files, or a datasets folder)")


def iter_documents(path: Path, max_chars: int, exclude: frozenset[Path] = frozenset()) -> Iterator[Document]:
    """Every document of the corpus at ``path``, in order (``exclude``: files of a folder not to read)."""
    kind = input_kind(path)
    if kind == "folder":
        yield from _folder(path, max_chars, exclude)
    elif kind == "jsonl":
        yield from _jsonl(path, max_chars)
    else:
        rows = {"parquet": _parquet_rows, "csv": _csv_rows, "datasets": _datasets_rows}[kind](path)
        for i, (doc_id, text) in enumerate(rows):
            yield _text_document(i if doc_id is None else doc_id, text, max_chars)


def count_documents(path: Path, exclude: frozenset[Path] = frozenset()) -> int | None:
    """How many documents (for a progress bar), when that is cheap to know; else None."""
    kind = input_kind(path)
    if kind == "jsonl":
        with path.open("rb") as f:
            return sum(1 for line in f if line.strip())
    if kind == "parquet":
        import pyarrow.parquet as pq

        return pq.ParquetFile(path).metadata.num_rows
    if kind == "datasets":
        return len(_load_dataset(path))
    if kind == "folder":
        return sum(1 for _ in _walk(path, exclude))
    return None


def _text_document(doc_id, text, max_chars: int) -> Document:
    if text is None or (isinstance(text, float) and text != text):  # null, or pandas' NaN
        return Document(doc_id, None, "empty")
    if not text.strip():
        return Document(doc_id, None, "empty")
    if len(text) > max_chars:
        return Document(doc_id, None, "too_large")
    return Document(doc_id, text)


def _jsonl(path: Path, max_chars: int) -> Iterator[Document]:
    i = 0
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                yield Document(i, None, "invalid_utf8")  # its doc_id is unreadable: the row number stands in
                i += 1
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(f"{path}:{lineno}: not JSON ({err.msg})") from None
            if not isinstance(row, dict):
                raise DataError(f"{path}:{lineno}: a row must be a JSON object")
            column = next((c for c in TEXT_COLUMNS if c in row), None)
            if column is None:
                raise DataError(f"{path}:{lineno}: no `text` (or `content`) field")
            text = row[column]
            if text is not None and not isinstance(text, str):
                raise DataError(f"{path}:{lineno}: `{column}` is a {type(text).__name__}, not a string")
            doc = _text_document(row.get("doc_id", i), text, max_chars)
            if doc.text is not None and "\\u" in line and not _encodable(doc.text):
                doc = Document(doc.doc_id, None, "invalid_utf8")
            yield doc
            i += 1


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _columns(path: Path, names: list[str]) -> tuple[str, bool]:
    column = next((c for c in TEXT_COLUMNS if c in names), None)
    if column is None:
        raise DataError(f"{path}: no `text` (or `content`) column (columns: {', '.join(map(str, names))})")
    return column, "doc_id" in names


def _parquet_rows(path: Path) -> Iterator[tuple[object, str | None]]:
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except Exception as err:  # noqa: BLE001 - pyarrow's errors have many types; the message says what is wrong
        raise DataError(f"{path}: not a Parquet file ({err})") from None
    column, has_id = _columns(path, parquet.schema_arrow.names)
    for batch in parquet.iter_batches(batch_size=_BATCH, columns=[column, "doc_id"] if has_id else [column]):
        texts = batch.column(column).to_pylist()
        ids = batch.column("doc_id").to_pylist() if has_id else [None] * len(texts)
        yield from zip(ids, texts)


def _csv_rows(path: Path) -> Iterator[tuple[object, str | None]]:
    import pandas as pd

    sep = "\t" if path.suffix.lower() == ".tsv" else ","
    header = pd.read_csv(path, sep=sep, nrows=0).columns.tolist()
    column, has_id = _columns(path, header)
    wanted = [column, "doc_id"] if has_id else [column]
    # Everything as strings, and no "NA"/"null" -> NaN guessing: a document whose text is "NA" stays "NA".
    reader = pd.read_csv(
        path, sep=sep, usecols=wanted, dtype=str, keep_default_na=False, na_values=[], chunksize=_BATCH
    )
    for chunk in reader:
        ids = [_csv_id(x) for x in chunk["doc_id"]] if has_id else [None] * len(chunk)
        yield from zip(ids, chunk[column].tolist())


def _csv_id(value: str) -> object:
    """An integer id stays an integer, as pandas reads an all-integer column elsewhere in fabricunlearn."""
    return int(value) if _INT.fullmatch(value) else value


def _load_dataset(path: Path):
    try:
        from datasets import load_from_disk
    except ImportError:
        raise DataError(f"{path}: reading a datasets folder needs the `datasets` package") from None
    return load_from_disk(str(path))


def _datasets_rows(path: Path) -> Iterator[tuple[object, str | None]]:
    dataset = _load_dataset(path)
    column, has_id = _columns(path, dataset.column_names)
    dataset = dataset.select_columns([column, "doc_id"] if has_id else [column])
    for batch in dataset.iter(batch_size=_BATCH):
        texts = batch[column]
        yield from zip(batch["doc_id"] if has_id else [None] * len(texts), texts)


def _walk(root: Path, exclude: frozenset[Path]) -> Iterator[Path]:
    """The folder's files (and file symlinks), sorted by relative path, outside version-control folders."""
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in VCS_FOLDERS)
        for name in sorted(files):
            path = Path(folder, name)
            if path.absolute() not in exclude:
                yield path


def _folder(root: Path, max_chars: int, exclude: frozenset[Path]) -> Iterator[Document]:
    for path in _walk(root, exclude):
        doc_id = path.relative_to(root).as_posix()
        if path.is_symlink():
            yield Document(doc_id, None, "symlink")
            continue
        try:
            size = path.stat().st_size
            if size > 4 * max_chars:
                yield Document(doc_id, None, "too_large")
                continue
            data = path.read_bytes()
        except OSError as err:
            raise DataError(f"{path}: cannot read ({err.strerror})") from None
        if b"\0" in data[:BINARY_SNIFF_BYTES]:
            yield Document(doc_id, None, "binary")
            continue
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            yield Document(doc_id, None, "invalid_utf8")
            continue
        doc = _text_document(doc_id, text, max_chars)
        doc.filename = path.name
        yield doc
