"""Atomic checkpoints: a kill at any moment leaves the previous checkpoint or the new one, never half of one."""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


def save_checkpoint(fabric, path: Path, state: dict) -> None:
    """`fabric.save` to a temporary name, then swap it in. Works for single files and sharded checkpoint folders."""
    tmp = path.with_name(path.name + ".tmp")
    old = path.with_name(path.name + ".old")
    if fabric.global_rank == 0:
        _remove(tmp)
    fabric.barrier()
    fabric.save(tmp, state)
    fabric.barrier()
    if fabric.global_rank == 0:
        if path.exists():
            _remove(old)
            os.replace(path, old)
        os.replace(tmp, path)
        _remove(old)
    fabric.barrier()


def existing_checkpoint(path: Path) -> Path | None:
    """The checkpoint to resume from: `path`, or its `.old` twin when a kill fell between the two renames."""
    if path.exists():
        return path
    old = path.with_name(path.name + ".old")
    return old if old.exists() else None
