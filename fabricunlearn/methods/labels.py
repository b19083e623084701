"""Unlearning by fine-tuning on wrong labels (Yao et al. 2024, reference icu-and-pretrained-llm-unlearning.md C.2):
descent on the forget documents with every target token replaced.

- ``random_labels``: a token drawn uniformly from the vocabulary at every real target position.
- ``adversarial_labels``: the original model's best guess other than the true token,
  ``y_t = argmax_{v ≠ x_{t+1}} p_ref(v | x_≤t)``, i.e. its most plausible wrong answer.

Labels are fixed per document: random ones come from a generator seeded by ``seed`` and the document's tokens,
adversarial ones from the frozen original model in one vectorised pass, cached per document, so every epoch trains
towards the same targets.

Differences from the original: its adversarial labels excluded the *input* token x_t instead of the target x_{t+1}
(an off-by-one through the HF label shift: `original_offset: true` reproduces it), and also excluded the last
vocabulary id (a quirk of its Yi tokenizer; not reproduced). Its random labels kept BOS/EOS/UNK positions as they
were; documents here carry no special tokens (tokenized without them), so every real target is replaced.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import torch

from fabricunlearn.methods.base import Batch, Method, shifted_logits, target_mask, token_ce
from fabricunlearn.methods.registry import register


def _row_key(ids: torch.Tensor) -> bytes:
    return ids.detach().cpu().numpy().tobytes()


@dataclass
class _WrongLabels(Method):
    def log_name(self, term: str) -> str:
        return "forget_wrong_label_nll" if term == "forget" else super().log_name(term)

    def term_counts(self, batch: Batch) -> dict[str, torch.Tensor]:
        return {"forget": target_mask(batch["forget"]).sum()} if "forget" in batch else {}

    def labels(self, reference, part: dict[str, torch.Tensor], vocab: int) -> torch.Tensor:
        raise NotImplementedError  # each subclass says how its wrong labels are made

    def loss(self, policy, reference, batch, norm):
        part = batch["forget"]
        logits = shifted_logits(policy, part)
        labels = self.labels(reference, part, logits.shape[-1])
        ce_sum = token_ce(logits, part, labels).sum()
        return ce_sum / norm["forget"], {"forget": ce_sum.detach()}


@register
@dataclass
class RandomLabels(_WrongLabels):
    """Descent on the forget documents with uniformly random target tokens."""

    name = "random_labels"
    seed: int = 42
    """Seeds each document's labels (with its tokens), so they are the same every epoch."""

    def labels(self, reference, part, vocab):
        labels = part["labels"].clone()
        for b in range(labels.shape[0]):
            real = labels[b] != -100
            key = hashlib.sha256(str(self.seed).encode() + _row_key(part["input_ids"][b][real])).digest()
            generator = torch.Generator().manual_seed(int.from_bytes(key[:8], "little"))
            drawn = torch.randint(0, vocab, (int(real.sum()),), generator=generator)
            labels[b, real] = drawn.to(labels.device)
        return labels


@register
@dataclass
class AdversarialLabels(_WrongLabels):
    """Descent on the forget documents towards the original model's most plausible wrong token at each position."""

    name = "adversarial_labels"
    needs_reference = True
    original_offset: bool = False
    """Exclude the input token x_t instead of the target x_{t+1}, as the original did (an off-by-one)."""
    _cache: dict = field(default_factory=dict, repr=False, compare=False)

    def labels(self, reference, part, vocab):
        labels = part["labels"].clone()
        lengths = part["attention_mask"].sum(1).tolist()
        keys = [_row_key(part["input_ids"][b, :n]) for b, n in enumerate(lengths)]  # padding is not the document
        rows = [b for b, key in enumerate(keys) if key not in self._cache]
        if rows:
            with torch.no_grad():
                logits = shifted_logits(reference, {k: v[rows] for k, v in part.items()})  # [R, T-1, V]
            ids = part["input_ids"][rows]
            excluded = ids[:, :-1] if self.original_offset else ids[:, 1:]
            logits.scatter_(-1, excluded.unsqueeze(-1), float("-inf"))
            wrong = logits.argmax(-1)  # [R, T-1]
            for r, b in enumerate(rows):
                self._cache[keys[b]] = wrong[r, : lengths[b] - 1]
        for b, n in enumerate(lengths):
            labels[b, 1:n] = self._cache[keys[b]].to(labels.device)
        return labels
