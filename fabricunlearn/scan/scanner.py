"""One document in, its secrets out: emails and IPs by regex, keys by detect-secrets, then the post-filters.

:func:`scan_text` returns the ``secrets`` list of a ``scan`` row (DESIGN.md): ``{"tag", "type", "value", "start",
"end"}`` with ``text[start:end] == value``, ``end`` exclusive, sorted by ``start``. Offsets count Python characters
(code points) of the text as given: a ``\\r\\n`` is two characters, and nothing is normalized.

Findings never overlap. Where two do, the one of lower rank wins: a key in a provider's format (or a URL's
password) first, then an email or an IP, then an entropy or keyword key; at equal rank the longer, then the
earlier. CodeEraser kept overlapping findings (a value once per plugin that found it). A URL's
``user:password@host.tld`` shows why a password wins: from the password on, it also reads as an email address.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence

from fabricunlearn.scan import filters
from fabricunlearn.scan.keys import DEFAULT_FILENAME, KeyDetector
from fabricunlearn.scan.patterns import Match, find_emails, find_ips

TAGS = ("EMAIL", "IP_ADDRESS", "KEY")


class Scanner:
    """Holds the key plugins (built once per process); call :meth:`scan` per document."""

    def __init__(self, plugins: str | Sequence[str] = "default", tags: Sequence[str] = TAGS) -> None:
        unknown = set(tags) - set(TAGS)
        if unknown:
            raise ValueError(f"unknown tag {sorted(unknown)[0]!r}; use {', '.join(TAGS)}")
        self.tags = frozenset(tags)
        self.keys = KeyDetector(plugins) if "KEY" in self.tags else None

    def matches(self, text: str, filename: str = DEFAULT_FILENAME) -> list[Match]:
        found: list[Match] = []
        if "EMAIL" in self.tags:
            found += [m for m in find_emails(text) if not filters.is_example_email(m.value)]
        if "IP_ADDRESS" in self.tags:
            found += [m for m in find_ips(text) if not filters.is_private_ip(m.value)]
        if self.keys is not None:
            found += [m for m in self.keys.find(text, filename) if not filters.is_placeholder_key(m.value, m.rank == 0)]
        return _without_overlaps(found)

    def scan(self, text: str, filename: str = DEFAULT_FILENAME) -> list[dict]:
        """The ``secrets`` of a scan row for ``text``. ``filename`` (a path's extension) selects the keyword
        plugin's rules for that language, when that plugin is used."""
        return [
            {"tag": m.tag, "type": m.type, "value": m.value, "start": m.start, "end": m.end}
            for m in self.matches(text, filename)
        ]


def _without_overlaps(found: list[Match]) -> list[Match]:
    """The findings by priority, each kept unless it overlaps one kept before; sorted by position."""
    starts: list[int] = []  # of the kept findings, which never overlap: sorted by start is sorted by end too
    kept: list[Match] = []
    for m in sorted(found, key=lambda m: (m.rank, m.start - m.end, m.start, m.tag, m.type)):
        i = bisect.bisect_right(starts, m.start)
        if (i > 0 and kept[i - 1].end > m.start) or (i < len(kept) and kept[i].start < m.end):
            continue
        starts.insert(i, m.start)
        kept.insert(i, m)
    return kept


_DEFAULT: Scanner | None = None


def scan_text(text: str, filename: str = DEFAULT_FILENAME) -> list[dict]:
    """The secrets of one document with the default settings (see :class:`Scanner` for others)."""
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = Scanner()
    return _DEFAULT.scan(text, filename)
