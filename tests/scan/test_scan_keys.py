"""Keys: each plugin on positive and negative lines, whole-token spans, the filters, and no eval() anywhere.

Token-shaped values are drawn at test time from a seeded generator, never written out in the repository.
"""

from __future__ import annotations

import base64
import json
import random
import string
import sys
from pathlib import Path

import pytest

from fabricunlearn.scan import Scanner, filters, redact
from fabricunlearn.scan.gibberish import counts_module, is_gibberish, train, training_text
from fabricunlearn.scan.keys import CODEERASER_PLUGINS, PRESETS, resolve_plugins

ALNUM = string.ascii_letters + string.digits
HEX = "0123456789abcdef"
rng = random.Random(20240607)


def draw(n: int, alphabet: str = ALNUM) -> str:
    while True:  # a value the placeholder filter would drop (a run of 7) is redrawn, as the toy world does
        value = "".join(rng.choices(alphabet, k=n))
        if not filters.is_placeholder_key(value) and is_gibberish(value):
            return value


def b64url(obj) -> str:
    return base64.urlsafe_b64encode(json.dumps(obj).encode()).decode().rstrip("=")


def keys(text: str, **kwargs) -> list[tuple[str, str]]:
    secrets = Scanner(**kwargs).scan(text)
    for s in secrets:
        assert text[s["start"] : s["end"]] == s["value"], s
    assert secrets == sorted(secrets, key=lambda s: s["start"])
    return [(s["type"], s["value"]) for s in secrets if s["tag"] == "KEY"]


GITHUB = "ghp_" + draw(36)
JWT = f"{b64url({'alg': 'HS256', 'typ': 'JWT'})}.{b64url({'sub': '42', 'name': 'Ada'})}.{draw(43, ALNUM + '-_')}"
CASES = [
    # (line with {v}, value, type)
    ('aws_access_key_id = "{v}"', "AKIA" + draw(16, string.ascii_uppercase + string.digits), "AWS Access Key"),
    ('boto3.Session(aws_secret_access_key="{v}")', draw(40, ALNUM + "+/"), "AWS Access Key"),
    ("Github({v})", GITHUB, "GitHub Token"),  # the plugin reports only "ghp": widened to the token
    ("headers = {{'PRIVATE-TOKEN': '{v}'}}", "glpat-" + draw(20, ALNUM + "-_"), "GitLab Token"),
    (
        'WebClient(token="{v}")',
        f"xoxb-{rng.randint(10**10, 10**11)}-{rng.randint(10**11, 10**12)}-{draw(24)}",
        "Slack Token",
    ),
    ('stripe.api_key = "{v}"', "sk_live_" + draw(24), "Stripe Access Key"),
    ('stripe.api_key = "{v}"', "sk_live_" + draw(99), "Stripe Access Key"),  # the plugin matches only 24 of 99
    ('OpenAI(api_key="{v}")', f"sk-{draw(20)}T3BlbkFJ{draw(20)}", "OpenAI Token"),
    ('SendGridAPIClient("{v}")', f"SG.{draw(22, ALNUM + '-_')}.{draw(43, ALNUM + '-_')}", "SendGrid API Key"),
    ('Client("{v}", api_secret)', "SK" + draw(32, HEX), "Twilio API Key"),
    ('mailchimp.set_config({{"api_key": "{v}"}})', draw(32, HEX) + "-us6", "Mailchimp Access Key"),
    ('TOKEN = "{v}"', JWT, "JSON Web Token"),  # the plugin's lazy last part leaves the signature out
    ('ARTIFACTORY_KEY="{v}"', "AKC" + draw(60), "Artifactory Credentials"),  # the match includes the quotes
    ('conn = "AccountName=x;AccountKey={v}"', draw(86, ALNUM + "+/") + "==", "Azure Storage Account access key"),
    ('env={{"NPM_TOKEN": "{v}"}}', "npm_" + draw(36), "NPM tokens"),
    ('headers = {{"Authorization": "Bearer {v}"}}', "npm_" + draw(36), "NPM tokens"),
    ("//registry.npmjs.org/:_authToken={v}", "npm_" + draw(36), "NPM tokens"),
    ('signing_secret = "{v}"', draw(64, HEX), "Hex High Entropy String"),
    ('blob = "{v}"', draw(40, ALNUM + "+/"), "Base64 High Entropy String"),
    ('db_password = "{v}"', draw(12) + "#!" + draw(6), "Password"),
    ("ADMIN_PASS = '{v}'", "=" + draw(18), "Password"),  # a value may start with a symbol
    ('password = os.getenv("DB_PASSWORD", "{v}")', draw(10) + "~%" + draw(8), "Password"),
    ('DATABASE_URL = "postgresql://svc:{v}@db.internal:5432/orders"', draw(14) + "+!" + draw(4), "Password"),
    ('REDIS_URL = "redis://:{v}@cache.internal:6379/0"', draw(20), "Password"),
    ('password: str = "{v}"', draw(16) + "?" + draw(4), "Password"),
]


@pytest.mark.parametrize(("template", "value", "type_"), CASES, ids=[c[2] for c in CASES])
def test_each_key_format_is_found_whole(template, value, type_):
    line = "import os\n" + template.format(v=value) + "\nprint('done')\n"
    found = keys(line)
    assert found == [(type_, value)]


@pytest.mark.parametrize(
    "line",
    [
        'name = "QuickBrownFoxJumpsOverTheLazyDogsWithVexingZebraQuiz"',  # entropy passes, word-like: not a key
        'password = "Enter your password here"',
        'password = "${DB_PASSWORD}"',  # templated
        'request_id = "3f2b8c1e-9a7d-4e2f-b6c3-1d2e3f4a5b6c"',  # a UUID
        'alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZ012345"',  # sequential
        'api_key = "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"',  # placeholder
        'AWS_KEY = "AKIAIOSFODNN7EXAMPLE"',  # AWS's documented example
        'mask = "****************************"',
        'host = "34.120.5.17"',  # public IPv4: an IP_ADDRESS, not a key
        "def compute(nothing, db): return nothing",  # eager scanning would flag these words
        "for token in tokens: yield token",
    ],
)
def test_negatives(line):
    assert keys(line + "\n") == []


def test_codeeraser_preset_is_the_papers_list():
    assert PRESETS["codeeraser"] == CODEERASER_PLUGINS and len(CODEERASER_PLUGINS) == 24
    assert not {"KeywordDetector", "BasicAuthDetector", "PrivateKeyDetector"} & set(CODEERASER_PLUGINS)
    assert resolve_plugins("codeeraser,KeywordDetector")[-1] == "KeywordDetector"
    with pytest.raises(ValueError, match="unknown key plugin 'Nope'"):
        resolve_plugins("codeeraser,Nope")
    # with the paper's list, a password is no key; the default finds it
    line = f'db_password = "{draw(12)}#!{draw(6)}"\n'
    assert keys(line, plugins="codeeraser") == [] and len(keys(line)) == 1


def test_hashes_are_not_keys():
    digest = draw(64, HEX)
    assert keys(f'sha256 = "{digest}"\n') == []
    assert keys(f'checksums = {{"md5": "{draw(32, HEX)}"}}\n') == []
    assert filters.is_hash(digest, "expected_sha = ") and not filters.is_hash(digest, "secret = ")
    assert not filters.is_hash(digest[:40] + "ab", "sha = ")  # 42 characters: no hash length
    # a file that speaks of hashes: its entropy findings are dropped, a provider token is kept
    text = f"import hashlib\nblob = '{draw(32, HEX)}'\ntoken = '{GITHUB}'\n"
    assert filters.file_has_hashes(text)
    assert keys(text) == [("GitHub Token", GITHUB)]
    # "shape", "shared", "shadow" do not count as "sha" (the original's substring count did)
    assert not filters.file_has_hashes("shape = shared_shadow()\n" * 3)
    assert filters.file_has_hashes("use sha1 here\n")


def test_placeholder_filter():
    for value in ("ghp", "abcXXXXXXXdef", "aaaaaaa1", "0000000123", "my-dummy-token-123", "CHANGEME_please", "https_x"):
        assert filters.is_placeholder_key(value), value
    assert not filters.is_placeholder_key(draw(40))


def test_every_whole_token_occurrence_is_marked():
    value = draw(40, ALNUM + "+/")  # found by entropy, in quotes only
    text = f"blob = '{value}'\n# the same value again: {value}, unquoted\nx = prefix{value}\n"
    found = Scanner().scan(text)
    first = text.index(value)
    assert [s["start"] for s in found] == [first, text.index(value, first + 1)]  # not the one inside a word
    assert {s["type"] for s in found} == {"Base64 High Entropy String"}


def test_spans_after_crlf_and_non_ascii():
    token, password = GITHUB, draw(16) + "!" + draw(3)
    text = f"# Grüße, café ☕ 🙂\r\n\r\nTOKEN = '{token}'\r\npassword = \"{password}\"\r\n"
    found = Scanner().scan(text)
    assert [s["value"] for s in found] == [token, password]
    for s in found:
        assert text[s["start"] : s["end"]] == s["value"]


def test_no_eval_in_the_scanner():
    import ast

    for path in Path(filters.__file__).parent.glob("*.py"):
        calls = {getattr(n.func, "id", None) for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.Call)}
        assert not {"eval", "exec"} & calls, path


def test_shipped_gibberish_model():
    assert is_gibberish(draw(30)) and not is_gibberish("configuration") and not is_gibberish("12345678")
    from fabricunlearn.scan import _gibberish_counts

    trained_on = _gibberish_counts.__doc__.split("Python ")[1].split(".")[:3]
    if ".".join(trained_on) != sys.version.split()[0]:
        pytest.skip("the shipped model was trained on another Python's pydoc topics")
    assert counts_module(train(training_text())) == Path(_gibberish_counts.__file__).read_text()


def test_redact():
    assert redact("AKIAZ7Q3RTX9BNM2KX3Q") == "AKIA…X3Q (20 chars)"
    assert redact("abc") == "… (3 chars)"
    assert redact("abcdefgh") == "ab…h (8 chars)"
    value = draw(40)
    assert value not in redact(value) and value[:4] in redact(value)


def test_overlapping_findings_keep_the_most_specific():
    password = draw(14) + "+!" + draw(4)
    text = f'URL = "smtp://mailer:{password}@mail.acme-corp.com/"\nAWS = "AKIA{draw(16, string.ascii_uppercase)}"\n'
    found = Scanner().scan(text)
    # the password, not an email "password@mail.acme-corp.com"; the AWS key id, not also a Base64 string
    assert [(s["tag"], s["type"]) for s in found] == [("KEY", "Password"), ("KEY", "AWS Access Key")]
    assert found[0]["value"] == password


def test_many_findings_in_one_document():
    from detect_secrets.plugins.high_entropy_strings import Base64HighEntropyString

    entropy = Base64HighEntropyString().calculate_shannon_entropy
    # (40 characters after "sha" on a line would be a hash: no hash word inside the values, which precede a repeat)
    values = [v for v in (draw(40) for _ in range(1700)) if entropy(v) > 4.6 and not filters.is_hash(v, v)][:1500]
    text = "".join(f'k{i} = "{v}"  # again: {v}\n' for i, v in enumerate(values))
    found = Scanner().scan(text)
    assert len(found) == 2 * len(values)
    assert all(a["end"] <= b["start"] for a, b in zip(found, found[1:]))
