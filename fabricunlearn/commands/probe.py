"""`fabricunlearn probe`: how strongly a model regurgitates every secret of a scan file.

Rows are scored in chunks and written through :class:`fabricunlearn.data.resumable.ResumableJSONL`: OUTPUT is never
half written, and running the same command again after an interruption skips the rows already done (under the
same settings and input; otherwise it says so and asks for ``--restart``).
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Iterator
from pathlib import Path

from fabricunlearn.commands.inference import Precision, ScoringModel
from fabricunlearn.data.resumable import ResumableJSONL

_METRIC = re.compile(r"^(ma|el(\d+))$")


def parse_metrics(text: str) -> list[int]:
    """`ma,el3,el10` -> the EL n's, [3, 10] (MA is always computed: the row summaries need it)."""
    from fabricunlearn.config import RecipeError

    names = [m.strip().lower() for m in text.split(",") if m.strip()]
    ns = []
    for name in names:
        match = _METRIC.match(name)
        if match is None or (match.group(2) is not None and int(match.group(2)) < 1):
            raise RecipeError(f"--metrics: unknown metric {name!r}; use ma and el<n> (n >= 1), e.g. ma,el3,el5,el10")
        if match.group(2) is not None:
            ns.append(int(match.group(2)))
    return sorted(set(ns))


def score_rows(
    sm: ScoringModel,
    rows: list[dict],
    ns: list[int],
    *,
    batch_size: int = 32,
    max_secret_tokens: int = 32,
    max_prefix_tokens: int = 128,
) -> list[dict]:
    """The rows with `ma` (and `el<n>`) on every secret and `secret_mean_ma` / `secret_max_ma` on every row.
    An empty secret scores null, as does the summary of a row without (non-empty) secrets."""
    from fabricunlearn.metrics.memorization import encode_secrets, secret_scores
    from fabricunlearn.models import context_length

    enc = encode_secrets(sm.tokenizer, rows, max_secret_tokens, max_prefix_tokens, context_length(sm.model))
    values = secret_scores(
        sm.model,
        enc,
        ns,
        pad_token_id=sm.pad_token_id,
        eos_token_id=sm.eos_token_id,
        batch_size=batch_size,
        max_secret_tokens=max_secret_tokens,
    )
    out = [{**row, "secrets": [dict(s) for s in row["secrets"]]} for row in rows]
    for k, (d, j) in enumerate(zip(enc.doc_index, enc.secret_index)):
        for key, v in values.items():
            out[d]["secrets"][j][key] = _json_number(v[k].item())
    for row in out:
        mas = [s["ma"] for s in row["secrets"] if s.get("ma") is not None]
        row["secret_mean_ma"] = sum(mas) / len(mas) if mas else None
        row["secret_max_ma"] = max(mas) if mas else None
    return out


def _json_number(x: float) -> float | None:
    return None if math.isnan(x) else x


def _chunks(rows: Iterator[dict], secrets_per_chunk: int) -> Iterator[list[dict]]:
    chunk, count = [], 0
    for row in rows:
        chunk.append(row)
        count += len(row["secrets"])
        if count >= secrets_per_chunk:
            yield chunk
            chunk, count = [], 0
    if chunk:
        yield chunk


def _count_lines(path: Path) -> int | None:
    if path.suffix != ".jsonl" and path.suffix != ".json":
        return None
    with path.open("rb") as f:
        return sum(1 for line in f if line.strip())


def _collect(summary: dict[str, dict], rows: list[dict], keys: list[str]) -> None:
    """Running mean / max / count >= 0.9 per metric, kept in the resumable state (so a resume needs no re-read)."""
    for row in rows:
        for secret in row["secrets"]:
            for key in keys:
                value = secret.get(key)
                if value is not None:
                    acc = summary.setdefault(key, {"n": 0, "sum": 0.0, "max": 0.0, "high": 0})
                    acc["n"], acc["sum"] = acc["n"] + 1, acc["sum"] + value
                    acc["max"], acc["high"] = max(acc["max"], value), acc["high"] + (value >= 0.9)


def probe(
    model: Path,
    data: Path,
    output: Path,
    metrics: str = "ma,el10",
    batch_size: int = 32,
    device: str = "auto",
    precision: Precision = "32",
    tokenizer: Path | None = None,
    max_secret_tokens: int = 32,
    max_prefix_tokens: int = 128,
    chunk_secrets: int = 4096,
    restart: bool = False,
    progress: bool = True,
) -> Path:
    """Measure how strongly a model has memorized every secret of a scan file (MA, EL_n), per secret and per row.

    Each secret gains `ma` (and `el3`, `el5`, `el10`, ... as asked), each row `secret_mean_ma` and `secret_max_ma`;
    values are those of the original CodeEraser definition (docs/metrics.md). Written in chunks: an interrupted probe
    resumes when the same command is run again.

    Args:
        model: A Hugging Face causal LM folder.
        data: Scan rows (JSONL, streamed; or Parquet/CSV): {"doc_id", "text", "secrets": [{"value", "start", "end"}]}.
        output: Where to write the probed rows (JSONL; owner-only, as it holds the secret values).
        metrics: Comma-separated: ma, el3, el5, el10, or el<n> for any n.
        batch_size: Secrets per forward pass (lower it for large vocabularies or long prefixes).
        device: auto (the first GPU if any, else the CPU), cpu, cuda, cuda:1, ...
        precision: 32, bf16 or 16 (half precision can flip near-tie predictions; 32 is the reference).
        tokenizer: Tokenizer folder, when it is not the model folder.
        max_secret_tokens: A secret is read up to its first this many tokens (the original's 32).
        max_prefix_tokens: The prefix is the last this many tokens before the secret (the original's 128).
        chunk_secrets: Secrets scored and written per chunk (the unit of resumption).
        restart: Start over, discarding an unfinished OUTPUT.partial and replacing an existing OUTPUT.
        progress: Show a progress bar.
    """
    from tqdm import tqdm

    from fabricunlearn.commands.inference import load_scoring_model
    from fabricunlearn.config import RecipeError
    from fabricunlearn.data.formats import DataError, iter_secret_rows

    ns = parse_metrics(metrics)
    if batch_size < 1 or chunk_secrets < 1:
        raise RecipeError("--batch_size and --chunk_secrets must be >= 1")
    data, output = Path(data), Path(output)
    if not data.is_file():
        raise DataError(f"{data}: no such file")
    if output.resolve() == data.resolve():
        raise RecipeError(f"--output: {output} is the input file; write the probed rows elsewhere")
    settings = {
        "model": str(Path(model).resolve()),
        "data": str(data.resolve()),
        "el_ns": ns,
        "max_secret_tokens": max_secret_tokens,
        "max_prefix_tokens": max_prefix_tokens,
        "precision": precision,
    }
    keys = ["ma", *(f"el{n}" for n in ns)]
    out = ResumableJSONL(
        output,
        settings,
        {"rows": 0, "bytes": 0, "last_doc_id": None, "secrets": 0, "summary": {}},
        restart=restart,
        what="probe",
    )
    state, done = out.state, out.state["rows"]

    sm = load_scoring_model(model, tokenizer, device, precision)
    started = time.perf_counter()
    rows = iter_secret_rows(data)
    for i in range(done):  # what an earlier run did: skip it, checking that the input is the same
        row = next(rows, None)
        if i == done - 1:
            out.check_skipped(i, None if row is None else row["doc_id"], data)
    bar = tqdm(total=_count_lines(data), initial=done, unit="row", disable=not progress, dynamic_ncols=True)
    finished = False
    try:
        for chunk in _chunks(rows, chunk_secrets):
            scored = score_rows(
                sm,
                chunk,
                ns,
                batch_size=batch_size,
                max_secret_tokens=max_secret_tokens,
                max_prefix_tokens=max_prefix_tokens,
            )
            _collect(state["summary"], scored, keys)
            state["secrets"] += sum(len(row["secrets"]) for row in scored)
            out.append(scored, len(chunk), chunk[-1]["doc_id"])
            bar.update(len(scored))
            bar.set_postfix(secrets=state["secrets"])
        finished = True
    finally:
        bar.close()
        out.close(finished)
    _print_summary(output, done, state, time.perf_counter() - started)
    return output


def _print_summary(output: Path, skipped: int, state: dict, seconds: float) -> None:
    resumed = f" (resumed: {skipped} rows were done)" if skipped else ""
    print(f"probed {state['rows']} rows, {state['secrets']} secrets in {seconds:.1f} s{resumed} -> {output}")
    summary = state["summary"]
    if not summary:
        return
    print(f"  over all {summary['ma']['n']} scored secrets:  {'mean':>8}{'max':>8}{'>= 0.9':>10}")
    for key, acc in summary.items():
        print(f"  {key:<32}{acc['sum'] / acc['n']:>8.3f}{acc['max']:>8.3f}{acc['high']:>10}")
