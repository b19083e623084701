"""metrics.jsonl: one JSON line per evaluation, rewritten on resume so it matches the restored state."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


class MetricsFile:
    def __init__(self, path: Path, enabled: bool) -> None:
        self.path = path
        self.enabled = enabled

    def rows(self) -> list[dict[str, Any]]:
        if not self.path.is_file():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]

    def truncate_after(self, epoch: int) -> None:
        """Drop the lines of epochs after `epoch` (they belong to the run that was interrupted)."""
        if not self.enabled or not self.path.is_file():
            return
        kept = [row for row in self.rows() if row.get("epoch", -1) <= epoch]
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text("".join(json.dumps(row) + "\n" for row in kept))
        os.replace(tmp, self.path)

    def append(self, row: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")
            f.flush()
            os.fsync(f.fileno())
