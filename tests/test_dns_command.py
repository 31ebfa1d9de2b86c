"""``postoffice dns DOMAIN [--check]``: the records printed parse as a zone file and, published on
a real DNS server on loopback (dnslib), check as ok; each kind of mistake is named on its line."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import dns.rdatatype
import dns.zone
import pytest

from dns_zone import DnsZone, ZoneServer, dns_zone_server
from postoffice.mailauth import dkim_keys
from postoffice.mailauth.records import MailDomain, records_for, zone_data

DOMAIN = "example.test"
HOST = "mail.example.test"


@pytest.fixture(scope="module")
def dns_server() -> Iterator[ZoneServer]:
    with dns_zone_server() as server:
        yield server


@pytest.fixture
def zone(dns_server: ZoneServer) -> DnsZone:
    fresh = DnsZone()
    dns_server.serve(fresh)
    return fresh


def write_config(directory: Path, extra: str = "", hostname: str = HOST) -> Path:
    config = directory / "postoffice.toml"
    config.write_text(
        f'hostname = "{hostname}"\ndomains = ["{DOMAIN}", "other.test"]\n'
        f'data_dir = "{directory / "data"}"\n{extra}'
    )
    return config


@pytest.fixture
def config(tmp_path: Path) -> Path:
    dkim_keys.generate(tmp_path / "data", DOMAIN, "s1")
    return write_config(tmp_path)


def postoffice(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "postoffice", *args], capture_output=True, text=True, timeout=60, check=False
    )


def printed_zone(config: Path) -> dns.zone.Zone:
    result = postoffice("dns", DOMAIN, "--config", str(config))
    assert result.returncode == 0 and result.stderr == "", result.stderr
    # The lines carry no TTL: pasted into a zone file, they take its $TTL.
    return dns.zone.from_text(
        "$TTL 3600\n" + result.stdout, origin=f"{DOMAIN}.", relativize=False, check_origin=False
    )


def publish(zone: DnsZone, printed: dns.zone.Zone, *, leave_out: str = "") -> None:
    """Serve every printed record (but those at ``leave_out``), and the mail host's address."""
    for name, _, rdata in printed.iterate_rdatas():
        owner = name.to_text()
        if owner == leave_out:
            continue
        if rdata.rdtype == dns.rdatatype.MX:
            zone.mx(owner, rdata.preference, rdata.exchange.to_text())
        elif rdata.rdtype == dns.rdatatype.TXT:
            zone.txt(owner, *rdata.strings)
        else:
            zone.a(owner, rdata.address)
    zone.a(HOST, "127.0.0.1")


def check(config: Path, dns_server: ZoneServer, *extra: str) -> subprocess.CompletedProcess[str]:
    host, port = dns_server.address
    return postoffice("dns", DOMAIN, "--check", "--config", str(config), "--dns", f"{host}:{port}", *extra)


def line_for(output: str, name: str) -> str:
    lines = [line for line in output.splitlines() if f"({name} " in line]
    assert len(lines) == 1, output
    return lines[0]


def test_the_printed_records_parse_as_zone_file_lines(config: Path, tmp_path: Path) -> None:
    printed = printed_zone(config)
    key = dkim_keys.list_keys(tmp_path / "data").signing(DOMAIN)[0]
    records = {
        (name.to_text(), dns.rdatatype.to_text(rdata.rdtype)): rdata
        for name, _, rdata in printed.iterate_rdatas()
    }
    assert set(records) == {
        (f"{DOMAIN}.", "MX"),
        (f"{DOMAIN}.", "TXT"),
        (f"s1._domainkey.{DOMAIN}.", "TXT"),
        (f"_dmarc.{DOMAIN}.", "TXT"),
        (f"_smtp._tls.{DOMAIN}.", "TXT"),
    }
    assert records[(f"{DOMAIN}.", "MX")].exchange.to_text() == f"{HOST}."
    assert b"".join(records[(f"{DOMAIN}.", "TXT")].strings) == b"v=spf1 mx -all"
    dkim = records[(f"s1._domainkey.{DOMAIN}.", "TXT")].strings
    assert len(dkim) == 2 and all(len(piece) <= 255 for piece in dkim)  # RFC 1035 §3.3.14
    assert b"".join(dkim).decode() == key.record()
    dmarc = b"".join(records[(f"_dmarc.{DOMAIN}.", "TXT")].strings).decode()
    assert dmarc == f"v=DMARC1; p=quarantine; rua=mailto:postmaster@{DOMAIN}"
    tlsrpt = b"".join(records[(f"_smtp._tls.{DOMAIN}.", "TXT")].strings).decode()
    assert tlsrpt == f"v=TLSRPTv1; rua=mailto:postmaster@{DOMAIN}"  # RFC 8460 §3


def test_every_record_says_what_it_is_for_and_the_host_needs_addresses(config: Path) -> None:
    lines = postoffice("dns", DOMAIN, "--config", str(config)).stdout.splitlines()
    records = [index for index, line in enumerate(lines) if line and not line.startswith(";")]
    assert len(records) == 5
    assert all(lines[index - 1].startswith("; ") for index in records)
    assert f"; {HOST}. IN A <public IPv4 address>" in lines
    assert f"; {HOST}. IN AAAA <public IPv6 address>" in lines


def test_records_published_as_printed_check_ok(config: Path, zone: DnsZone, dns_server: ZoneServer) -> None:
    publish(zone, printed_zone(config))
    # No --dns: the configuration's [delivery] dns is the resolver.
    host, port = dns_server.address
    with config.open("a") as file:
        file.write(f'[delivery]\ndns = "{host}:{port}"\n')
    result = postoffice("dns", DOMAIN, "--check", "--config", str(config))
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 7 and all(line.startswith("ok ") for line in lines[:6]), result.stdout
    assert lines[-1] == "all 6 records are published"
    assert "127.0.0.1" in line_for(result.stdout, f"{HOST}.")
    assert (f"s1._domainkey.{DOMAIN}.", "TXT") in zone.queries


def test_a_missing_dkim_record_is_named(config: Path, zone: DnsZone, dns_server: ZoneServer) -> None:
    publish(zone, printed_zone(config), leave_out=f"s1._domainkey.{DOMAIN}.")
    result = check(config, dns_server)
    assert result.returncode == 1
    line = line_for(result.stdout, f"s1._domainkey.{DOMAIN}.")
    assert line.startswith("missing ") and "DKIM key s1" in line
    assert line_for(result.stdout, f"_dmarc.{DOMAIN}.").startswith("ok ")
    assert result.stdout.splitlines()[-1] == "1 of 6 records need attention"


def test_another_dkim_key_is_different(
    config: Path, tmp_path: Path, zone: DnsZone, dns_server: ZoneServer
) -> None:
    publish(zone, printed_zone(config), leave_out=f"s1._domainkey.{DOMAIN}.")
    other = dkim_keys.generate(tmp_path / "elsewhere", DOMAIN, "s1", "ed25519")
    zone.txt(f"s1._domainkey.{DOMAIN}", other.record())
    result = check(config, dns_server)
    assert result.returncode == 1
    assert line_for(result.stdout, f"s1._domainkey.{DOMAIN}.").startswith("different ")


def test_another_spf_record_is_different(config: Path, zone: DnsZone, dns_server: ZoneServer) -> None:
    publish(zone, printed_zone(config), leave_out=f"{DOMAIN}.")
    zone.mx(DOMAIN, 10, HOST)
    zone.txt(DOMAIN, "v=spf1 a -all")
    zone.txt(DOMAIN, "google-site-verification=abc")  # other TXT records are not SPF's business
    result = check(config, dns_server)
    assert result.returncode == 1
    spf = [line for line in result.stdout.splitlines() if line.startswith("different SPF ")]
    assert spf == [f'different SPF ({DOMAIN}. TXT): found "v=spf1 a -all"'], result.stdout


def test_two_spf_records_are_an_error(config: Path, zone: DnsZone, dns_server: ZoneServer) -> None:
    publish(zone, printed_zone(config))
    zone.txt(DOMAIN, "v=spf1 a -all")
    result = check(config, dns_server)
    assert result.returncode == 1
    spf = [line for line in result.stdout.splitlines() if " SPF " in line]
    assert len(spf) == 1 and spf[0].startswith("error ") and "2 SPF records" in spf[0], result.stdout


def test_an_mx_elsewhere_is_different(config: Path, zone: DnsZone, dns_server: ZoneServer) -> None:
    publish(zone, printed_zone(config), leave_out=f"{DOMAIN}.")
    zone.mx(DOMAIN, 10, "mx.provider.test")
    result = check(config, dns_server)
    mx = [line for line in result.stdout.splitlines() if line.startswith("different MX ")]
    assert mx == [f"different MX ({DOMAIN}. MX): found 10 mx.provider.test., none is {HOST}."]
    assert result.returncode == 1


def test_dmarc_p_none_is_ok_and_said(config: Path, zone: DnsZone, dns_server: ZoneServer) -> None:
    publish(zone, printed_zone(config), leave_out=f"_dmarc.{DOMAIN}.")
    zone.txt(f"_dmarc.{DOMAIN}", "v=DMARC1; p=none")
    result = check(config, dns_server)
    assert result.returncode == 0, result.stdout
    line = line_for(result.stdout, f"_dmarc.{DOMAIN}.")
    assert line.startswith("ok ") and "p=none" in line


def test_a_dmarc_record_without_a_policy_is_different(
    config: Path, zone: DnsZone, dns_server: ZoneServer
) -> None:
    publish(zone, printed_zone(config), leave_out=f"_dmarc.{DOMAIN}.")
    zone.txt(f"_dmarc.{DOMAIN}", "v=DMARC1; rua=mailto:postmaster@example.test")
    result = check(config, dns_server)
    assert result.returncode == 1
    assert line_for(result.stdout, f"_dmarc.{DOMAIN}.").startswith("different ")


def test_one_failing_name_is_an_error_on_its_line(
    config: Path, zone: DnsZone, dns_server: ZoneServer
) -> None:
    publish(zone, printed_zone(config))
    zone.rcode(f"_dmarc.{DOMAIN}", "SERVFAIL")
    result = check(config, dns_server)
    assert result.returncode == 1
    line = line_for(result.stdout, f"_dmarc.{DOMAIN}.")
    assert line.startswith("error ") and "SERVFAIL" in line
    assert f"ok        MX ({DOMAIN}. MX)" in result.stdout.splitlines()


def test_a_dns_server_that_does_not_answer_is_one_error_line(config: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))  # receives the queries, never answers
        port = silent.getsockname()[1]
        started = time.monotonic()
        result = postoffice(
            "dns", DOMAIN, "--check", "--config", str(config), "--dns", f"127.0.0.1:{port}", "--timeout", "1"
        )
        elapsed = time.monotonic() - started
    assert result.returncode == 1
    assert result.stdout == f"error: no answer from 127.0.0.1:{port} within 1 s; no record could be checked\n"
    assert elapsed < 10  # every record is looked up at once: about one timeout in all


def test_without_a_dkim_key_the_command_says_to_make_one(
    tmp_path: Path, zone: DnsZone, dns_server: ZoneServer
) -> None:
    config = write_config(tmp_path)
    printed = postoffice("dns", DOMAIN, "--config", str(config))
    assert printed.returncode == 0
    assert f'Run "postoffice dkim generate {DOMAIN}" first' in printed.stdout
    publish(zone, printed_zone(config))
    result = check(config, dns_server)
    assert result.returncode == 1
    line = line_for(result.stdout, f"SELECTOR._domainkey.{DOMAIN}.")
    assert line.startswith("missing ") and f"postoffice dkim generate {DOMAIN}" in line


def test_a_domain_that_is_not_local_is_refused_in_one_line(config: Path) -> None:
    result = postoffice("dns", "example.org", "--config", str(config))
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.count("\n") == 1
    assert "example.org is not a local domain" in result.stderr and "example.test" in result.stderr


def test_a_host_name_nobody_can_look_up_is_refused(tmp_path: Path) -> None:
    config = write_config(tmp_path, hostname="mailhost.localdomain")
    result = postoffice("dns", DOMAIN, "--config", str(config))
    assert result.returncode == 1 and result.stdout == ""
    assert "hostname" in result.stderr and "mailhost.localdomain" in result.stderr


def test_a_listener_on_a_public_address_gives_the_host_its_records(
    tmp_path: Path, zone: DnsZone, dns_server: ZoneServer
) -> None:
    # Only written in the configuration: nothing listens or connects there.
    listen = '[listen]\nsmtp = ["0.0.0.0:25", "203.0.114.7:25", "[2001:4860::25]:25"]\n'
    config = write_config(tmp_path, listen)
    dkim_keys.generate(tmp_path / "data", DOMAIN, "s1", "ed25519")
    printed = printed_zone(config)
    addresses = {rdata.address for _, _, rdata in printed.iterate_rdatas() if rdata.rdtype in (1, 28)}
    assert addresses == {"203.0.114.7", "2001:4860::25"}
    publish(zone, printed)
    result = check(config, dns_server)
    assert result.returncode == 0, result.stdout
    assert result.stdout.count(f"({HOST}. A") == 2


def test_txt_data_is_quoted_and_split_into_255_octet_strings() -> None:
    assert zone_data("TXT", 'a "b" \\c') == '"a \\"b\\" \\\\c"'
    assert zone_data("TXT", "x" * 300) == f'"{"x" * 255}" "{"x" * 45}"'
    assert zone_data("MX", "10 mail.example.test.") == "10 mail.example.test."


def test_a_relay_host_is_named_beside_the_spf_record() -> None:
    records = records_for(MailDomain(DOMAIN, HOST, relay_host="smtp.provider.test"))
    spf = next(record for record in records if record.purpose == "SPF")
    assert spf.data == "v=spf1 mx -all"
    assert any("relay smtp.provider.test" in comment for comment in spf.comments)


def test_a_key_file_of_the_domain_that_cannot_be_read_is_reported(config: Path, tmp_path: Path) -> None:
    broken = tmp_path / "data" / "dkim" / DOMAIN / "s2.key"
    broken.write_text("not a key\n")
    result = postoffice("dns", DOMAIN, "--config", str(config))
    assert result.returncode == 0
    assert result.stderr.startswith(f"postoffice: {broken}: skipped:") and result.stderr.count("\n") == 1
    assert f"s1._domainkey.{DOMAIN}. IN TXT" in result.stdout


def test_a_timeout_out_of_range_is_refused(config: Path) -> None:
    result = postoffice("dns", DOMAIN, "--check", "--config", str(config), "--timeout", "0")
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr == "postoffice: --timeout: 0: give more than 0 and at most 60 seconds\n"


def test_the_tls_reporting_address_is_configurable(config: Path) -> None:
    with config.open("a") as file:
        file.write('[tls_reporting]\nrua = "tls-reports@other.test"\n')
    records = {
        name.to_text(): b"".join(rdata.strings).decode()
        for name, _, rdata in printed_zone(config).iterate_rdatas()
        if rdata.rdtype == dns.rdatatype.TXT
    }
    assert records[f"_smtp._tls.{DOMAIN}."] == "v=TLSRPTv1; rua=mailto:tls-reports@other.test"


def test_a_tls_reporting_record_elsewhere_is_different_and_two_are_an_error(
    config: Path, zone: DnsZone, dns_server: ZoneServer
) -> None:
    name = f"_smtp._tls.{DOMAIN}."
    publish(zone, printed_zone(config), leave_out=name)
    zone.txt(name, "v=TLSRPTv1; rua=mailto:someone@elsewhere.test")
    result = check(config, dns_server)
    assert result.returncode != 0
    assert line_for(result.stdout, name).startswith("different"), result.stdout

    zone.txt(name, "v=TLSRPTv1; rua=mailto:postmaster@example.test")
    assert line_for(check(config, dns_server).stdout, name).startswith("error")


def test_a_missing_tls_reporting_record_is_named(config: Path, zone: DnsZone, dns_server: ZoneServer) -> None:
    name = f"_smtp._tls.{DOMAIN}."
    publish(zone, printed_zone(config), leave_out=name)
    line = line_for(check(config, dns_server).stdout, name)
    assert line.startswith("missing") and "v=TLSRPTv1" in line
