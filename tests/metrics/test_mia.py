"""Membership-inference scores against the published formulas computed one document at a time, the AUC against
hand-counted pairs, and the AUC of a memorized toy world's forget documents against unseen ones."""

from __future__ import annotations

import math
import zlib

import pytest
import torch

from fabricunlearn.metrics.mia import SCORES, auc, mia_scores, token_statistics
from fabricunlearn.toy.pretrain import toy_gpt2


def _original_scores(model, ids: list[int], text: str, k: float) -> dict[str, float]:
    """Each score as its paper's code computes it, on one unpadded sequence (Min-K%: sort the token log-probs and
    average the lowest `int(k·n)`; Min-K%++: normalise each by the mean and std of log p under the model)."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0, :-1].double()
    log_probs = torch.log_softmax(logits, -1)
    token = [float(log_probs[t, ids[t + 1]]) for t in range(len(ids) - 1)]
    probs = log_probs.exp()
    mu = (probs * log_probs).sum(-1)
    sigma = ((probs * log_probs**2).sum(-1) - mu**2).sqrt()
    z = [(token[t] - float(mu[t])) / float(sigma[t]) for t in range(len(token))]
    n = int(k * len(token))
    loss = -sum(token) / len(token)
    return {
        "loss": loss,
        "zlib": -sum(token) / len(zlib.compress(text.encode())),
        "min_k": sum(sorted(token)[:n]) / n,
        "min_k_pp": sum(sorted(z)[:n]) / n,
    }


def test_scores_equal_the_published_formulas():
    torch.manual_seed(0)
    model = toy_gpt2(60, n_positions=64, n_embd=16, n_layer=1, n_head=2, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    model.eval()
    docs = [[5, 9, 11, 12, 13, 7, 8, 40, 41, 42, 43], [6, 14, 15, 3, 22, 23], [20, 21, 22, 23, 24, 25, 26, 27, 28]]
    texts = ["alpha = beta(gamma)", "x = 1", "def f(a, b):\n    return a + b\n"]
    stats = token_statistics(model, docs, pad_token_id=0, batch_size=2)  # the shorter of each batch is padded
    for ids, text, st in zip(docs, texts, stats):
        ours = mia_scores(st, text, k=0.4)
        expected = _original_scores(model, ids, text, k=0.4)
        for name in SCORES:
            assert ours[name] == pytest.approx(expected[name], rel=1e-9, abs=1e-9), name


def test_short_documents_take_at_least_one_token_and_empty_ones_are_nan():
    log_p = torch.tensor([-3.0, -1.0])
    scores = mia_scores((log_p, log_p), "ab", k=0.2)  # int(0.2 * 2) = 0 in the originals
    assert scores["min_k"] == -3.0 and scores["min_k_pp"] == -3.0
    assert all(math.isnan(v) for v in mia_scores((torch.empty(0), torch.empty(0)), "", k=0.2).values())


def test_auc_counts_correctly_ordered_pairs():
    # members' losses are lower; of the 2 x 3 pairs, 5 are ordered correctly, 1 is a tie-free inversion
    assert auc([1.0, 2.5], [2.0, 3.0, 4.0], "loss") == pytest.approx(5 / 6)
    # for min_k higher means member: the same numbers, negated, give the same AUC
    assert auc([-1.0, -2.5], [-2.0, -3.0, -4.0], "min_k") == pytest.approx(5 / 6)


@pytest.mark.slow
def test_memorized_documents_are_told_apart_from_unseen_ones(ci_world):
    from fabricunlearn.data.formats import read_rows, read_secret_rows
    from fabricunlearn.models import load_model_and_tokenizer

    model, tokenizer = load_model_and_tokenizer(ci_world / "model")
    members = read_secret_rows(ci_world / "kept.jsonl")
    unseen = read_rows(ci_world / "unseen.jsonl")

    def scores(rows):
        ids = [tokenizer(r["text"], add_special_tokens=False)["input_ids"][:256] for r in rows]
        stats = token_statistics(model, ids, tokenizer.pad_token_id)
        return [mia_scores(s, r["text"]) for s, r in zip(stats, rows)]

    m, u = scores(members), scores(unseen)
    for name in SCORES:
        assert auc([s[name] for s in m], [s[name] for s in u], name) > 0.95, name
