"""Membership-inference scores (reference peers-and-style.md §1.1) from one teacher-forced pass per batch, and their
AUC of members (e.g. the forget set) against non-members (the unseen set).

Per document, over its real target tokens:
- `loss`: mean token NLL (lower: more likely a member);
- `zlib`: summed NLL / the zlib-compressed length of the text in bytes (Carlini et al. 2021; lower: member);
- `min_k`: mean of the k·n lowest token log-probabilities (Shi et al. 2024; higher: member);
- `min_k_pp`: Min-K%++ (Zhang et al. 2024), the same over `z_t = (log p(x_t) − μ_t) / σ_t`, with μ_t and σ_t² the
  mean and variance of `log p(v)` under the model's next-token distribution (higher: member).

The originals take `int(k·n)` tokens, which is 0 for short texts (a NaN mean); here at least one token is taken.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import torch
import torch.nn.functional as F

SCORES = ("loss", "zlib", "min_k", "min_k_pp")
_LOWER_IS_MEMBER = {"loss", "zlib"}


@torch.no_grad()
def token_statistics(
    model: torch.nn.Module, documents: Sequence[Sequence[int]], pad_token_id: int, batch_size: int = 8
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per document, `(log p(x_t | x_<t), z_t)` for t = 1..n−1, float64 on the CPU; z_t as in Min-K%++."""
    from fabricunlearn.data.batches import TokenizedSet, collate
    from fabricunlearn.metrics.decoding import eval_mode

    data = TokenizedSet([list(d) for d in documents])
    device = next(model.parameters()).device
    out: list[tuple[torch.Tensor, torch.Tensor]] = []
    with eval_mode(model):
        for start in range(0, len(data), batch_size):
            batch = collate(data, list(range(start, min(start + batch_size, len(data)))), pad_token_id)
            ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
            logits = model(input_ids=ids, attention_mask=mask).logits
            # float64 one document at a time: a whole batch of full-vocabulary rows would not fit a large vocabulary
            for row, n in enumerate(mask.sum(1).tolist()):
                log_p = F.log_softmax(logits[row, : n - 1].double(), dim=-1)
                token = log_p.gather(-1, ids[row, 1:n, None]).squeeze(-1)
                p = log_p.exp()
                mu = (p * log_p).sum(-1)
                var = (p * log_p.square()).sum(-1) - mu.square()
                z = (token - mu) / var.clamp_min(1e-12).sqrt()
                out.append((token.cpu(), z.cpu()))
    return out


def _lowest_mean(values: torch.Tensor, k: float) -> float:
    count = max(1, int(k * len(values)))
    return float(values.sort().values[:count].mean())


def mia_scores(stats: tuple[torch.Tensor, torch.Tensor], text: str, k: float = 0.2) -> dict[str, float]:
    """The four scores of one document from its `token_statistics` entry and its text (for zlib)."""
    log_p, z = stats
    if len(log_p) == 0:
        return {name: float("nan") for name in SCORES}
    nll = -log_p
    return {
        "loss": float(nll.mean()),
        "zlib": float(nll.sum()) / len(zlib.compress(text.encode("utf-8"))),
        "min_k": _lowest_mean(log_p, k),
        "min_k_pp": _lowest_mean(z, k),
    }


def auc(members: Sequence[float], non_members: Sequence[float], score: str) -> float:
    """ROC AUC of telling members from non-members by `score` (1: perfectly separated, 0.5: chance)."""
    from sklearn.metrics import roc_auc_score

    sign = -1.0 if score in _LOWER_IS_MEMBER else 1.0
    labels = [1] * len(members) + [0] * len(non_members)
    return float(roc_auc_score(labels, [sign * s for s in list(members) + list(non_members)]))
