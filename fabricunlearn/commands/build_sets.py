"""`fabricunlearn build-sets`: from probed scan rows and the training corpus to the sets a recipe consumes
("Scrub It Out!", reference codeeraser-sscu.md §4).

- **forget_<i>.jsonl**: k disjoint sets of documents whose mean secret MA is at least 0.9 and that have at least 32
  secret tokens among the model's first 512 tokens; eligible documents are shuffled with the seed and cut into
  consecutive groups, as the original does (``random.seed(42)``, shuffle, ``indices[i*k:(i+1)*k]``).
- **kept.jsonl**: eligible documents in no forget set (memorized secrets that unlearning should leave alone; their
  MA after a run measures collateral forgetting).
- **retain.jsonl**: memorized code without secrets: from the first 64 tokens the model greedily reproduces the next
  64 with character BLEU-4 ≥ 0.95 (NLTK's ``sentence_bleu`` on strings, smoothing method 4, as the original), or
  exactly (``--retain_match exact``). Candidates are corpus documents absent from the probed rows (the scan found no
  secret in them) with at least 128 tokens, taken in the order of a seeded hash of their ``doc_id`` (a
  deterministic shuffle that streams the corpus).
- **unseen.jsonl**: code the model never saw, from ``--unseen`` or HumanEval (offline).
- **manifest.json**: counts (with the reason each probed document was left out), settings, seed, and the SHA-256
  of every input file.

Files holding secret values are owner-only. The folder is written next to its destination and renamed into place.
"""

from __future__ import annotations

import datetime
import hashlib
import heapq
import os
import random
import shutil
from collections import Counter
from pathlib import Path
from typing import Literal

from fabricunlearn.commands.inference import Precision, ScoringModel


def _sha256(path: Path) -> str:
    """Of a file's bytes; of a folder, of every file's relative path and bytes in sorted order."""
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        if path.is_dir():
            digest.update(file.relative_to(path).as_posix().encode() + b"\0")
        with file.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def _iter_corpus(path: Path):
    """The corpus's scannable documents as corpus rows, streamed (every input kind `scan` reads)."""
    from fabricunlearn.scan.sources import iter_documents

    for doc in iter_documents(path, max_chars=10**9):
        if doc.skip is None:
            yield {"doc_id": doc.doc_id, "text": doc.text}


def eligible_documents(
    sm: ScoringModel,
    data: Path,
    *,
    min_mean_ma: float,
    min_secret_tokens: int,
    window: int,
    mask_boundary: Literal["exact", "inclusive"],
    reasons: Counter,
) -> tuple[list[dict], set]:
    """The probed rows that qualify for a forget set, and the doc_ids of every probed row (they have secrets)."""
    from fabricunlearn.config import RecipeError
    from fabricunlearn.data.batches import tokenize_documents
    from fabricunlearn.data.formats import iter_secret_rows

    eligible, scanned = [], set()
    for row in iter_secret_rows(data):
        scanned.add(row["doc_id"])
        if "secret_mean_ma" not in row:
            raise RecipeError(f"--data: {data} has no `secret_mean_ma`: run `fabricunlearn probe` on it first")
        if row["secret_mean_ma"] is None or row["secret_mean_ma"] < min_mean_ma:
            reasons["mean MA below threshold"] += 1
            continue
        mask = tokenize_documents(sm.tokenizer, [row], window, with_secrets=True, boundary=mask_boundary)
        if sum(mask.secret_mask[0]) < min_secret_tokens:
            reasons["too few secret tokens in the window"] += 1
            continue
        eligible.append(row)
    return eligible, scanned


def memorized_code(
    sm: ScoringModel,
    candidates: list[dict],
    *,
    wanted: int,
    prefix_tokens: int,
    new_tokens: int,
    match: Literal["bleu", "exact"],
    min_bleu: float,
    batch_size: int,
    on_progress=None,
) -> list[dict]:
    """Candidates whose continuation the model reproduces (in order, until ``wanted`` are found), with `bleu4`."""
    from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu

    from fabricunlearn.metrics.decoding import eos_list, eval_mode, greedy_continuations

    smoothing = SmoothingFunction().method4
    found = []
    with eval_mode(sm.model):
        for start in range(0, len(candidates), batch_size):
            chunk = candidates[start : start + batch_size]
            ids = sm.tokenizer([row["text"] for row in chunk], add_special_tokens=False)["input_ids"]
            prompts = [list(x[:prefix_tokens]) for x in ids]
            generated = greedy_continuations(
                sm.model, prompts, [new_tokens] * len(chunk), eos_list(sm.eos_token_id), sm.pad_token_id, batch_size
            )
            for row, x, gen in zip(chunk, ids, generated):
                reference = list(x[prefix_tokens : prefix_tokens + new_tokens])
                gen = [t for t in gen if t >= 0]  # after EOS nothing was generated
                text_ref = sm.tokenizer.decode(reference, skip_special_tokens=True)
                text_gen = sm.tokenizer.decode(gen, skip_special_tokens=True)
                bleu = sentence_bleu([text_ref], text_gen, smoothing_function=smoothing) if text_gen else 0.0
                if (gen == reference) if match == "exact" else bleu >= min_bleu:
                    found.append({"doc_id": row["doc_id"], "text": row["text"], "bleu4": bleu})
                    if len(found) == wanted:
                        return found
            if on_progress:
                on_progress(len(chunk))
    return found


def build_sets(
    model: Path,
    data: Path,
    corpus: Path,
    out_dir: Path,
    min_mean_ma: float = 0.9,
    min_secret_tokens: int = 32,
    window: int = 512,
    mask_boundary: Literal["exact", "inclusive"] = "exact",
    num_sets: int = 5,
    set_size: int = 32,
    kept_size: int = 64,
    retain_size: int = 32,
    retain_match: Literal["bleu", "exact"] = "bleu",
    retain_min_bleu: float = 0.95,
    retain_prefix_tokens: int = 64,
    retain_new_tokens: int = 64,
    retain_candidates: int = 2000,
    unseen: Path | None = None,
    unseen_size: int = 164,
    seed: int = 42,
    batch_size: int = 32,
    device: str = "auto",
    precision: Precision = "32",
    tokenizer: Path | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Build forget, kept, retain and unseen sets from probed scan rows and the training corpus.

    Writes OUT_DIR/forget_<i>.jsonl (scan rows, i = 0 … num_sets − 1), kept.jsonl, retain.jsonl, unseen.jsonl and
    manifest.json. A recipe then points `data.forget`, `data.kept`, `data.retain`, `data.unseen` at them.

    Args:
        model: The Hugging Face causal LM folder the sets are for (the one that was probed).
        data: `fabricunlearn probe` output (scan rows with `secret_mean_ma`).
        corpus: The training corpus, as `scan` read it (JSONL, Parquet, CSV, a folder of files, a datasets folder).
        out_dir: The folder to write (must not exist unless --overwrite).
        min_mean_ma: A document qualifies when its mean secret MA is at least this (the original's 0.9).
        min_secret_tokens: ... and it has at least this many secret tokens in the window (the original's 32).
        window: Tokens of a document the training sees (the original's 512).
        mask_boundary: exact (tokens overlapping a secret) or inclusive (also tokens touching it; the original).
        num_sets: Disjoint forget sets to build (the original's 5).
        set_size: Documents per forget set (the original's 32).
        kept_size: At most this many eligible documents outside every forget set go to kept.jsonl.
        retain_size: Memorized non-secret documents for retain.jsonl (the original's 32).
        retain_match: bleu (character BLEU-4 >= retain_min_bleu, the original) or exact (token-identical).
        retain_min_bleu: BLEU-4 threshold for retain_match=bleu.
        retain_prefix_tokens: Prompt length for the retain test (the original's 64).
        retain_new_tokens: Tokens generated and compared (the original's 64).
        retain_candidates: Corpus documents tried at most for the retain set.
        unseen: Held-out code (corpus rows); default: HumanEval prompt + canonical solution.
        unseen_size: At most this many unseen documents.
        seed: Shuffling seed for forget sets and retain candidates (the original's 42).
        batch_size: Sequences per forward pass.
        device: auto (the first GPU if any, else the CPU), cpu, cuda, cuda:1, ...
        precision: 32, bf16 or 16.
        tokenizer: Tokenizer folder, when it is not the model folder.
        overwrite: Replace an existing OUT_DIR.
        progress: Show a progress bar.
    """
    from tqdm import tqdm

    from fabricunlearn.commands.inference import load_scoring_model
    from fabricunlearn.commands.thresholds import humaneval_texts
    from fabricunlearn.config import RecipeError
    from fabricunlearn.data.formats import DataError, read_rows, write_json, write_jsonl

    data, corpus, out_dir = Path(data), Path(corpus), Path(out_dir)
    for flag, path in (("--data", data), ("--corpus", corpus), ("--unseen", unseen)):
        if path is not None and not Path(path).exists():
            raise DataError(f"{path}: no such file ({flag})")
    if min(num_sets, set_size, window, retain_prefix_tokens, retain_new_tokens, batch_size) < 1:
        raise RecipeError("--num_sets, --set_size, --window, --retain_*_tokens and --batch_size must be >= 1")
    if out_dir.exists() and not overwrite:
        raise RecipeError(f"--out_dir: {out_dir} exists; pass --overwrite to replace it")

    sm = load_scoring_model(model, tokenizer, device, precision)
    reasons: Counter = Counter()
    eligible, scanned = eligible_documents(
        sm,
        data,
        min_mean_ma=min_mean_ma,
        min_secret_tokens=min_secret_tokens,
        window=window,
        mask_boundary=mask_boundary,
        reasons=reasons,
    )
    needed = num_sets * set_size
    if len(eligible) < needed:
        raise RecipeError(
            f"{len(eligible)} documents qualify (mean secret MA >= {min_mean_ma}, >= {min_secret_tokens} secret "
            f"tokens; {dict(reasons)}), {needed} are needed for {num_sets} sets of {set_size}: lower "
            "--num_sets, --set_size, --min_mean_ma or --min_secret_tokens"
        )
    order = list(range(len(eligible)))
    random.Random(seed).shuffle(order)
    forget = [[eligible[k] for k in order[i * set_size : (i + 1) * set_size]] for i in range(num_sets)]
    kept = [eligible[k] for k in order[needed : needed + kept_size]]

    def rank(row: dict) -> str:
        return hashlib.sha256(f"{seed}:{row['doc_id']}".encode()).hexdigest()

    length = retain_prefix_tokens + retain_new_tokens
    pool = (
        row
        for row in _iter_corpus(corpus)
        if row["doc_id"] not in scanned and len(row["text"]) >= length  # a token is at least one character
    )
    candidates = heapq.nsmallest(retain_candidates, pool, key=rank)
    candidates = [
        row for row in candidates if len(sm.tokenizer(row["text"], add_special_tokens=False)["input_ids"]) >= length
    ]
    bar = tqdm(total=len(candidates), unit="doc", desc="retain", disable=not progress, dynamic_ncols=True)
    retain = memorized_code(
        sm,
        candidates,
        wanted=retain_size,
        prefix_tokens=retain_prefix_tokens,
        new_tokens=retain_new_tokens,
        match=retain_match,
        min_bleu=retain_min_bleu,
        batch_size=batch_size,
        on_progress=bar.update,
    )
    bar.close()

    if unseen is None:
        unseen_rows = [{"doc_id": f"HumanEval/{i}", "text": t} for i, t in enumerate(humaneval_texts())]
    else:
        unseen_rows = [{"doc_id": row["doc_id"], "text": row["text"]} for row in read_rows(unseen)]
    unseen_rows = unseen_rows[:unseen_size]

    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for i, rows in enumerate(forget):
        write_jsonl(tmp / f"forget_{i}.jsonl", rows, private=True)
    write_jsonl(tmp / "kept.jsonl", kept, private=True)
    write_jsonl(tmp / "retain.jsonl", retain)
    write_jsonl(tmp / "unseen.jsonl", unseen_rows)
    manifest = {
        "counts": {
            "probed_documents": len(scanned),
            "eligible_documents": len(eligible),
            "left_out": dict(reasons),
            "forget_sets": [len(rows) for rows in forget],
            "kept_documents": len(kept),
            "retain_candidates": len(candidates),
            "retain_documents": len(retain),
            "unseen_documents": len(unseen_rows),
        },
        "settings": {
            "min_mean_ma": min_mean_ma,
            "min_secret_tokens": min_secret_tokens,
            "window": window,
            "mask_boundary": mask_boundary,
            "num_sets": num_sets,
            "set_size": set_size,
            "retain_match": retain_match,
            "retain_min_bleu": retain_min_bleu,
            "retain_prefix_tokens": retain_prefix_tokens,
            "retain_new_tokens": retain_new_tokens,
            "precision": precision,
        },
        "seed": seed,
        "model": str(model),
        "sources": {str(p): _sha256(Path(p)) for p in (data, corpus, unseen) if p is not None},
        "unseen_source": "HumanEval (prompt + canonical solution)" if unseen is None else str(unseen),
        "date": datetime.date.today().isoformat(),
    }
    write_json(tmp / "manifest.json", manifest)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)

    print(
        f"{num_sets} forget sets of {set_size} from {len(eligible)} qualifying documents "
        f"({len(scanned)} probed; left out: {dict(reasons) or 'none'}), {len(kept)} kept, "
        f"{len(retain)} retain (of {len(candidates)} candidates), {len(unseen_rows)} unseen -> {out_dir}"
    )
    if len(retain) < retain_size:
        print(f"  note: only {len(retain)} of the {retain_size} retain documents asked for were found memorized")
    return out_dir
