"""`fabricunlearn compare`: the table holds the run files' numbers, runs are found below any folder, unfinished and
broken runs are skipped with a reason, and the CSV / markdown / PNG written are what the table says."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
import yaml

from fabricunlearn.cli import main
from fabricunlearn.commands.compare import compare
from tests.conftest import REPO

RUNS = {  # name: (method, args, lr, forget MA after, kept MA before, kept MA after, ppl before, ppl after)
    "gd": ("gd", {"retain_weight": 1.0}, 2e-4, 0.12, 0.99, 0.31, 650.0, 3600.0),
    "ga": ("ga", {}, 1e-4, 0.15, 0.98, 0.37, 650.0, 1700.0),
    "sscu": ("sscu", {"kl_weight": 0.1, "context_weight": 0.25}, 2e-4, 0.09, 0.99, 0.62, 650.0, 900.0),
}


def make_run(run_dir, method="gd", args=None, lr=2e-4, forget_ma=0.1, kept=(0.99, 0.3), ppl=(650.0, 3600.0), **extra):
    """A finished run directory, as `fabricunlearn run` leaves it (without the model)."""
    run_dir.mkdir(parents=True)
    recipe = {"name": method, "method": {"name": method, "args": args or {}}, "train": {"lr": lr, "seed": 42}}
    (run_dir / "hyperparameters.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False))
    rows = [{"epoch": 0, "forget/ma": 1.0, "kept/ma": kept[0]}, {"epoch": 1, "forget/ma": forget_ma, "step": 2}]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    evaluation = {
        "forget": {"ma": forget_ma, "el3": 0.0, "el5": 0.0, "el10": forget_ma / 100},
        "kept": {"ma": kept[1], "el10": 0.0},
        "retain": None,
        "perplexity": ppl[1],
        "humaneval": None,
        "mia": None,
        "thresholds": {"ma": 0.16, "el10": 6.4e-05},
        "forgotten": forget_ma < 0.16,
        "before": {"forget": {"ma": 1.0, "el10": 1.0}, "kept": {"ma": kept[0]}, "perplexity": ppl[0]},
        "best_epoch": 1,
        "epochs": 1,
        "steps": 2,
        "stop_reason": "forget MA below the threshold",
        "seconds": 3.5,
    }
    evaluation.update(extra)
    (run_dir / "evaluation.json").write_text(json.dumps(evaluation))
    return run_dir


@pytest.fixture
def runs(tmp_path):
    """runs/<name>/version_0 for the three RUNS, as `fabricunlearn run` lays them out by default."""
    for name, (method, args, lr, forget_ma, kb, ka, pb, pa) in RUNS.items():
        make_run(tmp_path / "runs" / name / "version_0", method, args, lr, forget_ma, (kb, ka), (pb, pa))
    return tmp_path / "runs"


def test_table_holds_the_numbers_of_the_files(runs, tmp_path, capsys):
    frame = compare([runs], out_dir=tmp_path / "out")
    assert sorted(frame["run"]) == sorted(f"{name}/version_0" for name in RUNS)
    assert len(frame) == len(RUNS)
    for name, (method, _, lr, forget_ma, kb, ka, pb, pa) in RUNS.items():
        row = frame.set_index("run").loc[f"{name}/version_0"]
        evaluation = json.loads((runs / name / "version_0" / "evaluation.json").read_text())
        assert row["method"] == method and row["lr"] == lr
        assert row["forget_ma"] == evaluation["forget"]["ma"] == forget_ma
        assert row["forget_el10"] == evaluation["forget"]["el10"]
        assert row["forgotten"] == (forget_ma < 0.16)
        assert (row["kept_ma_before"], row["kept_ma_after"]) == (kb, ka)
        assert row["kept_ma_change"] == pytest.approx(ka - kb, abs=1e-15)
        assert row["ppl_ratio"] == pytest.approx(pa / pb, rel=1e-15)
        assert math.isnan(row["retain_ma_change"]) and math.isnan(row["pass@1"])  # not measured in these runs
        assert (row["best_epoch"], row["steps"], row["seconds"], row["ma_threshold"]) == (1, 2, 3.5, 0.16)
    assert frame.set_index("run").loc["sscu/version_0", "args"] == "kl_weight=0.1 context_weight=0.25"

    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].split()[:4] == ["run", "method", "args", "lr"]
    gd_line = next(line for line in lines if line.startswith("gd/version_0"))
    assert f"{0.31 - 0.99:+.4f}" in gd_line and f"{3600 / 650:.2f}" in gd_line and "retain_weight=1" in gd_line
    assert len({len(line) for line in lines[:4]}) == 1  # aligned: header and rows have one width
    assert "MA threshold 0.1600 (every run)" in out


def test_files_written(runs, tmp_path):
    from matplotlib.image import imread

    frame = compare([runs], out_dir=tmp_path / "out")
    csv = pd.read_csv(tmp_path / "out" / "compare.csv", keep_default_na=True)
    assert list(csv.columns) == list(frame.columns) and len(csv) == len(RUNS)
    numeric = [c for c in frame.columns if c not in ("run", "method", "args", "forgotten")]
    pd.testing.assert_frame_equal(csv[numeric], frame[numeric].astype(float), check_dtype=False, rtol=0, atol=0)
    assert csv["forgotten"].tolist() == frame["forgotten"].tolist()
    assert csv["run"].tolist() == frame["run"].tolist()

    image = imread(tmp_path / "out" / "compare.png")
    assert image.ndim == 3 and image.shape[0] >= 300 and image.shape[1] >= 600 and image.shape[2] in (3, 4)
    assert image.std() > 0.01  # something is drawn

    markdown = (tmp_path / "out" / "compare.md").read_text()
    table = [line for line in markdown.splitlines() if line.startswith("|")]
    assert len(table) == 2 + len(RUNS)
    for name in RUNS:
        assert any(line.startswith(f"| {name}/version_0 | {RUNS[name][0]} |") for line in table)
    assert "![compare](compare.png)" in markdown
    assert not list((tmp_path / "out").glob(".*.tmp"))


@pytest.mark.parametrize("given", ["glob", "parents", "runs", "evaluation_files"])
def test_runs_are_found_below_any_folder(runs, given, capsys):
    (runs / "notes").mkdir()  # a folder without runs below `runs/` is not an error
    paths = {
        "glob": sorted(runs.glob("*")),  # what the shell gives for `runs/*`
        "parents": [runs / "gd", runs / "ga", runs / "sscu"],
        "runs": [runs / "gd" / "version_0", runs / "ga" / "version_0", runs / "sscu" / "version_0", runs / "gd"],
        "evaluation_files": sorted(runs.glob("*/version_0/evaluation.json")),
    }[given]
    assert main(["compare", *map(str, paths)]) == 0
    out, err = capsys.readouterr()
    rows = [line for line in out.splitlines() if "/version_0" in line]
    assert sorted(row.split()[0] for row in rows) == sorted(f"{name}/version_0" for name in RUNS)  # each once
    assert err == (
        f"compare: skipped {runs / 'notes'}: no run directory below it (no evaluation.json)\n" * (given == "glob")
    )


def test_version_folders_sort_naturally(tmp_path):
    for version in (10, 2, 1):
        make_run(tmp_path / "gd" / f"version_{version}", forget_ma=version / 100)
    frame = compare([tmp_path / "gd"])
    assert frame["run"].tolist() == ["version_1", "version_2", "version_10"]
    assert compare([tmp_path / "gd"], sort="forget_ma")["forget_ma"].tolist() == [0.01, 0.02, 0.1]


def test_unfinished_run_is_skipped_with_the_reason(runs, capsys):
    unfinished = runs / "gd" / "version_1"
    unfinished.mkdir()
    (unfinished / "hyperparameters.yaml").write_text("method: {name: gd}\n")
    (unfinished / "metrics.jsonl").write_text('{"epoch": 0, "forget/ma": 1.0}\n')
    assert main(["compare", str(runs)]) == 0
    captured = capsys.readouterr()
    assert f"skipped {unfinished}: no evaluation.json" in captured.err
    assert "version_1" not in captured.out
    assert sum("/version_0" in line for line in captured.out.splitlines()) == len(RUNS)


def test_no_run_is_an_error(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["compare", str(tmp_path / "empty"), str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert f"skipped {tmp_path / 'empty'}: no run directory below it" in err
    assert f"skipped {tmp_path / 'missing'}: no such file or directory" in err
    assert err.splitlines()[-1].startswith("fabricunlearn: error: no finished run to compare")
    assert main(["compare"]) == 2
    assert "no run directory given" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("file", "text", "message"),
    [
        ("evaluation.json", '{"forget": {"ma": 0.1', "evaluation.json: not JSON"),
        ("evaluation.json", "[1, 2]", "evaluation.json: not a run's evaluation (no forget.ma)"),
        ("evaluation.json", '{"forget": {"ma": "low"}}', "evaluation.json: forget.ma is not a number: 'low'"),
        ("hyperparameters.yaml", "method: {name: gd\n", "hyperparameters.yaml: not YAML"),
        ("hyperparameters.yaml", "train: {lr: fast}\n", "hyperparameters.yaml: train.lr is not a number: 'fast'"),
    ],
)
def test_broken_run_is_named_in_one_line(tmp_path, capsys, file, text, message):
    bad = make_run(tmp_path / "runs" / "bad")
    (bad / file).write_text(text)
    assert main(["compare", str(bad)]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert err[-1].startswith(f"fabricunlearn: error: no finished run to compare in {bad} ")
    assert err[0].startswith(f"compare: skipped {bad / file}") and message in err[0]

    make_run(tmp_path / "runs" / "good")  # the others are still compared
    assert main(["compare", str(tmp_path / "runs")]) == 0
    captured = capsys.readouterr()
    assert message in captured.err and captured.out.splitlines()[1].startswith("good ")


def test_retain_change_and_disagreeing_thresholds(tmp_path, capsys):
    before = {"retain": {"ma": 0.9}, "kept": None, "perplexity": None}
    measured = dict(mia={"loss": 0.61, "zlib": 0.6}, humaneval={"pass@1": 0.25, "problems": 4})
    make_run(tmp_path / "a", retain={"ma": 0.7}, before=before, **measured)
    make_run(tmp_path / "b", kept=(0.99, 0.5), thresholds={"ma": 0.2, "el10": 0.0})
    frame = compare([tmp_path / "a", tmp_path / "b"], out_dir=tmp_path / "out").set_index("run")
    assert frame.loc["a", "retain_ma_change"] == pytest.approx(0.7 - 0.9, abs=1e-15)
    assert (frame.loc["a", "mia_auc"], frame.loc["a", "pass@1"]) == (0.61, 0.25)
    assert math.isnan(frame.loc["a", "kept_ma_change"]) and math.isnan(frame.loc["a", "ppl_ratio"])
    assert math.isnan(frame.loc["b", "retain_ma_change"])
    out = capsys.readouterr().out
    assert "different MA thresholds: 0.1600 (a); 0.2000 (b)" in out
    assert "–" in next(line for line in out.splitlines() if line.startswith("a "))
    assert (tmp_path / "out" / "compare.png").stat().st_size > 0


def test_unknown_sort_column(runs, capsys):
    assert main(["compare", str(runs), "--sort", "kept"]) == 2
    assert "--sort: unknown column 'kept'" in capsys.readouterr().err


def test_help(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["compare", "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "RUN_DIR" in out and "compare.png" in out and "ppl_ratio" in out


@pytest.mark.slow
def test_two_real_runs(ci_world, tmp_path, capsys):
    for method in ("ga", "gd"):
        recipe = REPO / "recipes" / "toy_code" / f"{method}.yaml"
        world = ["--data.world", "code_secrets_ci", "--data.world_dir", str(ci_world)]
        out = ["--out_dir", str(tmp_path / "runs" / method), "--log.progress_bar", "false"]
        assert main(["run", str(recipe), *world, *out, "--stop.max_epochs", "1"]) == 0
    capsys.readouterr()
    assert main(["compare", *map(str, sorted((tmp_path / "runs").glob("*"))), "--out_dir", str(tmp_path / "cmp")]) == 0
    csv = pd.read_csv(tmp_path / "cmp" / "compare.csv").set_index("run")
    for method in ("ga", "gd"):
        evaluation = json.loads((tmp_path / "runs" / method / "evaluation.json").read_text())
        assert csv.loc[method, "method"] == method
        assert csv.loc[method, "forget_ma"] == evaluation["forget"]["ma"]
        kept_change = evaluation["kept"]["ma"] - evaluation["before"]["kept"]["ma"]
        assert csv.loc[method, "kept_ma_change"] == pytest.approx(kept_change, abs=1e-12)
        ppl_ratio = evaluation["perplexity"] / evaluation["before"]["perplexity"]
        assert csv.loc[method, "ppl_ratio"] == pytest.approx(ppl_ratio, rel=1e-12)
        if method == "gd":  # the ga recipe names no retain set
            retain_change = evaluation["retain"]["ma"] - evaluation["before"]["retain"]["ma"]
            assert csv.loc[method, "retain_ma_change"] == pytest.approx(retain_change, abs=1e-12)
        assert csv.loc[method, "mia_auc"] == pytest.approx(evaluation["mia"]["loss"], abs=1e-12)
