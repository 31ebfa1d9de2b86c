"""TLS reporting (RFC 8460): the counts (durable, shared by processes), the daily report (its
JSON against §4.4's shape, gzip, the §5.1 file name), the message (§5.3 structure, DKIM
signature checked by dkimpy), the rua lookup through a DNS server on loopback, the https: POST,
and ``postoffice tlsrpt send``."""

from __future__ import annotations

import email
import email.policy
import gzip
import json
import multiprocessing
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any, ClassVar

import dkim
import pytest
import trustme

from dkim_support import txt_dns
from dns_zone import DnsZone, ZoneServer, dns_zone_server
from postoffice.delivery.tlsrpt import (
    CERTIFICATE_EXPIRED,
    CERTIFICATE_HOST_MISMATCH,
    CERTIFICATE_NOT_TRUSTED,
    STARTTLS_NOT_SUPPORTED,
    VALIDATION_FAILURE,
    TlsPolicy,
    TlsReportStore,
    classify_tls_error,
    day_of,
)
from postoffice.mailauth import dkim_keys
from postoffice.mailauth.dkim_signer import Signer
from postoffice.mailauth.tlsrpt_record import TlsRptRecordError, choose_record, parse_record
from postoffice.spool.envelope import Route
from postoffice.spool.files import FileSpool
from postoffice.tlsrpt.report import build_report, file_name
from postoffice.tlsrpt.sender import Reporter, ReportSender
from postoffice.tlsrpt.setup import host_signer

HOST = "mx.sender.test"
DOMAIN = "receiver.test"
YESTERDAY = time.time() - 86400
DAY = day_of(YESTERDAY)
STS = TlsPolicy("sts", ("version: STSv1", "mode: enforce", "mx: *.receiver.test"), ("*.receiver.test",))


@pytest.fixture
def store(tmp_path: Path) -> Iterator[TlsReportStore]:
    opened = TlsReportStore(tmp_path / "data")
    yield opened
    opened.close()


@pytest.fixture(scope="module")
def dns_server() -> Iterator[ZoneServer]:
    with dns_zone_server() as server:
        yield server


@pytest.fixture
def zone(dns_server: ZoneServer) -> DnsZone:
    fresh = DnsZone()
    dns_server.serve(fresh)
    return fresh


def fill(store: TlsReportStore, at: float = YESTERDAY) -> None:
    for _ in range(3):
        store.record_success(DOMAIN, at=at)
    store.record_failure(DOMAIN, TlsPolicy(), STARTTLS_NOT_SUPPORTED, "192.0.2.1", "mx1.receiver.test", at=at)
    store.record_success(DOMAIN, STS, at=at)
    for _ in range(2):
        store.record_failure(
            DOMAIN, STS, CERTIFICATE_EXPIRED, "192.0.2.1", "mx2.receiver.test", "198.51.100.7", at=at
        )


# --- the counts -------------------------------------------------------------------------------


def test_counts_survive_a_restart(tmp_path: Path) -> None:
    first = TlsReportStore(tmp_path)
    fill(first)
    first.close()
    again = TlsReportStore(tmp_path)
    counts = {(c.policy.type, c.result_type): c.count for c in again.counts(DAY, DOMAIN)}
    again.close()
    assert counts == {
        ("no-policy-found", ""): 3,
        ("no-policy-found", STARTTLS_NOT_SUPPORTED): 1,
        ("sts", ""): 1,
        ("sts", CERTIFICATE_EXPIRED): 2,
    }


def _record_many(directory: str, count: int) -> None:
    store = TlsReportStore(Path(directory))
    for _ in range(count):
        store.record_success(DOMAIN)
        store.record_failure(DOMAIN, TlsPolicy(), STARTTLS_NOT_SUPPORTED, "192.0.2.1", "mx.receiver.test")
    store.close()


def test_several_processes_count_into_one_database_without_losing_any(tmp_path: Path) -> None:
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_record_many, args=(str(tmp_path), 100)) for _ in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
        assert worker.exitcode == 0
    store = TlsReportStore(tmp_path)
    counts = {c.result_type: c.count for c in store.counts(day_of(time.time()), DOMAIN)}
    store.close()
    assert counts == {"": 400, STARTTLS_NOT_SUPPORTED: 400}


def test_only_rfc_8460_types_are_recorded(store: TlsReportStore) -> None:
    with pytest.raises(ValueError, match="result type"):
        store.record_failure(DOMAIN, TlsPolicy(), "it-broke", "192.0.2.1", "mx.receiver.test")
    with pytest.raises(ValueError, match="policy type"):
        store.record_success(DOMAIN, TlsPolicy("dane"))


def test_a_day_is_claimed_once_and_only_finished_days_are_pending(store: TlsReportStore) -> None:
    fill(store)
    store.record_success(DOMAIN)  # today: not finished
    today = day_of(time.time())
    assert store.pending(today) == [(DAY, DOMAIN)]
    assert store.claim(DAY, DOMAIN) and not store.claim(DAY, DOMAIN)
    assert store.pending(today) == []
    store.release(DAY, DOMAIN)
    assert store.pending(today) == [(DAY, DOMAIN)]


def test_tls_errors_are_classified_as_rfc_8460_result_types() -> None:
    refused = "the server's certificate was not accepted: "
    assert classify_tls_error("", offered=False) == STARTTLS_NOT_SUPPORTED
    assert classify_tls_error(
        refused + "Hostname mismatch, certificate is not valid for 'x'.", offered=True
    ) == (CERTIFICATE_HOST_MISMATCH)
    assert classify_tls_error(refused + "certificate has expired", offered=True) == CERTIFICATE_EXPIRED
    assert classify_tls_error(refused + "self-signed certificate", offered=True) == CERTIFICATE_NOT_TRUSTED
    assert classify_tls_error("TLS failed: WRONG_VERSION_NUMBER", offered=True) == VALIDATION_FAILURE


# --- the record -------------------------------------------------------------------------------


def test_the_record_gives_mailto_and_https_uris() -> None:
    record = parse_record(
        "v=TLSRPTv1 ; rua=mailto:tls%2Breports@receiver.test?subject=x, https://r.test/tlsrpt"
    )
    assert record.mailto == ("tls+reports@receiver.test",)
    assert record.https == ("https://r.test/tlsrpt",)
    assert choose_record(["v=spf1 -all"]) is None
    assert choose_record(["v=TLSRPTv1; rua=mailto:a@b.test"] * 2) is None  # §3: not one record
    with pytest.raises(TlsRptRecordError, match="no rua"):
        parse_record("v=TLSRPTv1; ruf=mailto:a@b.test")
    with pytest.raises(TlsRptRecordError, match="no mailto: or https:"):
        parse_record("v=TLSRPTv1; rua=ftp://b.test")
    with pytest.raises(TlsRptRecordError, match="v=TLSRPTv1"):
        parse_record("v=tlsrptv1; rua=mailto:a@b.test")  # the version is case-sensitive


# --- the report -------------------------------------------------------------------------------


def test_the_report_has_rfc_8460_shape(store: TlsReportStore) -> None:
    fill(store)
    report = build_report(
        DAY,
        DOMAIN,
        store.counts(DAY, DOMAIN),
        organization="Sender Org",
        contact="pm@sender.test",
        report_id="r1",
    )
    assert set(report) == {"organization-name", "date-range", "contact-info", "report-id", "policies"}
    assert report["date-range"] == {"start-datetime": f"{DAY}T00:00:00Z", "end-datetime": f"{DAY}T23:59:59Z"}
    by_type = {entry["policy"]["policy-type"]: entry for entry in report["policies"]}
    none = by_type["no-policy-found"]
    assert none["policy"] == {"policy-type": "no-policy-found", "policy-domain": DOMAIN}
    assert none["summary"] == {"total-successful-session-count": 3, "total-failure-session-count": 1}
    assert none["failure-details"] == [
        {
            "result-type": "starttls-not-supported",
            "sending-mta-ip": "192.0.2.1",
            "receiving-mx-hostname": "mx1.receiver.test",
            "failed-session-count": 1,
        }
    ]
    sts = by_type["sts"]
    assert sts["policy"]["policy-string"] == list(STS.strings)
    assert sts["policy"]["mx-host"] == ["*.receiver.test"]
    assert sts["summary"] == {"total-successful-session-count": 1, "total-failure-session-count": 2}
    assert sts["failure-details"][0]["receiving-ip"] == "198.51.100.7"


def test_the_file_name_follows_section_5_1() -> None:
    name = file_name(HOST, DOMAIN, "2026-12-05", "abc")
    sender, domain, begin, end, rest = name.split("!")
    assert (sender, domain, rest) == (HOST, DOMAIN, "abc.json.gz")
    assert int(end) - int(begin) == 86399 and time.gmtime(int(begin))[:3] == (2026, 12, 5)


# --- sending ----------------------------------------------------------------------------------


def sender_for(
    store: TlsReportStore, spool: FileSpool, dns_server: ZoneServer, **options: Any
) -> ReportSender:
    reporter = Reporter(HOST, "Sender Org", "postmaster@sender.test")
    return ReportSender(store, spool, dns_server.resolver(), reporter, **options)


def queued_content(spool: FileSpool, queue_id: str) -> bytes:
    with spool.open(queue_id) as content:
        return content.read()


async def test_a_report_is_queued_to_the_rua_signed_and_shaped_as_section_5_3(
    store: TlsReportStore, tmp_path: Path, zone: DnsZone, dns_server: ZoneServer
) -> None:
    fill(store)
    zone.txt(f"_smtp._tls.{DOMAIN}", "v=TLSRPTv1; rua=mailto:reports@receiver.test")
    key = dkim_keys.generate(tmp_path / "data", "sender.test", "s1")
    signer = Signer(tmp_path / "data", ("sender.test",), enabled=True)
    spool = FileSpool(tmp_path / "spool")
    sender = sender_for(store, spool, dns_server, sign=host_signer(signer, HOST))

    [sent] = await sender.send_due()
    assert await sender.send_due() == []  # once a day, once
    assert (f"_smtp._tls.{DOMAIN}.", "TXT") in zone.queries
    assert sent.queued is not None
    envelope = sent.queued.envelope
    assert envelope.mail_from == "" and [r.address for r in envelope.recipients] == ["reports@receiver.test"]
    content = queued_content(spool, sent.queued.queue_id)

    message = email.message_from_bytes(content, policy=email.policy.default)
    assert message["TLS-Report-Domain"] == DOMAIN and message["TLS-Report-Submitter"] == HOST
    assert message.get_content_type() == "multipart/report"
    assert message.get_param("report-type") == "tlsrpt"
    assert f"Report Domain: {DOMAIN} Submitter: {HOST}" in message["Subject"]
    text, attachment = message.iter_parts()
    assert text.get_content_type() == "text/plain"
    assert attachment.get_content_type() == "application/tlsrpt+gzip"
    name = attachment.get_filename()
    assert name.startswith(f"{HOST}!{DOMAIN}!") and name.endswith(".json.gz")
    report = json.loads(gzip.decompress(attachment.get_content()))
    assert report["organization-name"] == "Sender Org" and report["contact-info"] == "postmaster@sender.test"
    assert sum(p["summary"]["total-failure-session-count"] for p in report["policies"]) == 3

    with txt_dns({key.record_name: [key.record()]}) as keys_dns:
        assert dkim.verify(content, dnsfunc=keys_dns.dkimpy_dnsfunc())
        assert not dkim.verify(
            content.replace(b"an aggregate TLS report", b"a forged TLS report"),
            dnsfunc=keys_dns.dkimpy_dnsfunc(),
        )
    signed = message["DKIM-Signature"].replace(" ", "").replace("\r\n", "").replace("\t", "").lower()
    assert "tls-report-domain" in signed and "d=sender.test" in signed


async def test_a_domain_without_a_record_gets_no_report(
    store: TlsReportStore, tmp_path: Path, zone: DnsZone, dns_server: ZoneServer
) -> None:
    fill(store)
    spool = FileSpool(tmp_path / "spool")
    assert await sender_for(store, spool, dns_server).send_due() == []
    assert list(spool.pending()) == []
    assert store.pending(day_of(time.time())) == []  # asked once: the day is done for it


async def test_a_dns_failure_leaves_the_day_for_the_next_round(
    store: TlsReportStore, tmp_path: Path, zone: DnsZone, dns_server: ZoneServer
) -> None:
    fill(store)
    zone.rcode(f"_smtp._tls.{DOMAIN}", "SERVFAIL")
    spool = FileSpool(tmp_path / "spool")
    assert await sender_for(store, spool, dns_server).send_due() == []
    assert store.pending(day_of(time.time())) == [(DAY, DOMAIN)]


class _Collector(BaseHTTPRequestHandler):
    bodies: ClassVar[list[tuple[str, bytes]]] = []

    def do_POST(self) -> None:
        length = int(self.headers["Content-Length"])
        _Collector.bodies.append((self.headers["Content-Type"], self.rfile.read(length)))
        self.send_response(201)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


async def test_an_https_rua_gets_the_gzip_by_post(
    store: TlsReportStore, tmp_path: Path, zone: DnsZone, dns_server: ZoneServer
) -> None:
    ca = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(context)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    server = HTTPServer(("127.0.0.1", 0), _Collector)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _Collector.bodies.clear()
    try:
        fill(store)
        url = f"https://localhost:{server.server_address[1]}/v1/tlsrpt"
        zone.txt(f"_smtp._tls.{DOMAIN}", f"v=TLSRPTv1; rua={url}")
        spool = FileSpool(tmp_path / "spool")
        [sent] = await sender_for(store, spool, dns_server, ca_file=ca_file).send_due()
    finally:
        server.shutdown()
        server.server_close()
    assert sent.posted == (url,) and sent.queued is None
    [(kind, body)] = _Collector.bodies
    assert kind == "application/tlsrpt+gzip"
    assert json.loads(gzip.decompress(body))["policies"][0]["policy"]["policy-domain"] == DOMAIN


def test_the_send_command_queues_the_reports(tmp_path: Path, zone: DnsZone, dns_server: ZoneServer) -> None:
    data = tmp_path / "data"
    fill_store = TlsReportStore(data)
    fill(fill_store)
    fill_store.close()
    zone.txt(f"_smtp._tls.{DOMAIN}", "v=TLSRPTv1; rua=mailto:reports@receiver.test")
    config = tmp_path / "postoffice.toml"
    config.write_text(f'hostname = "{HOST}"\ndomains = ["sender.test"]\ndata_dir = "{data}"\n')
    host, port = dns_server.address
    command = [sys.executable, "-m", "postoffice", "tlsrpt", "send", "--config", str(config)]
    result = subprocess.run([*command, "--dns", f"{host}:{port}"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"{DAY} {DOMAIN}: queued as ")
    queue_id = result.stdout.split()[-1]
    spool = FileSpool(data / "spool", clean_tmp=False)
    assert b"TLS-Report-Domain: receiver.test" in queued_content(spool, queue_id)
    again = subprocess.run([*command, "--dns", f"{host}:{port}"], capture_output=True, text=True, timeout=60)
    assert again.stdout == "no reports to send\n"


def test_the_send_command_delivers_a_report_for_a_local_address_locally(
    tmp_path: Path, zone: DnsZone, dns_server: ZoneServer
) -> None:
    data = tmp_path / "data"
    fill_store = TlsReportStore(data)
    fill(fill_store)
    fill_store.close()
    zone.txt(f"_smtp._tls.{DOMAIN}", "v=TLSRPTv1; rua=mailto:postmaster@sender.test")
    config = tmp_path / "postoffice.toml"
    config.write_text(f'hostname = "{HOST}"\ndomains = ["sender.test"]\ndata_dir = "{data}"\n')
    host, port = dns_server.address
    command = [sys.executable, "-m", "postoffice", "tlsrpt", "send", "--config", str(config)]
    result = subprocess.run([*command, "--dns", f"{host}:{port}"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    queued = FileSpool(data / "spool", clean_tmp=False).load(result.stdout.split()[-1])
    assert [(r.address, r.route) for r in queued.envelope.recipients] == [
        ("postmaster@sender.test", Route.LOCAL)
    ]


def test_a_strangers_record_cannot_make_us_mail_the_world() -> None:
    many = ",".join(f"mailto:r{index}@receiver.test" for index in range(50))
    record = parse_record(f"v=TLSRPTv1; rua={many},mailto:jos%C3%A9@receiver.test")
    assert len(record.mailto) == 10 and all(address.isascii() for address in record.mailto)
