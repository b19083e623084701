"""Sensitive data in code: emails, IP addresses and keys, as CodeEraser's scanner finds them (``fabricunlearn scan``).

``scan_text(text)`` gives the ``secrets`` of one document; :class:`Scanner` holds other settings. The modules:
``patterns`` (email and IP expressions), ``keys`` (detect-secrets plugins, exact spans), ``plugins`` (two more
plugins, and the presets), ``gibberish``, ``filters`` (private IPs, example emails, placeholder keys, hashes),
``scanner`` (one document), ``sources`` (streaming a corpus), ``redact`` (showing a secret without its value).
Each module's docstring says where it differs from CodeEraser's scanner, and why.
"""

from fabricunlearn.scan.redact import redact
from fabricunlearn.scan.scanner import TAGS, Scanner, scan_text

__all__ = ["TAGS", "Scanner", "redact", "scan_text"]
