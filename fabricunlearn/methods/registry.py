"""Name-keyed registry of unlearning methods (one small class each, as in open-unlearning)."""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from fabricunlearn.methods.base import Method

METHODS: dict[str, type[Method]] = {}
M = TypeVar("M", bound="type[Method]")


def register(cls: M) -> M:
    if cls.name in METHODS:
        raise ValueError(f"method name {cls.name!r} registered twice")
    METHODS[cls.name] = cls
    return cls
