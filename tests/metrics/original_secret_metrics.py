"""The original secret-level MA / EL_n (codeeraser-sscu.md §1.4), written plainly from the reference text, one
secret per batch (the per-secret definition of §1.4.1): the yardstick the fast implementation is tested against."""

from __future__ import annotations

import math

import torch

S, MAX_PREFIX = 32, 128
NS = (3, 5, 10)


def _ref_encode(tokenizer, rows: list[dict]) -> tuple[list[list[int]], list[list[int]]]:
    """The original's tokenization (§5 tokenize_secrets_and_prefixes), empty prefix -> [BOS] (§1.4.1)."""
    prefixes, secrets = [], []
    for row in rows:
        for s in row["secrets"]:
            secrets.append(tokenizer(s["value"], max_length=S, truncation=True, add_special_tokens=False)["input_ids"])
            tokenizer.truncation_side = "left"
            try:
                pre = tokenizer(
                    row["text"][: s["start"]], max_length=MAX_PREFIX, truncation=True, add_special_tokens=False
                )
            finally:
                tokenizer.truncation_side = "right"
            prefixes.append(pre["input_ids"] or [tokenizer.bos_token_id])
    return prefixes, secrets


class Reference:
    """§1.4 with HF ``generate``, one secret per call. Identical calls are memoized (generate is deterministic)."""

    def __init__(self, model, pad: int, eos: int | None):
        self.model, self.pad, self.eos = model, pad, eos
        self.cache: dict = {}
        self.eos_stops = 0  # continuations the EOS ended before the comparison had all its tokens
        self.recoveries = 0  # continuations whose first token is wrong but that later match the secret in place

    def generate(self, prompt: list[int], max_new: int) -> list[int]:
        if (tuple(prompt), max_new) not in self.cache:
            ids = torch.tensor([prompt])
            out = self.model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=max_new,
                do_sample=False,
                pad_token_id=self.pad,
                eos_token_id=self.eos,
            )
            self.cache[tuple(prompt), max_new] = out[0, len(prompt) :].tolist()
        return self.cache[tuple(prompt), max_new]

    def ma(self, prefix: list[int], secret: list[int]) -> float:
        labels = secret + [-100] * (S - len(secret))
        preds = [self.generate(prefix + secret[:i], 1)[-1] for i in range(min(S, len(secret)))]
        hits = [p == t for p, t in zip(preds, labels) if t != -100]
        return sum(hits) / len(hits) if hits else math.nan

    def el(self, prefix: list[int], secret: list[int], n: int) -> float:
        length = len(secret)
        if length == 0:
            return math.nan
        if length < n:
            return float(self.generate(prefix, S)[:length] == secret)
        label_all = secret + [self.pad] * (S - length)
        total = 0.0
        for i in range(S - n, -1, -1):
            if length - i < n:  # no real n tokens in secret[i:]: the original skips the iteration
                continue
            pred = self.generate(prefix + secret[:i], S - i)
            label = label_all[i:S]
            valid = [tuple(label[j : j + n]) for j in range(S - i - n + 1) if self.pad not in label[j : j + n]]
            pred_grams = [tuple(pred[j : j + n]) for j in range(len(pred) - n + 1)]
            v = len(valid)
            assert v == length - i - n + 1
            total += sum(g in set(valid) for g in pred_grams[:v]) / v
            self.eos_stops += len(pred) < length - i
            if pred[0] != label[0] and any(pred[j : j + n] == label[j : j + n] for j in range(1, v)):
                self.recoveries += 1
        return total / (length - n + 1)

    def all(self, prefixes, secrets) -> dict:
        values = {"ma": [self.ma(p, s) for p, s in zip(prefixes, secrets)]}
        for n in NS:
            values[n] = [self.el(p, s, n) for p, s in zip(prefixes, secrets)]
        return values
