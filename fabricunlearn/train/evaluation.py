"""Evaluation inside a Fabric run: each rank scores its shard of the secrets, the results are gathered."""

from __future__ import annotations

import math
from contextlib import nullcontext

import torch

from fabricunlearn.data.batches import TokenizedSet, collate
from fabricunlearn.metrics.aggregate import Aggregation, aggregate
from fabricunlearn.metrics.memorization import EncodedSecrets, secret_scores


def eval_module(fabric, model: torch.nn.Module) -> torch.nn.Module:
    """The module to evaluate with. Under DDP, the plain inner module: DDP's forward broadcasts buffers, a
    collective that would deadlock when ranks decode different numbers of steps. Sharded strategies need the
    wrapper (their forward gathers the parameters)."""
    from lightning.fabric.strategies import DDPStrategy, SingleDeviceStrategy

    if isinstance(fabric.strategy, DDPStrategy | SingleDeviceStrategy):
        return model.module if hasattr(model, "module") else model
    return model


def rank_sync(fabric):
    """``sync(x)`` = max of ``x`` over ranks, so that every rank runs the same forward passes (None on one process,
    where nothing needs it). Also used under DDP, where evaluation runs on the inner module and would not need it:
    one code path for all strategies, at the cost of one small all-reduce per decoding step."""
    if fabric.world_size == 1:
        return None

    def sync(x: int) -> int:
        return int(fabric.all_reduce(torch.tensor(x, device=fabric.device), reduce_op="max").item())

    return sync


def _shard(n: int, fabric) -> list[int]:
    """This rank's indices, padded to the same count on every rank (padding repeats index 0 and is dropped later)."""
    per_rank = math.ceil(n / fabric.world_size)
    local = list(range(fabric.global_rank, n, fabric.world_size))
    return local + [0] * (per_rank - len(local))


def _gather(fabric, local: torch.Tensor, n: int) -> torch.Tensor:
    if fabric.world_size == 1:
        return local[:n].cpu()
    gathered = fabric.all_gather(local.to(fabric.device)).cpu()  # [world, per_rank]
    order = gathered.T.reshape(-1)  # rank r's k-th entry is global index k * world + r
    return order[:n]


@torch.no_grad()
def evaluate_secrets(
    fabric, model, enc: EncodedSecrets, *, ns: list[int], pad_token_id: int, eos_token_id: int | None, batch_size: int
) -> dict[str, torch.Tensor]:
    """Per-secret MA and EL_n for every n in `ns` (empty: MA only), on all ranks."""
    if len(enc) == 0:
        return {"ma": torch.empty(0), **{f"el{n}": torch.empty(0) for n in ns}}
    local = enc.subset(_shard(len(enc), fabric))
    module = eval_module(fabric, model)
    with fabric.autocast() if module is not model else nullcontext():
        out = secret_scores(
            module,
            local,
            ns,
            pad_token_id=pad_token_id,
            eos_token_id=eos_token_id,
            batch_size=batch_size,
            sync=rank_sync(fabric),
        )
    return {k: _gather(fabric, v.double(), len(enc)) for k, v in out.items()}


@torch.no_grad()
def perplexity(fabric, model, data: TokenizedSet, *, pad_token_id: int, batch_size: int) -> float:
    """exp of the mean token NLL over all documents (token-weighted, not a mean of per-batch perplexities)."""
    if len(data) == 0:
        return float("nan")
    module = eval_module(fabric, model)
    was_training = module.training
    module.eval()
    indices = _shard(len(data), fabric)
    n_local = len(range(fabric.global_rank, len(data), fabric.world_size))
    real = [k < n_local for k in range(len(indices))]
    total = torch.zeros(2, dtype=torch.float64, device=fabric.device)
    for start in range(0, len(indices), batch_size):
        chunk = indices[start : start + batch_size]
        weights = torch.tensor(real[start : start + batch_size], dtype=torch.float64, device=fabric.device)
        batch = fabric.to_device(collate(data, chunk, pad_token_id))
        with fabric.autocast() if module is not model else nullcontext():
            logits = module(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        targets = batch["labels"][:, 1:]
        nll = torch.nn.functional.cross_entropy(
            logits[:, :-1].float().flatten(0, 1), targets.flatten(), ignore_index=-100, reduction="none"
        ).view_as(targets)
        total[0] += (nll.double().sum(1) * weights).sum()
        total[1] += ((targets != -100).double().sum(1) * weights).sum()
    module.train(was_training)
    if fabric.world_size > 1:
        total = fabric.all_reduce(total, reduce_op="sum")
    return math.exp(total[0].item() / max(total[1].item(), 1.0))


def summarize(
    values: dict[str, torch.Tensor],
    enc: EncodedSecrets,
    prefix: str,
    *,
    how: Aggregation = "per_secret",
    batch_docs: int = 8,
    world_size: int = 1,
) -> dict[str, float]:
    """``{prefix}/{metric}`` and ``{prefix}/{metric}_max`` for every metric (see :mod:`fabricunlearn.metrics.aggregate`:
    mean and max over secrets, or the original's mean of per-batch means)."""
    out: dict[str, float] = {}
    for key, v in values.items():
        mean, top = aggregate(v, enc.doc_index, how, n_docs=enc.n_docs, batch_docs=batch_docs, world_size=world_size)
        out[f"{prefix}/{key}"] = mean
        out[f"{prefix}/{key}_max"] = top
    return out


@torch.no_grad()
def evaluate_sequences(
    fabric, model, seqs: list[list[int]], *, ns: list[int], pad_token_id: int, eos_token_id: int | None, batch_size: int
) -> dict[str, torch.Tensor]:
    """Per-sequence MA and EL_n (`fabricunlearn.metrics.sequence`: a retain set's own memorization), on all ranks."""
    from fabricunlearn.metrics.sequence import sequence_el, sequence_ma

    if not seqs:
        return {"ma": torch.empty(0), **{f"el{n}": torch.empty(0) for n in ns}}
    local = [seqs[i] for i in _shard(len(seqs), fabric)]
    module = eval_module(fabric, model)
    sync = rank_sync(fabric)
    with fabric.autocast() if module is not model else nullcontext():
        out = {"ma": sequence_ma(module, local, pad_token_id=pad_token_id, batch_size=batch_size, sync=sync)}
        if ns:
            ids = dict(pad_token_id=pad_token_id, eos_token_id=eos_token_id)
            el = sequence_el(module, local, ns, **ids, batch_size=batch_size, sync=sync)
            out.update({f"el{n}": v for n, v in el.items()})
    return {k: _gather(fabric, v, len(seqs)) for k, v in out.items()}


def summarize_sequences(values: dict[str, torch.Tensor], prefix: str) -> dict[str, float]:
    """``{prefix}/{metric}``: the mean over sequences that have a value (a 1-token text has no MA)."""
    out = {}
    for key, v in values.items():
        v = v[~v.isnan()]
        out[f"{prefix}/{key}"] = float(v.mean()) if len(v) else math.nan
    return out


@torch.no_grad()
def membership_scores(
    fabric, model, data: TokenizedSet, tokenizer, *, pad_token_id: int, batch_size: int, k: float
) -> dict[str, list[float]]:
    """The membership-inference scores (`fabricunlearn.metrics.mia`) of every document, on all ranks. A document's
    text for zlib is its scored tokens decoded, so a document cut to `data.max_length` is scored as it was cut."""
    from fabricunlearn.metrics.mia import SCORES, mia_scores, token_statistics

    if len(data) == 0:
        return {name: [] for name in SCORES}
    indices = _shard(len(data), fabric)
    module = eval_module(fabric, model)
    docs = [data.input_ids[i] for i in indices]
    with fabric.autocast() if module is not model else nullcontext():
        stats = token_statistics(module, docs, pad_token_id, batch_size)
    rows = [mia_scores(s, tokenizer.decode(d, skip_special_tokens=True), k) for s, d in zip(stats, docs)]
    local = torch.tensor([[row[name] for name in SCORES] for row in rows], dtype=torch.float64)
    return {name: _gather(fabric, local[:, j].contiguous(), len(data)).tolist() for j, name in enumerate(SCORES)}


def mia_aucs(members: dict[str, list[float]], non_members: dict[str, list[float]]) -> dict[str, float]:
    """AUC of telling members from non-members by each score (documents without a score are left out)."""
    from fabricunlearn.metrics.mia import auc

    out: dict[str, float] = {}
    for name in members:
        m = [x for x in members[name] if math.isfinite(x)]
        n = [x for x in non_members[name] if math.isfinite(x)]
        out[name] = auc(m, n, name) if m and n else math.nan
    return out


def validate(fabric, model, rd, run, *, epoch: int | None, with_el: bool, full: bool) -> dict:
    """One evaluation row: forget-set MA (and EL_n when the stopping rule needs it); kept-secret MA and retain-set MA
    (when asked for every epoch); with `full`, every EL_n of all three, per-secret MA, the unseen perplexity and the
    membership-inference AUCs of the forget set against the unseen set. Sets that are None are left out."""
    ev = run.eval
    kwargs = dict(pad_token_id=rd.pad_token_id, eos_token_id=rd.eos_token_id, batch_size=ev.batch_size)
    ns = sorted(set(ev.el_ns) | {run.stop.el_n}) if full else ([run.stop.el_n] if with_el else [])
    row: dict = {"epoch": epoch}
    how = dict(how=ev.aggregate, batch_docs=ev.aggregate_batch_docs, world_size=fabric.world_size)
    if rd.forget_secrets is not None:
        forget = evaluate_secrets(fabric, model, rd.forget_secrets, ns=ns, **kwargs)
        row.update(summarize(forget, rd.forget_secrets, "forget", **how))
        if full:
            row["per_secret_ma"] = forget["ma"].tolist()
    if rd.kept_secrets is not None and (full or ev.kept_every_epoch):
        kept = evaluate_secrets(fabric, model, rd.kept_secrets, ns=ns if full else [], **kwargs)
        row.update(summarize(kept, rd.kept_secrets, "kept", **how))
        if full:
            row["per_secret_kept_ma"] = kept["ma"].tolist()
    if rd.retain_sequences is not None and (full or ev.retain_every_epoch):
        retain_ns = ns if full and ev.retain_el else []
        retain = evaluate_sequences(fabric, model, rd.retain_sequences, ns=retain_ns, **kwargs)
        row.update(summarize_sequences(retain, "retain"))
    if full and rd.unseen is not None and len(rd.unseen):
        small = ev.document_batch_size
        row["unseen/perplexity"] = perplexity(fabric, model, rd.unseen, pad_token_id=rd.pad_token_id, batch_size=small)
        if rd.forget is not None and len(rd.forget):  # can the forget set still be told from unseen code?
            mia = dict(pad_token_id=rd.pad_token_id, batch_size=small, k=ev.mia_k)
            members = membership_scores(fabric, model, rd.forget, rd.tokenizer, **mia)
            non_members = membership_scores(fabric, model, rd.unseen, rd.tokenizer, **mia)
            row.update({f"mia/{k}": v for k, v in mia_aucs(members, non_members).items()})
    return row


def final_humaneval(
    fabric, model, rd, run, progress: bool = False, store=None
) -> tuple[dict | None, list[dict], list[str]]:
    """HumanEval on the final model, when `eval.humaneval.samples` asks for it. Returns `(summary, sample rows, what
    was skipped and why)`; `store` keeps the rows as they are made (`metrics.humaneval.run_humaneval`)."""
    from lightning.fabric.strategies import SingleDeviceStrategy

    args = run.eval.humaneval
    if args.samples == 0:
        return None, [], ["HumanEval: off (humaneval.samples = 0)"]
    if not isinstance(fabric.strategy, SingleDeviceStrategy):
        # Sampling runs different numbers of decoding steps per rank; on one process it needs no collectives.
        return None, [], ["HumanEval: runs on one process only; run `fabricunlearn evaluate --model <run>/final`"]
    from fabricunlearn.metrics.humaneval import run_humaneval

    module = eval_module(fabric, model)
    with fabric.autocast() if module is not model else nullcontext():
        summary, rows = run_humaneval(module, rd.tokenizer, args, progress=progress, store=store)
    skipped = [f"HumanEval {task_id}: {why}" for task_id, why in summary["skipped_problems"].items()]
    return summary, rows, skipped
