"""A model loaded for scoring (probe, thresholds): on one device, in eval mode, in the asked precision."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

Precision = Literal["32", "bf16", "16"]
_DTYPES = {"32": torch.float32, "bf16": torch.bfloat16, "16": torch.float16}


@dataclass
class ScoringModel:
    model: torch.nn.Module
    tokenizer: Any
    pad_token_id: int
    eos_token_id: int | None
    device: torch.device


def resolve_device(device: str) -> torch.device:
    """`auto` is the first GPU when there is one, else the CPU; an unusable name fails in one line."""
    from fabricunlearn.config import RecipeError

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise RecipeError(f"--device: {device!r} is not a device (auto, cpu, cuda, cuda:1, ...)") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise RecipeError(f"--device: {device!r} asked for, but no CUDA GPU is available")
    return resolved


def load_scoring_model(
    path: str | Path, tokenizer: str | Path | None = None, device: str = "auto", precision: Precision = "32"
) -> ScoringModel:
    from fabricunlearn.config import RecipeError
    from fabricunlearn.models import load_model_and_tokenizer

    if precision not in _DTYPES:
        raise RecipeError(f"--precision: {precision!r}; one of {', '.join(_DTYPES)}")
    target = resolve_device(device)
    model, tok = load_model_and_tokenizer(path, tokenizer, dtype=_DTYPES[precision])
    model.to(target).eval()
    return ScoringModel(model, tok, tok.pad_token_id, tok.eos_token_id, target)
