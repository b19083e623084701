"""Everything a run reads: model, tokenizer and the tokenized forget / retain / kept / unseen sets."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fabricunlearn.config import DataArgs, ModelArgs, RecipeError
from fabricunlearn.data.batches import TokenizedSet, tokenize_documents
from fabricunlearn.data.formats import read_rows, read_secret_rows
from fabricunlearn.metrics.memorization import EncodedSecrets, encode_secrets
from fabricunlearn.metrics.sequence import encode_sequences


@dataclass
class RunData:
    model: torch.nn.Module
    tokenizer: Any
    pad_token_id: int
    eos_token_id: int | None
    forget: TokenizedSet | None  # None (and forget_secrets None) only in `fabricunlearn evaluate` without a forget set
    forget_secrets: EncodedSecrets | None
    retain: TokenizedSet | None
    retain_sequences: list[list[int]] | None
    kept_secrets: EncodedSecrets | None
    unseen: TokenizedSet | None
    world_dir: Path | None


def world_dir(data: DataArgs) -> Path | None:
    if data.world is None:
        return None
    return Path(data.world_dir) if data.world_dir else Path(".cache") / "fabricunlearn" / data.world


def data_path(data: DataArgs, value: str | None) -> Path | None:
    """A recipe path; relative ones live in the toy world's folder when the recipe names a world."""
    if value is None:
        return None
    path = Path(value)
    base = world_dir(data)
    return base / path if base is not None and not path.is_absolute() else path


def resolve_model_path(model: ModelArgs, data: DataArgs) -> Path:
    if model.path:
        return Path(model.path)
    base = world_dir(data)
    if base is None:
        raise RecipeError("model.path: no model given (set model.path, or data.world to use a toy world's model)")
    return base / "model"


def model_layer_classes(path: Path) -> set[type[torch.nn.Module]]:
    """The decoder-layer classes of the model in `path`, read from its config without loading weights."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from fabricunlearn.models import ModelError

    try:
        config = AutoConfig.from_pretrained(path, local_files_only=True)
        cls = AutoModelForCausalLM._model_mapping[type(config)]
    except (OSError, ValueError, KeyError) as err:
        raise ModelError(f"{path}: not a Hugging Face causal LM folder ({str(err).splitlines()[0]})") from None
    module = sys.modules[cls.__module__]
    return {getattr(module, name) for name in (cls._no_split_modules or []) if hasattr(module, name)}


def load_run_data(fabric, run, needs_retain: bool) -> RunData:
    from fabricunlearn.models import context_length, load_model_and_tokenizer

    data, ev = run.data, run.eval
    # QLoRA reads the weights once, as NF4 straight onto this rank's GPU
    quantize = run.model.lora.quantize if run.model.lora.enabled else "none"
    device = fabric.device if quantize != "none" else None
    model, tokenizer = load_model_and_tokenizer(
        resolve_model_path(run.model, data), run.model.tokenizer, quantize=quantize, device=device
    )
    forget_path = data_path(data, data.forget)
    forget_rows = read_secret_rows(forget_path)
    if not forget_rows:
        raise RecipeError(f"data.forget: {forget_path} is empty")
    if not any(row["secrets"] for row in forget_rows):
        raise RecipeError(f"data.forget: {forget_path} has no secrets to forget")
    positions = context_length(model)
    if positions is not None and positions <= ev.max_secret_tokens:
        raise RecipeError(
            f"eval.max_secret_tokens: {ev.max_secret_tokens} does not fit the model's {positions} positions"
        )
    encode = dict(
        max_secret_tokens=ev.max_secret_tokens, max_prefix_tokens=ev.max_prefix_tokens, context_length=positions
    )
    max_length = min(data.max_length, positions or data.max_length)
    forget = tokenize_documents(tokenizer, forget_rows, max_length, with_secrets=True, boundary=data.mask_boundary)
    if needs_retain and data.retain is None:
        raise RecipeError(f"data.retain: method {run.method.name!r} has a retain term and needs a retain set")
    retain = retain_sequences = None
    if data.retain is not None:  # evaluated (sequence-level MA / EL_n) even when the method does not train on it
        retain_path = data_path(data, data.retain)
        retain_rows = read_rows(retain_path)
        if not retain_rows:
            raise RecipeError(f"data.retain: {retain_path} is empty")
        retain_length = min(data.retain_max_length, max_length)
        if needs_retain:
            retain = tokenize_documents(tokenizer, retain_rows, retain_length, False)
        retain_sequences = encode_sequences(tokenizer, [row["text"] for row in retain_rows], retain_length)
    kept = None
    if data.kept is not None:
        kept = encode_secrets(tokenizer, read_secret_rows(data_path(data, data.kept)), **encode)
    unseen = None
    if data.unseen is not None:
        unseen = tokenize_documents(tokenizer, read_rows(data_path(data, data.unseen)), max_length, False)
    return RunData(
        model=model,
        tokenizer=tokenizer,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        forget=forget,
        forget_secrets=encode_secrets(tokenizer, forget_rows, **encode),
        retain=retain,
        retain_sequences=retain_sequences,
        kept_secrets=kept,
        unseen=unseen,
        world_dir=world_dir(data),
    )
