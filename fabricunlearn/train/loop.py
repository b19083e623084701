"""The unlearning run: `setup` (the recipe's signature) -> `main` -> `fit` (epochs of optimizer steps) -> `validate`.

Read it top to bottom: `setup` builds Fabric and launches `main` on every process; `main` loads the model and
the data, restores a checkpoint if there is one, and calls `fit`; `fit` runs epochs, each a short list of
optimizer steps planned by `plan.py`, then `validate` and the stopping rule; the best model becomes `final/`.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import time
import warnings
from pathlib import Path
from typing import Literal

import torch
import yaml

from fabricunlearn.config import DataArgs, EvalArgs, LogArgs, MethodArgs, ModelArgs, StopArgs, TrainArgs
from fabricunlearn.train.data import RunData, load_run_data
from fabricunlearn.train.evaluation import final_humaneval, validate
from fabricunlearn.train.plan import plan_epoch, steps_per_epoch
from fabricunlearn.train.step import train_step
from fabricunlearn.train.stopping import StoppingRule


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint was kept."""


def setup(
    model: ModelArgs = ModelArgs(),
    data: DataArgs = DataArgs(),
    method: MethodArgs = MethodArgs(),
    train: TrainArgs = TrainArgs(),
    eval: EvalArgs = EvalArgs(),
    stop: StopArgs = StopArgs(),
    log: LogArgs = LogArgs(),
    accelerator: str = "auto",
    devices: int | str = 1,
    num_nodes: int = 1,
    strategy: str = "auto",
    precision: str = "32-true",
    name: str | None = None,
    out_dir: Path | None = None,
    resume: bool | Literal["auto"] = "auto",
) -> Path:
    """Unlearn a forget set from a causal LM and write the run directory.

    Args:
        model: The model to unlearn from.
        data: Forget, retain, kept and unseen sets, or a toy world that provides them.
        method: The unlearning method and its hyper-parameters.
        train: Optimizer, batching and schedule.
        eval: Per-epoch and final evaluation.
        stop: Thresholds and the CodeEraser stopping rule.
        log: TensorBoard, metrics.jsonl and the progress bar.
        accelerator: `cpu`, `gpu`/`cuda` or `auto`.
        devices: Processes (devices) per node.
        num_nodes: Nodes.
        strategy: `auto`, `ddp`, `fsdp`, `fsdp2`, `deepspeed_stage_2`, `deepspeed_stage_3` (see docs/scaling.md).
        precision: Fabric precision, e.g. `32-true`, `bf16-mixed`, `16-mixed`, `bf16-true`.
        name: Run name; with no `out_dir` the run goes to `runs/<name>/version_<N>` (default: the recipe's file name).
        out_dir: The run directory.
        resume: `auto` resumes from `out_dir/checkpoints/last.ckpt` when there is one; `true` requires it; `false`
            starts over.

    Returns the run directory.
    """
    import lightning as L
    from lightning.fabric.connector import _is_using_cli

    from fabricunlearn.strategies import build_strategy
    from fabricunlearn.train.data import model_layer_classes, resolve_model_path

    run = RunConfig(
        model,
        data,
        method,
        train,
        eval,
        stop,
        log,
        accelerator,
        devices,
        num_nodes,
        strategy,
        precision,
        name,
        out_dir,
        resume,
    )
    if data.world is not None:  # before any process group exists; concurrent processes wait on the world's lock
        from fabricunlearn.toy import ensure_world

        ensure_world(data.world, data.world_dir, progress=log.progress_bar)
    using_cli = _is_using_cli()
    if using_cli:  # `fabric run` decides the launch settings; explicit, differing values would raise in Fabric
        fabric = L.Fabric()
        # record what actually runs, so hyperparameters.yaml repeats it under `fabricunlearn run` too
        run.accelerator = os.environ.get("LT_ACCELERATOR", run.accelerator)
        run.num_nodes = int(os.environ.get("LT_NUM_NODES", 1))
        run.devices = int(os.environ.get("LT_DEVICES", fabric.world_size // run.num_nodes))
        run.strategy = os.environ.get("LT_STRATEGY", run.strategy)
        run.precision = os.environ.get("LT_PRECISION", run.precision)
    else:
        layers = model_layer_classes(resolve_model_path(model, data)) if strategy in ("fsdp", "fsdp2") else None
        fabric = L.Fabric(
            accelerator=accelerator,
            devices=devices,
            num_nodes=num_nodes,
            strategy=build_strategy(strategy, accelerator, layers),
            precision=precision,
        )
        fabric.launch()
    return main(fabric, run)


@dataclasses.dataclass
class RunConfig:
    model: ModelArgs
    data: DataArgs
    method: MethodArgs
    train: TrainArgs
    eval: EvalArgs
    stop: StopArgs
    log: LogArgs
    accelerator: str
    devices: int | str
    num_nodes: int
    strategy: str
    precision: str
    name: str | None
    out_dir: Path | None
    resume: bool | str

    def dump(self) -> dict:
        """The recipe as `hyperparameters.yaml` holds it: re-running it starts the same run in a new directory."""
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[f.name] = dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value
        out["train"]["betas"] = list(out["train"]["betas"])
        out["out_dir"] = None
        out["resume"] = "auto"
        return out


def _resolve_out_dir(fabric, run: RunConfig) -> Path:
    """Rank 0 picks the directory (the next free `runs/<name>/version_<N>`) and tells the others."""
    out = None
    if fabric.global_rank == 0:
        if run.out_dir is not None:
            out = Path(run.out_dir)
        else:
            base = Path("runs") / (run.name or run.method.name)
            n = 0
            while (base / f"version_{n}").exists():
                n += 1
            out = base / f"version_{n}"
        out.mkdir(parents=True, exist_ok=True)
        out = str(out.resolve())
    return Path(fabric.broadcast(out))


def main(fabric, run: RunConfig) -> Path:
    from lightning.fabric.loggers import TensorBoardLogger

    from fabricunlearn.methods import build_method
    from fabricunlearn.train.checkpoint import existing_checkpoint

    fabric.seed_everything(run.train.seed, verbose=False)
    method = build_method(run.method.name, run.method.args)
    lora = run.model.lora
    if lora.enabled:
        from fabricunlearn.lora import check_lora, prepare_lora_model

        check_lora(fabric, lora)  # QLoRA without CUDA or bitsandbytes fails here, before any weights are read
    rd = load_run_data(fabric, run, needs_retain=method.needs_retain_data)
    if lora.enabled:  # adapters go on before Fabric sets the model up: only they train
        rd.model = prepare_lora_model(fabric, run, rd.model)
    method.prepare(fabric, rd)
    ma_threshold, el_threshold = run.stop.resolve(rd.world_dir)
    # Only now, with every input checked, does the run directory appear.
    out_dir = _resolve_out_dir(fabric, run)
    if run.log.tensorboard:
        fabric.loggers.append(TensorBoardLogger(root_dir=out_dir, name="tensorboard", version=""))
    if fabric.global_rank == 0:
        (out_dir / "hyperparameters.yaml").write_text(yaml.safe_dump(run.dump(), sort_keys=False))
    reference = None
    if method.needs_reference and not lora.enabled:
        from fabricunlearn.models import make_reference

        reference = fabric.to_device(make_reference(rd.model))
    model, optimizer = _setup_model_and_optimizer(fabric, run.train, rd.model)
    if method.needs_reference and lora.enabled:  # the same model with its adapters off: no second copy
        from fabricunlearn.lora import AdapterDisabledReference

        reference = AdapterDisabledReference(model, rd.model)
    scheduler = _scheduler(run, optimizer, rd, method, fabric.world_size)
    rule = StoppingRule(ma_threshold, el_threshold, run.stop.el_n, run.stop.margin, run.stop.patience)
    state = {
        "model": model,
        "optimizer": optimizer,
        "scheduler": scheduler,
        "epoch": 0,
        "step": 0,
        "stopping": rule.state_dict(),
        "before": None,
        "best": None,
        "seconds": 0.0,
        "method": method.state_dict(),
    }

    ckpt = existing_checkpoint(out_dir / "checkpoints" / "last.ckpt")
    if run.resume is True and ckpt is None:
        raise FileNotFoundError(f"resume: no checkpoint in {out_dir / 'checkpoints'}")
    records = _Records(fabric, out_dir)
    if run.resume and ckpt is not None:
        fabric.load(ckpt, state)
        rule.load_state_dict(state["stopping"])
        method.load_state_dict(state["method"])
        records.metrics.truncate_after(state["epoch"])
        fabric.print(f"Resumed from {ckpt} at epoch {state['epoch']} (step {state['step']}).")
    else:
        records.metrics.truncate_after(-1)
        state["before"] = validate(fabric, model, rd, run, epoch=0, with_el=True, full=True)
        state["before"].update(method.end_epoch(fabric, model, rd, 0))
        if run.eval.humaneval.samples:  # pass@k before, to set the final one against
            from fabricunlearn.report import PASS_KEYS

            scores, _, _ = final_humaneval(fabric, model, rd, run, progress=run.log.progress_bar)
            state["before"].update({f"humaneval/{k}": v for k, v in (scores or {}).items() if k in PASS_KEYS})
        records.log_eval(state["before"], step=0)

    fit(fabric, model, optimizer, scheduler, method, reference, rd, run, state, rule, records, out_dir)

    from fabricunlearn.report import finish_run

    return finish_run(fabric, model, rd, run, state, rule, out_dir)


class _Records:
    """metrics.jsonl (rank 0) and TensorBoard scalars, written together."""

    def __init__(self, fabric, out_dir: Path) -> None:
        from fabricunlearn.train.records import MetricsFile

        self.fabric = fabric
        self.metrics = MetricsFile(out_dir / "metrics.jsonl", enabled=fabric.global_rank == 0)

    def log_eval(self, row: dict, step: int) -> None:
        self.metrics.append(row)
        self.fabric.log_dict({k: v for k, v in row.items() if "/" in k and _finite(v)}, step=step)


def _finite(v) -> bool:
    return isinstance(v, int | float) and math.isfinite(v)


def fit(fabric, model, optimizer, scheduler, method, reference, rd: RunData, run, state, rule, records, out_dir):
    from tqdm.auto import tqdm

    from fabricunlearn.models import export_pretrained
    from fabricunlearn.train.checkpoint import save_checkpoint

    tr = run.train
    global_batch = tr.micro_batch_size * tr.accumulate * fabric.world_size
    n_retain = len(rd.retain) if rd.retain is not None else 0
    per_epoch = steps_per_epoch(tr.schedule, len(rd.forget), n_retain, method.uses_retain, global_batch)
    bar = tqdm(
        total=run.stop.max_epochs * per_epoch,
        initial=state["epoch"] * per_epoch,
        desc="unlearning",
        unit="step",
        disable=not (run.log.progress_bar and fabric.global_rank == 0),
        dynamic_ncols=True,
        mininterval=0.5,
    )
    ckpt_path = out_dir / "checkpoints" / "last.ckpt"

    def snapshot() -> dict:
        return state | {"stopping": rule.state_dict(), "method": method.state_dict()}

    while rule.stop_reason is None and state["epoch"] < run.stop.max_epochs:
        epoch_started = time.perf_counter()
        epoch = state["epoch"] + 1
        plan = plan_epoch(
            schedule=tr.schedule,
            n_forget=len(rd.forget),
            n_retain=n_retain,
            uses_retain=method.uses_retain,
            global_batch=global_batch,
            seed=tr.seed,
            epoch=epoch,
            shuffle=tr.shuffle,
        )
        done_in_epoch = state["step"] - (epoch - 1) * per_epoch
        for k, step in enumerate(plan):
            if k < done_in_epoch:  # resumed mid-epoch: these steps are already in the weights
                continue
            logs = train_step(fabric, model, optimizer, method, reference, rd, run, step)
            if not math.isfinite(logs["train/loss"]) or not math.isfinite(logs["train/grad_norm"]):
                bar.close()
                raise TrainingDiverged(
                    f"epoch {epoch} step {state['step'] + 1}: loss {logs['train/loss']}, grad norm "
                    f"{logs['train/grad_norm']}; stopped without updating; the last good checkpoint is {ckpt_path}"
                )
            with warnings.catch_warnings():  # a skipped step (nothing to learn from) still advances the schedule
                warnings.filterwarnings("ignore", message=re.escape("Detected call of `lr_scheduler.step()` before"))
                scheduler.step()
            state["step"] += 1
            bar.update(1)
            bar.set_postfix(epoch=epoch, loss=f"{logs['train/loss']:.3f}")
            if state["step"] % run.log.every_n_steps == 0:
                fabric.log_dict(logs, step=state["step"])
            if tr.save_every_steps and state["step"] % tr.save_every_steps == 0 and k + 1 < len(plan):
                save_checkpoint(fabric, ckpt_path, snapshot())
        row = validate(fabric, model, rd, run, epoch=epoch, with_el=rule.needs_el, full=False)
        row.update(method.end_epoch(fabric, model, rd, epoch))
        el = row.get(f"forget/el{run.stop.el_n}")
        improved = rule.update(epoch, row["forget/ma"], el)
        if rule.stop_reason is None and method.done:
            rule.stop_reason = method.done
        row.update({"step": state["step"], "best_epoch": rule.best_epoch, "el_gate_open": rule.el_gate_open})
        if improved:
            export_pretrained(fabric, model, rd.model, rd.tokenizer, out_dir / "final")
            save_checkpoint(fabric, out_dir / "checkpoints" / "best.ckpt", {"model": model})
            state["best"] = row
        records.log_eval(row, step=state["step"])
        bar.set_postfix(epoch=epoch, ma=f"{row['forget/ma']:.3f}", best=rule.best_epoch)
        state["epoch"] = epoch
        state["seconds"] += time.perf_counter() - epoch_started  # training + per-epoch evaluation, across resumes
        save_checkpoint(fabric, ckpt_path, snapshot())
    bar.close()
    if rule.stop_reason is None:
        rule.stop_reason = f"reached stop.max_epochs = {run.stop.max_epochs} without meeting the thresholds"


def _setup_model_and_optimizer(fabric, tr: TrainArgs, model: torch.nn.Module):
    from lightning.fabric.strategies import DeepSpeedStrategy

    if isinstance(fabric.strategy, DeepSpeedStrategy):  # DeepSpeed builds its engine from both at once
        return fabric.setup(model, _optimizer(tr, model))
    # FSDP replaces the parameters with sharded ones: the optimizer must be built on those
    model = fabric.setup_module(model)
    return model, fabric.setup_optimizers(_optimizer(tr, model))


def _optimizer(tr: TrainArgs, model: torch.nn.Module) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if tr.optimizer == "sgd":
        return torch.optim.SGD(params, lr=tr.lr, weight_decay=tr.weight_decay)
    cls = torch.optim.AdamW if tr.optimizer == "adamw" else torch.optim.Adam
    return cls(params, lr=tr.lr, betas=tuple(tr.betas), eps=tr.eps, weight_decay=tr.weight_decay)


def _scheduler(run, optimizer, rd: RunData, method, world_size: int):
    tr = run.train
    global_batch = tr.micro_batch_size * tr.accumulate * world_size
    n_retain = len(rd.retain) if rd.retain is not None else 0
    total = run.stop.max_epochs * steps_per_epoch(
        tr.schedule, len(rd.forget), n_retain, method.uses_retain, global_batch
    )

    def factor(step: int) -> float:
        if step < tr.warmup_steps:
            return (step + 1) / (tr.warmup_steps + 1)
        if tr.lr_schedule == "constant":
            return 1.0
        progress = min(1.0, (step - tr.warmup_steps) / max(1, total - tr.warmup_steps))
        return 1.0 - progress if tr.lr_schedule == "linear" else 0.5 * (1 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
