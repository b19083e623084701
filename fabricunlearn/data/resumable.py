"""A JSONL output that long commands (`scan`, `probe`, HumanEval in `evaluate`) write in chunks and resume after an
interruption.

Rows are appended to ``OUTPUT.partial``; after every chunk the file is synced and a sidecar ``OUTPUT.partial.json``
records the settings and the command's state, including the byte length of the partial file. A resumed run cuts
the partial file back to that length (a chunk written after the last record, or a torn line, is dropped and done
again), refuses to continue under other settings, and the command skips the input rows the state counts. At the
end the partial file is renamed to OUTPUT, so OUTPUT is never half written. All three files are owner-only: the
rows hold secret values.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def write_private_json(path: Path, obj: dict) -> None:
    """Atomically, owner-only, synced."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(json.dumps(obj, indent=1, ensure_ascii=False, default=str) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def same_id(a: object, b: object) -> bool:
    """doc_ids compared as they round-trip through JSON (a tuple and a list, an int and a numpy int are equal)."""
    return json.loads(json.dumps(a, default=str)) == json.loads(json.dumps(b, default=str))


class ResumableJSONL:
    """``state`` is the command's own dict; it must hold ``rows`` (input rows done), ``last_doc_id`` and ``bytes``
    (kept up to date by :meth:`append`)."""

    def __init__(self, output: Path, settings: dict[str, Any], state: dict[str, Any], *, restart: bool, what: str):
        from fabricunlearn.config import RecipeError

        self.output = Path(output)
        self.partial = self.output.with_name(self.output.name + ".partial")
        self.sidecar = self.output.with_name(self.output.name + ".partial.json")
        self.settings, self.state = settings, state
        if self.output.exists() and not restart:
            raise RecipeError(f"--output: {self.output} exists (a finished {what}); pass --restart to {what} again")
        if self.partial.exists() and not restart:
            if not self.sidecar.exists():
                raise RecipeError(f"{self.partial} has no {self.sidecar.name} to resume from; pass --restart")
            record = json.loads(self.sidecar.read_text())
            changed = [k for k in settings if record["settings"].get(k) != settings[k]]
            if changed:
                raise RecipeError(
                    f"{self.partial} was started with another {changed[0]} ({record['settings'].get(changed[0])!r});"
                    " run with the same settings to resume, or pass --restart"
                )
            self.state = record["state"]
            os.truncate(self.partial, self.state["bytes"])
        else:
            self.output.parent.mkdir(parents=True, exist_ok=True)
            os.close(os.open(self.partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600))
            os.chmod(self.partial, 0o600)
            write_private_json(self.sidecar, {"settings": settings, "state": self.state})
        self._file = None

    @property
    def files(self) -> list[Path]:
        """The paths this output writes (a command reading a folder must not read them back)."""
        return [self.output, self.partial, self.sidecar, self.sidecar.with_name(f".{self.sidecar.name}.tmp")]

    def check_skipped(self, index: int, doc_id: object, source: Path) -> None:
        """Called with the last input row a resumed run skips: it must be the one the state recorded."""
        from fabricunlearn.config import RecipeError

        if doc_id is None or not same_id(doc_id, self.state["last_doc_id"]):
            raise RecipeError(f"{self.partial} does not match {source} (row {index}); pass --restart to start over")

    def rows_written(self) -> list[dict]:
        """The rows already in the partial file (after a resume: those of the recorded state)."""
        if not self.partial.exists():
            return []
        return [json.loads(line) for line in self.partial.read_text(encoding="utf-8").splitlines() if line.strip()]

    def append(self, rows: list[dict], n_input: int, last_doc_id: object) -> None:
        """Write the output rows of ``n_input`` more input rows, sync, then record the state."""
        if self._file is None:
            self._file = self.partial.open("a", encoding="utf-8")
        self._file.write("".join(json.dumps(row, ensure_ascii=False, default=str) + "\n" for row in rows))
        self._file.flush()
        os.fsync(self._file.fileno())
        self.state["rows"] += n_input
        self.state["last_doc_id"] = last_doc_id
        self.state["bytes"] = self._file.tell()
        write_private_json(self.sidecar, {"settings": self.settings, "state": self.state})

    def close(self, finished: bool) -> None:
        """Rename to OUTPUT when finished; otherwise keep what can be resumed (nothing, if nothing was done)."""
        if self._file is not None:
            self._file.close()
            self._file = None
        if finished:
            os.replace(self.partial, self.output)
            self.sidecar.unlink(missing_ok=True)
        elif self.state["rows"] == 0 and self.partial.exists():
            self.partial.unlink()
            self.sidecar.unlink(missing_ok=True)
