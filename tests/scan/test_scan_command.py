"""`fabricunlearn scan`: the row contract, every input kind, workers, resumption, skipped inputs and one-line errors."""

from __future__ import annotations

import json
import os
import random
import stat
from pathlib import Path

import pytest

from fabricunlearn.cli import main
from fabricunlearn.data import resumable
from fabricunlearn.toy.secret_formats import plant_secrets
from fabricunlearn.toy.stdlib_corpus import code_chunks


def _error_line(capsys) -> str:
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip() and "%|" not in line]
    assert len(err) == 1, err
    assert err[0].startswith("fabricunlearn: error: ")
    return err[0]


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _scan(*args, workers: int = 1) -> int:
    return main(["scan", *map(str, args), "--workers", str(workers), "--progress", "false"])


@pytest.fixture(scope="module")
def docs() -> list[dict]:
    """Code with planted secrets, plain code, and a document with CRLF line ends and non-ASCII text before secrets."""
    rng = random.Random(5)
    rows = []
    for i, chunk in enumerate(code_chunks(rng, 60, 150, 500)):
        text, secrets = plant_secrets(rng, chunk, 1 + i % 2) if i % 3 else (chunk, [])
        rows.append({"doc_id": f"doc-{i:03d}", "text": text, "planted": secrets})
    text, secrets = plant_secrets(rng, "# Grüße 🙂 — naïve café\nx = 1\ny = 2\n", 2)
    crlf = text.replace("\n", "\r\n")
    rows.append({"doc_id": "crlf", "text": crlf, "planted": [_shifted(crlf, s) for s in secrets]})
    return rows


def _shifted(text: str, secret: dict) -> dict:
    start = text.index(secret["value"])
    return {**secret, "start": start, "end": start + len(secret["value"])}


@pytest.fixture(scope="module")
def corpus(docs, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "corpus.jsonl"
    with path.open("w", encoding="utf-8") as f:
        for row in docs:
            f.write(json.dumps({"doc_id": row["doc_id"], "text": row["text"]}, ensure_ascii=False) + "\n")
    return path


@pytest.fixture(scope="module")
def scanned(corpus, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("scanned") / "secrets.jsonl"
    assert _scan("--input", corpus, "--output", out, "--chunk_docs", "7") == 0
    return out


def test_rows_follow_the_contract(docs, scanned, capsys):
    rows = _rows(scanned)
    by_id = {row["doc_id"]: row for row in docs}
    assert rows and all(set(row) == {"doc_id", "text", "secrets"} and row["secrets"] for row in rows)
    assert [r["doc_id"] for r in rows] == [d["doc_id"] for d in docs if d["doc_id"] in {r["doc_id"] for r in rows}]
    found = planted = 0
    for row in rows:
        assert row["text"] == by_id[row["doc_id"]]["text"]
        secrets = row["secrets"]
        assert secrets == sorted(secrets, key=lambda s: (s["start"], s["end"]))
        for s in secrets:
            assert set(s) == {"tag", "type", "value", "start", "end"} and s["tag"] in ("EMAIL", "IP_ADDRESS", "KEY")
            assert row["text"][s["start"] : s["end"]] == s["value"]
    for doc in docs:
        spans = {(s["start"], s["end"]) for r in rows if r["doc_id"] == doc["doc_id"] for s in r["secrets"]}
        planted += len(doc["planted"])
        found += sum((s["start"], s["end"]) in spans for s in doc["planted"])
    assert found >= 0.95 * planted
    crlf = next(r for r in rows if r["doc_id"] == "crlf")
    assert {(s["start"], s["end"]) for s in crlf["secrets"]} >= {
        (s["start"], s["end"]) for s in by_id["crlf"]["planted"]
    }
    assert stat.S_IMODE(scanned.stat().st_mode) == 0o600
    assert not list(scanned.parent.glob("*.partial*"))


def test_terminal_shows_no_secret_value_unless_asked(corpus, scanned, tmp_path, capsys):
    out = tmp_path / "s.jsonl"
    assert _scan("--input", corpus, "--output", out, "--summary", tmp_path / "summary.json") == 0
    printed = capsys.readouterr().out
    values = {s["value"] for row in _rows(out) for s in row["secrets"]}
    assert "e.g." in printed and "chars)" in printed
    assert not any(v in printed for v in values)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["documents"] == summary["scanned"] == 61 and summary["with_secrets"] == len(_rows(out))
    assert sum(n for t in summary["secrets"].values() for n in t.values()) == sum(len(r["secrets"]) for r in _rows(out))
    assert not any(v in json.dumps(summary) for v in values)
    assert _scan("--input", corpus, "--output", out, "--restart", "true", "--show_values", "true") == 0
    printed = capsys.readouterr().out
    assert any(v in printed for v in values)


def test_workers_give_the_same_file(corpus, scanned, tmp_path):
    out = tmp_path / "two.jsonl"
    assert _scan("--input", corpus, "--output", out, "--chunk_docs", "5", workers=2) == 0
    assert out.read_bytes() == scanned.read_bytes()


def test_every_input_kind_gives_the_same_rows(docs, scanned, tmp_path):
    import pandas as pd
    from datasets import Dataset

    frame = pd.DataFrame([{"doc_id": d["doc_id"], "content": d["text"]} for d in docs])  # `content` for `text`
    frame.to_parquet(tmp_path / "c.parquet")
    frame.to_csv(tmp_path / "c.csv", index=False)
    Dataset.from_pandas(frame).save_to_disk(str(tmp_path / "ds"))
    folder = tmp_path / "src"
    for d in docs:
        (folder / "pkg").mkdir(parents=True, exist_ok=True)
        (folder / "pkg" / f"{d['doc_id']}.py").write_bytes(d["text"].encode("utf-8"))  # bytes: CRLF stays CRLF
    expected = _rows(scanned)
    for source in ("c.parquet", "c.csv", "ds"):
        out = tmp_path / f"{source}.jsonl"
        assert _scan("--input", tmp_path / source, "--output", out) == 0
        assert _rows(out) == expected, source
    out = tmp_path / "src.jsonl"
    assert _scan("--input", folder, "--output", out) == 0
    renamed = [{**row, "doc_id": f"pkg/{row['doc_id']}.py"} for row in expected]
    assert _rows(out) == sorted(renamed, key=lambda row: row["doc_id"])  # a folder is read in path order


@pytest.mark.parametrize("workers", [1, 2])
def test_resumes_after_an_interruption(corpus, scanned, tmp_path, monkeypatch, workers):
    out = tmp_path / "r.jsonl"
    args = ["--input", corpus, "--output", out, "--chunk_docs", "7"]
    real, calls = resumable.write_private_json, []

    def dies_recording_the_fourth_chunk(*a, **k):  # after the chunk is written and synced, before it is recorded
        calls.append(1)
        if len(calls) == 5:  # the first record is the empty state
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(resumable, "write_private_json", dies_recording_the_fourth_chunk)
    assert _scan(*args, workers=workers) == 130
    partial, sidecar = out.with_name("r.jsonl.partial"), out.with_name("r.jsonl.partial.json")
    assert not out.exists() and partial.exists()
    assert stat.S_IMODE(partial.stat().st_mode) == 0o600 and stat.S_IMODE(sidecar.stat().st_mode) == 0o600
    record = json.loads(sidecar.read_text())["state"]
    assert record["rows"] == 21 and partial.stat().st_size > record["bytes"]  # a written chunk beyond the record
    with partial.open("a") as f:
        f.write('{"doc_id": "torn')  # and a kill in the middle of a write
    monkeypatch.setattr(resumable, "write_private_json", real)
    assert _scan(*args, workers=workers) == 0
    assert out.read_bytes() == scanned.read_bytes()
    assert not partial.exists() and not sidecar.exists()


def test_refuses_to_resume_with_other_settings_or_to_overwrite(corpus, scanned, tmp_path, capsys):
    out = tmp_path / "o.jsonl"
    out.with_name("o.jsonl.partial").write_text("")
    record = {"settings": {"key_plugins": ["AWSKeyDetector"]}, "state": {"rows": 0, "bytes": 0}}
    out.with_name("o.jsonl.partial.json").write_text(json.dumps(record))
    assert _scan("--input", corpus, "--output", out) == 2
    assert "pass --restart" in _error_line(capsys)
    assert _scan("--input", corpus, "--output", scanned) == 2
    assert "exists" in _error_line(capsys)
    assert _scan("--input", corpus, "--output", corpus) == 2
    assert "is the input" in _error_line(capsys)


def test_awkward_files_in_a_folder_are_skipped_and_counted(docs, tmp_path, capsys):
    folder = tmp_path / "repo"
    (folder / ".git").mkdir(parents=True)
    (folder / ".git" / "config").write_text(docs[1]["text"])  # version-control folders are not read
    (folder / "app.py").write_text(docs[1]["text"])
    (folder / "logo.png").write_bytes(b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR" + bytes(range(256)))
    (folder / "latin1.py").write_bytes("name = 'Müller'\n".encode("latin-1") + docs[2]["text"].encode())
    (folder / "empty.py").write_text("")
    (folder / "blank.py").write_text("\n  \n")
    (folder / "huge.py").write_text("x = 1\n" * 200)
    (folder / "link.py").symlink_to(folder / "app.py")
    out = folder / "secrets.jsonl"  # inside the scanned folder: not scanned itself
    assert _scan("--input", folder, "--output", out, "--max_chars", "1000", "--summary", tmp_path / "s.json") == 0
    assert [r["doc_id"] for r in _rows(out)] == ["app.py"]
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["skipped"] == {"binary": 1, "empty": 2, "invalid_utf8": 1, "symlink": 1, "too_large": 1}
    assert summary["documents"] == 7 and summary["scanned"] == 1
    assert "skipped: 1 binary, 2 empty, 1 invalid_utf8, 1 symlink, 1 too_large" in capsys.readouterr().out
    assert _scan("--input", folder, "--output", out, "--max_chars", "1000", "--restart", "true") == 0  # again


def test_jsonl_rows_that_cannot_be_scanned(docs, tmp_path, capsys):
    data = tmp_path / "c.jsonl"
    good = json.dumps({"text": docs[1]["text"]}).encode()
    lines = [
        good,
        b'{"text": "caf\xe9 latin-1"}',
        b'{"text": null}',
        b'{"text": "  "}',
        b'{"text": "\\ud800 lone"}',
        good,
    ]
    data.write_bytes(b"\n".join(lines) + b"\n\n")
    out = tmp_path / "o.jsonl"
    assert _scan("--input", data, "--output", out, "--summary", tmp_path / "s.json") == 0
    assert [r["doc_id"] for r in _rows(out)] == [0, 5]  # the row number where a row has no doc_id
    assert json.loads((tmp_path / "s.json").read_text())["skipped"] == {"empty": 2, "invalid_utf8": 2}


def test_an_empty_corpus_gives_an_empty_file(tmp_path, capsys):
    (tmp_path / "c.jsonl").write_text("\n")
    assert _scan("--input", tmp_path / "c.jsonl", "--output", tmp_path / "o.jsonl") == 0
    assert (tmp_path / "o.jsonl").read_text() == ""
    assert "scanned 0 of 0 documents" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b'{"text": "a"}\nnot json\n', "c.jsonl:2: not JSON"),
        (b'{"body": "a"}\n', "c.jsonl:1: no `text` (or `content`) field"),
        (b"[1, 2]\n", "c.jsonl:1: a row must be a JSON object"),
        (b'{"text": 5}\n', "c.jsonl:1: `text` is a int"),
    ],
)
def test_bad_input_is_one_line(tmp_path, capsys, content, expected):
    data = tmp_path / "c.jsonl"
    data.write_bytes(content)
    assert _scan("--input", data, "--output", tmp_path / "o.jsonl") == 2
    assert expected in _error_line(capsys)
    assert not list(tmp_path.glob("o.jsonl*"))  # nothing to resume from: no trace


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--input", "missing.jsonl"], "missing.jsonl: no such file or folder"),
        (["--input", "corpus.txt"], "not a corpus"),
        (["--input", "corpus.jsonl", "--key_plugins", "codeeraser,Nope"], "--key_plugins: unknown key plugin 'Nope'"),
        (["--input", "corpus.jsonl", "--tags", "EMAIL,PHONE"], "--tags"),
        (["--input", "corpus.jsonl", "--workers", "0"], "must be >= 1"),
        (["--input", "dd"], "a datasets DatasetDict; give one split's folder (train)"),
    ],
)
def test_usage_errors_are_one_line(tmp_path, capsys, monkeypatch, args, expected):
    monkeypatch.chdir(tmp_path)
    Path("corpus.jsonl").write_text('{"text": "x"}\n')
    Path("corpus.txt").write_text("x")
    Path("dd/train").mkdir(parents=True)
    Path("dd/dataset_dict.json").write_text("{}")
    assert main(["scan", *args, "--output", "o.jsonl", "--progress", "false"]) == 2
    assert expected in _error_line(capsys)
    assert not os.path.exists("o.jsonl.partial")


def test_help_lists_the_contract(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["scan", "--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    assert "--input" in text and "--workers" in text and "owner-only" in text
