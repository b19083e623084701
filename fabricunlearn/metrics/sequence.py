"""Sequence-level memorization metrics: MA and EL_n of whole token sequences.

Used for the memorization thresholds on unseen code and for retain sets (reference codeeraser-sscu.md §1.2, §1.3, §6;
icu-and-pretrained-llm-unlearning.md A and B.5). A sequence ``x = x_0 … x_{T-1}`` is the first ``target_length``
(128) tokens of a text, tokenized with ``add_special_tokens=False`` (:func:`encode_sequences`); texts shorter than that
stay shorter: T is the number of *real* tokens.

**MA** (memorization accuracy): ``MA(x) = 1/(T-1) Σ_{t=1..T-1} 1[argmax_v P(v | x_<t) = x_t]``, NaN when T < 2.
The original runs T − 1 forward passes on ``x[:, :t]``; one teacher-forced pass gives the same predictions.

*Difference from the original:* it tokenized every text right-padded to T = 128 and never masked the labels, so for a
text shorter than 128 tokens the pad positions counted (predicting ``[PAD]`` after ``[PAD]`` scored a hit, and the
value depended on the padding). We score real tokens only. ``count_padding=True`` reproduces the original: the
sequence is cut / right-padded with ``pad_token_id`` to ``target_length`` and every position counts (the pads are fed
as ordinary tokens, as the original's mask-free forward passes did).

**EL_n** (extraction likelihood), for each offset t: ``c_t`` is the greedy continuation of ``x_<t`` (T − t tokens), the
label is ``x_{t:T}``, both have ``G_t = T − t − n + 1`` n-grams, and ``overlap_t`` is the fraction of the G_t predicted
n-grams (duplicates each count) that occur anywhere among the label's n-grams.

- ``window="ku"`` (KU / CodeEraser, the default): ``EL_n = Σ_{t=1..T-n} overlap_t / (T − n)``; NaN when T <= n.
- ``window="icu"`` (ICU, B.5): ``EL_n = Σ_{t=s..T-n} overlap_t / (T − s − n + 1)`` with ``s = icu_start`` (150). For
  ICU's T = 200 and n = 10 that is t = 150..190, 41 offsets, denominator 41, as ICU computes it. NaN when there is no
  offset (T − n < s). t indexes the *real* tokens from the start of the sequence: ICU left-pads its sequences to 200
  tokens and counts t in the padded row, so for a sequence shorter than 200 its window would start at an earlier real
  token; for full-length sequences (all of ICU's data) the two agree.

``overlap_t`` is unchanged between the windows; only the offsets summed and the denominator differ.

As for the secret-level metrics (``fabricunlearn.metrics.memorization``), a value does not depend on what shares its
batch: rows are left-padded with an attention mask and position ids from it. A continuation ends at EOS (the EOS token
is emitted, everything after it matches nothing); ``eos_token_id=None`` never ends one, which is exactly the original
(its manual argmax loop ignores EOS). The EL of the original counted pad positions of short texts too (pads in the
label and decoding continued over them); like MA by default, we score real tokens only, and there is no padding
option for EL.

Speed: MA costs one forward pass per batch. EL decodes rows ``(sequence, offset)`` with a KV cache, batched, each only
the T − t tokens its comparison needs, and shares work along the sequence (``share_work``,
:func:`fabricunlearn.metrics.decoding.offset_continuations`): only offsets where the model leaves the text are
decoded, so a memorized sequence needs almost no decoding, where the original makes ~T²/2 uncached forward passes per
sequence. The values are the same as with ``share_work=False``. ``sync`` makes every rank run the same number of
forward passes (:mod:`fabricunlearn.metrics.decoding`). Texts are cut to ``target_length`` tokens by
:func:`encode_sequences`; callers keep that within the model's context.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch

from fabricunlearn.metrics.decoding import (
    Sync,
    chunks,
    eos_list,
    eval_mode,
    next_token_predictions,
    offset_continuations,
)

# Sequences whose rows are collected and decoded together; bounds the memory held by prompts and continuations.
_GROUP = 256


def encode_sequences(tokenizer, texts: Sequence[str], target_length: int = 128) -> list[list[int]]:
    """The first ``target_length`` tokens of each text (``add_special_tokens=False``); shorter texts stay shorter."""
    if target_length < 1:
        raise ValueError(f"target_length must be >= 1, got {target_length}")
    if not texts:
        return []
    ids = tokenizer(list(texts), add_special_tokens=False, truncation=True, max_length=target_length)["input_ids"]
    return [list(s[:target_length]) for s in ids]


@torch.no_grad()
def sequence_ma(
    model,
    seqs: Sequence[Sequence[int]],
    *,
    pad_token_id: int,
    batch_size: int = 32,
    count_padding: bool = False,
    target_length: int = 128,
    sync: Sync | None = None,
) -> torch.Tensor:
    """MA per sequence, a float64 tensor ``[len(seqs)]`` on CPU (NaN for fewer than 2 tokens).

    ``count_padding=True`` reproduces the original's value (see the module docstring): each sequence is cut or
    right-padded with ``pad_token_id`` to ``target_length`` tokens and all ``target_length − 1`` positions count.
    ``target_length`` is used only then.
    """
    if count_padding:
        seqs = [list(s[:target_length]) + [pad_token_id] * (target_length - len(s)) for s in seqs]
    else:
        seqs = [list(s) for s in seqs]
    scored = [k for k, s in enumerate(seqs) if len(s) >= 2]
    with eval_mode(model):
        preds = next_token_predictions(
            model, [seqs[k][:1] for k in scored], [seqs[k][1:] for k in scored], pad_token_id, batch_size, sync
        )
    values = [math.nan] * len(seqs)
    for k, pred in zip(scored, preds):
        values[k] = sum(p == t for p, t in zip(pred, seqs[k][1:])) / (len(seqs[k]) - 1)
    return torch.tensor(values, dtype=torch.float64)


def _window(length: int, n: int, window: str, icu_start: int) -> tuple[int, int]:
    """Offsets ``first..last`` that EL_n sums over; their number is the denominator (KU T − n, ICU T − s − n + 1)."""
    return (1 if window == "ku" else icu_start), length - n


def _el(seq: list[int], conts: dict[int, list[int]], n: int, first: int, last: int) -> float:
    """EL_n from the continuations ``conts[t]`` (T − t tokens), summed over offsets ``first..last``."""
    if last < first:
        return math.nan
    length = len(seq)
    grams = [tuple(seq[p : p + n]) for p in range(length - n + 1)]
    overlaps = [0.0] * (last + 1)
    labels: set[tuple[int, ...]] = set()
    for t in range(last, first - 1, -1):  # the label n-grams of x_{t:T} are grams[t:], so the set grows backwards
        labels.add(grams[t])
        g = length - t - n + 1
        pred = conts[t]
        overlaps[t] = sum(tuple(pred[j : j + n]) in labels for j in range(g)) / g
    return sum(overlaps[first:]) / (last - first + 1)  # summed over increasing t, as the original does


@torch.no_grad()
def sequence_el(
    model,
    seqs: Sequence[Sequence[int]],
    ns: Sequence[int] = (10,),
    *,
    pad_token_id: int,
    eos_token_id: int | Sequence[int] | None,
    batch_size: int = 32,
    window: Literal["ku", "icu"] = "ku",
    icu_start: int = 150,
    share_work: bool = True,
    sync: Sync | None = None,
) -> dict[int, torch.Tensor]:
    """EL_n for every n in ``ns``: ``{n: float64 tensor [len(seqs)]}`` on CPU (NaN when no offset is scored).

    All n share the same continuations (the one from offset t does not depend on n). ``eos_token_id`` ends a row (a
    sequence of ids is accepted); ``None`` never ends one. ``share_work`` only changes the speed (module docstring).
    """
    if not ns or any(int(n) < 1 for n in ns):
        raise ValueError(f"ns must be a non-empty list of n >= 1, got {list(ns)}")
    if window not in ("ku", "icu"):
        raise ValueError(f"window must be 'ku' or 'icu', got {window!r}")
    if window == "icu" and icu_start < 1:
        raise ValueError(f"icu_start must be >= 1 (an offset needs a prompt), got {icu_start}")
    ns = sorted({int(n) for n in ns})
    eos_ids = eos_list(eos_token_id)
    seqs = [list(s) for s in seqs]
    values = {n: [math.nan] * len(seqs) for n in ns}
    groups = list(chunks(list(range(len(seqs))), _GROUP))
    n_groups = sync(len(groups)) if sync else len(groups)
    with eval_mode(model):
        for g in range(n_groups):
            group = groups[g] if g < len(groups) else []  # a rank without this group still joins its passes
            spans = []  # the offsets scored for the smallest n (it scores the most)
            for k in group:
                first, last = _window(len(seqs[k]), ns[0], window, icu_start)
                spans.append((first, last) if first <= last else None)
            conts = offset_continuations(
                model,
                [[] for _ in group],
                [seqs[k] for k in group],
                spans,
                eos_ids=eos_ids,
                pad_token_id=pad_token_id,
                batch_size=batch_size,
                share_work=share_work,
                sync=sync,
            )
            for k, cont in zip(group, conts):
                for n in ns:
                    values[n][k] = _el(seqs[k], cont, n, *_window(len(seqs[k]), n, window, icu_start))
    return {n: torch.tensor(v, dtype=torch.float64) for n, v in values.items()}
