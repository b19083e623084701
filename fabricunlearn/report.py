"""The end of a run: evaluate the best model, write evaluation.json, report.md and its plots."""

from __future__ import annotations

import json
import math
from pathlib import Path

from fabricunlearn.data.formats import write_atomic, write_json, write_jsonl

_METRIC_KEYS = ("ma", "el3", "el5", "el10")
_MIA_KEYS = ("loss", "zlib", "min_k", "min_k_pp")
PASS_KEYS = ("pass@1", "pass@5", "pass@10")


def finish_run(fabric, model, rd, run, state: dict, rule, out_dir: Path) -> Path:
    """Restore the best model (the stopping rule's), evaluate it fully, and write the run's summary files."""
    from fabricunlearn.train.checkpoint import existing_checkpoint
    from fabricunlearn.train.evaluation import final_humaneval, validate

    best = existing_checkpoint(out_dir / "checkpoints" / "best.ckpt")
    if best is not None:
        fabric.load(best, {"model": model})
    after = validate(fabric, model, rd, run, epoch=rule.best_epoch, with_el=True, full=True)
    progress = run.log.progress_bar and fabric.global_rank == 0
    humaneval, samples, skipped = final_humaneval(fabric, model, rd, run, progress=progress)
    thresholds = {"ma": rule.ma_threshold, f"el{run.stop.el_n}": rule.el_threshold}
    evaluation = evaluation_record(after, thresholds, humaneval=humaneval, skipped=skipped)
    before = state["before"]
    earlier = evaluation_record(before, None)
    evaluation["before"] = {key: earlier[key] for key in ("forget", "kept", "retain", "mia")}
    evaluation["before"]["perplexity"] = before.get("unseen/perplexity")
    evaluation["before"]["humaneval"] = group(before, "humaneval", PASS_KEYS)
    evaluation["per_secret_ma"] = {  # what per_secret_ma.png shows, in the order of the sets' secrets
        name: {"before": before[key], "after": after[key]}
        for name, key in (("forget", "per_secret_ma"), ("kept", "per_secret_kept_ma"))
        if key in after
    }
    evaluation |= {
        "best_epoch": rule.best_epoch,
        "epochs": state["epoch"],
        "steps": state["step"],
        "stop_reason": rule.stop_reason,
        "seconds": round(state["seconds"], 1),
    }
    if fabric.global_rank == 0:
        write_json(out_dir / "evaluation.json", evaluation)
        if samples:
            write_jsonl(out_dir / "humaneval_samples.jsonl", samples)
        rows = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
        plots = write_plots(rows, before, after, rule.ma_threshold, rule.el_threshold, run.stop.el_n, out_dir)
        write_atomic(out_dir / "report.md", _markdown(run, evaluation, plots, out_dir))
        print(_summary(evaluation, out_dir))  # also without a progress bar: logs of batch jobs want the verdict
    fabric.barrier()
    return out_dir


def evaluation_record(
    row: dict, thresholds: dict[str, float] | None, *, humaneval: dict | None = None, skipped: list[str] = ()
) -> dict:
    """evaluation.json (DESIGN.md) from a full `validate` row. Forgotten means forget MA and EL_n below both
    thresholds (the paper's criterion), however a run stopped; null without thresholds or forget metrics."""
    forget = group(row, "forget")
    forgotten = None
    if thresholds is not None and forget is not None:
        forgotten = all(forget.get(k, math.inf) < v for k, v in thresholds.items())
    return {
        "forget": forget,
        "kept": group(row, "kept"),
        "retain": group(row, "retain"),
        "perplexity": row.get("unseen/perplexity"),
        "humaneval": humaneval,
        "mia": group(row, "mia", _MIA_KEYS),
        "thresholds": thresholds,
        "forgotten": forgotten,
        "skipped": list(skipped),
    }


def group(row: dict, prefix: str, keys: tuple[str, ...] = _METRIC_KEYS) -> dict | None:
    """`{ma, el3, ...}` of one set (or the MIA AUCs) from a `validate` row; None when the row does not have it."""
    found = {k: row[f"{prefix}/{k}"] for k in keys if f"{prefix}/{k}" in row}
    return found or None


def fmt(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def table_rows(ev: dict) -> list[tuple[str, float | None, float | None]]:
    """(name, before, after) for every number of an evaluation; `before` is None where there is none."""
    b = ev.get("before") or {}
    rows = []
    for name in ("forget", "kept", "retain"):
        if ev.get(name) is not None:
            earlier = b.get(name) or {}
            rows += [(f"{name} {key.upper()}", earlier.get(key), value) for key, value in ev[name].items()]
    if ev["perplexity"] is not None:
        rows.append(("unseen perplexity", b.get("perplexity"), ev["perplexity"]))
    if ev.get("mia") is not None:
        earlier = b.get("mia") or {}
        rows += [(f"MIA AUC {key}", earlier.get(key), value) for key, value in ev["mia"].items()]
    if ev.get("humaneval") is not None:
        earlier = b.get("humaneval") or {}
        rows += [(f"HumanEval {k}", earlier.get(k), v) for k, v in ev["humaneval"].items() if k in PASS_KEYS]
    return rows


def notes(ev: dict) -> list[str]:
    """What a reader should know beyond the numbers: what was not measured, completions that did not parse."""
    lines = [f"not measured: {why}" for why in ev["skipped"]]
    unparsable = (ev.get("humaneval") or {}).get("did_not_parse")
    if unparsable:
        total = ev["humaneval"]["problems"] * ev["humaneval"]["samples"]
        lines.append(f"HumanEval: {unparsable} of {total} completions did not parse (scored as failed)")
    return lines


def _summary(ev: dict, out_dir: Path) -> str:
    """The end-of-run lines a user reads in the terminal."""
    lines = [f"\n{'':22}{'before':>12}{'after':>12}"]
    lines += [f"{name:22}{fmt(before):>12}{fmt(after):>12}" for name, before, after in table_rows(ev)]
    verdict = "FORGOTTEN" if ev["forgotten"] else "not forgotten"
    thresholds = ", ".join(f"{k} < {v:.4f}" for k, v in ev["thresholds"].items())
    lines += notes(ev)
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
    for name, before, after in table_rows(ev):
        change = after - before if before is not None and after is not None else None
        lines.append(f"| {name} | {fmt(before)} | {fmt(after)} | {fmt(change)} |")
    lines += [
        "",
        "`kept`: memorized secrets outside the forget set (collateral damage shows here); `retain`: the retain set's "
        "sequence-level MA / EL_n; MIA AUC: how well each membership-inference score tells the forget set from "
        "unseen code (0.5 = not at all).",
        "",
    ]
    lines += [f"- {note}" for note in notes(ev)] + [""]
    lines += [f"![{Path(p).stem}]({p})" for p in plots]
    lines += ["", f"TensorBoard: `tensorboard --logdir {out_dir / 'tensorboard'}`", ""]
    recipe = out_dir / "hyperparameters.yaml"
    if recipe.is_file():
        lines += ["## Recipe", "", "`hyperparameters.yaml` (re-run it with `fabricunlearn run`):", "", "```yaml"]
        lines += [recipe.read_text().rstrip(), "```", ""]
    return "\n".join(lines)


def write_plots(rows, before, after, ma_threshold, el_threshold, el_n, out_dir: Path) -> list[str]:
    """The report's PNGs, named relative to `out_dir`."""
    plt = _pyplot()
    figures = {
        "memorization_per_epoch.png": memorization_figure(rows, ma_threshold, el_threshold, el_n),
        "per_secret_ma.png": per_secret_figure(before, after, ma_threshold),
    }
    for name, fig in figures.items():
        fig.savefig(out_dir / name, dpi=110)
        plt.close(fig)
    return list(figures)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def memorization_figure(rows: list[dict], ma_threshold: float, el_threshold: float, el_n: int):
    """Forget MA and EL_n, kept MA and retain MA per epoch (metrics.jsonl rows), against the thresholds."""
    plt = _pyplot()
    evals = [r for r in rows if "forget/ma" in r]
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    ax.plot([r["epoch"] for r in evals], [r["forget/ma"] for r in evals], "o-", label="forget MA")
    el_key = f"forget/el{el_n}"
    el_points = [(r["epoch"], r[el_key]) for r in evals if el_key in r]
    for k, run_ in enumerate(_consecutive(el_points)):  # EL is measured from the margin gate on, plus epoch 0
        ax.plot(*zip(*run_), "s-", color="C1", label=f"forget EL{el_n}" if k == 0 else None)
    for key, label, style in (("kept/ma", "kept MA", "^-C2"), ("retain/ma", "retain MA", "v-C4")):
        points = [(r["epoch"], r[key]) for r in evals if key in r]
        if points:
            ax.plot(*zip(*points), style, label=label, alpha=0.8)
    ax.axhline(ma_threshold, color="C0", linestyle="--", linewidth=1, label="MA threshold")
    ax.axhline(el_threshold, color="C1", linestyle=":", linewidth=1, label=f"EL{el_n} threshold")
    ax.set_xlabel("epoch (0 = before unlearning)")
    ax.set_ylabel("mean over secrets (retain: sequences)")
    ax.set_ylim(-0.02, 1.02)
    ax.legend(fontsize=8)
    ax.set_title("Memorization per epoch")
    fig.tight_layout()
    return fig


def per_secret_figure(before: dict, after: dict, ma_threshold: float):
    """Each secret's MA before (x) against after (y): forget-set secrets and kept secrets."""
    plt = _pyplot()
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
    return fig
