"""HumanEval scoring: pass@k against hand-computed values, the canonical solutions pass and broken ones fail, and
completions that loop forever or try to delete files are contained in their child process."""

from __future__ import annotations

import textwrap

import pytest

from fabricunlearn.metrics.humaneval import execute, pass_at_k, problems


def test_pass_at_k_matches_hand_computed_values():
    # n = 5 samples, c = 2 correct: pass@1 = 2/5; pass@2 = 1 − C(3,2)/C(5,2) = 1 − 3/10
    outcomes = {"a": ["passed", "passed", "failed: x", "failed: x", "timed out"]}
    assert pass_at_k(outcomes, ks=(1, 2)) == pytest.approx({"pass@1": 0.4, "pass@2": 0.7})
    # a second task with c = 0 halves both; pass@5 of the first is 1
    outcomes["b"] = ["failed: y"] * 5
    got = pass_at_k(outcomes, ks=(1, 2, 5))
    assert got == pytest.approx({"pass@1": 0.2, "pass@2": 0.35, "pass@5": 0.5})
    assert "pass@10" not in pass_at_k(outcomes, ks=(10,))  # undefined with 5 samples per task


def test_canonical_solutions_pass_and_broken_ones_fail():
    tasks = problems(limit=8)
    assert list(tasks) == [f"HumanEval/{i}" for i in range(8)]
    canonical = execute(tasks, {t: [p["canonical_solution"]] for t, p in tasks.items()}, timeout=5.0)
    assert pass_at_k(canonical, ks=(1,)) == {"pass@1": 1.0}
    broken = execute(tasks, {t: ["    return None\n"] for t in tasks}, timeout=5.0)
    assert pass_at_k(broken, ks=(1,)) == {"pass@1": 0.0}
    unparsable = execute(tasks, {"HumanEval/0": ["    return (\n"]}, timeout=5.0)
    assert unparsable["HumanEval/0"][0].startswith("failed")


def test_a_completion_that_loops_or_deletes_files_is_contained(tmp_path):
    tasks = problems(limit=1)
    victim = tmp_path / "keep.txt"
    victim.write_text("still here")
    deleting = textwrap.indent(
        f"import os, shutil\nos.remove({str(victim)!r})\nshutil.rmtree({str(tmp_path)!r})\n", " " * 4
    )
    outcomes = execute(tasks, {"HumanEval/0": ["    while True:\n        pass\n", deleting]}, timeout=1.0)
    assert outcomes["HumanEval/0"][0] == "timed out"
    assert outcomes["HumanEval/0"][1].startswith("failed")  # os.remove is disabled inside the child
    assert victim.read_text() == "still here"


def test_unknown_tasks_are_refused():
    with pytest.raises(ValueError, match="unknown HumanEval tasks"):
        execute(problems(limit=1), {"HumanEval/999": ["    pass\n"]})
