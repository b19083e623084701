"""Keys and tokens with detect-secrets' plugins, at exact character spans into the document.

CodeEraser ("Scrub It Out!", ``sensitive_memorization/utils/keys_detection.py``) writes each document to a temp
``.txt`` file, scans it with ``SecretsCollection.scan_file`` under its plugin list (:data:`CODEERASER_PLUGINS`: 21
provider formats, the Base64 and hex entropy plugins with their default limits, and public IPv4; no keyword,
basic-auth or private-key plugin) and five of detect-secrets' heuristic filters (uuid, id string, templated,
sequential, not alphanumeric), then keeps a value if it is gibberish and not a hash, and marks every occurrence of
it in the text. The ``default`` preset (:data:`PRESETS`) adds four plugins for passwords and npm tokens, which that
list misses (:mod:`fabricunlearn.scan.plugins` has the measurements); ``codeeraser`` is the paper's list exactly.

Here each line of the document is given to each plugin's ``analyze_line`` as detect-secrets' own non-eager file
scan does (lines split at ``\\n``, ``\\r\\n`` or ``\\r`` and right-stripped; the entropy plugins see quoted strings
only), but without detect-secrets' global settings, so a library user's detect-secrets configuration is neither
read nor changed and no plugin ever verifies a secret over the network. The heuristic filters are called directly.
A plugin reports values, not places: the span of a value is found by running the plugin's own expressions over the
line (``denylist`` for format plugins, the quoted-string expression for entropy plugins, the file type's
expressions for the keyword plugin), so it is exact even when the value occurs elsewhere in other roles. Then:

1. **Whole tokens.** A format plugin whose expression captures only a prefix (GitHub's ``(ghp|gho|…)_…`` reports
   ``ghp``, GitLab's ``glpat``) is widened to its whole match when that match is one token; delimiters an
   expression consumes (Artifactory's leading ``"``, ``=``, ``:``; Azure's ``AccountKey=``) are trimmed, a value is
   cut at whitespace or a quote (npm's ``npm_.+`` runs to the end of the line), and a match that stops inside a
   token (Stripe's 24 characters of a 99-character key; a JWT without its signature, from the plugin's lazy last
   part) is extended over the token's characters ``[A-Za-z0-9_-]``; back over them too, but a match that starts
   with a digit only over digits (a Telegram token ``<bot id>:<secret>`` follows ``/bot`` in the Bot API's URLs).
   Backslashes at either end are stripped, as in the original.
2. **Filters** (each differs from the original where noted, with the reason):

   - the five heuristic filters on the final value;
   - the gibberish check (:mod:`fabricunlearn.scan.gibberish`) only on values whose shape proves nothing: the
     Base64 entropy, keyword, basic-auth and password plugins. The original checks every key, but a provider's format
     (``AKIA`` + 16, ``ghp_`` + 36, ``sk_live_`` + 24) is the evidence, and a letter-pair model of English calls
     a fifth of real AWS key ids and half of random hex keys (whose only letters are a-f) word-like;
   - ``is_hash`` (:mod:`fabricunlearn.scan.filters`) on every finding; ``file_has_hashes`` on the entropy plugins'
     findings only (a file full of checksums makes random-looking strings suspect, not a ``ghp_`` token);
   - ``Public IP (ipv4)`` findings are dropped: addresses are reported under ``IP_ADDRESS`` by
     :mod:`fabricunlearn.scan.patterns` (in the original they never survived, having no letters to be gibberish).
3. **Every occurrence.** The original marks every ``str.index`` occurrence of an accepted value: inside longer
   tokens too, and for a prefix-only value such as ``ghp`` at every GitHub token of the file. Here a further
   occurrence is marked only where it stands as a whole token (and not after a hash word).
4. Overlapping findings are resolved by :mod:`fabricunlearn.scan.scanner` (a provider format wins over an entropy
   or keyword finding of the same span).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence

from detect_secrets.core.plugins.util import get_mapping_from_secret_type_to_class
from detect_secrets.filters import heuristic
from detect_secrets.plugins.base import RegexBasedDetector
from detect_secrets.plugins.high_entropy_strings import HighEntropyStringsPlugin
from detect_secrets.plugins.keyword import DENYLIST as KEYWORD_DENYLIST
from detect_secrets.plugins.keyword import QUOTES_REQUIRED_DENYLIST_REGEX_TO_GROUP, REGEX_BY_FILETYPE, KeywordDetector
from detect_secrets.util.filetype import determine_file_type

from fabricunlearn.scan import filters
from fabricunlearn.scan.gibberish import is_gibberish
from fabricunlearn.scan.patterns import Match
from fabricunlearn.scan.plugins import PasswordDetector

CODEERASER_PLUGINS = (
    "ArtifactoryDetector",
    "AWSKeyDetector",
    "AzureStorageKeyDetector",
    "CloudantDetector",
    "DiscordBotTokenDetector",
    "GitHubTokenDetector",
    "GitLabTokenDetector",
    "IbmCloudIamDetector",
    "IbmCosHmacDetector",
    "JwtTokenDetector",
    "MailchimpDetector",
    "NpmDetector",
    "OpenAIDetector",
    "PypiTokenDetector",
    "SendGridDetector",
    "SlackDetector",
    "SoftlayerDetector",
    "SquareOAuthDetector",
    "StripeDetector",
    "TelegramBotTokenDetector",
    "TwilioKeyDetector",
    "Base64HighEntropyString",
    "HexHighEntropyString",
    "IPPublicDetector",
)
# Plugins whose values are arbitrary strings (a password, any quoted high-entropy string): word-like values are
# most likely identifiers, so these get the gibberish check.
WORDLIKE_CHECKED = frozenset({"Base64HighEntropyString", "KeywordDetector", "BasicAuthDetector", "PasswordDetector"})
ENTROPY_PLUGINS = frozenset({"Base64HighEntropyString", "HexHighEntropyString"})
GENERIC_PLUGINS = ENTROPY_PLUGINS | {"KeywordDetector"}
DROPPED_PLUGINS = frozenset({"IPPublicDetector"})
DEFAULT_FILENAME = "document.txt"  # the original's temp-file suffix; a real name selects the keyword plugin's rules

_LINE = re.compile(r"[^\r\n]+")
TOKEN_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")
DIGITS = frozenset("0123456789")
_LEAD_TRIM = " \t\"'`=:\\"
_TRAIL_TRIM = " \t\"'`\\"
_CUT = re.compile(r"[\s\"'`]")
_NAME_EQUALS = re.compile(r"[A-Za-z_]\w*=(?!=)")


def _filtered_out(value: str, line: str, plugin) -> bool:
    """CodeEraser's five detect-secrets filters (its ``filters_used``)."""
    return (
        heuristic.is_potential_uuid(value)
        or heuristic.is_likely_id_string(value, line, plugin)
        or heuristic.is_templated_secret(value)
        or heuristic.is_sequential_string(value)
        or heuristic.is_not_alphanumeric_string(value)
    )


def plugin_classes() -> dict[str, type]:
    """Every detect-secrets plugin class and the two of :mod:`fabricunlearn.scan.plugins`, by class name."""
    from fabricunlearn.scan.plugins import LOCAL_PLUGINS

    return {**{cls.__name__: cls for cls in get_mapping_from_secret_type_to_class().values()}, **LOCAL_PLUGINS}


PRESETS = {
    "codeeraser": CODEERASER_PLUGINS,
    "default": (
        *CODEERASER_PLUGINS,
        "KeywordDetector",
        "BasicAuthDetector",
        "NpmTokenDetector",
        "PasswordDetector",
    ),
}


def resolve_plugins(spec: str | Sequence[str]) -> list[str]:
    """Plugin class names from a comma-separated mix of presets (``codeeraser``, ``default``) and class names."""
    items = [x.strip() for x in spec.split(",")] if isinstance(spec, str) else list(spec)
    names: list[str] = []
    for item in filter(None, items):
        names += PRESETS.get(item, (item,))
    classes = plugin_classes()
    unknown = [name for name in names if name not in classes]
    if unknown:
        raise ValueError(
            f"unknown key plugin {unknown[0]!r}; use the presets {', '.join(PRESETS)} or plugin names: "
            + ", ".join(sorted(classes))
        )
    if not names:
        raise ValueError("no key plugin given")
    return list(dict.fromkeys(names))


class KeyDetector:
    """Finds keys in documents with the given detect-secrets plugins (a preset name, or class names)."""

    def __init__(self, plugins: str | Sequence[str] = "default") -> None:
        classes = plugin_classes()
        self.names = resolve_plugins(plugins)
        self.plugins = [classes[name]() for name in self.names if name not in DROPPED_PLUGINS]
        # Searched once over a whole text (with ^ and $ at line ends), a plugin's expressions match wherever one of
        # its lines has a match: only the plugins that pass run line by line, which is where the time goes (a Python
        # call per line and plugin).
        self._prefilters = [_prefilter(plugin) for plugin in self.plugins]

    def find(self, text: str, filename: str = DEFAULT_FILENAME) -> list[Match]:
        """Key findings of ``text`` (rank 0: a provider format; rank 2: an entropy or keyword finding), unsorted,
        possibly overlapping."""
        runs: list[str] = []  # the text's long word runs, found once, for the gated expressions

        def matches(pattern) -> bool:
            if isinstance(pattern, _Gated):
                if not runs and pattern.on_runs:
                    runs.append("\n".join(_RUN.findall(text)))
                return pattern.matches(text, runs[0] if pattern.on_runs else "")
            return pattern.search(text) is not None

        active = [
            plugin
            for plugin, patterns in zip(self.plugins, self._prefilters)
            if patterns is None or any(matches(p) for p in patterns)
        ]
        hashes_in_file: bool | None = None
        found: dict[tuple[int, int, str], Match] = {}
        for m in _LINE.finditer(text) if active else ():
            line = m.group().rstrip()
            if not line.strip():
                continue
            for plugin in active:
                name = type(plugin).__name__
                for value, start, end in self._line_findings(plugin, line, filename):
                    if _filtered_out(value, line, plugin):
                        continue
                    if name in WORDLIKE_CHECKED and not is_gibberish(value):
                        continue
                    if filters.is_hash(value, line[:start]):
                        continue
                    if name in ENTROPY_PLUGINS:
                        if hashes_in_file is None:
                            hashes_in_file = filters.file_has_hashes(text)
                        if hashes_in_file:
                            continue
                    rank = 2 if name in GENERIC_PLUGINS else 0
                    a, b = m.start() + start, m.start() + end
                    found.setdefault((a, b, plugin.secret_type), Match("KEY", plugin.secret_type, value, a, b, rank))
        return list(found.values()) + list(_other_occurrences(text, found.values()))

    @staticmethod
    def _line_findings(plugin, line: str, filename: str) -> Iterator[tuple[str, int, int]]:
        """(value, start, end) of each value ``plugin`` reports on ``line``, normalized to its whole token."""
        reported = {s.secret_value for s in plugin.analyze_line(filename=filename, line=line, line_number=0)}
        if not reported:
            return
        seen = set()
        for raw, (start, end), (m_start, m_end), is_format in _candidate_spans(plugin, line, filename):
            if raw not in reported:
                continue
            if is_format:
                start, end = _whole_token(line, start, end, m_start, m_end, is_group=(start, end) != (m_start, m_end))
            else:
                while start < end and line[start] == "\\":
                    start += 1
                while end > start and line[end - 1] == "\\":
                    end -= 1
            if end > start and (start, end) not in seen:
                seen.add((start, end))
                yield line[start:end], start, end


def _prefilter(plugin) -> list[re.Pattern] | None:
    """Expressions of which one matches a text if the plugin can report a value on one of its lines (None: no
    such shortcut for this kind of plugin)."""
    if isinstance(plugin, HighEntropyStringsPlugin):
        # entropy is at most log2(length): a string must be longer than 2**limit characters to pass the limit
        shortest = int(2**plugin.entropy_limit) + 1
        return [re.compile(rf"(['\"])[{re.escape(plugin.charset)}]{{{shortest},}}\1")]
    if isinstance(plugin, KeywordDetector):
        # Every keyword expression starts with a word of its list; searching for the words alone is 20x faster.
        return [re.compile("|".join(KEYWORD_DENYLIST), re.IGNORECASE)]
    if isinstance(plugin, PasswordDetector):
        return [re.compile(r"pass|pwd|://", re.IGNORECASE)]
    if isinstance(plugin, RegexBasedDetector):
        name = type(plugin).__name__
        expressions = [re.compile(e.pattern, e.flags | re.MULTILINE) for e in plugin.denylist]
        return [_Gated(e, *_NECESSARY[name, k]) if (name, k) in _NECESSARY else e for k, e in enumerate(expressions)]
    return None


# Seven expressions start with look-behinds or optional, case-insensitive prefixes, so `re` tries them at every
# position of a text: they took 90 % of the scan time. Each is searched only where a cheap condition holds that
# every match of it satisfies: a literal it contains (Artifactory), or its secret group, a run of at least 24
# word characters (a subset of ``[\w-]``), found among the text's maximal ``[\w-]{24,}`` runs (the others). The
# conditions are read off detect-secrets 1.5.0's expressions; `tools/bench_scan.py` checks the findings against
# detect-secrets run the original way.
_RUN = re.compile(r"[\w-]{24,}")
_NECESSARY: dict[tuple[str, int], tuple[re.Pattern, bool]] = {
    ("ArtifactoryDetector", 0): (re.compile("AKC"), False),
    ("ArtifactoryDetector", 1): (re.compile(r"AP[\dABCDEF]"), False),
    ("CloudantDetector", 0): (re.compile(r"[0-9a-f]{64}", re.IGNORECASE), True),
    ("CloudantDetector", 1): (re.compile(r"[a-z]{24}", re.IGNORECASE), True),
    ("IbmCloudIamDetector", 0): (re.compile(r"[a-zA-Z0-9_\-]{44}"), True),
    ("IbmCosHmacDetector", 0): (re.compile(r"[a-f0-9]{48}", re.IGNORECASE), True),
    ("SoftlayerDetector", 0): (re.compile(r"[a-z0-9]{64}", re.IGNORECASE), True),
}


class _Gated:
    """An expression searched only when its necessary condition holds (on the text, or on its word runs)."""

    def __init__(self, expression: re.Pattern, condition: re.Pattern, on_runs: bool) -> None:
        self.expression, self.condition, self.on_runs = expression, condition, on_runs

    def matches(self, text: str, runs: str) -> bool:
        if self.condition.search(runs if self.on_runs else text) is None:
            return False
        return self.expression.search(text) is not None


def _candidate_spans(plugin, line: str, filename: str):
    """(value, value span, match span, is a format plugin) for every match of the plugin's own expressions."""
    if isinstance(plugin, HighEntropyStringsPlugin):
        for m in plugin.regex.finditer(line):  # (quote)(value)(same quote)
            yield m.group(2), m.span(2), m.span(2), False
    elif isinstance(plugin, KeywordDetector):
        expressions = REGEX_BY_FILETYPE.get(determine_file_type(filename), QUOTES_REQUIRED_DENYLIST_REGEX_TO_GROUP)
        for expression, group in expressions.items():
            for m in expression.finditer(line):
                if m.group(group):
                    yield m.group(group), m.span(group), m.span(group), False
    elif isinstance(plugin, RegexBasedDetector):
        for expression in plugin.denylist:
            for m in expression.finditer(line):
                if expression.groups == 0:
                    yield m.group(), m.span(), m.span(), True
                for i in range(1, expression.groups + 1):
                    if m.group(i):  # detect-secrets reports every non-empty group of a match
                        yield m.group(i), m.span(i), m.span(), True
    else:  # a plugin of another kind: where its values occur
        for value in {s.secret_value for s in plugin.analyze_line(filename=filename, line=line, line_number=0)}:
            for m in re.finditer(re.escape(value), line):
                yield value, m.span(), m.span(), False


def _whole_token(line: str, start: int, end: int, m_start: int, m_end: int, is_group: bool) -> tuple[int, int]:
    if is_group and all(c in TOKEN_CHARS for c in line[m_start:m_end]):
        start, end, is_group = m_start, m_end, False  # a prefix group (ghp, glpat) of a one-token match
    # A whole match may include the delimiters its expression requires around the token; a group is the value its
    # plugin means (a password may start with "="), so only backslashes are stripped from it.
    lead, trail = ("\\", "\\") if is_group else (_LEAD_TRIM, _TRAIL_TRIM)
    while start < end and line[start] in lead:
        start += 1
    if not is_group and (name := _NAME_EQUALS.match(line, start, end)):
        start = name.end()  # Azure's match is "AccountKey=<key>": the key is the secret
    while end > start and line[end - 1] in trail:
        end -= 1
    cut = _CUT.search(line, start, end)
    if cut:
        end = cut.start()
    if end > start and line[end - 1] in TOKEN_CHARS:
        while end < len(line) and line[end] in TOKEN_CHARS:
            end += 1
    elif end > start and line[end - 1] == "." and end < len(line) and line[end] in TOKEN_CHARS:
        while end < len(line) and line[end] in TOKEN_CHARS:  # a JWT's signature after the dot
            end += 1
    if end > start and line[start] in TOKEN_CHARS:
        back = DIGITS if line[start] in DIGITS else TOKEN_CHARS  # not over the "bot" of ".../bot<id>:<secret>"
        while start > 0 and line[start - 1] in back:
            start -= 1
    return start, end


def _other_occurrences(text: str, matches) -> Iterator[Match]:
    """Further whole-token occurrences of each accepted value, with its type (not after a hash word). ``str.find``
    keeps this linear in the text per value; overlaps with other findings are resolved by the scanner."""
    taken = {(m.start, m.end) for m in matches}
    by_value = {}
    for m in sorted(matches, key=lambda m: (m.rank, m.start)):
        by_value.setdefault(m.value, m)
    for value, first in by_value.items():
        check_left, check_right = value[0] in TOKEN_CHARS, value[-1] in TOKEN_CHARS
        a = text.find(value)
        while a >= 0:
            b = a + len(value)
            whole = not (check_left and a > 0 and text[a - 1] in TOKEN_CHARS) and not (
                check_right and b < len(text) and text[b] in TOKEN_CHARS
            )
            if whole and (a, b) not in taken:
                line_start = max(text.rfind("\n", 0, a), text.rfind("\r", 0, a)) + 1
                if not filters.is_hash(value, text[line_start:a]):
                    taken.add((a, b))
                    yield Match("KEY", first.type, value, a, b, first.rank)
            a = text.find(value, b)
