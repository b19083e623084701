"""The end of a run: evaluation.json with before and after, per-epoch forget / kept / retain metrics in metrics.jsonl
and TensorBoard, and a report whose plots are images of the run's own numbers."""

from __future__ import annotations

import json

import pytest

from fabricunlearn.cli import run
from tests.conftest import tiny_recipe


@pytest.fixture(scope="module")
def run_dir(tiny_world, tmp_path_factory):
    out = tmp_path_factory.mktemp("report") / "run"
    humaneval = {"eval.humaneval.samples": 2, "eval.humaneval.limit": 1, "eval.humaneval.max_length": 250}
    run(tiny_recipe(tiny_world, out, **humaneval, **{"eval.retain_el": "true"}))
    return out


def _rows(out) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_every_epoch_logs_forget_kept_and_retain_metrics(run_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    rows = _rows(run_dir)
    assert [r["epoch"] for r in rows] == [0, 1, 2, 3]
    for r in rows:
        assert {"forget/ma", "kept/ma", "retain/ma"} <= set(r)
    assert {"retain/el3", "mia/loss", "humaneval/pass@1", "unseen/perplexity"} <= set(rows[0])  # before: everything
    events = EventAccumulator(str(run_dir / "tensorboard")).Reload()
    for tag in ("forget/ma", "kept/ma", "retain/ma"):
        logged = [e.value for e in events.Scalars(tag)]
        assert logged == pytest.approx([r[tag] for r in rows], rel=1e-6), tag


def test_evaluation_json_has_before_and_after_of_everything(run_dir):
    ev = json.loads((run_dir / "evaluation.json").read_text())
    assert set(ev) >= {"forget", "retain", "perplexity", "humaneval", "mia", "thresholds", "forgotten", "before"}
    assert set(ev["retain"]) == {"ma", "el3", "el10"}  # the recipe's eval.el_ns plus the stopping rule's n
    assert set(ev["mia"]) == {"loss", "zlib", "min_k", "min_k_pp"}
    assert ev["humaneval"]["problems"] + len(ev["humaneval"]["skipped_problems"]) == 1
    before = ev["before"]
    assert before["retain"] == pytest.approx({k: _rows(run_dir)[0][f"retain/{k}"] for k in ("ma", "el3", "el10")})
    assert set(before["mia"]) == set(ev["mia"]) and set(before) >= {"forget", "kept", "perplexity", "humaneval"}
    best = next(r for r in _rows(run_dir) if r["epoch"] == ev["best_epoch"])
    assert ev["forget"]["ma"] == pytest.approx(best["forget/ma"])  # the final evaluation is of the best epoch


def test_report_shows_the_recipe_the_verdict_and_real_plots(run_dir):
    import matplotlib.image

    text = (run_dir / "report.md").read_text()
    ev = json.loads((run_dir / "evaluation.json").read_text())
    assert ev["stop_reason"] in text and "| retain MA |" in text and "| MIA AUC loss |" in text
    assert "## Recipe" in text and "name: gd" in text  # hyperparameters.yaml, inline
    for name in ("memorization_per_epoch.png", "per_secret_ma.png"):
        assert f"]({name})" in text
        pixels = matplotlib.image.imread(run_dir / name)
        assert pixels.ndim == 3 and pixels.shape[0] > 300 and pixels.shape[1] > 300
        assert pixels.std() > 0.05, f"{name} is blank"


def test_plots_draw_the_runs_numbers(run_dir):
    """The figures behind the PNGs, rebuilt from the run's files: every point is a number the run logged."""
    from fabricunlearn.report import memorization_figure, per_secret_figure

    rows = _rows(run_dir)
    ev = json.loads((run_dir / "evaluation.json").read_text())
    thresholds = list(ev["thresholds"].values())
    fig = memorization_figure(rows, *thresholds, el_n=10)
    lines = {line.get_label(): line for line in fig.axes[0].get_lines()}
    for label, key in (("forget MA", "forget/ma"), ("kept MA", "kept/ma"), ("retain MA", "retain/ma")):
        assert list(lines[label].get_xdata()) == [r["epoch"] for r in rows]
        assert list(lines[label].get_ydata()) == pytest.approx([r[key] for r in rows])
    assert lines["MA threshold"].get_ydata()[0] == pytest.approx(ev["thresholds"]["ma"])

    per_secret = ev["per_secret_ma"]
    assert per_secret["forget"]["before"] == pytest.approx(rows[0]["per_secret_ma"])
    before = {"per_secret_ma": per_secret["forget"]["before"], "per_secret_kept_ma": per_secret["kept"]["before"]}
    after = {"per_secret_ma": per_secret["forget"]["after"], "per_secret_kept_ma": per_secret["kept"]["after"]}
    fig = per_secret_figure(before, after, ev["thresholds"]["ma"])
    points = {c.get_label(): c.get_offsets() for c in fig.axes[0].collections}
    for label, name in (("forget set", "forget"), ("kept secrets", "kept")):
        assert points[label][:, 0].tolist() == pytest.approx(per_secret[name]["before"])
        assert points[label][:, 1].tolist() == pytest.approx(per_secret[name]["after"])
