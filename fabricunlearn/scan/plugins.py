"""Two detect-secrets plugins for leaks that detect-secrets 1.5.0 has no plugin for, and the plugin presets.

CodeEraser's plugin list (:data:`fabricunlearn.scan.keys.CODEERASER_PLUGINS`) finds provider tokens and quoted
high-entropy strings. Measured on the toy world's planted secrets (stdlib code, ``fabricunlearn.toy``), it finds 1
password in 82 and misses a quarter of npm tokens: a password has symbols that put it outside the Base64 alphabet,
and a modern ``npm_…`` token is only found by entropy, so not after ``"Bearer ``. detect-secrets' own keyword and
basic-auth plugins (which CodeEraser removed) raise passwords to 32 in 82: their keyword list has no ``…_pass``,
their value must start with a letter or digit, and an ``os.environ.get("DB_PASSWORD", "…")`` default or a URL's
password with ``+`` or ``!`` is not theirs. Hence, as detect-secrets plugins (``RegexBasedDetector``):

- :class:`NpmTokenDetector`: ``npm_`` and 36 letters or digits, the format npm has issued since 2021;
- :class:`PasswordDetector`: a quoted value of 8 or more characters given to a password-like name
  (``password``, ``passwd``, ``passphrase``, ``pwd``, ``pass`` as a word of the name) by ``=``, ``:``, ``=>`` or
  as the default after the name in a call (``getenv("DB_PASS", "…")``), and a URL's password
  (``scheme://user:…@host``). Like the keyword and basic-auth plugins, its values pass the gibberish check
  (:mod:`fabricunlearn.scan.keys`), which drops word-like values (``"Enter your password"``, ``"changeme1"``).

Presets for ``--key_plugins``: ``codeeraser`` (the paper's list, exactly), ``default`` (that list plus the keyword
and basic-auth plugins and the two above).
"""

from __future__ import annotations

import re

from detect_secrets.plugins.base import RegexBasedDetector


class NpmTokenDetector(RegexBasedDetector):
    """Scans for npm access tokens (``npm_`` + 36 alphanumerics)."""

    secret_type = "NPM tokens"  # detect-secrets' NpmDetector type: the same secret, found in other places
    denylist = (re.compile(r"(?<![A-Za-z0-9_])npm_[A-Za-z0-9]{36}(?![A-Za-z0-9])"),)


_NAME = r"[\w.-]*?(?:password|passwd|passphrase|pwd|(?<![a-z])pass(?![a-z]))[\w.-]*"
_VALUE = r"""([^\s'"`]{8,256})"""


class PasswordDetector(RegexBasedDetector):
    """Scans for quoted passwords given to password-like names, and for passwords in URLs."""

    secret_type = "Password"
    denylist = (
        # password = "…", "password": "…", ['db_pass'] => "…", PASSWORD := '…', password: str = "…"
        re.compile(
            rf"""(?<![\w.-]){_NAME}['"\]]{{0,2}}(?:\s*:\s*[A-Za-z_][\w.\[\]|, ]{{0,40}}?)?\s*(?::=|=>|=|:)\s*"""
            rf"""(['"`]){_VALUE}\1""",
            re.IGNORECASE,
        ),
        # getenv("DB_PASSWORD", "…"), config.get('admin_pass', '…')
        re.compile(rf"""(['"]){_NAME}\1\s*,\s*(['"]){_VALUE}\2""", re.IGNORECASE),
        # scheme://user:…@host (the user may be empty: redis://:…@host)
        re.compile(r"""[a-z][a-z0-9+.-]*://[^\s:/@'"`]*:([^\s/@'"`]{8,256})@[\w\[]""", re.IGNORECASE),
    )

    def analyze_string(self, string: str):
        # Report the value group of each expression only (the base class reports every non-empty group,
        # which here would include the quote characters).
        for expression in self.denylist:
            for m in expression.finditer(string):
                yield m.group(expression.groups)


LOCAL_PLUGINS = {cls.__name__: cls for cls in (NpmTokenDetector, PasswordDetector)}
