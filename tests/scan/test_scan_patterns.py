"""Emails and IP addresses: CodeEraser's expressions, their post-filters, the filters of filter.py, exact spans."""

from __future__ import annotations

import pytest

from fabricunlearn.scan import filters, scan_text
from fabricunlearn.scan.patterns import find_emails, find_ips, looks_like_date, looks_like_version


def _values(text: str, tag: str | None = None) -> list[str]:
    secrets = scan_text(text)
    for s in secrets:
        assert text[s["start"] : s["end"]] == s["value"]
    return [s["value"] for s in secrets if tag is None or s["tag"] == tag]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('__email__ = "jane.doe@acme-corp.com"', ["jane.doe@acme-corp.com"]),
        ("# maintainer: Priya Iyer <p.iyer@hooli.co.uk>", ["p.iyer@hooli.co.uk"]),
        ("mailto:omar_haddad@nimbus.io, next", ["omar_haddad@nimbus.io"]),
        ("two: a.b@initech.de; c_d@globex.fr", ["a.b@initech.de", "c_d@globex.fr"]),
        ("Kontakt: jürgen.müller@acme.de bitte", ["jürgen.müller@acme.de"]),
        ("no address here @decorator and x@y", []),
        ("a@b.c", []),  # a one-letter top-level domain is not one
        ("path/to/file@v1.2", []),  # the top-level domain must start with a letter: 2 is not one
    ],
)
def test_email_positives_and_negatives(text, expected):
    assert [m.value for m in find_emails(text)] == expected


@pytest.mark.parametrize(
    "value",
    ["test.user@acme.com", "jane@example.org", "ADMIN@EXAMPLE.COM", "superuser@corp.io", "aaa@b.io", "x@ccc.de"],
)
def test_example_and_test_emails_are_dropped(value):
    assert filters.is_example_email(value)
    assert _values(f'EMAIL = "{value}"') == []


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('HOST = "34.120.5.17"', ["34.120.5.17"]),
        ("34.120.5.17,52.14.77.190 and (81.2.69.160)", ["34.120.5.17", "52.14.77.190", "81.2.69.160"]),
        ("dsn = 'postgresql://app:pw@93.184.216.34:5432/db'", ["93.184.216.34"]),
        ("v6 2001:4860:4860::8888 here", ["2001:4860:4860::8888"]),
        ("v6 2a00:1450:4001:82a:0:0:0:200e.", ["2a00:1450:4001:82a:0:0:0:200e"]),
        ("mapped ::ffff:34.120.5.17 x", ["::ffff:34.120.5.17"]),  # the original cut it at ::ffff:34
        ("cut 2001:db8::8:1 x", ["2001:db8::8:1"]),  # the original cut it at 2001:db8::8
    ],
)
def test_ip_candidates(text, expected):
    assert [m.value for m in find_ips(text)] == expected


@pytest.mark.parametrize(
    "text",
    [
        "released 12.10.2019 today",  # dd.mm.yyyy
        "31.12.99.5",  # dd.mm.yy followed by a dot
        "2019.12.31 x",
        "version 1.2.3.4 of the tool",  # x.y.z.w with 7 characters: a version
        "300.1.2.3 is no address",
        "http://34.120.5.17/path",  # CodeEraser's boundaries: not after "/"
        "x=34.120.5.17",  # nor after "="
    ],
)
def test_ip_negatives(text):
    assert list(find_ips(text)) == []


def test_version_filter_reads_its_context():
    assert looks_like_version("1.2.3.4", "pip install tool==1.2.3.4")
    assert not looks_like_version("1.2.3.4", "dns server at 1.2.3.4")
    assert [m.value for m in find_ips("primary DNS: 1.2.3.4 ok")] == ["1.2.3.4"]
    # near the start of a text the context is the text's beginning (the original's slice wrapped around)
    text = "server 8.8.4.4 " + "x" * 300
    assert [m.value for m in find_ips(text)] == ["8.8.4.4"]
    assert looks_like_date("2019-12-31") and not looks_like_date("34.120.5.17")


@pytest.mark.parametrize(
    "value",
    [
        "10.1.2.3", "127.0.0.1", "192.168.10.20", "169.254.1.1", "172.16.0.1", "172.31.255.254",  # the original's
        "0.0.0.0", "255.255.255.0", "100.64.1.2", "192.0.2.14", "203.0.113.9", "224.0.0.251",  # and the rest
        "::1", "fe80::1", "fd12:3456::1", "2001:db8::1",
    ],
)  # fmt: skip
def test_private_and_non_global_addresses_are_dropped(value):
    assert filters.is_private_ip(value)
    assert _values(f'addr = "{value}"', "IP_ADDRESS") == []


@pytest.mark.parametrize("value", ["172.15.0.1", "172.32.0.1", "172.5.1.1", "34.120.5.17", "2606:4700::1111"])
def test_public_addresses_are_kept(value):
    # 172.5.x: the original's eval("5.") = 5.0 fell outside 16-31 by luck; 172.15 / 172.32 are public
    assert not filters.is_private_ip(value)
    assert _values(f'addr = "{value}"', "IP_ADDRESS") == [value]


def test_spans_are_exact_after_crlf_and_non_ascii():
    text = "# héllo wörld 🙂 ünïcode\r\n\r\nADMINS = [('Zoë', \"zoe.moreau@wonka.fr\")]\r\nHOST = '81.2.69.160'\r\n"
    secrets = scan_text(text)
    assert [(s["tag"], s["value"]) for s in secrets] == [
        ("EMAIL", "zoe.moreau@wonka.fr"),
        ("IP_ADDRESS", "81.2.69.160"),
    ]
    for s in secrets:
        assert text[s["start"] : s["end"]] == s["value"]
    assert secrets[0]["start"] == text.index("zoe.moreau")
