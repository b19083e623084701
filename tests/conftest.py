"""Session fixtures: the worlds are built once per session (the CI world is also cached across sessions)."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session", autouse=True)
def _hf_home(tmp_path_factory):
    os.environ["HF_HOME"] = str(tmp_path_factory.mktemp("hf_home"))


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory) -> Path:
    """An untrained 2-layer GPT-2 with the files of a toy world, in seconds: for tests of the loop's mechanics
    (equivalences, resume, faults) where memorization does not matter."""
    return build_tiny_world(tmp_path_factory.mktemp("tiny_world"))


@pytest.fixture(scope="session")
def ci_world() -> Path:
    """The CI-size code-secrets world (trained, memorized), cached under .cache/ so later sessions reuse it."""
    from fabricunlearn.toy import ensure_world

    return ensure_world("code_secrets_ci", REPO / ".cache" / "fabricunlearn" / "code_secrets_ci", progress=False)


def build_tiny_world(out: Path, n_forget: int = 6, seed: int = 0) -> Path:
    import torch

    from fabricunlearn.data.formats import write_json, write_jsonl
    from fabricunlearn.toy.pretrain import toy_gpt2
    from fabricunlearn.toy.secret_formats import plant_secrets
    from fabricunlearn.toy.stdlib_corpus import code_chunks, stdlib_files
    from fabricunlearn.toy.tokenizer import train_tokenizer

    rng = random.Random(seed)
    files = stdlib_files()[:12]
    tokenizer = train_tokenizer(files, vocab_size=400, model_max_length=256)
    torch.manual_seed(seed)
    ids = dict(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id
    )
    toy_gpt2(len(tokenizer), n_positions=256, n_embd=32, n_layer=2, n_head=2, **ids).save_pretrained(out / "model")
    tokenizer.save_pretrained(out / "model")
    chunks = code_chunks(rng, 40, 120, 260, files=files)

    def secret_rows(prefix: str, texts: list[str]) -> list[dict]:
        rows = []
        for i, chunk in enumerate(texts):
            text, secrets = plant_secrets(rng, chunk, 1 + i % 2)
            rows.append({"doc_id": f"{prefix}-{i}", "text": text, "secrets": secrets})
        return rows

    write_jsonl(out / "forget_0.jsonl", secret_rows("forget", chunks[:n_forget]))
    write_jsonl(out / "kept.jsonl", secret_rows("kept", chunks[10:14]))
    write_jsonl(out / "retain.jsonl", [{"doc_id": f"code-{i}", "text": c} for i, c in enumerate(chunks[14:24])])
    write_jsonl(out / "unseen.jsonl", [{"doc_id": f"unseen-{i}", "text": c} for i, c in enumerate(chunks[24:28])])
    # MA threshold 0: an untrained model is never "forgotten" early, so runs last exactly stop.max_epochs epochs
    write_json(out / "thresholds.json", {"ma": 0.0, "el3": 0.0, "el5": 0.0, "el10": 0.0})
    return out


def tiny_recipe(world: Path, out: Path, **overrides) -> list[str]:
    """CLI arguments for a short run on the tiny world (no world build: explicit paths)."""
    args = {
        "model.path": world / "model",
        "data.forget": world / "forget_0.jsonl",
        "data.retain": world / "retain.jsonl",
        "data.kept": world / "kept.jsonl",
        "data.unseen": world / "unseen.jsonl",
        "method.name": "gd",
        "train.lr": 1e-3,
        "train.micro_batch_size": 2,
        "stop.thresholds": world / "thresholds.json",
        "stop.max_epochs": 3,
        "eval.el_ns": "[3]",
        "eval.retain_el": "false",  # an untrained model's retain EL decodes from every offset: seconds per run
        "log.progress_bar": "false",
        "accelerator": "cpu",
        "devices": 1,
        "out_dir": out,
    }
    args.update(overrides)
    return [x for k, v in args.items() for x in (f"--{k}", str(v))]
