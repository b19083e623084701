"""The forward passes behind every memorization metric: teacher-forced next-token predictions, batched KV-cached
greedy decoding, and the continuation from every offset of a token sequence with work shared along it.

Values never depend on what shares a batch: prompts are left-padded with an attention mask and position ids
``cumsum(mask) − 1``, as HF ``generate`` computes them, so padding is invisible to real tokens. Greedy decoding is
``torch.argmax`` (the first maximal index on ties, as HF greedy search). A continuation ends at EOS: the EOS token is
kept, everything after it is ``NO_TOKEN``, which matches nothing.

**Equal passes on every rank.** Under FSDP (and DeepSpeed ZeRO-3) a forward pass is a collective: each rank gathers
the parameters from the others, so ranks that run different numbers of passes deadlock. Ranks score different shards,
need different numbers of batches and decode for different numbers of steps. Given ``sync`` (a function returning
the maximum of an integer over all ranks), every function here runs as many passes as the busiest rank: a rank with
fewer batches runs one-token stand-in passes, and a decoding batch keeps stepping until every rank's batch is done.
The stand-ins' outputs are dropped, so values are unchanged.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from functools import cache

import torch

from fabricunlearn.models import context_length

# Fills a continuation after EOS: token ids are >= 0, so no n-gram containing it matches a secret n-gram.
NO_TOKEN = -1

Sync = Callable[[int], int]
"""``sync(x)`` = the maximum of ``x`` over all ranks (a collective every rank calls at the same point)."""


@contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[None]:
    """Eval mode inside, and afterwards every submodule's own flag back (a frozen part stays in eval)."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


def left_pad(seqs: Sequence[Sequence[int]], pad_token_id: int, device: torch.device) -> tuple[torch.Tensor, ...]:
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


def chunks(order: list[int], size: int) -> Iterator[list[int]]:
    for start in range(0, len(order), size):
        yield order[start : start + size]


def _device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


@cache
def _forward_takes_logits_to_keep(cls: type) -> bool:
    return "logits_to_keep" in inspect.signature(cls.forward).parameters


def _logits_kwargs(model: torch.nn.Module, keep: int) -> dict:
    """``logits_to_keep=keep`` where the model takes it: the output layer then runs on the last ``keep`` positions
    only (for a 152k vocabulary the full logits of a 64 × 160 batch would be 6 GB). Looks through wrappers."""
    from transformers import PreTrainedModel

    inner = model
    for _ in range(5):  # Fabric's wrapper, DDP, peft, ...
        if isinstance(inner, PreTrainedModel):
            return {"logits_to_keep": keep} if _forward_takes_logits_to_keep(type(inner)) else {}
        if hasattr(inner, "get_base_model"):  # peft passes keyword arguments on to the base model's forward
            inner = inner.get_base_model()
            continue
        inner = getattr(inner, "module", None)
    return {}


def _stand_in_pass(model: torch.nn.Module, pad_token_id: int) -> None:
    """One pass on one token, so that this rank joins a collective forward whose batch it does not have."""
    ids = torch.full((1, 1), pad_token_id, dtype=torch.long, device=_device(model))
    model(input_ids=ids, attention_mask=torch.ones_like(ids), position_ids=torch.zeros_like(ids), use_cache=False)


def next_token_predictions(
    model,
    prefixes: Sequence[list[int]],
    targets: Sequence[list[int]],
    pad_token_id: int,
    batch_size: int,
    sync: Sync | None = None,
) -> list[list[int]]:
    """preds[k][i] = greedy next token after ``prefixes[k] ⊕ targets[k][:i]``, for i < len(targets[k]): one
    teacher-forced pass per batch."""
    if not all(prefixes):
        raise ValueError("every prefix needs at least one token (encode_secrets conditions an empty one on BOS)")
    device = _device(model)
    preds: list[list[int]] = [[] for _ in targets]
    # Sorting by length only reduces padding; values do not depend on batch composition.
    order = sorted((k for k in range(len(targets)) if targets[k]), key=lambda k: len(prefixes[k]) + len(targets[k]))
    batches = list(chunks(order, batch_size))
    n_batches = sync(len(batches)) if sync else len(batches)
    for b in range(n_batches):
        if b >= len(batches):
            _stand_in_pass(model, pad_token_id)
            continue
        batch = batches[b]
        ids, mask, pos = left_pad([prefixes[k] + targets[k] for k in batch], pad_token_id, device)
        # With left padding every target ends at the last column; t_i is predicted from the column before it.
        width = max(len(targets[k]) for k in batch)
        keep = _logits_kwargs(model, width + 1)
        logits = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False, **keep).logits
        argmax = logits[:, -width - 1 : -1].argmax(-1).cpu()
        for row, k in enumerate(batch):
            preds[k] = argmax[row, width - len(targets[k]) :].tolist()
    return preds


def greedy_continuations(
    model,
    prompts: Sequence[list[int]],
    n_new: Sequence[int],
    eos_ids: Sequence[int],
    pad_token_id: int,
    batch_size: int,
    sync: Sync | None = None,
) -> list[list[int]]:
    """Greedy-decode ``n_new[r]`` tokens after ``prompts[r]`` with a KV cache; after EOS a row holds ``NO_TOKEN``.

    A batch steps until its longest row is done (or every row has ended), and with ``sync`` until every rank's batch
    is: rows that are done keep being fed and their outputs are dropped. Their position ids are held at the model's
    last position, so a model with learned positions never indexes past its table.
    """
    device = _device(model)
    eos = torch.tensor(list(eos_ids), dtype=torch.long, device=device)
    limit = context_length(model)
    out: list[list[int]] = [[] for _ in prompts]
    # Rows of a batch then need similar numbers of steps and similar prompt lengths.
    order = sorted((r for r in range(len(prompts)) if n_new[r] > 0), key=lambda r: (-n_new[r], -len(prompts[r])))
    batches = list(chunks(order, batch_size))
    n_batches = sync(len(batches)) if sync else len(batches)
    for b in range(n_batches):
        batch = batches[b] if b < len(batches) else []
        # A rank without this batch feeds a one-token stand-in that wants nothing.
        ids, mask, pos = left_pad([prompts[r] for r in batch] or [[pad_token_id]], pad_token_id, device)
        want = torch.tensor([n_new[r] for r in batch] or [0], device=device)
        steps = int(want.max())
        gen = torch.full((len(want), max(steps, 1)), NO_TOKEN, dtype=torch.long, device=device)
        ended = torch.zeros(len(want), dtype=torch.bool, device=device)
        past, t, keep = None, 0, _logits_kwargs(model, 1)
        while True:
            output = model(
                input_ids=ids, attention_mask=mask, position_ids=pos, past_key_values=past, use_cache=True, **keep
            )
            past = output.past_key_values
            tok = output.logits[:, -1].argmax(-1)
            if t < steps:
                gen[:, t] = torch.where(ended, NO_TOKEN, tok)  # the EOS token itself is kept, what follows is not
            ended |= torch.isin(tok, eos)
            t += 1
            more = int(t < steps and not bool((ended | (want <= t)).all()))
            if not (sync(more) if sync else more):
                break
            ids, pos = tok[:, None], pos[:, -1:] + 1
            if limit is not None:
                pos = pos.clamp(max=limit - 1)  # only rows whose output is no longer used get this far
            mask = torch.cat([mask, mask.new_ones((len(want), 1))], dim=-1)
        gen = gen.cpu()
        for row, r in enumerate(batch):
            out[r] = gen[row, : n_new[r]].tolist()
    return out


def offset_continuations(
    model,
    bases: Sequence[list[int]],
    tokens: Sequence[list[int]],
    spans: Sequence[tuple[int, int] | None],
    *,
    eos_ids: Sequence[int],
    pad_token_id: int,
    batch_size: int,
    share_work: bool = True,
    sync: Sync | None = None,
    predictions: Sequence[list[int]] | None = None,
) -> list[dict[int, list[int]]]:
    """``conts[k][t]`` = the greedy continuation of ``bases[k] ⊕ tokens[k][:t]``, ``len(tokens[k]) − t`` tokens long,
    for every offset t in ``spans[k] = (first, last)`` (None: no offset).

    Secrets use ``bases = prefixes`` and ``first = 0``; whole sequences use empty bases and ``first >= 1``.

    ``share_work``: greedy decoding is deterministic, so when the prediction after the prompt of offset t is
    ``tokens[t]`` itself (and not EOS), decoding from t feeds exactly the prompt of offset t + 1 next, hence
    ``c_t = tokens[t] ⊕ c_{t+1}``. The predictions come from one teacher-forced pass, and only the offsets where the
    model leaves the sequence are decoded: a memorized one needs almost no decoding. Values are the same without it.
    ``predictions[k]`` (optional): the teacher-forced predictions after ``bases[k] ⊕ tokens[k][:t]`` for every t >= 0
    when the caller already has them (MA computes the same pass); otherwise they are computed here.
    """
    live = [k for k, span in enumerate(spans) if span is not None]
    if share_work and predictions is not None:
        predicted = [list(predictions[k][spans[k][0] :]) for k in live]
    elif share_work:
        predicted = next_token_predictions(
            model,
            [bases[k] + tokens[k][: spans[k][0]] for k in live],
            [tokens[k][spans[k][0] :] for k in live],
            pad_token_id,
            batch_size,
            sync,
        )
    else:
        predicted = [[None] * (len(tokens[k]) - spans[k][0]) for k in live]  # matches no token: nothing is shared
    rows: list[tuple[int, int]] = []  # (item, offset) pairs to decode
    plans: dict[int, tuple[list[bool], list[bool]]] = {}
    for k, preds in zip(live, predicted):
        seq, (first, last) = tokens[k], spans[k]
        # After an EOS the decoding stops, so c_t = x_t ⊕ c_{t+1} would be wrong when x_t is an EOS id.
        share = [False] * first + [p == x and x not in eos_ids for p, x in zip(preds, seq[first:])]
        need = [False] * len(seq)
        for t in range(first, len(seq)):
            # Offsets beyond `last` are needed only to finish a shared continuation that starts before them.
            need[t] = t <= last or (need[t - 1] and share[t - 1])
        rows += [(k, t) for t in range(first, len(seq)) if need[t] and not share[t]]
        plans[k] = (share, need)
    decoded = greedy_continuations(
        model,
        [bases[k] + tokens[k][:t] for k, t in rows],
        [len(tokens[k]) - t for k, t in rows],
        eos_ids,
        pad_token_id,
        batch_size,
        sync,
    )
    conts: list[dict[int, list[int]]] = [{} for _ in tokens]
    for (k, t), c in zip(rows, decoded):
        conts[k][t] = c
    for k, (share, need) in plans.items():
        seq = tokens[k]
        for t in range(len(seq) - 1, -1, -1):  # from the end, so c_{t+1} exists when c_t is built from it
            if need[t] and share[t]:
                conts[k][t] = [seq[t]] + conts[k].get(t + 1, [])
    return conts


def eos_list(eos_token_id: int | Sequence[int] | None) -> list[int]:
    """EOS ids as a list (a model may have several; None: nothing ends a continuation)."""
    if eos_token_id is None:
        return []
    return [int(e) for e in eos_token_id] if isinstance(eos_token_id, Sequence) else [int(eos_token_id)]
