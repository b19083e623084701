"""The recipes end to end on the CI world: the forget set is forgotten, and TensorBoard has the run's scalars."""

from __future__ import annotations

import json

import pytest

from fabricunlearn.cli import main
from tests.conftest import REPO

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("method", ["ga", "gd"])
def test_recipe_forgets_the_forget_set(ci_world, tmp_path, method):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / method
    recipe = REPO / "recipes" / "toy_code" / f"{method}.yaml"
    args = [
        "run",
        str(recipe),
        "--data.world",
        "code_secrets_ci",
        "--data.world_dir",
        str(ci_world),
        "--out_dir",
        str(out),
        "--log.progress_bar",
        "false",
    ]
    assert main(args) == 0

    evaluation = json.loads((out / "evaluation.json").read_text())
    thresholds = json.loads((ci_world / "thresholds.json").read_text())
    assert evaluation["before"]["forget"]["ma"] >= 0.9
    assert evaluation["forget"]["ma"] < thresholds["ma"]
    assert evaluation["forgotten"] is True
    assert "EL10" in evaluation["stop_reason"]

    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    accumulator = EventAccumulator(str(out / "tensorboard"))
    accumulator.Reload()
    tags = set(accumulator.Tags()["scalars"])
    expected = {
        "train/loss",
        "train/grad_norm",
        "train/lr",
        "train/tokens_per_s",
        "train/forget_nll",
        "forget/ma",
        "forget/el10",
        "kept/ma",
        "unseen/perplexity",
    }
    if method == "gd":
        expected.add("train/retain_nll")
    assert expected <= tags, expected - tags
    ma_events = accumulator.Scalars("forget/ma")
    assert [round(e.value, 6) for e in ma_events] == [round(r["forget/ma"], 6) for r in rows]
    assert len(accumulator.Scalars("train/loss")) == evaluation["steps"]
    assert all(e.value > 0 for e in accumulator.Scalars("train/lr"))


def test_pipeline_from_corpus_to_forgotten(ci_world, tmp_path):
    """scan -> probe -> build-sets -> run on the CI world, as `make demo` does on the demo world: the scanner finds
    the planted secrets, and the sets it leads to are unlearned below the thresholds."""
    pipe = tmp_path / "pipeline"
    model = str(ci_world / "model")
    steps = [
        ["scan", "--input", str(ci_world / "corpus.jsonl"), "--output", str(pipe / "secrets.jsonl")],
        ["probe", "--model", model, "--data", str(pipe / "secrets.jsonl"), "--output", str(pipe / "probed.jsonl")],
        ["build-sets", "--model", model, "--data", str(pipe / "probed.jsonl"), "--corpus",
         str(ci_world / "corpus.jsonl"), "--unseen", str(ci_world / "unseen.jsonl"), "--out_dir", str(pipe / "sets"),
         "--num_sets", "2", "--set_size", "4", "--min_secret_tokens", "8", "--retain_size", "16",
         "--retain_prefix_tokens", "32", "--retain_new_tokens", "32"],
    ]  # fmt: skip
    for step in steps:
        assert main([*step, "--progress", "false"]) == 0, step[0]
    found = {
        (row["doc_id"], s["start"], s["end"])
        for row in map(json.loads, (pipe / "secrets.jsonl").read_text().splitlines())
        for s in row["secrets"]
    }
    planted = {
        (row["doc_id"], s["start"], s["end"])
        for row in map(json.loads, (ci_world / "secrets.jsonl").read_text().splitlines())
        for s in row["secrets"]
    }
    assert found == planted
    out = tmp_path / "run"
    recipe = REPO / "recipes" / "toy_code" / "gd_pipeline.yaml"
    args = ["run", str(recipe), "--data.world", "code_secrets_ci", "--data.world_dir", str(ci_world)]
    args += ["--out_dir", str(out), "--log.progress_bar", "false"]
    for key in ("forget_0", "kept", "retain", "unseen"):
        args += [f"--data.{key.split('_')[0]}", str(pipe / "sets" / f"{key}.jsonl")]
    assert main(args) == 0
    evaluation = json.loads((out / "evaluation.json").read_text())
    assert evaluation["before"]["forget"]["ma"] >= 0.9 and evaluation["forgotten"] is True
