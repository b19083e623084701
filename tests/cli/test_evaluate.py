"""`fabricunlearn evaluate`: evaluation.json as DESIGN.md has it, values equal to the other commands' and the metric
functions', and bad input (no tokenizer, wrong offsets, an empty or missing set) costs only the part it touches."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from fabricunlearn.cli import main
from fabricunlearn.data.formats import read_rows, read_secret_rows, write_jsonl

DESIGN_KEYS = {"forget", "retain", "perplexity", "humaneval", "mia", "thresholds", "forgotten"}


def _recipe(ci_world: Path, tmp_path: Path) -> Path:
    """A recipe on the CI world (as a run's hyperparameters.yaml would name it)."""
    recipe = {
        "data": {
            "world": "code_secrets_ci",
            "world_dir": str(ci_world),
            "forget": "forget_0.jsonl",
            "kept": "kept.jsonl",
            "retain": "retain.jsonl",
            "unseen": "unseen.jsonl",
        },
        "method": {"name": "gd"},
        "stop": {"thresholds": "thresholds.json"},
        "eval": {"el_ns": [3, 10]},
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


@pytest.fixture(scope="module")
def evaluated(ci_world, tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("evaluate")
    args = ["evaluate", "--model", str(ci_world / "model"), "--recipe", str(_recipe(ci_world, tmp))]
    humaneval = ["--humaneval.samples", "2", "--humaneval.limit", "3", "--progress", "false"]
    assert main([*args, *humaneval, "--out_dir", str(tmp / "out")]) == 0
    return tmp / "out"


def test_evaluation_json_follows_the_contract(evaluated, ci_world):
    ev = json.loads((evaluated / "evaluation.json").read_text())
    assert set(ev) >= DESIGN_KEYS
    assert set(ev["forget"]) == set(ev["kept"]) == set(ev["retain"]) == {"ma", "el3", "el10"}
    thresholds = json.loads((ci_world / "thresholds.json").read_text())
    assert ev["thresholds"] == {"ma": thresholds["ma"], "el10": thresholds["el10"]}
    assert ev["forgotten"] is False  # the world's model memorized its forget set
    assert ev["forget"]["ma"] > 0.9 and ev["kept"]["ma"] > 0.9
    assert set(ev["mia"]) == {"loss", "zlib", "min_k", "min_k_pp"}
    assert all(v > 0.95 for v in ev["mia"].values())  # memorized documents are told from unseen ones
    assert math.isfinite(ev["perplexity"]) and ev["perplexity"] > 1
    he = ev["humaneval"]
    assert he["problems"] == 3 and he["samples"] == 2 and set(he) >= {"pass@1"} and "pass@5" not in he
    assert ev["skipped"] == []
    samples = [json.loads(line) for line in (evaluated / "humaneval_samples.jsonl").read_text().splitlines()]
    assert [s["task_id"] for s in samples] == [f"HumanEval/{i}" for i in range(3) for _ in range(2)]
    assert all(s["result"] == "passed" or s["result"].startswith(("failed", "timed out")) for s in samples)


def test_values_equal_probe_and_the_sequence_metrics(evaluated, ci_world, tmp_path):
    """Forget MA is the mean over secrets of what `probe` reports; retain MA is the mean sequence MA of the first
    128 tokens (`fabricunlearn.metrics.sequence`), computed here without Fabric."""
    from fabricunlearn.metrics.sequence import encode_sequences, sequence_ma
    from fabricunlearn.models import load_model_and_tokenizer

    ev = json.loads((evaluated / "evaluation.json").read_text())
    probed = tmp_path / "probed.jsonl"
    args = ["probe", "--model", str(ci_world / "model"), "--data", str(ci_world / "forget_0.jsonl")]
    assert main([*args, "--output", str(probed), "--metrics", "ma,el10", "--progress", "false"]) == 0
    secrets = [s for row in read_secret_rows(probed) for s in row["secrets"]]
    assert ev["forget"]["ma"] == pytest.approx(sum(s["ma"] for s in secrets) / len(secrets), abs=1e-9)
    assert ev["forget"]["el10"] == pytest.approx(sum(s["el10"] for s in secrets) / len(secrets), abs=1e-9)

    model, tok = load_model_and_tokenizer(ci_world / "model")
    seqs = encode_sequences(tok, [r["text"] for r in read_rows(ci_world / "retain.jsonl")], 128)
    ma = sequence_ma(model.eval(), seqs, pad_token_id=tok.pad_token_id)
    assert ev["retain"]["ma"] == pytest.approx(float(ma[~ma.isnan()].mean()), abs=1e-9)


def test_bad_sets_cost_only_their_part(ci_world, tmp_path, capsys):
    rows = read_secret_rows(ci_world / "forget_0.jsonl")
    rows[1]["secrets"][0]["start"] += 3  # offsets that no longer match the text
    write_jsonl(tmp_path / "shifted.jsonl", rows)
    (tmp_path / "empty.jsonl").write_text("")
    args = ["evaluate", "--model", str(ci_world / "model"), "--forget", str(tmp_path / "shifted.jsonl")]
    args += ["--retain", str(tmp_path / "empty.jsonl"), "--kept", str(tmp_path / "missing.jsonl")]
    args += ["--unseen", str(ci_world / "unseen.jsonl"), "--humaneval.samples", "0", "--out_dir", str(tmp_path / "o")]
    assert main(args) == 0
    ev = json.loads((tmp_path / "o" / "evaluation.json").read_text())
    assert ev["forget"] is None and ev["retain"] is None and ev["kept"] is None and ev["humaneval"] is None
    assert ev["forgotten"] is None and ev["thresholds"] is None
    # the forget texts still serve membership inference, and the unseen set perplexity
    assert all(v > 0.95 for v in ev["mia"].values()) and ev["perplexity"] > 1
    skipped = "\n".join(ev["skipped"])
    assert f"{tmp_path / 'shifted.jsonl'}: doc {rows[1]['doc_id']!r} secret 0" in skipped
    assert f"{tmp_path / 'empty.jsonl'} is empty" in skipped
    assert f"{tmp_path / 'missing.jsonl'}: no such file" in skipped
    assert "HumanEval: off" in skipped and "no thresholds given" in skipped
    out = capsys.readouterr().out
    assert "not measured: forget MA / EL_n" in out and "MIA AUC loss" in out


def test_a_model_folder_without_a_tokenizer_is_one_line_and_tokenizer_fixes_it(ci_world, tmp_path, capsys):
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("config.json", "generation_config.json", "model.safetensors"):
        shutil.copy(ci_world / "model" / name, bare / name)
    args = ["evaluate", "--model", str(bare), "--unseen", str(ci_world / "unseen.jsonl"), "--humaneval.samples", "0"]
    assert main([*args, "--out_dir", str(tmp_path / "o")]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and f"{bare}: no tokenizer in this folder" in err[0] and "--tokenizer" in err[0]
    assert not (tmp_path / "o").exists()
    assert main([*args, "--out_dir", str(tmp_path / "o"), "--tokenizer", str(ci_world / "model")]) == 0
    assert json.loads((tmp_path / "o" / "evaluation.json").read_text())["perplexity"] > 1


def test_a_runs_final_model_is_evaluated_into_the_run_directory(ci_world, tmp_path, monkeypatch):
    run_dir = tmp_path / "runs" / "gd" / "version_0"
    shutil.copytree(ci_world / "model", run_dir / "final")
    shutil.copy(_recipe(ci_world, tmp_path), run_dir / "hyperparameters.yaml")
    monkeypatch.chdir(tmp_path)
    args = ["evaluate", "--model", "runs/gd/version_0/final", "--recipe", "runs/gd/version_0/hyperparameters.yaml"]
    assert main([*args, "--humaneval.samples", "0", "--batch_size", "7"]) == 0
    ev = json.loads((run_dir / "evaluation" / "evaluation.json").read_text())
    assert ev["forget"]["ma"] > 0.9 and ev["model"] == "runs/gd/version_0/final"


def test_bad_humaneval_settings_are_one_line(ci_world, capsys):
    args = ["evaluate", "--model", str(ci_world / "model"), "--humaneval.top_p", "1.5"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "top_p" in err and "Traceback" not in err


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_evaluate_on_a_gpu_in_bf16_agrees_with_the_cpu(evaluated, ci_world, tmp_path):
    cpu = json.loads((evaluated / "evaluation.json").read_text())
    args = ["evaluate", "--model", str(ci_world / "model"), "--recipe", str(_recipe(ci_world, tmp_path))]
    args += ["--device", "cuda", "--precision", "bf16", "--humaneval.samples", "2", "--humaneval.limit", "3"]
    assert main([*args, "--progress", "false", "--out_dir", str(tmp_path / "gpu")]) == 0
    gpu = json.loads((tmp_path / "gpu" / "evaluation.json").read_text())
    for group in ("forget", "kept", "retain"):
        assert gpu[group]["ma"] == pytest.approx(cpu[group]["ma"], abs=0.05), group  # bf16 flips a few argmaxes
    assert gpu["perplexity"] == pytest.approx(cpu["perplexity"], rel=0.05)
    assert all(v > 0.95 for v in gpu["mia"].values()) and gpu["humaneval"]["problems"] == 3


def test_an_interrupted_humaneval_resumes_at_the_next_problem(evaluated, ci_world, tmp_path, monkeypatch, capsys):
    """Killed while executing problem 1: problem 0's rows are kept; the next run samples only problems 1 and 2 and
    writes what an uninterrupted evaluation writes."""
    from fabricunlearn.metrics import humaneval

    real_execute, real_sample = humaneval.execute, humaneval.sample_completions
    sampled: list[str] = []

    def interrupted(tasks, completions, **kwargs):
        if "HumanEval/1" in tasks:
            raise KeyboardInterrupt
        return real_execute(tasks, completions, **kwargs)

    def counting(model, tokenizer, tasks, **kwargs):
        sampled.extend(tasks)
        return real_sample(model, tokenizer, tasks, **kwargs)

    monkeypatch.setattr(humaneval, "sample_completions", counting)
    args = ["evaluate", "--model", str(ci_world / "model"), "--unseen", str(ci_world / "unseen.jsonl")]
    args += ["--humaneval.samples", "2", "--humaneval.limit", "3", "--progress", "false", "--out_dir", str(tmp_path)]
    monkeypatch.setattr(humaneval, "execute", interrupted)
    assert main(args) == 130
    partial = tmp_path / "humaneval_samples.jsonl.partial"
    assert [json.loads(line)["task_id"] for line in partial.read_text().splitlines()] == ["HumanEval/0"] * 2
    assert not (tmp_path / "humaneval_samples.jsonl").exists()

    monkeypatch.setattr(humaneval, "execute", real_execute)
    assert main([*args, "--humaneval.top_p", "0.5"]) == 2  # other settings would mix two kinds of samples
    assert "was started with another top_p (0.95)" in capsys.readouterr().err and partial.exists()
    sampled.clear()
    assert main(args) == 0
    assert sampled == ["HumanEval/1", "HumanEval/2"]
    assert (tmp_path / "humaneval_samples.jsonl").read_text() == (evaluated / "humaneval_samples.jsonl").read_text()
    assert not partial.exists()
    ev = json.loads((tmp_path / "evaluation.json").read_text())
    assert ev["humaneval"] == json.loads((evaluated / "evaluation.json").read_text())["humaneval"]

    assert main([*args, "--humaneval.temperature", "0.8"]) == 0  # a finished file is replaced, not resumed
    assert json.loads((tmp_path / "evaluation.json").read_text())["humaneval"]["temperature"] == 0.8
