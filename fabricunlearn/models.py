"""Loading causal LMs and tokenizers from local folders, the pad token, the frozen reference model, exports."""

from __future__ import annotations

import copy
import json
import os
import shutil
from pathlib import Path

import torch

PAD_TOKEN = "[PAD]"


class ModelError(ValueError):
    """The model folder cannot be used; the message is one line naming the folder."""


def quiet_transformers() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def context_length(model: torch.nn.Module) -> int | None:
    """The number of positions the model has, from its config (None when it does not say). Looks through the
    wrappers of Fabric and the strategies (`.module`)."""
    for _ in range(3):
        config = getattr(model, "config", None)
        for key in ("max_position_embeddings", "n_positions", "n_ctx", "seq_length"):
            value = getattr(config, key, None)
            if isinstance(value, int) and value > 0:
                return value
        model = getattr(model, "module", None)
        if model is None:
            break
    return None


_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model", "vocab.txt")


def load_tokenizer(path: str | Path):
    """The folder's tokenizer with a pad token. Uses the tokenizer's own pad token where it has one; otherwise adds
    `[PAD]` (the caller must then grow the embeddings, see `load_model_and_tokenizer`)."""
    from transformers import AutoTokenizer

    quiet_transformers()
    path = Path(path)
    if not path.is_dir():
        raise ModelError(f"{path}: not a folder")
    # Without these, transformers builds an empty tokenizer from config.json alone instead of failing
    if not any((path / name).is_file() for name in _TOKENIZER_FILES):
        raise ModelError(
            f"{path}: no tokenizer in this folder (none of {', '.join(_TOKENIZER_FILES)}); give the tokenizer's "
            "folder (--tokenizer, or model.tokenizer in a recipe)"
        )
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError, KeyError) as err:
        raise ModelError(
            f"{path}: no usable tokenizer ({str(err).splitlines()[0]}); give the tokenizer's folder "
            "(--tokenizer, or model.tokenizer in a recipe)"
        ) from None
    if tokenizer.bos_token_id is None and tokenizer.eos_token_id is None:
        raise ModelError(
            f"{path}: the tokenizer has neither a BOS nor an EOS token (a secret at offset 0 is scored "
            "after one of them)"
        )
    if tokenizer.pad_token is None:
        tokenizer.add_special_tokens({"pad_token": PAD_TOKEN})
    return tokenizer


def load_model_and_tokenizer(
    path: str | Path,
    tokenizer_path: str | Path | None = None,
    dtype: torch.dtype = torch.float32,
    quantize: str = "none",
    device: torch.device | str | None = None,
):
    """A Hugging Face causal LM and its tokenizer, in float32 for training unless `dtype` says otherwise.

    The original always added a new `[PAD]` and resized the embeddings to `len(tokenizer)`, which *shrinks* the
    padded vocabularies of CodeGen (51200) and Qwen2 (152064). Here the embeddings only ever grow, and only when a pad
    token had to be added beyond the model's vocabulary.

    `quantize="4bit"` (QLoRA) loads the linear layers as bitsandbytes NF4 with double quantization and bf16 compute,
    everything else in bf16, straight onto `device` (a CUDA device: bitsandbytes quantizes while moving there).
    """
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    quiet_transformers()
    path = Path(path)
    if not (path / "config.json").is_file():
        raise ModelError(f"{path}: not a Hugging Face model folder (no config.json)")
    try:
        config = AutoConfig.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError, KeyError, json.JSONDecodeError) as err:
        raise ModelError(f"{path}: unreadable config.json ({str(err).splitlines()[0]})") from None
    if config.model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise ModelError(f"{path}: model type {config.model_type!r} is not a causal language model")
    tokenizer = load_tokenizer(tokenizer_path or path)
    kwargs = {}
    if quantize == "4bit":
        from transformers import BitsAndBytesConfig

        dtype = torch.bfloat16
        kwargs["device_map"] = {"": torch.device(device) if device is not None else torch.device("cuda")}
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16,
            bnb_4bit_quant_storage=torch.bfloat16,  # a float storage type lets FSDP shard the packed weights
        )
    elif quantize != "none":
        raise ValueError(f"quantize: {quantize!r} is not one of none, 4bit")
    try:
        model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, dtype=dtype, **kwargs)
    except (OSError, ValueError) as err:
        raise ModelError(f"{path}: cannot load weights ({str(err).splitlines()[0]})") from None
    embeddings = model.get_input_embeddings().weight.shape[0]
    if len(tokenizer) > embeddings:
        model.resize_token_embeddings(len(tokenizer))
    model.config.pad_token_id = tokenizer.pad_token_id
    if model.generation_config is not None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def make_reference(model: torch.nn.Module) -> torch.nn.Module:
    """A frozen copy of the original model for KL terms. It is never set up as a trainable module, never enters a
    checkpoint, and stays in eval mode (the original left its reference in train mode, dropout on)."""
    reference = copy.deepcopy(model)
    reference.eval()
    reference.requires_grad_(False)
    return reference


def full_state_dict(fabric, model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The complete, unsharded state dict on CPU (under sharded strategies gathered to rank 0 only, the other ranks
    get an empty dict; read locally otherwise)."""
    module = getattr(model, "module", model)  # Fabric's wrapper -> the strategy's module
    if fabric.world_size == 1 or not torch.distributed.is_initialized():
        inner = getattr(module, "module", module)
        return {k: v.detach().cpu() for k, v in inner.state_dict().items()}
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    inner = module.module if isinstance(module, torch.nn.parallel.DistributedDataParallel) else module
    return get_model_state_dict(inner, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def export_pretrained(fabric, model: torch.nn.Module, hf_model: torch.nn.Module, tokenizer, out: Path) -> None:
    """Write `out` as a `save_pretrained` folder with the tokenizer, atomically: a reader never sees half a model.

    With LoRA (`hf_model` a peft model) the folder holds the adapters merged into the weights, loadable without peft,
    and `out/adapter/` the adapter alone (`fabricunlearn.lora`)."""
    from fabricunlearn.lora import is_peft_model

    state = full_state_dict(fabric, model)  # under sharded strategies only rank 0 receives it
    if fabric.global_rank == 0:
        peft_model = hf_model if is_peft_model(hf_model) else None
        if peft_model is not None:
            from fabricunlearn.lora import adapter_state_dict, merged_export, save_adapter

            adapter_state = adapter_state_dict(state)
            hf_model, state = merged_export(peft_model, state)
        # A gathered sharded state dict holds tied weights as separate copies; save_pretrained would write both.
        for target, source in (getattr(hf_model, "all_tied_weights_keys", None) or {}).items():
            if target in state and source in state and torch.equal(state[target], state[source]):
                del state[target]
        tmp = out.with_name(out.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        hf_model.save_pretrained(tmp, state_dict=state)
        tokenizer.save_pretrained(tmp)
        if peft_model is not None:
            save_adapter(peft_model, adapter_state, tmp / "adapter")
        old = out.with_name(out.name + ".old")
        if out.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    fabric.barrier()
