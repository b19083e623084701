"""Loop overhead: fabricunlearn's optimizer step against a plain torch loop doing the same work, in one run.

Both sides train the same toy model on the same forget documents with gradient difference (ascent on forget,
descent on retain, per-token means over the step), AdamW, the same batches in the same order. Ours adds what a
user gets from the loop: the step plan and token normalisation over all micro-batches, Fabric's backward and
gradient-norm logging, and the per-step scalars. Goal: at most 5% overhead. Each block of steps is timed on
both sides back to back, in alternating order, so machine noise hits both alike; the median of the per-block
ratios decides, and the spread of the ratios is printed beside it.

    python tools/bench_loop.py [--world code_secrets_ci] [--steps 10] [--blocks 15]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--world", default="code_secrets_ci")
    parser.add_argument("--world_dir", default=None)
    parser.add_argument("--steps", type=int, default=10, help="optimizer steps per timed block")
    parser.add_argument("--blocks", type=int, default=15)
    parser.add_argument("--micro_batch_size", type=int, default=8)
    parser.add_argument("--accumulate", type=int, default=2)
    args = parser.parse_args()

    import lightning as L

    from fabricunlearn.config import DataArgs, EvalArgs, LogArgs, MethodArgs, ModelArgs, StopArgs, TrainArgs
    from fabricunlearn.methods import build_method
    from fabricunlearn.toy import ensure_world
    from fabricunlearn.train.data import load_run_data
    from fabricunlearn.train.loop import RunConfig, train_step
    from fabricunlearn.train.plan import plan_epoch

    world = ensure_world(args.world, args.world_dir, progress=True)
    train = TrainArgs(
        schedule="interleaved",
        micro_batch_size=args.micro_batch_size,
        accumulate=args.accumulate,
        lr=1e-4,
        shuffle=True,
    )
    run = RunConfig(
        ModelArgs(),
        DataArgs(world=args.world, world_dir=str(world), forget="secrets.jsonl", retain="retain.jsonl"),
        MethodArgs("gd"),
        train,
        EvalArgs(),
        StopArgs(),
        LogArgs(progress_bar=False, tensorboard=False),
        "cpu",
        1,
        1,
        "auto",
        "32-true",
        None,
        None,
        False,
    )
    fabric = L.Fabric(accelerator="cpu", devices=1, precision="32-true")
    method = build_method("gd", {})
    rd = load_run_data(fabric, run, needs_retain=True)
    global_batch = args.micro_batch_size * args.accumulate
    steps = []
    epoch = 0
    while len(steps) < args.steps * args.blocks * 2:
        epoch += 1
        steps += plan_epoch(
            schedule="interleaved",
            n_forget=len(rd.forget),
            n_retain=len(rd.retain),
            uses_retain=True,
            global_batch=global_batch,
            seed=0,
            epoch=epoch,
            shuffle=True,
        )

    # Both sides train a fresh copy, so that neither gets the better-placed original tensors.
    plain_model, ours_model = copy.deepcopy(rd.model), copy.deepcopy(rd.model)
    plain_opt = torch.optim.AdamW(plain_model.parameters(), lr=1e-4, betas=(0.9, 0.98), weight_decay=0.0)
    ours_opt = torch.optim.AdamW(ours_model.parameters(), lr=1e-4, betas=(0.9, 0.98), weight_decay=0.0)
    model, optimizer = fabric.setup(ours_model, ours_opt)

    def ours(block: list) -> float:
        started = time.perf_counter()
        for step in block:
            train_step(fabric, model, optimizer, method, None, rd, run, step)
        return time.perf_counter() - started

    def plain(block: list) -> float:
        started = time.perf_counter()
        for step in block:
            plain_step(plain_model, plain_opt, rd, step, args.micro_batch_size)
        return time.perf_counter() - started

    ours(steps[:3])  # warm-up both sides
    plain(steps[:3])
    t_ours, t_plain = [], []
    for b in range(args.blocks):
        block = steps[b * args.steps : (b + 1) * args.steps]
        if b % 2:
            t_plain.append(plain(block))
            t_ours.append(ours(block))
        else:
            t_ours.append(ours(block))
            t_plain.append(plain(block))
    ratios = sorted(o / p for o, p in zip(t_ours, t_plain))
    ratio = statistics.median(ratios)
    quartiles = statistics.quantiles(ratios, n=4)
    o, p = statistics.median(t_ours), statistics.median(t_plain)
    print(
        f"world {args.world}: {sum(x.numel() for x in plain_model.parameters()):,} parameters, gd, "
        f"micro-batch {args.micro_batch_size} x {args.accumulate} accumulated, "
        f"{args.steps} steps x {args.blocks} blocks"
    )
    print(f"plain torch loop : {1000 * p / args.steps:8.1f} ms/step")
    print(f"fabricunlearn    : {1000 * o / args.steps:8.1f} ms/step")
    print(f"overhead         : {100 * (ratio - 1):+8.1f} %   median of per-block ratios (goal: <= +5 %)")
    print(f"  quartiles      : {100 * (quartiles[0] - 1):+.1f} % .. {100 * (quartiles[2] - 1):+.1f} %")


def plain_step(model, optimizer, rd, step, micro_batch_size: int) -> None:
    """The same gradient-difference step written as a researcher would, without Fabric."""
    from fabricunlearn.data.batches import collate

    model.train()
    n_forget = sum(len(rd.forget.input_ids[i]) - 1 for i in step.forget)
    n_retain = sum(len(rd.retain.input_ids[i]) - 1 for i in step.retain)
    for k in range(0, len(step.forget), micro_batch_size):
        loss = 0.0
        for data, idx, norm, sign in (
            (rd.forget, step.forget, n_forget, -1.0),
            (rd.retain, step.retain, n_retain, 1.0),
        ):
            batch = collate(data, idx[k : k + micro_batch_size], rd.pad_token_id)
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            nll = torch.nn.functional.cross_entropy(
                logits[:, :-1].flatten(0, 1).float(),
                batch["labels"][:, 1:].flatten(),
                ignore_index=-100,
                reduction="sum",
            )
            loss = loss + sign * nll / norm
        loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


if __name__ == "__main__":
    main()
