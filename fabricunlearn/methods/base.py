"""The method interface: a method turns micro-batches into a loss; the training loop owns everything else.

A loss is a weighted sum of *terms*. Each term is a sum over tokens of the micro-batch divided by that term's
normaliser, which the loop computes for the whole optimizer step (all micro-batches, all processes) before the
first forward pass. Summing the micro-batch losses of a step therefore gives an exact per-token mean over the
step, whatever the accumulation or the number of processes.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F

from fabricunlearn.config import RecipeError

Batch = dict[str, dict[str, torch.Tensor]]
"""`{"forget": {...}, "retain": {...}}`: the parts present are the ones the current phase feeds."""


class Method:
    """Base class. Subclasses are dataclasses whose fields are the method's hyper-parameters."""

    name: ClassVar[str]
    uses_retain: ClassVar[bool] = False
    """Whether the method has a retain term (and so a retain phase in the two-phase schedule)."""
    needs_reference: ClassVar[bool] = False
    """Whether the method needs the frozen original model (KL terms)."""

    @property
    def needs_retain_data(self) -> bool:
        """Whether the run must load `data.retain` (every method with a retain term; ICU for its neighbour pool)."""
        return self.uses_retain

    @classmethod
    def validate_args(cls, args: dict[str, Any]) -> None:
        known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(args) - known)
        if unknown:
            raise RecipeError(f"method.args: unknown key(s) {unknown} for method {cls.name!r}; known: {sorted(known)}")
        try:
            cls(**args)
        except (TypeError, ValueError) as err:
            raise RecipeError(f"method.args: {err}") from None

    def term_counts(self, batch: Batch) -> dict[str, torch.Tensor]:
        """Per term, the number of tokens it sums over in this micro-batch (from masks only, no forward pass)."""
        raise NotImplementedError

    def log_name(self, term: str) -> str:
        """The name a term's per-token mean is logged under (`train/<name>`): a KL term by its own name, a
        likelihood term as `<term>_nll`."""
        return term if term.endswith("_kl") else f"{term}_nll"

    # Hooks for methods that keep state across epochs (ICU); the defaults do nothing.
    def prepare(self, fabric, rd) -> None:
        """Once per run, before the first step (and on resume): precompute what the method needs from the data."""

    def end_epoch(self, fabric, model, rd, epoch: int) -> dict[str, float]:
        """After each epoch's training (and at epoch 0, before any): update the method's state; returns scalars to
        log with the epoch's evaluation."""
        return {}

    @property
    def done(self) -> str | None:
        """Why training should stop now, from the method's own point of view (None: no reason)."""
        return None

    def state_dict(self) -> dict:
        """The method's state to checkpoint (tensors and plain values)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Restore `state_dict()` on resume."""

    def loss(
        self, policy: torch.nn.Module, reference: torch.nn.Module | None, batch: Batch, norm: dict[str, float]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The micro-batch's share of the step loss, and per-term token sums for logging."""
        raise NotImplementedError


def target_mask(part: dict[str, torch.Tensor]) -> torch.Tensor:
    """Which shifted positions predict a real token: `[B, T-1]` bool."""
    return part["labels"][:, 1:] != -100


def shifted_logits(model: torch.nn.Module, part: dict[str, torch.Tensor]) -> torch.Tensor:
    """Float32 logits `[B, T-1, V]`, position t predicting token t + 1."""
    # no KV cache: training never reuses it, and building it costs time and memory
    out = model(input_ids=part["input_ids"], attention_mask=part["attention_mask"], use_cache=False)
    return out.logits[:, :-1].float()


def token_ce(logits: torch.Tensor, part: dict[str, torch.Tensor], labels: torch.Tensor | None = None) -> torch.Tensor:
    """Per target position CE `[B, T-1]` from shifted logits, zero where the target is padding. ``labels``: other
    targets `[B, T]` than the batch's own (random or adversarial labels)."""
    targets = (part["labels"] if labels is None else labels)[:, 1:]
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-100, reduction="none").view_as(
        targets
    )


def token_nll(model: torch.nn.Module, part: dict[str, torch.Tensor]) -> torch.Tensor:
    """Per-position negative log-likelihood `[B, T-1]` in float32, zero where the target is padding."""
    return token_ce(shifted_logits(model, part), part)


def kl_to_reference(policy_logits: torch.Tensor, reference_logits: torch.Tensor) -> torch.Tensor:
    """KL(reference ‖ policy) per position `[B, T-1]`: Σ_v q_v (log q_v − log p_v), in float32 log-space (no ε).
    Callers mask it to real tokens and state their reduction."""
    log_p = F.log_softmax(policy_logits.float(), dim=-1)
    log_q = F.log_softmax(reference_logits.float(), dim=-1)
    return (log_q.exp() * (log_q - log_p)).sum(-1)


KLReduction = Literal["token", "original"]
"""`token`: KL(reference ‖ policy) in float32 log-space, averaged over the real tokens it covers. `original`: the
reduction of the method's original code (each method says which), for comparisons with published numbers."""


def codeeraser_kl(policy_logits: torch.Tensor, reference_logits: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    """CodeEraser's KL per position `[B, T-1]`: `Σ_v (q_v+ε)(log(q_v+ε) − log(p_v+ε))` from float32 softmaxes
    (`kl_div(log(p+ε), q+ε)`), the ε-smoothed KL(reference ‖ policy)."""
    p = F.softmax(policy_logits.float(), dim=-1) + eps
    q = F.softmax(reference_logits.float(), dim=-1) + eps
    return (q * (q.log() - p.log())).sum(-1)


def reference_cross_entropy(
    policy_logits: torch.Tensor, reference_logits: torch.Tensor, eps: float = 1e-12
) -> torch.Tensor:
    """Yao et al.'s and ICU's retain term per position `[B, T-1]`: `−Σ_v p_ref,v · log(p_θ,v + ε)`, the cross-entropy
    H(reference, policy) = KL(reference ‖ policy) + the reference's entropy (a constant for the policy)."""
    q = F.softmax(reference_logits.float(), dim=-1)
    return -(q * (F.softmax(policy_logits.float(), dim=-1) + eps).log()).sum(-1)


def all_positions(part: dict[str, torch.Tensor]) -> torch.Tensor:
    """Every shifted position of the collated micro-batch, padding included `[B, T-1]` (the originals' unmasked
    reductions)."""
    return torch.ones_like(part["input_ids"][:, 1:], dtype=torch.bool)


def reference_kl_sum(policy, reference, part: dict[str, torch.Tensor], mask=None, per_position=kl_to_reference):
    """(Σ over the masked positions of `per_position(policy, reference)`, the policy's shifted logits). `mask`: real
    target tokens by default; `per_position`: KL(reference ‖ policy) by default, or an original's variant."""
    logits = shifted_logits(policy, part)
    with torch.no_grad():
        ref = shifted_logits(reference, part)
    mask = target_mask(part) if mask is None else mask
    return (per_position(logits, ref) * mask).sum(), logits
