"""What a user sees: `--help` that answers, and one clear line (exit 2) for every input they can get wrong."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fabricunlearn.cli import main
from tests.conftest import tiny_recipe

RECIPES = sorted((Path(__file__).resolve().parents[2] / "recipes").rglob("*.yaml"))


def _error_line(capsys) -> str:
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1, err
    assert err[0].startswith("fabricunlearn: error: ")
    return err[0]


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_every_recipe_parses(recipe):
    from fabricunlearn.cli import run_parser

    parser = run_parser()
    cfg = parser.parse_args(["--config", str(recipe)])
    init = parser.instantiate_classes(cfg)  # runs every group's validation
    assert init.method.name
    assert init.data.world or init.model.path


def test_recipes_exist_for_both_foundation_methods():
    names = {p.stem for p in RECIPES if p.parent.name == "toy_code"}
    assert {"ga", "gd"} <= names


def test_run_help_documents_the_recipe_keys(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["run", "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    for key in ("--train.schedule", "--stop.thresholds", "--method.name", "--strategy", "--data.world"):
        assert key in out
    assert "CodeEraser's epoch" in out  # attribute docstrings reach --help


def test_toy_build_help(capsys):
    with pytest.raises(SystemExit):
        main(["toy", "build", "--help"])
    assert "code_secrets_ci" in capsys.readouterr().out


def test_missing_recipe(tmp_path, capsys):
    assert main(["run", str(tmp_path / "nope.yaml")]) == 2
    assert "nope.yaml" in _error_line(capsys)


def test_malformed_recipe(tmp_path, capsys):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text("train:\n  lr: [unclosed\n")
    assert main(["run", str(recipe)]) == 2
    assert "bad.yaml" in _error_line(capsys)


def test_unknown_key(tmp_path, capsys):
    recipe = tmp_path / "typo.yaml"
    recipe.write_text("train:\n  learning_rate: 0.1\n")
    assert main(["run", str(recipe)]) == 2
    assert "learning_rate" in _error_line(capsys)


def test_unknown_method(tiny_world, tmp_path, capsys):
    assert main(["run", *tiny_recipe(tiny_world, tmp_path / "r", **{"method.name": "sorcery"})]) == 2
    line = _error_line(capsys)
    assert "method.name" in line and "sorcery" in line and "'ga'" in line


def test_unknown_method_argument(tiny_world, tmp_path, capsys):
    args = tiny_recipe(tiny_world, tmp_path / "r", **{"method.args": '{"retain_wieght": 2}'})
    assert main(["run", *args]) == 2
    assert "retain_wieght" in _error_line(capsys)


def test_invalid_value_names_its_key(tiny_world, tmp_path, capsys):
    assert main(["run", *tiny_recipe(tiny_world, tmp_path / "r", **{"train.micro_batch_size": 0})]) == 2
    assert "train.micro_batch_size" in _error_line(capsys)


def test_model_folder_that_is_not_a_causal_lm(tiny_world, tmp_path, capsys):
    from transformers import DistilBertConfig, DistilBertModel

    folder = tmp_path / "encoder"
    config = DistilBertConfig(vocab_size=50, dim=8, n_layers=1, n_heads=1, hidden_dim=8)
    DistilBertModel(config).save_pretrained(folder)
    capsys.readouterr()
    assert main(["run", *tiny_recipe(tiny_world, tmp_path / "r", **{"model.path": folder})]) == 2
    line = _error_line(capsys)
    assert str(folder) in line and "not a causal language model" in line


def test_model_folder_missing(tiny_world, tmp_path, capsys):
    assert main(["run", *tiny_recipe(tiny_world, tmp_path / "r", **{"model.path": tmp_path / "void"})]) == 2
    assert "void" in _error_line(capsys)


def test_empty_forget_set(tiny_world, tmp_path, capsys):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert main(["run", *tiny_recipe(tiny_world, tmp_path / "r", **{"data.forget": empty})]) == 2
    line = _error_line(capsys)
    assert "data.forget" in line and "empty" in line


def test_forget_set_with_wrong_offsets(tiny_world, tmp_path, capsys):
    rows = [json.loads(x) for x in (tiny_world / "forget_0.jsonl").read_text().splitlines()]
    rows[1]["secrets"][0]["start"] += 3
    bad = tmp_path / "shifted.jsonl"
    bad.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["run", *tiny_recipe(tiny_world, tmp_path / "r", **{"data.forget": bad})]) == 2
    line = _error_line(capsys)
    assert "shifted.jsonl" in line and rows[1]["doc_id"] in line


def test_not_json(tiny_world, tmp_path, capsys):
    bad = tmp_path / "broken.jsonl"
    bad.write_text('{"doc_id": 1, "text": "x", "secrets": []}\n{oops\n')
    assert main(["run", *tiny_recipe(tiny_world, tmp_path / "r", **{"data.forget": bad})]) == 2
    assert "broken.jsonl:2" in _error_line(capsys)


def test_method_with_retain_term_needs_a_retain_set(tiny_world, tmp_path, capsys):
    args = tiny_recipe(tiny_world, tmp_path / "r", **{"data.retain": "null"})
    assert main(["run", *args]) == 2
    assert "data.retain" in _error_line(capsys)


def test_gpu_only_strategy_on_cpu(tiny_world, tmp_path, capsys):
    assert main(["run", *tiny_recipe(tiny_world, tmp_path / "r", strategy="fsdp")]) == 2
    assert "needs CUDA" in _error_line(capsys)


def test_unknown_threshold_preset(tiny_world, tmp_path, capsys):
    assert main(["run", *tiny_recipe(tiny_world, tmp_path / "r", **{"stop.thresholds": "gpt-17"})]) == 2
    assert "stop.thresholds" in _error_line(capsys)


def test_bad_input_leaves_no_run_directory(tiny_world, tmp_path, capsys):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert main(["run", *tiny_recipe(tiny_world, tmp_path / "r", **{"data.forget": empty})]) == 2
    assert not (tmp_path / "r").exists()


def test_top_level_help_lists_the_commands(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "run RECIPE" in out and "toy build WORLD" in out
    assert main([]) == 2


def test_sharded_strategy_with_a_missing_model_folder(tiny_world, tmp_path, capsys):
    args = tiny_recipe(tiny_world, tmp_path / "r", **{"model.path": tmp_path / "void"}, strategy="fsdp2", devices=2)
    assert main(["run", *args]) == 2
    assert "void" in _error_line(capsys)
