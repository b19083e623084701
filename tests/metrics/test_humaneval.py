"""HumanEval scoring: pass@k against hand-computed values, the canonical solutions pass and broken ones fail (alone and
through sampling from a model that memorized them), completions that loop forever or try to delete files are contained
in their child process, and sampling is seeded per problem and cut at the stop sequences."""

from __future__ import annotations

import textwrap

import pytest
import torch

from fabricunlearn.config import HumanEvalArgs
from fabricunlearn.metrics.humaneval import (
    STOP_SEQUENCES,
    execute,
    pass_at_k,
    problems,
    run_humaneval,
    sample_completions,
    truncate_at_stop,
)


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


def test_completions_end_at_the_first_stop_sequence():
    assert truncate_at_stop("    return x\n\ndef other():\n    pass\n") == "    return x\n"
    assert truncate_at_stop("    y = 1\nif __name__:\n\nclass A") == "    y = 1"
    assert truncate_at_stop("    return x\n") == "    return x\n"  # no stop sequence: all of it
    assert (
        truncate_at_stop("    # a comment inside the body\n    return 1")
        == "    # a comment inside the body\n    return 1"
    )


@pytest.fixture(scope="module")
def tokenizer(tiny_world):
    from fabricunlearn.models import load_tokenizer

    return load_tokenizer(tiny_world / "model")


def _random_model(tokenizer, n_positions: int = 512):
    from fabricunlearn.toy.pretrain import toy_gpt2

    torch.manual_seed(0)
    ids = dict(
        bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id
    )
    return toy_gpt2(len(tokenizer), n_positions=n_positions, n_embd=32, n_layer=2, n_head=2, **ids).eval()


def test_sampling_is_seeded_per_problem_and_leaves_the_random_state_alone(tokenizer):
    model = _random_model(tokenizer)
    settings = dict(samples=3, max_length=400, batch_size=2, seed=7)
    torch.manual_seed(123)
    state = torch.get_rng_state()
    two, skipped = sample_completions(model, tokenizer, problems(limit=2), **settings)
    assert torch.equal(torch.get_rng_state(), state)  # a run's training is not changed by sampling before it
    assert skipped == {} and [len(v) for v in two.values()] == [3, 3]
    one, _ = sample_completions(model, tokenizer, problems(limit=1), **settings)
    assert one["HumanEval/0"] == two["HumanEval/0"]  # --limit does not change a problem's samples
    again, _ = sample_completions(model, tokenizer, problems(limit=2), **settings)
    assert again == two
    other, _ = sample_completions(model, tokenizer, problems(limit=2), **(settings | {"seed": 8}))
    assert other != two
    assert not any(stop in text for texts in two.values() for text in texts for stop in STOP_SEQUENCES)


def test_a_prompt_that_leaves_no_room_is_skipped_with_its_reason(tokenizer):
    model = _random_model(tokenizer, n_positions=64)  # the context caps max_length
    completions, skipped = sample_completions(model, tokenizer, problems(limit=2), samples=2, max_length=512)
    assert completions == {}
    assert set(skipped) == {"HumanEval/0", "HumanEval/1"}
    assert "leaves no room within 64" in skipped["HumanEval/0"]


@pytest.mark.slow
def test_a_model_that_memorized_solutions_passes_them_and_fails_the_broken_one():
    """The whole pipeline (sampling at T 0.2, stop sequences, execution, pass@k) on a model trained to reproduce the
    canonical solutions of problems 0 and 1 and a wrong one for problem 2: pass@1 is exactly 2/3."""
    from transformers import AutoTokenizer

    from fabricunlearn.toy.pretrain import toy_gpt2
    from tests.conftest import REPO

    tok = AutoTokenizer.from_pretrained(REPO / ".cache/fabricunlearn/code_secrets_ci/model")
    tasks = problems(limit=3)
    solutions = [tasks["HumanEval/0"]["canonical_solution"], tasks["HumanEval/1"]["canonical_solution"]]
    texts = [p["prompt"].strip() + "\n" + s for p, s in zip(tasks.values(), [*solutions, "    return None\n"])]
    ids = [tok(t)["input_ids"] + [tok.eos_token_id] for t in texts]
    torch.manual_seed(0)
    special = dict(bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    model = toy_gpt2(len(tok), n_positions=512, n_embd=64, n_layer=2, n_head=2, **special)
    width = max(map(len, ids))
    batch = torch.tensor([i + [tok.pad_token_id] * (width - len(i)) for i in ids])
    mask = torch.tensor([[1] * len(i) + [0] * (width - len(i)) for i in ids])
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(400):
        loss = model(input_ids=batch, attention_mask=mask, labels=batch.masked_fill(mask == 0, -100)).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if loss.item() < 0.01:
            break
    summary, rows = run_humaneval(model.eval(), tok, HumanEvalArgs(samples=4, limit=3, timeout=5.0))
    by_task = {t: [r["result"] for r in rows if r["task_id"] == t] for t in tasks}
    assert by_task["HumanEval/0"] == ["passed"] * 4 and by_task["HumanEval/1"] == ["passed"] * 4
    assert all(r.startswith("failed") for r in by_task["HumanEval/2"])
    assert summary["pass@1"] == pytest.approx(2 / 3) and summary["problems"] == 3 and summary["did_not_parse"] == 0
