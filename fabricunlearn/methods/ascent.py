"""Gradient ascent and gradient difference: the two baselines every unlearning paper starts from."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from fabricunlearn.methods.base import (
    Batch,
    KLReduction,
    Method,
    all_positions,
    reference_cross_entropy,
    reference_kl_sum,
    target_mask,
    token_nll,
)
from fabricunlearn.methods.registry import register


@register
@dataclass
class GradientAscent(Method):
    """Gradient ascent (GA): maximise the forget set's token NLL, `L = -mean_tokens NLL(forget)`.

    The original (CodeEraser's `GradientAscent`) uses the model's built-in mean CE per micro-batch; here the mean
    runs over every forget token of the optimizer step (`train.loss_reduction` selects the original's way).
    """

    name = "ga"

    def term_counts(self, batch: Batch) -> dict[str, torch.Tensor]:
        return {"forget": target_mask(batch["forget"]).sum()} if "forget" in batch else {}

    def loss(self, policy, reference, batch, norm):
        forget_sum = token_nll(policy, batch["forget"]).sum()
        return -forget_sum / norm["forget"], {"forget": forget_sum.detach()}


@register
@dataclass
class GradientDifference(Method):
    """Gradient difference (GD): ascent on the forget set, descent on the retain set.

    `L = -mean_tokens NLL(forget) + retain_weight * mean_tokens NLL(retain)`, each mean over its own tokens of the
    optimizer step. Under `train.schedule: two_phase` the forget term makes one step and the retain term the next.
    """

    name = "gd"
    uses_retain = True
    retain_weight: float = 1.0
    """Weight of the descent term on the retain set."""

    def __post_init__(self) -> None:
        if self.retain_weight < 0:
            raise ValueError(f"retain_weight must be >= 0, got {self.retain_weight}")

    retain_term: ClassVar[str] = "retain"
    """The retain term's name (its token counts, its log name)."""

    def retain_sum(self, policy, reference, part: dict[str, torch.Tensor]) -> torch.Tensor:
        """The retain term summed over the micro-batch's real tokens: NLL here."""
        return token_nll(policy, part).sum()

    def retain_count(self, part: dict[str, torch.Tensor]) -> torch.Tensor:
        """What the retain term is averaged over: its real target tokens."""
        return target_mask(part).sum()

    def term_counts(self, batch: Batch) -> dict[str, torch.Tensor]:
        counts = {}
        if "forget" in batch:
            counts["forget"] = target_mask(batch["forget"]).sum()
        if "retain" in batch:
            counts[self.retain_term] = self.retain_count(batch["retain"])
        return counts

    def loss(self, policy, reference, batch, norm):
        loss = torch.zeros((), device=next(iter(batch.values()))["input_ids"].device)
        sums: dict[str, torch.Tensor] = {}
        if "forget" in batch:
            sums["forget"] = token_nll(policy, batch["forget"]).sum()
            loss = loss - sums["forget"] / norm["forget"]
        if "retain" in batch:
            sums[self.retain_term] = self.retain_sum(policy, reference, batch["retain"])
            loss = loss + self.retain_weight * sums[self.retain_term] / norm[self.retain_term]
        return loss, {k: v.detach() for k, v in sums.items()}


@register
@dataclass
class AscentPlusKL(GradientDifference):
    """GA + KL (Yao et al. 2024): ascent on the forget set, and on the retain set the KL from the original model,
    `L = -mean_tokens NLL(forget) + retain_weight * mean_tokens KL(reference || policy)(retain)`.

    The original (`AscentPlusKLDivergenceTrainer`) computed the cross-entropy H(p_ref, q_θ) over every position,
    padding included, without a mask: KL plus a constant, diluted by padding. Here: the KL itself, per real token
    (`kl_reduction: original` computes the original's term). `retain_weight` weighs the KL term.
    """

    name = "ga_kl"
    needs_reference = True
    retain_term = "retain_kl"
    kl_reduction: KLReduction = "token"
    """`token`: KL(reference ‖ policy) per real token. `original`: the original's `−Σ_v p_ref log(p_θ + 1e-12)`
    averaged over every position of the micro-batch, padding included."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.kl_reduction not in ("token", "original"):
            raise ValueError(f"kl_reduction must be token or original, got {self.kl_reduction!r}")

    def retain_count(self, part):
        return (all_positions(part) if self.kl_reduction == "original" else target_mask(part)).sum()

    def retain_sum(self, policy, reference, part):
        if self.kl_reduction == "original":
            kl_sum, _ = reference_kl_sum(policy, reference, part, all_positions(part), reference_cross_entropy)
        else:
            kl_sum, _ = reference_kl_sum(policy, reference, part)
        return kl_sum
