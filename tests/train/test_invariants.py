"""TRL-style invariants of the loop: how the data is batched or spread over processes must not change the update."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fabricunlearn.cli import run
from tests.conftest import REPO, tiny_recipe


def _last_weights(out_dir):
    state = torch.load(out_dir / "checkpoints" / "last.ckpt", weights_only=False)
    return state["model"]


def _assert_same_weights(a: dict, b: dict, atol: float = 2e-6) -> None:
    assert a.keys() == b.keys()
    worst = max((a[k].float() - b[k].float()).abs().max().item() for k in a)
    assert worst < atol, f"weights differ by up to {worst}"


# SGD: its update is linear in the gradient, so float noise stays float noise (Adam divides tiny gradients by their
# own tiny second moment and turns 1e-9 differences into lr-sized ones).
SGD = {"train.optimizer": "sgd", "train.lr": 0.5}


def _assert_moved(a: dict, reference_dir) -> None:
    from safetensors.torch import load_file

    init = load_file(reference_dir / "model" / "model.safetensors")
    key = "transformer.h.0.mlp.c_fc.weight"
    assert (a[key] - init[key]).abs().max() > 1e-4, "training did not change the weights: the test would prove nothing"


@pytest.mark.parametrize("method", ["ga", "gd"])
def test_batch_times_accumulation_is_invariant(tiny_world, tmp_path, method):
    common = {
        **SGD,
        "method.name": method,
        "train.schedule": "interleaved",
        "train.shuffle": "false",
        "stop.max_epochs": 2,
    }
    run(tiny_recipe(tiny_world, tmp_path / "b1x4", **common, **{"train.micro_batch_size": 1, "train.accumulate": 4}))
    run(tiny_recipe(tiny_world, tmp_path / "b4x1", **common, **{"train.micro_batch_size": 4, "train.accumulate": 1}))
    a, b = _last_weights(tmp_path / "b1x4"), _last_weights(tmp_path / "b4x1")
    _assert_moved(a, tiny_world)
    _assert_same_weights(a, b)


def test_two_phase_step_is_invariant_to_micro_batch_size(tiny_world, tmp_path):
    run(tiny_recipe(tiny_world, tmp_path / "mb1", **SGD, **{"train.micro_batch_size": 1}))
    run(tiny_recipe(tiny_world, tmp_path / "mb6", **SGD, **{"train.micro_batch_size": 6}))
    _assert_same_weights(_last_weights(tmp_path / "mb1"), _last_weights(tmp_path / "mb6"))


def test_microbatch_mean_option_differs_from_token_mean(tiny_world, tmp_path):
    """The original's mean of micro-batch means weights short documents more; the option must really change it."""
    run(tiny_recipe(tiny_world, tmp_path / "tok", **{"train.micro_batch_size": 1}))
    run(
        tiny_recipe(
            tiny_world, tmp_path / "mbm", **{"train.micro_batch_size": 1, "train.loss_reduction": "microbatch_mean"}
        )
    )
    a, b = _last_weights(tmp_path / "tok"), _last_weights(tmp_path / "mbm")
    assert max((a[k] - b[k]).abs().max().item() for k in a) > 1e-5


def _run_subprocess(args: list[str]) -> None:
    cmd = [sys.executable, "-m", "fabricunlearn", "run", *args]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.mark.slow
@pytest.mark.parametrize("n_forget", [6, 5])
def test_two_processes_equal_one(tiny_world, tmp_path, n_forget):
    """DDP on 2 CPU processes reaches the weights of 1 process, also when the forget set does not divide evenly."""
    from tests.conftest import build_tiny_world

    world = tiny_world if n_forget == 6 else build_tiny_world(tmp_path / "world5", n_forget=5)
    common = {
        **SGD,
        "train.schedule": "interleaved",
        "train.micro_batch_size": 2,
        "train.shuffle": "false",
        "stop.max_epochs": 2,
    }
    # The same global batch: 2 documents x 2 accumulated micro-batches on one process, x 2 processes on two.
    _run_subprocess(tiny_recipe(world, tmp_path / "one", **common, **{"train.accumulate": 2}))
    _run_subprocess(tiny_recipe(world, tmp_path / "two", **common, devices=2, strategy="ddp"))
    one, two = _last_weights(tmp_path / "one"), _last_weights(tmp_path / "two")
    _assert_moved(one, world)
    _assert_same_weights(one, two)


@pytest.mark.slow
def test_two_processes_equal_one_for_icu(tiny_world, tmp_path):
    """ICU carries per-document state (neighbours, active flags) and a reference model: 2 DDP processes still reach
    the weights of 1, and log the same forgotten-test results."""
    import json

    args = json.dumps({"f1_threshold": 0.0, "bleu_threshold": 0.0, "kl_weight": 2.0})  # every document active
    common = {
        **SGD,
        "method.name": "icu",
        "method.args": args,
        "train.schedule": "interleaved",
        "train.micro_batch_size": 2,
        "train.shuffle": "false",
        "stop.max_epochs": 2,
    }
    _run_subprocess(tiny_recipe(tiny_world, tmp_path / "one", **common, **{"train.accumulate": 2}))
    _run_subprocess(tiny_recipe(tiny_world, tmp_path / "two", **common, devices=2, strategy="ddp"))
    one, two = _last_weights(tmp_path / "one"), _last_weights(tmp_path / "two")
    _assert_moved(one, tiny_world)
    _assert_same_weights(one, two)
    rows = [
        [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
        for name in ("one", "two")
    ]
    assert [r["icu/f1"] for r in rows[0]] == pytest.approx([r["icu/f1"] for r in rows[1]], abs=1e-6)


@pytest.mark.slow
def test_fabric_run_launches_the_script(tiny_world, tmp_path):
    """`fabric run fabricunlearn/run.py ...` (torchrun underneath) trains like `fabricunlearn run` with 2 processes."""
    import yaml

    common = {
        **SGD,
        "train.schedule": "interleaved",
        "train.micro_batch_size": 2,
        "train.shuffle": "false",
        "stop.max_epochs": 1,
    }
    _run_subprocess(tiny_recipe(tiny_world, tmp_path / "one", **common, **{"train.accumulate": 2}))
    fabric_cli = Path(sys.executable).with_name("fabric")
    cmd = [
        str(fabric_cli),
        "run",
        "--accelerator",
        "cpu",
        "--devices",
        "2",
        "--strategy",
        "ddp",
        "--main-port",
        "29531",
        "fabricunlearn/run.py",
        # launch settings stay with `fabric run`: written after the script, click would take them as its own
        *_without_launch_settings(tiny_recipe(tiny_world, tmp_path / "cli", **common)),
    ]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    _assert_same_weights(_last_weights(tmp_path / "one"), _last_weights(tmp_path / "cli"))
    hp = yaml.safe_load((tmp_path / "cli" / "hyperparameters.yaml").read_text())
    assert (hp["devices"], hp["strategy"], hp["accelerator"]) == (2, "ddp", "cpu")


def _without_launch_settings(args: list[str]) -> list[str]:
    pairs = list(zip(args[::2], args[1::2]))
    return [x for key, value in pairs if key not in ("--accelerator", "--devices") for x in (key, value)]


@pytest.mark.slow
def test_fsdp2_equals_ddp_on_cpu(tiny_world, tmp_path):
    """FSDP2 shards over every rank and averages gradients like DDP: the same weights after two epochs."""
    from safetensors.torch import load_file

    common = {
        **SGD,
        "train.schedule": "interleaved",
        "train.micro_batch_size": 2,
        "train.shuffle": "false",
        "stop.max_epochs": 2,
        "devices": 2,
    }
    _run_subprocess(tiny_recipe(tiny_world, tmp_path / "ddp", **common, strategy="ddp"))
    _run_subprocess(tiny_recipe(tiny_world, tmp_path / "fsdp2", **common, strategy="fsdp2"))
    ddp = load_file(tmp_path / "ddp" / "final" / "model.safetensors")
    sharded = load_file(tmp_path / "fsdp2" / "final" / "model.safetensors")
    _assert_moved(ddp, tiny_world)
    _assert_same_weights(ddp, sharded, atol=1e-5)
