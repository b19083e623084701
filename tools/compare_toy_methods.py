"""Run every toy recipe on the CI world and compare them: the table and plot in docs/methods.md.

    python tools/compare_toy_methods.py [--runs runs/toy_methods] [--out docs/methods_toy] [--world_dir D]

Finished runs are reused (delete a run's folder to redo it); `make methods-table` runs this.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from fabricunlearn.cli import main

REPO = Path(__file__).resolve().parents[1]
RECIPES = [
    "ga",
    "gd",
    "ga_kl",
    "random_labels",
    "adversarial_labels",
    "npo",
    "cu",
    "ssga",
    "sscu",
    "sscu_lora",
    "icu",
]


def run_all(runs: Path, world_dir: Path) -> None:
    for name in RECIPES:
        out = runs / name
        if (out / "evaluation.json").is_file():
            print(f"{name}: done before, reused")
            continue
        started = time.perf_counter()
        args = ["run", str(REPO / "recipes" / "toy_code" / f"{name}.yaml"), "--data.world", "code_secrets_ci"]
        args += ["--data.world_dir", str(world_dir), "--out_dir", str(out), "--resume", "false"]
        args += ["--log.progress_bar", "false", "--log.tensorboard", "false"]
        code = main(args)
        print(f"{name}: exit {code}, {time.perf_counter() - started:.0f} s wall")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=Path, default=REPO / "runs" / "toy_methods")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "methods_toy")
    parser.add_argument("--world_dir", type=Path, default=REPO / ".cache" / "fabricunlearn" / "code_secrets_ci")
    a = parser.parse_args()
    run_all(a.runs, a.world_dir)
    raise SystemExit(main(["compare", *(str(a.runs / n) for n in RECIPES), "--out_dir", str(a.out)]))
