"""`fabricunlearn compare`: one table (and a plot) of finished unlearning runs, read from their run directories.

Only `evaluation.json` and `hyperparameters.yaml` are read, so comparing needs no model and no torch.
"""

from __future__ import annotations

import io
import json
import math
import os
import re
import sys
from pathlib import Path

import pandas as pd

from fabricunlearn.data.formats import DataError, write_atomic

COLUMNS = {
    "run": "run directory, relative to the runs' common parent",
    "method": "unlearning method (`method.name`)",
    "args": "method arguments (`method.args`)",
    "lr": "learning rate (`train.lr`)",
    "forget_ma": "forget-set MA after unlearning",
    "forget_el10": "forget-set EL10 after unlearning",
    "forgotten": "below both thresholds after unlearning",
    "kept_ma_before": "MA of memorized secrets outside the forget set, before",
    "kept_ma_after": "... after (collateral forgetting shows as a drop)",
    "kept_ma_change": "kept MA after - before",
    "retain_ma_change": "retain-set MA after - before (when evaluation.json has both)",
    "ppl_before": "unseen-set perplexity before",
    "ppl_after": "unseen-set perplexity after",
    "ppl_ratio": "unseen-set perplexity after / before (1 = unchanged)",
    "mia_auc": "membership-inference AUC (loss) of the forget set against unseen code, after (0.5: no trace)",
    "pass@1": "HumanEval pass@1 after (when the run measured it)",
    "ma_threshold": "the MA threshold the run was judged by",
    "best_epoch": "epoch of the evaluated (final/) model",
    "steps": "optimizer steps",
    "seconds": "training and per-epoch evaluation time",
}
_LEFT = {"run", "method", "args"}  # text columns are left-aligned, numbers right-aligned
_MARKERS = ("hyperparameters.yaml", "metrics.jsonl")  # a run directory before evaluation.json is written


def compare(runs: list[Path], out_dir: Path | None = None, sort: str = "run") -> pd.DataFrame:
    """Compare finished unlearning runs side by side: forgetting, collateral forgetting (kept MA) and perplexity.

    `--help` shows only the first line above, so each argument's text below says what it accepts.

    Args:
        runs: RUN_DIR ..., given bare: run directories or folders above them (`runs/`, `runs/gd` holding
            version_N, a glob such as `runs/*`). Every directory below holding an evaluation.json is a run;
            unfinished runs (no evaluation.json yet) and unreadable files are skipped with a line saying why.
        out_dir: Also write here compare.csv (full precision), compare.md (a markdown table) and compare.png
            (forget MA after against kept MA after, one point per run, with the MA threshold; perplexity change).
        sort: Column to sort by, ascending, missing values last: run, method, args, lr, forget_ma, forget_el10,
            forgotten, kept_ma_before, kept_ma_after, kept_ma_change, retain_ma_change, ppl_before, ppl_after,
            ppl_ratio, mia_auc, pass@1, ma_threshold, best_epoch, steps, seconds. "kept" = memorized secrets
            outside the forget set; *_change = after - before; ppl_ratio = unseen perplexity after / before;
            mia_auc = how well the loss tells the forget set from unseen code (0.5: no trace); – = not measured.
    """
    if sort not in COLUMNS:
        from fabricunlearn.config import RecipeError

        raise RecipeError(f"--sort: unknown column {sort!r}; one of {', '.join(COLUMNS)}")
    if not runs:
        raise DataError("no run directory given: fabricunlearn compare RUN_DIR [RUN_DIR ...]")
    found, skipped = find_runs(runs)
    rows, dirs = [], []
    for run_dir in found:
        try:
            rows.append(read_run(run_dir))
            dirs.append(run_dir)
        except DataError as err:
            skipped.append(str(err))
    for reason in skipped:
        print(f"compare: skipped {reason}", file=sys.stderr)
    if not rows:
        given = ", ".join(str(p) for p in runs)
        raise DataError(f"no finished run to compare in {given} (a run directory has an evaluation.json)")
    frame = pd.DataFrame(rows, columns=[c for c in COLUMNS if c != "run"])
    frame.insert(0, "run", _names(dirs))
    frame = frame.astype({"best_epoch": "Int64", "steps": "Int64"})  # integers that may be missing
    key = (lambda col: col.map(_natural)) if sort == "run" else None
    frame = frame.sort_values(sort, key=key, na_position="last", kind="stable").reset_index(drop=True)
    notes = _threshold_notes(frame)
    print(format_text(frame))
    for note in notes:
        print(note)
    if out_dir is not None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        write_atomic(out_dir / "compare.csv", frame.to_csv(index=False).encode())
        write_atomic(out_dir / "compare.md", format_markdown(frame, notes).encode())
        write_atomic(out_dir / "compare.png", plot(frame))
        print(f"wrote compare.csv, compare.md, compare.png -> {out_dir}")
    return frame


def find_runs(paths: list[Path]) -> tuple[list[Path], list[str]]:
    """Run directories below the paths (each once, in the order found) and the reasons paths were skipped."""
    found: dict[Path, Path] = {}
    skipped: list[str] = []
    for path in map(Path, paths):
        if path.is_file() and path.name == "evaluation.json":
            path = path.parent
        if not path.exists():
            skipped.append(f"{path}: no such file or directory")
            continue
        if not path.is_dir():
            skipped.append(f"{path}: not a directory")
            continue
        seen = len(skipped)
        for top, subdirs, files in os.walk(path):
            top_path = Path(top)
            if "evaluation.json" in files:
                found.setdefault(top_path.resolve(), top_path)
                seen += 1
            elif any(marker in files for marker in _MARKERS):
                skipped.append(f"{top_path}: no evaluation.json (unfinished or still running)")
            else:
                subdirs.sort(key=_natural)
                continue
            subdirs.clear()  # final/, checkpoints/ and tensorboard/ of a run hold no runs
        if seen == len(skipped):  # neither a run (maybe found before through another path) nor an unfinished one
            skipped.append(f"{path}: no run directory below it (no evaluation.json)")
    return list(found.values()), skipped


def read_run(run_dir: Path) -> dict:
    """One row of the table from a run's evaluation.json and hyperparameters.yaml; DataError names a bad file."""
    import yaml

    ev = _load(run_dir / "evaluation.json", json.loads, "not JSON")
    if not isinstance(ev, dict) or not isinstance(ev.get("forget"), dict) or "ma" not in ev["forget"]:
        raise DataError(f"{run_dir / 'evaluation.json'}: not a run's evaluation (no forget.ma)")
    hp_path = run_dir / "hyperparameters.yaml"
    hp = _load(hp_path, yaml.safe_load, "not YAML") if hp_path.is_file() else {}
    if not isinstance(hp, dict):
        raise DataError(f"{hp_path}: not a recipe (a YAML mapping)")
    method = hp.get("method") or {}
    before = ev.get("before") or {}

    def num(*keys: str, source: dict = ev) -> float:
        value = source
        for k in keys:
            value = value.get(k) if isinstance(value, dict) else None
        if value is None:
            return math.nan
        try:  # float(): YAML reads `lr: 2e-4` (no dot) as a string
            if not isinstance(value, bool):
                return float(value)
        except (TypeError, ValueError):
            pass
        file = hp_path if source is hp else run_dir / "evaluation.json"
        raise DataError(f"{file}: {'.'.join(keys)} is not a number: {value!r}")

    kept_before, kept_after = num("kept", "ma", source=before), num("kept", "ma")
    ppl_before, ppl_after = num("perplexity", source=before), num("perplexity")
    return {
        "method": method.get("name", "?") if isinstance(method, dict) else str(method),
        "args": _short_args(method.get("args") if isinstance(method, dict) else None),
        "lr": num("train", "lr", source=hp),
        "forget_ma": num("forget", "ma"),
        "forget_el10": num("forget", "el10"),
        "forgotten": bool(ev.get("forgotten")),
        "kept_ma_before": kept_before,
        "kept_ma_after": kept_after,
        "kept_ma_change": kept_after - kept_before,
        "retain_ma_change": num("retain", "ma") - num("retain", "ma", source=before),
        "ppl_before": ppl_before,
        "ppl_after": ppl_after,
        "ppl_ratio": ppl_after / ppl_before if ppl_before else math.nan,
        "mia_auc": num("mia", "loss"),
        "pass@1": num("humaneval", "pass@1"),
        "ma_threshold": num("thresholds", "ma"),
        "best_epoch": num("best_epoch"),
        "steps": num("steps"),
        "seconds": num("seconds"),
    }


def _load(path: Path, parse, what: str):
    try:
        return parse(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise DataError(f"{path}: not UTF-8") from None
    except Exception as err:  # noqa: BLE001 - json and yaml raise different errors; both mean a bad file
        first = next((ln.strip() for ln in str(err).splitlines() if ln.strip()), type(err).__name__)
        raise DataError(f"{path}: {what} ({first})") from None


def _short_args(args) -> str:
    if not isinstance(args, dict):
        return "" if args is None else str(args)
    return " ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={json.dumps(v)}" for k, v in args.items())


def _natural(text: str) -> tuple:
    """`version_2` before `version_10`."""
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", str(text)))


def _names(dirs: list[Path]) -> list[str]:
    resolved = [d.resolve() for d in dirs]
    parent = Path(os.path.commonpath(resolved)) if len(resolved) > 1 else resolved[0].parent
    return [(r.relative_to(parent).as_posix() if r != parent else r.name) for r in resolved]


def _threshold_notes(frame: pd.DataFrame) -> list[str]:
    groups = frame.dropna(subset=["ma_threshold"]).groupby("ma_threshold", sort=True)["run"].apply(list)
    if len(groups) <= 1:
        return [f"MA threshold {t:.4f} (every run)" for t in groups.index]
    parts = "; ".join(f"{t:.4f} ({', '.join(runs)})" for t, runs in groups.items())
    return [f"note: the runs were judged by different MA thresholds: {parts}"]


def _cell(column: str, value) -> str:
    if isinstance(value, str):
        return value
    if column == "forgotten":
        return "yes" if value else "no"
    if pd.isna(value):
        return "–"
    if column in ("best_epoch", "steps"):
        return str(int(value))
    return format(value, "+.4f" if column.endswith("_change") else _SPECS.get(column, ".4f"))


_SPECS = {"lr": "g", "ppl_before": ".1f", "ppl_after": ".1f", "ppl_ratio": ".2f", "seconds": ".1f"}


def _cells(frame: pd.DataFrame) -> list[list[str]]:
    return [[_cell(col, row[col]) for col in frame.columns] for _, row in frame.iterrows()]


def format_text(frame: pd.DataFrame) -> str:
    """The table as aligned plain text (the ma_threshold column is printed as a note instead)."""
    columns = [c for c in frame.columns if c != "ma_threshold"]
    cells = _cells(frame[columns])
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]

    def line(values: list[str]) -> str:
        return "  ".join(
            v.ljust(w) if c in _LEFT else v.rjust(w) for c, v, w in zip(columns, values, widths, strict=True)
        ).rstrip()

    return "\n".join([line(columns), *(line(r) for r in cells)])


def format_markdown(frame: pd.DataFrame, notes: list[str]) -> str:
    columns = list(frame.columns)
    lines = [
        f"# Comparison of {len(frame)} unlearning runs",
        "",
        "| " + " | ".join(columns) + " |",
        "|" + "|".join("---" if c in _LEFT else "---:" for c in columns) + "|",
    ]
    lines += ["| " + " | ".join(v.replace("|", "\\|") for v in row) + " |" for row in _cells(frame)]
    lines += ["", *notes, "", *(f"- `{c}`: {what}" for c, what in COLUMNS.items()), "", "![compare](compare.png)", ""]
    return "\n".join(lines)


def plot(frame: pd.DataFrame) -> bytes:
    """PNG: forget MA after against kept MA after per run, with the MA threshold(s); perplexity ratio per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4.6), gridspec_kw={"width_ratios": [3, 2]})
    methods = list(dict.fromkeys(frame["method"]))
    shown = frame.dropna(subset=["forget_ma", "kept_ma_after"])
    for i, method in enumerate(methods):
        part = shown[shown["method"] == method]
        ax.scatter(part["forget_ma"], part["kept_ma_after"], s=40, color=f"C{i % 10}", label=method, zorder=3)
    for _, row in shown.iterrows():
        ax.annotate(row["run"], (row["forget_ma"], row["kept_ma_after"]), xytext=(4, 4), textcoords="offset points")
    thresholds = sorted(frame["ma_threshold"].dropna().unique())
    for k, t in enumerate(thresholds):
        label = f"MA threshold {t:.3f}" + ("" if len(thresholds) == 1 else " (runs disagree)")
        ax.axvline(t, color="grey", linestyle=("--", ":", "-.")[k % 3], linewidth=1, label=label)
    for k, b in enumerate(sorted(frame["kept_ma_before"].dropna().unique())):
        ax.axhline(b, color="C2", linestyle=":", linewidth=1, alpha=0.6, label="kept MA before" if k == 0 else None)
    missing = len(frame) - len(shown)
    ax.set(
        title="Forgetting vs. collateral forgetting" + (f" ({missing} runs without kept MA)" if missing else ""),
        xlabel="forget MA after (left of the threshold = forgotten)",
        ylabel="kept MA after (higher = less collateral)",
        xlim=(-0.02, 1.02),
        ylim=(-0.02, 1.05),
    )
    ax.legend(fontsize=8, loc="lower right")

    ratios = frame.dropna(subset=["ppl_ratio"])
    if len(ratios):
        bx.barh(ratios["run"], ratios["ppl_ratio"], color="C1")
        bx.axvline(1.0, color="grey", linewidth=1)
        bx.invert_yaxis()
    else:
        bx.text(0.5, 0.5, "no unseen perplexity in these runs", ha="center", va="center", transform=bx.transAxes)
    bx.set(xlabel="unseen perplexity after / before", title="Perplexity change")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    return buffer.getvalue()


def runs_as_option(args: list[str]) -> list[str]:
    """`compare A B --sort x` -> `compare --sort x --runs '["A", "B"]'`: jsonargparse takes a list only as JSON."""
    runs, rest, i = [], [], 0
    while i < len(args):
        arg = args[i]
        if arg.startswith("-") and arg not in ("-h", "--help") and "=" not in arg and i + 1 < len(args):
            rest += [arg, args[i + 1]]  # every option of compare takes a value
            i += 2
            continue
        (rest if arg.startswith("-") else runs).append(arg)
        i += 1
    # No bare path and no --runs: an empty list, so that compare() says what is missing in one line.
    return rest if "--runs" in rest and not runs else [*rest, "--runs", json.dumps(runs)]
