"""ICU, "Learn while Unlearn" (Tang et al. 2024; reference icu-and-pretrained-llm-unlearning.md §B): ascent on the
forget documents that the model can still extract, descent and a KL to the original model on each one's nearest
neighbour from the retain set, and a per-epoch test that takes extracted-no-more documents (and their neighbours)
out of training and puts them back if they become extractable again.

`L = −w_u·mean_tok NLL(forget_A) + w_l·mean_tok NLL(neighbours_A) + w_kl·mean_tok KL(ref ‖ θ)(neighbours_A)`
over the active documents A. The original's KL term was the cross-entropy `−Σ_v p_0 log(q_θ + 1e-12)` averaged over
every position, padding included (`kl_reduction: original`); here it is the KL itself per real token. A step
whose documents are all inactive changes nothing (the original's losses became NaN and Adam's momentum still moved
the weights). Neighbours and the test: `fabricunlearn.methods.icu_support`.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

import torch

from fabricunlearn.methods import icu_support
from fabricunlearn.methods.base import (
    Batch,
    KLReduction,
    Method,
    all_positions,
    kl_to_reference,
    reference_cross_entropy,
    reference_kl_sum,
    target_mask,
    token_ce,
    token_nll,
)
from fabricunlearn.methods.registry import register


@register
@dataclass
class ICU(Method):
    """ICU: ascent on extractable forget documents, descent + KL on their nearest retain-set neighbours."""

    name = "icu"
    needs_reference = True
    needs_retain_data = True  # the neighbour pool; the neighbours come with the forget batch, not in a retain phase
    forget_weight: float = 1.0
    """w_u (`uw`): weight of the ascent on the forget documents."""
    neighbour_weight: float = 0.5
    """w_l (`lw`): weight of the descent on the neighbours."""
    kl_weight: float = 1.0
    """w_kl (`kl`): weight of the KL to the original model on the neighbours."""
    kl_reduction: KLReduction = "token"
    """`token`: KL(ref ‖ θ) per real token. `original`: the original's cross-entropy over every position."""
    embedding_model: str | None = None
    """Local sentence-transformers folder for the neighbour search (faiss, exact L2); empty: TF-IDF cosine."""
    bert_model: str | None = None
    """Local BERT folder for the test's BERTScore F1; empty: token-level F1 (fabricunlearn.methods.icu_support)."""
    bert_layer: int = 9
    """BERTScore layer (9: bert_score's default for bert-base-uncased, as the original)."""
    f1_threshold: float = 0.3
    """A document is forgotten when its continuation's F1 is below this..."""
    bleu_threshold: float = 0.01
    """...or its BLEU-4 is below this."""
    prompt_tokens: int = 128
    """Tokens before the document's first secret token given to the model in the test (the original: 50)."""
    continuation_tokens: int = 50
    """Tokens the model writes, compared with the document's own from the first secret token on."""

    def __post_init__(self) -> None:
        if min(self.forget_weight, self.neighbour_weight, self.kl_weight) < 0:
            raise ValueError("forget_weight, neighbour_weight and kl_weight must be >= 0")
        if self.kl_reduction not in ("token", "original"):
            raise ValueError(f"kl_reduction must be token or original, got {self.kl_reduction!r}")
        if self.prompt_tokens < 1 or self.continuation_tokens < 1 or self.bert_layer < 1:
            raise ValueError("prompt_tokens, continuation_tokens and bert_layer must be >= 1")
        self.active: torch.Tensor | None = None  # per forget document: still extractable (trained on)
        self.neighbour: list[int] = []

    # --- set-up and the per-epoch test -------------------------------------------------------------------------

    def prepare(self, fabric, rd) -> None:
        decode = rd.tokenizer.decode
        queries = [decode(ids) for ids in rd.forget.input_ids]
        pool = [decode(ids) for ids in rd.retain.input_ids]
        try:
            self.neighbour = icu_support.nearest_neighbours(queries, pool, self.embedding_model)
        except ValueError as err:
            from fabricunlearn.config import RecipeError

            raise RecipeError(str(err)) from None
        self._pool, self._pad = rd.retain, rd.pad_token_id
        self.active = torch.ones(len(rd.forget), dtype=torch.bool)

    @torch.no_grad()
    def end_epoch(self, fabric, model, rd, epoch: int) -> dict[str, float]:
        """Re-run the forgotten test on every forget document (every rank the same work) and reset the flags."""
        from fabricunlearn.metrics.decoding import NO_TOKEN, eos_list, greedy_continuations
        from fabricunlearn.train.evaluation import eval_module, rank_sync

        forget = rd.forget
        spans = icu_support.prompt_spans(
            forget.secret_mask, [len(x) for x in forget.input_ids], self.prompt_tokens, self.continuation_tokens
        )
        start_token = rd.tokenizer.bos_token_id if rd.tokenizer.bos_token_id is not None else rd.eos_token_id
        prompts = [forget.input_ids[i][a:k] or [start_token] for i, (a, k, _) in enumerate(spans)]
        references = [forget.input_ids[i][k:e] for i, (_, k, e) in enumerate(spans)]
        module = eval_module(fabric, model)
        with fabric.autocast() if module is not model else nullcontext():  # as the evaluation runs it
            generated = greedy_continuations(
                module,
                prompts,
                [self.continuation_tokens] * len(prompts),
                eos_list(rd.eos_token_id),
                rd.pad_token_id,
                batch_size=64,
                sync=rank_sync(fabric),
            )
        candidates = [[t for t in g if t != NO_TOKEN] for g in generated]
        if self.bert_model is not None:
            decode = rd.tokenizer.decode
            cand_text, ref_text = [decode(c) for c in candidates], [decode(r) for r in references]
            f1 = icu_support.bert_f1(cand_text, ref_text, self.bert_model, self.bert_layer)
        else:
            f1 = [icu_support.token_f1(c, r) for c, r in zip(candidates, references)]
        bleu = [icu_support.sentence_bleu(c, r) for c, r in zip(candidates, references)]
        forgotten = [f < self.f1_threshold or b < self.bleu_threshold for f, b in zip(f1, bleu)]
        self.active = torch.tensor([not x for x in forgotten], dtype=torch.bool)
        n = max(len(f1), 1)
        return {"icu/active": float(self.active.sum()), "icu/f1": sum(f1) / n, "icu/bleu": sum(bleu) / n}

    @property
    def done(self) -> str | None:
        if self.active is not None and not bool(self.active.any()):
            return "ICU: every forget document passes the forgotten test"
        return None

    def state_dict(self) -> dict:
        return {"active": self.active.clone()}

    def load_state_dict(self, state: dict) -> None:
        self.active = state["active"].cpu().bool()

    # --- the loss -----------------------------------------------------------------------------------------------

    def _rows(self, part: dict[str, torch.Tensor]) -> torch.Tensor:
        """Which rows of a forget micro-batch are active `[B, 1]`."""
        return self.active[part["index"].cpu()].to(part["input_ids"].device)[:, None]

    def _neighbours(self, part: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        from fabricunlearn.data.batches import collate

        batch = collate(self._pool, [self.neighbour[int(i)] for i in part["index"]], self._pad)
        return {k: v.to(part["input_ids"].device) for k, v in batch.items()}

    def _kl_positions(self, part: dict[str, torch.Tensor]) -> torch.Tensor:
        return all_positions(part) if self.kl_reduction == "original" else target_mask(part)

    def term_counts(self, batch: Batch) -> dict[str, torch.Tensor]:
        if "forget" not in batch:
            return {}
        part, rows = batch["forget"], self._rows(batch["forget"]).cpu()
        neighbours = self._neighbours(part)
        return {
            "forget": (target_mask(part).cpu() & rows).sum(),
            "neighbour": (target_mask(neighbours).cpu() & rows).sum(),
            "neighbour_kl": (self._kl_positions(neighbours).cpu() & rows).sum(),
        }

    def loss(self, policy, reference, batch, norm):
        part = batch["forget"]
        rows = self._rows(part)
        neighbours = self._neighbours(part)
        sums = {"forget": (token_nll(policy, part) * rows).sum()}
        per_position = reference_cross_entropy if self.kl_reduction == "original" else kl_to_reference
        sums["neighbour_kl"], logits = reference_kl_sum(
            policy, reference, neighbours, self._kl_positions(neighbours) & rows, per_position
        )
        sums["neighbour"] = (token_ce(logits, neighbours) * rows).sum()
        loss = (
            -self.forget_weight * sums["forget"] / norm["forget"]
            + self.neighbour_weight * sums["neighbour"] / norm["neighbour"]
            + self.kl_weight * sums["neighbour_kl"] / norm["neighbour_kl"]
        )
        return loss, {k: v.detach() for k, v in sums.items()}
