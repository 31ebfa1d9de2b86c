"""Our own MTA-STS policy (RFC 8461 §3.2) served on the web listener to ``Host: mta-sts.DOMAIN``,
and ``postoffice dns DOMAIN`` printing its ``_mta-sts`` record (an id that changes with the
policy), the policy host's name and the TLSA 3 1 1 record of the current certificate."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import dns.rdatatype
import dns.zone
import httpx
import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from conftest import RunningServer
from dns_zone import ZoneServer, dns_zone_server
from postoffice.config.tables import MtaStsSettings
from postoffice.mailauth.mta_sts import StsPolicy, parse_policy, policy_id

DOMAIN = "example.test"
HOST = "mail.example.test"


def fetch(server: RunningServer, host: str) -> httpx.Response:
    return httpx.get(f"{server.base_url}/.well-known/mta-sts.txt", headers={"Host": host}, timeout=10)


def test_the_policy_is_served_to_its_host_name_only(server_factory: Callable[..., RunningServer]) -> None:
    server = server_factory(
        hostname=HOST, domains=(DOMAIN, "other.test"), mta_sts=MtaStsSettings(mode="enforce", max_age=1209600)
    )
    for host in (f"mta-sts.{DOMAIN}", "MTA-STS.other.test:443"):
        response = fetch(server, host)
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
        assert parse_policy(response.text) == StsPolicy("enforce", 1209600, (HOST,))
        assert response.text.endswith("\r\n")
    # Another name, or another path, is the web application's as before: no such page.
    assert fetch(server, "mta-sts.stranger.test").status_code == 404
    other = httpx.get(
        f"{server.base_url}/.well-known/other", headers={"Host": f"mta-sts.{DOMAIN}"}, timeout=10
    )
    assert other.status_code == 404 and "STSv1" not in other.text


def test_no_policy_is_served_when_mta_sts_is_off(server_factory: Callable[..., RunningServer]) -> None:
    server = server_factory(hostname=HOST, domains=(DOMAIN,))
    assert fetch(server, f"mta-sts.{DOMAIN}").status_code == 404


# --- postoffice dns ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dns_server() -> Iterator[ZoneServer]:
    with dns_zone_server() as server:
        yield server


def write_config(directory: Path, cert: Path, key: Path, mode: str) -> Path:
    config = directory / "postoffice.toml"
    config.write_text(
        f'hostname = "{HOST}"\ndomains = ["{DOMAIN}"]\ndata_dir = "{directory / "data"}"\n'
        f'[tls]\ncert = "{cert}"\nkey = "{key}"\n[mta_sts]\nmode = "{mode}"\nmx = ["{HOST}"]\n'
    )
    return config


def postoffice(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "postoffice", *args], capture_output=True, text=True, timeout=60, check=False
    )


def test_dns_prints_the_mta_sts_and_tlsa_records_and_checks_them(
    tmp_path: Path, dns_server: ZoneServer
) -> None:
    issued = trustme.CA().issue_cert(HOST)
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    issued.cert_chain_pems[0].write_to_path(str(cert))
    issued.private_key_pem.write_to_path(str(key))
    spki = (
        x509.load_pem_x509_certificate(cert.read_bytes())
        .public_key()
        .public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    )

    printed = postoffice("dns", DOMAIN, "--config", str(write_config(tmp_path, cert, key, "enforce")))
    assert printed.returncode == 0, printed.stderr
    zone = dns.zone.from_text(
        "$TTL 3600\n" + printed.stdout, origin=f"{DOMAIN}.", relativize=False, check_origin=False
    )
    served = f"version: STSv1\r\nmode: enforce\r\nmx: {HOST}\r\nmax_age: 604800\r\n"
    [sts] = zone.find_rdataset(f"_mta-sts.{DOMAIN}.", dns.rdatatype.TXT)
    assert b"".join(sts.strings).decode() == f"v=STSv1; id={policy_id(served)}"
    [alias] = zone.find_rdataset(f"mta-sts.{DOMAIN}.", dns.rdatatype.CNAME)
    assert alias.target.to_text() == f"{HOST}."
    [tlsa] = zone.find_rdataset(f"_25._tcp.{HOST}.", dns.rdatatype.TLSA)
    assert (tlsa.usage, tlsa.selector, tlsa.mtype, tlsa.cert) == (3, 1, 1, hashlib.sha256(spki).digest())
    assert "rollover" in printed.stdout

    # Published as printed: every record checks ok.
    fresh = dns_server.zone.__class__()
    dns_server.serve(fresh)
    for name, _, rdata in zone.iterate_rdatas():
        owner = name.to_text()
        if rdata.rdtype == dns.rdatatype.MX:
            fresh.mx(owner, rdata.preference, rdata.exchange.to_text())
        elif rdata.rdtype == dns.rdatatype.TXT:
            fresh.txt(owner, *rdata.strings)
        elif rdata.rdtype == dns.rdatatype.CNAME:
            fresh.cname(owner, rdata.target.to_text())
        elif rdata.rdtype == dns.rdatatype.TLSA:
            fresh.tlsa(owner, rdata.usage, rdata.selector, rdata.mtype, rdata.cert)
    fresh.a(HOST, "127.0.0.1")
    host, port = dns_server.address
    testing = write_config(tmp_path, cert, key, "enforce")
    checked = postoffice("dns", DOMAIN, "--check", "--config", str(testing), "--dns", f"{host}:{port}")
    ours = [line for line in checked.stdout.splitlines() if "MTA-STS" in line or "DANE TLSA" in line]
    assert len(ours) == 3 and all(line.startswith("ok ") for line in ours), checked.stdout

    # A new policy gets a new id, and the published record is then out of date.
    changed = postoffice(
        "dns",
        DOMAIN,
        "--check",
        "--config",
        str(write_config(tmp_path, cert, key, "testing")),
        "--dns",
        f"{host}:{port}",
    )
    [line] = [line for line in changed.stdout.splitlines() if "MTA-STS (_mta-sts" in line]
    assert "the policy changed since" in line
