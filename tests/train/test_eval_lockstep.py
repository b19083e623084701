"""Evaluation under a sharded strategy: every forward pass is a collective, so ranks whose shards need different
amounts of decoding must still run the same passes (or they deadlock), and the gathered values (secret and sequence
MA / EL_n, membership scores) must equal one process's."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import textwrap

import pytest
import torch

from tests.conftest import REPO

WORKER = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path

    import lightning as L
    import torch

    from fabricunlearn.data.formats import read_secret_rows
    from fabricunlearn.metrics.memorization import encode_secrets
    from fabricunlearn.models import load_model_and_tokenizer
    from fabricunlearn.strategies import build_strategy, decoder_layer_classes
    from fabricunlearn.data.batches import TokenizedSet
    from fabricunlearn.metrics.sequence import encode_sequences
    from fabricunlearn.train.evaluation import evaluate_secrets, evaluate_sequences, membership_scores

    world, rows_path, out = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
    torch.set_num_threads(1)
    model, tokenizer = load_model_and_tokenizer(world / "model")
    strategy = build_strategy("fsdp2", "cpu", decoder_layer_classes(model))
    fabric = L.Fabric(accelerator="cpu", devices=2, strategy=strategy)
    fabric.launch()
    module = fabric.setup_module(model)
    enc = encode_secrets(tokenizer, read_secret_rows(rows_path))
    values = evaluate_secrets(
        fabric, module, enc, ns=[3, 10], pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id, batch_size=3,
    )
    values = {k: v.tolist() for k, v in values.items()}
    # sequence-level metrics and membership scores of 9 documents: ranks hold 5 and 4 (one stand-in)
    texts = [row["text"] for row in read_secret_rows(rows_path)][:9]
    seqs = encode_sequences(tokenizer, texts, 32)
    ids = dict(pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    sequences = evaluate_sequences(fabric, module, seqs, ns=[3], **ids, batch_size=3)
    values |= {f"seq_{k}": v.tolist() for k, v in sequences.items()}
    docs = TokenizedSet([tokenizer(t)["input_ids"][:100] for t in texts])
    pad = tokenizer.pad_token_id
    scores = membership_scores(fabric, module, docs, tokenizer, pad_token_id=pad, batch_size=2, k=0.2)
    values |= {f"mia_{k}": v for k, v in scores.items()}
    if fabric.global_rank == 0:
        out.write_text(json.dumps(values))
    """
)


def _rows(ci_world, rng: random.Random) -> list[dict]:
    """Memorized secrets at even positions (rank 0's shard: almost no decoding) and random values at odd ones
    (rank 1's: decoding from every offset), so the ranks' decoding work differs a lot."""
    memorized = [json.loads(line) for line in (ci_world / "kept.jsonl").read_text().splitlines()][:5]
    rows = []
    for row in memorized:
        secret = row["secrets"][0]
        rows.append({"doc_id": row["doc_id"], "text": row["text"], "secrets": [secret]})
        value = "".join(rng.choice("abcdef0123456789") for _ in range(rng.randrange(8, 40)))
        text = row["text"][: secret["start"]] + value + row["text"][secret["end"] :]
        fake = {**secret, "value": value, "end": secret["start"] + len(value)}
        rows.append({"doc_id": f"{row['doc_id']}-random", "text": text, "secrets": [fake]})
    return rows


@pytest.mark.slow
def test_fsdp2_evaluation_runs_equal_passes_and_equals_one_process(ci_world, tmp_path):
    from fabricunlearn.data.formats import read_secret_rows, write_jsonl
    from fabricunlearn.metrics.memorization import encode_secrets, secret_el, secret_ma
    from fabricunlearn.metrics.mia import SCORES, mia_scores, token_statistics
    from fabricunlearn.metrics.sequence import encode_sequences, sequence_el, sequence_ma
    from fabricunlearn.models import load_model_and_tokenizer

    rows_path = tmp_path / "rows.jsonl"
    write_jsonl(rows_path, _rows(ci_world, random.Random(0)))
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    out = tmp_path / "values.json"
    proc = subprocess.run(
        [sys.executable, str(script), str(ci_world), str(rows_path), str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,  # a deadlock (unequal passes) hangs here instead of finishing in seconds
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(out.read_text())

    model, tokenizer = load_model_and_tokenizer(ci_world / "model")
    enc = encode_secrets(tokenizer, read_secret_rows(rows_path))
    common = dict(pad_token_id=tokenizer.pad_token_id, batch_size=3)
    expected = {"ma": secret_ma(model, enc, **common)}
    els = secret_el(model, enc, (3, 10), eos_token_id=tokenizer.eos_token_id, **common)
    expected.update({"el3": els[3], "el10": els[10]})
    ma = expected["ma"]
    assert ma[0::2].min() > 0.9 and ma[1::2].max() < 0.5, "the shards must differ in decoding work"
    texts = [row["text"] for row in read_secret_rows(rows_path)][:9]
    seqs = encode_sequences(tokenizer, texts, 32)
    expected["seq_ma"] = sequence_ma(model, seqs, **common)
    expected["seq_el3"] = sequence_el(model, seqs, (3,), eos_token_id=tokenizer.eos_token_id, **common)[3]
    docs = [tokenizer(t)["input_ids"][:100] for t in texts]
    stats = token_statistics(model, docs, tokenizer.pad_token_id, batch_size=1)
    per_doc = [mia_scores(s, tokenizer.decode(d, skip_special_tokens=True), 0.2) for s, d in zip(stats, docs)]
    expected |= {f"mia_{k}": torch.tensor([row[k] for row in per_doc], dtype=torch.float64) for k in SCORES}
    for key, value in expected.items():
        # scores are sums of fp32 log-probs: padding and sharded matmuls move their last bits (MA / EL are counts)
        tolerance = 1e-6 if key.startswith("mia_") else 1e-12
        torch.testing.assert_close(torch.tensor(got[key], dtype=torch.float64), value, atol=tolerance, rtol=0)
