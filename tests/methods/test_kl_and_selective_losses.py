"""GA, GD, GA+KL, CU, SSGA and SSCU losses on a hand-built two-sequence batch, against the same objectives written
out per position with torch.distributions (an independent KL) and plain loops."""

from __future__ import annotations

import pytest
import torch
from torch.distributions import Categorical, kl_divergence

from fabricunlearn.data.batches import TokenizedSet, collate
from fabricunlearn.methods import build_method

PAD = 0


@pytest.fixture(scope="module")
def batch():
    forget = TokenizedSet(
        [[5, 9, 11, 12, 13, 7, 8], [6, 14, 15, 3]],  # two documents of different lengths: padding in the batch
        [[False, False, True, True, True, False, False], [False, True, True, False]],
    )
    retain = TokenizedSet([[4, 5, 6, 7, 8], [9, 10, 11]])
    return {"forget": collate(forget, [0, 1], PAD), "retain": collate(retain, [0, 1], PAD)}


@torch.no_grad()
def _positions(model, part):
    """(log-probs, logits, target, is_secret) for every real target position, one sequence at a time."""
    out = []
    for b in range(part["input_ids"].shape[0]):
        n = int(part["attention_mask"][b].sum())
        ids = part["input_ids"][b, :n][None]
        logits = model(input_ids=ids).logits[0].float()
        for t in range(1, n):
            secret = bool(part["secret_mask"][b, t]) if "secret_mask" in part else False
            out.append((torch.log_softmax(logits[t - 1], -1), logits[t - 1], int(ids[0, t]), secret))
    return out


def _kl(policy_logits, reference_logits):
    return kl_divergence(Categorical(logits=reference_logits), Categorical(logits=policy_logits))


def _expected(name, args, policy, reference, batch):
    f_pol, f_ref = _positions(policy, batch["forget"]), _positions(reference, batch["forget"])
    r_pol, r_ref = _positions(policy, batch["retain"]), _positions(reference, batch["retain"])
    lam, alpha, gamma = args.get("kl_weight", 0.1), args.get("retain_kl_weight", 1.0), args.get("context_weight", 0.1)
    secret = [(p, r) for p, r in zip(f_pol, f_ref) if p[3]]
    context = [p for p in f_pol if not p[3]]
    ce = lambda p: -p[0][p[2]]  # noqa: E731
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    retain_kl = lam * alpha * mean([_kl(p[1], r[1]) for p, r in zip(r_pol, r_ref)])
    if name == "ga":
        return -mean([ce(p) for p in f_pol]), None
    if name == "gd":
        return -mean([ce(p) for p in f_pol]), args.get("retain_weight", 1.0) * mean([ce(p) for p in r_pol])
    if name == "ga_kl":
        w = args.get("retain_weight", 1.0)
        return -mean([ce(p) for p in f_pol]), w * mean([_kl(p[1], r[1]) for p, r in zip(r_pol, r_ref)])
    if name == "ssga":
        return -mean([ce(p) for p, _ in secret]) + gamma * mean([ce(p) for p in context]), None
    if name == "cu":
        forget = -mean([ce(p) for p in f_pol]) - lam * mean([_kl(p[1], r[1]) for p, r in zip(f_pol, f_ref)])
        return forget, retain_kl
    forget = -mean([ce(p) for p, _ in secret]) + gamma * mean([ce(p) for p in context])
    return forget - lam * mean([_kl(p[1], r[1]) for p, r in secret]), retain_kl


@pytest.mark.parametrize(
    ("name", "args"),
    [("ga", {}), ("gd", {}), ("gd", {"retain_weight": 0.3}),
     ("ssga", {}), ("ssga", {"context_weight": 0.5}), ("cu", {}), ("cu", {"kl_weight": 0.7, "retain_kl_weight": 2.0}),
     ("sscu", {}), ("sscu", {"kl_weight": 0.3, "retain_kl_weight": 0.5, "context_weight": 0.2}),
     ("ga_kl", {}), ("ga_kl", {"retain_weight": 2.0})],
)  # fmt: skip
def test_loss_equals_the_objective_written_out(models, batch, name, args):
    policy, reference = models
    method = build_method(name, args)
    forget_expected, retain_expected = _expected(name, args, policy, reference, batch)
    phases = [({"forget": batch["forget"]}, forget_expected)]
    if retain_expected is not None:
        phases.append(({"retain": batch["retain"]}, retain_expected))
    for part, expected in phases:
        norm = {k: float(v) for k, v in method.term_counts(part).items()}  # one micro-batch = the whole step
        loss, _ = method.loss(policy, reference, part, norm)
        assert loss.detach().item() == pytest.approx(float(expected), rel=1e-5, abs=1e-6), (name, list(part))


@torch.no_grad()
def _original_terms(policy, reference, part, secret_only=False):
    """The originals' KL terms as their code computes them, on the collated micro-batch (padding included)."""
    p_logits = policy(input_ids=part["input_ids"], attention_mask=part["attention_mask"]).logits[:, :-1].float()
    q_logits = reference(input_ids=part["input_ids"], attention_mask=part["attention_mask"]).logits[:, :-1].float()
    p, q = torch.softmax(p_logits, -1), torch.softmax(q_logits, -1)
    if secret_only:  # SSCU's KL_tok: logits restricted to the secret positions, then batchmean over them
        m = part["secret_mask"][:, 1:]
        p, q = p[m], q[m]
    codeeraser = torch.nn.functional.kl_div(torch.log(p + 1e-10), q + 1e-10, reduction="batchmean")
    yao = -(q * torch.log(p + 1e-12)).sum(-1).mean()
    return codeeraser, yao


@pytest.mark.parametrize("name", ["cu", "sscu", "ga_kl"])
def test_original_kl_reduction_reproduces_the_original_terms(models, batch, name):
    policy, reference = models
    lam, alpha = 0.3, 2.0
    args = {"kl_reduction": "original"} | ({"retain_weight": alpha} if name == "ga_kl" else {})
    if name != "ga_kl":
        args |= {"kl_weight": lam, "retain_kl_weight": alpha}
    method = build_method(name, args)
    retain_codeeraser, retain_yao = _original_terms(policy, reference, batch["retain"])
    part = {"retain": batch["retain"]}
    norm = {k: float(v) for k, v in method.term_counts(part).items()}
    loss, _ = method.loss(policy, reference, part, norm)
    expected = alpha * retain_yao if name == "ga_kl" else lam * alpha * retain_codeeraser
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    if name == "ga_kl":
        return
    part = {"forget": batch["forget"]}
    norm = {k: float(v) for k, v in method.term_counts(part).items()}
    _, sums = method.loss(policy, reference, part, norm)
    kl_term = "forget_kl" if name == "cu" else "secret_kl"
    forget_kl, _ = _original_terms(policy, reference, batch["forget"], secret_only=name == "sscu")
    assert (sums[kl_term] / norm[kl_term]).item() == pytest.approx(forget_kl.item(), rel=1e-5)


def test_kl_is_zero_against_itself_and_positive_otherwise(models, batch):
    from fabricunlearn.methods.base import kl_to_reference
    from fabricunlearn.methods.base import shifted_logits as _logits

    policy, reference = models
    part = batch["retain"]
    assert kl_to_reference(_logits(policy, part), _logits(policy, part)).abs().max() < 1e-6
    assert kl_to_reference(_logits(policy, part), _logits(reference, part)).min() > 0


def test_methods_validate_their_arguments():
    from fabricunlearn.config import MethodArgs, RecipeError

    with pytest.raises(RecipeError, match="context_weight"):
        MethodArgs(name="sscu", args={"context_weight": -1})
    with pytest.raises(RecipeError, match="unknown key"):
        MethodArgs(name="ssga", args={"kl_weight": 0.1})  # SSGA has no KL term


@pytest.mark.parametrize(
    ("name", "args", "terms"),
    [
        ("sscu", {}, {"secret_nll", "context_nll", "secret_kl", "retain_kl"}),
        pytest.param("cu", {}, {"forget_nll", "forget_kl", "retain_kl"}, marks=pytest.mark.slow),
        pytest.param("npo", {"retain": "kl"}, {"forget_npo", "retain_kl"}, marks=pytest.mark.slow),
        pytest.param("adversarial_labels", {}, {"forget_wrong_label_nll"}, marks=pytest.mark.slow),
    ],
)
def test_a_run_trains_and_logs_every_term(tiny_world, tmp_path, name, args, terms):
    """Through the whole loop (two-phase epochs, reference model, checkpoint): each term reaches TensorBoard."""
    import json

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from fabricunlearn.cli import run
    from tests.conftest import tiny_recipe

    out = tmp_path / name
    run(tiny_recipe(tiny_world, out, **{"method.name": name, "method.args": json.dumps(args), "stop.max_epochs": 1}))
    accumulator = EventAccumulator(str(out / "tensorboard"))
    accumulator.Reload()
    logged = {tag.removeprefix("train/") for tag in accumulator.Tags()["scalars"] if tag.startswith("train/")}
    assert terms <= logged, terms - logged
    assert all(torch.isfinite(torch.tensor(accumulator.Scalars(f"train/{t}")[-1].value)) for t in terms)
