"""The code-secrets toy world's planted secrets: real formats, exact spans, and values the original keeps."""

from __future__ import annotations

import io
import ipaddress
import random
import re
import tokenize

import pytest

from fabricunlearn.toy.secret_formats import GENERATORS, SECRET_FORMATS, SECRET_TYPES, make_secret, plant_secrets
from fabricunlearn.toy.stdlib_corpus import _load, code_chunks, continued_lines, split_files, stdlib_files

# The providers' formats, written independently of the generators.
PROVIDER_FORMATS = {
    "aws_access_key_id": r"AKIA[0-9A-Z]{16}",
    "aws_secret_access_key": r"[A-Za-z0-9+/]{40}",
    "github_token": r"ghp_[A-Za-z0-9]{36}",
    "gitlab_token": r"glpat-[A-Za-z0-9_-]{20}",
    "slack_bot_token": r"xoxb-[1-9][0-9]{9,12}-[1-9][0-9]{9,12}-[A-Za-z0-9]{24}",
    "stripe_secret_key": r"sk_live_[A-Za-z0-9]{24,99}",
    "openai_key": r"sk-[A-Za-z0-9]{20}T3BlbkFJ[A-Za-z0-9]{20}",
    "sendgrid_key": r"SG\.[A-Za-z0-9_-]{22}\.[A-Za-z0-9_-]{43}",
    "twilio_api_key": r"SK[0-9a-f]{32}",
    "mailchimp_key": r"[0-9a-f]{32}-us[0-9]{1,2}",
    "npm_token": r"npm_[A-Za-z0-9]{36}",
    "password": r"(?=.*[0-9])(?=.*[A-Z])(?=.*[a-z])(?=.*[!#%&*+\-=?@^_~])[A-Za-z0-9!#%&*+\-=?@^_~]{16,28}",
    "hex_secret": r"[0-9a-f]{32}|[0-9a-f]{64}",
    "email": r"[a-z]+(?:[._][a-z]+)?@[a-z]+(?:-[a-z]+)?\.[a-z]{2,}(?:\.[a-z]{2,})?",
    "ipv4": r"(?:(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])\.){3}(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])",
    "ipv6": r"[0-9a-f:]{3,39}",
}
EXPECTED = {
    "aws_access_key_id": ("KEY", "AWS Access Key"),
    "aws_secret_access_key": ("KEY", "AWS Secret Key"),
    "github_token": ("KEY", "GitHub Token"),
    "gitlab_token": ("KEY", "GitLab Token"),
    "slack_bot_token": ("KEY", "Slack Token"),
    "stripe_secret_key": ("KEY", "Stripe Secret Key"),
    "openai_key": ("KEY", "OpenAI Key"),
    "sendgrid_key": ("KEY", "SendGrid API Key"),
    "twilio_api_key": ("KEY", "Twilio API Key"),
    "mailchimp_key": ("KEY", "Mailchimp Access Key"),
    "npm_token": ("KEY", "NPM Token"),
    "password": ("KEY", "Password"),
    "hex_secret": ("KEY", "Hex Secret"),
    "email": ("EMAIL", "Email"),
    "ipv4": ("IP_ADDRESS", "IPv4"),
    "ipv6": ("IP_ADDRESS", "IPv6"),
}
KEY_TYPES = [t for t in SECRET_TYPES if SECRET_FORMATS[t].tag == "KEY"]

# A complete module with the constructs that make insertion hard: __future__, docstrings, decorators,
# multi-line brackets, if/else, try/except, nested classes, a backslash continuation, no final newline.
MODULE = '''"""A module.

x = 1 inside a docstring
"""
from __future__ import annotations

import os
from typing import (
    Any,
    Optional,
)

TIMEOUT = 3 + \\
    4


@staticmethod
def helper(a: Any, b: Optional[int] = None) -> int:
    """Add."""
    if a:
        return a + (b or 0)
    else:
        return 0


class Store:
    """Keeps things."""

    items = [
        1,
        2,
    ]

    def get(self, key):
        try:
            return self.items[key]
        except IndexError:
            return None
        finally:
            pass

    class Inner:
        text = """
def not_code():
    pass
"""


def main():
    return helper(1)'''


def draws(type_name: str, n: int = 200, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [GENERATORS[type_name](rng) for _ in range(n)]


def original_keeps(tag: str, value: str) -> bool:
    """CodeEraser's post-filters (filter.py and the IP checks of its regex scanner), re-stated."""
    low = value.lower()
    if tag == "IP_ADDRESS":
        if value.startswith(("127.", "10.", "192.168.", "169.254.")) or re.match(r"172\.(1[6-9]|2\d|3[01])\.", value):
            return False
        boundary = r"(?:$|[\s@,?!;:'\"(.])"
        dates = (
            rf"[12]\d{{3}}[-/][12]\d{{3}}{boundary}",
            rf"[12]\d{{3}}[-/.][0-3]\d[-/.][0-3]\d{boundary}",
            rf"[0-3]\d[-/.][0-3]\d[-/.](?:\d{{2}}|[12]\d{{3}}){boundary}",
            rf"[0-3]\d[-/](?:\d{{2}}|[12]\d{{3}}){boundary}",
            rf"[12]\d{{3}}-[0-3]\d{boundary}",
        )
        version_like = value.count(".") == 3 and len(value) == 7
        return not any(re.match(d, value) for d in dates) and not version_like
    if tag == "EMAIL":
        return not any(w in low for w in ("example", "test", "user", "aaa", "bbb", "ccc"))
    bad = ("aaaaaaa", "xxxxxxx", "https", "dummy", "placeholder", "changeme")
    return value != "ghp" and not any(w in low for w in bad)


@pytest.mark.parametrize("type_name", SECRET_TYPES)
def test_every_type_has_its_provider_format(type_name):
    pattern = re.compile(PROVIDER_FORMATS[type_name])
    values = draws(type_name)
    bad = [v for v in values if not pattern.fullmatch(v)]
    assert not bad, f"{type_name}: {bad[:3]}"
    assert len(set(values)) > 150  # random, not a handful of fixed strings
    assert not [v for v in values if re.search(r"(.)\1{6}", v)]


def test_types_tags_and_lengths_are_as_declared():
    assert {t: (SECRET_FORMATS[t].tag, SECRET_FORMATS[t].type) for t in SECRET_TYPES} == EXPECTED
    assert set(GENERATORS) == set(SECRET_TYPES)
    secret = make_secret(random.Random(0), "github_token")
    assert set(secret) == {"tag", "type", "value"} and secret["tag"] == "KEY"
    stripe_lengths = {len(v) for v in draws("stripe_secret_key")}
    assert {32, 107} <= stripe_lengths  # mostly 24 characters after the prefix, some 99
    assert {len(v) for v in draws("hex_secret")} == {32, 64}
    passwords = draws("password")
    assert not [p for p in passwords if re.search(r"[\s'\"\\]", p)]
    assert len({len(p) for p in passwords}) > 5


@pytest.mark.parametrize("type_name", SECRET_TYPES)
def test_the_original_filters_keep_every_value(type_name):
    tag = SECRET_FORMATS[type_name].tag
    dropped = [v for v in draws(type_name, 500) if not original_keeps(tag, v)]
    assert not dropped, dropped[:5]


@pytest.mark.parametrize("type_name", ["ipv4", "ipv6"])
def test_ips_are_public(type_name):
    for value in draws(type_name, 500):
        ip = ipaddress.ip_address(value)
        assert ip.is_global and not ip.is_multicast, value
        assert str(ip) == value  # canonical text, as a scanner would print it back
    private = [ipaddress.ip_network(n) for n in ("100.64.0.0/10", "192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24")]
    assert not [v for v in draws("ipv4", 500) if any(ipaddress.ip_address(v) in n for n in private)]


def test_spans_are_exact_sorted_and_counted():
    for seed in range(60):
        n = 1 + seed % 7
        text, secrets = plant_secrets(random.Random(seed), MODULE, n)
        assert len(secrets) == n
        starts = [s["start"] for s in secrets]
        assert starts == sorted(starts)
        for s, following in zip(secrets, secrets[1:] + [None]):
            assert set(s) == {"tag", "type", "value", "start", "end"}
            assert text[s["start"] : s["end"]] == s["value"]
            assert following is None or s["end"] <= following["start"]
            fmt = next(f for f in SECRET_FORMATS.values() if f.type == s["type"])
            assert s["tag"] == fmt.tag


def test_planting_is_deterministic_and_seeded():
    first = plant_secrets(random.Random(7), MODULE, 5)
    assert plant_secrets(random.Random(7), MODULE, 5) == first
    assert plant_secrets(random.Random(8), MODULE, 5) != first


def test_planted_module_still_compiles_and_keeps_its_lines():
    for seed in range(80):
        text, _ = plant_secrets(random.Random(seed), MODULE, 1 + seed % 6)
        compile(text, f"planted_{seed}", "exec")  # also fails if anything went before the __future__ import
        it = iter(text.splitlines())
        assert all(line in it for line in MODULE.splitlines())  # the original lines, in order


def test_planting_matches_the_indentation_of_an_indented_region():
    body = "    x = compute()\n    if x:\n        y = 2\n    return x\n"
    for seed in range(20):
        text, secrets = plant_secrets(random.Random(seed), body, 3)
        compile("def f():\n" + text, "x", "exec")
        for s in secrets:
            line_start = text.rfind("\n", 0, s["start"]) + 1
            assert text[line_start : line_start + 4] == "    "


def test_types_restrict_what_is_planted():
    text, secrets = plant_secrets(random.Random(0), MODULE, 12, types=["email"])
    assert {s["type"] for s in secrets} == {"Email"}
    text, secrets = plant_secrets(random.Random(0), MODULE, 12, types=["password", "ipv4"])
    assert {s["type"] for s in secrets} <= {"Password", "IPv4"}
    with pytest.raises(ValueError, match="unknown"):
        plant_secrets(random.Random(0), MODULE, 1, types=["aws"])


def test_plants_into_empty_code_and_code_without_final_newline():
    text, secrets = plant_secrets(random.Random(0), "", 2)
    assert len(secrets) == 2 and all(text[s["start"] : s["end"]] == s["value"] for s in secrets)
    text, secrets = plant_secrets(random.Random(1), "x = 1", 2)
    compile(text, "x", "exec")
    assert "x = 1\n" in text
    assert plant_secrets(random.Random(1), "x = 1\r\n\x0cy = 2", 0) == ("x = 1\r\n\x0cy = 2", [])
    text, secrets = plant_secrets(random.Random(2), "x = 1\n\x0c\ny = 2\r\n", 3)
    assert all(text[s["start"] : s["end"]] == s["value"] for s in secrets) and "\x0c\n" in text


def test_no_hash_words_before_hash_sized_keys():
    # The original drops a 32/40/64-char key when its line, before it, mentions sha/md5/hash/byte.
    for seed in range(100):
        text, secrets = plant_secrets(random.Random(seed), MODULE, 4, types=KEY_TYPES)
        for s in secrets:
            before = text[text.rfind("\n", 0, s["start"]) + 1 : s["start"]].lower()
            assert len(s["value"]) not in (32, 40, 64) or not re.search("sha|md5|hash|byte", before), before


def test_the_original_email_and_ip_regexes_find_the_planted_spans():
    regex = pytest.importorskip("regex")
    email = regex.compile(
        r"""(?<=^|[\b\s@,?!;:)('".\p{Han}<])([^\b\s@?!;,:)('"<]+@[^\b\s@!?;,/]*[^\b\s@?!;,/:)('">.]\.\p{L}\w{1,})"""
        r"""(?=$|[\b\s@,?!;:)('".\p{Han}>])""",
        regex.MULTILINE,
    )
    octet = "(?:25[0-5]|2[0-4][0-9]|[01]?[0-9][0-9]?)"
    h = "[0-9a-fA-F]{1,4}"
    v6 = [f"(?:{h}:){{7}}{h}", f"(?:{h}:){{1,7}}:", f"(?:{h}:){{1,6}}:{h}"]
    v6 += [f"(?:{h}:){{1,{5 - k}}}(?::{h}){{1,{k + 2}}}" for k in range(4)]
    v6 += [f"{h}:(?:(?::{h}){{1,6}})", f":(?:(?::{h}){{1,7}}|:)"]
    ip = regex.compile(
        rf"""(?:^|[\b\s@?,!;:'")(.\p{{Han}}])({octet}(?:\.{octet}){{3}}|{"|".join(v6)})(?:$|[\s@,?!;:'"(.\p{{Han}}])""",
        regex.MULTILINE,
    )
    for types, pattern in ((["email"], email), (["ipv4", "password"], ip), (["ipv6"], ip)):
        for seed in range(40):
            text, secrets = plant_secrets(random.Random(seed), MODULE, 3, types=types)
            found = {(m.group(1), m.start(1), m.end(1)) for m in pattern.finditer(text)}
            for s in secrets:
                if s["tag"] != "KEY":
                    assert (s["value"], s["start"], s["end"]) in found, (s, sorted(found))


def _detect_secrets_hits(settings) -> dict[str, set[str]]:
    from detect_secrets.core.scan import _process_line_based_plugins

    hits: dict[str, set[str]] = {}
    with settings():
        for type_name in KEY_TYPES:
            for seed in range(12):
                text, secrets = plant_secrets(random.Random(seed), "import os\n", 1, types=[type_name])
                lines = list(enumerate(text.splitlines(), 1))
                for found in _process_line_based_plugins(lines, filename="snippet.py"):
                    planted_lines = {text.count("\n", 0, s["start"]) + 1 for s in secrets}
                    if found.line_number in planted_lines:
                        hits.setdefault(type_name, set()).add(found.type)
    return hits


def test_detect_secrets_default_settings_flag_the_key_types():
    from detect_secrets.settings import default_settings

    hits = _detect_secrets_hits(default_settings)
    missed = [t for t in KEY_TYPES if t not in hits]
    required = {"aws_access_key_id", "github_token", "slack_bot_token", "stripe_secret_key"}
    assert required <= set(hits), f"detect-secrets missed {missed}; found {hits}"
    entropy = {t for t, kinds in hits.items() if any("High Entropy" in k for k in kinds)}
    assert entropy, f"no type found by an entropy plugin; missed {missed}; found {hits}"


def test_the_papers_detect_secrets_configuration_finds_all_but_passwords():
    from detect_secrets.settings import transient_settings

    plugins = """ArtifactoryDetector AWSKeyDetector AzureStorageKeyDetector CloudantDetector DiscordBotTokenDetector
    GitHubTokenDetector GitLabTokenDetector IbmCloudIamDetector IbmCosHmacDetector JwtTokenDetector MailchimpDetector
    NpmDetector OpenAIDetector PypiTokenDetector SendGridDetector SlackDetector SoftlayerDetector SquareOAuthDetector
    StripeDetector TelegramBotTokenDetector TwilioKeyDetector IPPublicDetector""".split()
    filters = (
        "is_potential_uuid is_likely_id_string is_templated_secret is_sequential_string is_not_alphanumeric_string"
    )
    config = {
        "plugins_used": [{"name": p} for p in plugins]
        + [{"name": "Base64HighEntropyString", "limit": 4.5}, {"name": "HexHighEntropyString", "limit": 3.0}],
        "filters_used": [{"path": f"detect_secrets.filters.heuristic.{f}"} for f in filters.split()],
    }
    hits = _detect_secrets_hits(lambda: transient_settings(config))
    # Passwords carry symbols outside the base64 alphabet and the paper drops the keyword plugin.
    assert set(KEY_TYPES) - set(hits) == {"password"}, hits


def test_stdlib_files_are_sorted_real_and_big_enough():
    files = stdlib_files()
    assert len(files) > 50
    assert [f.name for f in files] == sorted(f.name for f in files)
    assert all(f.suffix == ".py" and f.stat().st_size >= 2048 and f.name != "this.py" for f in files)
    assert stdlib_files(max_files=5) == files[:5]


def test_code_chunks_are_whole_distinct_lines_within_bounds():
    files = stdlib_files(max_files=30)
    texts = {f: "\n".join(_load(f).lines) + "\n" for f in files}
    chunks = code_chunks(random.Random(0), 300, 200, 900, files=files)
    assert len(chunks) == len(set(chunks)) == 300
    assert chunks == code_chunks(random.Random(0), 300, 200, 900, files=files)
    for chunk in chunks:
        assert 200 <= len(chunk) <= 900 and chunk.endswith("\n") and chunk.strip()
        assert not [ln for ln in chunk.split("\n") if ln != ln.rstrip()]
        assert any(text.startswith(chunk) or ("\n" + chunk) in text for text in texts.values())
        try:  # never cut inside a string or a bracket; cutting a block is fine
            list(tokenize.generate_tokens(io.StringIO(chunk).readline))
        except IndentationError:
            pass
    assert len(code_chunks(random.Random(1), 2000, 300, 1500)) == 2000
    with pytest.raises(ValueError):
        code_chunks(random.Random(0), 10, 500, 100)


def test_split_files_is_disjoint_and_deterministic():
    files = stdlib_files()
    train, unseen = split_files(files, random.Random(0), 0.2)
    assert not set(train) & set(unseen) and set(train) | set(unseen) == set(files)
    assert abs(len(unseen) - 0.2 * len(files)) <= 1
    assert (train, unseen) == split_files(files, random.Random(0), 0.2)
    assert split_files(files, random.Random(1), 0.2)[1] != unseen
    assert split_files(files[:3], random.Random(0), 0.01)[1] and split_files(files[:3], random.Random(0), 0.99)[0]


def test_continued_lines_agrees_with_tokenize():
    assert continued_lines(["x = (", "    1,", ")", "y = 2"]) == [False, True, True, False, False]
    assert continued_lines(['s = """', "def f():", '"""', "t = 1 + \\", "    2"]) == [False] + [True] * 2 + [
        False,
        True,
        False,
    ]
    assert continued_lines(["f(", "  1"])[-1] and continued_lines(["x = 1"]) == [False, False]
    for path in stdlib_files(max_files=12):
        lines = _load(path).lines
        starts, depth = {0}, 0
        for tok in tokenize.generate_tokens(io.StringIO("\n".join(lines) + "\n").readline):
            depth += tok.type == tokenize.OP and tok.string in "([{"
            depth -= tok.type == tokenize.OP and tok.string in ")]}"
            if tok.type == tokenize.NEWLINE or (tok.type == tokenize.NL and depth == 0):
                starts.add(tok.end[0])
        assert [not c for c in continued_lines(lines)] == [k in starts for k in range(len(lines) + 1)], path.name
