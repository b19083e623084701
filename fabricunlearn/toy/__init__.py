"""Toy worlds: small, fully generated settings that run every recipe on a CPU in about a minute.

`ensure_world(name)` returns a built world's folder, building it once (other processes wait on a lock).
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

from fabricunlearn.toy.code_secrets import CodeSecretsSpec, build_code_secrets

WORLDS: dict[str, CodeSecretsSpec] = {
    # The demo world: ~5 minutes on 2 cores.
    "code_secrets": CodeSecretsSpec(
        name="code_secrets",
        secret_docs=64,
        copies=(1, 2, 4, 8, 16, 48),
        background_docs=300,
        unseen_docs=24,
        max_doc_tokens=160,
        chars=(180, 320),
        steps=900,
    ),
    # The CI world: about a minute; the tests build it once per session.
    "code_secrets_ci": CodeSecretsSpec(
        name="code_secrets_ci",
        secret_docs=32,
        copies=(2, 4, 12, 40),
        background_docs=60,
        unseen_docs=12,
        max_doc_tokens=112,
        chars=(140, 240),
        steps=450,
        forget_set_size=4,
        num_forget_sets=2,
        retain_docs=16,
    ),
}


def default_dir(name: str) -> Path:
    return Path(".cache") / "fabricunlearn" / name


@contextmanager
def _locked(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def is_built(name: str, out_dir: Path) -> bool:
    manifest = out_dir / "world.json"
    if not manifest.is_file():
        return False
    try:
        return json.loads(manifest.read_text()).get("spec") == json.loads(json.dumps(asdict(WORLDS[name])))
    except json.JSONDecodeError:
        return False


def ensure_world(name: str, out_dir: str | Path | None = None, progress: bool = True, rebuild: bool = False) -> Path:
    """The world's folder, built if missing or built from another spec. Safe when several processes ask at once."""
    if name not in WORLDS:
        raise ValueError(f"unknown toy world {name!r}; known: {sorted(WORLDS)}")
    out = Path(out_dir) if out_dir is not None else default_dir(name)
    with _locked(out):
        if not rebuild and is_built(name, out):
            return out
        # A stale world is replaced whole; a folder that is not a world at all is the user's and stays untouched
        if out.is_dir() and any(out.iterdir()) and not (out / "world.json").is_file():
            from fabricunlearn.config import RecipeError

            raise RecipeError(
                f"{out}: holds files but no toy world (no world.json); building {name!r} there would replace them: "
                "choose an empty or new folder"
            )
        tmp = out.with_name(out.name + ".building")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        build_code_secrets(WORLDS[name], tmp, progress=progress)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    return out
