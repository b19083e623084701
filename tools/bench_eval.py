"""The final evaluation's two costly parts against the way the originals run them, in one run.

1. Membership inference: ours scores a batch of documents in one forward pass and derives loss, zlib, Min-K% and
   Min-K%++ from it (`fabricunlearn.metrics.mia.token_statistics`, `eval.document_batch_size` documents per pass).
   The originals (the Min-K% / Min-K%++ reference code) run one unpadded forward pass per document. Both score the
   demo world's forget and unseen documents; the scores must agree to 1e-6 (exit status 1 otherwise).
2. HumanEval sampling: ours generates `--samples` completions of a problem per KV-cached `generate` call
   (`humaneval.batch_size` 50) and stops each at the stop sequences. CodeEraser's bigcode-harness run used batches of
   10. Same model, problems, temperature and top-p; completions differ (they are samples), so only throughput is
   compared.

No goal is set for either; the figures go to docs/benchmarks.md.

    python tools/bench_eval.py [--world code_secrets] [--samples 50] [--problems 4] [--repeats 3] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import zlib
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def original_scores(model, ids: list[int], text: str, k: float = 0.2) -> list[float]:
    """One document as the reference code scores it: its own forward pass, no padding."""
    logits = model(input_ids=torch.tensor([ids])).logits[0, :-1].double()
    log_probs = torch.log_softmax(logits, -1)
    token = log_probs.gather(-1, torch.tensor(ids[1:])[:, None]).squeeze(-1)
    probs = log_probs.exp()
    mu = (probs * log_probs).sum(-1)
    sigma = ((probs * log_probs**2).sum(-1) - mu**2).sqrt()
    z = (token - mu) / sigma
    n = max(1, int(k * len(token)))
    return [
        float(-token.mean()),
        float(-token.sum()) / len(zlib.compress(text.encode())),
        float(token.sort().values[:n].mean()),
        float(z.sort().values[:n].mean()),
    ]


def bench_mia(model, tokenizer, docs: list[list[int]], batch: int, repeats: int) -> tuple[float, float, float]:
    from fabricunlearn.metrics.mia import SCORES, mia_scores, token_statistics

    texts = [tokenizer.decode(d, skip_special_tokens=True) for d in docs]
    ratios, ours_s, theirs_s = [], [], []
    diff = 0.0
    for r in range(repeats):
        order = ("ours", "theirs") if r % 2 == 0 else ("theirs", "ours")
        times = {}
        for side in order:
            start = time.perf_counter()
            with torch.no_grad():
                if side == "ours":
                    stats = token_statistics(model, docs, tokenizer.pad_token_id, batch)
                    ours = [[mia_scores(s, t)[name] for name in SCORES] for s, t in zip(stats, texts)]
                else:
                    theirs = [original_scores(model, d, t) for d, t in zip(docs, texts)]
            times[side] = time.perf_counter() - start
        diff = max(diff, max(abs(a - b) for x, y in zip(ours, theirs) for a, b in zip(x, y)))
        ratios.append(times["theirs"] / times["ours"])
        ours_s.append(times["ours"])
        theirs_s.append(times["theirs"])
    print(
        f"MIA: {len(docs)} documents, ours {statistics.median(ours_s):.2f} s, originals "
        f"{statistics.median(theirs_s):.2f} s, x{statistics.median(ratios):.2f}; max |score diff| {diff:.1e}"
    )
    return statistics.median(ratios), statistics.median(ours_s), diff


def bench_sampling(model, tokenizer, tasks: dict, samples: int, repeats: int) -> float:
    from fabricunlearn.metrics.humaneval import sample_completions

    ratios = []
    for r in range(repeats):
        order = (50, 10) if r % 2 == 0 else (10, 50)
        times = {}
        for batch in order:
            start = time.perf_counter()
            sample_completions(model, tokenizer, tasks, samples=samples, batch_size=batch, seed=r)
            times[batch] = time.perf_counter() - start
        ratios.append(times[10] / times[50])
        print(f"  repeat {r}: batch 50 {times[50]:.2f} s, batch 10 {times[10]:.2f} s")
    n = len(tasks) * samples
    print(f"HumanEval sampling: {n} completions, batch 50 is x{statistics.median(ratios):.2f} the throughput of 10")
    return statistics.median(ratios)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--world", default="code_secrets")
    parser.add_argument("--samples", type=int, default=50)
    parser.add_argument("--problems", type=int, default=4)
    parser.add_argument("--document_batch_size", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from fabricunlearn.data.batches import tokenize_documents
    from fabricunlearn.data.formats import read_rows
    from fabricunlearn.metrics.humaneval import problems
    from fabricunlearn.models import load_model_and_tokenizer
    from fabricunlearn.toy import ensure_world

    world = ensure_world(args.world, REPO / ".cache" / "fabricunlearn" / args.world)
    model, tokenizer = load_model_and_tokenizer(world / "model")
    model.eval()
    rows = read_rows(world / "forget_0.jsonl") + read_rows(world / "unseen.jsonl")
    docs = tokenize_documents(tokenizer, rows, 512, False).input_ids
    print(f"world {args.world}, {sum(p.numel() for p in model.parameters()):,} parameters, {args.threads} thread(s)")
    _, _, diff = bench_mia(model, tokenizer, docs, args.document_batch_size, args.repeats)
    bench_sampling(model, tokenizer, problems(args.problems), args.samples, args.repeats)
    return 0 if diff <= 1e-6 else 1


if __name__ == "__main__":
    sys.exit(main())
