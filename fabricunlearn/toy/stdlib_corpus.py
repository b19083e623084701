"""Real Python source for toy corpora, with no download: the running interpreter's standard library.

The code-secrets toy world needs documents that look like the code a model is trained on. The stdlib is
on every machine, is real code written by many people, and is fixed for a given Python version, so a
seeded ``random.Random`` always yields the same chunks. Chunks start and end where a logical line does
(never inside a docstring, a bracket or a backslash continuation), so a line planted at their edges stays
code. :func:`split_files` holds whole files out, so that the "unseen" documents of a toy world come from
files the model never saw, not from other parts of files it did.
"""

from __future__ import annotations

import bisect
import random
import re
import sysconfig
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

MIN_FILE_BYTES = 2048
# Easter-egg module: rot13 text, nothing like real code.
_SKIP = {"this.py"}
# Comments, triple quotes, one-line strings, brackets and backslash continuations: enough to know where a
# logical line starts (it agrees with ``tokenize`` on every stdlib line, at 10x its speed).
_TOKENS = re.compile(r"""#[^\n]*|\"\"\"|'''|"(?:\\.|[^"\\\n])*"|'(?:\\.|[^'\\\n])*'|[()\[\]{}]|\\\n""")


@dataclass
class _File:
    lines: list[str]  # without their newline
    cum: list[int]  # cum[k]: length of lines[:k], newlines included
    starts: list[int]  # non-blank lines where a logical line starts
    ends: list[int]  # ascending k such that lines[:k] ends with a complete logical line
    end_cum: list[int]  # cum[k] for k in ends


_CACHE: dict[Path, _File] = {}


def stdlib_dir() -> Path:
    """The folder of the running interpreter's pure-Python standard library."""
    return Path(sysconfig.get_paths()["stdlib"])


def _continued_spans(text: str) -> list[tuple[int, int]]:
    """Character ranges inside which a new line does not start a logical line."""
    spans, depth, opened, pos = [], 0, 0, 0
    while match := _TOKENS.search(text, pos):
        token, pos = match.group(), match.end()
        if token in ('"""', "'''"):
            end = text.find(token, pos)
            while end > 0 and text[end - 1] == "\\":
                end = text.find(token, end + 1)
            pos = len(text) + 1 if end < 0 else end + 3  # past the end: unterminated
            spans.append((match.start(), pos))
        elif token in ("(", "[", "{"):
            opened = match.start() if depth == 0 else opened
            depth += 1
        elif token in (")", "]", "}") and depth:
            depth -= 1
            if depth == 0:
                spans.append((opened, pos))
        elif token == "\\\n":
            spans.append((match.start(), pos + 1))
    if depth:
        spans.append((opened, len(text) + 1))
    return spans


def continued_lines(lines: Sequence[str]) -> list[bool]:
    """For k in 0..len(lines): does line k (len(lines): the end) fall inside a string, a bracket or a ``\\``?

    ``lines`` are without their newlines. Where it is False, a new statement may begin.
    """
    cum = [0]
    for line in lines:
        cum.append(cum[-1] + len(line) + 1)
    inside = [False] * (len(lines) + 1)
    for a, b in _continued_spans("\n".join(lines) + "\n"):
        # the lines that start strictly inside (a, b)
        for k in range(bisect.bisect_right(cum, a), bisect.bisect_left(cum, b)):
            inside[k] = True
    return inside


def _load(path: Path | str) -> _File | None:
    path = Path(path)
    if path not in _CACHE:
        try:
            text = path.read_bytes().decode("utf-8")
        except (UnicodeDecodeError, OSError):
            return None
        lines = [line.rstrip() for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n")]
        while lines and not lines[-1]:
            lines.pop()
        cum = [0]
        for line in lines:
            cum.append(cum[-1] + len(line) + 1)
        inside = continued_lines(lines)
        starts = [k for k in range(len(lines)) if not inside[k] and lines[k].strip()]
        ends = [k for k in range(1, len(lines) + 1) if not inside[k]]
        _CACHE[path] = _File(lines, cum, starts, ends, [cum[k] for k in ends])
    return _CACHE[path]


def _by_name(path: Path | str) -> tuple[str, str]:
    return Path(path).name, str(path)


def stdlib_files(max_files: int | None = None) -> list[Path]:
    """Top-level ``*.py`` files of the stdlib, sorted by name, that decode as UTF-8 and have at least 2 kB."""
    files = []
    for path in sorted(stdlib_dir().glob("*.py"), key=_by_name):
        if path.name in _SKIP or path.stat().st_size < MIN_FILE_BYTES or _load(path) is None:
            continue
        files.append(path)
        if max_files is not None and len(files) >= max_files:
            break
    return files


def _mostly_comments(lines: list[str]) -> bool:
    # Such chunks teach a model little code and give a planted secret almost no code context.
    filler = sum(1 for line in lines if not line.strip() or line.lstrip().startswith("#"))
    return filler * 2 > len(lines)


def code_chunks(
    rng: random.Random,
    n_chunks: int,
    min_chars: int,
    max_chars: int,
    files: Sequence[Path | str] | None = None,
) -> list[str]:
    """``n_chunks`` distinct runs of whole consecutive lines, each ``min_chars`` to ``max_chars`` long.

    Every chunk ends with a newline, which counts in its length. Files and positions are drawn from
    ``rng`` (default files: :func:`stdlib_files`). A chunk starts on a non-blank line where a logical line
    starts and ends after a complete logical line; chunks that are mostly blank or comment lines are
    skipped. Lines lose their trailing whitespace, and CRLF becomes LF. Raises ``ValueError`` when the
    files cannot give that many distinct chunks.
    """
    if not 0 < min_chars <= max_chars:
        raise ValueError(f"need 0 < min_chars <= max_chars, got {min_chars}, {max_chars}")
    loaded = [_load(f) for f in (stdlib_files() if files is None else files)]
    usable = [f for f in loaded if f is not None and f.starts and f.cum[-1] >= min_chars]
    if n_chunks > 0 and not usable:
        raise ValueError(f"no readable file has {min_chars} characters")
    chunks: list[str] = []
    seen: set[str] = set()
    attempts = 0
    while len(chunks) < n_chunks:
        attempts += 1
        if attempts > 100 * n_chunks + 1000:
            raise ValueError(f"found only {len(chunks)} of {n_chunks} distinct chunks of {min_chars}-{max_chars} chars")
        f = rng.choice(usable)
        start = rng.choice(f.starts)
        # the chunk lines[start:end] has cum[end] - cum[start] characters
        lo = bisect.bisect_left(f.end_cum, f.cum[start] + min_chars)
        hi = bisect.bisect_right(f.end_cum, f.cum[start] + max_chars) - 1
        if lo > hi:
            continue
        block = f.lines[start : f.ends[rng.randint(lo, hi)]]
        text = "\n".join(block) + "\n"
        if text in seen or _mostly_comments(block):
            continue
        seen.add(text)
        chunks.append(text)
    return chunks


def split_files(files: Sequence[Path], rng: random.Random, unseen_fraction: float) -> tuple[list[Path], list[Path]]:
    """Split ``files`` into (train, unseen), disjoint and each sorted by name.

    ``unseen_fraction`` of the files (rounded, at least one when it is positive and there are two or
    more files) go to ``unseen``; the rest, at least one when the fraction is below 1, to ``train``.
    """
    if not 0.0 <= unseen_fraction <= 1.0:
        raise ValueError(f"unseen_fraction must be in [0, 1], got {unseen_fraction}")
    shuffled = sorted(files, key=_by_name)
    rng.shuffle(shuffled)
    n_unseen = round(len(shuffled) * unseen_fraction)
    if len(shuffled) >= 2:
        n_unseen = min(max(n_unseen, 1 if unseen_fraction > 0 else 0), len(shuffled) - (unseen_fraction < 1))
    return sorted(shuffled[n_unseen:], key=_by_name), sorted(shuffled[:n_unseen], key=_by_name)
