"""Train a toy causal LM on documents with duplication counts, with the same Fabric calls as the unlearning loop.

Each document is one training sequence (its tokens, then EOS), never packed with others: a secret is then
always seen after exactly the same context at the same positions, which is what lets a small model memorize it
and what the secret-level metrics (prefix = the text before the secret) probe.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch

from fabricunlearn.data.batches import TokenizedSet, collate
from fabricunlearn.methods.base import token_nll


def toy_gpt2(
    vocab_size: int,
    *,
    n_positions: int,
    n_embd: int,
    n_layer: int,
    n_head: int,
    bos_token_id: int | None,
    eos_token_id: int | None,
    pad_token_id: int | None,
):
    """A freshly initialised GPT-2 for toy worlds and tests: every dropout 0 (23% of a CPU step, and it would make
    memorization probes and equivalence tests random)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(
        vocab_size=vocab_size,
        n_positions=n_positions,
        n_embd=n_embd,
        n_layer=n_layer,
        n_head=n_head,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=bos_token_id,
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
    )
    return GPT2LMHeadModel(config)


@dataclass
class PretrainResult:
    steps: int
    seconds: float
    final_loss: float
    tokens_per_s: float


def pretrain(
    model: torch.nn.Module,
    documents: TokenizedSet,
    copies: list[int],
    *,
    pad_token_id: int,
    steps: int,
    batch_size: int,
    lr: float,
    warmup_steps: int,
    seed: int,
    progress: bool = True,
) -> PretrainResult:
    """AdamW (betas 0.9/0.98, no weight decay), linear warm-up then cosine decay to 10% of `lr`. Every epoch
    shows each document `copies[i]` times in a shuffled order."""
    import lightning as L
    from tqdm.auto import tqdm

    fabric = L.Fabric(accelerator="cpu", devices=1, precision="32-true")
    fabric.seed_everything(seed, verbose=False)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.98), weight_decay=0.0)
    model, optimizer = fabric.setup(model, optimizer)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _lr_factor(s, warmup_steps, steps))
    views = [i for i, c in enumerate(copies) for _ in range(c)]
    generator = torch.Generator().manual_seed(seed)
    order: list[int] = []
    model.train()
    started = time.perf_counter()
    tokens = 0
    loss_value = float("nan")
    bar = tqdm(
        range(steps), desc="training toy model", unit="step", disable=not progress, dynamic_ncols=True, mininterval=0.5
    )
    for step in bar:
        if len(order) < batch_size:
            order += [views[j] for j in torch.randperm(len(views), generator=generator).tolist()]
        indices, order = order[:batch_size], order[batch_size:]
        batch = fabric.to_device(collate(documents, indices, pad_token_id))
        nll = token_nll(model, batch)
        count = (batch["labels"][:, 1:] != -100).sum()
        loss = nll.sum() / count
        fabric.backward(loss)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        schedule.step()
        tokens += int(batch["attention_mask"].sum())
        if step % 20 == 0 or step == steps - 1:
            loss_value = loss.item()
            bar.set_postfix(loss=f"{loss_value:.3f}")
    seconds = time.perf_counter() - started
    model.eval()
    return PretrainResult(steps=steps, seconds=seconds, final_loss=loss_value, tokens_per_s=tokens / seconds)


def _lr_factor(step: int, warmup: int, total: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
