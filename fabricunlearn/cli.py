"""`fabricunlearn`: one command, one typed function per subcommand; docstrings are the `--help`.

    fabricunlearn run RECIPE [--train.lr 1e-4 ...]      unlearn with a YAML recipe (Fabric launches itself)
    fabricunlearn scan --input C --output O             find the secrets (emails, IPs, keys) of a corpus
    fabricunlearn probe --model M --data F --output O   score every secret of a scan file (MA, EL_n)
    fabricunlearn thresholds --model M [--data F]       memorization thresholds from unseen code
    fabricunlearn build-sets --model M --data P --corpus C --out_dir D   forget / kept / retain / unseen sets
    fabricunlearn evaluate --model M (--recipe R | --forget F ...)   MA/EL, perplexity, MIA, HumanEval
    fabricunlearn compare RUN_DIR [RUN_DIR ...]        one table (and plot) of finished runs
    fabricunlearn toy build code_secrets [--out_dir D]  build (or find cached) a toy world

Errors a user can fix (a bad recipe key, a missing file, a model folder that is not a causal LM) are printed as
one line naming the problem, with exit status 2; tracebacks are for bugs.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Literal


def toy_build(
    world: Literal["code_secrets", "code_secrets_ci"],
    out_dir: Path | None = None,
    rebuild: bool = False,
    progress: bool = True,
) -> None:
    """Build a toy world: a corpus of stdlib Python with planted fake secrets, and a small GPT-2 that memorized them.

    Writes `model/`, `corpus.jsonl`, `secrets.jsonl`, `unseen.jsonl`, `forget_<k>.jsonl`, `kept.jsonl`,
    `retain.jsonl`, `thresholds.json` and `world.json`. A world that is already built is reused.

    Args:
        world: `code_secrets` (the demo's, about 3 minutes on 2 cores) or `code_secrets_ci` (about 70 s).
        out_dir: Where to write it (default: `.cache/fabricunlearn/<world>`).
        rebuild: Build again even if a built world is there.
        progress: Show a progress bar.
    """
    import json

    from fabricunlearn.toy import ensure_world

    out = ensure_world(world, out_dir, progress=progress, rebuild=rebuild)
    manifest = json.loads((out / "world.json").read_text())
    print(
        f"{world}: {out}\n"
        f"  {manifest['parameters']:,} parameters, {manifest['documents']['secret']} secret documents, "
        f"{manifest['memorized_documents']} memorized (mean secret MA >= {manifest['spec']['memorized_ma']}), "
        f"forget sets {manifest['forget_sets']}, kept {manifest['kept_documents']}\n"
        f"  built in {manifest['seconds']['total']:.0f} s"
    )


def run_parser():
    from jsonargparse import ActionConfigFile, ArgumentParser

    from fabricunlearn.train.loop import setup

    parser = ArgumentParser(prog="fabricunlearn run", description=_first_paragraph(setup.__doc__), exit_on_error=False)
    parser.add_argument("--config", action=ActionConfigFile, help="A YAML recipe (may also be given first, bare).")
    parser.add_function_arguments(setup, as_group=False)
    return parser


def run(argv: list[str]) -> Path:
    """`fabricunlearn run RECIPE [--key value ...]`: parse, then launch the run."""
    from jsonargparse import ArgumentError

    from fabricunlearn.train.loop import setup

    if argv and not argv[0].startswith("-"):
        recipe = argv[0]
        if not Path(recipe).is_file():
            raise FileNotFoundError(f"recipe {recipe}: no such file")
        argv = ["--config", recipe, *argv[1:]]
    else:
        recipe = None
    parser = run_parser()
    try:
        cfg = parser.parse_args(argv)
    except ArgumentError as err:
        raise ValueError(f"recipe{' ' + recipe if recipe else ''}: {one_line(str(err))}") from None
    if cfg.get("name") is None and recipe is not None:
        cfg.name = Path(recipe).stem
    cfg.pop("config", None)
    init = parser.instantiate_classes(cfg)
    return setup(**{k: v for k, v in init.items() if k != "__path__"})


def _command(name: str):
    from importlib import import_module

    module = {
        "scan": "scan",
        "probe": "probe",
        "thresholds": "thresholds",
        "build-sets": "build_sets",
        "compare": "compare",
        "evaluate": "evaluate",
    }[name]
    return getattr(import_module(f"fabricunlearn.commands.{module}"), module)


def _bare_flags(args: list[str], command) -> list[str]:
    """`--restart` alone means `--restart true` for the command's bool options (jsonargparse wants the value)."""
    import inspect
    import typing

    hints = typing.get_type_hints(command)
    flags = {f"--{name}" for name in inspect.signature(command).parameters if hints.get(name) is bool}
    out = []
    for i, arg in enumerate(args):
        out.append(arg)
        if arg in flags and (i + 1 == len(args) or args[i + 1].startswith("--")):
            out.append("true")
    return out


def _first_paragraph(doc: str | None) -> str:
    return (doc or "").strip().split("\n\n")[0]


def one_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return " ".join(lines[:3])


USAGE = """usage: fabricunlearn {run,scan,probe,thresholds,build-sets,evaluate,compare,toy} ...

Find and erase memorized secrets (keys, tokens, emails, IPs) in code language models.

commands:
  run RECIPE [--key value ...]   unlearn a forget set as a YAML recipe says       (fabricunlearn run --help)
  scan --input C --output O      the secrets (emails, IPs, keys) of a corpus            (scan --help)
  probe --model M --data F --output O
                                 MA / EL_n of the model on every secret of a scan file    (probe --help)
  thresholds --model M [--data F]
                                 memorization thresholds from unseen code (HumanEval by default)
  build-sets --model M --data PROBED --corpus C --out_dir D
                                 forget / kept / retain / unseen sets from probed rows       (build-sets --help)
  evaluate --model M (--recipe R | --forget F --retain R --unseen U)
                                 forget / retain MA and EL_n, perplexity, membership inference and HumanEval
                                 pass@k of any model, as evaluation.json                  (evaluate --help)
  compare RUN_DIR [RUN_DIR ...]  forgetting, kept MA and perplexity of finished runs, side by side (compare --help)
  toy build WORLD                build, or reuse, a toy world for CPU runs        (fabricunlearn toy build --help)

examples:
  fabricunlearn run recipes/toy_code/gd.yaml --train.lr 1e-4
  fabricunlearn probe --model M --data secrets.jsonl --output probed.jsonl --metrics ma,el3,el5,el10
  fabricunlearn evaluate --model runs/gd/version_0/final --recipe runs/gd/version_0/hyperparameters.yaml
"""


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE, file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    if argv[0] not in ("run", "scan", "probe", "thresholds", "build-sets", "evaluate", "compare", "toy"):
        print(f"fabricunlearn: error: unknown command {argv[0]!r}\n\n{USAGE}", file=sys.stderr)
        return 2
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from jsonargparse import CLI, set_parsing_settings

    from fabricunlearn.errors import user_error_message

    set_parsing_settings(docstring_parse_attribute_docstrings=True)
    try:
        if argv[:1] == ["run"]:
            run(argv[1:])
            return 0
        # `toy build WORLD` takes its world as a positional; the other commands take every input as --name value.
        # Only the command asked for is imported (`scan` does not need torch).
        commands = {"toy": {"build": toy_build}} if argv[0] == "toy" else {argv[0]: _command(argv[0])}
        target = commands.get(argv[0])
        if callable(target):
            argv = [argv[0], *_bare_flags(argv[1:], target)]
        if argv[0] == "compare":  # RUN_DIR ... are bare; jsonargparse takes a list only as --runs JSON
            from fabricunlearn.commands.compare import runs_as_option

            argv = [argv[0], *runs_as_option(argv[1:])]
        CLI(commands, args=argv, prog="fabricunlearn", description=__doc__, as_positional=argv[0] == "toy")
        return 0
    except KeyboardInterrupt:
        kept = "completed checkpoints are kept" if argv[0] == "run" else "what was written is kept; run again to resume"
        print(f"interrupted; {kept}", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 - user errors become one line, bugs keep their traceback
        message = user_error_message(err)
        if message is None:
            raise
        print(f"fabricunlearn: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
