"""Token tensors for training: forget documents with their secret-token masks, retain documents, padding."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch


@dataclass
class TokenizedSet:
    """Right-padded-on-demand documents: ids per document and, for forget sets, a per-token secret mask."""

    input_ids: list[list[int]]
    secret_mask: list[list[bool]] | None = None

    def __len__(self) -> int:
        return len(self.input_ids)

    def target_counts(self) -> list[int]:
        """Tokens each document contributes as next-token targets (all but the first)."""
        return [max(len(ids) - 1, 0) for ids in self.input_ids]


MaskBoundary = Literal["exact", "inclusive"]


def secret_token_mask(offsets: Sequence[tuple[int, int]], spans: Sequence[tuple[int, int]], boundary: MaskBoundary):
    """Per token: does its character span ``[a, b)`` belong to a secret ``[start, end)``?

    ``exact`` (default): the spans overlap, ``a < end and b > start``. ``inclusive`` is the original's rule
    (``a <= end and b >= start``, reference §5), which also marks tokens that merely touch a secret, such as the
    closing quote after it. Tokens with an empty span (special tokens) are never secret under ``exact``.
    """
    if boundary == "exact":
        return [any(a < end and b > start for start, end in spans) for a, b in offsets]
    if boundary == "inclusive":
        return [any(a <= end and b >= start for start, end in spans) for a, b in offsets]
    raise ValueError(f"unknown mask boundary {boundary!r}; known: exact, inclusive")


def tokenize_documents(
    tokenizer, rows: list[dict[str, Any]], max_length: int, with_secrets: bool, boundary: MaskBoundary = "exact"
) -> TokenizedSet:
    """Tokenize `text` to at most `max_length` tokens (no special tokens, no padding: a short document keeps all its
    tokens; the original padded to 512 and, through the pad tokens' (0, 0) offsets, dropped every document shorter
    than that). With secrets, each document also gets its secret-token mask (:func:`secret_token_mask`)."""
    texts = [row["text"] for row in rows]
    enc = tokenizer(
        texts,
        max_length=max_length,
        truncation=True,
        add_special_tokens=False,
        return_offsets_mapping=with_secrets,
    )
    ids = [list(x) for x in enc["input_ids"]]
    if not with_secrets:
        return TokenizedSet(ids)
    masks = []
    for row, offsets in zip(rows, enc["offset_mapping"]):
        spans = [(int(s["start"]), int(s["end"])) for s in row["secrets"]]
        masks.append(secret_token_mask(offsets, spans, boundary))
    return TokenizedSet(ids, masks)


def collate(data: TokenizedSet, indices: list[int], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Right-pad the chosen documents; labels are -100 on padding."""
    length = max(len(data.input_ids[i]) for i in indices)
    batch = len(indices)
    input_ids = torch.full((batch, length), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((batch, length), dtype=torch.long)
    secret_mask = torch.zeros((batch, length), dtype=torch.bool)
    for row, i in enumerate(indices):
        ids = data.input_ids[i]
        input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        attention_mask[row, : len(ids)] = 1
        if data.secret_mask is not None:
            secret_mask[row, : len(ids)] = torch.tensor(data.secret_mask[i], dtype=torch.bool)
    labels = input_ids.masked_fill(attention_mask == 0, -100)
    # `index`: the documents' positions in `data`, for methods that keep per-document state (ICU)
    out = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels, "index": torch.tensor(indices)}
    if data.secret_mask is not None:
        out["secret_mask"] = secret_mask
    return out
