"""The second corpus (secrets drawn from detect-secrets' own expressions, in nine kinds of files, with negatives):
recall per tag with exact spans, no negative reported, for both presets; and the scanner fixes it led to."""

from __future__ import annotations

import random

import pytest

from fabricunlearn.scan import Scanner, filters
from fabricunlearn.scan.keys import PRESETS
from fabricunlearn.scan.patterns import find_ips
from tests.scan.second_corpus import KEY_SPECS, TAGS, measure, sample, second_corpus

rng = random.Random(5150)


@pytest.fixture(scope="module")
def corpus() -> list[dict]:
    return second_corpus()


def test_the_corpus_has_every_kind_of_secret(corpus):
    secrets = [s for doc in corpus for s in doc["secrets"]]
    for doc in corpus:
        for s in doc["secrets"] + doc["negatives"]:
            assert doc["text"][s["start"] : s["end"]] == s["value"]
    types = {s["type"] for s in secrets if s["tag"] == "KEY"}
    assert types == {spec.type for spec in KEY_SPECS}
    assert {s["tag"] for s in secrets} == set(TAGS)
    assert len({doc["kind"] for doc in corpus}) == 9
    assert sum(len(doc["negatives"]) for doc in corpus) > 300
    # keys are placed where their plugin sees them, with few exceptions (a plugin expression's own gaps)
    keys = [s for s in secrets if s["tag"] == "KEY"]
    assert sum(s["by_design"] for s in keys) > 0.98 * len(keys)


def test_default_preset(corpus):
    scores = measure(Scanner("default"), corpus)
    print({tag: (round(scores.recall(tag, "design"), 3), round(scores.precision(tag), 3)) for tag in TAGS})
    for tag in TAGS:
        assert scores.recall(tag, "design") >= 0.95, (tag, scores.recall(tag, "design"))
    assert scores.negatives_reported == []
    assert scores.precision("KEY") >= 0.95


def test_codeeraser_preset(corpus):
    """The paper's list finds what its plugins can see; passwords in URLs and after keywords are not among them."""
    theirs = set(PRESETS["codeeraser"])
    kept = [
        {**doc, "secrets": [s for s in doc["secrets"] if s["tag"] != "KEY" or _spec(s["type"]).plugins[0] in theirs]}
        for doc in corpus
    ]
    scores = measure(Scanner("codeeraser"), kept)
    for tag in TAGS:
        assert scores.recall(tag, "design") >= 0.95, (tag, scores.recall(tag, "design"))
    assert scores.negatives_reported == []
    missed = measure(Scanner("codeeraser"), corpus)
    assert missed.found_by_type["KEY", "Keyword password", True] == 0
    assert missed.found_by_type["KEY", "Basic auth password", True] == 0


def _spec(type_: str):
    return next(spec for spec in KEY_SPECS if spec.type == type_)


def test_sample_draws_what_each_expression_matches():
    from detect_secrets.plugins.base import RegexBasedDetector

    from fabricunlearn.scan.keys import plugin_classes

    for name in PRESETS["default"]:
        cls = plugin_classes()[name]
        if issubclass(cls, RegexBasedDetector):
            for expression in cls.denylist:
                assert expression.search(sample(expression, rng))


# --- the scanner fixes the corpus led to ---------------------------------------------------------------------------
def test_telegram_token_in_a_bot_api_url_is_not_widened_over_bot():
    token = f"{rng.randint(10**8, 10**9)}:{sample('[A-Za-z0-9_-]{35}', rng)}"
    text = f'URL = "https://api.telegram.org/bot{token}/sendMessage"\n'
    assert [(s["tag"], s["value"]) for s in Scanner().scan(text)] == [("KEY", token)]


def test_slack_webhooks_are_not_placeholders():
    url = "https://hooks.slack.com/services/T" + sample("[A-Z0-9]{9}/B[A-Z0-9]{9}/[A-Za-z0-9]{24}", rng)
    for preset in PRESETS:
        assert [s["value"] for s in Scanner(preset).scan(f'SLACK_WEBHOOK_URL = "{url}"\n')] == [url]
    assert filters.is_placeholder_key(url) and not filters.is_placeholder_key(url, provider_format=True)
    assert filters.is_placeholder_key("dummy" + url, provider_format=True)


def test_no_ipv6_address_starts_inside_another():
    assert list(find_ips("DB_HOST=fd00:3456::65")) == []  # its tail 3456::65 is no address of its own
    assert list(find_ips("UPSTREAM=2a00:1450:4001::200e")) == []  # CodeEraser's boundaries: not after "="
    assert [m.value for m in find_ips("UPSTREAM: 2a00:1450:4001::200e")] == ["2a00:1450:4001::200e"]


def test_the_corpus_does_not_depend_on_the_process():
    """Same documents under another string-hash seed (no set order leaks into the draws)."""
    import hashlib
    import json
    import os
    import subprocess
    import sys

    from tests.conftest import REPO

    code = (
        "import hashlib, json; from tests.scan.second_corpus import second_corpus; "
        "print(hashlib.sha256(json.dumps(second_corpus(60)).encode()).hexdigest())"
    )
    digests = {
        subprocess.run(
            [sys.executable, "-c", code],
            cwd=REPO,
            env={**os.environ, "PYTHONHASHSEED": seed},
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        for seed in ("1", "2")
    }
    assert digests == {hashlib.sha256(json.dumps(second_corpus(60)).encode()).hexdigest()}
