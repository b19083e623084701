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
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch

# Fills a continuation after EOS: token ids are >= 0, so no n-gram containing it matches a secret n-gram.
_NO_TOKEN = -1


@dataclass
class EncodedSecrets:
    """Token ids of every secret of some scan rows, flattened in row order (see the module docstring)."""

    prefix_ids: list[list[int]]
    secret_ids: list[list[int]]
    doc_index: list[int]
    secret_index: list[int]

    def __len__(self) -> int:
        return len(self.secret_ids)

    def subset(self, indices: Sequence[int]) -> EncodedSecrets:
        return EncodedSecrets(
            prefix_ids=[self.prefix_ids[k] for k in indices],
            secret_ids=[self.secret_ids[k] for k in indices],
            doc_index=[self.doc_index[k] for k in indices],
            secret_index=[self.secret_index[k] for k in indices],
        )


def encode_secrets(
    tokenizer, rows: Sequence[dict], max_secret_tokens: int = 32, max_prefix_tokens: int = 128
) -> EncodedSecrets:
    """Tokenize the secrets of scan rows ``{"doc_id", "text", "secrets": [{"value", "start", ...}]}``."""
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
        return EncodedSecrets([], [], [], [])
    # One batched call each; cutting afterwards equals the original's (left) truncation of a fast tokenizer.
    prefix_ids = tokenizer(prefixes, add_special_tokens=False)["input_ids"]
    secret_ids = tokenizer(values, add_special_tokens=False)["input_ids"]
    return EncodedSecrets(
        prefix_ids=[list(p[max(0, len(p) - max_prefix_tokens) :]) or [bos] for p in prefix_ids],
        secret_ids=[list(s[:max_secret_tokens]) for s in secret_ids],
        doc_index=doc_index,
        secret_index=secret_index,
    )


@contextmanager
def _eval_mode(model: torch.nn.Module) -> Iterator[None]:
    # Restore every submodule's own flag: a frozen submodule kept in eval must not be switched to train afterwards.
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


def _left_pad(seqs: Sequence[Sequence[int]], pad_token_id: int, device: torch.device) -> tuple[torch.Tensor, ...]:
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for b, s in enumerate(seqs):
        if s:
            ids[b, width - len(s) :] = torch.tensor(s, dtype=torch.long)
            mask[b, width - len(s) :] = 1
    # Real tokens get positions 0, 1, … whatever the padding, as HF generate computes them.
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    return ids.to(device), mask.to(device), pos.to(device)


def _chunks(order: list[int], size: int) -> Iterator[list[int]]:
    for start in range(0, len(order), size):
        yield order[start : start + size]


def _next_token_predictions(
    model, prefixes: Sequence[list[int]], secrets: Sequence[list[int]], pad_token_id: int, batch_size: int
) -> list[list[int]]:
    """preds[k][i] = greedy next token after p_k ⊕ s_k[:i], for i < L_k: one teacher-forced pass per batch."""
    if not all(prefixes):
        raise ValueError("every prefix needs at least one token (encode_secrets conditions an empty one on BOS)")
    device = next(model.parameters()).device
    preds: list[list[int]] = [[] for _ in secrets]
    # Sorting by length only reduces padding; values do not depend on batch composition.
    order = sorted((k for k in range(len(secrets)) if secrets[k]), key=lambda k: len(prefixes[k]) + len(secrets[k]))
    for chunk in _chunks(order, batch_size):
        ids, mask, pos = _left_pad([prefixes[k] + secrets[k] for k in chunk], pad_token_id, device)
        logits = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False).logits
        # With left padding every secret ends at the last column; s_i is predicted from the column before it.
        width = max(len(secrets[k]) for k in chunk)
        argmax = logits[:, -width - 1 : -1].argmax(-1).cpu()
        for b, k in enumerate(chunk):
            preds[k] = argmax[b, width - len(secrets[k]) :].tolist()
    return preds


@torch.no_grad()
def secret_ma(model, enc: EncodedSecrets, *, pad_token_id: int, batch_size: int = 64) -> torch.Tensor:
    """Secret MA per secret, a float64 tensor ``[len(enc)]`` on CPU (NaN for an empty secret).

    One teacher-forced forward pass over ``p ⊕ s`` per batch gives every next-token prediction at once, where the
    original makes 32 one-token ``generate`` calls; with the padding masked the predictions are the same.
    """
    with _eval_mode(model):
        preds = _next_token_predictions(model, enc.prefix_ids, enc.secret_ids, pad_token_id, batch_size)
    values = [sum(p == t for p, t in zip(pr, s)) / len(s) if s else math.nan for pr, s in zip(preds, enc.secret_ids)]
    return torch.tensor(values, dtype=torch.float64)


def _greedy_continuations(
    model,
    prompts: Sequence[list[int]],
    n_new: Sequence[int],
    eos_ids: Sequence[int],
    pad_token_id: int,
    batch_size: int,
) -> list[list[int]]:
    """Greedy-decode ``n_new[r]`` tokens after ``prompts[r]`` with a KV cache; after EOS a row holds ``_NO_TOKEN``."""
    device = next(model.parameters()).device
    eos = torch.tensor(list(eos_ids), dtype=torch.long, device=device)
    out: list[list[int]] = [[] for _ in prompts]
    # Rows of a batch then need similar numbers of steps and similar prompt lengths.
    order = sorted((r for r in range(len(prompts)) if n_new[r] > 0), key=lambda r: (-n_new[r], -len(prompts[r])))
    for chunk in _chunks(order, batch_size):
        ids, mask, pos = _left_pad([prompts[r] for r in chunk], pad_token_id, device)
        want = torch.tensor([n_new[r] for r in chunk], device=device)
        steps = int(want.max())
        gen = torch.full((len(chunk), steps), _NO_TOKEN, dtype=torch.long, device=device)
        ended = torch.zeros(len(chunk), dtype=torch.bool, device=device)
        past = None
        for t in range(steps):
            output = model(input_ids=ids, attention_mask=mask, position_ids=pos, past_key_values=past, use_cache=True)
            past = output.past_key_values
            tok = output.logits[:, -1].argmax(-1)
            gen[:, t] = torch.where(ended, _NO_TOKEN, tok)  # the EOS token itself is kept, what follows is not
            ended |= torch.isin(tok, eos)
            if t + 1 == steps or bool((ended | (want <= t + 1)).all()):
                break  # stop as soon as no row of the batch still needs a token
            # Finished rows keep being fed (their outputs are ignored); the mask grows by one real token per step.
            ids, pos = tok[:, None], pos[:, -1:] + 1
            mask = torch.cat([mask, mask.new_ones((len(chunk), 1))], dim=-1)
        gen = gen.cpu()
        for b, r in enumerate(chunk):
            out[r] = gen[b, : n_new[r]].tolist()
    return out


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
    max_secret_tokens: int = 32,
    share_work: bool = True,
) -> dict[int, torch.Tensor]:
    """Secret EL_n for every n in ``ns``: ``{n: float64 tensor [len(enc)]}`` on CPU (NaN for an empty secret).

    Secrets are cut to ``max_secret_tokens`` (S in the reference). All n are scored from the same continuations: the
    one from offset i does not depend on n, and offset 0 also serves the ``L < n`` case. ``eos_token_id`` ends a row
    (a sequence of ids is accepted for models with several); ``None`` never ends one.

    ``share_work`` (§1.4.2): greedy decoding is deterministic, so when the greedy prediction after ``p ⊕ s_<i`` is
    ``s_i`` itself (and not EOS), decoding from offset i feeds exactly the prompt of offset i + 1 next, hence
    ``c_i = s_i ⊕ c_{i+1}``. The next-token predictions come from one teacher-forced pass (the MA pass), so only the
    offsets where the model leaves the secret are decoded; a memorized secret needs almost no decoding. The values
    are the same as with ``share_work=False``, which decodes every offset.
    """
    if not ns or any(n < 1 for n in ns):
        raise ValueError(f"ns must be a non-empty list of n >= 1, got {list(ns)}")
    ns = sorted({int(n) for n in ns})
    if eos_token_id is None:
        eos_ids = []
    else:
        eos_ids = [int(e) for e in eos_token_id] if isinstance(eos_token_id, Sequence) else [int(eos_token_id)]
    secrets = [s[:max_secret_tokens] for s in enc.secret_ids]
    if not all(enc.prefix_ids):
        raise ValueError("every prefix needs at least one token (encode_secrets conditions an empty one on BOS)")
    with _eval_mode(model):
        if share_work:
            preds = _next_token_predictions(model, enc.prefix_ids, secrets, pad_token_id, batch_size)
        else:
            preds = [[None] * len(s) for s in secrets]  # matches no token: nothing is shared
        rows: list[tuple[int, int]] = []  # (secret, offset) pairs to decode
        shared: list[list[bool]] = []
        needed: list[list[bool]] = []
        for k, s in enumerate(secrets):
            last = max(0, len(s) - ns[0])  # the largest offset any n scores; offset 0 also serves L < n
            # After an EOS the decoding stops, so c_i = s_i ⊕ c_{i+1} would be wrong when s_i is an EOS id.
            share = [p == t and t not in eos_ids for p, t in zip(preds[k], s)]
            need = [False] * len(s)
            for i in range(len(s)):
                # Offsets beyond `last` are needed only to finish a shared continuation that starts before them.
                need[i] = i <= last or (need[i - 1] and share[i - 1])
            rows += [(k, i) for i in range(len(s)) if need[i] and not share[i]]
            shared.append(share)
            needed.append(need)
        decoded = _greedy_continuations(
            model,
            [enc.prefix_ids[k] + secrets[k][:i] for k, i in rows],
            [len(secrets[k]) - i for k, i in rows],
            eos_ids,
            pad_token_id,
            batch_size,
        )
    conts: list[dict[int, list[int]]] = [{} for _ in secrets]
    for (k, i), c in zip(rows, decoded):
        conts[k][i] = c
    for k, s in enumerate(secrets):
        for i in range(len(s) - 1, -1, -1):  # from the end, so c_{i+1} exists when c_i is built from it
            if needed[k][i] and shared[k][i]:
                conts[k][i] = [s[i]] + conts[k].get(i + 1, [])
    return {n: torch.tensor([_el(s, c, n) for s, c in zip(secrets, conts)], dtype=torch.float64) for n in ns}
