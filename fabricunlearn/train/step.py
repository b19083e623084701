"""One optimizer step: deal the step's documents to the ranks, normalise each loss term over the whole step,
accumulate micro-batches with `no_backward_sync`, clip, step. See docs/training-loop.md."""

from __future__ import annotations

import math
import time

import torch

from fabricunlearn.train.data import RunData
from fabricunlearn.train.plan import Step, micro_batches


def train_step(fabric, model, optimizer, method, reference, rd: RunData, run, step: Step) -> dict[str, float]:
    """One optimizer step over `step`'s documents: every rank runs the same number of micro-batches."""
    from fabricunlearn.data.batches import collate

    tr = run.train
    started = time.perf_counter()
    world, rank = fabric.world_size, fabric.global_rank
    parts = {name: getattr(step, name) for name in ("forget", "retain") if getattr(step, name)}
    sets = {"forget": rd.forget, "retain": rd.retain}
    # Every rank's micro-batches, to normalise each loss term by its token count over the whole step.
    chunks = {
        name: [micro_batches(idx, world, r, tr.micro_batch_size) for r in range(world)] for name, idx in parts.items()
    }
    counts_per_part = {len(c[0]) for c in chunks.values()}
    if len(counts_per_part) > 1:
        raise ValueError("a step's forget and retain parts must split into the same number of micro-batches")
    (n_micro,) = counts_per_part

    def micro(r: int, k: int) -> tuple[dict[str, dict[str, torch.Tensor]], set[str]]:
        """Rank r's k-th micro-batch and its real parts. A rank whose share ran out gets a stand-in document in that
        part (weight 0 below), so that every rank runs the same passes."""
        batch, real = {}, set()
        for name, c in chunks.items():
            if c[r][k]:
                real.add(name)
            batch[name] = collate(sets[name], c[r][k] or parts[name][:1], rd.pad_token_id)
        return batch, real

    local = [micro(rank, k) for k in range(n_micro)]
    counts: dict[str, float] = {}
    slots_with: dict[str, int] = {}  # per term, how many micro-batches (all ranks) contribute to it
    per_micro: list[dict[str, float]] = []
    for r in range(world):
        for k in range(n_micro):
            batch, real = local[k] if r == rank else micro(r, k)
            tc = {t: float(v) for t, v in method.term_counts({n: batch[n] for n in real}).items()}
            for t, v in tc.items():
                counts[t] = counts.get(t, 0.0) + v
                slots_with[t] = slots_with.get(t, 0) + 1
            if r == rank:
                per_micro.append(tc)

    model.train()
    total_loss = torch.zeros((), device=fabric.device)
    sums: dict[str, torch.Tensor] = {}
    tokens = sum(int(sum(len(sets[n].input_ids[i]) for i in idx)) for n, idx in parts.items())
    for k in range(n_micro):
        batch = fabric.to_device(local[k][0])
        mine = per_micro[k]
        if tr.loss_reduction == "token":
            norm = {t: max(counts.get(t, 0.0), 1.0) for t in counts}
        else:  # the original: each micro-batch's own mean, averaged over the step's micro-batches
            norm = {t: max(mine.get(t, 0.0), 1.0) * slots_with[t] for t in counts}
        with fabric.no_backward_sync(model, enabled=k + 1 < n_micro):
            loss, term_sums = method.loss(model, reference, batch, norm)
            weight = 1.0 if mine else 0.0  # an empty slot on this rank: same passes, no contribution
            fabric.backward(loss * weight * world)  # DDP/FSDP average gradients over ranks; the norms already did
        total_loss += loss.detach() * weight
        for t, v in term_sums.items():
            if t in mine:
                sums[t] = sums.get(t, torch.zeros((), device=fabric.device)) + v
    grad_norm = _grad_norm(fabric, model, optimizer, tr.clip_grad_norm)
    loss_value = fabric.all_reduce(total_loss, reduce_op="sum") if world > 1 else total_loss
    # A step with nothing to learn from (ICU with every document of the step forgotten) must not move the weights:
    # Adam's momentum would, even with zero gradients.
    if math.isfinite(loss_value.item()) and math.isfinite(float(grad_norm)) and any(counts.values()):
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    elapsed = time.perf_counter() - started
    logs = {
        "train/loss": loss_value.item(),
        "train/grad_norm": float(grad_norm),
        "train/lr": optimizer.param_groups[0]["lr"],
        "train/tokens_per_s": tokens / elapsed,
    }
    for t in counts:
        s = sums.get(t, torch.zeros((), device=fabric.device))
        s = fabric.all_reduce(s, reduce_op="sum") if world > 1 else s
        logs[f"train/{method.log_name(t)}"] = s.item() / max(counts[t], 1.0)
    return logs


def _grad_norm(fabric, model, optimizer, clip: float | None) -> torch.Tensor:
    """The global gradient norm, clipping to `clip` when set. Without clipping, and where every rank holds whole
    gradients, the norm alone is computed (Fabric's clip would also rescale every gradient by 1)."""
    from lightning.fabric.strategies import DDPStrategy, SingleDeviceStrategy

    if clip is None and isinstance(fabric.strategy, DDPStrategy | SingleDeviceStrategy):
        return torch.nn.utils.get_total_norm([p.grad for p in model.parameters() if p.grad is not None])
    max_norm = clip if clip is not None else float("inf")
    return fabric.clip_gradients(model, optimizer, max_norm=max_norm, error_if_nonfinite=False)
