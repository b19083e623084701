"""`fabricunlearn thresholds`: mean full-sequence MA / EL_n over unseen code, HumanEval offline by default, and a
thresholds.json a recipe can use."""

from __future__ import annotations

import json
import math

import pytest

from fabricunlearn.cli import main
from fabricunlearn.commands.thresholds import humaneval_texts
from fabricunlearn.config import THRESHOLD_PRESETS, StopArgs
from fabricunlearn.data.formats import read_rows
from fabricunlearn.metrics.sequence import encode_sequences, sequence_el, sequence_ma
from fabricunlearn.models import load_model_and_tokenizer


def _expected(model_dir, texts, ns=(3, 5, 10), **kwargs) -> dict[str, float]:
    model, tokenizer = load_model_and_tokenizer(model_dir)
    seqs = encode_sequences(tokenizer, texts, 128)
    pad, eos = tokenizer.pad_token_id, tokenizer.eos_token_id
    values = {"ma": sequence_ma(model, seqs, pad_token_id=pad)}
    els = sequence_el(model, seqs, ns, pad_token_id=pad, eos_token_id=eos, **kwargs)
    values.update({f"el{n}": v for n, v in els.items()})
    return {
        k: sum(x for x in v.tolist() if not math.isnan(x)) / sum(not math.isnan(x) for x in v.tolist())
        for k, v in values.items()
    }


def test_thresholds_of_unseen_rows_equal_the_sequence_metrics(tiny_world, tmp_path):
    out = tmp_path / "thresholds.json"
    args = ["thresholds", "--model", str(tiny_world / "model"), "--data", str(tiny_world / "unseen.jsonl")]
    assert main([*args, "--output", str(out), "--progress", "false", "--batch_size", "7"]) == 0
    got = json.loads(out.read_text())
    texts = [row["text"] for row in read_rows(tiny_world / "unseen.jsonl")]
    expected = _expected(tiny_world / "model", texts)
    assert {k: got[k] for k in expected} == pytest.approx(expected, abs=1e-12)
    assert got["source"]["data"].endswith("unseen.jsonl") and got["source"]["window"] == "ku"
    # a recipe can name the file
    assert StopArgs(thresholds=str(out)).resolve(None) == (got["ma"], got["el10"])


def test_builtin_unseen_set_is_humaneval_offline(tiny_world, tmp_path):
    texts = humaneval_texts()
    assert len(texts) == 164 and "def " in texts[0] and "return" in texts[0]
    out = tmp_path / "t.json"
    args = ["thresholds", "--model", str(tiny_world / "model"), "--output", str(out), "--limit", "2"]
    assert main([*args, "--el_ns", "5", "--window", "icu", "--icu_start", "100", "--progress", "false"]) == 0
    got = json.loads(out.read_text())
    assert set(got) == {"ma", "el5", "source"} and "HumanEval" in got["source"]["data"]
    expected = _expected(tiny_world / "model", texts[:2], ns=(5,), window="icu", icu_start=100)
    assert {k: got[k] for k in expected} == pytest.approx(expected, abs=1e-12)


def test_presets_are_the_published_thresholds():
    assert StopArgs(thresholds="codegen-2b-mono").resolve(None) == (0.5361, 0.0628)
    assert StopArgs(thresholds="Qwen2.5-Coder-7B", el_n=3).resolve(None) == (0.4099, 0.1565)
    assert len(THRESHOLD_PRESETS) == 5


def _error_line(capsys) -> str:
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1, err
    return err[0]


@pytest.mark.parametrize(
    ("extra", "expected"),
    [(["--el_ns", "3,x"], "--el_ns"), (["--el_ns", "0"], "--el_ns"), (["--device", "cuda:7"], "--device")],
)
def test_bad_options_are_one_line(tiny_world, tmp_path, capsys, extra, expected):
    args = ["thresholds", "--model", str(tiny_world / "model"), "--output", str(tmp_path / "t.json")]
    assert main([*args, *extra]) == 2
    assert expected in _error_line(capsys)


def test_texts_too_short_to_score(tiny_world, tmp_path, capsys):
    data = tmp_path / "short.jsonl"
    data.write_text(json.dumps({"text": "x"}) + "\n")
    args = ["thresholds", "--model", str(tiny_world / "model"), "--data", str(data), "--output", str(tmp_path / "t")]
    assert main([*args, "--progress", "false"]) == 2
    assert "too short" in _error_line(capsys)
    assert not (tmp_path / "t").exists()
