"""Email addresses and IP addresses by regular expression, with the post-filters of CodeEraser's scanner.

The expressions are those of "Scrub It Out!" (``sensitive_memorization/utils/emails_ip_addresses_detection.py``,
itself from BigScience's PII pipeline), rebuilt here piece by piece; they need the ``regex`` module for ``\\p{Han}``,
``\\p{L}`` and ``\\p{Pd}`` (it comes with ``transformers``). What a match must pass:

- an email: nothing more here (the example/test words are dropped by :mod:`fabricunlearn.scan.filters`);
- an IP: it holds a digit, it is not a date (five date shapes), it is not a version (``x.y.z.w`` of 7 characters)
  unless ``dns`` or ``server`` occurs within 100 characters, and ``ipaddress`` parses it.

Differences from the original, each a bug fix:

- **Adjacent IPs.** The original's IP expression consumes the character before and after the address, so in
  ``"1.1.1.1,8.8.8.8"`` the comma is used up by the first match and the second address is missed. Here the
  boundaries are look-arounds: the same characters are required, none is consumed.
- **Cut IPv6 addresses.** The original tries its IPv6 alternatives in order and accepts the first one followed by
  a boundary character, and ``:`` is one: ``2001:db8::8:1`` came out as ``2001:db8::8`` and ``::ffff:1.2.3.4`` as
  ``::ffff:1``. Here an IPv6 address may not stop right before another ``:``, ``.`` or hex digit, so the
  alternative that takes the whole address wins; nor start right after a hex digit and ``:``, so that the tail of
  an address the boundaries reject (``DB_HOST=fd00:3456::65``) is not reported as an address (``3456::65``).
- **A closing parenthesis.** The original accepts ``(`` and ``)`` before an address but only ``(`` after it, so
  ``(34.120.5.17)`` was missed; ``)`` is accepted after it here, as it is after an email address.
- **Context of the version filter.** The original takes ``content[start - 100:end + 100]``; for an address in the
  first 100 characters the negative start wraps around and the context is the wrong text (usually empty). Here
  the window is clipped at the start of the text.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from dataclasses import dataclass, field

import regex


@dataclass(frozen=True)
class Match:
    """A candidate secret: ``text[start:end] == value``. Where findings overlap, the lower ``rank`` wins."""

    tag: str
    type: str
    value: str
    start: int
    end: int
    rank: int = field(default=1, compare=False)


# --- emails -------------------------------------------------------------------------------------------------------
# Before the address: the start of a line, or whitespace or punctuation (a Han character counts as a separator).
# `\b` inside a class is a backspace, as in the original.
_EMAIL = regex.compile(
    r"""
    (?<= ^ | [\b\s@,?!;:)('".\p{Han}<] )
    (
        [^\b\s@?!;,:)('"<]+        # local part
        @
        [^\b\s@!?;,/]*             # domain labels
        [^\b\s@?!;,/:)('">.]       # the last character before the final dot is not punctuation
        \. \p{L} \w+               # a top-level domain that starts with a letter
    )
    (?= $ | [\b\s@,?!;:)('".\p{Han}>] )
    """,
    regex.VERBOSE | regex.MULTILINE,
)


def find_emails(text: str) -> Iterator[Match]:
    """Every email address of ``text`` that the original expression matches."""
    if "@" not in text:
        return
    for m in _EMAIL.finditer(text):
        yield Match("EMAIL", "Email", m.group(1), m.start(1), m.end(1))


# --- IP addresses -------------------------------------------------------------------------------------------------
_OCTET = r"(?:25[0-5]|2[0-4][0-9]|[01]?[0-9][0-9]?)"
_IPV4 = rf"{_OCTET}(?:\.{_OCTET}){{3}}"
_H = r"[0-9a-fA-F]{1,4}"
# An IPv4 tail inside an IPv6 address, as the original writes it (no leading zeros, unlike _OCTET).
_V4_OCTET = r"(?:25[0-5]|(?:2[0-4]|1?[0-9])?[0-9])"
_V4_TAIL = rf"(?:{_V4_OCTET}\.){{3}}{_V4_OCTET}"
_IPV6_ALTERNATIVES = [
    rf"(?:{_H}:){{7}}{_H}",  # eight groups
    rf"(?:{_H}:){{1,7}}:",  # trailing ::
    *(rf"(?:{_H}:){{1,{7 - k}}}(?::{_H}){{{'1' if k == 1 else f'1,{k}'}}}" for k in range(1, 7)),  # :: inside
    rf":(?:(?::{_H}){{1,7}}|:)",  # leading ::
    r"fe80:(?::[0-9a-fA-F]{0,4}){0,4}%[0-9a-zA-Z]+",  # link-local with a zone index
    rf"::(?:ffff(?::0{{1,4}})?:)?{_V4_TAIL}",  # IPv4-mapped
    rf"(?:{_H}:){{1,4}}:{_V4_TAIL}",  # IPv4-embedded
]
# The 6 alternatives for "::" inside are the original's (H:){1,6}:H, (H:){1,5}(:H){1,2}, ... H:(:H){1,6}.
_IPV6 = rf"(?<![0-9A-Fa-f]:)(?:{'|'.join(_IPV6_ALTERNATIVES)})(?!:?[0-9A-Fa-f]|\.[0-9])"
_IP = regex.compile(
    rf"""(?:(?<=^)|(?<=[\b\s@?,!;:'")(.\p{{Han}}]))({_IPV4}|{_IPV6})(?=$|[\s@,?!;:'")(.\p{{Han}}])""",
    regex.MULTILINE,
)

# Dates that look like addresses, matched from the start of the candidate (the original's five shapes).
_DATE_BEFORE = r"""(?:^|[\b\s@?,!;:'")(.\p{Han}])"""
_DATE_AFTER = r"""(?:$|[\s@,?!;:'"(.\p{Han}])"""
_DATES = [
    regex.compile(_DATE_BEFORE + body + _DATE_AFTER)
    for body in (
        r"[1-2][0-9]{3}[\p{Pd}/][1-2][0-9]{3}",  # yyyy-yyyy
        r"[1-2][0-9]{3}[\p{Pd}/.][0-3][0-9][\p{Pd}/.][0-3][0-9]",  # yyyy-mm-dd, yyyy.dd.mm, ...
        r"[0-3][0-9][\p{Pd}/.][0-3][0-9][\p{Pd}/.](?:[0-9]{2}|[1-2][0-9]{3})",  # dd.mm.yyyy, mm/dd/yy, ...
        r"[0-3][0-9][\p{Pd}/](?:[0-9]{2}|[1-2][0-9]{3})",  # mm-yyyy, mm/yy
        r"[1-2][0-9]{3}-[0-3][0-9]",  # yyyy-mm
    )
]
VERSION_CONTEXT_CHARS = 100


def looks_like_date(value: str) -> bool:
    return any(p.match(value) for p in _DATES)


def looks_like_version(value: str, context: str) -> bool:
    """``1.2.3.4`` (three dots, seven characters) is a version number unless the context speaks of DNS or servers."""
    if value.count(".") != 3 or len(value) != 7:
        return False
    context = context.lower()
    return "dns" not in context and "server" not in context


def _parses(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def find_ips(text: str) -> Iterator[Match]:
    """Every IPv4 / IPv6 address of ``text`` that the original expression matches and its post-filters keep."""
    if not any(c.isdigit() for c in text):
        return
    for m in _IP.finditer(text):
        value, start, end = m.group(1), m.start(1), m.end(1)
        if not any(c.isdigit() for c in value) or looks_like_date(value):
            continue
        context = text[max(0, start - VERSION_CONTEXT_CHARS) : end + VERSION_CONTEXT_CHARS]
        if looks_like_version(value, context) or not _parses(value):
            continue
        yield Match("IP_ADDRESS", "IPv4" if "." in value and ":" not in value else "IPv6", value, start, end)
