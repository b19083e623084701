"""Random and adversarial labels, and NPO: labels fixed per document whatever the batch, the adversarial ones the
best wrong guess (checked position by position), the loss a plain descent towards them; NPO against its formula."""

from __future__ import annotations

import pytest
import torch

from fabricunlearn.data.batches import TokenizedSet, collate
from fabricunlearn.methods import build_method

DOCS = [[5, 9, 11, 12, 13, 7, 8], [6, 14, 15, 3], [20, 21, 22, 23, 24]]


def _batch(indices):
    return {"forget": collate(TokenizedSet(DOCS), indices, 0)}


@pytest.mark.parametrize("name", ["random_labels", "adversarial_labels"])
def test_labels_are_fixed_per_document_whatever_the_batch(models, name):
    policy, reference = models
    method = build_method(name, {})
    together = method.labels(reference, _batch([0, 1, 2])["forget"], 50)
    alone = [method.labels(reference, _batch([k])["forget"], 50) for k in range(3)]
    again = build_method(name, {}).labels(reference, _batch([2, 0])["forget"], 50)  # a new instance, no cache
    for k, doc in enumerate(DOCS):
        n = len(doc)
        assert torch.equal(together[k, 1:n], alone[k][0, 1:n])
        assert (together[k, n:] == -100).all()  # padding stays ignored
        assert not torch.equal(together[k, 1:n], torch.tensor(doc[1:]))  # the labels really are replaced
    for row, k in enumerate([2, 0]):
        assert torch.equal(again[row, 1 : len(DOCS[k])], together[k, 1 : len(DOCS[k])])


def test_adversarial_labels_are_the_best_wrong_guess(models):
    policy, reference = models
    part = _batch([0, 1])["forget"]
    labels = build_method("adversarial_labels", {}).labels(reference, part, 50)
    shifted = build_method("adversarial_labels", {"original_offset": True}).labels(reference, part, 50)
    for k, doc in enumerate(DOCS[:2]):
        logits = reference(input_ids=torch.tensor([doc])).logits[0]
        for t in range(len(doc) - 1):
            order = logits[t].argsort(descending=True).tolist()
            assert labels[k, t + 1] == next(v for v in order if v != doc[t + 1])  # not the true next token
            assert shifted[k, t + 1] == next(v for v in order if v != doc[t])  # the original's off-by-one


@pytest.mark.parametrize("name", ["random_labels", "adversarial_labels"])
def test_loss_is_descent_towards_the_labels(models, name):
    policy, reference = models
    method = build_method(name, {})
    batch = _batch([0, 1])
    labels = method.labels(reference, batch["forget"], 50)
    norm = {k: float(v) for k, v in method.term_counts(batch).items()}
    loss, _ = method.loss(policy, reference, batch, norm)
    expected, count = 0.0, 0
    for k, doc in enumerate(DOCS[:2]):
        logp = torch.log_softmax(policy(input_ids=torch.tensor([doc])).logits[0], -1)
        for t in range(len(doc) - 1):
            expected -= logp[t, labels[k, t + 1]].item()
            count += 1
    assert loss.detach().item() == pytest.approx(expected / count, rel=1e-5)


@pytest.mark.parametrize(("retain", "beta"), [("none", 0.1), ("nll", 0.5), ("kl", 0.1)])
def test_npo_loss_equals_the_formula(models, retain, beta):
    """NPO = −(2/β) mean_x log σ(−β (log π_θ(x) − log π_ref(x))), with log π(x) summed over each document's tokens."""
    policy, reference = models
    method = build_method("npo", {"retain": retain, "beta": beta, "retain_weight": 0.5})
    assert method.uses_retain is (retain != "none")
    batch = _batch([0, 1, 2])
    norm = {k: float(v) for k, v in method.term_counts(batch).items()}
    loss, _ = method.loss(policy, reference, batch, norm)
    expected = 0.0
    for doc in DOCS:
        ids = torch.tensor([doc])
        lp = [torch.log_softmax(m(input_ids=ids).logits[0], -1) for m in (policy, reference)]
        seq = [sum(x[t, doc[t + 1]].item() for t in range(len(doc) - 1)) for x in lp]
        expected += -(2 / beta) * torch.nn.functional.logsigmoid(torch.tensor(-beta * (seq[0] - seq[1]))).item()
    assert loss.detach().item() == pytest.approx(expected / len(DOCS), rel=1e-5)
    if retain != "none":
        retain_batch = {"retain": batch["forget"]}
        norm = {k: float(v) for k, v in method.term_counts(retain_batch).items()}
        value, _ = method.loss(policy, reference, retain_batch, norm)
        targets = sum(len(d) - 1 for d in DOCS)
        total = 0.0
        for doc in DOCS:
            ids = torch.tensor([doc])
            p, q = (torch.log_softmax(m(input_ids=ids).logits[0], -1) for m in (policy, reference))
            for t in range(len(doc) - 1):
                total += -p[t, doc[t + 1]].item() if retain == "nll" else (q[t].exp() * (q[t] - p[t])).sum().item()
        assert value.detach().item() == pytest.approx(0.5 * total / targets, rel=1e-5)
