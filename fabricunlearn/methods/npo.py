"""Negative preference optimization (NPO, Zhang et al. 2024), as open-unlearning has it (reference
peers-and-style.md §1.1), beyond the seeds.

With ``log π(x)`` the summed log-probability of a forget document's tokens,
``L_forget = −(2/β) · mean_x log σ(−β · (log π_θ(x) − log π_ref(x)))``: gradient ascent whose push fades once the
policy has moved below the original on a document, instead of diverging. Retain variants add
``retain_weight · mean_tokens NLL(retain)`` (``retain: nll``, NPO + GD) or ``retain_weight · mean_tokens KL(ref ‖ θ)``
(``retain: kl``). The forget term is a mean over documents (its normaliser counts documents, not tokens).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from fabricunlearn.methods.base import Batch, Method, reference_kl_sum, shifted_logits, target_mask, token_ce, token_nll
from fabricunlearn.methods.registry import register


def sequence_logprob(logits: torch.Tensor, part: dict[str, torch.Tensor]) -> torch.Tensor:
    """Summed log-probability of each document's real target tokens `[B]`."""
    return -token_ce(logits, part).sum(-1)


@register
@dataclass
class NPO(Method):
    """NPO, optionally with a retain term (`retain: nll` or `kl`)."""

    name = "npo"
    needs_reference = True
    beta: float = 0.1
    """β: the inverse temperature of the preference loss."""
    retain: Literal["none", "nll", "kl"] = "none"
    """Retain term: none, nll (NPO + GD) or kl (KL to the original on the retain set)."""
    retain_weight: float = 1.0
    """α: weight of the retain term."""

    def __post_init__(self) -> None:
        if self.beta <= 0 or self.retain_weight < 0:
            raise ValueError("beta must be > 0 and retain_weight >= 0")
        if self.retain not in ("none", "nll", "kl"):
            raise ValueError(f"retain must be none, nll or kl, got {self.retain!r}")

    def log_name(self, term: str) -> str:
        return {"forget_docs": "forget_npo", "retain": f"retain_{self.retain}"}.get(term, term)

    @property
    def uses_retain(self) -> bool:  # type: ignore[override]
        return self.retain != "none"

    def term_counts(self, batch: Batch) -> dict[str, torch.Tensor]:
        counts = {}
        if "forget" in batch:
            counts["forget_docs"] = target_mask(batch["forget"]).any(-1).sum()
        if "retain" in batch:
            counts["retain"] = target_mask(batch["retain"]).sum()
        return counts

    def loss(self, policy, reference, batch, norm):
        loss = torch.zeros((), device=next(iter(batch.values()))["input_ids"].device)
        sums: dict[str, torch.Tensor] = {}
        if "forget" in batch:
            part = batch["forget"]
            policy_lp = sequence_logprob(shifted_logits(policy, part), part)
            with torch.no_grad():
                reference_lp = sequence_logprob(shifted_logits(reference, part), part)
            real = target_mask(part).any(-1)  # a stand-in micro-batch (zero weight) has no real targets
            terms = -F.logsigmoid(-self.beta * (policy_lp - reference_lp)) * real
            sums["forget_docs"] = terms.sum()
            loss = loss + (2.0 / self.beta) * sums["forget_docs"] / norm["forget_docs"]
        if "retain" in batch:
            part = batch["retain"]
            if self.retain == "nll":
                sums["retain"] = token_nll(policy, part).sum()
            else:
                sums["retain"], _ = reference_kl_sum(policy, reference, part)
            loss = loss + self.retain_weight * sums["retain"] / norm["retain"]
        return loss, {k: v.detach() for k, v in sums.items()}
