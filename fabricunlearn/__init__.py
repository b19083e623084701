"""fabricunlearn: find and erase verbatim memorization in code language models."""

__version__ = "0.1.0"
