"""The CI-size code-secrets world: the files DESIGN.md promises, and a model that really memorized its secrets."""

from __future__ import annotations

import json
import stat

import pytest

from fabricunlearn.data.formats import read_rows, read_secret_rows

pytestmark = pytest.mark.slow


def test_world_files_follow_the_contracts(ci_world):
    for name in (
        "model/config.json",
        "model/tokenizer.json",
        "corpus.jsonl",
        "secrets.jsonl",
        "unseen.jsonl",
        "kept.jsonl",
        "retain.jsonl",
        "thresholds.json",
        "world.json",
        "forget_0.jsonl",
        "forget_1.jsonl",
    ):
        assert (ci_world / name).exists(), name
    secrets = read_secret_rows(ci_world / "secrets.jsonl")  # checks every span holds its value
    corpus = {row["doc_id"]: row for row in read_rows(ci_world / "corpus.jsonl")}
    assert {row["doc_id"] for row in secrets} <= set(corpus)
    for row in secrets:
        starts = [s["start"] for s in row["secrets"]]
        assert starts == sorted(starts)
        assert {s["tag"] for s in row["secrets"]} <= {"KEY", "EMAIL", "IP_ADDRESS"}
    unseen = read_rows(ci_world / "unseen.jsonl")
    assert not {row["doc_id"] for row in unseen} & set(corpus), "unseen documents must never be trained on"
    assert not {row["text"] for row in unseen} & {row["text"] for row in corpus.values()}
    # files holding secret values are owner-only
    assert stat.S_IMODE((ci_world / "secrets.jsonl").stat().st_mode) == 0o600
    tags = {s["tag"] for row in secrets for s in row["secrets"]}
    assert tags == {"KEY", "EMAIL", "IP_ADDRESS"}


def test_forget_sets_are_disjoint_memorized_documents(ci_world):
    from fabricunlearn.metrics.memorization import encode_secrets, secret_ma
    from fabricunlearn.models import load_model_and_tokenizer

    manifest = json.loads((ci_world / "world.json").read_text())
    sets = [read_secret_rows(ci_world / f"forget_{i}.jsonl") for i in range(len(manifest["forget_sets"]))]
    kept = read_secret_rows(ci_world / "kept.jsonl")
    ids = [row["doc_id"] for rows in sets for row in rows] + [row["doc_id"] for row in kept]
    assert len(ids) == len(set(ids)), "forget sets and kept documents must be disjoint"
    assert all(len(rows) == manifest["spec"]["forget_set_size"] for rows in sets)
    assert len(kept) >= 4, "the world must keep memorized secrets out of every forget set"

    model, tokenizer = load_model_and_tokenizer(ci_world / "model")
    for rows in (*sets, kept):
        enc = encode_secrets(tokenizer, rows)
        ma = secret_ma(model, enc, pad_token_id=tokenizer.pad_token_id)
        per_doc = {}
        for d, v in zip(enc.doc_index, ma.tolist()):
            per_doc.setdefault(d, []).append(v)
        assert all(sum(v) / len(v) >= 0.9 for v in per_doc.values())


def test_memorization_varies_and_long_secrets_exist(ci_world):
    manifest = json.loads((ci_world / "world.json").read_text())
    assert manifest["secrets"]["over_32_tokens"] > 0
    assert manifest["memorized_documents"] < manifest["documents"]["secret"], "some documents must stay unmemorized"
    thresholds = json.loads((ci_world / "thresholds.json").read_text())
    assert 0 < thresholds["ma"] < 0.5, "the unseen-code MA threshold should be that of a model that did not see it"


def test_toy_build_reuses_a_built_world(ci_world, capsys):
    from fabricunlearn.cli import main

    assert main(["toy", "build", "code_secrets_ci", "--out_dir", str(ci_world), "--progress", "false"]) == 0
    out = capsys.readouterr().out
    assert "code_secrets_ci" in out and "memorized" in out


def test_a_folder_that_is_not_a_world_is_never_replaced(tmp_path, capsys):
    from fabricunlearn.cli import main

    (tmp_path / "mine.jsonl").write_text('{"text": "my own data"}\n')
    assert main(["toy", "build", "code_secrets_ci", "--out_dir", str(tmp_path), "--progress", "false"]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path}: holds files but no toy world" in err and len(err.strip().splitlines()) == 1
    assert (tmp_path / "mine.jsonl").read_text() == '{"text": "my own data"}\n'
