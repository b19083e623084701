"""`fabricunlearn probe`: the DESIGN.md row contract, values equal to the metric functions, resumption after an
interruption, and defined behaviour for every awkward input."""

from __future__ import annotations

import json
import random
import shutil
import stat
from pathlib import Path

import pytest
import torch

from fabricunlearn.cli import main
from fabricunlearn.commands import probe as probe_module
from fabricunlearn.data.formats import read_secret_rows, write_jsonl
from fabricunlearn.metrics.memorization import encode_secrets, secret_el, secret_ma
from fabricunlearn.models import load_model_and_tokenizer


def _error_line(capsys) -> str:
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip() and "%|" not in line]
    assert len(err) == 1, err
    assert err[0].startswith("fabricunlearn: error: ")
    return err[0]


def _read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def scan_file(ci_world, tmp_path_factory) -> Path:
    """Memorized secrets (the kept set), each followed by an unmemorized random value in the same place, plus the
    awkward cases: a secret at offset 0, one longer than 32 tokens, an empty one, a row without secrets."""
    rng = random.Random(0)
    rows = []
    for row in read_secret_rows(ci_world / "kept.jsonl")[:4]:
        rows.append({**row, "source": "kept"})  # extra keys must pass through untouched
        s = row["secrets"][0]
        value = "".join(rng.choice("abcdef0123456789") for _ in range(24))
        text = row["text"][: s["start"]] + value + row["text"][s["end"] :]
        rows.append({"doc_id": f"{row['doc_id']}-rand", "text": text, "secrets": [{**s, "value": value}]})
        rows[-1]["secrets"][0]["end"] = s["start"] + len(value)
    long_value = "x" * 10 + "".join(rng.choice("ABCDEFGHJK") for _ in range(150))
    rows.append({"doc_id": "offset0", "text": "token = 1\n", "secrets": [{"value": "token", "start": 0, "end": 5}]})
    rows.append(
        {"doc_id": "long", "text": f"k = '{long_value}'", "secrets": [{"value": long_value, "start": 5, "end": 165}]}
    )
    rows.append({"doc_id": "empty", "text": "a = ''", "secrets": [{"value": "", "start": 5, "end": 5}]})
    rows.append({"doc_id": "none", "text": "pass", "secrets": []})
    path = tmp_path_factory.mktemp("probe") / "secrets.jsonl"
    write_jsonl(path, rows)
    return path


@pytest.fixture(scope="module")
def probed(ci_world, scan_file, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("probed") / "probed.jsonl"
    args = ["probe", "--model", str(ci_world / "model"), "--data", str(scan_file), "--output", str(out)]
    assert main([*args, "--metrics", "ma,el3,el5,el10", "--chunk_secrets", "3", "--batch_size", "4"]) == 0
    return out


def test_probe_rows_follow_the_contract_and_equal_the_metrics(ci_world, scan_file, probed):
    rows, inputs = _read(probed), read_secret_rows(scan_file)
    assert [r["doc_id"] for r in rows] == [r["doc_id"] for r in inputs]
    for row, source in zip(rows, inputs):
        assert {k: v for k, v in row.items() if k not in ("secrets", "secret_mean_ma", "secret_max_ma")} == {
            k: v for k, v in source.items() if k != "secrets"
        }
        for secret, original in zip(row["secrets"], source["secrets"]):
            assert {k: secret[k] for k in original} == original
    model, tokenizer = load_model_and_tokenizer(ci_world / "model")
    enc = encode_secrets(tokenizer, inputs)
    ma = secret_ma(model, enc, pad_token_id=tokenizer.pad_token_id)
    els = secret_el(model, enc, (3, 5, 10), pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    for k, (d, j) in enumerate(zip(enc.doc_index, enc.secret_index)):
        secret = rows[d]["secrets"][j]
        expected = {"ma": ma[k], **{f"el{n}": els[n][k] for n in (3, 5, 10)}}
        for key, value in expected.items():
            if torch.isnan(value):
                assert secret[key] is None
            else:
                assert secret[key] == pytest.approx(value.item(), abs=1e-12), (rows[d]["doc_id"], key)
    by_id = {r["doc_id"]: r for r in rows}
    kept = [r for r in rows if r.get("source") == "kept"]
    assert min(r["secret_max_ma"] for r in kept) > 0.9
    assert max(r["secret_max_ma"] for r in rows if r["doc_id"].endswith("-rand")) < 0.5
    for row in kept:
        mas = [s["ma"] for s in row["secrets"]]
        assert row["secret_mean_ma"] == pytest.approx(sum(mas) / len(mas)) and row["secret_max_ma"] == max(mas)
    assert by_id["empty"]["secrets"][0]["ma"] is None and by_id["empty"]["secret_mean_ma"] is None
    assert by_id["none"]["secrets"] == [] and by_id["none"]["secret_max_ma"] is None
    assert 0 <= by_id["offset0"]["secrets"][0]["ma"] <= 1  # scored after BOS
    assert 0 <= by_id["long"]["secrets"][0]["el10"] <= 1  # read up to its first 32 tokens
    assert not list(probed.parent.glob("*.partial*"))
    assert stat.S_IMODE(probed.stat().st_mode) == 0o600  # it holds the secret values


def test_probe_resumes_after_an_interruption(ci_world, scan_file, probed, tmp_path, monkeypatch):
    out = tmp_path / "probed.jsonl"
    args = ["probe", "--model", str(ci_world / "model"), "--data", str(scan_file), "--output", str(out)]
    args += ["--metrics", "ma,el3,el5,el10", "--chunk_secrets", "3", "--batch_size", "4", "--progress", "false"]
    real, calls = probe_module.score_rows, []

    def dies_on_third_chunk(sm, rows, *a, **k):
        calls.append([r["doc_id"] for r in rows])
        if len(calls) == 3 and not resumed:
            raise KeyboardInterrupt
        return real(sm, rows, *a, **k)

    monkeypatch.setattr(probe_module, "score_rows", dies_on_third_chunk)
    resumed = False
    assert main(args) == 130
    partial = out.with_name("probed.jsonl.partial")
    assert not out.exists() and len(partial.read_text().splitlines()) == len(calls[0]) + len(calls[1])
    with partial.open("a") as f:
        f.write('{"doc_id": "torn')  # a kill in the middle of a write
    calls.clear()
    resumed = True
    assert main(args) == 0
    assert calls[0][0] not in {d for c in calls[1:] for d in c}  # nothing scored twice
    assert out.read_text() == probed.read_text()
    assert not partial.exists()


def test_probe_refuses_to_resume_with_other_settings_or_to_overwrite(ci_world, scan_file, probed, tmp_path, capsys):
    out = tmp_path / "p.jsonl"
    partial = out.with_name("p.jsonl.partial")
    partial.write_text("")
    state = {"rows": 0, "bytes": 0, "last_doc_id": None}
    out.with_name("p.jsonl.partial.json").write_text(json.dumps({"settings": {"el_ns": [10]}, "state": state}))
    base = ["probe", "--model", str(ci_world / "model"), "--data", str(scan_file), "--output", str(out)]
    assert main(base) == 2
    assert "pass --restart" in _error_line(capsys)
    assert main([*base[:-1], str(probed)]) == 2
    assert "exists" in _error_line(capsys)
    assert main([*base[:-1], str(scan_file)]) == 2
    assert "input file" in _error_line(capsys)
    assert main([*base, "--metrics", "ma", "--restart", "--progress", "false"]) == 0  # a bare flag means true
    assert len(_read(out)) == len(_read(probed)) and not partial.exists()


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b'{"doc_id": 1, "text": "a\xff", "secrets": []}\n', "secrets.jsonl:1: not UTF-8"),
        (b'{"doc_id": 1, "text": "abc", "secrets": [{"value": "b", "start": 0, "end": 1}]}\n', "is not its value"),
        (b'{"doc_id": 1, "text": "abc"}\n', "no `secrets` list"),
        (b"[1, 2]\n", "a row must be a JSON object"),
    ],
)
def test_probe_bad_input_is_one_line(ci_world, tmp_path, capsys, content, expected):
    data = tmp_path / "secrets.jsonl"
    data.write_bytes(content)
    args = ["probe", "--model", str(ci_world / "model"), "--data", str(data), "--output", str(tmp_path / "o.jsonl")]
    assert main(args) == 2
    assert expected in _error_line(capsys)


@pytest.mark.parametrize("metrics", ["ma,el0", "ma,bleu", "el"])
def test_unknown_metric(ci_world, scan_file, tmp_path, capsys, metrics):
    args = ["probe", "--model", str(ci_world / "model"), "--data", str(scan_file), "--output", str(tmp_path / "o")]
    assert main([*args, "--metrics", metrics]) == 2
    assert "--metrics" in _error_line(capsys)


def test_model_without_a_pad_token_gives_the_same_values(ci_world, scan_file, probed, tmp_path):
    folder = tmp_path / "nopad"
    shutil.copytree(ci_world / "model", folder)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config.pop("pad_token", None)
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    special = folder / "special_tokens_map.json"
    if special.exists():
        special.write_text(json.dumps({k: v for k, v in json.loads(special.read_text()).items() if k != "pad_token"}))
    _, tokenizer = load_model_and_tokenizer(folder)
    assert tokenizer.pad_token == "[PAD]"  # added: the folder really had none
    out = tmp_path / "o.jsonl"
    args = ["probe", "--model", str(folder), "--data", str(scan_file), "--output", str(out)]
    assert main([*args, "--metrics", "ma,el3,el5,el10", "--progress", "false"]) == 0
    assert _read(out) == _read(probed)


def test_prompts_longer_than_the_context_are_cut_to_fit(ci_world, tmp_path):
    from fabricunlearn.toy.pretrain import toy_gpt2

    model, tokenizer = load_model_and_tokenizer(ci_world / "model")
    ids = {f"{k}_token_id": getattr(tokenizer, f"{k}_token_id") for k in ("bos", "eos", "pad")}
    small = toy_gpt2(len(tokenizer), n_positions=40, n_embd=32, n_layer=2, n_head=2, **ids)
    small.save_pretrained(tmp_path / "small")
    tokenizer.save_pretrained(tmp_path / "small")
    rows = read_secret_rows(ci_world / "kept.jsonl")[:6]
    enc = encode_secrets(tokenizer, rows, context_length=40)
    assert max(len(p) for p in encode_secrets(tokenizer, rows).prefix_ids) > 40  # the prefixes really were long
    assert all(len(p) + len(s) <= 40 for p, s in zip(enc.prefix_ids, enc.secret_ids))
    data = tmp_path / "rows.jsonl"
    write_jsonl(data, rows)
    out = tmp_path / "o.jsonl"
    args = ["probe", "--model", str(tmp_path / "small"), "--data", str(data), "--output", str(out)]
    assert main([*args, "--metrics", "ma,el3", "--progress", "false"]) == 0
    assert all(0 <= s["el3"] <= 1 for row in _read(out) for s in row["secrets"])
    with pytest.raises(ValueError, match="too few"):
        encode_secrets(tokenizer, rows, context_length=32)
