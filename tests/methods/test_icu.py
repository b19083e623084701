"""ICU: its loss on a hand-built batch against the objective written out per position, the neighbour search, the
forgotten test that removes and re-adds documents, and a step with nothing to learn from leaving the weights alone."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch.distributions import Categorical, kl_divergence

from fabricunlearn.data.batches import TokenizedSet, collate
from fabricunlearn.methods import build_method, icu_support

PAD = 0


def _per_position(model, ids):
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0].float()
    return [(logits[t - 1], ids[t]) for t in range(1, len(ids))]


@pytest.mark.parametrize("args", [{}, {"forget_weight": 2.0, "neighbour_weight": 0.3, "kl_weight": 0.7}])
def test_loss_equals_the_objective_over_active_documents(models, args):
    policy, reference = models
    forget = TokenizedSet(
        [[5, 9, 11, 12, 13, 7], [6, 14, 15, 3], [8, 8, 9, 10, 4]], [[False] * 6, [False] * 4, [False] * 5]
    )
    pool = TokenizedSet([[4, 5, 6, 7, 8, 9, 10], [9, 10, 11], [12, 13, 14, 15]])
    method = build_method("icu", args)
    method.neighbour, method._pool, method._pad = [2, 0, 1], pool, PAD
    method.active = torch.tensor([True, False, True])  # document 1 passed the forgotten test: left out
    part = {"forget": collate(forget, [0, 1, 2], PAD)}
    norm = {k: float(v) for k, v in method.term_counts(part).items()}
    loss, _ = method.loss(policy, reference, part, norm)

    active = [0, 2]
    ce = lambda logits, target: -torch.log_softmax(logits, -1)[target]  # noqa: E731
    forget_ce = [ce(lg, t) for i in active for lg, t in _per_position(policy, forget.input_ids[i])]
    nb = [pool.input_ids[method.neighbour[i]] for i in active]
    nb_ce = [ce(lg, t) for ids in nb for lg, t in _per_position(policy, ids)]
    nb_kl = [
        kl_divergence(Categorical(logits=r), Categorical(logits=p))
        for ids in nb
        for (p, _), (r, _) in zip(_per_position(policy, ids), _per_position(reference, ids))
    ]
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    expected = (
        -args.get("forget_weight", 1.0) * mean(forget_ce)
        + args.get("neighbour_weight", 0.5) * mean(nb_ce)
        + args.get("kl_weight", 1.0) * mean(nb_kl)
    )
    assert loss.item() == pytest.approx(float(expected), rel=1e-5)


def test_original_kl_is_the_cross_entropy_over_every_position(models):
    """`kl_reduction: original`: ICU's `−Σ_v p_0 log(q_θ + 1e-12)` averaged over every position of the active
    neighbour rows, padding included (on the collated micro-batch, as the loop feeds it)."""
    policy, reference = models
    pool = TokenizedSet([[4, 5, 6, 7, 8, 9, 10], [9, 10, 11], [12, 13, 14, 15]])
    forget = TokenizedSet([[5, 9, 11, 12], [6, 14, 15, 3], [8, 8, 9, 10]], [[False] * 4] * 3)
    method = build_method("icu", {"kl_reduction": "original", "forget_weight": 0.0, "neighbour_weight": 0.0})
    method.neighbour, method._pool, method._pad = [1, 0, 2], pool, PAD
    method.active = torch.tensor([True, False, True])
    part = {"forget": collate(forget, [0, 1, 2], PAD)}
    norm = {k: float(v) for k, v in method.term_counts(part).items()}
    loss, _ = method.loss(policy, reference, part, norm)

    nb = collate(pool, [1, 0, 2], PAD)  # padded to the longest neighbour, the inactive row's included
    with torch.no_grad():
        p = torch.softmax(policy(input_ids=nb["input_ids"], attention_mask=nb["attention_mask"]).logits[:, :-1], -1)
        q = torch.softmax(reference(input_ids=nb["input_ids"], attention_mask=nb["attention_mask"]).logits[:, :-1], -1)
    expected = -(q[[0, 2]] * torch.log(p[[0, 2]] + 1e-12)).sum(-1).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_tfidf_neighbours_share_the_code():
    pool = [
        "def parse_header(line):\n    return line.split(':')",
        "class RetryPolicy:\n    max_retries = 3\n    backoff = 2.0",
        "import socket\nsock = socket.create_connection((host, port))",
    ]
    queries = [
        "policy = RetryPolicy()\npolicy.max_retries = 5\napi_key = 'sk_live_x'",
        "sock = socket.create_connection((HOST, 443))\nsock.sendall(token)",
    ]
    assert icu_support.nearest_neighbours(queries, pool) == [1, 2]


def test_bleu_and_token_f1():
    ref = list(range(10, 30))
    assert icu_support.sentence_bleu(ref, ref) == pytest.approx(1.0)
    assert icu_support.token_f1(ref, ref) == pytest.approx(1.0)
    assert icu_support.sentence_bleu(list(range(40, 60)), ref) == 0.0  # no shared 4-gram, no smoothing
    # 5 of 10 candidate tokens are in a 20-token reference: P 0.5, R 0.25
    assert icu_support.token_f1([10, 11, 12, 13, 14, 90, 91, 92, 93, 94], ref) == pytest.approx(2 * 0.5 * 0.25 / 0.75)
    assert icu_support.token_f1([10, 10, 10], [10]) == pytest.approx(2 * (1 / 3) * 1 / (1 / 3 + 1))  # multiset


def test_prompt_spans_start_at_the_first_secret():
    masks = [[False] * 5 + [True] * 3 + [False] * 10, [True] * 4 + [False] * 4, [False] * 6]
    assert icu_support.prompt_spans(masks, [18, 8, 6], 3, 4) == [(2, 5, 9), (0, 0, 4), (0, 0, 4)]


@pytest.mark.slow
def test_forgotten_test_removes_and_re_adds_documents(ci_world):
    """On the memorized CI world every forget document is extractable; after the model is broken none is; with the
    original weights back, all are trained on again."""
    from types import SimpleNamespace

    import lightning as L

    from fabricunlearn.data.batches import tokenize_documents
    from fabricunlearn.data.formats import read_rows, read_secret_rows
    from fabricunlearn.models import load_model_and_tokenizer

    model, tokenizer = load_model_and_tokenizer(ci_world / "model")
    rows = read_secret_rows(ci_world / "forget_0.jsonl")
    rd = SimpleNamespace(
        tokenizer=tokenizer,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        forget=tokenize_documents(tokenizer, rows, 256, with_secrets=True),
        retain=tokenize_documents(tokenizer, read_rows(ci_world / "retain.jsonl"), 128, False),
    )
    fabric = L.Fabric(accelerator="cpu", devices=1)
    method = build_method("icu", {})
    method.prepare(fabric, rd)
    assert len(method.neighbour) == len(rows) and all(0 <= i < len(rd.retain) for i in method.neighbour)
    logs = method.end_epoch(fabric, model, rd, 0)
    assert logs["icu/active"] == len(rows) and logs["icu/f1"] > 0.9 and method.done is None

    original = copy.deepcopy(model.state_dict())
    with torch.no_grad():
        model.get_input_embeddings().weight.normal_(0, 1.0)
    assert method.end_epoch(fabric, model, rd, 1)["icu/active"] == 0
    assert "every forget document" in method.done

    model.load_state_dict(original)
    assert method.end_epoch(fabric, model, rd, 2)["icu/active"] == len(rows)
    assert method.state_dict()["active"].all()


def test_a_step_with_every_document_forgotten_leaves_the_weights(tiny_world, tmp_path):
    """With a test nothing passes (F1 < 1.01 always), no document is active: the run stops without moving the weights
    (the original's all-inactive batches gave NaN losses, and Adam's momentum still moved the weights)."""
    from safetensors.torch import load_file

    from fabricunlearn.cli import run
    from tests.conftest import tiny_recipe

    out = tmp_path / "icu"
    args = json.dumps({"f1_threshold": 1.01})
    run(tiny_recipe(tiny_world, out, **{"method.name": "icu", "method.args": args, "stop.max_epochs": 3}))
    evaluation = json.loads((out / "evaluation.json").read_text())
    assert evaluation["stop_reason"].startswith("ICU: every forget document")
    assert evaluation["epochs"] == 1
    before = load_file(tiny_world / "model" / "model.safetensors")
    after = load_file(out / "final" / "model.safetensors")
    assert all(torch.equal(before[k], after[k]) for k in after)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["icu/active"] for r in rows] == [0.0, 0.0]


@pytest.fixture(scope="module")
def local_bert(tmp_path_factory):
    """A tiny random BERT with a word vocabulary, saved locally: what a user's local BERT folder looks like."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    out = tmp_path_factory.mktemp("bert")
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "def", "return", "import", "key", "token", "socket", "retry"]
    tokenizer = BertTokenizerFast(vocab={w: i for i, w in enumerate(words)}, model_max_length=64)
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(words),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        initializer_range=0.5,  # distinct random embeddings (the default 0.02 makes every token look alike)
    )
    BertModel(config).save_pretrained(out / "bert")
    tokenizer.save_pretrained(out / "bert")
    return out / "bert"


def test_bertscore_with_a_local_bert(local_bert):
    f1 = icu_support.bert_f1(["def key token", "import socket"], ["def key token", "retry key"], str(local_bert), 2)
    assert f1[0] == pytest.approx(1.0, abs=1e-5) and f1[1] < 0.95


def test_sentence_transformer_neighbours_with_faiss(local_bert, tmp_path):
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer

    folder = tmp_path / "encoder"
    SentenceTransformer(modules=[Transformer(str(local_bert)), Pooling(32)]).save(str(folder))
    pool = ["def token", "import socket key", "retry key return"]
    assert icu_support.nearest_neighbours(["import socket key", "retry key return"], pool, str(folder)) == [1, 2]
    with pytest.raises(ValueError, match="not a local folder"):
        icu_support.nearest_neighbours(["x"], pool, str(tmp_path / "missing"))
