"""Model loading: the pad token rule (never shrink a padded vocabulary) and the frozen reference."""

from __future__ import annotations

import torch

from fabricunlearn.models import load_model_and_tokenizer, make_reference


def _save_gpt2(folder, tokenizer, vocab_size):
    from fabricunlearn.toy.pretrain import toy_gpt2

    eos = tokenizer.eos_token_id
    model = toy_gpt2(
        vocab_size,
        n_positions=64,
        n_embd=16,
        n_layer=1,
        n_head=2,
        bos_token_id=eos,
        eos_token_id=eos,
        pad_token_id=None,
    )
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def _tokenizer_without_pad(tiny_world):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_world / "model")
    tok.pad_token = None
    return tok


def test_uses_the_tokenizers_own_pad_token(tiny_world):
    model, tokenizer = load_model_and_tokenizer(tiny_world / "model")
    assert tokenizer.pad_token == "<|pad|>"
    assert model.config.pad_token_id == tokenizer.pad_token_id
    assert model.get_input_embeddings().weight.shape[0] == len(tokenizer)


def test_padded_vocabulary_is_never_shrunk(tiny_world, tmp_path):
    """CodeGen and Qwen pad their embeddings beyond the tokenizer; adding [PAD] must not cut them down."""
    tok = _tokenizer_without_pad(tiny_world)
    _save_gpt2(tmp_path / "m", tok, vocab_size=len(tok) + 64)
    model, tokenizer = load_model_and_tokenizer(tmp_path / "m")
    assert tokenizer.pad_token == "[PAD]" and tokenizer.pad_token_id == len(tok)
    assert model.get_input_embeddings().weight.shape[0] == len(tok) + 64


def test_embeddings_grow_when_the_added_pad_needs_a_row(tiny_world, tmp_path):
    tok = _tokenizer_without_pad(tiny_world)
    _save_gpt2(tmp_path / "m", tok, vocab_size=len(tok))
    model, tokenizer = load_model_and_tokenizer(tmp_path / "m")
    assert model.get_input_embeddings().weight.shape[0] == len(tok) + 1 == len(tokenizer)


def test_reference_is_a_frozen_copy(tiny_world):
    model, _ = load_model_and_tokenizer(tiny_world / "model")
    reference = make_reference(model)
    assert not reference.training and not any(p.requires_grad for p in reference.parameters())
    with torch.no_grad():
        next(model.parameters()).add_(1.0)
    assert not torch.equal(next(model.parameters()), next(reference.parameters()))
