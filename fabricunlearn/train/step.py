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
    n_micro = max(len(c[0]) for c in chunks.values())

    if len({len(c[0]) for c in chunks.values()}) > 1:
        raise ValueError("a step's forget and retain parts must split into the same number of micro-batches")

    def micro(r: int, k: int, real_only: bool = False) -> dict[str, dict[str, torch.Tensor]]:
        """Rank r's k-th micro-batch. A rank whose share ran out gets a stand-in document (weight 0 below)."""
        out = {}
        for name, c in chunks.items():
            if c[r][k] or not real_only:
                out[name] = collate(sets[name], c[r][k] or parts[name][:1], rd.pad_token_id)
        return out

    counts: dict[str, float] = {}
    slots_with: dict[str, int] = {}  # per term, how many micro-batches (all ranks) contribute to it
    per_micro: list[dict[str, float]] = []
    for r in range(world):
        for k in range(n_micro):
            tc = {t: float(v) for t, v in method.term_counts(micro(r, k, real_only=True)).items()}
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
        batch = fabric.to_device(micro(rank, k))
        local = per_micro[k]
        if tr.loss_reduction == "token":
            norm = {t: max(counts.get(t, 0.0), 1.0) for t in counts}
        else:  # the original: each micro-batch's own mean, averaged over the step's micro-batches
            norm = {t: max(local.get(t, 0.0), 1.0) * slots_with[t] for t in counts}
        with fabric.no_backward_sync(model, enabled=k + 1 < n_micro):
            loss, term_sums = method.loss(model, reference, batch, norm)
            weight = 1.0 if local else 0.0  # an empty slot on this rank: same passes, no contribution
            fabric.backward(loss * weight * world)  # DDP/FSDP average gradients over ranks; the norms already did
        total_loss += loss.detach() * weight
        for t, v in term_sums.items():
            if t in local:
                sums[t] = sums.get(t, torch.zeros((), device=fabric.device)) + v
    max_norm = tr.clip_grad_norm if tr.clip_grad_norm is not None else float("inf")
    grad_norm = fabric.clip_gradients(model, optimizer, max_norm=max_norm, error_if_nonfinite=False)
    loss_value = fabric.all_reduce(total_loss, reduce_op="sum") if world > 1 else total_loss
    if math.isfinite(loss_value.item()) and math.isfinite(float(grad_norm)):
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
        logs[f"train/{t}_nll"] = s.item() / max(counts[t], 1.0)
    return logs
