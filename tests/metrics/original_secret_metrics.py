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


class BatchedOriginal:
    """§1.4 the way the original code runs it, to time it and to check it against :class:`Reference`.

    The secrets of a batch (``batch_size`` consecutive secrets) form one generation batch: each secret value
    right-padded with ``pad`` to S = 32, each prefix left-padded with ``pad`` to 128 (an empty prefix is ``[BOS]``,
    §1.4.1; pass the ids of ``_ref_encode`` or ``encode_secrets``). Every call is ``model.generate`` on the whole
    batch with ``attention_mask = prompt != pad`` (what generate infers when given none), greedy. MA: 32 one-token
    calls per batch. EL_n: one call per offset i = S - n .. 0 that some secret of the batch scores, plus one
    ``generate(prefix, 32)`` when a secret is shorter than n, each n a separate pass.

    Where generate stops the whole batch early (every row has emitted EOS), the missing predicted positions match
    nothing, and the pad that generate puts after a row's EOS never matches either (valid label n-grams hold no
    pad): that is the per-secret definition of §1.4.1, where the original compares fewer n-grams or crashes.
    """

    def __init__(self, model, pad: int, eos: int | None, batch_size: int = 16):
        self.model, self.pad, self.eos, self.batch_size = model, pad, eos, batch_size
        self.calls = 0  # generate calls made
        self.short_outputs = 0  # calls that returned fewer new tokens than asked (the batch ended at EOS)
        self.ended_rows = 0  # rows that emitted EOS before the last returned token (pad follows it)

    def _generate(self, prompt: torch.Tensor, max_new: int) -> torch.Tensor:
        out = self.model.generate(
            prompt,
            attention_mask=(prompt != self.pad).long(),
            max_new_tokens=max_new,
            do_sample=False,
            pad_token_id=self.pad,
            eos_token_id=self.eos,
        )
        self.calls += 1
        new = out[:, prompt.shape[1] :]
        self.short_outputs += new.shape[1] < max_new
        if self.eos is not None:
            self.ended_rows += int((new[:, :-1] == self.eos).any(1).sum())
        return new

    def _batches(self, prefixes: list[list[int]], secrets: list[list[int]]):
        """(prefix [B, 128] left-padded, secret [B, S] right-padded, lengths [B]) per batch, in order."""
        for start in range(0, len(secrets), self.batch_size):
            pre, sec = prefixes[start : start + self.batch_size], secrets[start : start + self.batch_size]
            prefix = torch.full((len(sec), MAX_PREFIX), self.pad, dtype=torch.long)
            secret = torch.full((len(sec), S), self.pad, dtype=torch.long)
            for b, (p, s) in enumerate(zip(pre, sec)):
                p, s = p[-MAX_PREFIX:], s[:S]
                prefix[b, MAX_PREFIX - len(p) :] = torch.tensor(p, dtype=torch.long)
                secret[b, : len(s)] = torch.tensor(s, dtype=torch.long)
            yield prefix, secret, (secret != self.pad).sum(1)

    @torch.no_grad()
    def ma(self, prefixes: list[list[int]], secrets: list[list[int]]) -> list[float]:
        values: list[float] = []
        for prefix, secret, _ in self._batches(prefixes, secrets):
            preds = torch.stack([self._generate(torch.cat([prefix, secret[:, :i]], 1), 1)[:, -1] for i in range(S)], 1)
            real = secret != self.pad  # pad labels are -100 in the original
            hits = ((preds == secret) & real).sum(1).double()
            values += (hits / real.sum(1).double()).tolist()  # 0 / 0 = NaN for an empty secret
        return values

    @torch.no_grad()
    def el(self, prefixes: list[list[int]], secrets: list[list[int]], n: int) -> list[float]:
        values: list[float] = []
        for prefix, secret, length in self._batches(prefixes, secrets):
            total = torch.zeros(len(secret), dtype=torch.float64)
            for i in range(S - n, -1, -1):
                v = length - i - n + 1  # V_i per secret
                if not bool((v > 0).any()):
                    continue  # no secret of the batch has n real tokens in secret[i:]
                pred = self._generate(torch.cat([prefix, secret[:, :i]], 1), S - i)
                total += self._overlap(pred, secret[:, i:], v, n)
            el = total / (length - n + 1).double()
            short = (length > 0) & (length < n)
            if bool(short.any()):
                pred = self._generate(prefix, S)
                got = torch.full_like(secret, -1)  # positions generate did not return match nothing
                got[:, : pred.shape[1]] = pred[:, :S]
                exact = ((got == secret) | ~(secret != self.pad)).all(1).double()
                el = torch.where(short, exact, el)
            values += torch.where(length == 0, torch.nan, el).tolist()
        return values

    def _overlap(self, pred: torch.Tensor, label: torch.Tensor, v: torch.Tensor, n: int) -> torch.Tensor:
        """overlap_i per secret: #{j < V_i : pred n-gram j is a valid label n-gram} / V_i (0 where V_i <= 0)."""
        if pred.shape[1] < n:  # generate ended before one whole n-gram: nothing matches
            return torch.zeros(len(label), dtype=torch.float64)
        pred_grams = pred.unfold(1, n, 1)  # [B, P, n]
        label_grams = label.unfold(1, n, 1)  # [B, G, n]
        valid = (label_grams != self.pad).all(-1)  # [B, G]: no pad, so a pad (after EOS) never matches
        match = ((pred_grams[:, :, None] == label_grams[:, None]).all(-1) & valid[:, None]).any(-1)  # [B, P]
        first_v = torch.arange(match.shape[1])[None] < v[:, None]  # only the first V_i predicted n-grams count
        count = (match & first_v).sum(1).double()
        return torch.where(v > 0, count / v.clamp(min=1).double(), 0.0)

    def all(self, prefixes, secrets, ns=NS) -> dict:
        values = {"ma": self.ma(prefixes, secrets)}
        for n in ns:
            values[n] = self.el(prefixes, secrets, n)
        return values
