"""`fabricunlearn evaluate`: the whole verdict on one model, written as evaluation.json.

It measures what a finished run reports (the same functions: `fabricunlearn.train.evaluation.validate`), for any
model: a run's `final/`, the original model, or a model unlearned elsewhere. Each part stands alone: a set that
cannot be read, or is empty, is reported in `skipped` with the reason, and the other parts still run.
"""

from __future__ import annotations

import sys
import types
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from fabricunlearn.commands.inference import Precision
from fabricunlearn.config import DataArgs, EvalArgs, HumanEvalArgs, StopArgs

T = TypeVar("T")


def evaluate(
    model: Path,
    recipe: Path | None = None,
    forget: Path | None = None,
    retain: Path | None = None,
    kept: Path | None = None,
    unseen: Path | None = None,
    thresholds: str | None = None,
    tokenizer: Path | None = None,
    out_dir: Path | None = None,
    humaneval: HumanEvalArgs = HumanEvalArgs(),
    batch_size: int | None = None,
    device: str = "auto",
    precision: Precision = "32",
    progress: bool = True,
    restart: bool = False,
) -> Path:
    """Evaluate a model (forgetting, collateral damage, utility, membership inference) and write evaluation.json.

    Forget / kept / retain MA and EL_n against the thresholds, perplexity on unseen code, membership inference of the
    forget set against unseen code, and HumanEval pass@1/5/10 (n = 50, T 0.2, top-p 0.95, 512 tokens; completions
    run in sandboxed child processes). The sets come from a recipe (a run's `hyperparameters.yaml` works) or from the
    flags, which override it. A set that cannot be used is reported under `skipped`; the rest still runs.

    Args:
        model: The Hugging Face model folder to evaluate, e.g. `runs/gd/version_0/final`.
        recipe: A recipe: its data sets (toy worlds included), thresholds and evaluation settings.
        forget: Forget set (scan rows): secret-level MA / EL_n, and the members for membership inference.
        retain: Retain set (corpus rows): sequence-level MA / EL_n of its first 128 tokens (should stay high).
        kept: Memorized secrets outside the forget set (scan rows): collateral forgetting.
        unseen: Held-out code (corpus rows): perplexity, and the non-members for membership inference.
        thresholds: A preset (e.g. `codegen-2b-mono`) or a thresholds.json (`fabricunlearn thresholds`).
        tokenizer: The tokenizer's folder when the model folder has none.
        out_dir: Where evaluation.json (and humaneval_samples.jsonl) go; default: beside a run's `final/`
            (`<run>/evaluation/`), else `evaluations/<model folder name>/`.
        humaneval: HumanEval settings (`--humaneval.samples 0` skips it; `--humaneval.limit 10` takes the first 10
            problems).
        batch_size: Secrets or documents per forward pass (default: the recipe's, else 64).
        device: `auto` (the first GPU, else the CPU), `cpu`, `cuda`, `cuda:1`, ...
        precision: Weights in `32`, `bf16` or `16`.
        progress: Show a progress bar while sampling HumanEval completions.
        restart: Sample HumanEval from the first problem again, even where an interrupted evaluation in `out_dir`
            left problems done (without it, those are kept and the rest is sampled, under the same settings).
    """
    from fabricunlearn.commands.inference import load_scoring_model
    from fabricunlearn.data.formats import write_json
    from fabricunlearn.report import evaluation_record
    from fabricunlearn.train.data import data_path
    from fabricunlearn.train.evaluation import final_humaneval, validate

    data, ev, stop, recipe_tokenizer = _recipe_settings(recipe)
    if batch_size is not None:
        ev.batch_size = batch_size
    ev.humaneval = humaneval
    if thresholds is not None:
        stop = StopArgs(thresholds=thresholds, el_n=stop.el_n)
    base = _world_dir(data)
    paths = {
        name: flag if flag is not None else data_path(data, getattr(data, name))
        for name, flag in (("forget", forget), ("retain", retain), ("kept", kept), ("unseen", unseen))
    }
    sm = load_scoring_model(model, tokenizer or recipe_tokenizer, device, precision)
    skipped: list[str] = []
    rd = _load_sets(sm, paths, data, ev, skipped, base)
    limits = _thresholds(stop, base, skipped)
    fabric = _single_device_fabric(sm.device)
    run = types.SimpleNamespace(eval=ev, stop=stop)  # what `validate` and `final_humaneval` read
    out = Path(out_dir) if out_dir is not None else _default_out_dir(Path(model))
    # before the measuring: settings that do not match an interrupted evaluation's fail now, not after it
    store = _humaneval_store(out, model, humaneval, restart) if humaneval.samples else None
    print(_plan(rd, sm.device), file=sys.stderr)  # the measuring below can take a while on a large model
    row = validate(fabric, sm.model, rd, run, epoch=None, with_el=True, full=True)
    scores, _, not_run = final_humaneval(fabric, sm.model, rd, run, progress=progress, store=store)
    if store is not None:
        store.close(finished=True)
    evaluation = evaluation_record(row, limits, humaneval=scores, skipped=skipped + not_run)
    evaluation["model"] = str(model)
    evaluation["sets"] = {name: str(path) if path is not None else None for name, path in paths.items()}
    write_json(out / "evaluation.json", evaluation)
    print(_summary(evaluation, out))
    return out


def _humaneval_store(out: Path, model: Path, args: HumanEvalArgs, restart: bool):
    """humaneval_samples.jsonl, written problem by problem: an interrupted evaluation resumes at the next problem.
    A finished file from an earlier evaluation is replaced. `limit` and `workers` may change between runs: the
    samples and outcomes do not depend on them."""
    from dataclasses import asdict

    from fabricunlearn.data.resumable import ResumableJSONL

    output = out / "humaneval_samples.jsonl"
    same = {k: v for k, v in asdict(args).items() if k not in ("limit", "workers")}
    settings = {"model": str(Path(model).resolve())} | same
    state = {"rows": 0, "bytes": 0, "last_doc_id": None}
    return ResumableJSONL(output, settings, state, restart=restart or output.exists(), what="HumanEval evaluation")


def _recipe_settings(recipe: Path | None) -> tuple[DataArgs, EvalArgs, StopArgs, str | None]:
    """The data, eval and stop groups of a recipe (defaults without one), and its tokenizer folder."""
    if recipe is None:
        return DataArgs(forget=None), EvalArgs(), StopArgs(), None
    from jsonargparse import ArgumentError

    from fabricunlearn.cli import one_line, run_parser

    if not Path(recipe).is_file():
        raise FileNotFoundError(f"--recipe {recipe}: no such file")
    parser = run_parser()
    try:
        cfg = parser.parse_args(["--config", str(recipe)])
    except ArgumentError as err:
        raise ValueError(f"recipe {recipe}: {one_line(str(err))}") from None
    init = parser.instantiate_classes(cfg)
    return init["data"], init["eval"], init["stop"], init["model"].tokenizer


def _world_dir(data: DataArgs) -> Path | None:
    """The toy world's folder, built first if the recipe names one that is not built yet."""
    if data.world is None:
        return None
    from fabricunlearn.toy import ensure_world
    from fabricunlearn.train.data import world_dir

    return ensure_world(data.world, world_dir(data), progress=True)


def _part(what: str, load: Callable[[], T], skipped: list[str]) -> T | None:
    """`load()`, or None with the reason in `skipped` when it fails on bad input (bugs still raise)."""
    from fabricunlearn.errors import user_error_message

    try:
        return load()
    except Exception as err:  # noqa: BLE001 - only errors a user can fix are caught; the rest re-raise
        message = user_error_message(err)
        if message is None:
            raise
        skipped.append(f"{what}: {message}")
        return None


def _load_sets(sm, paths: dict[str, Path | None], data: DataArgs, ev: EvalArgs, skipped: list[str], base):
    """A `RunData` with every set that could be read; what could not is explained in `skipped`."""
    from fabricunlearn.data.batches import tokenize_documents
    from fabricunlearn.data.formats import DataError, check_secret_row, read_rows, read_secret_rows
    from fabricunlearn.metrics.memorization import encode_secrets
    from fabricunlearn.metrics.sequence import encode_sequences
    from fabricunlearn.models import context_length
    from fabricunlearn.train.data import RunData

    positions = context_length(sm.model)
    max_length = min(data.max_length, positions or data.max_length)
    encode = dict(
        max_secret_tokens=ev.max_secret_tokens, max_prefix_tokens=ev.max_prefix_tokens, context_length=positions
    )

    def rows(name: str) -> list[dict]:
        path = paths[name]
        found = read_secret_rows(path) if name == "kept" else read_rows(path)
        if not found:
            raise DataError(f"{path} is empty")
        return found

    def secrets(found: list[dict]):
        for row in found:
            check_secret_row(paths["forget"], row)
        if not any(row["secrets"] for row in found):
            raise DataError(f"{paths['forget']} has no secrets")
        return encode_secrets(sm.tokenizer, found, **encode)

    loaded = {}
    for name, what in (
        ("forget", "forget set"),
        ("retain", "retain MA / EL_n"),
        ("kept", "kept MA / EL_n"),
        ("unseen", "perplexity and membership inference"),
    ):
        if paths[name] is None:
            skipped.append(f"{what}: no {name} set given (--{name})")
        else:
            loaded[name] = _part(what, lambda name=name: rows(name), skipped)
    forget_rows = loaded.get("forget")
    forget_secrets = _part("forget MA / EL_n", lambda: secrets(forget_rows), skipped) if forget_rows else None
    retain_rows, kept_rows, unseen_rows = (loaded.get(k) for k in ("retain", "kept", "unseen"))
    return RunData(
        model=sm.model,
        tokenizer=sm.tokenizer,
        pad_token_id=sm.pad_token_id,
        eos_token_id=sm.eos_token_id,
        # the forget texts serve membership inference even when their secret offsets are unusable
        forget=tokenize_documents(sm.tokenizer, forget_rows, max_length, False) if forget_rows else None,
        forget_secrets=forget_secrets,
        retain=None,
        retain_sequences=(
            encode_sequences(sm.tokenizer, [r["text"] for r in retain_rows], min(data.retain_max_length, max_length))
            if retain_rows
            else None
        ),
        kept_secrets=encode_secrets(sm.tokenizer, kept_rows, **encode) if kept_rows else None,
        unseen=tokenize_documents(sm.tokenizer, unseen_rows, max_length, False) if unseen_rows else None,
        world_dir=base,
    )


def _thresholds(stop: StopArgs, base: Path | None, skipped: list[str]) -> dict[str, float] | None:
    from fabricunlearn.config import RecipeError

    if stop.thresholds is None and stop.ma_threshold is None:
        skipped.append("forgotten verdict: no thresholds given (--thresholds PRESET or thresholds.json)")
        return None
    try:
        ma, el = stop.resolve(base)
    except RecipeError as err:
        skipped.append(f"forgotten verdict: {err}")
        return None
    return {"ma": ma, f"el{stop.el_n}": el}


def _single_device_fabric(device):
    """A one-process Fabric on the model's device: the evaluation functions are shared with the training loop."""
    import lightning as L

    if device.type == "cuda":
        return L.Fabric(accelerator="cuda", devices=[device.index or 0], precision="32-true")
    return L.Fabric(accelerator="cpu", devices=1, precision="32-true")


def _plan(rd, device) -> str:
    parts = []
    if rd.forget_secrets is not None:
        parts.append(f"{len(rd.forget_secrets)} forget secrets")
    if rd.kept_secrets is not None:
        parts.append(f"{len(rd.kept_secrets)} kept secrets")
    if rd.retain_sequences is not None:
        parts.append(f"{len(rd.retain_sequences)} retain documents")
    if rd.unseen is not None:
        parts.append(f"{len(rd.unseen)} unseen documents")
    return f"evaluate: measuring {', '.join(parts) or 'no set'} on {device}"


def _default_out_dir(model: Path) -> Path:
    if model.name == "final" and (model.parent / "hyperparameters.yaml").is_file():
        return model.parent / "evaluation"
    return Path("evaluations") / model.resolve().name


def _summary(ev: dict, out: Path) -> str:
    from fabricunlearn.report import fmt, notes, table_rows

    lines = [f"{'':26}{'value':>12}"]
    lines += [f"{name:26}{fmt(value):>12}" for name, _, value in table_rows(ev)]
    if ev["thresholds"] is not None:
        limits = ", ".join(f"{k} < {v:.4f}" for k, v in ev["thresholds"].items())
        verdict = {True: "FORGOTTEN", False: "not forgotten", None: "no forget metrics"}[ev["forgotten"]]
        lines.append(f"{verdict} (forget set {limits})")
    lines += notes(ev)
    lines.append(f"written: {out / 'evaluation.json'}")
    return "\n".join(lines)
