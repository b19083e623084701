"""Secret-level MA / EL_n: fabricunlearn's `secret_ma`, `secret_el` and `secret_scores` against the original
algorithm, in one run.

The original (codeeraser-sscu.md §1.4, `BatchedOriginal` in tests/metrics/original_secret_metrics.py, checked
there against a per-secret reference) puts the secrets of a batch in one `generate` batch, prefixes left-padded
to 128 tokens, secrets right-padded to 32: MA is 32 one-token `generate` calls per batch, EL_n one cached
`generate` call per offset (up to 32 new tokens), each n a separate pass. Ours: `secret_ma` (one teacher-forced
pass) and `secret_el(ns=(3, 5, 10))` (that pass again, then decoding only where the model leaves the secret) timed
separately, and `secret_scores` (all four from one teacher-forced pass, what the loop and `probe` run) for the
MA+EL3+EL5+EL10 line.
Both sides score the same secrets of the world's `secrets.jsonl` with the demo model, the same batch size and the
same torch thread count; the per-secret values must be identical (exit status 1 otherwise).

Goals: >= 10x for MA + EL3 + EL5 + EL10 together, >= 20x for EL10 alone on the memorized secrets (MA >= 0.9).
Each repeat times both sides back to back, in alternating order; the median of the per-repeat ratios is reported.

    python tools/bench_metrics.py [--world code_secrets] [--limit N] [--batch_size 16] [--repeats 3] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
NS = (3, 5, 10)
TOLERANCE = 1e-9


def max_diff(a, b) -> float:
    """Largest |a - b| over per-secret values; NaN only where both are NaN (an empty secret), else inf."""
    a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    if a.shape != b.shape:
        return math.inf
    both = a.isnan() & b.isnan()
    if bool((a.isnan() ^ b.isnan()).any()):
        return math.inf
    diff = (a - b).abs()[~both]
    return float(diff.max()) if diff.numel() else 0.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--world", default="code_secrets")
    parser.add_argument("--world_dir", default=None)
    parser.add_argument("--limit", type=int, default=None, help="score only the first N secrets")
    parser.add_argument("--batch_size", type=int, default=16, help="secrets per batch, both sides")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads on both sides (0: torch's default); tiny models run op by op",
    )
    args = parser.parse_args()

    sys.path.insert(0, str(REPO))
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    from fabricunlearn.metrics.memorization import encode_secrets, secret_el, secret_ma, secret_scores
    from fabricunlearn.toy import ensure_world
    from tests.metrics.original_secret_metrics import BatchedOriginal, _ref_encode

    hf_logging.set_verbosity_error()  # the original's MA prompts end in pad for short secrets: generate warns
    hf_logging.disable_progress_bar()
    if args.threads > 0:
        torch.set_num_threads(args.threads)

    world = ensure_world(args.world, args.world_dir, progress=True)
    tokenizer = AutoTokenizer.from_pretrained(world / "model")
    model = AutoModelForCausalLM.from_pretrained(world / "model").eval()
    rows = [json.loads(line) for line in (world / "secrets.jsonl").read_text().splitlines() if line.strip()]
    if args.limit is not None:  # keep the first N secrets (whole rows, then the last one cut)
        kept, count = [], 0
        for row in rows:
            if count >= args.limit:
                break
            take = row["secrets"][: args.limit - count]
            kept.append({**row, "secrets": take})
            count += len(take)
        rows = kept
    enc = encode_secrets(tokenizer, rows)
    prefixes, secrets = _ref_encode(tokenizer, rows)  # the original's own tokenization: the same ids
    if (prefixes, secrets) != (enc.prefix_ids, enc.secret_ids):
        print("error: encode_secrets and the original tokenization give different ids", file=sys.stderr)
        return 1
    pad, eos, bs = tokenizer.pad_token_id, tokenizer.eos_token_id, args.batch_size
    original = BatchedOriginal(model, pad, eos, batch_size=bs)

    def run_original(pre, sec, ns) -> tuple[dict, dict]:
        values, times = {}, {}
        if "ma" in ns:
            started = time.perf_counter()
            values["ma"] = original.ma(pre, sec)
            times["ma"] = time.perf_counter() - started
        for n in (n for n in ns if n != "ma"):
            started = time.perf_counter()
            values[n] = original.el(pre, sec, n)  # each n a separate pass, as the original runs it
            times[n] = time.perf_counter() - started
        return values, times

    def run_ours(sub, ns) -> tuple[dict, dict]:
        values, times = {}, {}
        if "ma" in ns:
            started = time.perf_counter()
            values["ma"] = secret_ma(model, sub, pad_token_id=pad, batch_size=bs)
            times["ma"] = time.perf_counter() - started
        el_ns = tuple(n for n in ns if n != "ma")
        started = time.perf_counter()
        values.update(secret_el(model, sub, el_ns, pad_token_id=pad, eos_token_id=eos, batch_size=bs))
        times["el"] = time.perf_counter() - started
        if "ma" in ns and el_ns:
            started = time.perf_counter()
            together = secret_scores(model, sub, el_ns, pad_token_id=pad, eos_token_id=eos, batch_size=bs)
            times["all"] = time.perf_counter() - started
            if any(max_diff(together[f"el{n}"], values[n]) > 0 for n in el_ns) or max_diff(
                together["ma"], values["ma"]
            ):
                raise SystemExit("error: secret_scores differs from secret_ma / secret_el")
        return values, times

    # Warm-up (untimed), and the memorized subset by our MA.
    head = enc.subset(range(min(bs, len(enc))))
    run_original(head.prefix_ids, head.secret_ids, ("ma", 3))
    ma = run_ours(enc, ("ma", 3))[0]["ma"]
    memorized = [k for k in range(len(enc)) if ma[k] >= 0.9]
    mem = enc.subset(memorized)

    everything = ("ma", *NS)
    diffs = {key: 0.0 for key in (*everything, "el10 memorized")}
    t_orig: dict[str, list[float]] = {key: [] for key in (*everything, "mem")}
    t_ours: dict[str, list[float]] = {key: [] for key in ("ma", "el", "all", "mem")}
    calls = {}
    for r in range(args.repeats):
        for side in ("original", "ours") if r % 2 == 0 else ("ours", "original"):
            if side == "original":
                original.calls = 0
                v_orig, times = run_original(prefixes, secrets, everything)
                calls["all"] = original.calls
                for key in everything:
                    t_orig[key].append(times[key])
            else:
                v_ours, times = run_ours(enc, everything)
                for key in ("ma", "el", "all"):
                    t_ours[key].append(times[key])
        for key in everything:
            diffs[key] = max(diffs[key], max_diff(v_orig[key], v_ours[key]))
        if memorized:
            for side in ("original", "ours") if r % 2 == 0 else ("ours", "original"):
                if side == "original":
                    original.calls = 0
                    m_orig, times = run_original(mem.prefix_ids, mem.secret_ids, (10,))
                    calls["mem"] = original.calls
                    t_orig["mem"].append(times[10])
                else:
                    m_ours, times = run_ours(mem, (10,))
                    t_ours["mem"].append(times["el"])
            diffs["el10 memorized"] = max(diffs["el10 memorized"], max_diff(m_orig[10], m_ours[10]))
        done = sum(t_orig[k][-1] for k in everything), t_ours["all"][-1]
        print(f"repeat {r + 1}/{args.repeats}: original {done[0]:.1f} s, ours {done[1]:.2f} s", file=sys.stderr)

    def summary(orig: list[float], ours: list[float]) -> tuple[float, float, float, float, float]:
        ratios = [o / u for o, u in zip(orig, ours)]
        return statistics.median(orig), statistics.median(ours), statistics.median(ratios), min(ratios), max(ratios)

    orig_el = [sum(t_orig[n][r] for n in NS) for r in range(args.repeats)]
    orig_all = [t_orig["ma"][r] + orig_el[r] for r in range(args.repeats)]
    ours_all = t_ours["all"]
    lines = [
        ("MA", summary(t_orig["ma"], t_ours["ma"]), diffs["ma"]),
        ("EL3+EL5+EL10", summary(orig_el, t_ours["el"]), max(diffs[n] for n in NS)),
        ("MA+EL3+EL5+EL10", summary(orig_all, ours_all), max(diffs[k] for k in everything)),
    ]
    if memorized:
        lines.append((f"EL10, {len(mem)} memorized", summary(t_orig["mem"], t_ours["mem"]), diffs["el10 memorized"]))

    n_params = sum(p.numel() for p in model.parameters())
    print(
        f"world {args.world}: {len(enc)} secrets ({len(memorized)} memorized, MA >= 0.9), {n_params:,} parameters, "
        f"batch {bs}, torch {torch.__version__}, {torch.get_num_threads()} threads, {args.repeats} repeats"
    )
    print(
        "original generate calls: "
        f"{calls['all']} for MA+EL3+EL5+EL10"
        + (f", {calls['mem']} for EL10 on the memorized secrets" if memorized else "")
        + "; original per pass (median s): "
        + ", ".join(f"{'MA' if k == 'ma' else f'EL{k}'} {statistics.median(t_orig[k]):.2f}" for k in everything)
    )
    print(f"{'':<22} {'original s':>10} {'ours s':>8} {'ratio':>8}   {'min..max':>14}   {'max |diff|':>10}")
    for name, (o, u, ratio, lo, hi), diff in lines:
        spread = f"{lo:.1f}..{hi:.1f}x"
        print(f"{name:<22} {o:>10.2f} {u:>8.3f} {ratio:>7.1f}x   {spread:>14}   {diff:>10.2g}")
    labels = {"ma": "MA", **{n: f"EL{n}" for n in NS}, "el10 memorized": "EL10 on the memorized"}
    print("max |diff| per metric: " + ", ".join(f"{labels[k]} {d:.2g}" for k, d in diffs.items()))
    worst = max(diffs.values())
    if not worst <= TOLERANCE:  # no speed claim for different numbers
        print(f"error: per-secret values differ by {worst:.3g} (> {TOLERANCE:g})", file=sys.stderr)
        return 1
    together, el10 = lines[2][1][2], lines[3][1][2] if memorized else math.nan
    print(
        f"goals: MA+EL3+EL5+EL10 >= 10x: {'met' if together >= 10 else 'NOT met'} ({together:.1f}x); "
        f"EL10 on memorized >= 20x: {'met' if el10 >= 20 else 'NOT met'} ({el10:.1f}x)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
