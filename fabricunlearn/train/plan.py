"""Which documents each optimizer step uses, on every rank, decided without communication.

Every rank computes the same plan from (seed, epoch), so each knows the whole step and can normalise the loss
by the step's total token count locally. A step's documents are dealt out round-robin (rank r takes every W-th),
without the padding by repetition that `DistributedSampler` would add (it would count some documents twice). A
rank that runs out of documents feeds a zero-weight micro-batch so that all ranks run the same forward and
backward passes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch


@dataclass
class Step:
    """One optimizer step: the global indices of its forget and retain documents, across all ranks."""

    forget: list[int] = field(default_factory=list)
    retain: list[int] = field(default_factory=list)

    @property
    def phase(self) -> str:
        return "+".join(name for name in ("forget", "retain") if getattr(self, name))


def epoch_order(n: int, seed: int, epoch: int, shuffle: bool) -> list[int]:
    if not shuffle:
        return list(range(n))
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=generator).tolist()


def plan_epoch(
    *,
    schedule: str,
    n_forget: int,
    n_retain: int,
    uses_retain: bool,
    global_batch: int,
    seed: int,
    epoch: int,
    shuffle: bool,
) -> list[Step]:
    """`two_phase`: one step over the whole forget set, then one over the whole retain set (if the method has a
    retain term). `interleaved`: forget documents in steps of `global_batch`, each paired with as many retain
    documents, drawn in a shuffled order that wraps around."""
    forget = epoch_order(n_forget, seed, epoch, shuffle)
    use_retain = uses_retain and n_retain > 0
    retain = epoch_order(n_retain, seed + 1, epoch, shuffle) if use_retain else []
    if schedule == "two_phase":
        steps = [Step(forget=forget)]
        if use_retain:
            steps.append(Step(retain=retain))
        return steps
    steps = []
    cursor = 0
    for start in range(0, n_forget, global_batch):
        chunk = forget[start : start + global_batch]
        paired = [retain[(cursor + k) % n_retain] for k in range(len(chunk))] if use_retain else []
        cursor += len(chunk)
        steps.append(Step(forget=chunk, retain=paired))
    return steps


def micro_batches(indices: list[int], world_size: int, rank: int, micro_batch_size: int) -> list[list[int]]:
    """This rank's micro-batches of a step. Every rank gets the same number; trailing ones may be empty."""
    if not indices:
        return []
    local = indices[rank::world_size]
    count = math.ceil(math.ceil(len(indices) / world_size) / micro_batch_size)
    return [local[k * micro_batch_size : (k + 1) * micro_batch_size] for k in range(count)]


def steps_per_epoch(schedule: str, n_forget: int, n_retain: int, uses_retain: bool, global_batch: int) -> int:
    if schedule == "two_phase":
        return 1 + int(uses_retain and n_retain > 0)
    return math.ceil(n_forget / global_batch)
