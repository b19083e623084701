"""Evaluation inside a Fabric run: each rank scores its shard of the secrets, the results are gathered."""

from __future__ import annotations

import math
from contextlib import nullcontext

import torch

from fabricunlearn.data.batches import TokenizedSet, collate
from fabricunlearn.metrics.aggregate import Aggregation, aggregate
from fabricunlearn.metrics.memorization import EncodedSecrets, secret_scores


def eval_module(fabric, model: torch.nn.Module) -> torch.nn.Module:
    """The module to evaluate with. Under DDP, the plain inner module: DDP's forward broadcasts buffers, a
    collective that would deadlock when ranks decode different numbers of steps. Sharded strategies need the
    wrapper (their forward gathers the parameters)."""
    from lightning.fabric.strategies import DDPStrategy, SingleDeviceStrategy

    if isinstance(fabric.strategy, DDPStrategy | SingleDeviceStrategy):
        return model.module if hasattr(model, "module") else model
    return model


def rank_sync(fabric):
    """``sync(x)`` = max of ``x`` over ranks, so that every rank runs the same forward passes (None on one process,
    where nothing needs it). Also used under DDP, where evaluation runs on the inner module and would not need it:
    one code path for all strategies, at the cost of one small all-reduce per decoding step."""
    if fabric.world_size == 1:
        return None

    def sync(x: int) -> int:
        return int(fabric.all_reduce(torch.tensor(x, device=fabric.device), reduce_op="max").item())

    return sync


def _shard(n: int, fabric) -> list[int]:
    """This rank's indices, padded to the same count on every rank (padding repeats index 0 and is dropped later)."""
    per_rank = math.ceil(n / fabric.world_size)
    local = list(range(fabric.global_rank, n, fabric.world_size))
    return local + [0] * (per_rank - len(local))


def _gather(fabric, local: torch.Tensor, n: int) -> torch.Tensor:
    if fabric.world_size == 1:
        return local[:n].cpu()
    gathered = fabric.all_gather(local.to(fabric.device)).cpu()  # [world, per_rank]
    order = gathered.T.reshape(-1)  # rank r's k-th entry is global index k * world + r
    return order[:n]


@torch.no_grad()
def evaluate_secrets(
    fabric, model, enc: EncodedSecrets, *, ns: list[int], pad_token_id: int, eos_token_id: int | None, batch_size: int
) -> dict[str, torch.Tensor]:
    """Per-secret MA and EL_n for every n in `ns` (empty: MA only), on all ranks."""
    if len(enc) == 0:
        return {"ma": torch.empty(0), **{f"el{n}": torch.empty(0) for n in ns}}
    local = enc.subset(_shard(len(enc), fabric))
    module = eval_module(fabric, model)
    with fabric.autocast() if module is not model else nullcontext():
        out = secret_scores(
            module,
            local,
            ns,
            pad_token_id=pad_token_id,
            eos_token_id=eos_token_id,
            batch_size=batch_size,
            sync=rank_sync(fabric),
        )
    return {k: _gather(fabric, v.double(), len(enc)) for k, v in out.items()}


@torch.no_grad()
def perplexity(fabric, model, data: TokenizedSet, *, pad_token_id: int, batch_size: int) -> float:
    """exp of the mean token NLL over all documents (token-weighted, not a mean of per-batch perplexities)."""
    if len(data) == 0:
        return float("nan")
    module = eval_module(fabric, model)
    was_training = module.training
    module.eval()
    indices = _shard(len(data), fabric)
    n_local = len(range(fabric.global_rank, len(data), fabric.world_size))
    real = [k < n_local for k in range(len(indices))]
    total = torch.zeros(2, dtype=torch.float64, device=fabric.device)
    for start in range(0, len(indices), batch_size):
        chunk = indices[start : start + batch_size]
        weights = torch.tensor(real[start : start + batch_size], dtype=torch.float64, device=fabric.device)
        batch = fabric.to_device(collate(data, chunk, pad_token_id))
        with fabric.autocast() if module is not model else nullcontext():
            logits = module(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        targets = batch["labels"][:, 1:]
        nll = torch.nn.functional.cross_entropy(
            logits[:, :-1].float().flatten(0, 1), targets.flatten(), ignore_index=-100, reduction="none"
        ).view_as(targets)
        total[0] += (nll.double().sum(1) * weights).sum()
        total[1] += ((targets != -100).double().sum(1) * weights).sum()
    module.train(was_training)
    if fabric.world_size > 1:
        total = fabric.all_reduce(total, reduce_op="sum")
    return math.exp(total[0].item() / max(total[1].item(), 1.0))


def summarize(
    values: dict[str, torch.Tensor],
    enc: EncodedSecrets,
    prefix: str,
    *,
    how: Aggregation = "per_secret",
    batch_docs: int = 8,
    world_size: int = 1,
) -> dict[str, float]:
    """``{prefix}/{metric}`` and ``{prefix}/{metric}_max`` for every metric (see :mod:`fabricunlearn.metrics.aggregate`:
    mean and max over secrets, or the original's mean of per-batch means)."""
    out: dict[str, float] = {}
    for key, v in values.items():
        mean, top = aggregate(v, enc.doc_index, how, n_docs=enc.n_docs, batch_docs=batch_docs, world_size=world_size)
        out[f"{prefix}/{key}"] = mean
        out[f"{prefix}/{key}_max"] = top
    return out
