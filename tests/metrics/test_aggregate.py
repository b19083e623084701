"""The original's aggregation (mean of per-batch means over ranks) against torch's own DistributedSampler."""

from __future__ import annotations

import math
import random

import pytest
import torch
from torch.utils.data import DataLoader, DistributedSampler

from fabricunlearn.metrics.aggregate import aggregate


def _original(values: list[list[float]], batch_docs: int, world_size: int) -> tuple[float, float]:
    """§1.5 as the original runs it: a DistributedSampler(shuffle=False) per rank, batches of documents, the secrets
    of a batch concatenated, per-batch mean and max, then the plain mean of all of them."""
    means, maxes = [], []
    for rank in range(world_size):
        sampler = DistributedSampler(range(len(values)), num_replicas=world_size, rank=rank, shuffle=False)
        for batch in DataLoader(list(range(len(values))), batch_size=batch_docs, sampler=sampler):
            secrets = [v for d in batch.tolist() for v in values[d]]
            if secrets:
                means.append(sum(secrets) / len(secrets))
                maxes.append(max(secrets))
    return sum(means) / len(means), sum(maxes) / len(maxes)


@pytest.mark.parametrize("seed", range(40))
def test_batch_means_equal_the_original_sampler_and_loader(seed):
    rng = random.Random(seed)
    per_doc = [[rng.random() for _ in range(rng.choice([0, 1, 1, 2, 3]))] for _ in range(rng.randrange(1, 30))]
    per_doc[0].append(rng.random())  # at least one secret
    batch_docs, world_size = rng.randrange(1, 6), rng.randrange(1, 5)
    flat = torch.tensor([v for doc in per_doc for v in doc], dtype=torch.float64)
    doc_index = [d for d, doc in enumerate(per_doc) for _ in doc]
    got = aggregate(flat, doc_index, "batch_means", n_docs=len(per_doc), batch_docs=batch_docs, world_size=world_size)
    expected = _original(per_doc, batch_docs, world_size)
    assert got == pytest.approx(expected, abs=1e-12)


def test_per_secret_is_the_plain_mean_and_max_without_empty_secrets():
    values = torch.tensor([0.5, math.nan, 1.0, 0.0], dtype=torch.float64)
    assert aggregate(values, [0, 0, 1, 2]) == (0.5, 1.0)
    assert all(math.isnan(x) for x in aggregate(torch.tensor([math.nan]), [0]))


def test_batch_means_weigh_batches_not_secrets():
    # 32 documents, 4 ranks, batches of 8 (the reference's example): one batch per rank, the mean of 4 means.
    values = torch.tensor([1.0] * 10 + [0.0] * 31, dtype=torch.float64)
    doc_index = [0] * 10 + list(range(1, 32))  # document 0 (rank 0) has ten secrets, the others one each
    mean, _ = aggregate(values, doc_index, "batch_means", n_docs=32, batch_docs=8, world_size=4)
    assert mean == pytest.approx((10 / 17) / 4)
    assert aggregate(values, doc_index)[0] == pytest.approx(10 / 41)
