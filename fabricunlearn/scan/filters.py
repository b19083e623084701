"""The post-filters of CodeEraser's scanner: private IPs, example emails, placeholder keys and hashes.

From "Scrub It Out!" ``sensitive_memorization/filter.py`` (IPs, emails, keys) and ``utils/keys_detection.py``
(``is_hash``, ``file_has_hashes``). Each function says True for a finding to drop. Nothing here evaluates data.

Differences from the original, each on purpose:

- **IPs.** The original drops ``127.``, ``10.``, ``192.168.``, ``169.254.`` and 172.16-31 by string prefix, the last
  by ``eval()`` of the address's characters 4-6 (``"172.5.1.1"`` gives ``eval("5.")``; ``"172.08.…"`` raises). Here
  an address is dropped when ``ipaddress`` says it is not globally reachable, or is multicast: that is the
  original's five ranges, parsed rather than evaluated, plus the other addresses that identify no host on the
  Internet: ``0.0.0.0/8``, shared (100.64/10), the documentation ranges (192.0.2/24, 198.51.100/24, 203.0.113/24,
  ``2001:db8::/32``), benchmarking, reserved ``240/4`` (where netmasks such as ``255.255.255.0`` fall), broadcast,
  multicast, and IPv6 loopback, link-local and unique-local addresses, which the original kept.
- **Emails and keys are compared case-insensitively** (``Test@…``, ``DUMMY_…`` were kept by the original).
- **Placeholder keys.** A run of any 7 equal characters (``0000000``, ``*******``), not only ``a``/``A``/``x``/``X``;
  and ``example`` joins the words (AWS's documented ``AKIAIOSFODNN7EXAMPLE``). ``https`` marks a URL that an
  entropy or keyword plugin took for a key, but not a provider's format that is a URL: the original dropped every
  Slack webhook (``https://hooks.slack.com/services/…``). A finding equal to a token prefix (``ghp``) cannot occur
  here (prefixes are widened to their token), but is still dropped.
- **``is_hash``** reads the text before *this* occurrence on *its* line. The original looked up the first
  occurrence of the value with ``str.index`` and took ``content[:i].splitlines()[-1]``, which is the line before
  when the value starts a line.
- **``file_has_hashes``** counts ``sha`` only where a letter does not follow (``sha256``, ``sha1``, ``SHA``), not
  inside ``shape``, ``shared`` or ``shadow``, which made the original drop every key of most short files. Like the
  original, more than ``int(0.02 * newlines)`` occurrences of either word mark the file.
"""

from __future__ import annotations

import ipaddress
import re

EXAMPLE_EMAIL_WORDS = ("example", "test", "user", "aaa", "bbb", "ccc")
PLACEHOLDER_KEY_WORDS = ("https", "dummy", "placeholder", "changeme", "example")
TOKEN_PREFIXES = frozenset({"ghp", "gho", "ghu", "ghs", "ghr", "glpat", "gldt", "glft", "glsoat", "glrt"})
HASH_LENGTHS = (32, 40, 64)  # md5, sha1, sha256 in hex
HASH_WORDS = ("sha", "md5", "hash", "byte")
HASHES_PER_LINE = 0.02
_RUN = re.compile(r"(.)\1{6}", re.DOTALL)
_SHA = re.compile(r"sha(?![a-z])")


def is_private_ip(value: str) -> bool:
    """True for an address that identifies no host on the Internet (private, loopback, link-local, reserved, ...)."""
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        return True
    return not address.is_global or address.is_multicast


def is_example_email(value: str) -> bool:
    low = value.lower()
    return any(word in low for word in EXAMPLE_EMAIL_WORDS)


def is_placeholder_key(value: str, provider_format: bool = False) -> bool:
    """``provider_format``: the value is a provider's format (Slack's webhook URL), which ``https`` does not mark."""
    low = value.lower()
    words = [w for w in PLACEHOLDER_KEY_WORDS if w != "https"] if provider_format else PLACEHOLDER_KEY_WORDS
    return low in TOKEN_PREFIXES or bool(_RUN.search(value)) or any(word in low for word in words)


def is_hash(value: str, line_before: str) -> bool:
    """A hash-length value after ``sha``/``md5``/``hash``/``byte`` on its line (``sha256 = "e3b0…"``)."""
    if len(value) not in HASH_LENGTHS:
        return False
    low = line_before.lower()
    return any(word in low for word in HASH_WORDS)


def file_has_hashes(text: str) -> bool:
    """More ``sha`` or more ``hash`` mentions than 2% of the text's newlines: its random-looking strings are likely
    checksums."""
    low = text.lower()
    limit = int(HASHES_PER_LINE * text.count("\n"))
    return low.count("hash") > limit or len(_SHA.findall(low)) > limit
