"""From per-secret values to the one number a set is judged by (reference codeeraser-sscu.md §1.5).

``per_secret`` (the default): the mean and the max over all secrets of the set. Empty secrets (NaN) are left out.

``batch_means`` reproduces the original's number: its evaluation loader gives rank r the documents r, r + W, …
(Lightning's ``DistributedSampler(shuffle=False)``, which first pads the list to a multiple of W by repeating its
first documents), in batches of B documents; each batch reports the mean and the max over its secrets, and the set's
value is the unweighted mean of those per-batch values over all ranks and batches. A batch with many secrets then
weighs as much as one with few, and a repeated document counts twice.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch

Aggregation = Literal["per_secret", "batch_means"]


def _finite(values: torch.Tensor) -> torch.Tensor:
    return values[~torch.isnan(values)]


def original_batches(n_docs: int, batch_docs: int, world_size: int) -> list[list[int]]:
    """The document indices of every evaluation batch of the original, over all ranks."""
    if n_docs == 0:
        return []
    padded = math.ceil(n_docs / world_size) * world_size
    order = [k % n_docs for k in range(padded)]
    batches = []
    for rank in range(world_size):
        mine = order[rank::world_size]
        batches += [mine[start : start + batch_docs] for start in range(0, len(mine), batch_docs)]
    return batches


def aggregate(
    values: torch.Tensor,
    doc_index: Sequence[int],
    how: Aggregation = "per_secret",
    *,
    n_docs: int | None = None,
    batch_docs: int = 8,
    world_size: int = 1,
) -> tuple[float, float]:
    """(mean, max) of per-secret ``values``. For ``batch_means``: ``doc_index[k]`` is the document of secret k among
    ``n_docs`` documents (default: up to the last one with a secret; documents without secrets still take batch
    slots in the original)."""
    if how == "per_secret":
        finite = _finite(values)
        return (finite.mean().item(), finite.max().item()) if len(finite) else (math.nan, math.nan)
    if how != "batch_means":
        raise ValueError(f"unknown aggregation {how!r}; known: per_secret, batch_means")
    if batch_docs < 1 or world_size < 1:
        raise ValueError("batch_docs and world_size must be >= 1")
    by_doc: dict[int, list[int]] = {}
    for k, d in enumerate(doc_index):
        by_doc.setdefault(d, []).append(k)
    if n_docs is None:
        n_docs = max(doc_index, default=-1) + 1
    means, maxes = [], []
    for batch in original_batches(n_docs, batch_docs, world_size):
        secrets = [k for d in batch for k in by_doc.get(d, [])]
        finite = _finite(values[secrets]) if secrets else values[:0]
        if len(finite):  # a batch without secrets reports nothing
            means.append(finite.mean().item())
            maxes.append(finite.max().item())
    if not means:
        return math.nan, math.nan
    return sum(means) / len(means), sum(maxes) / len(maxes)
