"""Fake but realistic secrets, and the Python lines that plant them, for the code-secrets toy world.

Every value has the shape of a real credential, so that `fabricunlearn scan` (detect-secrets plugins, the
EMAIL/IP regexes of CodeEraser's pipeline) finds it and its post-filters keep it, but it is drawn from a
``random.Random`` and belongs to nobody. (CodeEraser's own plugin list misses most passwords and some npm tokens;
the scanner's default preset adds plugins for them: fabricunlearn/scan/plugins.py.) Formats (name: tag, shape):

- ``aws_access_key_id``: KEY, ``AKIA`` + 16 of [A-Z0-9]
- ``aws_secret_access_key``: KEY, 40 of [A-Za-z0-9+/]
- ``github_token``: KEY, ``ghp_`` + 36 of [A-Za-z0-9]
- ``gitlab_token``: KEY, ``glpat-`` + 20 of [A-Za-z0-9_-]
- ``slack_bot_token``: KEY, ``xoxb-`` + 10-13 digits + ``-`` + 10-13 digits + ``-`` + 24 of [A-Za-z0-9]
- ``stripe_secret_key``: KEY, ``sk_live_`` + 24 (sometimes 99) of [A-Za-z0-9]
- ``openai_key``: KEY, legacy ``sk-`` + 20 alnum + ``T3BlbkFJ`` + 20 alnum (48 alnum in all)
- ``sendgrid_key``: KEY, ``SG.`` + 22 + ``.`` + 43 of [A-Za-z0-9_-]
- ``twilio_api_key``: KEY, ``SK`` + 32 lower-case hex
- ``mailchimp_key``: KEY, 32 lower-case hex + ``-us`` + 1-21
- ``npm_token``: KEY, ``npm_`` + 36 of [A-Za-z0-9]
- ``password``: KEY, 16-28 letters and digits with a few of ``!#%&*+-=?@^_~``
- ``hex_secret``: KEY, 32 or 64 lower-case hex
- ``email``: EMAIL, first.last / first_last / flast at a company-like domain
- ``ipv4``: IP_ADDRESS, a globally routable IPv4 address
- ``ipv6``: IP_ADDRESS, a globally routable IPv6 address, eight groups (no ``::``, which the original cuts short)

No value contains a run of 7 equal characters or the words CodeEraser's ``filter.py`` drops (``example``,
``test``, ``user``, ``aaa``, ``https``, ``dummy``, ...). :func:`plant_secrets` writes them into source code
with templates that suit their tag and returns exact character spans, in the ``scan`` row format.
"""

from __future__ import annotations

import ipaddress
import random
import re
import string
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from fabricunlearn.toy.stdlib_corpus import continued_lines

ALNUM = string.ascii_letters + string.digits
UPPER_ALNUM = string.ascii_uppercase + string.digits
HEX = "0123456789abcdef"
B64 = ALNUM + "+/"
B64URL = ALNUM + "-_"
PASSWORD_SYMBOLS = "!#%&*+-=?@^_~"
# A password inside a URL's userinfo must not contain ``@ : / # ? %``, or the URL means something else.
URL_PASSWORD_SYMBOLS = "!*+-=_~"

# Lower-cased substrings that CodeEraser's filter.py (or a reader) would take for a placeholder.
# "sha"/"hash" too: the original drops every key of a file where they are frequent (file_has_hashes).
_BANNED = "example test user aaa bbb ccc xxx https dummy placeholder changeme sha hash".split()
_RUN7 = re.compile(r"(.)\1{6}")


@dataclass(frozen=True)
class SecretFormat:
    """One secret type: how to draw a value and how code usually names and passes it."""

    name: str
    tag: str  # "EMAIL" | "IP_ADDRESS" | "KEY"
    type: str
    generate: Callable[[random.Random], str]
    names: tuple[str, ...] = ()  # variable names, snake case; the first, upper-cased, is the env var
    call: tuple[str, str] | None = None  # text around the value in a client constructor call
    header: tuple[str, str] | None = None  # HTTP header name and value prefix


def _draw(rng: random.Random, alphabet: str, n: int) -> str:
    return "".join(rng.choices(alphabet, k=n))


def _plausible(value: str) -> bool:
    low = value.lower()
    return not _RUN7.search(value) and not any(word in low for word in _BANNED)


def _digits(rng: random.Random, n: int) -> str:
    return str(rng.randint(1, 9)) + _draw(rng, string.digits, n - 1)


def _password(rng: random.Random, symbols: str = PASSWORD_SYMBOLS) -> str:
    n = rng.randint(16, 28)
    n_symbols = rng.randint(1, 3)
    chars = [rng.choice(string.ascii_uppercase), rng.choice(string.ascii_lowercase), rng.choice(string.digits)]
    chars += rng.choices(symbols, k=n_symbols) + rng.choices(ALNUM, k=n - 3 - n_symbols)
    rng.shuffle(chars)
    return "".join(chars)


_FIRST = """jane john maria lukas priya wei olivia mateo sofia ahmed elena noah hannah kenji fatima david chloe
ravi ingrid pablo amara tomasz yuki liam nora omar grace felix isabel viktor zoe quentin ursula xavier brian""".split()
_LAST = """doe smith garcia mueller iyer zhang johnson rossi nakamura haddad petrov okafor larsen novak dubois
kowalski fernandes murphy tanaka schmidt ivanova brennan lindqvist moreau castillo weber adeyemi reyes kaur""".split()
_COMPANY = """acme globex initech umbrella stark wayne hooli vandelay cyberdyne tyrell wonka soylent pied nimbus
northwind contoso fabrikam blueriver redwood quantix""".split()
_SUFFIX = ("", "", "-corp", "-labs", "-group", "-systems", "-tech", "-data", "-cloud", "-health", "-logistics")
_TLD = ("com", "com", "com", "io", "net", "de", "co.uk", "fr", "nl", "dev", "ai", "se", "ch", "org", "com.au")


def _email(rng: random.Random) -> str:
    first, last = rng.choice(_FIRST), rng.choice(_LAST)
    local = rng.choice((f"{first}.{last}", f"{first}_{last}", f"{first[0]}{last}"))
    return f"{local}@{rng.choice(_COMPANY)}{rng.choice(_SUFFIX)}.{rng.choice(_TLD)}"


def _display_name(rng: random.Random, email: str) -> str:
    local = email.split("@")[0]
    parts = re.split(r"[._]", local)
    if len(parts) == 2:
        return " ".join(p.capitalize() for p in parts)
    # "flast": pick a first name with that initial so the comment agrees with the address
    first = rng.choice([f for f in _FIRST if f[0] == local[0]])
    return f"{first.capitalize()} {local[1:].capitalize()}"


def _ipv4(rng: random.Random) -> str:
    while True:
        a, b, c, d = rng.randint(1, 223), rng.randint(0, 255), rng.randint(0, 255), rng.randint(1, 254)
        text = f"{a}.{b}.{c}.{d}"
        # 172.x is dropped by filter.py's loose eval-based check; 1.2.3.4-style strings count as versions;
        # "31.12.99..." matches the original's dd.mm.yy date regex.
        date_like = 10 <= a <= 39 and 10 <= b <= 39 and 10 <= c <= 99
        if a != 172 and len(text) != 7 and not date_like and ipaddress.ip_address(text).is_global:
            return text


def _ipv6(rng: random.Random) -> str:
    while True:
        groups = [rng.randint(0x2001, 0x2C0F)] + [rng.randint(0, 0xFFFF) for _ in range(7)]
        # Real addresses have zero groups, but never two in a row here: the original's IPv6 regex cuts a
        # "::"-compressed address at its first group after the "::" (``a:b::c:d`` -> ``a:b::c``).
        for i in rng.sample((2, 4, 6), rng.randint(0, 2)):
            groups[i] = 0
        address = ipaddress.IPv6Address(sum(g << (16 * (7 - i)) for i, g in enumerate(groups)))
        if address.is_global and not address.is_multicast:
            return str(address)


def _fmt(name: str, tag: str, type_: str, draw: Callable, names: str = "", call=None, header=None) -> SecretFormat:
    # Redraw instead of patching a value so that the distribution stays that of the real format.
    def generate(rng: random.Random) -> str:
        while not _plausible(value := draw(rng)):
            pass
        return value

    return SecretFormat(name, tag, type_, generate, tuple(names.split()), call, header)


_BEARER = ("Authorization", "Bearer ")
_FORMATS = (
    _fmt("aws_access_key_id", "KEY", "AWS Access Key", lambda r: "AKIA" + _draw(r, UPPER_ALNUM, 16),
         "aws_access_key_id aws_access_key aws_key access_key", ('boto3.client("s3", aws_access_key_id=', ")")),
    _fmt("aws_secret_access_key", "KEY", "AWS Secret Key", lambda r: _draw(r, B64, 40),
         "aws_secret_access_key aws_secret_key aws_secret secret_access_key",
         ("boto3.Session(aws_secret_access_key=", ")")),
    _fmt("github_token", "KEY", "GitHub Token", lambda r: "ghp_" + _draw(r, ALNUM, 36),
         "github_token gh_token token github_pat", ("Github(", ")"), ("Authorization", "token ")),
    _fmt("gitlab_token", "KEY", "GitLab Token", lambda r: "glpat-" + _draw(r, B64URL, 20),
         "gitlab_token gitlab_private_token private_token", ("gitlab.Gitlab(url, private_token=", ")"),
         ("PRIVATE-TOKEN", "")),
    _fmt("slack_bot_token", "KEY", "Slack Token",
         lambda r: f"xoxb-{_digits(r, r.randint(10, 13))}-{_digits(r, r.randint(10, 13))}-{_draw(r, ALNUM, 24)}",
         "slack_bot_token slack_token bot_token", ("WebClient(token=", ")"), _BEARER),
    _fmt("stripe_secret_key", "KEY", "Stripe Secret Key",
         lambda r: "sk_live_" + _draw(r, ALNUM, r.choice((24, 24, 24, 99))),
         "stripe_secret stripe_api_key stripe_key api_key", ("stripe.StripeClient(", ")"), _BEARER),
    _fmt("openai_key", "KEY", "OpenAI Key", lambda r: f"sk-{_draw(r, ALNUM, 20)}T3BlbkFJ{_draw(r, ALNUM, 20)}",
         "openai_api_key openai_key llm_api_key", ("OpenAI(api_key=", ")"), _BEARER),
    _fmt("sendgrid_key", "KEY", "SendGrid API Key", lambda r: f"SG.{_draw(r, B64URL, 22)}.{_draw(r, B64URL, 43)}",
         "sendgrid_api_key sendgrid_key mail_api_key", ("SendGridAPIClient(api_key=", ")"), _BEARER),
    _fmt("twilio_api_key", "KEY", "Twilio API Key", lambda r: "SK" + _draw(r, HEX, 32),
         "twilio_api_key twilio_key sms_api_key", ("Client(", ", api_secret, account_sid)")),
    _fmt("mailchimp_key", "KEY", "Mailchimp Access Key", lambda r: f"{_draw(r, HEX, 32)}-us{r.randint(1, 21)}",
         "mailchimp_api_key mailchimp_key newsletter_api_key", ('mailchimp.set_config({"api_key": ', "})")),
    _fmt("npm_token", "KEY", "NPM Token", lambda r: "npm_" + _draw(r, ALNUM, 36),
         "npm_token npm_auth_token registry_token",
         ('subprocess.run(["npm", "publish"], env={"NPM_TOKEN": ', "})"), _BEARER),
    _fmt("password", "KEY", "Password", _password, "db_password password smtp_password admin_pass",
         ('psycopg2.connect(host=db_host, dbname="orders", password=', ")")),
    _fmt("hex_secret", "KEY", "Hex Secret", lambda r: _draw(r, HEX, r.choice((32, 64))),
         "secret_key signing_secret jwt_secret webhook_secret app_secret",
         ("jwt.encode(payload, ", ', algorithm="HS256")')),
    _fmt("email", "EMAIL", "Email", _email),
    _fmt("ipv4", "IP_ADDRESS", "IPv4", _ipv4),
    _fmt("ipv6", "IP_ADDRESS", "IPv6", _ipv6),
)  # fmt: skip
SECRET_FORMATS: dict[str, SecretFormat] = {f.name: f for f in _FORMATS}
_URL_PASSWORD = _fmt("url_password", "KEY", "Password", lambda r: _password(r, URL_PASSWORD_SYMBOLS))
GENERATORS: dict[str, Callable[[random.Random], str]] = {name: f.generate for name, f in SECRET_FORMATS.items()}
SECRET_TYPES: list[str] = list(SECRET_FORMATS)


def make_secret(rng: random.Random, type_name: str) -> dict:
    """Draw one value of ``type_name``: ``{"tag", "type", "value"}``."""
    fmt = SECRET_FORMATS[type_name]
    return {"tag": fmt.tag, "type": fmt.type, "value": fmt.generate(rng)}


# (slots, text): a slot is a tag (filled by the drawn type), a type name, or "url_password".
_Template = tuple[tuple[str, ...], str]
_TEMPLATES: tuple[_Template, ...] = (
    (("KEY",), "{NAME} = {q}{v0}{q}"),
    (("KEY",), "{name} = {q}{v0}{q}"),
    (("KEY",), '{name} = os.environ.get("{ENV}", "{v0}")'),
    (("KEY",), '{name} = os.getenv("{ENV}", "{v0}")'),
    (("KEY",), 'client = {call_open}"{v0}"{call_close}'),
    (("KEY",), 'response = requests.get(url, headers={{"{header}": "{auth}{v0}"}}, timeout=10)'),
    (("KEY",), '{dict} = {{\n    "{fill_key}": "{fill}",\n    "{name}": "{v0}",\n    "timeout": 30,\n}}'),
    (("aws_access_key_id", "aws_secret_access_key"),
     's3 = boto3.client(\n    "s3",\n    aws_access_key_id="{v0}",\n    aws_secret_access_key="{v1}",\n)'),
    (("email", "password"), 'server = smtplib.SMTP_SSL("smtp.{domain}", 465)\nserver.login("{v0}", "{v1}")'),
    (("url_password", "ipv4"), 'DATABASE_URL = "postgresql://{db_user}:{v0}@{v1}:5432/{db}"'),
    (("url_password", "ipv4"), 'REDIS_URL = "redis://:{v0}@{v1}:6379/0"'),
    (("EMAIL",), "# maintainer: {person} <{v0}>"),
    (("EMAIL",), "# Copyright (c) {year} {person} <{v0}>"),
    (("EMAIL",), '__author__ = "{person}"\n__email__ = "{v0}"'),
    (("EMAIL",), 'ADMINS = [("{person}", "{v0}")]'),
    (("EMAIL",), '{dict} = {{\n    "name": "{person}",\n    "email": "{v0}",\n}}'),
    (("EMAIL",), 'DEFAULT_FROM_EMAIL = "{v0}"'),
    (("IP_ADDRESS",), '{host_var} = "{v0}"'),
    (("IP_ADDRESS",), 'sock = socket.create_connection(("{v0}", {port}))'),
    (("IP_ADDRESS",), 'ALLOWED_HOSTS = ["{v0}", "localhost"]'),
    (("IP_ADDRESS",), '{dict} = {{\n    "host": "{v0}",\n    "port": {port},\n}}'),
    (("IP_ADDRESS",), "# production server: {v0}"),
)  # fmt: skip
_FILLERS = (("region", "eu-west-1"), ("env", "production"), ("service", "billing"), ("account", "ops-automation"))
_HOST_VARS = ("HOST", "SERVER_IP", "DB_HOST", "REDIS_HOST", "upstream_host", "api_host", "BROKER_ADDR")
_DICTS = ("CONFIG", "SETTINGS", "CREDENTIALS", "config", "DEFAULTS")


def _slot_format(slot: str, primary: SecretFormat) -> SecretFormat:
    if slot == primary.tag:
        return primary
    return SECRET_FORMATS["password" if slot == "url_password" else slot]


def _fits(template: _Template, primary: SecretFormat, allowed: set[str], budget: int) -> bool:
    if len(template[0]) > budget or ("{call_open}" in template[1] and primary.call is None):
        return False
    if "{header}" in template[1] and primary.header is None:
        return False
    if any(s in ("KEY", "EMAIL", "IP_ADDRESS") and s != primary.tag for s in template[0]):
        return False
    names = [_slot_format(s, primary).name for s in template[0]]
    return primary.name in names and set(names) <= allowed


def _render(rng: random.Random, template: _Template, primary: SecretFormat, indent: str) -> tuple[str, list[dict]]:
    values, formats = [], []
    for slot in template[0]:
        fmt = _slot_format(slot, primary)
        values.append(_URL_PASSWORD.generate(rng) if slot == "url_password" else fmt.generate(rng))
        formats.append(fmt)
    email = next((v for v, f in zip(values, formats) if f.tag == "EMAIL"), None) or _email(rng)
    name = rng.choice(primary.names or ("value",))
    call = primary.call or ("", "")
    header = primary.header or ("", "")
    fields = {
        "name": name, "NAME": name.upper(), "ENV": (primary.names or ("value",))[0].upper(), "q": rng.choice("\"'"),
        "call_open": call[0], "call_close": call[1], "header": header[0], "auth": header[1],
        "dict": rng.choice(_DICTS), "host_var": rng.choice(_HOST_VARS), "port": rng.choice((443, 5432, 6379, 8080)),
        "person": _display_name(rng, email), "domain": email.split("@")[1], "year": rng.randint(2009, 2024),
        "db_user": rng.choice(("svc", "app", "orders_rw", "etl")), "db": rng.choice(("orders", "billing", "prod")),
    }  # fmt: skip
    fields["fill_key"], fields["fill"] = rng.choice(_FILLERS)
    text, secrets = "", []
    # Indent the template before filling it, so the offsets found while filling are final.
    pattern = indent + template[1].replace("\n", "\n" + indent)
    for literal, field, _, _ in string.Formatter().parse(pattern):
        text += literal
        if field is None:
            continue
        if field in ("v0", "v1"):
            k = int(field[1])
            fmt = formats[k]
            secrets.append({"tag": fmt.tag, "type": fmt.type, "value": values[k], "start": len(text)})
            text += values[k]
            secrets[-1]["end"] = len(text)
        else:
            text += str(fields[field])
    return text + "\n", secrets


def _insertion_points(lines: list[str]) -> list[tuple[int, str]]:
    """Lines before which a statement can go, at the outermost indentation of ``lines``, plus the end."""
    code = [ln for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
    base = min((len(ln) - len(ln.lstrip()) for ln in code), default=0)
    base_indent = next((ln[:base] for ln in code if len(ln) - len(ln.lstrip()) == base), "")
    continued = continued_lines(lines)
    points: list[tuple[int, str]] = []
    prev = ""  # the last code line
    for i, line in enumerate(lines):
        body = line.strip()
        if (
            not continued[i]
            and body
            and len(line) - len(line.lstrip()) == base
            and (body[0].isalpha() or body[0] in "_@#")
            and re.split(r"\W", body, maxsplit=1)[0] not in ("else", "elif", "except", "finally", "case")
            and not prev.endswith(":")  # a block header wants its indented body next
            and not prev.startswith("@")
        ):
            points.append((i, line[:base]))
        if body.startswith("from __future__"):
            points.clear()  # nothing but the docstring may precede a __future__ import
        if body and not body.startswith("#"):
            prev = body
    if not continued[len(lines)] and not prev.endswith(":") or not points:
        points.append((len(lines), base_indent))
    return points


def plant_secrets(
    rng: random.Random, code: str, n_secrets: int, types: Sequence[str] | None = None
) -> tuple[str, list[dict]]:
    """Insert lines carrying exactly ``n_secrets`` secrets into ``code``; return the text and the secrets.

    Each secret is ``{"tag", "type", "value", "start", "end"}`` with ``text[start:end] == value``, sorted by
    ``start``. Lines go in before statements at the outermost indentation of ``code`` (matching it) or at
    its end. ``types`` restricts the drawn types (default: all of :data:`SECRET_TYPES`); a template that
    carries two secrets is used only when both of its types are allowed.
    """
    allowed = list(types) if types else SECRET_TYPES
    unknown = set(allowed) - set(SECRET_FORMATS)
    if unknown:
        raise ValueError(f"unknown secret types {sorted(unknown)}; known: {SECRET_TYPES}")
    # split on "\n" only: str.splitlines also splits at form feeds, which the stdlib has between sections
    lines = [line + "\n" for line in code.split("\n")]
    lines[-1] = lines[-1][:-1]
    if not lines[-1]:
        lines.pop()
    points = _insertion_points([ln.rstrip("\r\n") for ln in lines])
    blocks: dict[int, list[tuple[_Template, SecretFormat, str]]] = {}
    remaining = n_secrets
    while remaining > 0:
        primary = SECRET_FORMATS[rng.choice(allowed)]
        options = [t for t in _TEMPLATES if _fits(t, primary, set(allowed), remaining)]
        template = rng.choice(options)
        at, indent = rng.choice(points)
        blocks.setdefault(at, []).append((template, primary, indent))
        remaining -= len(template[0])
    out, secrets = "", []
    for i in range(len(lines) + 1):
        for template, primary, indent in blocks.get(i, ()):
            if out and not out.endswith("\n"):
                out += "\n"  # a block after a last line that has no newline
            text, found = _render(rng, template, primary, indent)
            secrets += [{**s, "start": s["start"] + len(out), "end": s["end"] + len(out)} for s in found]
            out += text
        if i < len(lines):
            if i in blocks and lines[i].lstrip().startswith(("def ", "class ", "async def ", "@")):
                out += "\n"  # as people write it: a blank line before a definition
            out += lines[i]
    return out, sorted(secrets, key=lambda s: s["start"])
