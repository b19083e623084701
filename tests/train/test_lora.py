"""LoRA: the reference is the original model (adapters disabled, not a copy), only adapters train, `final/` is a plain
merged model plus `final/adapter/`, resume works; QLoRA where CUDA is."""

from __future__ import annotations

import copy
import json

import pytest
import torch
import yaml

from fabricunlearn.cli import main, run
from fabricunlearn.config import LoraArgs, RecipeError, TrainArgs
from fabricunlearn.lora import AdapterDisabledReference, add_adapters, merged_state_dict
from fabricunlearn.methods.base import kl_to_reference
from fabricunlearn.models import make_reference
from tests.conftest import tiny_recipe

LORA = {"model.lora.enabled": "true", "model.lora.r": 4, "model.lora.alpha": 8, "method.name": "sscu"}


def _gpt2_with_dropout():
    """A tiny GPT-2 whose base model has dropout: train and eval mode differ, unlike the toy models (dropout 0)."""
    from fabricunlearn.toy.pretrain import toy_gpt2

    torch.manual_seed(0)
    model = toy_gpt2(64, n_positions=32, n_embd=16, n_layer=2, n_head=2, bos_token_id=0, eos_token_id=0, pad_token_id=0)
    model.config.resid_pdrop = model.config.embd_pdrop = model.config.attn_pdrop = 0.3
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.3
    return model


def _inputs():
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, 64, (2, 12), generator=g)
    return dict(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False)


def _fabric():
    import lightning as L

    return L.Fabric(accelerator="cpu", devices=1)


def _logits(model, **kwargs):
    with torch.no_grad():
        return model(**(_inputs() | kwargs)).logits


def test_reference_is_the_original_model_before_and_after_a_step():
    """The original's LoRA reference was the policy itself (KL ≈ 0). Here it is the base model with its adapters off:
    equal to a frozen copy of the original (eval mode, as `make_reference`), before and after the adapters move."""
    base = _gpt2_with_dropout()
    frozen = make_reference(copy.deepcopy(base))
    fabric = _fabric()
    peft_model = add_adapters(base, LoraArgs(enabled=True, r=4, alpha=8, dropout=0.1))
    model = fabric.setup_module(peft_model)
    optimizer = fabric.setup_optimizers(torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2))
    reference = AdapterDisabledReference(model, peft_model)
    model.train()
    modes = {name: m.training for name, m in model.named_modules()}
    assert torch.allclose(reference(**_inputs()).logits, _logits(frozen), atol=1e-6, rtol=0)
    # the caller's train/eval flags survive the reference pass, and dropout was off during it (deterministic)
    assert {name: m.training for name, m in model.named_modules()} == modes
    assert torch.equal(reference(**_inputs()).logits, reference(**_inputs()).logits)

    ids = _inputs()["input_ids"]
    loss = -torch.nn.functional.cross_entropy(model(**_inputs()).logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten())
    fabric.backward(loss)
    optimizer.step()

    ref_logits = reference(**_inputs()).logits
    assert not ref_logits.requires_grad
    assert torch.allclose(ref_logits, _logits(frozen), atol=1e-6, rtol=0)
    model.eval()
    policy_logits = _logits(model)
    kl = kl_to_reference(policy_logits, ref_logits).mean().item()
    assert kl > 1e-4, f"KL(reference || policy) = {kl}: the reference follows the policy"
    assert all(p.requires_grad for n, p in peft_model.named_parameters() if "lora_" in n)  # adapters still train


def test_only_adapters_train():
    from fabricunlearn.train.loop import _optimizer

    peft_model = add_adapters(_gpt2_with_dropout(), LoraArgs(enabled=True, r=4))
    trainable = {n for n, p in peft_model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    # `target_modules` empty = every linear layer but the head: for GPT-2 exactly CodeEraser's c_attn, c_proj, c_fc
    adapted = {n.split(".")[-4] for n in trainable}  # ...c_attn.lora_A.default.weight
    assert adapted == {"c_attn", "c_proj", "c_fc"} and not any("lm_head" in n for n in trainable)
    in_optimizer = {id(p) for group in _optimizer(TrainArgs(), peft_model).param_groups for p in group["params"]}
    assert in_optimizer == {id(p) for n, p in peft_model.named_parameters() if n in trainable}


def test_merge_equals_peft_merge_and_unload():
    """The export's own merge (it works from a gathered state dict, so under FSDP too) agrees with peft's."""
    peft_model = add_adapters(_gpt2_with_dropout(), LoraArgs(enabled=True, r=4, alpha=8, target_modules=["c_attn"]))
    with torch.no_grad():
        for n, p in peft_model.named_parameters():
            if "lora_B" in n:
                p.normal_()
    ours = merged_state_dict(peft_model, {k: v.detach().clone() for k, v in peft_model.state_dict().items()})
    theirs = copy.deepcopy(peft_model).merge_and_unload().state_dict()
    assert ours.keys() == theirs.keys()
    assert max((ours[k] - theirs[k]).abs().max().item() for k in ours) < 1e-5


@pytest.mark.parametrize(
    ("key", "value", "needle"),
    [("r", 0, "model.lora.r"), ("dropout", 1.0, "model.lora.dropout"), ("quantize", "4bit", "model.lora.quantize")],
)
def test_bad_lora_values_name_the_key(key, value, needle):
    with pytest.raises(RecipeError, match=needle):
        LoraArgs(**{key: value})


@pytest.fixture(scope="module")
def lora_run(tiny_world, tmp_path_factory):
    out = tmp_path_factory.mktemp("lora") / "run"
    run(tiny_recipe(tiny_world, out, **LORA, **{"stop.max_epochs": 2, "train.lr": 5e-3}))
    return out


def test_base_weights_stay_and_the_optimizer_holds_adapters_only(lora_run, tiny_world):
    from safetensors.torch import load_file

    original = load_file(tiny_world / "model" / "model.safetensors")
    state = torch.load(lora_run / "checkpoints" / "last.ckpt", weights_only=False)
    weights = state["model"]
    lora_keys = [k for k in weights if ".lora_" in k]
    moved = max(weights[k].abs().max().item() for k in lora_keys if ".lora_B." in k)
    assert moved > 0, "the adapters did not train: the test would prove nothing"
    for key, value in original.items():
        ours = f"base_model.model.{key}".replace(".weight", ".base_layer.weight").replace(".bias", ".base_layer.bias")
        ours = ours if ours in weights else f"base_model.model.{key}"
        assert torch.equal(weights[ours], value), key
    assert len(state["optimizer"]["state"]) == len(lora_keys)  # AdamW moments for the adapters alone
    hp = yaml.safe_load((lora_run / "hyperparameters.yaml").read_text())
    assert hp["model"]["lora"] == {
        "enabled": True,
        "r": 4,
        "alpha": 8.0,
        "dropout": 0.1,
        "target_modules": [],
        "quantize": "none",
    }


def test_hyperparameters_yaml_parses_back(lora_run):
    from fabricunlearn.cli import run_parser

    parser = run_parser()
    init = parser.instantiate_classes(parser.parse_args(["--config", str(lora_run / "hyperparameters.yaml")]))
    assert init.model.lora == LoraArgs(enabled=True, r=4, alpha=8.0)


@pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*")
def test_final_is_a_plain_merged_model_and_the_adapter_reapplies(lora_run, tiny_world):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from fabricunlearn.models import load_model_and_tokenizer

    final = lora_run / "final"
    assert not (final / "adapter_config.json").exists()
    assert "quantization_config" not in json.loads((final / "config.json").read_text())
    merged = AutoModelForCausalLM.from_pretrained(final).eval()  # plain transformers, no peft
    # the best epoch's policy: the original with the best checkpoint's adapters, enabled
    base, _ = load_model_and_tokenizer(tiny_world / "model")
    policy = add_adapters(base, LoraArgs(enabled=True, r=4, alpha=8))
    policy.load_state_dict(torch.load(lora_run / "checkpoints" / "best.ckpt", weights_only=False)["model"])
    policy.eval()
    ids = torch.tensor([[5, 17, 99, 3, 42, 7, 8, 120]])
    batch = dict(input_ids=ids, attention_mask=torch.ones_like(ids))
    expected = _logits(policy, **batch)
    original = _logits(load_model_and_tokenizer(tiny_world / "model")[0].eval(), **batch)
    assert (expected - original).abs().max() > 1e-4, "the adapters are a no-op: the test would prove nothing"
    assert torch.allclose(_logits(merged, **batch), expected, atol=1e-5)
    # final/adapter on the original weights gives the same model again
    reapplied = PeftModel.from_pretrained(load_model_and_tokenizer(tiny_world / "model")[0], final / "adapter").eval()
    assert torch.allclose(_logits(reapplied, **batch), expected, atol=1e-5)


def test_resume_with_lora_reaches_the_same_weights(tiny_world, tmp_path, monkeypatch):
    """Interrupted mid-epoch and resumed: the same adapters, optimizer state and metrics as an uninterrupted run (LoRA
    dropout 0: its random state is not checkpointed)."""
    import fabricunlearn.train.loop as loop

    common = {**LORA, "model.lora.dropout": 0.0, "stop.max_epochs": 2, "train.save_every_steps": 1, "train.lr": 5e-3}
    run(tiny_recipe(tiny_world, tmp_path / "straight", **common))
    real_step, calls = loop.train_step, {"n": 0}

    def interrupted_step(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:  # sscu: a forget step and a retain step per epoch; this is epoch 2's retain step
            raise KeyboardInterrupt
        return real_step(*args, **kwargs)

    monkeypatch.setattr(loop, "train_step", interrupted_step)
    with pytest.raises(KeyboardInterrupt):
        run(tiny_recipe(tiny_world, tmp_path / "resumed", **common))
    interrupted = torch.load(tmp_path / "resumed" / "checkpoints" / "last.ckpt", weights_only=False)
    assert (interrupted["epoch"], interrupted["step"]) == (1, 3)  # resumes inside epoch 2
    monkeypatch.setattr(loop, "train_step", real_step)
    run(tiny_recipe(tiny_world, tmp_path / "resumed", **common))

    a = torch.load(tmp_path / "straight" / "checkpoints" / "last.ckpt", weights_only=False)
    b = torch.load(tmp_path / "resumed" / "checkpoints" / "last.ckpt", weights_only=False)
    assert a["model"].keys() == b["model"].keys()
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert any(a["model"][k].abs().max() > 0 for k in a["model"] if ".lora_B." in k)
    for i, moments in a["optimizer"]["state"].items():
        assert torch.equal(moments["exp_avg"], b["optimizer"]["state"][i]["exp_avg"])

    def evals(out):
        return [json.loads(line)["forget/ma"] for line in (out / "metrics.jsonl").read_text().splitlines()]

    assert evals(tmp_path / "straight") == evals(tmp_path / "resumed")


@pytest.mark.slow
def test_two_processes_equal_one_with_ddp_and_fsdp2(tiny_world, tmp_path):
    """The adapter-disabled reference runs through the strategy's forward (DDP, FSDP2 sharded on 2 CPU processes) and
    the merged export works from the gathered state dict: the same `final/` as one process."""
    from safetensors.torch import load_file

    from tests.train.test_invariants import SGD, _assert_moved, _assert_same_weights, _run_subprocess

    common = {
        **LORA,
        **SGD,
        "model.lora.dropout": 0.0,
        "train.schedule": "interleaved",
        "train.micro_batch_size": 2,
        "train.shuffle": "false",
        "stop.max_epochs": 2,
    }
    _run_subprocess(tiny_recipe(tiny_world, tmp_path / "one", **common, **{"train.accumulate": 2}))
    one = load_file(tmp_path / "one" / "final" / "model.safetensors")
    _assert_moved(one, tiny_world)
    for strategy in ("ddp", "fsdp2"):
        _run_subprocess(tiny_recipe(tiny_world, tmp_path / strategy, **common, devices=2, strategy=strategy))
        _assert_same_weights(one, load_file(tmp_path / strategy / "final" / "model.safetensors"), atol=1e-5)
        assert (tmp_path / strategy / "final" / "adapter" / "adapter_model.safetensors").exists()


def test_qlora_without_cuda_is_one_recipe_error(tiny_world, tmp_path, capsys):
    args = tiny_recipe(tiny_world, tmp_path / "q", **LORA, **{"model.lora.quantize": "4bit"})
    assert main(["run", *args]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and "model.lora.quantize" in err[0] and "CUDA" in err[0], err
    assert not (tmp_path / "q").exists()  # refused before anything was loaded or written


def _has_bitsandbytes() -> bool:
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available() or not _has_bitsandbytes(), reason="needs CUDA and bitsandbytes")
def test_qlora_runs_and_exports_merged_bf16(tiny_world, tmp_path):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "q"
    overrides = {"model.lora.quantize": "4bit", "accelerator": "cuda", "precision": "bf16-mixed", "stop.max_epochs": 2}
    run(tiny_recipe(tiny_world, out, **LORA, **overrides))
    config = json.loads((out / "final" / "config.json").read_text())
    assert "quantization_config" not in config and config["dtype"] == "bfloat16"
    merged = AutoModelForCausalLM.from_pretrained(out / "final")
    assert merged.get_input_embeddings().weight.dtype == torch.bfloat16
    assert (out / "final" / "adapter" / "adapter_config.json").exists()
    assert json.loads((out / "evaluation.json").read_text())["forget"]["ma"] >= 0
