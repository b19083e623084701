"""How a secret is shown on a terminal or in a log: never in full (``AKIA…X3Q (20 chars)``)."""

from __future__ import annotations


def redact(value: str) -> str:
    """At most the first 4 and last 3 characters, fewer for short values, and the length: a reader can tell
    secrets apart and find them in the output file, but not use them."""
    n = len(value)
    head, tail = min(4, n // 4), min(3, n // 5)
    return f"{value[:head]}…{value[n - tail :] if tail else ''} ({n} chars)"
