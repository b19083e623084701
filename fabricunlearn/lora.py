"""LoRA and QLoRA (peft): adapters on the loaded model, the reference as the same model with its adapters disabled,
and the export of merged weights.

With LoRA only the adapters train, so the optimizer, its checkpointed state and the gradient norm cover them alone.
The reference of KL / NPO / adversarial-label methods is the policy itself with its adapters switched off, which is
exactly the original model: no second copy. (CodeEraser's PECU mode used the policy *with* its adapters as its
"control model", so its KL(reference ‖ policy) was about 0.) `final/` holds the adapters merged into the weights, a
plain Hugging Face folder; `final/adapter/` the adapter alone, for `PeftModel.from_pretrained`.
"""

from __future__ import annotations

import copy
import sys
import warnings

import torch

from fabricunlearn.config import LoraArgs, RecipeError

ADAPTER = "default"  # peft's name for the one adapter a run trains
_PEFT_PREFIX = "base_model.model."  # where a peft model keeps the wrapped model's keys


def is_peft_model(model) -> bool:
    peft = sys.modules.get("peft")  # not imported: no peft model exists (and runs without LoRA do not import it)
    return peft is not None and isinstance(model, peft.PeftModel)


def check_lora(fabric, args: LoraArgs) -> None:
    """Refuse QLoRA where it cannot run, before anything is loaded."""
    if args.quantize != "4bit":
        return
    if fabric.device.type != "cuda":
        raise RecipeError(
            f"model.lora.quantize: 4bit (QLoRA, bitsandbytes NF4) needs a CUDA device; this run is on "
            f"{fabric.device.type} (use model.lora.quantize: none)"
        )
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise RecipeError(
            "model.lora.quantize: 4bit needs bitsandbytes: pip install -c constraints.txt -e '.[gpu]'"
        ) from None
    from lightning.fabric.plugins.precision import HalfPrecision

    if isinstance(fabric.strategy.precision, HalfPrecision):  # it would cast the packed 4-bit weights
        raise RecipeError("model.lora.quantize: 4bit computes in bf16 already; use precision bf16-mixed or 32-true")


def add_adapters(model: torch.nn.Module, args: LoraArgs) -> torch.nn.Module:
    """`model` wrapped by peft with fresh LoRA adapters (B = 0: the policy starts as the original); every other
    weight is frozen."""
    from peft import LoraConfig, get_peft_model
    from transformers.pytorch_utils import Conv1D

    config = LoraConfig(
        r=args.r,
        lora_alpha=args.alpha,
        lora_dropout=args.dropout,
        target_modules=list(args.target_modules) or "all-linear",
        bias="none",  # with trained biases, disabling the adapters would no longer give the original model
        # GPT-2's Conv1D stores weights as (in, out); peft would flip this per layer anyway, with a warning each
        fan_in_fan_out=any(isinstance(m, Conv1D) for m in model.modules()),
        task_type="CAUSAL_LM",
    )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*fan_in_fan_out is set.*")
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
        try:
            return get_peft_model(model, config)
        except ValueError as err:
            raise RecipeError(f"model.lora.target_modules: {str(err).splitlines()[0]}") from None


def prepare_lora_model(fabric, run, model: torch.nn.Module) -> torch.nn.Module:
    """The run's model (already NF4 on this rank's GPU for QLoRA, see `train.data.load_run_data`) with adapters."""
    return add_adapters(model, run.model.lora)


class AdapterDisabledReference:
    """The reference model under LoRA: the policy with its adapters disabled, called like a model
    (`reference(input_ids=..., attention_mask=..., use_cache=False).logits`).

    It calls the Fabric-wrapped module, so that precision, DDP and FSDP run the same forward (and the same
    collectives) on every rank as for the policy. The pass runs under `no_grad` and in eval mode, as the frozen copy of
    `make_reference` does (base-model dropout off), and leaves every submodule's train/eval flag as it found it.
    """

    def __init__(self, module: torch.nn.Module, peft_model: torch.nn.Module) -> None:
        self.module = module  # Fabric's wrapper around the strategy's module around `peft_model`
        self.peft_model = peft_model

    def __call__(self, *args, **kwargs):
        from fabricunlearn.metrics.decoding import eval_mode

        with torch.no_grad(), eval_mode(self.module), self.peft_model.disable_adapter():
            return self.module(*args, **kwargs)


def _plain_key(key: str) -> str:
    return key.removeprefix(_PEFT_PREFIX).replace(".base_layer.", ".")


def merged_state_dict(peft_model: torch.nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The model's full state dict with the adapters merged in, `W + alpha / r * B A`, under the plain model's keys.

    Computed from the gathered `state` (so it works for sharded strategies too), in float32, cast back to the weight's
    dtype. QLoRA: the NF4 weights are dequantized to bf16 first (from the modules: QLoRA runs on one GPU or DDP, where
    every rank holds whole weights), so the export is a bf16 model with the adapters merged.
    """
    from peft.tuners.lora import LoraLayer

    base = peft_model.get_base_model()
    plain = {_plain_key(k): v for k, v in state.items() if ".lora_" not in k}
    for name, module in base.named_modules():
        weight = getattr(module, "weight", None)
        if type(weight).__name__ == "Params4bit":
            from peft.utils.integrations import dequantize_module_weight

            plain[_plain_key(f"{name}.weight")] = dequantize_module_weight(module).detach().to(torch.bfloat16).cpu()
    for name, module in base.named_modules():
        if not isinstance(module, LoraLayer) or ADAPTER not in module.lora_A:
            continue
        a = state[f"{_PEFT_PREFIX}{name}.lora_A.{ADAPTER}.weight"].float()
        b = state[f"{_PEFT_PREFIX}{name}.lora_B.{ADAPTER}.weight"].float()
        delta = (b @ a) * module.scaling[ADAPTER]
        key = f"{name}.weight"
        weight = plain[key]
        plain[key] = (weight.float() + (delta.T if module.fan_in_fan_out else delta)).to(weight.dtype)
    return plain


def merged_export(peft_model: torch.nn.Module, state: dict[str, torch.Tensor]):
    """(a weightless copy of the plain architecture to `save_pretrained` with, the merged state dict it holds). The
    copy's config has no quantization and the dtype of the exported weights, so plain transformers loads the folder."""
    from transformers import AutoModelForCausalLM

    merged = merged_state_dict(peft_model, state)
    base = peft_model.get_base_model()
    config = copy.deepcopy(base.config)
    config.__dict__.pop("quantization_config", None)
    floats = [v.dtype for v in merged.values() if v.is_floating_point()]
    if floats:
        config.dtype = max(set(floats), key=floats.count)
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(config)
    skeleton.generation_config = copy.deepcopy(base.generation_config)
    keys = skeleton.state_dict().keys()
    missing = sorted(set(keys) - set(merged))
    if missing:
        raise RuntimeError(f"merged LoRA export lacks {missing[:5]}")
    return skeleton, {k: merged[k] for k in keys}  # drops bitsandbytes' quantization-state entries


def adapter_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in state.items() if ".lora_" in k}


def save_adapter(peft_model: torch.nn.Module, adapter_state: dict[str, torch.Tensor], folder) -> None:
    """The adapter alone (`adapter_config.json`, `adapter_model.safetensors`), from the gathered adapter weights."""
    peft_model.save_pretrained(str(folder), state_dict=adapter_state, save_embedding_layers=False)
