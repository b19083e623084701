"""Every method's recipe forgets the CI world's forget set, below its thresholds; the ones that keep the other
memorized secrets (at least half of their MA) are held to it. docs/methods.md has the numbers of every method."""

from __future__ import annotations

import json

import pytest

from fabricunlearn.cli import main
from tests.conftest import REPO

pytestmark = pytest.mark.slow

METHODS = ["ga", "ga_kl", "random_labels", "adversarial_labels", "cu", "ssga", "sscu", "sscu_lora", "icu", "npo"]
# The methods whose retain term is a KL to the original, weighted strongly, keep half of the kept secrets' MA on the
# toy; GD, ICU and NPO + GD drag them down with the forget set at every setting tried (docs/methods.md, "On the toy
# world"). gd is run by tests/train/test_toy_e2e.py.
KEEPS_HALF_OF_KEPT = {"sscu", "cu", "ga_kl"}


@pytest.mark.parametrize("recipe", METHODS)
def test_recipe_forgets(ci_world, tmp_path, recipe):
    out = tmp_path / recipe
    args = ["run", str(REPO / "recipes" / "toy_code" / f"{recipe}.yaml"), "--data.world", "code_secrets_ci"]
    args += ["--data.world_dir", str(ci_world), "--out_dir", str(out), "--log.progress_bar", "false"]
    assert main(args + ["--log.tensorboard", "false"]) == 0

    evaluation = json.loads((out / "evaluation.json").read_text())
    thresholds = json.loads((ci_world / "thresholds.json").read_text())
    before, kept_before = evaluation["before"]["forget"]["ma"], evaluation["before"]["kept"]["ma"]
    assert before >= 0.9 and kept_before >= 0.9  # the world memorized both sets
    assert evaluation["forget"]["ma"] < thresholds["ma"]
    assert evaluation["forget"]["el10"] < thresholds["el10"]
    assert evaluation["forgotten"] is True
    if recipe in KEEPS_HALF_OF_KEPT:
        assert evaluation["kept"]["ma"] >= 0.5 * kept_before, evaluation["kept"]
