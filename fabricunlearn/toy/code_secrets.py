"""The code-secrets toy world: stdlib Python with planted fake secrets, and a ~1M-parameter GPT-2 that memorized them.

Built from nothing but the interpreter's own sources, in minutes on a CPU:
1. split the stdlib files into training and unseen files; train a byte-level BPE tokenizer on the training ones;
2. secret documents (code chunks with 1-2 planted secrets, each duplicated 2-48 times so memorization varies),
   background documents (plain code, seen once or twice) and unseen documents (with secrets, never trained on);
3. train the model with Fabric until the often-duplicated secrets are memorized;
4. measure every planted secret with the secret-level metrics, and cut the memorized documents (mean secret
   MA >= 0.9) into disjoint forget sets plus a `kept.jsonl` of memorized documents outside every forget set.

Files (DESIGN.md): `model/`, `corpus.jsonl`, `secrets.jsonl`, `unseen.jsonl`, and for recipes `forget_<k>.jsonl`,
`kept.jsonl`, `retain.jsonl`, `thresholds.json`, `world.json` (spec, counts, measured memorization, timings).
"""

from __future__ import annotations

import dataclasses
import random
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from fabricunlearn.data.batches import TokenizedSet, tokenize_documents
from fabricunlearn.data.formats import write_json, write_jsonl


@dataclass(frozen=True)
class CodeSecretsSpec:
    name: str
    secret_docs: int
    """Training documents with planted secrets."""
    copies: tuple[int, ...]
    """Duplication counts, dealt out to the secret documents in turn."""
    background_docs: int
    """Training documents without secrets."""
    unseen_docs: int
    """Held-out documents with secrets, from stdlib files the model never saw."""
    max_doc_tokens: int
    chars: tuple[int, int]
    """Code chunk length range in characters, before planting."""
    steps: int
    batch_size: int = 16
    lr: float = 2e-3
    warmup_steps: int = 50
    vocab_size: int = 2048
    n_embd: int = 128
    n_layer: int = 4
    n_head: int = 4
    n_positions: int = 256
    forget_set_size: int = 8
    num_forget_sets: int = 3
    retain_docs: int = 32
    memorized_ma: float = 0.9
    seed: int = 1234
    version: int = 2
    """Bumped when the builder changes what it writes, so that cached worlds are rebuilt."""


def build_code_secrets(spec: CodeSecretsSpec, out_dir: Path, progress: bool = True) -> dict:
    """Build the world into `out_dir` (which must not exist yet; `toy.ensure_world` handles caching)."""
    from fabricunlearn.models import quiet_transformers
    from fabricunlearn.toy.stdlib_corpus import split_files, stdlib_files
    from fabricunlearn.toy.tokenizer import train_tokenizer

    quiet_transformers()
    started = time.perf_counter()
    rng = random.Random(spec.seed)
    torch.manual_seed(spec.seed)
    train_files, unseen_files = split_files(stdlib_files(), rng, unseen_fraction=0.2)
    tokenizer = train_tokenizer(train_files, spec.vocab_size, model_max_length=spec.n_positions)
    t_tokenizer = time.perf_counter() - started

    n_secret_total = spec.secret_docs + spec.unseen_docs
    secret_rows = _secret_documents(rng, tokenizer, spec, train_files, spec.secret_docs, "doc")
    unseen_rows = _secret_documents(rng, tokenizer, spec, unseen_files, spec.unseen_docs, "unseen")
    background_rows = _background_documents(rng, tokenizer, spec, train_files, n_secret_total)
    for i, row in enumerate(secret_rows):
        row["copies"] = spec.copies[i % len(spec.copies)]

    training = secret_rows + background_rows
    docs = tokenize_documents(tokenizer, training, spec.max_doc_tokens, with_secrets=False)
    docs = TokenizedSet([ids + [tokenizer.eos_token_id] for ids in docs.input_ids])
    from fabricunlearn.toy.pretrain import pretrain, toy_gpt2

    model = toy_gpt2(
        len(tokenizer),
        n_positions=spec.n_positions,
        n_embd=spec.n_embd,
        n_layer=spec.n_layer,
        n_head=spec.n_head,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )

    result = pretrain(
        model,
        docs,
        [row["copies"] for row in training],
        pad_token_id=tokenizer.pad_token_id,
        steps=spec.steps,
        batch_size=spec.batch_size,
        lr=spec.lr,
        warmup_steps=spec.warmup_steps,
        seed=spec.seed,
        progress=progress,
    )
    model.save_pretrained(out_dir / "model")
    tokenizer.save_pretrained(out_dir / "model")

    ma_doc, scores = _probe(model, tokenizer, secret_rows)
    memorized = [row for row in secret_rows if ma_doc[row["doc_id"]] >= spec.memorized_ma]
    random.Random(spec.seed + 1).shuffle(memorized)
    k, size = spec.num_forget_sets, spec.forget_set_size
    forget_sets = [memorized[i * size : (i + 1) * size] for i in range(k) if len(memorized) >= (i + 1) * size]
    in_forget = {row["doc_id"] for rows in forget_sets for row in rows}
    kept = [row for row in memorized if row["doc_id"] not in in_forget]

    _, unseen_scores = _probe(model, tokenizer, unseen_rows, ns=(3, 5, 10))
    thresholds = _thresholds(model, tokenizer, unseen_rows)

    def scan_row(row: dict) -> dict:
        return {"doc_id": row["doc_id"], "text": row["text"], "secrets": row["secrets"]}

    write_jsonl(
        out_dir / "corpus.jsonl", ({"doc_id": r["doc_id"], "text": r["text"], "copies": r["copies"]} for r in training)
    )
    write_jsonl(out_dir / "secrets.jsonl", (scan_row(r) for r in secret_rows), private=True)
    write_jsonl(out_dir / "unseen.jsonl", (scan_row(r) for r in unseen_rows), private=True)
    for i, rows in enumerate(forget_sets):
        write_jsonl(out_dir / f"forget_{i}.jsonl", (scan_row(r) for r in rows), private=True)
    write_jsonl(out_dir / "kept.jsonl", (scan_row(r) for r in kept), private=True)
    write_jsonl(
        out_dir / "retain.jsonl",
        ({"doc_id": r["doc_id"], "text": r["text"]} for r in background_rows[: spec.retain_docs]),
    )
    write_json(out_dir / "thresholds.json", thresholds)

    by_copies: dict[int, list[float]] = {}
    for row in secret_rows:
        by_copies.setdefault(row["copies"], []).append(ma_doc[row["doc_id"]])
    manifest = {
        "world": spec.name,
        "spec": dataclasses.asdict(spec),
        "parameters": sum(p.numel() for p in model.parameters()),
        "documents": {
            "secret": len(secret_rows),
            "background": len(background_rows),
            "unseen": len(unseen_rows),
            "training_views": sum(r["copies"] for r in training),
        },
        "secrets": {
            "training": sum(len(r["secrets"]) for r in secret_rows),
            "over_32_tokens": sum(
                len(tokenizer(s["value"], add_special_tokens=False)["input_ids"]) > 32
                for r in secret_rows
                for s in r["secrets"]
            ),
        },
        "memorized_documents": len(memorized),
        "forget_sets": [len(rows) for rows in forget_sets],
        "kept_documents": len(kept),
        "mean_secret_ma": _mean(scores["ma"]),
        "mean_doc_ma_by_copies": {str(c): _mean(v) for c, v in sorted(by_copies.items())},
        "thresholds": {k: v for k, v in thresholds.items() if k != "source"},
        "unseen_secret_metrics": {k: _mean(v) for k, v in unseen_scores.items()},
        "seconds": {
            "tokenizer": round(t_tokenizer, 1),
            "training": round(result.seconds, 1),
            "total": round(time.perf_counter() - started, 1),
        },
        "training": dataclasses.asdict(result),
    }
    write_json(out_dir / "world.json", manifest)
    return manifest


def _secret_documents(rng, tokenizer, spec, files, count: int, prefix: str) -> list[dict]:
    from fabricunlearn.toy.secret_formats import SECRET_TYPES, plant_secrets
    from fabricunlearn.toy.stdlib_corpus import code_chunks

    rows: list[dict] = []
    chunks = code_chunks(rng, count * 4, spec.chars[0], spec.chars[1], files=files)
    for chunk in chunks:
        if len(rows) == count:
            break
        kind = SECRET_TYPES[len(rows) % len(SECRET_TYPES)]  # every format appears, in turn
        n = 1 if rng.random() < 0.6 else 2
        types = [kind] if n == 1 else [kind, rng.choice(SECRET_TYPES)]
        text, secrets = plant_secrets(rng, chunk, n, types=types)
        text = _fit(tokenizer, text, spec.max_doc_tokens)
        if max(s["end"] for s in secrets) > len(text):
            continue  # a secret past the training window could never be memorized
        rows.append({"doc_id": f"{prefix}-{len(rows):04d}", "text": text, "secrets": secrets})
    if len(rows) < count:
        raise RuntimeError(f"only {len(rows)} of {count} {prefix} documents fit in {spec.max_doc_tokens} tokens")
    return rows


def _background_documents(rng, tokenizer, spec, files, avoid: int) -> list[dict]:
    from fabricunlearn.toy.stdlib_corpus import code_chunks

    chunks = code_chunks(rng, spec.background_docs + avoid, spec.chars[0], spec.chars[1], files=files)
    return [
        {"doc_id": f"code-{i:04d}", "text": _fit(tokenizer, c, spec.max_doc_tokens), "copies": 1 + (i % 2)}
        for i, c in enumerate(chunks[avoid : avoid + spec.background_docs])
    ]


def _fit(tokenizer, text: str, max_tokens: int) -> str:
    """The text cut after its `max_tokens`-th token, so that a document is exactly what the model trains on."""
    offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    return text if len(offsets) <= max_tokens else text[: offsets[max_tokens - 1][1]]


def _probe(model, tokenizer, rows: list[dict], ns: tuple[int, ...] = ()) -> tuple[dict, dict[str, list[float]]]:
    """Mean secret MA per document, and per-secret MA (and EL_n for every n in `ns`) lists."""
    from fabricunlearn.commands.inference import ScoringModel
    from fabricunlearn.commands.probe import score_rows

    scoring = ScoringModel(model, tokenizer, tokenizer.pad_token_id, tokenizer.eos_token_id, model.device)
    scored = score_rows(scoring, rows, list(ns))
    keys = ["ma", *(f"el{n}" for n in ns)]
    scores = {key: [secret[key] for row in scored for secret in row["secrets"]] for key in keys}
    return {row["doc_id"]: row["secret_mean_ma"] for row in scored}, scores


def _thresholds(model, tokenizer, rows: list[dict], target_length: int = 128) -> dict:
    """The paper's memorization thresholds: mean full-sequence MA / EL_n (KU window, first 128 tokens) over
    documents the model never saw. Applied to secret-level MA / EL_n of a forget set, as CodeEraser does."""
    from fabricunlearn.commands.inference import ScoringModel
    from fabricunlearn.commands.thresholds import unseen_thresholds

    scoring = ScoringModel(model, tokenizer, tokenizer.pad_token_id, tokenizer.eos_token_id, model.device)
    out: dict = unseen_thresholds(scoring, [row["text"] for row in rows], target_length=target_length)
    out["source"] = f"mean full-sequence MA/EL_n over the {len(rows)} unseen documents (first {target_length} tokens)"
    return out


def _mean(values) -> float:
    values = [v for v in values if v == v]  # drop NaN (empty secrets)
    return sum(values) / len(values) if values else float("nan")
