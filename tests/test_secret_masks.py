"""Secret-token masks from tokenizer offsets: the exact rule by default, the original's inclusive rule as an option,
and short documents kept whole."""

from __future__ import annotations

import random

import pytest

from fabricunlearn.data.batches import secret_token_mask, tokenize_documents
from fabricunlearn.models import load_tokenizer


@pytest.fixture(scope="module")
def tokenizer(tiny_world):
    return load_tokenizer(tiny_world / "model")


def test_exact_mask_covers_the_secret_and_nothing_beside_it(tokenizer):
    rng = random.Random(0)
    for _ in range(50):
        value = "".join(rng.choice("ABCDEFGHJKLMNPQRSTUVWXYZ0123456789") for _ in range(rng.randrange(4, 30)))
        before = rng.choice(["key = '", 'x\r\nkey="', "# clé : «", "token: "])
        text = before + value + rng.choice(["'\n", '"\r\n', "» fin", ""]) + "print(1)"
        start, end = len(before), len(before) + len(value)
        row = {"text": text, "secrets": [{"value": value, "start": start, "end": end}]}
        data = tokenize_documents(tokenizer, [row], 512, with_secrets=True)
        offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
        marked = [span for span, m in zip(offsets, data.secret_mask[0]) if m]
        assert marked and all(a < end and b > start for a, b in marked)  # every marked token overlaps the secret
        assert min(a for a, _ in marked) <= start and max(b for _, b in marked) >= end  # and together cover it
        unmarked = [span for span, m in zip(offsets, data.secret_mask[0]) if not m]
        assert all(b <= start or a >= end for a, b in unmarked)


def test_inclusive_rule_also_marks_the_tokens_that_touch_the_secret():
    offsets = [(0, 4), (4, 6), (6, 10), (10, 11), (11, 15)]  # the secret is exactly tokens 1 and 2: [4, 10)
    assert secret_token_mask(offsets, [(4, 10)], "exact") == [False, True, True, False, False]
    assert secret_token_mask(offsets, [(4, 10)], "inclusive") == [True, True, True, True, False]
    with pytest.raises(ValueError, match="boundary"):
        secret_token_mask(offsets, [(4, 10)], "loose")


def test_short_documents_keep_all_their_tokens_and_secrets(tokenizer):
    row = {"text": "k = 'AKIA1234'\n", "secrets": [{"value": "AKIA1234", "start": 5, "end": 13}]}
    data = tokenize_documents(tokenizer, [row], 512, with_secrets=True)
    assert len(data.input_ids[0]) == len(tokenizer(row["text"], add_special_tokens=False)["input_ids"]) < 512
    assert any(data.secret_mask[0])
