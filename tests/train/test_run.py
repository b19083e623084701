"""A run on the tiny world: the files it writes, resume after an interruption or a kill, NaN handling."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml

from fabricunlearn.cli import main, run
from tests.conftest import REPO, tiny_recipe


def _weights(path):
    return torch.load(path, weights_only=False)["model"]


def _max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


def _evals(out_dir) -> list[dict]:
    rows = [json.loads(x) for x in (out_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if not k.startswith("per_secret")} for r in rows]


def test_run_writes_the_run_directory(tiny_world, tmp_path):
    out = tmp_path / "run"
    run(tiny_recipe(tiny_world, out))
    for name in (
        "hyperparameters.yaml",
        "metrics.jsonl",
        "evaluation.json",
        "report.md",
        "memorization_per_epoch.png",
        "per_secret_ma.png",
        "checkpoints/last.ckpt",
        "final/config.json",
        "final/model.safetensors",
        "final/tokenizer.json",
    ):
        assert (out / name).exists(), name
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    rows = _evals(out)
    assert [r["epoch"] for r in rows] == [0, 1, 2, 3]
    assert rows[0]["forget/el3"] >= 0 and "unseen/perplexity" in rows[0]
    evaluation = json.loads((out / "evaluation.json").read_text())
    assert set(evaluation) >= {"forget", "retain", "perplexity", "humaneval", "mia", "thresholds", "forgotten"}
    assert set(evaluation["forget"]) == {"ma", "el3", "el10"}
    # `final/` is the best epoch by the stopping rule, a complete Hugging Face folder
    from transformers import AutoModelForCausalLM

    best = AutoModelForCausalLM.from_pretrained(out / "final")
    ckpt = _weights(out / "checkpoints" / "best.ckpt")
    assert torch.equal(best.state_dict()["transformer.h.1.mlp.c_fc.weight"], ckpt["transformer.h.1.mlp.c_fc.weight"])
    # the reference model never enters a checkpoint: one model, one optimizer, counters
    state = torch.load(out / "checkpoints" / "last.ckpt", weights_only=False)
    assert set(state) == {
        "model",
        "optimizer",
        "scheduler",
        "epoch",
        "step",
        "stopping",
        "before",
        "best",
        "seconds",
        "method",
    }


def test_hyperparameters_yaml_reruns_the_same_run(tiny_world, tmp_path):
    run(tiny_recipe(tiny_world, tmp_path / "a"))
    hp = yaml.safe_load((tmp_path / "a" / "hyperparameters.yaml").read_text())
    assert hp["out_dir"] is None and hp["method"]["name"] == "gd"
    assert main(["run", str(tmp_path / "a" / "hyperparameters.yaml"), "--out_dir", str(tmp_path / "b")]) == 0
    assert (
        _max_diff(_weights(tmp_path / "a/checkpoints/last.ckpt"), _weights(tmp_path / "b/checkpoints/last.ckpt")) == 0
    )


@pytest.mark.parametrize("schedule", ["two_phase", "interleaved"])
def test_resume_after_interruption_reaches_the_same_weights(tiny_world, tmp_path, monkeypatch, schedule):
    import fabricunlearn.train.loop as loop

    common = {"stop.max_epochs": 4, "train.schedule": schedule, "train.save_every_steps": 1}
    run(tiny_recipe(tiny_world, tmp_path / "straight", **common))

    real_step, calls = loop.train_step, {"n": 0}

    def interrupted_step(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:  # mid-epoch for `interleaved` (3 steps per epoch), an epoch start for `two_phase`
            raise KeyboardInterrupt
        return real_step(*args, **kwargs)

    monkeypatch.setattr(loop, "train_step", interrupted_step)
    with pytest.raises(KeyboardInterrupt):
        run(tiny_recipe(tiny_world, tmp_path / "resumed", **common))
    monkeypatch.setattr(loop, "train_step", real_step)
    run(tiny_recipe(tiny_world, tmp_path / "resumed", **common))

    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert _max_diff(_weights(straight / "checkpoints/last.ckpt"), _weights(resumed / "checkpoints/last.ckpt")) == 0
    assert [r["forget/ma"] for r in _evals(straight)] == [r["forget/ma"] for r in _evals(resumed)]


@pytest.mark.slow
def test_resume_after_a_kill(tiny_world, tmp_path):
    """SIGKILL at an arbitrary moment (possibly inside a checkpoint write), then resume: same final weights."""
    common = {"stop.max_epochs": 12, "train.schedule": "interleaved", "train.save_every_steps": 1}
    cmd = [sys.executable, "-m", "fabricunlearn", "run"]
    subprocess.run(
        [*cmd, *tiny_recipe(tiny_world, tmp_path / "straight", **common)],
        cwd=REPO,
        check=True,
        capture_output=True,
        timeout=600,
    )
    proc = subprocess.Popen(
        [*cmd, *tiny_recipe(tiny_world, tmp_path / "killed", **common)],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    metrics = tmp_path / "killed" / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and (not metrics.exists() or len(metrics.read_text().splitlines()) < 4):
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert len(metrics.read_text().splitlines()) < 13, "the run finished before the kill: the test proves nothing"
    subprocess.run(
        [*cmd, *tiny_recipe(tiny_world, tmp_path / "killed", **common)],
        cwd=REPO,
        check=True,
        capture_output=True,
        timeout=600,
    )
    a = _weights(tmp_path / "straight/checkpoints/last.ckpt")
    b = _weights(tmp_path / "killed/checkpoints/last.ckpt")
    assert _max_diff(a, b) == 0
    assert _evals(tmp_path / "straight") == _evals(tmp_path / "killed")


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tiny_world, tmp_path, monkeypatch, capsys):
    from fabricunlearn.methods.ascent import GradientDifference

    real_loss, calls = GradientDifference.loss, {"n": 0}

    def poisoned(self, *args, **kwargs):
        calls["n"] += 1
        loss, logs = real_loss(self, *args, **kwargs)
        return (loss * float("nan") if calls["n"] >= 9 else loss), logs

    monkeypatch.setattr(GradientDifference, "loss", poisoned)
    out = tmp_path / "nan"
    code = main(["run", *tiny_recipe(tiny_world, out, **{"stop.max_epochs": 5})])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and "loss nan" in err[0] and "last good checkpoint" in err[0]
    state = torch.load(out / "checkpoints" / "last.ckpt", weights_only=False)
    assert state["epoch"] >= 1
    assert all(torch.isfinite(v).all() for v in state["model"].values())


def test_original_aggregation_is_a_recipe_option(tiny_world, tmp_path):
    """`eval.aggregate: batch_means` reports the original's mean of per-batch means, from the same per-secret values."""
    from fabricunlearn.metrics.aggregate import aggregate

    out = tmp_path / "run"
    run(tiny_recipe(tiny_world, out, **{"eval.aggregate": "batch_means", "eval.aggregate_batch_docs": 4}))
    row = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    secrets = [json.loads(line)["secrets"] for line in (tiny_world / "forget_0.jsonl").read_text().splitlines()]
    doc_index = [d for d, doc in enumerate(secrets) for _ in doc]
    values = torch.tensor(row["per_secret_ma"], dtype=torch.float64)
    assert row["forget/ma"] == pytest.approx(aggregate(values, doc_index, "batch_means", batch_docs=4)[0])
    assert row["forget/ma"] != pytest.approx(aggregate(values, doc_index)[0])  # the option changes the number
    hp = yaml.safe_load((out / "hyperparameters.yaml").read_text())
    assert hp["eval"]["aggregate"] == "batch_means"
