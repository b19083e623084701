"""Named strategy presets -> configured Fabric strategy objects.

`fabric run` can only pass registry names, so configured objects (wrap policies, state-dict types) are built
here from a name when `fabricunlearn run` launches Fabric itself.

| name               | what it builds                                                              | where it runs |
|--------------------|-----------------------------------------------------------------------------|---------------|
| auto, ddp          | Fabric's own                                                                | CPU and GPU   |
| fsdp               | FSDPStrategy wrapping each decoder layer, sharded checkpoints                | GPU           |
| fsdp2              | ModelParallelStrategy applying FSDP2 `fully_shard` per decoder layer, all    | CPU and GPU   |
|                    | ranks in one data-parallel group                                             |               |
| deepspeed_stage_2  | DeepSpeedStrategy(stage=2)                                                   | GPU           |
| deepspeed_stage_3  | DeepSpeedStrategy(stage=3)                                                   | GPU           |

Lightning's ModelParallelStrategy defaults to a mesh of (data parallel = nodes, tensor parallel = devices per
node): FSDP2 on its data-parallel dimension would then shard over a group of one rank, i.e. not shard at all and
average no gradients. `fsdp2` therefore puts every rank in the data-parallel dimension.
"""

from __future__ import annotations

from typing import Any

import torch

from fabricunlearn.config import RecipeError

STRATEGIES = ("auto", "ddp", "fsdp", "fsdp2", "deepspeed_stage_2", "deepspeed_stage_3")
_GPU_ONLY = {"fsdp", "deepspeed_stage_2", "deepspeed_stage_3"}


def decoder_layer_classes(model: torch.nn.Module) -> set[type[torch.nn.Module]]:
    """The model's repeated blocks (from transformers' `_no_split_modules`), the natural unit to shard and wrap."""
    names = set(getattr(model, "_no_split_modules", None) or [])
    return {type(m) for m in model.modules() if type(m).__name__ in names}


def _fsdp2_parallelize(layer_classes: set[type[torch.nn.Module]]):
    def parallelize(module: torch.nn.Module, device_mesh) -> torch.nn.Module:
        from torch.distributed.fsdp import fully_shard

        mesh = device_mesh["data_parallel"]
        for sub in module.modules():
            if type(sub) in layer_classes:
                fully_shard(sub, mesh=mesh)
        fully_shard(module, mesh=mesh)
        return module

    return parallelize


def _data_parallel_fsdp2(parallelize) -> Any:
    from lightning.fabric.strategies import ModelParallelStrategy

    class DataParallelFSDP2(ModelParallelStrategy):
        def setup_environment(self) -> None:
            # Resolved here: the number of processes is known only once the launcher has set the environment.
            self._data_parallel_size = self.num_nodes * self.num_processes
            self._tensor_parallel_size = 1
            super().setup_environment()

    return DataParallelFSDP2(parallelize_fn=parallelize)


def build_strategy(name: str, accelerator: str, layer_classes: set[type[torch.nn.Module]] | None = None) -> Any:
    if name not in STRATEGIES:
        raise RecipeError(f"strategy: unknown {name!r}; known: {', '.join(STRATEGIES)}")
    on_cpu = accelerator == "cpu" or (accelerator == "auto" and not torch.cuda.is_available())
    if name in _GPU_ONLY and on_cpu:
        raise RecipeError(f"strategy: {name!r} needs CUDA GPUs (use `ddp` or `fsdp2` on CPU)")
    if name in ("auto", "ddp"):
        return name
    if name == "fsdp":
        from lightning.fabric.strategies import FSDPStrategy

        return FSDPStrategy(auto_wrap_policy=layer_classes or None, state_dict_type="sharded", limit_all_gathers=True)
    if name == "fsdp2":
        return _data_parallel_fsdp2(_fsdp2_parallelize(layer_classes or set()))
    try:
        import deepspeed  # noqa: F401
    except ImportError:
        raise RecipeError(f"strategy: {name!r} needs DeepSpeed: pip install -c constraints.txt -e '.[gpu]'") from None
    from lightning.fabric.strategies import DeepSpeedStrategy

    return DeepSpeedStrategy(stage=int(name[-1]))
