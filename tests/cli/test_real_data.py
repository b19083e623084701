"""The pipeline on the two shapes real corpora come in (docs/pipeline.md): codeparrot-clean-train as a `datasets`
folder or Parquet files (a `content` column, no `doc_id`), and a user's repository as a folder of files."""

from __future__ import annotations

import json

import pytest

from fabricunlearn.cli import main

pytestmark = pytest.mark.slow


def _codeparrot_frame(ci_world):
    """The CI world's corpus in codeparrot-clean-train's columns (its `content`, and no doc_id: rows are numbered)."""
    import pandas as pd

    rows = [json.loads(line) for line in (ci_world / "corpus.jsonl").read_text().splitlines()]
    return pd.DataFrame(
        {
            "repo_name": [f"org/repo{i % 5}" for i in range(len(rows))],
            "path": [f"src/{row['doc_id']}.py" for row in rows],
            "copies": ["1"] * len(rows),
            "content": [row["text"] for row in rows],
            "license": ["mit"] * len(rows),
        }
    )


def _pipeline(ci_world, corpus, out) -> tuple[list[dict], dict]:
    model = str(ci_world / "model")
    steps = [
        ["scan", "--input", str(corpus), "--output", str(out / "secrets.jsonl")],
        ["probe", "--model", model, "--data", str(out / "secrets.jsonl"), "--output", str(out / "probed.jsonl")],
        ["build-sets", "--model", model, "--data", str(out / "probed.jsonl"), "--corpus", str(corpus),
         "--out_dir", str(out / "sets"), "--num_sets", "2", "--set_size", "4", "--min_secret_tokens", "8",
         "--retain_size", "4", "--retain_prefix_tokens", "32", "--retain_new_tokens", "32", "--unseen_size", "5"],
    ]  # fmt: skip
    for step in steps:
        assert main([*step, "--progress", "false"]) == 0, step[0]
    scanned = [json.loads(line) for line in (out / "secrets.jsonl").read_text().splitlines()]
    return scanned, json.loads((out / "sets" / "manifest.json").read_text())


@pytest.mark.parametrize("kind", ["datasets", "parquet"])
def test_codeparrot_style_corpus(ci_world, tmp_path, kind):
    frame = _codeparrot_frame(ci_world)
    if kind == "parquet":
        corpus = tmp_path / "train-00000-of-00001.parquet"
        frame.to_parquet(corpus)
    else:
        from datasets import Dataset

        corpus = tmp_path / "codeparrot-clean-train"
        Dataset.from_pandas(frame).save_to_disk(str(corpus))
    scanned, manifest = _pipeline(ci_world, corpus, tmp_path / "out")
    planted = sum(len(json.loads(line)["secrets"]) for line in (ci_world / "secrets.jsonl").read_text().splitlines())
    assert sum(len(row["secrets"]) for row in scanned) == planted
    assert all(isinstance(row["doc_id"], int) for row in scanned)  # the row number stands in for a doc_id
    assert manifest["counts"]["forget_sets"] == [4, 4] and manifest["counts"]["retain_documents"] == 4
    assert manifest["counts"]["unseen_documents"] == 5  # HumanEval, offline


def test_a_repository_folder(ci_world, tmp_path):
    repo = tmp_path / "repo"
    for row in map(json.loads, (ci_world / "corpus.jsonl").read_text().splitlines()):
        path = repo / "pkg" / f"{row['doc_id']}.py"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(row["text"], encoding="utf-8")
    (repo / "logo.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00binary")
    scanned, manifest = _pipeline(ci_world, repo, tmp_path / "out")
    assert all(row["doc_id"].startswith("pkg/") for row in scanned)
    forget = [json.loads(line) for line in (tmp_path / "out" / "sets" / "forget_0.jsonl").read_text().splitlines()]
    assert all((repo / row["doc_id"]).read_text() == row["text"] for row in forget)
    assert manifest["counts"]["forget_sets"] == [4, 4]
