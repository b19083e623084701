"""The end of a run: evaluate the best model, write evaluation.json, report.md and its plots."""

from __future__ import annotations

import json
import math
from pathlib import Path

from fabricunlearn.data.formats import write_atomic, write_json

_SECRET_KEYS = ("ma", "el3", "el5", "el10")


def finish_run(fabric, model, rd, run, state: dict, rule, out_dir: Path) -> Path:
    """Restore the best model (the stopping rule's), evaluate it fully, and write the run's summary files."""
    from fabricunlearn.train.checkpoint import existing_checkpoint
    from fabricunlearn.train.loop import validate

    best = existing_checkpoint(out_dir / "checkpoints" / "best.ckpt")
    if best is not None:
        fabric.load(best, {"model": model})
    after = validate(fabric, model, rd, run, epoch=rule.best_epoch, with_el=True, full=True)
    before = state["before"]
    ma_threshold, el_threshold = rule.ma_threshold, rule.el_threshold
    # Forgotten means below both thresholds (the paper's criterion), however the run stopped.
    forgotten = after["forget/ma"] < ma_threshold and after.get(f"forget/el{run.stop.el_n}", math.inf) < el_threshold
    evaluation = {
        "forget": _group(after, "forget"),
        "kept": _group(after, "kept") if "kept/ma" in after else None,
        "retain": None,  # sequence-level retain-set MA/EL: added with the evaluate command
        "perplexity": after.get("unseen/perplexity"),
        "humaneval": None,
        "mia": None,
        "thresholds": {"ma": ma_threshold, f"el{run.stop.el_n}": el_threshold},
        "forgotten": bool(forgotten),
        "before": {
            "forget": _group(before, "forget"),
            "kept": _group(before, "kept") if "kept/ma" in before else None,
            "perplexity": before.get("unseen/perplexity"),
        },
        "best_epoch": rule.best_epoch,
        "epochs": state["epoch"],
        "steps": state["step"],
        "stop_reason": rule.stop_reason,
        "seconds": round(state["seconds"], 1),
    }
    if fabric.global_rank == 0:
        write_json(out_dir / "evaluation.json", evaluation)
        rows = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
        plots = _plots(rows, before, after, ma_threshold, el_threshold, run.stop.el_n, out_dir)
        write_atomic(out_dir / "report.md", _markdown(run, evaluation, plots, out_dir))
        print(_summary(evaluation, out_dir))  # also without a progress bar: logs of batch jobs want the verdict
    fabric.barrier()
    return out_dir


def _group(row: dict, prefix: str) -> dict:
    return {k: row[f"{prefix}/{k}"] for k in _SECRET_KEYS if f"{prefix}/{k}" in row}


def _fmt(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def _table_rows(ev: dict) -> list[tuple[str, float | None, float | None]]:
    b = ev["before"]
    rows = []
    for group in ("forget", "kept"):
        if ev.get(group) is None or b.get(group) is None:
            continue
        rows += [(f"{group} {key.upper()}", b[group].get(key), after) for key, after in ev[group].items()]
    if ev["perplexity"] is not None:
        rows.append(("unseen perplexity", b["perplexity"], ev["perplexity"]))
    return rows


def _summary(ev: dict, out_dir: Path) -> str:
    """The end-of-run lines a user reads in the terminal."""
    lines = [f"\n{'':22}{'before':>12}{'after':>12}"]
    lines += [f"{name:22}{_fmt(before):>12}{_fmt(after):>12}" for name, before, after in _table_rows(ev)]
    verdict = "FORGOTTEN" if ev["forgotten"] else "not forgotten"
    thresholds = ", ".join(f"{k} < {v:.4f}" for k, v in ev["thresholds"].items())
    lines += [
        f"{verdict} ({thresholds}); {ev['stop_reason']}; best epoch {ev['best_epoch']} -> {out_dir / 'final'}",
        f"report: {out_dir / 'report.md'}",
        f"watch:  tensorboard --logdir {out_dir.parent}",
    ]
    return "\n".join(lines)


def _consecutive(points: list[tuple[int, float]]) -> list[list[tuple[int, float]]]:
    runs: list[list[tuple[int, float]]] = []
    for epoch, value in points:
        if runs and runs[-1][-1][0] == epoch - 1:
            runs[-1].append((epoch, value))
        else:
            runs.append([(epoch, value)])
    return runs


def _markdown(run, ev: dict, plots: list[str], out_dir: Path) -> str:
    lines = [
        f"# Unlearning run: {run.name or run.method.name}",
        "",
        f"- method: `{run.method.name}` {run.method.args or ''}",
        f"- model: `{run.model.path or (run.data.world and f'toy world {run.data.world}')}`",
        f"- forget set: `{run.data.forget}`; schedule `{run.train.schedule}`, lr {run.train.lr}",
        f"- stopped: {ev['stop_reason']}",
        f"- best epoch: {ev['best_epoch']} of {ev['epochs']} ({ev['steps']} optimizer steps, {ev['seconds']} s); "
        "it is `final/`",
        f"- **forgotten: {'yes' if ev['forgotten'] else 'no'}** (thresholds: "
        + ", ".join(f"{k} {v:.4f}" for k, v in ev["thresholds"].items())
        + ")",
        "",
        "| | before | after | change |",
        "|---|---|---|---|",
    ]
    for name, before, after in _table_rows(ev):
        change = after - before if before is not None and after is not None else None
        lines.append(f"| {name} | {_fmt(before)} | {_fmt(after)} | {_fmt(change)} |")
    lines += ["", "`kept`: memorized secrets outside the forget set (collateral damage shows here).", ""]
    lines += [f"![{Path(p).stem}]({p})" for p in plots]
    lines += ["", f"TensorBoard: `tensorboard --logdir {out_dir / 'tensorboard'}`", ""]
    return "\n".join(lines)


def _plots(rows, before, after, ma_threshold, el_threshold, el_n, out_dir: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    evals = [r for r in rows if "forget/ma" in r]
    epochs = [r["epoch"] for r in evals]
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    ax.plot(epochs, [r["forget/ma"] for r in evals], "o-", label="forget MA")
    el_key = f"forget/el{el_n}"
    el_points = [(r["epoch"], r[el_key]) for r in evals if el_key in r]
    for k, run_ in enumerate(_consecutive(el_points)):  # EL is measured from the margin gate on, plus epoch 0
        ax.plot(*zip(*run_), "s-", color="C1", label=f"forget EL{el_n}" if k == 0 else None)
    if any("kept/ma" in r for r in evals):
        ax.plot(
            [r["epoch"] for r in evals if "kept/ma" in r],
            [r["kept/ma"] for r in evals if "kept/ma" in r],
            "^-",
            color="C2",
            label="kept MA",
            alpha=0.8,
        )
    ax.axhline(ma_threshold, color="C0", linestyle="--", linewidth=1, label="MA threshold")
    ax.axhline(el_threshold, color="C1", linestyle=":", linewidth=1, label=f"EL{el_n} threshold")
    ax.set_xlabel("epoch (0 = before unlearning)")
    ax.set_ylabel("mean over secrets")
    ax.set_ylim(-0.02, 1.02)
    ax.legend(fontsize=8)
    ax.set_title("Memorization per epoch")
    fig.tight_layout()
    fig.savefig(out_dir / "memorization_per_epoch.png", dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(4.6, 4.4))
    for key, label, color in (("per_secret_kept_ma", "kept secrets", "C2"), ("per_secret_ma", "forget set", "C0")):
        if before.get(key):
            ax.scatter(before[key], after[key], s=18, color=color, label=label, alpha=0.8)
    ax.plot([0, 1], [0, 1], color="grey", linewidth=1)
    ax.axhline(ma_threshold, color="C0", linestyle="--", linewidth=1)
    ax.set_xlabel("MA before")
    ax.set_ylabel("MA after")
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(-0.02, 1.02)
    ax.set_title("Secret MA, before and after")
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(out_dir / "per_secret_ma.png", dpi=110)
    plt.close(fig)
    return ["memorization_per_epoch.png", "per_secret_ma.png"]
