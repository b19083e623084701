"""CodeEraser's methods (reference codeeraser-sscu.md §2): controllable unlearning (CU), secret-selective gradient
ascent (SSGA) and secret-selective controllable unlearning (SSCU, "CodeEraser").

Every term is a per-token mean over the optimizer step (module `fabricunlearn.methods.base`). The KL terms are
KL(reference ‖ policy) per target position, computed in float32 log-space (`base.kl_to_reference`) and averaged
over the real tokens they cover. The original's control KL summed over every position, padding included, and
divided by the number of sequences, so its scale grew with the sequence length; here λ and α weigh per-token means
(with the original's 128-token retain sequences, its λ corresponds to about λ × 127 here).
`kl_reduction: original` computes the original's terms: the ε-smoothed KL (`base.codeeraser_kl`), summed over every
position of the micro-batch and divided by its number of sequences for the control and CU's forget KL, averaged over
the secret tokens for SSCU's. The original padded every document to 512 (forget) or 128 (retain) tokens, so its
values are reproduced exactly for documents that fill `data.max_length` / `data.retain_max_length`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fabricunlearn.methods.base import (
    Batch,
    KLReduction,
    Method,
    all_positions,
    codeeraser_kl,
    kl_to_reference,
    reference_kl_sum,
    shifted_logits,
    target_mask,
    token_ce,
)
from fabricunlearn.methods.registry import register


def _secret_mask(part: dict[str, torch.Tensor]) -> torch.Tensor:
    """Target positions whose token is a secret token `[B, T-1]` (the mask marks the target, as the original)."""
    return part["secret_mask"][:, 1:] & target_mask(part)


def _selective(logits, part, norm, context_weight: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """`−mean_{secret tokens} CE + γ·mean_{other real tokens} CE` and its two token sums."""
    ce = token_ce(logits, part)
    secret = _secret_mask(part)
    context = target_mask(part) & ~secret
    sums = {"secret": (ce * secret).sum(), "context": (ce * context).sum()}
    return -sums["secret"] / norm["secret"] + context_weight * sums["context"] / norm["context"], sums


@dataclass
class _Controlled(Method):
    """The shared control phase of CU and SSCU: `λ·α·mean_tokens KL(R)` on the retain set."""

    uses_retain = True
    needs_reference = True
    kl_weight: float = 0.1
    """λ (`control_lambda`): weight of the KL terms."""
    retain_kl_weight: float = 1.0
    """α (`control_alpha`): extra weight of the retain-side KL."""
    kl_reduction: KLReduction = "token"
    """`token`: KL(reference ‖ policy) per real token. `original`: CodeEraser's sum over all positions per sequence
    (module docstring)."""

    def __post_init__(self) -> None:
        if self.kl_weight < 0 or self.retain_kl_weight < 0:
            raise ValueError("kl_weight and retain_kl_weight must be >= 0")
        if self.kl_reduction not in ("token", "original"):
            raise ValueError(f"kl_reduction must be token or original, got {self.kl_reduction!r}")

    def _sequence_kl_count(self, part) -> torch.Tensor:
        """What a whole-sequence KL term is averaged over: real tokens, or (original) sequences."""
        if self.kl_reduction == "original":
            return torch.tensor(part["input_ids"].shape[0])
        return target_mask(part).sum()

    def _sequence_kl_sum(self, policy, reference, part) -> tuple[torch.Tensor, torch.Tensor]:
        if self.kl_reduction == "original":
            return reference_kl_sum(policy, reference, part, all_positions(part), codeeraser_kl)
        return reference_kl_sum(policy, reference, part)

    def forget_counts(self, part: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        raise NotImplementedError  # the forget phase is what CU and SSCU differ in

    def forget_loss(self, policy, reference, part, norm) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        raise NotImplementedError

    def term_counts(self, batch: Batch) -> dict[str, torch.Tensor]:
        counts = self.forget_counts(batch["forget"]) if "forget" in batch else {}
        if "retain" in batch:
            counts["retain_kl"] = self._sequence_kl_count(batch["retain"])
        return counts

    def loss(self, policy, reference, batch, norm):
        loss, sums = torch.zeros((), device=next(iter(batch.values()))["input_ids"].device), {}
        if "forget" in batch:
            loss, sums = self.forget_loss(policy, reference, batch["forget"], norm)
        if "retain" in batch:
            kl_sum, _ = self._sequence_kl_sum(policy, reference, batch["retain"])
            sums["retain_kl"] = kl_sum
            loss = loss + self.kl_weight * self.retain_kl_weight * kl_sum / norm["retain_kl"]
        return loss, {k: v.detach() for k, v in sums.items()}


@register
@dataclass
class ControllableUnlearning(_Controlled):
    """CU: `L_F = −mean CE(F) − λ·mean KL(F)` on the forget set, then the control phase `λ·α·mean KL(R)`."""

    name = "cu"

    def forget_counts(self, part):
        return {"forget": target_mask(part).sum(), "forget_kl": self._sequence_kl_count(part)}

    def forget_loss(self, policy, reference, part, norm):
        sums = {}
        sums["forget_kl"], logits = self._sequence_kl_sum(policy, reference, part)
        sums["forget"] = token_ce(logits, part).sum()
        return -sums["forget"] / norm["forget"] - self.kl_weight * sums["forget_kl"] / norm["forget_kl"], sums


@register
@dataclass
class SecretSelectiveGA(Method):
    """SSGA: ascent on the secret tokens, γ-weighted descent on the rest of the document.

    `L = −mean_{secret tokens} CE + γ·mean_{other real tokens} CE`; no retain set.
    """

    name = "ssga"
    context_weight: float = 0.1
    """γ (`select_gamma`): weight of the descent on the non-secret context."""

    def __post_init__(self) -> None:
        if self.context_weight < 0:
            raise ValueError(f"context_weight must be >= 0, got {self.context_weight}")

    def term_counts(self, batch: Batch) -> dict[str, torch.Tensor]:
        if "forget" not in batch:
            return {}
        secret, real = _secret_mask(batch["forget"]), target_mask(batch["forget"])
        return {"secret": secret.sum(), "context": (real & ~secret).sum()}

    def loss(self, policy, reference, batch, norm):
        loss, sums = _selective(shifted_logits(policy, batch["forget"]), batch["forget"], norm, self.context_weight)
        return loss, {k: v.detach() for k, v in sums.items()}


@register
@dataclass
class SecretSelectiveCU(_Controlled):
    """SSCU (CodeEraser): SSGA's forget loss, minus `λ·mean_{secret tokens} KL(F)`, then the control phase
    `λ·α·mean KL(R)`."""

    name = "sscu"
    context_weight: float = 0.1
    """γ (`select_gamma`): weight of the descent on the non-secret context."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.context_weight < 0:
            raise ValueError(f"context_weight must be >= 0, got {self.context_weight}")

    def forget_counts(self, part):
        secret, real = _secret_mask(part), target_mask(part)
        return {"secret": secret.sum(), "context": (real & ~secret).sum(), "secret_kl": secret.sum()}

    def forget_loss(self, policy, reference, part, norm):
        kl = codeeraser_kl if self.kl_reduction == "original" else kl_to_reference
        secret_kl, logits = reference_kl_sum(policy, reference, part, _secret_mask(part), kl)
        selective, sums = _selective(logits, part, norm, self.context_weight)
        sums["secret_kl"] = secret_kl
        return selective - self.kl_weight * secret_kl / norm["secret_kl"], sums
