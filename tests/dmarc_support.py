"""The DMARC case table, the zone it runs against, and OpenDMARC run on the same cases.

Every case is checked twice: by :func:`postoffice.mailauth.dmarc.evaluate_message` against the
zone on a loopback dnslib server, and by OpenDMARC (Debian's ``opendmarc`` milter, libopendmarc
1.4) driven by ``miltertest`` with the same zone. OpenDMARC takes SPF and DKIM results from an
Authentication-Results field of an authserv-id it trusts — the field our
:mod:`postoffice.mailauth.results` builds — and prints its own verdict in another.

OpenDMARC reads /etc/resolv.conf (libresolv, port 53 only; libopendmarc's nameserver hook is
not reachable from the milter's configuration), so :class:`OpenDmarc` runs it in a private
mount namespace (``unshare --mount``) where a bind mount puts a resolv.conf naming a loopback
address whose port 53 the test's DNS server holds. That needs root (CI and this sandbox are).
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import shutil
import socket
import subprocess
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from dnslib.server import DNSLogger, DNSServer

from dns_zone import DnsZone
from mail_peers import free_port
from postoffice.mailauth import results
from postoffice.mailauth.verdicts import DkimVerdict, SpfVerdict

# Our authserv-id in the Authentication-Results field that hands OpenDMARC the SPF/DKIM results.
UPSTREAM_ID = "mx.test"
VERIFIER_ID = "opendmarc.test"


@dataclass(frozen=True)
class Verdict:
    """(result, policy, disposition) as both sides can report them; None: not reported."""

    result: str | None
    policy: str | None
    disposition: str | None


@dataclass(frozen=True)
class Case:
    name: str
    from_fields: tuple[str, ...]
    spf: SpfVerdict | None
    dkim: tuple[DkimVerdict, ...]
    expected: Verdict  # ours
    # What OpenDMARC 1.4.2 reports where it differs from ours, and why ours follows the RFC.
    opendmarc: Verdict | None = None
    why: str = ""


def _spf(result: str, domain: str) -> SpfVerdict:
    return SpfVerdict(result, domain)


def _dkim(result: str, domain: str) -> DkimVerdict:
    return DkimVerdict(result, domain, "sel", "dGVzdHNpZ25hdHVyZQ==")


REJECT = Verdict("fail", "reject", "reject")
# RFC 7489 §3.1.1: "In strict mode, only an exact match". OpenDMARC 1.4.2 also compares the
# Organizational Domain in strict mode; fixed upstream after 1.4.2 (OpenDMARC pull requests
# #268 and #354, "fix strict mode false positive with PSL").
STRICT_BUG = "OpenDMARC 1.4.2 aligns a subdomain in strict mode (upstream fix: OpenDMARC PR #354)"

CASES: tuple[Case, ...] = (
    Case(
        "spf-aligned-relaxed",
        ("a@example.com",),
        _spf("pass", "bounce.example.com"),
        (),
        Verdict("pass", "reject", "none"),
    ),
    Case("spf-unaligned", ("a@example.com",), _spf("pass", "elsewhere.com"), (), REJECT),
    Case("spf-fail-aligned", ("a@example.com",), _spf("fail", "example.com"), (), REJECT),
    Case(
        "spf-strict-unaligned",
        ("a@example.net",),
        _spf("pass", "bounce.example.net"),
        (),
        Verdict("fail", "quarantine", "quarantine"),
        Verdict("pass", "quarantine", "none"),
        STRICT_BUG,
    ),
    Case(
        "spf-strict-aligned",
        ("a@example.net",),
        _spf("pass", "example.net"),
        (),
        Verdict("pass", "quarantine", "none"),
    ),
    Case(
        "dkim-relaxed-aligned",
        ("a@example.com",),
        None,
        (_dkim("pass", "mail.example.com"),),
        Verdict("pass", "reject", "none"),
    ),
    Case("dkim-fail-aligned", ("a@example.com",), None, (_dkim("fail", "example.com"),), REJECT),
    Case(
        "dkim-strict-unaligned",
        ("a@example.net",),
        None,
        (_dkim("pass", "mail.example.net"),),
        Verdict("fail", "quarantine", "quarantine"),
        Verdict("pass", "quarantine", "none"),
        STRICT_BUG,
    ),
    Case(
        "dkim-strict-aligned",
        ("a@example.net",),
        None,
        (_dkim("fail", "mail.example.net"), _dkim("pass", "example.net")),
        Verdict("pass", "quarantine", "none"),
    ),
    Case(
        "subdomain-sp",
        ("a@shop.example.com",),
        _spf("fail", "shop.example.com"),
        (),
        Verdict("fail", "quarantine", "quarantine"),
    ),
    Case(
        "subdomain-sp-pass",
        ("a@shop.example.com",),
        None,
        (_dkim("pass", "example.com"),),
        Verdict("pass", "quarantine", "none"),
    ),
    Case("pct-0-quarantine", ("a@example.org",), None, (), Verdict("fail", "quarantine", "none")),
    Case(
        "multi-label-suffix",
        ("a@news.example.co.uk",),
        None,
        (_dkim("pass", "example.co.uk"),),
        Verdict("pass", "none", "none"),
    ),
    Case(
        "public-suffix-unaligned",
        ("a@example.co.uk",),
        None,
        (_dkim("pass", "other.co.uk"),),
        Verdict("fail", "none", "none"),
    ),
    Case("no-record", ("a@example.info",), _spf("pass", "example.info"), (), Verdict("none", None, "none")),
    Case("malformed-record", ("a@example.biz",), None, (), Verdict("permerror", None, "none")),
    Case("same-domain-twice", ("a@example.com, b@example.com",), _spf("pass", "elsewhere.com"), (), REJECT),
    Case(
        "named-with-comment",
        ('"Ann" <a@example.net> (work)',),
        _spf("pass", "example.net"),
        (),
        Verdict("pass", "quarantine", "none"),
    ),
    Case(
        "dns-timeout",
        ("a@example.edu",),
        None,
        (),
        Verdict("temperror", None, "none"),
        Verdict("none", "none", "none"),
        "RFC 7489 §11.2: a DNS failure is temperror; libopendmarc returns DMARC_DNS_ERROR_TMPERR but "
        "the milter reports that as dmarc=none",
    ),
    Case(
        "pct-0-reject",
        ("a@example.io",),
        None,
        (),
        Verdict("fail", "reject", "quarantine"),
        Verdict("fail", "reject", "none"),
        "RFC 7489 §6.6.4: a failing message outside pct gets the next weaker policy (reject → "
        "quarantine); OpenDMARC applies none",
    ),
    Case(
        "two-from-fields",
        ("a@example.com", "b@example.com"),
        _spf("pass", "example.com"),
        (),
        Verdict("permerror", None, "reject"),
        Verdict(None, None, "reject"),
        "OpenDMARC (RequiredHeaders) refuses before evaluating; ours says why: permerror",
    ),
    Case(
        "from-without-domain",
        ("undisclosed-recipients:;",),
        _spf("pass", "example.com"),
        (),
        Verdict("permerror", None, "reject"),
        Verdict(None, None, "reject"),
        "OpenDMARC (RequiredHeaders) refuses before evaluating; ours says why: permerror",
    ),
    Case(
        "two-domains-one-fails",
        ("a@example.com, b@example.info",),
        None,
        (),
        REJECT,
        Verdict(None, None, "reject"),
        "RFC 7489 §6.6.1 checks each domain (example.com fails, p=reject); OpenDMARC "
        "(RejectMultiValueFrom) refuses every From with two domains",
    ),
)


def publish(zone: DnsZone) -> None:
    """The policy records the cases look up."""
    zone.txt("_dmarc.example.com", "v=DMARC1; p=reject; sp=quarantine; rua=mailto:d@example.com")
    zone.txt("_dmarc.example.net", "v=DMARC1; p=quarantine; adkim=s; aspf=s")
    zone.txt("_dmarc.example.org", "v=DMARC1; p=quarantine; pct=0")
    zone.txt("_dmarc.example.io", "v=DMARC1; p=reject; pct=0")
    zone.txt("_dmarc.example.co.uk", "v=DMARC1; p=none")
    zone.txt("_dmarc.example.biz", "v=DMARC1; p=bogus")
    zone.txt("example.info", "v=spf1 -all")  # a TXT record, but no DMARC one
    zone.timeout("_dmarc.example.edu")


# --- OpenDMARC under miltertest -------------------------------------------------------------------


def public_suffix_list() -> Path:
    """The list the publicsuffixlist package ships, so both sides use the same one."""
    import publicsuffixlist

    return Path(publicsuffixlist.__file__).with_name("public_suffix_list.dat")


@contextlib.contextmanager
def dns_on_port_53(zone: DnsZone) -> Iterator[str]:
    """Serve ``zone`` at port 53 of a loopback address nobody else uses; yields the address."""
    quiet = DNSLogger(log="-request,-reply,-truncated,-data,-recv,-send,-error", prefix=False)
    for _ in range(20):
        address = f"127.53.{random.randrange(256)}.{random.randrange(1, 255)}"
        try:
            server = DNSServer(zone, address=address, port=53, logger=quiet)
        except OSError:
            continue
        break
    else:
        raise RuntimeError("no loopback address with port 53 free")
    server.start_thread()
    try:
        yield address
    finally:
        server.stop()


def _config(directory: Path, port: int) -> Path:
    config = directory / "opendmarc.conf"
    config.write_text(
        textwrap.dedent(f"""\
            AuthservID {VERIFIER_ID}
            TrustedAuthservIDs {UPSTREAM_ID}
            PublicSuffixList {public_suffix_list()}
            Socket inet:{port}@127.0.0.1
            PidFile {directory / "opendmarc.pid"}
            Syslog false
            Background false
            RequiredHeaders true
            RejectFailures true
            RejectMultiValueFrom true
            HoldQuarantinedMessages true
            SPFIgnoreResults false
            SPFSelfValidate false
            IgnoreHosts {directory / "ignore-hosts"}
            """)
    )
    (directory / "ignore-hosts").write_text("192.0.2.255\n")
    return config


@contextlib.contextmanager
def opendmarc(directory: Path, dns_address: str) -> Iterator[int]:
    """OpenDMARC listening on 127.0.0.1 (yields the port), seeing only our DNS server."""
    port = free_port("127.0.0.1")
    resolv = directory / "resolv.conf"
    # One try of one second: the timeout case then costs two seconds (two lookups), not 20.
    resolv.write_text(f"nameserver {dns_address}\noptions timeout:1 attempts:1\n")
    config = _config(directory, port)
    script = f"mount --bind {resolv} /etc/resolv.conf && exec opendmarc -f -c {config}"
    process = subprocess.Popen(
        ["unshare", "--mount", "sh", "-c", script], stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        yield port
    finally:
        process.terminate()
        output, _ = process.communicate(timeout=10)
        if output.strip():
            print(output.decode(errors="replace"))


def _lua_string(text: str) -> str:
    assert "]==]" not in text
    return f"[==[{text}]==]"


def lua_for(case: Case, port: int) -> str:
    """A miltertest script that runs ``case`` through OpenDMARC and prints what it did."""
    envelope = case.spf.domain if case.spf else "client.example.net"
    upstream = [results.spf_result(case.spf)] if case.spf else []
    upstream += [results.dkim_result(verdict) for verdict in case.dkim]
    # Unfolded: milters receive header values as one line.
    field = results.build(UPSTREAM_ID, upstream).replace("\r\n\t", " ")
    headers = [("Authentication-Results", field)]
    headers += [("From", value) for value in case.from_fields]
    headers += [
        ("Date", "Tue, 22 Dec 2009 13:04:12 -0800"),
        ("Subject", case.name),
        ("Message-ID", f"<{case.name}@t>"),
    ]
    lines = [
        f'conn = mt.connect("inet:{port}@127.0.0.1", 40, 0.25)',
        'if conn == nil then error("no connection to opendmarc") end',
        'mt.conninfo(conn, "client.example.net", "192.0.2.1")',
        'mt.helo(conn, "client.example.net")',
        f'mt.macro(conn, SMFIC_MAIL, "i", {_lua_string(case.name)})',
        f"mt.mailfrom(conn, {_lua_string(f'<bounce@{envelope}>')})",
        'mt.rcptto(conn, "<rcpt@postoffice.test>")',
        *(f"mt.header(conn, {_lua_string(name)}, {_lua_string(value)})" for name, value in headers),
        "mt.eoh(conn)",
        "mt.eom(conn)",
        'print("REPLY " .. string.format("%d", mt.getreply(conn)))',
        'local ar = mt.getheader(conn, "Authentication-Results", 0)',
        'if ar ~= nil then print("AR " .. ar) end',
        "mt.disconnect(conn)",
    ]
    return "\n".join(lines) + "\n"


# miltertest's numbers for the milter's final reply (libmilter mfdef.h).
SMFIR_REJECT = ord("r")
SMFIR_REPLYCODE = ord("y")


def run_case(case: Case, port: int, directory: Path) -> Verdict:
    """OpenDMARC's verdict on ``case``."""
    script = directory / f"{case.name}.lua"
    script.write_text(lua_for(case, port))
    miltertest = shutil.which("miltertest") or "miltertest"
    done = subprocess.run([miltertest, "-s", str(script)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    reply = int(re.search(r"^REPLY (\d+)", done.stdout, re.M).group(1))  # type: ignore[union-attr]
    if reply == SMFIR_REPLYCODE:  # rejected by DMARC policy (RejectFailures, p=reject)
        return Verdict("fail", "reject", "reject")
    if reply == SMFIR_REJECT:  # refused before DMARC: RequiredHeaders, RejectMultiValueFrom
        return Verdict(None, None, "reject")
    field = re.search(r"^AR (.*)$", done.stdout, re.M)
    assert field is not None, done.stdout
    found = re.search(r"dmarc=(\w+)(?: \(p=(\w+) dis=(\w+)\))?", field.group(1))
    assert found is not None, field.group(1)
    return Verdict(found.group(1), found.group(2), found.group(3) or "none")


def can_run_opendmarc() -> str | None:
    """Why OpenDMARC cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root (port 53 and a private mount namespace)"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.bind(("127.53.255.254", 53))
        except OSError as exc:
            return f"cannot bind port 53 on loopback: {exc}"
    return None
