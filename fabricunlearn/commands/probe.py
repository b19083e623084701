"""`fabricunlearn probe`: how strongly a model regurgitates every secret of a scan file.

Rows are scored in chunks and appended to ``OUTPUT.partial`` (flushed and synced per chunk) beside a small
``OUTPUT.partial.json`` holding the settings; the finished file is renamed to OUTPUT, so OUTPUT is never half
written. Running the same command again after an interruption skips the rows already there. Resuming checks that
the settings and the input rows done so far are the same; otherwise it says so and asks for ``--restart``.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

from fabricunlearn.commands.inference import Precision, ScoringModel

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


def _collect(summary: dict[str, list[float]], row: dict, keys: list[str]) -> None:
    for secret in row["secrets"]:
        for key in keys:
            if secret.get(key) is not None:
                summary.setdefault(key, []).append(secret[key])


def _done_rows(partial: Path, keys: list[str], summary: dict[str, list[float]]) -> tuple[int, object]:
    """(complete rows in `partial`, doc_id of the last one), streamed; their values go into `summary`. A torn last
    line (a kill mid-write) is cut off."""
    count, last_doc, good_end = 0, None, 0
    with partial.open("rb") as f:
        for line in f:
            if not line.endswith(b"\n"):
                break
            good_end += len(line)
            if line.strip():
                row = json.loads(line)
                count, last_doc = count + 1, row["doc_id"]
                _collect(summary, row, keys)
    if partial.stat().st_size > good_end:
        os.truncate(partial, good_end)
    return count, last_doc


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
    if output.exists() and not restart:
        raise RecipeError(f"--output: {output} exists (a finished probe); pass --restart to probe again")
    partial = output.with_name(output.name + ".partial")
    sidecar = output.with_name(output.name + ".partial.json")
    settings = {
        "model": str(Path(model).resolve()),
        "data": str(data.resolve()),
        "el_ns": ns,
        "max_secret_tokens": max_secret_tokens,
        "max_prefix_tokens": max_prefix_tokens,
        "precision": precision,
    }
    done, last_doc = 0, None
    keys = ["ma", *(f"el{n}" for n in ns)]
    summary: dict[str, list[float]] = {}
    if partial.exists() and not restart:
        before = json.loads(sidecar.read_text()) if sidecar.exists() else {}
        changed = [k for k in settings if before.get(k) != settings[k]]
        if changed:
            raise RecipeError(
                f"{partial} was started with another {changed[0]} ({before.get(changed[0])!r}); "
                "run with the same settings to resume, or pass --restart"
            )
        done, last_doc = _done_rows(partial, keys, summary)
    else:
        output.parent.mkdir(parents=True, exist_ok=True)
        # The rows hold secret values: owner-only from the first byte (the renamed OUTPUT keeps the mode).
        os.close(os.open(partial, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600))
        os.chmod(partial, 0o600)
        sidecar.write_text(json.dumps(settings, indent=2) + "\n")

    sm = load_scoring_model(model, tokenizer, device, precision)
    started, n_rows, n_secrets = time.perf_counter(), 0, 0
    rows = iter_secret_rows(data)
    for i in range(done):  # skip what an earlier run wrote, checking it is the same input
        row = next(rows, None)
        if row is None or (i == done - 1 and row["doc_id"] != last_doc):
            raise RecipeError(f"{partial} does not match {data} (row {i}); pass --restart to probe from the start")
    bar = tqdm(total=_count_lines(data), initial=done, unit="row", disable=not progress, dynamic_ncols=True)
    try:
        with partial.open("a", encoding="utf-8") as f:
            for chunk in _chunks(rows, chunk_secrets):
                scored = score_rows(
                    sm,
                    chunk,
                    ns,
                    batch_size=batch_size,
                    max_secret_tokens=max_secret_tokens,
                    max_prefix_tokens=max_prefix_tokens,
                )
                f.write("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in scored))
                f.flush()
                os.fsync(f.fileno())
                for row in scored:
                    _collect(summary, row, keys)
                n_rows += len(scored)
                n_secrets += sum(len(row["secrets"]) for row in scored)
                bar.update(len(scored))
                bar.set_postfix(secrets=n_secrets)
    except BaseException:
        if partial.stat().st_size == 0:  # nothing to resume from: leave no trace
            partial.unlink()
            sidecar.unlink(missing_ok=True)
        raise
    finally:
        bar.close()
    os.replace(partial, output)
    sidecar.unlink(missing_ok=True)
    _print_summary(output, done, n_rows, n_secrets, summary, time.perf_counter() - started)
    return output


def _print_summary(output: Path, skipped: int, rows: int, secrets: int, values: dict, seconds: float) -> None:
    resumed = f" (resumed: {skipped} rows were done)" if skipped else ""
    print(f"probed {rows} rows, {secrets} secrets in {seconds:.1f} s{resumed} -> {output}")
    if not values:
        return
    print(f"  over all {len(values['ma'])} scored secrets:  {'mean':>8}{'max':>8}{'>= 0.9':>10}")
    for key, v in values.items():
        high = sum(x >= 0.9 for x in v)
        print(f"  {key:<32}{sum(v) / len(v):>8.3f}{max(v):>8.3f}{high:>10}")
