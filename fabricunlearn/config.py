"""The recipe: dataclass groups whose fields are the keys of a YAML recipe.

A recipe file is the dumped signature of `fabricunlearn.train.loop.setup`; jsonargparse turns the attribute
docstrings below into `fabricunlearn run --help`. Every group validates itself in `__post_init__`, so a bad
value fails with one line that names the key before anything is loaded.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

# Published thresholds ("Scrub It Out!", reference codeeraser-sscu.md §7), as fractions. Each was measured with
# full-sequence MA/EL over unseen code and is applied to secret-level MA/EL during unlearning.
THRESHOLD_PRESETS: dict[str, dict[str, float]] = {
    "codeparrot-small": {"ma": 0.4557, "el3": 0.1766, "el5": 0.1082, "el10": 0.0549},
    "codeparrot": {"ma": 0.4634, "el3": 0.1656, "el5": 0.1017, "el10": 0.0514},
    "codegen-350m-mono": {"ma": 0.4879, "el3": 0.1824, "el5": 0.1103, "el10": 0.0592},
    "codegen-2b-mono": {"ma": 0.5361, "el3": 0.1932, "el5": 0.1171, "el10": 0.0628},
    "qwen2.5-coder-7b": {"ma": 0.4099, "el3": 0.1565, "el5": 0.1245, "el10": 0.0882},
}


class RecipeError(ValueError):
    """A recipe value is invalid; the message names the key and is meant to be shown as one line."""


def _require(condition: bool, key: str, message: str) -> None:
    if not condition:
        raise RecipeError(f"{key}: {message}")


@dataclass
class LoraArgs:
    enabled: bool = False
    """Train low-rank adapters (peft LoRA) instead of every weight. The reference model of KL methods is then the same
    model with its adapters disabled (no second copy); `final/` holds the merged weights, `final/adapter/` the
    adapter."""
    r: int = 32
    """Adapter rank (CodeEraser's PECU mode: 32)."""
    alpha: float = 32.0
    """Adapter scale numerator: the update is `alpha / r * B A` (CodeEraser: 32)."""
    dropout: float = 0.1
    """Dropout on the adapters' input while training (CodeEraser: 0.1). A resumed run equals an uninterrupted one only
    with 0: the random state of dropout is not checkpointed."""
    target_modules: list[str] = field(default_factory=list)
    """Module names (or name suffixes) that get adapters, e.g. `[c_attn, c_proj, c_fc]` (GPT-2, CodeParrot) or
    `[qkv_proj, out_proj, fc_in, fc_out]` (CodeGen). Empty: every linear layer but the output head (peft's
    `all-linear`), which is exactly CodeEraser's choice on GPT-2 and CodeGen, and all seven projections on Qwen2 or
    Llama."""
    quantize: Literal["none", "4bit"] = "none"
    """`4bit`: QLoRA, the frozen base weights in bitsandbytes NF4 with double quantization and bf16 compute (CUDA and
    the `gpu` extra only); the adapters stay in float32."""

    def __post_init__(self) -> None:
        _require(self.r >= 1, "model.lora.r", f"must be >= 1, got {self.r}")
        _require(self.alpha > 0, "model.lora.alpha", f"must be > 0, got {self.alpha}")
        _require(0 <= self.dropout < 1, "model.lora.dropout", f"must be in [0, 1), got {self.dropout}")
        names = list(self.target_modules)
        _require(
            all(isinstance(n, str) and n.strip() for n in names),
            "model.lora.target_modules",
            f"module names must be non-empty strings, got {names}",
        )
        _require(len(set(names)) == len(names), "model.lora.target_modules", f"repeated names in {names}")
        _require(
            self.enabled or self.quantize == "none",
            "model.lora.quantize",
            f"{self.quantize!r} (QLoRA) trains adapters: set model.lora.enabled: true",
        )


@dataclass
class ModelArgs:
    path: str | None = None
    """Hugging Face causal LM folder (GPT-2, CodeGen, Qwen2, Llama, GPT-NeoX); empty: the toy world's model."""
    tokenizer: str | None = None
    """Tokenizer folder when it is not the model folder."""
    lora: LoraArgs = field(default_factory=LoraArgs)
    """LoRA / QLoRA adapters (off by default: every weight trains)."""


@dataclass
class DataArgs:
    world: str | None = None
    """Toy world to use (`code_secrets`, `code_secrets_ci`); built on first use and cached. Relative paths below then
    resolve inside the world's folder."""
    world_dir: str | None = None
    """Where the toy world lives; default `.cache/fabricunlearn/<world>` under the working directory."""
    forget: str = "forget_0.jsonl"
    """Forget set: scan/probe rows (`doc_id`, `text`, `secrets` with character spans)."""
    retain: str | None = None
    """Retain set for methods with a retain term: corpus rows (`text`)."""
    kept: str | None = None
    """Memorized secrets outside the forget set (scan rows): evaluated to measure collateral forgetting."""
    unseen: str | None = None
    """Held-out code the model never saw (corpus rows): held-out perplexity before and after."""
    max_length: int = 512
    """Forget documents are cut to their first `max_length` tokens (the original's 512)."""
    retain_max_length: int = 128
    """Retain documents are cut to their first `retain_max_length` tokens (the original's 128)."""
    mask_boundary: Literal["exact", "inclusive"] = "exact"
    """Which tokens are secret tokens: those overlapping a secret's characters (`exact`), or also those merely
    touching it, such as the closing quote (`inclusive`, the original's rule)."""

    def __post_init__(self) -> None:
        _require(self.max_length > 1, "data.max_length", f"must be > 1, got {self.max_length}")
        _require(self.retain_max_length > 1, "data.retain_max_length", f"must be > 1, got {self.retain_max_length}")
        if self.world is not None:
            from fabricunlearn.toy import WORLDS

            _require(self.world in WORLDS, "data.world", f"unknown toy world {self.world!r}; known: {sorted(WORLDS)}")


@dataclass
class MethodArgs:
    name: str = "ga"
    """Unlearning method, by registry name (`fabricunlearn run --help` lists them; docs/methods.md explains them)."""
    args: dict[str, Any] = field(default_factory=dict)
    """The method's own hyper-parameters, e.g. `{retain_weight: 1.0}` for `gd`."""

    def __post_init__(self) -> None:
        from fabricunlearn.methods import METHODS

        _require(self.name in METHODS, "method.name", f"unknown method {self.name!r}; known: {sorted(METHODS)}")
        METHODS[self.name].validate_args(self.args)


@dataclass
class TrainArgs:
    schedule: Literal["two_phase", "interleaved"] = "two_phase"
    """`two_phase`: CodeEraser's epoch, one optimizer step over the whole forget set, then (methods with a retain
    term) one over the whole retain set. `interleaved`: ordinary training, `micro_batch_size x accumulate x processes`
    forget documents per step, each micro-batch paired with a retain micro-batch."""
    micro_batch_size: int = 4
    """Documents per forward pass and process."""
    accumulate: int = 1
    """Micro-batches per optimizer step and process (`interleaved` only; `two_phase` steps over the whole set)."""
    loss_reduction: Literal["token", "microbatch_mean"] = "token"
    """`token`: every loss term is a mean over all its tokens in the optimizer step, across micro-batches and
    processes, so accumulation and process count do not change the update. `microbatch_mean`: the original's mean of
    micro-batch means."""
    optimizer: Literal["adamw", "adam", "sgd"] = "adamw"
    lr: float = 3e-6
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-8
    weight_decay: float = 0.0
    clip_grad_norm: float | None = None
    """Clip the global gradient norm to this value; empty: no clipping (the original)."""
    lr_schedule: Literal["constant", "linear", "cosine"] = "constant"
    warmup_steps: int = 0
    seed: int = 42
    shuffle: bool = True
    """Shuffle the forget (and retain) order every epoch, seeded by `seed` and the epoch."""
    save_every_steps: int = 0
    """Also checkpoint every this many optimizer steps inside an epoch (0: at the end of each epoch only)."""

    def __post_init__(self) -> None:
        _require(self.micro_batch_size >= 1, "train.micro_batch_size", f"must be >= 1, got {self.micro_batch_size}")
        _require(self.accumulate >= 1, "train.accumulate", f"must be >= 1, got {self.accumulate}")
        _require(self.lr > 0, "train.lr", f"must be > 0, got {self.lr}")
        _require(len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), "train.betas", "two numbers in [0, 1)")
        _require(self.weight_decay >= 0, "train.weight_decay", f"must be >= 0, got {self.weight_decay}")
        _require(self.clip_grad_norm is None or self.clip_grad_norm > 0, "train.clip_grad_norm", "must be > 0 or empty")
        _require(self.warmup_steps >= 0, "train.warmup_steps", f"must be >= 0, got {self.warmup_steps}")
        _require(self.save_every_steps >= 0, "train.save_every_steps", f"must be >= 0, got {self.save_every_steps}")


@dataclass
class HumanEvalArgs:
    """HumanEval pass@k as CodeEraser measured it (bigcode-evaluation-harness: n = 50, temperature 0.2, top-p 0.95,
    512 tokens of prompt and completion); see docs/evaluation.md."""

    samples: int = 50
    """Completions sampled per problem; 0 skips HumanEval. pass@k is reported for k = 1, 5, 10 up to `samples`."""
    limit: int | None = None
    """Only the first this many of the 164 problems (for quick checks: pass@k then covers only those)."""
    temperature: float = 0.2
    top_p: float = 0.95
    max_length: int = 512
    """Prompt plus completion tokens (capped at the model's context)."""
    batch_size: int = 50
    """Completions generated together (one KV-cached `generate` call)."""
    timeout: float = 3.0
    """Seconds a completion's tests may run in their child process."""
    workers: int = 4
    """Child processes executing completions at once."""
    seed: int = 42

    def __post_init__(self) -> None:
        _require(self.samples >= 0, "humaneval.samples", f"must be >= 0, got {self.samples}")
        _require(self.limit is None or self.limit >= 1, "humaneval.limit", f"must be >= 1, got {self.limit}")
        _require(self.temperature > 0, "humaneval.temperature", f"must be > 0, got {self.temperature}")
        _require(0 < self.top_p <= 1, "humaneval.top_p", f"must be in (0, 1], got {self.top_p}")
        _require(self.max_length >= 2, "humaneval.max_length", f"must be >= 2, got {self.max_length}")
        _require(self.batch_size >= 1, "humaneval.batch_size", f"must be >= 1, got {self.batch_size}")
        _require(self.timeout > 0, "humaneval.timeout", f"must be > 0, got {self.timeout}")
        _require(self.workers >= 1, "humaneval.workers", f"must be >= 1, got {self.workers}")


@dataclass
class EvalArgs:
    batch_size: int = 64
    """Secrets (or documents) per evaluation forward pass."""
    document_batch_size: int = 4
    """Whole documents per forward pass for perplexity and membership inference, which need the full-vocabulary
    logits of every position (Qwen2.5: 4 x 512 tokens x 152k vocabulary = 1.2 GB in fp32)."""
    max_secret_tokens: int = 32
    """Secrets are read up to their first this many tokens (the original's 32)."""
    max_prefix_tokens: int = 128
    """The prefix is the last this many tokens before the secret (the original's 128)."""
    el_ns: list[int] = field(default_factory=lambda: [3, 5, 10])
    """EL_n reported before and after unlearning."""
    kept_every_epoch: bool = True
    """Also measure MA of the kept secrets after every epoch (cheap on small sets; turn off for large ones)."""
    aggregate: Literal["per_secret", "batch_means"] = "per_secret"
    """How a set's MA / EL_n is summarised: the mean (and max) over its secrets, or `batch_means`, the original's
    unweighted mean of per-batch means over ranks (docs/metrics.md)."""
    aggregate_batch_docs: int = 8
    """Documents per batch and rank for `batch_means` (the original's eval batch size); ranks: this run's."""
    retain_every_epoch: bool = True
    """Also measure the retain set's sequence-level MA after every epoch."""
    retain_el: bool = True
    """Measure the retain set's EL_n before and after. Text the model does not reproduce is decoded from every
    offset (about T²/2 decoding steps per document): turn it off for large retain sets."""
    mia_k: float = 0.2
    """The fraction k of Min-K% and Min-K%++ (membership inference of the forget set against the unseen set)."""
    humaneval: HumanEvalArgs = field(default_factory=lambda: HumanEvalArgs(samples=0))
    """HumanEval on the final model (off in a run by default: `samples: 0`; `fabricunlearn evaluate` runs it)."""

    def __post_init__(self) -> None:
        _require(self.batch_size >= 1, "eval.batch_size", f"must be >= 1, got {self.batch_size}")
        _require(self.document_batch_size >= 1, "eval.document_batch_size", "must be >= 1")
        _require(self.max_secret_tokens >= 1, "eval.max_secret_tokens", "must be >= 1")
        _require(self.max_prefix_tokens >= 1, "eval.max_prefix_tokens", "must be >= 1")
        _require(all(n >= 1 for n in self.el_ns), "eval.el_ns", f"every n must be >= 1, got {self.el_ns}")
        _require(self.aggregate_batch_docs >= 1, "eval.aggregate_batch_docs", "must be >= 1")
        _require(0 < self.mia_k <= 1, "eval.mia_k", f"must be in (0, 1], got {self.mia_k}")


@dataclass
class StopArgs:
    thresholds: str | None = None
    """A named preset (codeparrot-small, codeparrot, codegen-350m-mono, codegen-2b-mono, qwen2.5-coder-7b) or a
    thresholds.json path (relative paths resolve inside the toy world's folder when one is used)."""
    ma_threshold: float | None = None
    """Forget-set MA below which the set counts as forgotten; overrides `thresholds`."""
    el_threshold: float | None = None
    """Forget-set EL_n (n = `el_n`) threshold; overrides `thresholds`."""
    el_n: int = 10
    """The EL used by the stopping rule. With n = 10, stopping also needs EL10 (the CodeEraser rule)."""
    margin: float = 0.3
    """EL_n is computed every epoch once MA <= ma_threshold + margin (the CodeEraser gate)."""
    patience: int = 5
    """Stop after this many epochs in which MA improved but EL did not."""
    max_epochs: int = 100

    def __post_init__(self) -> None:
        _require(self.max_epochs >= 1, "stop.max_epochs", f"must be >= 1, got {self.max_epochs}")
        _require(self.patience >= 1, "stop.patience", f"must be >= 1, got {self.patience}")
        _require(self.margin >= 0, "stop.margin", f"must be >= 0, got {self.margin}")
        _require(self.el_n >= 1, "stop.el_n", f"must be >= 1, got {self.el_n}")
        for key in ("ma_threshold", "el_threshold"):
            value = getattr(self, key)
            _require(value is None or 0 <= value <= 1, f"stop.{key}", f"must be in [0, 1], got {value}")

    def resolve(self, base_dir: Path | None = None) -> tuple[float, float]:
        """(ma_threshold, el_threshold) from the explicit values, a preset or a thresholds.json file."""
        table: dict[str, float] = {}
        if self.thresholds is not None:
            if self.thresholds.lower() in THRESHOLD_PRESETS:
                table = THRESHOLD_PRESETS[self.thresholds.lower()]
            else:
                path = Path(self.thresholds)
                if not path.is_absolute() and base_dir is not None and not path.exists():
                    path = base_dir / path
                _require(
                    path.is_file(),
                    "stop.thresholds",
                    f"{self.thresholds!r} is neither a preset ({', '.join(THRESHOLD_PRESETS)}) nor a file",
                )
                try:
                    table = json.loads(path.read_text())
                except json.JSONDecodeError as err:
                    raise RecipeError(
                        f"stop.thresholds: {path} is not valid JSON ({err.msg}, line {err.lineno})"
                    ) from None
        ma = self.ma_threshold if self.ma_threshold is not None else table.get("ma")
        el = self.el_threshold if self.el_threshold is not None else table.get(f"el{self.el_n}")
        _require(ma is not None, "stop.ma_threshold", "no MA threshold: set it, or name a preset or thresholds.json")
        _require(el is not None, "stop.el_threshold", f"no EL{self.el_n} threshold in the recipe or `thresholds`")
        return float(ma), float(el)


@dataclass
class LogArgs:
    every_n_steps: int = 1
    """Log training scalars every this many optimizer steps."""
    progress_bar: bool = True
    tensorboard: bool = True

    def __post_init__(self) -> None:
        _require(self.every_n_steps >= 1, "log.every_n_steps", f"must be >= 1, got {self.every_n_steps}")
