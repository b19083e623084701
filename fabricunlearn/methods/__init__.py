"""Unlearning methods, by name. Importing this package registers every built-in method."""

from fabricunlearn.methods import ascent, icu, labels, npo, selective  # noqa: F401  (registers)
from fabricunlearn.methods.base import Method
from fabricunlearn.methods.registry import METHODS, register

__all__ = ["METHODS", "Method", "register", "build_method"]


def build_method(name: str, args: dict) -> Method:
    return METHODS[name](**args)
