"""What ICU needs besides its loss (reference icu-and-pretrained-llm-unlearning.md §B.1, §B.4): each forget
document's nearest neighbour in a candidate pool, and the per-epoch test that decides which documents still need
unlearning.

Neighbours: with a local sentence-transformers model, its embeddings and an exact L2 search with faiss (the
original: all-MiniLM-L6-v2, `IndexFlatL2`, the first neighbour only); without one, TF-IDF cosine similarity with
scikit-learn (word unigrams and bigrams over code identifiers). Nothing is downloaded.

The forgotten test, per forget document: the model continues a prompt greedily and the continuation is compared with
the document's own text; the document counts as forgotten when F1 < `f1_threshold` **or** BLEU < `bleu_threshold`
(the original's 0.3 and 0.01). Differences from the original, which scored 200-token extraction-benchmark rows:
- prompt and reference: the `prompt_tokens` tokens before the document's first secret token (default 128, the
  secret metrics' prefix) and the `continuation_tokens` tokens from it on (the original: tokens 100:150 and
  150:200 of each row), so the test asks whether the model still writes the secret in its context;
- greedy decoding (the original: beam search with 2 beams), as every extraction metric here;
- BLEU: NLTK sentence BLEU-4, uniform weights, no smoothing (as the original), on the model's tokens instead of
  lowercased NLTK words: a secret is one "word", so word BLEU-4 of a key reproduced exactly is 0;
- F1: BERTScore F1 (`bert_score`, the given layer, no idf, no baseline rescaling) when a local BERT folder is given;
  otherwise token-level F1 on the model's own tokens: BERTScore's greedy matching with exact-match similarity
  (a candidate token matches an unused identical reference token), so F1 = 2PR/(P+R) of the multiset overlap.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np


def nearest_neighbours(queries: Sequence[str], pool: Sequence[str], embedding_model: str | None = None) -> list[int]:
    """For each query text, the index of its nearest pool text."""
    if not pool:
        raise ValueError("the neighbour pool (data.retain) is empty")
    if embedding_model is None:
        from sklearn.feature_extraction.text import TfidfVectorizer

        # identifiers and numbers as words; bigrams keep some of the code's order
        vectorizer = TfidfVectorizer(token_pattern=r"[A-Za-z_][A-Za-z0-9_]*|\d+", ngram_range=(1, 2), sublinear_tf=True)
        matrix = vectorizer.fit_transform(list(pool) + list(queries))
        pool_m, query_m = matrix[: len(pool)], matrix[len(pool) :]
        similarity = (query_m @ pool_m.T).toarray()  # rows are L2-normalised: this is the cosine
        return [int(i) for i in similarity.argmax(axis=1)]
    try:
        import faiss
        from sentence_transformers import SentenceTransformer
    except ImportError as err:
        raise ValueError(
            f"method.args.embedding_model needs sentence-transformers and faiss: pip install 'fabricunlearn[icu]' "
            f"({err})"
        ) from None
    if not Path(embedding_model).is_dir():
        raise ValueError(
            f"method.args.embedding_model: {embedding_model} is not a local folder (nothing is downloaded)"
        )
    encoder = SentenceTransformer(embedding_model, device="cpu", local_files_only=True)
    pool_e = np.ascontiguousarray(encoder.encode(list(pool), convert_to_numpy=True), dtype=np.float32)
    query_e = np.ascontiguousarray(encoder.encode(list(queries), convert_to_numpy=True), dtype=np.float32)
    index = faiss.IndexFlatL2(pool_e.shape[1])
    index.add(pool_e)
    _, nearest = index.search(query_e, 1)
    return [int(i) for i in nearest[:, 0]]


def prompt_spans(
    secret_masks: Sequence[Sequence[bool]], lengths: Sequence[int], prompt_tokens: int, continuation_tokens: int
) -> list[tuple[int, int, int]]:
    """Per document `(prompt_start, k, reference_end)`: the prompt is tokens [prompt_start, k), the reference tokens
    [k, reference_end), where k is the first secret token (the document's start when it has none)."""
    spans = []
    for mask, n in zip(secret_masks, lengths):
        k = next((t for t, m in enumerate(mask) if m), 0)
        spans.append((max(0, k - prompt_tokens), k, min(n, k + continuation_tokens)))
    return spans


def sentence_bleu(candidate: Sequence[int], reference: Sequence[int]) -> float:
    """NLTK sentence BLEU-4, uniform weights, no smoothing, on the model's tokens (module docstring)."""
    import warnings

    from nltk.translate.bleu_score import sentence_bleu as nltk_bleu

    if not candidate or not reference:
        return 0.0
    with warnings.catch_warnings():  # NLTK warns for every zero n-gram overlap; 0 is the answer
        warnings.simplefilter("ignore")
        return float(nltk_bleu([list(reference)], list(candidate)))


def token_f1(candidate: Sequence[int], reference: Sequence[int]) -> float:
    """F1 of the multiset overlap of two token sequences (BERTScore with exact-match similarity, no idf)."""
    if not candidate or not reference:
        return 0.0
    overlap = sum((Counter(candidate) & Counter(reference)).values())
    if overlap == 0:
        return 0.0
    precision, recall = overlap / len(candidate), overlap / len(reference)
    return 2 * precision * recall / (precision + recall)


def bert_f1(candidates: list[str], references: list[str], bert_model: str, layer: int) -> list[float]:
    """BERTScore F1 with a local BERT folder at `layer`, no idf, no baseline rescaling (the original's settings)."""
    try:
        from bert_score import score
    except ImportError as err:
        raise ValueError(f"method.args.bert_model needs bert-score: pip install 'fabricunlearn[icu]' ({err})") from None
    if not Path(bert_model).is_dir():
        raise ValueError(f"method.args.bert_model: {bert_model} is not a local folder (nothing is downloaded)")
    _, _, f1 = score(candidates, references, model_type=bert_model, num_layers=layer, idf=False, device="cpu")
    return [float(x) for x in f1]
