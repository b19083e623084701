"""Two tiny, different GPT-2s for the loss tests: a policy and a reference far enough apart that every KL and every
log-probability ratio is far from 0."""

from __future__ import annotations

import copy

import pytest
import torch

from fabricunlearn.toy.pretrain import toy_gpt2


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    policy = toy_gpt2(
        50, n_positions=32, n_embd=16, n_layer=1, n_head=2, bos_token_id=1, eos_token_id=2, pad_token_id=0
    )
    reference = copy.deepcopy(policy)
    with torch.no_grad():
        for p in reference.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return policy.eval(), reference.eval()
