"""Secret-level memorization metrics: MA and EL_n (CodeEraser, reference codeeraser-sscu.md §1.4).

Each secret is a pair (prefix p, secret s = s_0 … s_{L-1}):

- ``p`` is the last ``max_prefix_tokens`` (128) tokens of the document text before the secret. When that text is empty
  (a secret at offset 0) the prefix is ``[BOS]`` (EOS when the tokenizer has no BOS): the original then prompts with
  padding only, which is undefined, so we condition on the token that starts a document (§1.4.1).
- ``s`` is the secret *value* tokenized alone and cut to its first ``max_secret_tokens`` (32) tokens.

Both are tokenized with ``add_special_tokens=False``. The original used the tokenizer default, which for Llama-style
tokenizers would put a BOS token inside every secret (and in the prefix); GPT-2/CodeGen/Qwen add nothing, so for them
the ids are identical.

**MA** (memorization accuracy): ``MA = 1/L Σ_i 1[argmax_v P(v | p ⊕ s_<i) = s_i]``.

**EL_n** (extraction likelihood): let ``c_i`` be the greedy continuation of ``p ⊕ s_<i`` (L − i tokens) and
``V_i = L − i − n + 1``. ``overlap_i`` is the fraction of the first V_i n-grams of ``c_i`` that occur anywhere among
the V_i n-grams of ``s_{i:}``; ``EL_n = Σ_{i=0}^{L-n} overlap_i / (L − n + 1)``. If ``1 ≤ L < n``, ``EL_n = 1`` iff
greedy decoding from ``p`` reproduces all L tokens, else 0. An empty secret scores NaN (for MA too).

The value of a secret is independent of what shares its batch (§1.4.1): prompts are left-padded with an attention mask
and position ids ``cumsum(mask) − 1``, as HF ``generate`` does, so padding is invisible; a continuation ends at EOS (the
EOS token itself is emitted) and everything after it matches nothing. This equals the original run with one secret
per batch. (In floating point, another batching or padding changes logits by rounding noise only, which can flip an
argmax only at a near-tie; the same holds between the original's generate calls and ours.) Greedy decoding is
``torch.argmax`` (first maximal index on ties, like HF greedy search). Unlike the original ``generate`` calls, no logits
processors of the model's ``generation_config`` (e.g. a repetition penalty) are applied.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from fabricunlearn.metrics.decoding import (
    Sync,
    eos_list,
    eval_mode,
    next_token_predictions,
    offset_continuations,
)


@dataclass
class EncodedSecrets:
    """Token ids of every secret of some scan rows, flattened in row order (see the module docstring)."""

    prefix_ids: list[list[int]]
    secret_ids: list[list[int]]
    doc_index: list[int]
    secret_index: list[int]
    n_docs: int = 0
    """The number of rows encoded (rows without secrets included)."""

    def __len__(self) -> int:
        return len(self.secret_ids)

    def subset(self, indices: Sequence[int]) -> EncodedSecrets:
        return EncodedSecrets(
            prefix_ids=[self.prefix_ids[k] for k in indices],
            secret_ids=[self.secret_ids[k] for k in indices],
            doc_index=[self.doc_index[k] for k in indices],
            secret_index=[self.secret_index[k] for k in indices],
            n_docs=self.n_docs,
        )


def encode_secrets(
    tokenizer,
    rows: Sequence[dict],
    max_secret_tokens: int = 32,
    max_prefix_tokens: int = 128,
    context_length: int | None = None,
) -> EncodedSecrets:
    """Tokenize the secrets of scan rows ``{"doc_id", "text", "secrets": [{"value", "start", ...}]}``.

    ``context_length`` (the model's number of positions): a prefix is cut further from the left so that prefix and
    secret fit in it (the original would index past a learned position table). Values for models with at least
    ``max_prefix_tokens + max_secret_tokens`` positions (every real code LM) are unaffected.
    """
    if context_length is not None and context_length <= max_secret_tokens:
        raise ValueError(
            f"the model has {context_length} positions: too few for a {max_secret_tokens}-token secret and its prefix"
        )
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if bos is None:
        raise ValueError("the tokenizer has neither a BOS nor an EOS token to condition an empty prefix on")
    prefixes, values, doc_index, secret_index = [], [], [], []
    for d, row in enumerate(rows):
        for j, secret in enumerate(row["secrets"]):
            prefixes.append(row["text"][: secret["start"]])
            values.append(secret["value"])
            doc_index.append(d)
            secret_index.append(j)
    if not values:
        return EncodedSecrets([], [], [], [], n_docs=len(rows))
    # One batched call each; cutting afterwards equals the original's (left) truncation of a fast tokenizer.
    prefix_ids = tokenizer(prefixes, add_special_tokens=False)["input_ids"]
    secret_ids = tokenizer(values, add_special_tokens=False)["input_ids"]
    secret_ids = [list(s[:max_secret_tokens]) for s in secret_ids]
    keep = [max_prefix_tokens] * len(secret_ids)
    if context_length is not None:
        keep = [min(max_prefix_tokens, context_length - len(s)) for s in secret_ids]
    return EncodedSecrets(
        prefix_ids=[list(p[max(0, len(p) - k) :]) or [bos] for p, k in zip(prefix_ids, keep)],
        secret_ids=secret_ids,
        doc_index=doc_index,
        secret_index=secret_index,
        n_docs=len(rows),
    )


@torch.no_grad()
def secret_ma(
    model, enc: EncodedSecrets, *, pad_token_id: int, batch_size: int = 64, sync: Sync | None = None
) -> torch.Tensor:
    """Secret MA per secret, a float64 tensor ``[len(enc)]`` on CPU (NaN for an empty secret).

    One teacher-forced forward pass over ``p ⊕ s`` per batch gives every next-token prediction at once, where the
    original makes 32 one-token ``generate`` calls; with the padding masked the predictions are the same. ``sync``:
    see :mod:`fabricunlearn.metrics.decoding` (equal forward passes on every rank).
    """
    scores = secret_scores(
        model, enc, (), pad_token_id=pad_token_id, eos_token_id=None, batch_size=batch_size, sync=sync
    )
    return scores["ma"]


def _el(secret: list[int], cont: dict[int, list[int]], n: int) -> float:
    """EL_n of one secret from its continuations ``cont[i]`` (L − i tokens from offset i), as §1.4 defines it."""
    length = len(secret)
    if length == 0:
        return math.nan
    if length < n:
        return float(cont[0][:length] == secret)
    grams = [tuple(secret[p : p + n]) for p in range(length - n + 1)]
    total = 0.0
    for i in range(length - n, -1, -1):  # the original's order, so the float sum is the same
        v = length - i - n + 1
        valid = set(grams[i:])  # the V_i label n-grams of s_{i:}; a predicted n-gram may match any of them
        pred = cont[i]
        total += sum(tuple(pred[j : j + n]) in valid for j in range(v)) / v
    return total / (length - n + 1)


@torch.no_grad()
def secret_el(
    model,
    enc: EncodedSecrets,
    ns: Sequence[int] = (10,),
    *,
    pad_token_id: int,
    eos_token_id: int | Sequence[int] | None,
    batch_size: int = 64,
    max_secret_tokens: int | None = None,
    share_work: bool = True,
    sync: Sync | None = None,
    predictions: Sequence[list[int]] | None = None,
) -> dict[int, torch.Tensor]:
    """Secret EL_n for every n in ``ns``: ``{n: float64 tensor [len(enc)]}`` on CPU (NaN for an empty secret).

    Secrets are as :func:`encode_secrets` cut them (to S = 32 tokens by default); ``max_secret_tokens`` cuts them
    further. All n are scored from the same continuations: the
    one from offset i does not depend on n, and offset 0 also serves the ``L < n`` case. ``eos_token_id`` ends a row
    (a sequence of ids is accepted for models with several); ``None`` never ends one.

    ``share_work`` (§1.4.2): when the greedy prediction after ``p ⊕ s_<i`` is ``s_i`` itself, the continuation from
    offset i is ``s_i`` followed by the one from i + 1, so only the offsets where the model leaves the secret are
    decoded (:func:`fabricunlearn.metrics.decoding.offset_continuations`); a memorized secret needs almost no
    decoding. The values are the same as with ``share_work=False``, which decodes every offset. ``sync``: equal
    forward passes on every rank (:mod:`fabricunlearn.metrics.decoding`). ``predictions``: the teacher-forced
    predictions when the caller has them (:func:`secret_scores`).
    """
    if not ns or any(n < 1 for n in ns):
        raise ValueError(f"ns must be a non-empty list of n >= 1, got {list(ns)}")
    ns = sorted({int(n) for n in ns})
    secrets = [s[:max_secret_tokens] for s in enc.secret_ids]  # [:None] keeps all
    if not all(enc.prefix_ids):
        raise ValueError("every prefix needs at least one token (encode_secrets conditions an empty one on BOS)")
    # Offsets 0 … L − n for the smallest n (it scores the most); offset 0 alone serves L < n.
    spans = [(0, max(0, len(s) - ns[0])) if s else None for s in secrets]
    with eval_mode(model):
        conts = offset_continuations(
            model,
            enc.prefix_ids,
            secrets,
            spans,
            eos_ids=eos_list(eos_token_id),
            pad_token_id=pad_token_id,
            batch_size=batch_size,
            share_work=share_work,
            sync=sync,
            predictions=predictions,
        )
    return {n: torch.tensor([_el(s, c, n) for s, c in zip(secrets, conts)], dtype=torch.float64) for n in ns}


@torch.no_grad()
def secret_scores(
    model,
    enc: EncodedSecrets,
    ns: Sequence[int] = (),
    *,
    pad_token_id: int,
    eos_token_id: int | Sequence[int] | None,
    batch_size: int = 64,
    max_secret_tokens: int | None = None,
    sync: Sync | None = None,
) -> dict[str, torch.Tensor]:
    """``{"ma": …, "el<n>": …}`` for every n in ``ns`` (empty: MA only), the same values as :func:`secret_ma` and
    :func:`secret_el`, with the teacher-forced pass run once for both."""
    secrets = [s[:max_secret_tokens] for s in enc.secret_ids]
    with eval_mode(model):
        preds = next_token_predictions(model, enc.prefix_ids, secrets, pad_token_id, batch_size, sync)
    ma = [sum(p == t for p, t in zip(pr, s)) / len(s) if s else math.nan for pr, s in zip(preds, secrets)]
    out = {"ma": torch.tensor(ma, dtype=torch.float64)}
    if ns:
        els = secret_el(
            model,
            enc,
            ns,
            pad_token_id=pad_token_id,
            eos_token_id=eos_token_id,
            batch_size=batch_size,
            max_secret_tokens=max_secret_tokens,
            sync=sync,
            predictions=preds,
        )
        out.update({f"el{n}": v for n, v in els.items()})
    return out
