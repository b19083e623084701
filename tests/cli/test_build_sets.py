"""`fabricunlearn build-sets`: forget sets drawn as the original draws them, a retain set of code the model really
reproduces, owner-only files for secrets, a manifest, and one-line errors."""

from __future__ import annotations

import json
import random
import stat

import pytest
import torch

from fabricunlearn.cli import main
from fabricunlearn.commands.inference import ScoringModel
from fabricunlearn.commands.probe import score_rows
from fabricunlearn.data.batches import tokenize_documents
from fabricunlearn.data.formats import read_secret_rows, write_jsonl
from fabricunlearn.models import load_model_and_tokenizer

MIN_TOKENS = 8  # the CI world's documents are short; the original's 32 is the default


def _read(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def probed(ci_world, tmp_path_factory):
    model, tokenizer = load_model_and_tokenizer(ci_world / "model")
    sm = ScoringModel(model, tokenizer, tokenizer.pad_token_id, tokenizer.eos_token_id, torch.device("cpu"))
    path = tmp_path_factory.mktemp("probed") / "probed.jsonl"
    write_jsonl(path, score_rows(sm, read_secret_rows(ci_world / "secrets.jsonl"), []))
    return path


def _args(ci_world, probed, out, *extra) -> list[str]:
    return [
        "build-sets",
        "--model", str(ci_world / "model"),
        "--data", str(probed),
        "--corpus", str(ci_world / "corpus.jsonl"),
        "--out_dir", str(out),
        "--num_sets", "3", "--set_size", "4", "--min_secret_tokens", str(MIN_TOKENS),
        "--retain_size", "5", "--retain_prefix_tokens", "32", "--retain_new_tokens", "32",
        "--unseen", str(ci_world / "unseen.jsonl"), "--progress", "false",
        *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def sets(ci_world, probed, tmp_path_factory):
    out = tmp_path_factory.mktemp("sets") / "sets"
    assert main(_args(ci_world, probed, out)) == 0
    return out


def test_forget_sets_are_the_originals_draw_of_qualifying_documents(ci_world, probed, sets):
    _, tokenizer = load_model_and_tokenizer(ci_world / "model")
    rows = _read(probed)

    def qualifies(row):
        mask = tokenize_documents(tokenizer, [row], 512, with_secrets=True).secret_mask[0]
        return row["secret_mean_ma"] >= 0.9 and sum(mask) >= MIN_TOKENS

    eligible = [row for row in rows if qualifies(row)]
    assert 12 <= len(eligible) < len(rows)  # some documents really are left out
    indices = list(range(len(eligible)))
    random.seed(42)  # the original's draw, literally
    random.shuffle(indices)
    for i in range(3):
        got = _read(sets / f"forget_{i}.jsonl")
        assert [r["doc_id"] for r in got] == [eligible[k]["doc_id"] for k in indices[i * 4 : (i + 1) * 4]]
        assert read_secret_rows(sets / f"forget_{i}.jsonl")  # usable as a recipe's data.forget
    kept = [r["doc_id"] for r in _read(sets / "kept.jsonl")]
    assert kept == [eligible[k]["doc_id"] for k in indices[12:]]
    for name in ("forget_0.jsonl", "kept.jsonl"):
        assert stat.S_IMODE((sets / name).stat().st_mode) == 0o600  # they hold secret values
    manifest = json.loads((sets / "manifest.json").read_text())
    assert manifest["counts"]["eligible_documents"] == len(eligible)
    assert sum(manifest["counts"]["left_out"].values()) == len(rows) - len(eligible)
    assert set(manifest["sources"]) == {str(probed), str(ci_world / "corpus.jsonl"), str(ci_world / "unseen.jsonl")}
    assert len(_read(sets / "unseen.jsonl")) == manifest["counts"]["unseen_documents"] == 12


def test_retain_documents_are_reproduced_by_greedy_generate(ci_world, sets):
    from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu

    model, tokenizer = load_model_and_tokenizer(ci_world / "model")
    secret_docs = {r["doc_id"] for r in read_secret_rows(ci_world / "secrets.jsonl")}
    retain = _read(sets / "retain.jsonl")
    assert len(retain) == 5
    for row in retain:
        assert row["doc_id"] not in secret_docs
        ids = tokenizer(row["text"], add_special_tokens=False)["input_ids"]
        prompt = torch.tensor([ids[:32]])
        out = model.generate(
            prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=32, do_sample=False,
            pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        )[0, 32:].tolist()  # fmt: skip
        reference = tokenizer.decode(ids[32:64], skip_special_tokens=True)
        bleu = sentence_bleu(
            [reference], tokenizer.decode(out, skip_special_tokens=True),
            smoothing_function=SmoothingFunction().method4,
        )  # fmt: skip
        assert bleu == pytest.approx(row["bleu4"], abs=1e-12) and bleu >= 0.95


def test_the_seed_decides_the_draw(ci_world, probed, sets, tmp_path):
    assert main(_args(ci_world, probed, tmp_path / "same")) == 0
    assert (tmp_path / "same" / "forget_1.jsonl").read_text() == (sets / "forget_1.jsonl").read_text()
    assert main(_args(ci_world, probed, tmp_path / "other", "--seed", "7", "--retain_size", "1")) == 0
    assert (tmp_path / "other" / "forget_0.jsonl").read_text() != (sets / "forget_0.jsonl").read_text()


def _error_line(capsys) -> str:
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1, err
    return err[0]


def test_errors_are_one_line_and_write_nothing(ci_world, probed, sets, tmp_path, capsys):
    assert main(_args(ci_world, ci_world / "secrets.jsonl", tmp_path / "a")) == 2
    assert "run `fabricunlearn probe`" in _error_line(capsys)
    assert main(_args(ci_world, probed, tmp_path / "b", "--num_sets", "9")) == 2
    assert "are needed for 9 sets" in _error_line(capsys)
    assert main(_args(ci_world, probed, sets)) == 2
    assert "--overwrite" in _error_line(capsys)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
