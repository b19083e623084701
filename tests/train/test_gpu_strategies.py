"""Sharded strategies on GPUs: the same weights as DDP. Run where CUDA devices are present; skipped elsewhere."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import tiny_recipe
from tests.train.test_invariants import SGD, _assert_same_weights, _run_subprocess

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA devices"),
]


@pytest.mark.parametrize("strategy", ["fsdp", "fsdp2"])
def test_sharded_strategy_equals_ddp(tiny_world, tmp_path, strategy):
    common = {
        **SGD,
        "train.schedule": "interleaved",
        "train.micro_batch_size": 2,
        "train.shuffle": "false",
        "stop.max_epochs": 2,
        "accelerator": "cuda",
        "devices": 2,
    }
    _run_subprocess(tiny_recipe(tiny_world, tmp_path / "ddp", **common, strategy="ddp"))
    _run_subprocess(tiny_recipe(tiny_world, tmp_path / strategy, **common, strategy=strategy))
    # a sharded `last.ckpt` is a folder of shards; `final/` is always the gathered model, so compare those
    from safetensors.torch import load_file

    ddp = load_file(tmp_path / "ddp" / "final" / "model.safetensors")
    sharded = load_file(tmp_path / strategy / "final" / "model.safetensors")
    _assert_same_weights(ddp, sharded, atol=1e-5)
