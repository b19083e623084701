"""Secret MA / EL_n checked against a plain re-implementation of the original algorithm (codeeraser-sscu.md §1.4).

The reference below follows the text of §1.4 literally, one secret per batch (the per-secret definition of §1.4.1):
tokenize like the original (right-truncated secret of 32 tokens, left-truncated prefix of 128), one ``generate`` call
of one token per MA position, one ``generate(max_new_tokens=S - i)`` per EL offset, n-gram sets, V_i normalisation.
The model is a tiny GPT-2 trained for a few seconds so that it has partly memorized the secrets: MA values are spread.
"""

from __future__ import annotations

import copy
import math
import random
import string
import sysconfig
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from original_secret_metrics import MAX_PREFIX, NS, Reference, S, _ref_encode
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedTokenizerFast
from transformers.utils import logging as hf_logging

import fabricunlearn.metrics.decoding as decoding
from fabricunlearn.metrics.decoding import greedy_continuations, next_token_predictions
from fabricunlearn.metrics.memorization import EncodedSecrets, encode_secrets, secret_el, secret_ma, secret_scores
from fabricunlearn.toy.pretrain import toy_gpt2

hf_logging.disable_progress_bar()
hf_logging.set_verbosity_error()


# ----------------------------------------------------------------------------------------------------- the toy world
def _doc(doc_id: str, parts: list) -> dict:
    """A scan row; tuple parts are secrets (tag, value)."""
    text, secrets = "", []
    for part in parts:
        if isinstance(part, tuple):
            secrets.append({"tag": part[0], "type": "test", "value": part[1], "start": len(text)})
            secrets[-1]["end"] = len(text) + len(part[1])
            part = part[1]
        text += part
    return {"doc_id": doc_id, "text": text, "secrets": secrets}


def _rows() -> list[dict]:
    rng = random.Random(0)

    def key(n: int) -> str:
        return "".join(rng.choice(string.ascii_letters + string.digits) for _ in range(n))

    preamble = Path(sysconfig.get_paths()["stdlib"], "textwrap.py").read_text()[:260]  # > 128 tokens
    return [
        _doc("offset0", [("KEY", key(20)), " = load()\nprint(token)\n"]),
        _doc("long_prefix", [preamble, '\nTOKEN = "', ("KEY", key(24)), '"\n']),
        _doc("long_secret", ['AWS_SECRET = "', ("KEY", key(48)), '"\nclient = connect(AWS_SECRET)\n']),
        _doc(
            "short",
            [
                'host = "',
                ("IP_ADDRESS", "10.1.2.3"),
                '"\npin = "',
                ("KEY", "a7"),
                '"\nm = "',
                ("EMAIL", "bo@ex.io"),
                '"\n',
            ],
        ),
        _doc("two", ['def auth():\n    return "', ("KEY", key(16)), '", "', ("KEY", key(5)), '"\n']),
        _doc("light1", ['password = "', ("KEY", key(20)), '"  # prod\n']),
        _doc("light2", ['api_key = "', ("KEY", key(20)), '"\nsecret = "', ("KEY", key(12)), '"\n']),
        _doc("unseen", ['# never trained\nDB_PASS = "', ("KEY", key(20)), '"\n']),
    ]


def _tokenizer(corpus: list[str]) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        min_frequency=2,
        special_tokens=["<|endoftext|>", "<|pad|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>", pad_token="<|pad|>"
    )


def _train(model, tokenizer, rows: list[dict], weights: list[int], steps: int) -> None:
    """Few steps on small random batches: how often a document is drawn decides how well it is memorized."""
    seqs = []
    for row, weight in zip(rows, weights):
        # Only a document that starts with its secret is trained after BOS, the context its prefix then has.
        bos = [tokenizer.bos_token_id] if row["secrets"][0]["start"] == 0 else []
        seqs += [
            bos + tokenizer(row["text"], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        ] * weight
    rng = random.Random(1)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.0)
    model.train()
    for _ in range(steps):
        batch = rng.sample(seqs, 4)
        width = max(len(s) for s in batch)
        ids = torch.full((4, width), tokenizer.pad_token_id)
        labels = torch.full((4, width), -100)
        for b, s in enumerate(batch):
            ids[b, : len(s)] = labels[b, : len(s)] = torch.tensor(s)
        loss = model(input_ids=ids, attention_mask=(labels != -100).long(), labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()


# ------------------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def world(one_thread) -> SimpleNamespace:
    torch.manual_seed(0)
    rows = _rows()
    tokenizer = _tokenizer([rows[1]["text"] * 3] + [r["text"] for r in rows])
    model = toy_gpt2(
        len(tokenizer),
        n_embd=64,
        n_layer=2,
        n_head=4,
        n_positions=256,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    _train(model, tokenizer, rows, weights=[6, 6, 6, 6, 2, 1, 1, 0], steps=60)
    enc = encode_secrets(tokenizer, rows)
    prefixes, secrets = _ref_encode(tokenizer, rows)
    ref = Reference(model, tokenizer.pad_token_id, tokenizer.eos_token_id)
    return SimpleNamespace(
        tokenizer=tokenizer,
        model=model,
        rows=rows,
        enc=enc,
        prefixes=prefixes,
        secrets=secrets,
        ref=ref,
        expected=ref.all(prefixes, secrets),
        pad=tokenizer.pad_token_id,
        eos=tokenizer.eos_token_id,
    )


def _assert_close(actual: torch.Tensor, expected: list[float]) -> None:
    assert actual.shape == (len(expected),)
    torch.testing.assert_close(actual, torch.tensor(expected, dtype=actual.dtype), atol=1e-9, rtol=0, equal_nan=True)


# ---------------------------------------------------------------------------------------------------------- tests
def test_world_covers_the_edge_cases(world):
    lengths = [len(s) for s in world.enc.secret_ids]
    assert world.enc.prefix_ids[0] == [world.tokenizer.bos_token_id]  # secret at offset 0
    assert len(world.tokenizer(world.rows[1]["text"][: world.rows[1]["secrets"][0]["start"]])["input_ids"]) > MAX_PREFIX
    assert len(world.tokenizer(world.rows[2]["secrets"][0]["value"])["input_ids"]) > S and S in lengths
    assert min(lengths) < 3 and any(3 <= n < 10 for n in lengths)  # shorter than some n
    ma = world.expected["ma"]
    assert max(ma) >= 0.9 and min(ma) <= 0.1 and sum(0.1 < v < 0.9 for v in ma) >= 2, ma  # partly memorized
    assert world.ref.recoveries > 0  # continuations that leave the secret and come back to it


def test_encode_secrets_matches_the_original_tokenization(world):
    enc = world.enc
    assert enc.prefix_ids == world.prefixes and enc.secret_ids == world.secrets
    assert enc.doc_index == [0, 1, 2, 3, 3, 3, 4, 4, 5, 6, 6, 7] and enc.secret_index == [
        0,
        0,
        0,
        0,
        1,
        2,
        0,
        1,
        0,
        0,
        1,
        0,
    ]
    sub = enc.subset([3, 0])
    assert len(sub) == 2 and sub.secret_ids == [enc.secret_ids[3], enc.secret_ids[0]] and sub.doc_index == [3, 0]
    assert len(encode_secrets(world.tokenizer, [])) == 0


def test_encode_secrets_adds_no_special_tokens_and_falls_back_to_eos():
    tok = Tokenizer(models.WordLevel({"<s>": 0, "</s>": 1, "a": 2, "b": 3, "[UNK]": 4}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 0)])  # Llama-style
    llama_like = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>")
    assert llama_like("a b")["input_ids"] == [0, 2, 3]
    enc = encode_secrets(llama_like, [{"doc_id": 0, "text": "a b a", "secrets": [{"value": "a", "start": 4}]}])
    assert enc.prefix_ids == [[2, 3]] and enc.secret_ids == [[2]]
    no_bos = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="</s>")
    enc = encode_secrets(
        no_bos, [{"doc_id": 0, "text": "a", "secrets": [{"value": "a b", "start": 0}, {"value": "", "start": 1}]}]
    )
    assert enc.prefix_ids == [[1], [2]] and enc.secret_ids == [[2, 3], []]


@pytest.mark.parametrize("batch_size", [1, 3, 64])
def test_ma_equals_one_token_generate(world, batch_size):
    _assert_close(
        secret_ma(world.model, world.enc, pad_token_id=world.pad, batch_size=batch_size), world.expected["ma"]
    )


@pytest.mark.parametrize("share_work", [True, False])
@pytest.mark.parametrize("batch_size", [1, 3, 64])
def test_el_equals_the_original_per_secret(world, batch_size, share_work):
    got = secret_el(
        world.model,
        world.enc,
        NS,
        pad_token_id=world.pad,
        eos_token_id=world.eos,
        batch_size=batch_size,
        share_work=share_work,
    )
    assert sorted(got) == list(NS)
    for n in NS:
        _assert_close(got[n], world.expected[n])


def test_el_of_a_subset_and_of_shuffled_secrets_is_the_same(world):
    order = [11, 4, 0, 7, 2, 9, 1]
    got = secret_el(
        world.model, world.enc.subset(order), NS, pad_token_id=world.pad, eos_token_id=world.eos, batch_size=2
    )
    for n in NS:
        _assert_close(got[n], [world.expected[n][k] for k in order])


@pytest.mark.parametrize("batch_size", [3, 64])
def test_scores_share_one_teacher_forced_pass_and_equal_the_original(world, batch_size, monkeypatch):
    passes = []
    real = decoding.next_token_predictions
    monkeypatch.setattr(decoding, "next_token_predictions", lambda *a, **k: passes.append(1) or real(*a, **k))
    import fabricunlearn.metrics.memorization as memorization

    monkeypatch.setattr(memorization, "next_token_predictions", decoding.next_token_predictions)
    got = secret_scores(
        world.model, world.enc, NS, pad_token_id=world.pad, eos_token_id=world.eos, batch_size=batch_size
    )
    assert len(passes) == 1
    _assert_close(got["ma"], world.expected["ma"])
    for n in NS:
        _assert_close(got[f"el{n}"], world.expected[n])


@pytest.fixture(scope="module")
def eos_world(world) -> SimpleNamespace:
    # Declare the commonest secret token to be EOS: the model emits it inside continuations (and secrets contain it).
    counts = torch.bincount(torch.tensor([t for s in world.enc.secret_ids for t in s]))
    eos = int(counts.argmax())
    ref = Reference(world.model, world.pad, eos)
    expected = {n: [ref.el(p, s, n) for p, s in zip(world.prefixes, world.secrets)] for n in NS}
    return SimpleNamespace(eos=eos, ref=ref, expected=expected)


@pytest.mark.parametrize("share_work", [True, False])
def test_eos_inside_a_continuation_does_not_depend_on_the_batch(world, eos_world, share_work):
    eos, expected = eos_world.eos, eos_world.expected
    assert eos_world.ref.eos_stops > 0 and expected != {n: world.expected[n] for n in NS}
    for batch_size in (1, 3, 64):
        got = secret_el(
            world.model,
            world.enc,
            NS,
            pad_token_id=world.pad,
            eos_token_id=eos,
            batch_size=batch_size,
            share_work=share_work,
        )
        for n in NS:
            _assert_close(got[n], expected[n])
    ma = secret_ma(world.model, world.enc, pad_token_id=world.pad, batch_size=3)
    _assert_close(ma, world.expected["ma"])  # one-token predictions never see EOS


def test_empty_secret_is_nan_and_model_without_pad_in_config(world):
    model = copy.deepcopy(world.model)
    model.config.pad_token_id = None
    model.generation_config.pad_token_id = None
    enc = EncodedSecrets(
        prefix_ids=world.enc.prefix_ids[:3] + [[5]],
        secret_ids=world.enc.secret_ids[:3] + [[]],
        doc_index=[0, 1, 2, 3],
        secret_index=[0, 0, 0, 0],
    )
    ma = secret_ma(model, enc, pad_token_id=world.pad, batch_size=2)
    _assert_close(ma, world.expected["ma"][:3] + [math.nan])
    got = secret_el(model, enc, NS, pad_token_id=world.pad, eos_token_id=None, batch_size=2)
    for n in NS:
        assert math.isnan(got[n][3]) and got[n].dtype == torch.float64


def test_modes_are_restored(world):
    model = world.model
    model.train()
    model.transformer.h[0].eval()  # e.g. a frozen part kept in eval by the caller
    try:
        secret_ma(model, world.enc.subset([0]), pad_token_id=world.pad)
        secret_el(model, world.enc.subset([0]), (3,), pad_token_id=world.pad, eos_token_id=world.eos)
        assert model.training and model.transformer.h[1].training and not model.transformer.h[0].training
    finally:
        model.eval()


def _tiny(model_type: str, vocab: int):
    extra = {
        "llama": dict(intermediate_size=128, num_key_value_heads=2),
        "qwen2": dict(intermediate_size=128, num_key_value_heads=2),
        "gpt_neox": dict(intermediate_size=128),
        "codegen": dict(n_ctx=256, rotary_dim=8),
    }[model_type]
    sizes = (
        dict(n_embd=64, n_layer=2, n_head=4, n_positions=256)
        if model_type == "codegen"
        else dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=256)
    )
    config = AutoConfig.for_model(model_type, vocab_size=vocab, bos_token_id=0, eos_token_id=0, **sizes, **extra)
    return AutoModelForCausalLM.from_config(config).eval()


@pytest.mark.parametrize("model_type", ["llama", "qwen2", "gpt_neox", "codegen"])
def test_batched_kv_cache_decoding_equals_generate(model_type):
    # Rotary models are where wrong position ids under left padding would show.
    torch.manual_seed(0)
    model = _tiny(model_type, 300)
    rng = random.Random(0)
    prompts = [[rng.randrange(2, 300) for _ in range(rng.randrange(1, 30))] for _ in range(7)]
    n_new = [rng.randrange(1, 12) for _ in prompts]
    ref = Reference(model, 1, None)
    expected = [ref.generate(p, k) for p, k in zip(prompts, n_new)]
    assert greedy_continuations(model, prompts, n_new, [], 1, batch_size=3) == expected
    preds = next_token_predictions(model, [p[:1] for p in prompts], [p[1:] for p in prompts], 1, batch_size=3)
    assert preds == [[ref.generate(p[:i], 1)[0] for i in range(1, len(p))] for p in prompts]


def test_sharing_decodes_less(world, monkeypatch):
    decoded: dict[bool, int] = {}
    original = decoding.greedy_continuations

    def counting(model, prompts, n_new, *args, **kwargs):
        decoded[share] = sum(n_new)
        return original(model, prompts, n_new, *args, **kwargs)

    monkeypatch.setattr(decoding, "greedy_continuations", counting)
    for share in (False, True):
        secret_el(world.model, world.enc, NS, pad_token_id=world.pad, eos_token_id=world.eos, share_work=share)
    plain_tokens = sum(sum(len(s) - i for i in range(max(1, len(s) - 2))) for s in world.enc.secret_ids)
    assert decoded[False] == plain_tokens and decoded[True] < decoded[False] / 2, decoded


def test_fabric_wrapped_model(world):
    lightning = pytest.importorskip("lightning")
    fabric = lightning.Fabric(accelerator="cpu", devices=1)
    wrapped = fabric.setup_module(copy.deepcopy(world.model))
    enc = world.enc.subset(range(6))
    _assert_close(secret_ma(wrapped, enc, pad_token_id=world.pad, batch_size=4), world.expected["ma"][:6])
    got = secret_el(wrapped, enc, NS, pad_token_id=world.pad, eos_token_id=world.eos, batch_size=4)
    for n in NS:
        _assert_close(got[n], world.expected[n][:6])


def test_exact_ties_go_to_the_lowest_token_id_like_hf_greedy_search():
    torch.manual_seed(0)
    model = _tiny("llama", 50)
    with torch.no_grad():
        model.lm_head.weight.zero_()  # every logit is 0: a tie between all 50 tokens at every step
    prompts = [[5, 9, 3], [7]]
    ref = Reference(model, 1, None)
    assert greedy_continuations(model, prompts, [4, 4], [], 1, batch_size=2) == [[0] * 4, [0] * 4]
    assert [ref.generate(p, 4) for p in prompts] == [[0] * 4, [0] * 4]
    assert next_token_predictions(model, [[5]], [[9, 3]], 1, batch_size=1) == [[0, 0]]
