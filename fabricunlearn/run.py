"""Entry point for `fabric run fabricunlearn/run.py RECIPE [--key value ...]`.

`fabric run` takes a script path and starts the processes itself (torchrun); `setup` sees `LT_CLI_USED` and
neither builds a strategy nor calls `fabric.launch()`. Only Fabric's registry strategy names (ddp, fsdp,
deepspeed_stage_2, ...) pass through `fabric run`; configured presets need `fabricunlearn run`.

Give the launch settings to `fabric run` *before* the script: written after it, click still takes `--devices`,
`--accelerator`, `--strategy` and `--precision` as the launcher's own (recipe overrides such as `--train.lr` are
passed through). The run records what really ran in `hyperparameters.yaml`.
"""

import sys
from pathlib import Path

# Run as a script, Python puts this folder first on sys.path; drop it so no module here can shadow a standard one.
_here = str(Path(__file__).resolve().parent)
sys.path[:] = [p for p in sys.path if str(Path(p or ".").resolve()) != _here]

from fabricunlearn.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["run", *sys.argv[1:]]))
