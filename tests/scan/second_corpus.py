"""A second corpus for the scanner's recall and precision, made by another generator than the toy world's.

The toy world (:mod:`fabricunlearn.toy.secret_formats`) draws 13 key formats with hand-written generators and
plants them with Python templates. Here:

- **Key values come from detect-secrets' own expressions.** :func:`sample` draws a random string from ``re``'s parse
  tree of a plugin's ``denylist`` expression. The assignment plugins (Cloudant, IBM Cloud IAM, IBM COS HMAC,
  SoftLayer, AWS secret keys) get their value from the plugin's secret expression and the variable name from its
  prefix and keyword expressions; keyword-plugin names come from that plugin's word list. A JWT is base64url JSON
  (the plugin decodes it); an entropy string is drawn from its plugin's charset above the plugin's limit.
  Characters a string literal would have to escape (backslash, quotes) are never drawn.
- **Places:** nine kinds of files (Python around a standard-library chunk, YAML, JSON, INI, ``.env``/shell,
  JavaScript, TOML, Dockerfile, Markdown) and, in each, quoted and bare assignments, whole string literals (call
  arguments, lists, dict values), HTTP headers, comments and prose; connection strings and URLs carry basic-auth
  passwords, Cloudant and SoftLayer keys, Telegram bot tokens, Azure storage keys, Slack webhooks and ``.npmrc``
  tokens.
- **Emails and public addresses** from other vocabularies (plus-tags, digits, subdomains, long top-level domains;
  IPv6 with and without ``::``, upper case; 7-character resolvers next to ``nameserver``) in author lines, mailto
  links, trailers, tables, hosts files, URLs, logs and configs.
- **Negatives**, which no preset may report: private, loopback, link-local, shared, documentation and netmask
  addresses; example/test emails; placeholder keys (``xxxxxxxx``, ``changeme``, ``<YOUR_KEY>``, ``${API_TOKEN}``,
  ``{{ secret_key }}``, AWS's documented example keys, x-filled tokens); hashes after ``sha256 =``, ``md5sum =``,
  ``SHA1 =``; version strings such as ``1.2.3.4``; UUIDs; sequential alphabets.

Every secret says whether it is **seen by design** (``"by_design"``): for a key, one of the detect-secrets plugins
its value comes from reports it on its line (``analyze_line``, the non-eager scan); for an email or an IP address,
the characters around it are among those CodeEraser's expressions accept (codeeraser-sscu.md §5; not after ``=``
or ``/``, not inside ``[...]``). Secrets that are not are kept: they measure what the design costs in ordinary
places (``HOST=1.2.3.4``, ``http://1.2.3.4:8080``, ``GIT_AUTHOR_EMAIL=…``, a GitLab CI token without its
partition prefix, for which the plugin reports an empty value).

Two choices follow documented behaviour of CodeEraser's filters that a corpus could otherwise trip by accident:
hash negatives go into documents without entropy-plugin secrets (a file that mentions hashes on more than 2% of its
lines has its random-looking strings taken for checksums: ``file_has_hashes``) and version negatives are not within
100 characters of ``dns`` or ``server``; positive emails avoid the filter's words (``example``, ``test``, ``user``,
``aaa``, ``bbb``, ``ccc``), keys its placeholder words and runs of 7 equal characters, addresses the date shapes.

:func:`second_corpus` returns documents ``{"text", "kind", "secrets", "negatives"}``; both lists hold ``{"tag",
"type", "value", "start", "end"}`` with ``text[start:end] == value`` (secrets also ``by_design``). :func:`measure`
scores a scanner on them, or on :func:`toy_planted` (the toy world's planted secrets), with exact spans.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import random
import re
import string
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from detect_secrets.core.plugins.util import get_mapping_from_secret_type_to_class
from detect_secrets.plugins import (
    artifactory,
    aws,
    azure_storage_key,
    cloudant,
    discord,
    github_token,
    gitlab_token,
    ibm_cloud_iam,
    ibm_cos_hmac,
    jwt,
    keyword,
    mailchimp,
    openai,
    pypi_token,
    sendgrid,
    slack,
    softlayer,
    square_oauth,
    stripe,
    telegram_token,
    twilio,
)

from fabricunlearn.scan.keys import DEFAULT_FILENAME

try:  # Python 3.11+
    from re import _constants as _sre
    from re import _parser as _sre_parse
except ImportError:  # pragma: no cover
    import sre_constants as _sre
    import sre_parse as _sre_parse

TAGS = ("EMAIL", "IP_ADDRESS", "KEY")
_PRINTABLE = [chr(c) for c in range(32, 127)]
_AVOID = set("\\'\"`")
_BANNED_WORDS = ("example", "test", "user", "aaa", "bbb", "ccc", "https", "dummy", "placeholder", "changeme", "xxx")
_RUN7 = re.compile(r"(.)\1{6}")
_PLUGINS = {cls.__name__: cls for cls in get_mapping_from_secret_type_to_class().values()}


# --- random strings from an expression ---------------------------------------------------------------------------
def _class_chars(items) -> list[str]:
    def member(c: str) -> bool:
        word = c.isalnum() or c == "_"
        for op, av in items:
            if (op is _sre.LITERAL and c == chr(av)) or (op is _sre.RANGE and av[0] <= ord(c) <= av[1]):
                return True
            if op is _sre.CATEGORY and (
                (av is _sre.CATEGORY_DIGIT and c.isdigit())
                or (av is _sre.CATEGORY_NOT_DIGIT and not c.isdigit())
                or (av is _sre.CATEGORY_WORD and word)
                or (av is _sre.CATEGORY_NOT_WORD and not word)
                or (av is _sre.CATEGORY_SPACE and c.isspace())
                or (av is _sre.CATEGORY_NOT_SPACE and not c.isspace())
            ):
                return True
        return False

    negate = bool(items) and items[0][0] is _sre.NEGATE
    chars = [c for c in _PRINTABLE if member(c) != negate]
    return [c for c in chars if c not in _AVOID and c != " "] or chars


def _emit(parsed, rng: random.Random, extra: int, groups: dict, out: list[str]) -> None:
    for op, av in parsed:
        if op is _sre.LITERAL:
            out.append(chr(av))
        elif op is _sre.NOT_LITERAL:
            out.append(rng.choice([c for c in string.ascii_letters if c != chr(av)]))
        elif op is _sre.ANY:
            out.append(rng.choice(string.ascii_lowercase + "_"))
        elif op is _sre.IN:
            out.append(rng.choice(_class_chars(av)))
        elif op is _sre.BRANCH:
            _emit(rng.choice(av[1]), rng, extra, groups, out)
        elif op is _sre.SUBPATTERN:
            start = len("".join(out))
            _emit(av[3], rng, extra, groups, out)
            if av[0] is not None:
                groups[av[0]] = "".join(out)[start:]
        elif op in (_sre.MAX_REPEAT, _sre.MIN_REPEAT):
            lo, hi, sub = av
            for _ in range(rng.randint(lo, min(hi, lo + extra))):
                _emit(sub, rng, extra, groups, out)
        elif op is _sre.GROUPREF:
            out.append(groups.get(av, ""))
        elif op not in (_sre.AT, _sre.ASSERT, _sre.ASSERT_NOT):  # look-arounds: the result is checked instead
            raise ValueError(f"cannot sample {op}")  # pragma: no cover


def sample(expression: re.Pattern | str, rng: random.Random, extra: int = 6, check: bool = True) -> str:
    """A random string that ``expression`` matches: each repeat is drawn between its minimum and ``extra`` more
    (at most its maximum), each class from its printable ASCII characters (no backslash, quote or space unless the
    class has nothing else)."""
    pattern = expression if isinstance(expression, re.Pattern) else re.compile(expression)
    parsed = _sre_parse.parse(pattern.pattern, pattern.flags)
    for _ in range(1000):
        out: list[str] = []
        _emit(parsed, rng, extra, {}, out)
        value = "".join(out)
        if not check or pattern.search(value):
            return value
    raise ValueError(f"could not draw a string for {pattern.pattern!r}")  # pragma: no cover


def plausible(value: str) -> bool:
    """Neither a placeholder by CodeEraser's filter words nor a run of 7 equal characters."""
    low = value.lower()
    return not _RUN7.search(value) and not any(word in low for word in _BANNED_WORDS)


def _drawn(expression, extra: int = 6, tail: str = "") -> Callable[[random.Random], str]:
    def draw(rng: random.Random) -> str:
        while True:
            value = sample(expression, rng, extra) + (sample(tail, rng) if tail else "")
            if plausible(value):
                return value

    return draw


# --- keys ---------------------------------------------------------------------------------------------------------
# Roles of a value in a file: "assign_q" a quoted value after its name, "assign_b" a bare value after its name,
# "string" a whole string literal without a name, "header" inside an HTTP header's text, "text" in a comment or prose.
ALL_ROLES = frozenset({"assign_q", "assign_b", "string", "header", "text"})
NOT_HEADER = ALL_ROLES - {"header"}
QUOTED = frozenset({"assign_q", "string"})
NAMED = frozenset({"assign_q", "assign_b"})


@dataclass(frozen=True)
class KeySpec:
    """One kind of key: how to draw it (``carrier``: the text before the value, the value, the text after it, as a
    URL around a password), the detect-secrets plugins that see it, its roles and its variable names."""

    type: str
    plugins: tuple[str, ...]
    carrier: Callable[[random.Random], tuple[str, str, str]]
    roles: frozenset[str]
    names: tuple[str, ...] | Callable[[random.Random], str]
    entropy: bool = False  # found by an entropy plugin: not in documents with hash negatives

    def name(self, rng: random.Random) -> str:
        return rng.choice(self.names) if isinstance(self.names, tuple) else self.names(rng)


def _bare(draw: Callable[[random.Random], str]) -> Callable[[random.Random], tuple[str, str, str]]:
    return lambda rng: ("", draw(rng), "")


def _one_of(*expressions, extra: int = 6) -> Callable[[random.Random], tuple[str, str, str]]:
    draws = [_drawn(e, extra) for e in expressions]
    return lambda rng: ("", rng.choice(draws)(rng), "")


def _sampled_name(*parts: str) -> Callable[[random.Random], str]:
    """A variable name drawn from a plugin's name expressions (prefix, separator, keyword)."""
    expression = re.compile("".join(parts), re.IGNORECASE)

    def draw(rng: random.Random) -> str:
        while True:
            name = sample(expression, rng, extra=0, check=False).strip("_-")
            if re.fullmatch(r"[A-Za-z][\w-]*", name) and expression.fullmatch(name):
                return name

    return draw


def _jwt(rng: random.Random) -> tuple[str, str, str]:
    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).decode().rstrip("=")

    header = {"alg": rng.choice(["HS256", "RS256", "ES256"]), "typ": "JWT"}
    claims = {"sub": str(rng.randint(10**6, 10**9)), "iat": rng.randint(1_500_000_000, 1_800_000_000)}
    if rng.random() < 0.5:
        claims["name"] = rng.choice(["Ada Lovelace", "Grace Hopper", "Alan Turing", "Edsger Dijkstra"])
    if rng.random() < 0.5:
        claims["scope"] = rng.choice(["read:orders", "admin", "billing write"])
    parts = [json.dumps(header).encode(), json.dumps(claims).encode(), rng.randbytes(rng.choice((32, 64)))]
    token = ".".join(b64(p) for p in parts)
    assert jwt.JwtTokenDetector.is_formally_valid(token)
    return "", token, ""


def _entropy(name: str, lengths: tuple[int, int], alphabet: str | None = None):
    plugin = _PLUGINS[name]()
    charset = alphabet or "".join(c for c in plugin.charset if c not in _AVOID)

    def draw(rng: random.Random) -> tuple[str, str, str]:
        while True:
            value = "".join(rng.choices(charset, k=rng.randint(*lengths)))
            if plausible(value) and plugin.calculate_shannon_entropy(value) > plugin.entropy_limit + 0.1:
                return "", value, ""

    return draw


def _password(rng: random.Random, symbols: str = "!#%*+-.=?^_~") -> str:
    while True:
        chars = rng.choices(string.ascii_letters + string.digits, k=rng.randint(10, 22)) + rng.choices(symbols, k=2)
        rng.shuffle(chars)
        value = "".join(chars)
        if value[0].isalnum() and plausible(value):
            return value


_HOSTS = ("db", "api", "cache", "mq", "mail", "files", "auth", "metrics", "vault", "ci")
_ORGS = """northwind contoso fabrikam globex initech hooli vandelay tyrell wonka soylent nimbus quantix
blueriver redwood stark wayne umbrella cyberdyne acme pied""".split()


def _hostname(rng: random.Random) -> str:
    return f"{rng.choice(_HOSTS)}.{rng.choice(_ORGS)}.{rng.choice(('com', 'net', 'io', 'cloud'))}"


def _basic_auth(rng: random.Random) -> tuple[str, str, str]:
    scheme = rng.choice(("postgresql", "mysql", "mongodb", "amqp", "redis", "ftp", "smtp"))
    login = rng.choice(("svc_orders", "deploy", "etl", "app", "reporting", "backup"))
    post = f"@{_hostname(rng)}:{rng.choice((5432, 3306, 27017, 5672, 6379, 21, 587))}/{rng.choice(('prod', 'main'))}"
    return f"{scheme}://{login}:", _password(rng, "-._~"), post


_CL, _SL, _IAM, _COS = (
    cloudant.CloudantDetector,
    softlayer.SoftlayerDetector,
    ibm_cloud_iam.IbmCloudIamDetector,
    ibm_cos_hmac.IbmCosHmacDetector,
)
_SEP = "(?:_|-|)"


def _cloudant_url(rng: random.Random) -> tuple[str, str, str]:
    account = rng.choice(_ORGS) + rng.choice(("", "-prod", "-eu"))
    value = _drawn(rng.choice((_CL.cl_pw, _CL.cl_api_key)))(rng)
    return f"https://{account}:", value, f"@{account}.cloudant.com"


def _softlayer_url(rng: random.Random) -> tuple[str, str, str]:
    return f"https://api.softlayer.com/soap/{rng.choice(('v3', 'v3.1'))}/", _drawn(_SL.secret)(rng), ""


def _telegram_url(rng: random.Random) -> tuple[str, str, str]:
    value = _drawn(telegram_token.TelegramBotTokenDetector.denylist[0])(rng)
    return "https://api.telegram.org/bot", value, f"/{rng.choice(('sendMessage', 'getMe', 'getUpdates'))}"


def _azure(rng: random.Random) -> tuple[str, str, str]:
    account = rng.choice(_ORGS) + rng.choice(("store", "data", "logs"))
    key = _drawn(r"[a-zA-Z0-9+/]{86}")(rng) + "=="  # the plugin's [a-zA-Z0-9+/=]{88}, padded as real keys are
    assert azure_storage_key.AzureStorageKeyDetector.denylist[0].search("AccountKey=" + key)
    pre = f"DefaultEndpointsProtocol=https;AccountName={account};AccountKey="
    return pre, key, ";EndpointSuffix=core.windows.net"


def _npmrc(rng: random.Random) -> tuple[str, str, str]:
    registry = rng.choice(("registry.npmjs.org", "npm.pkg.github.com", "npm.internal.corp.net"))
    return f"//{registry}/:_authToken=", _drawn("npm_[A-Za-z0-9]{36}")(rng), ""


def _slack_webhook(rng: random.Random) -> tuple[str, str, str]:
    path = _drawn("T[A-Z0-9]{8,10}/B[A-Z0-9]{8,10}/[a-zA-Z0-9]{24}")(rng)
    return "", "https://hooks.slack.com/services/" + path, ""


def _artifactory(rng: random.Random) -> tuple[str, str, str]:
    # a denylist expression without the delimiters it consumes around the token: (?:\s|=|:|"|^) ... (?:\s|"|$)
    pattern = rng.choice(artifactory.ArtifactoryDetector.denylist).pattern
    inner = pattern.removeprefix(r'(?:\s|=|:|"|^)').removesuffix(r'(?:\s|"|$)')
    assert inner != pattern
    return "", _drawn(inner, extra=60)(rng), ""


KEY_SPECS: tuple[KeySpec, ...] = (
    KeySpec("AWS access key id", ("AWSKeyDetector",), _one_of(aws.AWSKeyDetector.denylist[0]), ALL_ROLES,
            ("aws_access_key_id", "AWS_ACCESS_KEY_ID", "access_key", "awsAccessKeyId")),
    KeySpec("AWS secret key", ("AWSKeyDetector",), _one_of("[0-9a-zA-Z/+]{40}"), frozenset({"assign_q"}),
            _sampled_name("aws", "(?:_secret_access_|_secret_|_|-)", aws.AWSKeyDetector.secret_keyword)),
    KeySpec("Artifactory", ("ArtifactoryDetector",), _artifactory, ALL_ROLES,
            ("artifactory_api_key", "ARTIFACTORY_TOKEN", "jfrog_password")),
    KeySpec("Azure storage key", ("AzureStorageKeyDetector",), _azure, NOT_HEADER,
            ("AZURE_STORAGE_CONNECTION_STRING", "connection_string", "conn_str")),
    KeySpec("Cloudant (assignment)", ("CloudantDetector",), _one_of(_CL.cl_pw, _CL.cl_api_key), NAMED,
            _sampled_name(_CL.cl, _SEP, _CL.cl_key_or_pass)),
    KeySpec("Cloudant URL", ("CloudantDetector",), _cloudant_url, NOT_HEADER, ("COUCHDB_URL", "cloudant_url", "dsn")),
    KeySpec("Discord bot token", ("DiscordBotTokenDetector",), _one_of(discord.DiscordBotTokenDetector.denylist[0]),
            ALL_ROLES, ("DISCORD_TOKEN", "discord_bot_token", "bot_token")),
    KeySpec("GitHub token", ("GitHubTokenDetector",), _one_of(*github_token.GitHubTokenDetector.denylist), ALL_ROLES,
            ("GITHUB_TOKEN", "gh_token", "github_pat", "GH_PAT")),
    KeySpec("GitLab token", ("GitLabTokenDetector",), _one_of(*gitlab_token.GitLabTokenDetector.denylist, extra=20),
            ALL_ROLES, ("GITLAB_TOKEN", "gitlab_private_token", "CI_TOKEN")),
    KeySpec("IBM Cloud IAM key", ("IbmCloudIamDetector",), _one_of(_IAM.secret), NAMED,
            _sampled_name(_IAM.opt_ibm_cloud_iam, _IAM.opt_dash_underscore, _IAM.opt_api, _SEP, _IAM.key_or_pass)),
    KeySpec("IBM COS HMAC key", ("IbmCosHmacDetector",), _one_of(_COS.password), NAMED,
            _sampled_name(_COS.token_prefix, _SEP, _COS.password_keyword)),
    KeySpec("JSON Web Token", ("JwtTokenDetector",), _jwt, ALL_ROLES, ("id_token", "JWT", "access_token", "bearer")),
    KeySpec("Mailchimp key", ("MailchimpDetector",), _one_of(mailchimp.MailchimpDetector.denylist[0]), ALL_ROLES,
            ("MAILCHIMP_API_KEY", "mc_key", "newsletter_key")),
    KeySpec(".npmrc token", ("NpmDetector",), _npmrc, NOT_HEADER, ("NPMRC", "npm_config", "npmrc_line")),
    KeySpec("OpenAI key", ("OpenAIDetector",), _one_of(openai.OpenAIDetector.denylist[0], extra=8), ALL_ROLES,
            ("OPENAI_API_KEY", "openai_key", "llm_token")),
    KeySpec("PyPI token", ("PypiTokenDetector",), _one_of(*pypi_token.PypiTokenDetector.denylist, extra=120),
            ALL_ROLES, ("PYPI_TOKEN", "TWINE_PASSWORD", "pypi_api_token")),
    KeySpec("SendGrid key", ("SendGridDetector",), _one_of(sendgrid.SendGridDetector.denylist[0]), ALL_ROLES,
            ("SENDGRID_API_KEY", "sendgrid_key", "mail_token")),
    KeySpec("Slack token", ("SlackDetector",), _one_of(slack.SlackDetector.denylist[0], extra=24), ALL_ROLES,
            ("SLACK_BOT_TOKEN", "slack_token", "SLACK_APP_TOKEN")),
    KeySpec("Slack webhook", ("SlackDetector",), _slack_webhook, NOT_HEADER,
            ("SLACK_WEBHOOK_URL", "webhook", "alerts_hook")),
    KeySpec("SoftLayer (assignment)", ("SoftlayerDetector",), _one_of(_SL.secret), NAMED,
            _sampled_name(_SL.sl, _SEP, _SL.key_or_pass)),
    KeySpec("SoftLayer URL", ("SoftlayerDetector",), _softlayer_url, NOT_HEADER,
            ("SOFTLAYER_ENDPOINT", "sl_url", "soap_url")),
    KeySpec("Square OAuth secret", ("SquareOAuthDetector",), _one_of(square_oauth.SquareOAuthDetector.denylist[0]),
            ALL_ROLES, ("SQUARE_OAUTH_SECRET", "square_secret", "sq_client_secret")),
    KeySpec("Stripe key", ("StripeDetector",),
            _bare(_drawn(stripe.StripeDetector.denylist[0], tail="(?:[0-9a-zA-Z]{75}|)")), ALL_ROLES,
            ("STRIPE_SECRET_KEY", "stripe_key", "stripe_restricted_key")),
    KeySpec("Telegram bot token", ("TelegramBotTokenDetector",),
            _one_of(telegram_token.TelegramBotTokenDetector.denylist[0]), ALL_ROLES,
            ("TELEGRAM_BOT_TOKEN", "tg_token", "bot_token")),
    KeySpec("Telegram bot URL", ("TelegramBotTokenDetector",), _telegram_url, NOT_HEADER,
            ("TELEGRAM_API", "tg_url", "notify_url")),
    KeySpec("Twilio key", ("TwilioKeyDetector",), _one_of(*twilio.TwilioKeyDetector.denylist), ALL_ROLES,
            ("TWILIO_API_KEY", "twilio_sid", "sms_key")),
    KeySpec("Base64 entropy string", ("Base64HighEntropyString",), _entropy("Base64HighEntropyString", (32, 64)),
            QUOTED, ("client_secret", "SIGNING_KEY", "encryption_key", "session_secret", "api_token"), entropy=True),
    KeySpec("Hex entropy string", ("HexHighEntropyString",),
            _entropy("HexHighEntropyString", (24, 64), "0123456789abcdef"), QUOTED,
            ("secret_key", "HMAC_KEY", "app_secret", "cookie_secret", "master_key"), entropy=True),
    KeySpec("Keyword password", ("KeywordDetector",), _bare(_password), frozenset({"assign_q"}),
            _sampled_name("(?:db_|admin_|smtp_|)", "(?:" + "|".join(keyword.DENYLIST[:-2]) + ")")),
    KeySpec("Basic auth password", ("BasicAuthDetector",), _basic_auth, NOT_HEADER,
            ("DATABASE_URL", "broker_url", "dsn", "SQLALCHEMY_URL")),
)  # fmt: skip
KEY_TYPES = tuple(s.type for s in KEY_SPECS)


def seen_by_plugins(plugin_names, line: str, value: str) -> bool:
    """Does one of the plugins report, on ``line``, a value that contains ``value`` or lies inside it?"""
    for name in plugin_names:
        for s in _PLUGINS[name]().analyze_line(filename=DEFAULT_FILENAME, line=line, line_number=0):
            if s.secret_value and (s.secret_value in value or value in s.secret_value):
                return True
    return False


# --- emails and addresses -----------------------------------------------------------------------------------------
_GIVEN = """amelie bjorn carmen dmitri esther farid gunnar helga imani jakob keiko leonie marek nadia oskar paula
rashid selma tobias vera wiebke yusuf zofia anton""".split()
_FAMILY = """abara berg costa dvorak engel fischer gruber holm ito jansen kovac lund meyer nowak ortega pohl
quist rahman sato tanaka vogel wagner yilmaz zeller""".split()
_ROLES = ("billing", "ops-alerts", "security", "jobs", "press", "noc", "privacy", "hr.payroll", "sales-emea")
_TLDS = ("com", "de", "io", "co.jp", "com.br", "org", "net", "technology", "fi", "ca", "app", "engineering")
# CodeEraser's boundaries (codeeraser-sscu.md §5): what may stand right before and after an email or an address.
_EMAIL_BEFORE = set(" \t\n@,?!;:)('\".<")
_EMAIL_AFTER = set(" \t\n@,?!;:)('\".>")
_IP_BEFORE = set(" \t\n@?,!;:'\")(.")
_IP_AFTER = set(" \t\n@,?!;:'\")(.")


def _email(rng: random.Random) -> str:
    while True:
        first, last = rng.choice(_GIVEN), rng.choice(_FAMILY)
        local = rng.choice((
            f"{first}.{last}", f"{first[0]}.{last}{rng.randint(1, 99)}", f"{first}+{rng.choice(('ci', 'lists'))}",
            f"{last}-{first}", rng.choice(_ROLES), f"{first}{rng.randint(70, 99)}",
        ))  # fmt: skip
        domain = f"{rng.choice(('', '', 'mail.', 'eu.'))}{rng.choice(_ORGS)}{rng.choice(('', '-group', '-labs'))}"
        email = f"{local}@{domain}.{rng.choice(_TLDS)}"
        if plausible(email):
            return email


def _ipv4(rng: random.Random, short: bool = False) -> str:
    from fabricunlearn.scan.patterns import looks_like_date

    while True:
        if short:  # a 7-character address, which only a DNS or server context keeps from being a version
            ip = f"{rng.randint(1, 9)}.{rng.randint(0, 9)}.{rng.randint(0, 9)}.{rng.randint(1, 9)}"
        else:
            ip = f"{rng.randint(1, 223)}.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}"
        if ipaddress.ip_address(ip).is_global and (len(ip) == 7) == short and not looks_like_date(ip):
            return ip


def _ipv6(rng: random.Random) -> str:
    while True:
        groups = [rng.choice((0x2001, 0x2400, 0x2600, 0x2604, 0x2A00, 0x2A01, 0x2A03, 0x2C0F)) + rng.randint(0, 0xFF)]
        groups += [rng.randint(0, 0xFFFF) for _ in range(7)]
        for i in rng.sample(range(2, 7), rng.choice((0, 0, 1, 3))):  # zero groups, which "::" compresses
            groups[i] = 0
        address = ipaddress.IPv6Address(sum(g << (16 * (7 - i)) for i, g in enumerate(groups)))
        if address.is_global and not address.is_multicast:
            text = address.compressed if rng.random() < 0.7 else address.exploded
            return text.upper() if rng.random() < 0.2 else text


# --- negatives ----------------------------------------------------------------------------------------------------
def _private_ip(rng: random.Random) -> str:
    n = rng.randint
    return rng.choice((
        f"10.{n(0, 255)}.{n(0, 255)}.{n(1, 254)}", f"172.{n(16, 31)}.{n(0, 255)}.{n(1, 254)}",
        f"192.168.{n(0, 255)}.{n(1, 254)}", "127.0.0.1", f"169.254.{n(1, 254)}.{n(1, 254)}", "0.0.0.0",
        f"100.{n(64, 127)}.{n(0, 255)}.{n(1, 254)}", f"192.0.2.{n(1, 254)}", f"198.51.100.{n(1, 254)}",
        f"203.0.113.{n(1, 254)}", "255.255.255.0", "255.255.240.0", "::1", "fe80::1",
        f"fd{n(0, 255):02x}:3456::{n(1, 99)}", f"2001:db8::{n(1, 0xFFFF):x}",
    ))  # fmt: skip


def _example_email(rng: random.Random) -> str:
    name, org = rng.choice(_GIVEN), rng.choice(_ORGS)
    return rng.choice((
        f"{name}@example.com", "someone@example.org", f"test@{org}.com", f"{name}.test@gmail.com",
        f"user@{org}.io", "noreply@example.net", "admin@test.local", f"dev-user{rng.randint(1, 9)}@{org}.com",
    ))  # fmt: skip


_PLACEHOLDER_KEYS = (
    "xxxxxxxx", "XXXXXXXXXXXXXXXXXXXX", "changeme", "<YOUR_KEY>", "<your-api-key>", "your-api-key-here",
    "${API_TOKEN}", "{{ secret_key }}", "AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
    "ghp_xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx", "sk_live_XXXXXXXXXXXXXXXXXXXXXXXX", "AKIAXXXXXXXXXXXXXXXX",
    "dummy-token-for-local-dev", "placeholder", "0000000000000000", "{password}", "%(db_password)s",
)  # fmt: skip


@dataclass(frozen=True)
class Negative:
    type: str
    tag: str
    draw: Callable[[random.Random], str]
    lines: tuple[str, ...] = field(repr=False)  # templates, @V@ for the value


def _version(rng: random.Random) -> str:
    return f"{rng.randint(1, 9)}.{rng.randint(0, 9)}.{rng.randint(0, 9)}.{rng.randint(0, 9)}"


NEGATIVES: tuple[Negative, ...] = (
    Negative("private IP", "IP_ADDRESS", _private_ip, (
        'HOST = "@V@"', "bind_address: @V@", '    "host": "@V@",', "upstream = http://@V@/", "# gateway @V@",
        'ALLOWED_HOSTS = ["@V@", "localhost"]', "DB_HOST=@V@", "listen @V@;", "netmask @V@")),
    Negative("example email", "EMAIL", _example_email, (
        'EMAIL = "@V@"', "# contact: @V@", "maintainer: @V@", '    "email": "@V@",', 'send_mail("Hi", body, "@V@")')),
    Negative("placeholder key", "KEY", lambda rng: rng.choice(_PLACEHOLDER_KEYS), (
        'API_KEY = "@V@"', 'password = "@V@"', "token: @V@", 'export SECRET_KEY="@V@"', '    "api_key": "@V@",',
        'client = Client(api_key="@V@")', "AWS_SECRET_ACCESS_KEY=@V@", 'headers = {"Authorization": "Bearer @V@"}')),
    Negative("hash", "KEY", lambda rng: "".join(rng.choices("0123456789abcdef", k=rng.choice((32, 40, 64)))), (
        'sha256 = "@V@"', 'SHA1 = "@V@"', 'md5sum = "@V@"', '    "sha256": "@V@",', "checksum_sha256: '@V@'",
        'expected_hash = "@V@"', 'file_hash = "@V@"')),
    Negative("version", "IP_ADDRESS", _version, (
        '__version__ = "@V@"', "version: @V@", "Release @V@ fixes the parser.", '    "version": "@V@",',
        "LABEL version=@V@")),
    Negative("UUID", "KEY", lambda rng: str(uuid.UUID(int=rng.getrandbits(128), version=4)), (
        'request_id = "@V@"', 'TENANT = "@V@"', "correlation: @V@", '    "client_secret": "@V@",')),
    Negative("sequential", "KEY", lambda rng: rng.choice((string.ascii_uppercase + string.digits, string.digits * 2)), (
        'ALPHABET = "@V@"', 'secret = "@V@"', '    "charset": "@V@",')),
)  # fmt: skip


# --- places -------------------------------------------------------------------------------------------------------
# @V@ is the carrier (the value with its URL or connection string around it); @name@, @NAME@, @camel@ the
# variable name in that case; @P@ a person's name.
_KEY_TEMPLATES: dict[str, dict[str, tuple[str, ...]]] = {
    "py": {
        "assign_q": ('@name@ = "@V@"', "@NAME@ = '@V@'", '    "@name@": "@V@",', 'settings.@NAME@ = "@V@"',
                     'def connect(host, @name@="@V@"):\n    pass', 'config["@name@"] = "@V@"'),
        "string": ('client = Client("@V@", timeout=30)', 'os.environ.setdefault("SERVICE_CREDENTIAL", "@V@")',
                   'TOKENS = ["@V@"]', 'session.auth = ("api", "@V@")', "r = requests.get(url, params={'k': '@V@'})"),
        "header": ('headers = {"Authorization": "Bearer @V@"}', 'req.add_header("Authorization", "token @V@")'),
        "text": ("# rotated on 2023-04-02, old value: @V@", "    # TODO: move @V@ to the vault"),
    },
    "yaml": {
        "assign_q": ('@name@: "@V@"', "  @name@: '@V@'"),
        "assign_b": ("@name@: @V@", "    @name@: @V@", "  - @name@=@V@"),
        "string": ('args: ["--token", "@V@"]', '    value: "@V@"'),
        "header": ('    Authorization: "Bearer @V@"',),
        "text": ("# @V@", "      - @V@"),
    },
    "json": {
        "assign_q": ('  "@name@": "@V@",',),
        "string": ('  "credentials": ["@V@"],',),
        "header": ('  "headers": {"Authorization": "Bearer @V@"},',),
    },
    "ini": {
        "assign_q": ('@name@ = "@V@"',),
        "assign_b": ("@name@ = @V@", "@name@=@V@", "@name@: @V@"),
        "text": ("; old: @V@", "# @V@"),
    },
    "env": {
        "assign_q": ('export @NAME@="@V@"', '@NAME@="@V@"', "@NAME@='@V@'"),
        "assign_b": ("export @NAME@=@V@", "@NAME@=@V@"),
        "string": ('docker login --password "@V@" registry.internal.io',),
        "header": ('curl -s -H "Authorization: token @V@" https://api.internal.io/v1/me',),
        "text": ("# @V@", "echo @V@ > ~/.credential"),
    },
    "js": {
        "assign_q": ('const @camel@ = "@V@";', "  @camel@: '@V@',", 'process.env.@NAME@ = "@V@";'),
        "string": ('const client = new Client("@V@");', 'axios.defaults.headers.common["X-Api-Key"] = "@V@";'),
        "header": ("fetch(url, { headers: { Authorization: `Bearer @V@` } });",),
        "text": ("// legacy key @V@",),
    },
    "toml": {
        "assign_q": ('@name@ = "@V@"',),
        "string": ('tokens = ["@V@"]',),
        "text": ("# @V@",),
    },
    "docker": {
        "assign_q": ('ENV @NAME@="@V@"',),
        "assign_b": ("ENV @NAME@=@V@", "ARG @NAME@=@V@"),
        "header": ('RUN curl -H "Authorization: Bearer @V@" -o /tmp/pkg.tgz https://files.internal.io/pkg.tgz',),
        "text": ("# @V@",),
    },
    "md": {
        "assign_b": ("    @NAME@=@V@",),
        "string": ('    client = Client("@V@")',),
        "text": ("Use `@V@` for the staging account.", "The old key @V@ was revoked."),
    },
}  # fmt: skip
_EMAIL_TEMPLATES = {
    "py": ('__email__ = "@V@"', "# Author: @P@ <@V@>", 'ADMINS = [("@P@", "@V@")]', 'send_mail(subj, body, "@V@", to)'),
    "yaml": ("maintainer: @V@", "  email: '@V@'", "owners: [@V@]"),
    "json": ('  "author": "@P@ <@V@>",', '  "contact": {"email": "@V@"},'),
    "ini": ("author_email = @V@", "mail_from=@V@"),
    "env": ("GIT_AUTHOR_EMAIL=@V@", 'git config user.email "@V@"'),
    "js": ('  author: "@P@ <@V@>",', "// reach @V@ for access"),
    "toml": ('authors = [{ name = "@P@", email = "@V@" }]',),
    "docker": ('LABEL maintainer="@V@"',),
    "md": ("Signed-off-by: @P@ <@V@>", "Questions? Write to [@V@](mailto:@V@).", "| @P@ | @V@ | on call |"),
}  # fmt: skip
_IP_TEMPLATES = {
    "py": ('UPSTREAM = "http://@V@:8080/api"', 'sock.connect(("@V@", 443))', "# gateway: @V@", '    "host": "@V@",'),
    "yaml": ("host: @V@", "  - @V@", "endpoint: 'https://@V@/v2'"),
    "json": ('  "peer": "@V@",', '  "peers": ["@V@"],'),
    "ini": ("host = @V@", "bind=@V@"),
    "env": ("REDIS_HOST=@V@", "ssh deploy@@V@ 'systemctl restart app'", "@V@    api.internal"),
    "js": ('const API = "http://@V@:3000";', "  host: '@V@',"),
    "toml": ('address = "@V@"',),
    "docker": ("ENV UPSTREAM=@V@", "HEALTHCHECK CMD curl -f http://@V@:8080/health"),
    "md": ("The load balancer answers on @V@ (port 443).", "Connection from @V@ port 51234"),
}  # fmt: skip
_RESOLVER_TEMPLATES = ("nameserver @V@", 'DNS_SERVERS = ["@V@"]', "dns: @V@")
_FILLER = {
    "yaml": ("replicas: 3", "image: nginx:1.25-alpine", "restart: always", "log_level: info", "timeout_seconds: 30"),
    "json": ('  "timeout": 30,', '  "region": "eu-central-1",', '  "retries": 5,', '  "debug": false,'),
    "ini": ("[app]", "port = 8080", "[database]", "pool_size = 10", "log_level = INFO"),
    "env": ("NODE_ENV=production", "PORT=8080", 'export PATH="$HOME/bin:$PATH"', "set -euo pipefail"),
    "js": ('const express = require("express");', "const app = express();", "app.listen(3000);",
           "module.exports = { retries: 3 };"),
    "toml": ("[tool.service]", 'name = "orders"', "workers = 4", "debug = false"),
    "docker": ("FROM python:3.11-slim", "WORKDIR /app", "COPY . .", "RUN pip install -r requirements.txt",
               'CMD ["python", "main.py"]'),
    "md": ("## Setup", "Install the package and run the service.", "```bash", "make run", "```"),
}  # fmt: skip
KINDS = tuple(_KEY_TEMPLATES)


def _with_name(template: str, name: str) -> str:
    words = [w for w in re.split(r"[_\-]", name) if w]
    camel = words[0].lower() + "".join(w.capitalize() for w in words[1:])
    return template.replace("@name@", name).replace("@NAME@", name.upper().replace("-", "_")).replace("@camel@", camel)


# A slot: (tag, type, text before the value, value, text after it, "secrets" or "negatives").
def _key_item(rng: random.Random, kind: str, allow_entropy: bool) -> tuple[str, list[tuple], KeySpec]:
    while True:
        spec = rng.choice(KEY_SPECS)
        options = [t for role in sorted(spec.roles) for t in _KEY_TEMPLATES[kind].get(role, ())]
        if options and (allow_entropy or not spec.entropy):
            break
    pre, value, post = spec.carrier(rng)
    return _with_name(rng.choice(options), spec.name(rng)), [("KEY", spec.type, pre, value, post, "secrets")], spec


def _email_item(rng: random.Random, kind: str) -> tuple[str, list[tuple], None]:
    person = f"{rng.choice(_GIVEN).capitalize()} {rng.choice(_FAMILY).capitalize()}"
    template = rng.choice(_EMAIL_TEMPLATES[kind]).replace("@P@", person)
    return template, [("EMAIL", "email", "", _email(rng), "", "secrets")] * template.count("@V@"), None


def _ip_item(rng: random.Random, kind: str) -> tuple[str, list[tuple], None]:
    r = rng.random()
    if r < 0.1:
        slot = ("IP_ADDRESS", "IPv4 (7 characters, DNS)", "", _ipv4(rng, short=True), "", "secrets")
        return rng.choice(_RESOLVER_TEMPLATES), [slot], None
    value, type_ = (_ipv6(rng), "IPv6") if r < 0.4 else (_ipv4(rng), "IPv4")
    template = rng.choice(_IP_TEMPLATES[kind])
    if type_ == "IPv6":  # in a URL an IPv6 address is written in brackets (RFC 3986)
        template = template.replace("://@V@", "://[@V@]")
    return template, [("IP_ADDRESS", type_, "", value, "", "secrets")], None


def _fill(template: str, slots: list[tuple]) -> tuple[str, list[dict], list[dict]]:
    """The template with each @V@ replaced by its slot's carrier; secrets and negatives at their offsets."""
    parts = template.split("@V@")
    text, found = parts[0], {"secrets": [], "negatives": []}
    for (tag, type_, pre, value, post, where), part in zip(slots, parts[1:]):
        text += pre
        found[where].append({"tag": tag, "type": type_, "value": value, "start": len(text)})
        found[where][-1]["end"] = len(text) + len(value)
        text += value + post + part
    return text, found["secrets"], found["negatives"]


def _by_design(text: str, secret: dict, spec: KeySpec | None) -> bool:
    a, b = secret["start"], secret["end"]
    if secret["tag"] == "KEY":
        line_start = text.rfind("\n", 0, a) + 1
        line_end = text.find("\n", b) if "\n" in text[b:] else len(text)
        return seen_by_plugins(spec.plugins, text[line_start:line_end], secret["value"])
    before, after = (_EMAIL_BEFORE, _EMAIL_AFTER) if secret["tag"] == "EMAIL" else (_IP_BEFORE, _IP_AFTER)
    return (a == 0 or text[a - 1] in before) and (b == len(text) or text[b] in after)


def _document(rng: random.Random, kind: str, chunk: str) -> dict:
    negatives = [rng.choice(NEGATIVES) for _ in range(rng.choice((0, 0, 1, 1, 2)))]
    has_hash = any(n.type == "hash" for n in negatives)
    items = []
    for _ in range(rng.choice((1, 1, 2, 3))):
        r = rng.random()
        if r < 0.6:
            items.append(_key_item(rng, kind, allow_entropy=not has_hash))
        else:
            items.append(_email_item(rng, kind) if r < 0.8 else _ip_item(rng, kind))
    for n in negatives:
        items.append((rng.choice(n.lines), [(n.tag, n.type, "", n.draw(rng), "", "negatives")], None))
    rng.shuffle(items)
    lines = chunk.rstrip("\n").split("\n") if kind == "py" else [rng.choice(_FILLER[kind]) for _ in range(9)]
    lines = lines if kind == "py" else lines[: rng.randint(2, 9)]
    slots = sorted(rng.randint(0, len(lines)) for _ in items)
    text, secrets, negs = ("{\n" if kind == "json" else ""), [], []
    for i in range(len(lines) + 1):
        for (template, slot_list, spec), at in zip(items, slots):
            if at != i:
                continue
            body, s, n = _fill(template, slot_list)
            secrets += [{**x, "start": x["start"] + len(text), "end": x["end"] + len(text), "_spec": spec} for x in s]
            negs += [{**x, "start": x["start"] + len(text), "end": x["end"] + len(text)} for x in n]
            text += body + "\n"
        if i < len(lines):
            text += lines[i] + "\n"
    if kind == "json":
        text += '  "version": 1\n}\n'
    for s in secrets:
        s["by_design"] = _by_design(text, s, s.pop("_spec"))
    for s in secrets + negs:
        assert text[s["start"] : s["end"]] == s["value"], s
    return {"text": text, "kind": kind, "secrets": sorted(secrets, key=lambda s: s["start"]), "negatives": negs}


def _version_in_server_context(doc: dict) -> bool:
    """A version negative within 100 characters of "dns" or "server" is an address by CodeEraser's rule."""
    low = doc["text"].lower()
    return any(
        n["type"] == "version" and re.search("dns|server", low[max(0, n["start"] - 100) : n["end"] + 100])
        for n in doc["negatives"]
    )


def second_corpus(n_docs: int = 600, seed: int = 20261123) -> list[dict]:
    """``n_docs`` documents, the file kinds in turn; Python ones around standard-library chunks (200-700 chars)."""
    from fabricunlearn.toy.stdlib_corpus import code_chunks

    rng = random.Random(seed)
    n_py = sum(1 for i in range(n_docs) if KINDS[i % len(KINDS)] == "py")
    chunks = iter(code_chunks(random.Random(seed + 1), n_py, 200, 700))
    docs = []
    for i in range(n_docs):
        kind = KINDS[i % len(KINDS)]
        chunk = next(chunks) if kind == "py" else ""
        while _version_in_server_context(doc := _document(rng, kind, chunk)):
            pass
        docs.append(doc)
    return docs


def toy_planted(n_docs: int = 480) -> list[dict]:
    """The toy world's planted secrets as ``tests/scan/test_scan_recall.py`` makes them (same seed and calls)."""
    from fabricunlearn.toy.secret_formats import SECRET_TYPES, plant_secrets
    from fabricunlearn.toy.stdlib_corpus import code_chunks

    rng = random.Random(1234)
    docs = []
    for i, chunk in enumerate(code_chunks(rng, n_docs, 200, 700)):
        kind = SECRET_TYPES[i % len(SECRET_TYPES)]
        types = [kind] if rng.random() < 0.6 else [kind, rng.choice(SECRET_TYPES)]
        text, secrets = plant_secrets(rng, chunk, len(types), types=types)
        docs.append(
            {"text": text, "kind": "py", "secrets": [{**s, "by_design": True} for s in secrets], "negatives": []}
        )
    return docs


@dataclass
class Scores:
    """Exact-span counts per tag (``all``: every secret; ``design``: the secrets seen by design), per type."""

    tp: Counter = field(default_factory=Counter)  # keys (tag, "all" | "design")
    fn: Counter = field(default_factory=Counter)
    fp: Counter = field(default_factory=Counter)  # keys: tag
    found_by_type: Counter = field(default_factory=Counter)  # keys (tag, type, by_design)
    total_by_type: Counter = field(default_factory=Counter)
    negatives_reported: list = field(default_factory=list)

    def recall(self, tag: str, which: str = "all") -> float:
        n = self.tp[tag, which] + self.fn[tag, which]
        return self.tp[tag, which] / n if n else float("nan")

    def precision(self, tag: str) -> float:
        n = self.tp[tag, "all"] + self.fp[tag]
        return self.tp[tag, "all"] / n if n else float("nan")


def measure(scanner, docs: list[dict]) -> Scores:
    """Recall and precision per tag with exact spans (tag, start, end); the negatives any finding overlaps."""
    s = Scores()
    for doc in docs:
        found = scanner.scan(doc["text"])
        spans = {(f["tag"], f["start"], f["end"]) for f in found}
        for t in doc["secrets"]:
            hit = (t["tag"], t["start"], t["end"]) in spans
            for which in ("all", "design") if t["by_design"] else ("all",):
                (s.tp if hit else s.fn)[t["tag"], which] += 1
            s.total_by_type[t["tag"], t["type"], t["by_design"]] += 1
            s.found_by_type[t["tag"], t["type"], t["by_design"]] += hit
        for tag, *_ in spans - {(t["tag"], t["start"], t["end"]) for t in doc["secrets"]}:
            s.fp[tag] += 1
        for n in doc["negatives"]:
            if any(f["start"] < n["end"] and n["start"] < f["end"] for f in found):
                s.negatives_reported.append((n["type"], n["value"]))
    return s
