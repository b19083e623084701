"""Sequence MA / EL_n checked against a plain re-implementation of the original algorithms (codeeraser-sscu.md
§1.2-1.3, icu-and-pretrained-llm-unlearning.md A and B.5).

The reference follows the text literally, one sequence per call: MA from T - 1 separate forward passes on ``x[:t]``,
EL from an uncached manual argmax loop (the whole prefix re-run at every step) from every offset, n-gram sets, the
KU or ICU window. The model is a tiny GPT-2 trained for a few steps on token sequences drawn with different weights,
so some are memorized, some partly and some not at all: MA and EL values are spread.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from types import SimpleNamespace

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast
from transformers.utils import logging as hf_logging

import fabricunlearn.metrics.decoding as decoding
import fabricunlearn.metrics.sequence as sequence
from fabricunlearn.metrics.sequence import encode_sequences, sequence_el, sequence_ma
from fabricunlearn.toy.pretrain import toy_gpt2

NS = (3, 5, 10)
VOCAB, EOS, PAD = 64, 0, 1
ICU_START = 20  # with T = 40: offsets 20..T-n, as ICU's 150 with T = 200
hf_logging.set_verbosity_error()


# ----------------------------------------------------------------------------------------------------- the toy world
def _sequences() -> dict[str, list[int]]:
    rng = random.Random(0)

    def rnd(n: int) -> list[int]:
        return [rng.randrange(2, VOCAB) for _ in range(n)]

    a, pattern = rnd(40), rnd(7)
    return {
        "memorized": a,
        "periodic": (pattern * 6)[:40],  # repeated n-grams in label and prediction
        "partial": rnd(40),
        "light": rnd(40),
        "borrows": rnd(18) + a[8:30],  # unseen, but continues into a memorized text: recoveries
        "unseen": rnd(40),
        "t30": rnd(30),  # ICU: T - 10 = ICU_START, a single offset for n = 10
        "t12": rnd(12),  # ICU: no offset at all
        "t5": rnd(5),  # shorter than n = 5 and 10
        "t1": [7],
        "t0": [],
    }


WEIGHTS = {"memorized": 8, "periodic": 3, "partial": 2, "light": 1, "t30": 2, "t12": 4, "t5": 2}


def _train(model, seqs: dict[str, list[int]], steps: int) -> None:
    pool = [s + [EOS] for name, s in seqs.items() for _ in range(WEIGHTS.get(name, 0))]
    rng = random.Random(1)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    model.train()
    for _ in range(steps):
        batch = rng.sample(pool, 4)
        width = max(len(s) for s in batch)
        ids = torch.full((4, width), PAD)
        labels = torch.full((4, width), -100)
        for b, s in enumerate(batch):
            ids[b, : len(s)] = labels[b, : len(s)] = torch.tensor(s)
        loss = model(input_ids=ids, attention_mask=(labels != -100).long(), labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()


# ---------------------------------------------------------------------------------------------- the original, plain
class Reference:
    """§1.2 / §1.3 literally, one sequence per call. Identical decoding calls are memoized (greedy is deterministic)."""

    def __init__(self, model, eos: int | None):
        self.model, self.eos = model, eos
        self.cache: dict = {}
        self.eos_stops = 0  # continuations the EOS ended before the comparison had all its tokens
        self.recoveries = 0  # continuations whose first token is wrong but that later match the label in place
        self.repeats = 0  # continuations with a repeated n-gram that matches the label (counted each time)

    def next_token(self, ids: list[int]) -> int:
        # The original passes no attention mask: every token is attended to, pads included (explicit ones here).
        x = torch.tensor([ids])
        return int(self.model(input_ids=x, attention_mask=torch.ones_like(x)).logits[0, -1].argmax())

    def greedy(self, prompt: list[int], steps: int) -> list[int]:
        """Manual argmax loop, no KV cache; after EOS (emitted) nothing is generated: -1 matches no token."""
        key = (tuple(prompt), steps)
        if key not in self.cache:
            ids, out = list(prompt), []
            for _ in range(steps):
                tok = self.next_token(ids)
                out.append(tok)
                ids.append(tok)
                if tok == self.eos:
                    break
            self.eos_stops += len(out) < steps
            self.cache[key] = out + [-1] * (steps - len(out))
        return self.cache[key]

    def ma(self, x: list[int]) -> float:
        hits = [self.next_token(x[:t]) == x[t] for t in range(1, len(x))]
        return sum(hits) / len(hits) if hits else math.nan

    def el(self, x: list[int], n: int, window: str = "ku") -> float:
        length = len(x)
        start = 1 if window == "ku" else ICU_START
        denominator = length - n if window == "ku" else length - ICU_START - n + 1
        if length <= n or denominator <= 0:
            return math.nan
        total = 0.0
        for t in range(start, length - n + 1):
            pred = self.greedy(x[:t], length - t)
            label = x[t:]
            g = length - t - n + 1
            label_grams = {tuple(label[j : j + n]) for j in range(g)}
            pred_grams = [tuple(pred[j : j + n]) for j in range(g)]
            total += sum(p in label_grams for p in pred_grams) / g
            if pred[0] != label[0] and any(pred[j : j + n] == label[j : j + n] for j in range(1, g)):
                self.recoveries += 1
            self.repeats += any(c > 1 and p in label_grams for p, c in Counter(pred_grams).items())
        return total / denominator

    def all_el(self, seqs: list[list[int]]) -> dict:
        return {(w, n): [self.el(x, n, w) for x in seqs] for w in ("ku", "icu") for n in NS}


# ------------------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def world(one_thread) -> SimpleNamespace:
    torch.manual_seed(0)
    named = _sequences()
    model = toy_gpt2(
        VOCAB,
        n_embd=64,
        n_layer=2,
        n_head=4,
        n_positions=128,  # finished rows of a decoding batch keep being fed: positions reach ~2T
        bos_token_id=EOS,
        eos_token_id=EOS,
        pad_token_id=PAD,
    )
    _train(model, named, steps=25)
    seqs = list(named.values())
    ref = Reference(model, eos=None)  # the original: its argmax loop ignores EOS
    return SimpleNamespace(
        model=model,
        names=list(named),
        seqs=seqs,
        ref=ref,
        ma=[ref.ma(x) for x in seqs],
        el=ref.all_el(seqs),
    )


def _assert_close(actual: torch.Tensor, expected: list[float]) -> None:
    assert actual.shape == (len(expected),) and actual.dtype == torch.float64
    torch.testing.assert_close(actual, torch.tensor(expected, dtype=actual.dtype), atol=1e-9, rtol=0, equal_nan=True)


# ---------------------------------------------------------------------------------------------------------- tests
def test_world_is_spread_and_covers_the_edge_cases(world):
    ma = dict(zip(world.names, world.ma))
    real = [v for v in ma.values() if not math.isnan(v)]
    assert max(real) == 1.0 and min(real) <= 0.1 and sum(0.1 < v < 0.9 for v in real) >= 3, ma
    el10 = [v for v in world.el["ku", 10] if not math.isnan(v)]
    assert 1.0 in el10 and 0.0 in el10 and any(0 < v < 1 for v in el10), el10
    assert world.ref.recoveries > 0 and world.ref.repeats > 0
    assert math.isnan(ma["t1"]) and math.isnan(ma["t0"])


@pytest.mark.parametrize("batch_size", [1, 3, 32])
def test_ma_equals_per_position_forward_passes(world, batch_size):
    _assert_close(sequence_ma(world.model, world.seqs, pad_token_id=PAD, batch_size=batch_size), world.ma)


def test_ma_count_padding_reproduces_the_original(world):
    # The original right-pads to target_length and counts every position, pads included.
    short = world.seqs[world.names.index("t12")]
    long = world.seqs[world.names.index("partial")]
    got = sequence_ma(world.model, [short, long, []], pad_token_id=PAD, count_padding=True, target_length=32)
    expected = [world.ref.ma(short + [PAD] * 20), world.ref.ma(long[:32]), world.ref.ma([PAD] * 32)]
    _assert_close(got, expected)
    assert got[0] != world.ma[world.names.index("t12")]  # the pads change the value
    real_only = sequence_ma(world.model, [short], pad_token_id=PAD, target_length=32)
    _assert_close(real_only, [world.ma[world.names.index("t12")]])  # target_length is used only with count_padding


@pytest.mark.parametrize("share_work", [True, False])
@pytest.mark.parametrize("batch_size", [1, 3, 32])
@pytest.mark.parametrize("window", ["ku", "icu"])
def test_el_equals_the_original(world, window, batch_size, share_work):
    got = sequence_el(
        world.model,
        world.seqs,
        NS,
        pad_token_id=PAD,
        eos_token_id=None,
        batch_size=batch_size,
        window=window,
        icu_start=ICU_START,
        share_work=share_work,
    )
    assert sorted(got) == list(NS)
    for n in NS:
        _assert_close(got[n], world.el[window, n])


def test_windows_and_short_sequences(world):
    el = {key: dict(zip(world.names, values)) for key, values in world.el.items()}
    for name in ("t0", "t1"):
        assert all(math.isnan(el[key][name]) for key in el)
    assert not math.isnan(el["ku", 3]["t5"]) and math.isnan(el["ku", 5]["t5"]) and math.isnan(el["ku", 10]["t5"])
    assert not math.isnan(el["ku", 10]["t12"]) and all(math.isnan(el["icu", n]["t12"]) for n in NS)
    assert not math.isnan(el["icu", 10]["t30"])  # the single offset t = ICU_START
    got = sequence_el(world.model, [[5], [], [5, 6, 7], [5, 6, 7, 8]], (3,), pad_token_id=PAD, eos_token_id=EOS)[3]
    assert [math.isnan(v) for v in got.tolist()] == [True, True, True, False]  # T = n has no offset, T = n + 1 one


def test_icu_window_bounds():
    # B.5: T = 200, n = 10 -> offsets 150..190, 41 of them, denominator 41.
    assert sequence._window(200, 10, "icu", 150) == (150, 190)
    assert sequence._window(200, 10, "ku", 150) == (1, 190)


@pytest.fixture(scope="module")
def eos_world(world) -> SimpleNamespace:
    # Declare the commonest token of the periodic sequence EOS: memorized continuations emit it, and the sequence
    # holds it at offsets where the model's prediction is right (there sharing must not be used).
    periodic = world.seqs[world.names.index("periodic")]
    eos = Counter(periodic).most_common(1)[0][0]
    ref = Reference(world.model, eos=eos)
    index = [world.names.index(name) for name in ("periodic", "partial", "borrows", "t30", "t5")]
    seqs = [world.seqs[k] for k in index]
    without_eos = {key: [values[k] for k in index] for key, values in world.el.items()}
    return SimpleNamespace(eos=eos, ref=ref, seqs=seqs, el=ref.all_el(seqs), without_eos=without_eos)


@pytest.mark.parametrize("share_work", [True, False])
def test_eos_inside_a_continuation(world, eos_world, share_work):
    assert eos_world.ref.eos_stops > 0 and eos_world.el != eos_world.without_eos
    for window in ("ku", "icu"):
        for batch_size in (3, 32):  # batch size 1 is covered by test_el_equals_the_original
            got = sequence_el(
                world.model,
                eos_world.seqs,
                NS,
                pad_token_id=PAD,
                eos_token_id=[eos_world.eos],
                batch_size=batch_size,
                window=window,
                icu_start=ICU_START,
                share_work=share_work,
            )
            for n in NS:
                _assert_close(got[n], eos_world.el[window, n])


def test_value_does_not_depend_on_the_batch(world):
    order = [4, 0, 10, 2, 7, 1]
    got = sequence_el(
        world.model, [world.seqs[k] for k in order], NS, pad_token_id=PAD, eos_token_id=None, batch_size=2
    )
    for n in NS:
        _assert_close(got[n], [world.el["ku", n][k] for k in order])


def test_sharing_decodes_less(world, monkeypatch):
    decoded: dict[bool, int] = {}
    original = decoding.greedy_continuations

    def counting(model, prompts, n_new, *args, **kwargs):
        decoded[share] = sum(n_new)
        return original(model, prompts, n_new, *args, **kwargs)

    monkeypatch.setattr(decoding, "greedy_continuations", counting)
    for share in (False, True):
        sequence_el(world.model, world.seqs, NS, pad_token_id=PAD, eos_token_id=None, share_work=share)
    # Without sharing: exactly the T - t tokens of every offset t = 1..T - min(n), as the comparison needs.
    plain = sum(len(x) - t for x in world.seqs for t in range(1, len(x) - min(NS) + 1))
    assert decoded[False] == plain and decoded[True] < 0.6 * decoded[False], decoded
    memorized = world.seqs[world.names.index("memorized")]
    assert world.ma[world.names.index("memorized")] == 1.0
    for share in (False, True):
        sequence_el(world.model, [memorized], NS, pad_token_id=PAD, eos_token_id=None, share_work=share)
    assert decoded[True] == 0 and decoded[False] == sum(range(3, 40)), decoded  # nothing to decode when memorized


def test_modes_are_restored(world):
    model = world.model
    model.train()
    model.transformer.h[0].eval()
    try:
        sequence_ma(model, world.seqs[:2], pad_token_id=PAD)
        sequence_el(model, world.seqs[:2], (10,), pad_token_id=PAD, eos_token_id=EOS)
        assert model.training and model.transformer.h[1].training and not model.transformer.h[0].training
    finally:
        model.eval()


def test_bad_arguments(world):
    with pytest.raises(ValueError, match="ns"):
        sequence_el(world.model, world.seqs, (), pad_token_id=PAD, eos_token_id=EOS)
    with pytest.raises(ValueError, match="window"):
        sequence_el(world.model, world.seqs, pad_token_id=PAD, eos_token_id=EOS, window="pile")
    with pytest.raises(ValueError, match="icu_start"):
        sequence_el(world.model, world.seqs, pad_token_id=PAD, eos_token_id=EOS, window="icu", icu_start=0)


def test_encode_sequences_cuts_and_adds_no_special_tokens():
    vocab = {"<s>": 0, "</s>": 1, "a": 2, "b": 3, "c": 4, "[UNK]": 5}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 0)])  # Llama-style
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>")
    assert tokenizer("a b")["input_ids"] == [0, 2, 3]
    texts = ["a b c a b c", "c a", "", "b " * 10]
    assert encode_sequences(tokenizer, texts, target_length=4) == [[2, 3, 4, 2], [4, 2], [], [3, 3, 3, 3]]
    assert encode_sequences(tokenizer, texts)[0] == [2, 3, 4, 2, 3, 4]
    assert encode_sequences(tokenizer, []) == []
