"""DKIM test helpers: a TXT zone served by dnslib on loopback, dkimpy pointed at it, OpenDKIM's
``opendkim-testmsg`` run against it, and the published test vectors.

OpenDKIM resolves through the C library, which reads only ``/etc/resolv.conf`` and only ever
asks port 53. So :func:`opendkim_testmsg` runs it in a network and mount namespace of its own
(``unshare``, as root): a fresh loopback interface where the zone is served on 127.0.0.1:53,
and a ``resolv.conf`` naming it bind-mounted over the real one. Nothing outside the namespace
sees either; the machine's port 53 and resolver are never touched.

Run as a script (``python dkim_support.py ZONE.json -- COMMAND...``) it is that namespace's
inside: serve the zone on 127.0.0.1:53, run the command, exit with its status.
"""

from __future__ import annotations

import contextlib
import errno
import importlib.metadata
import io
import json
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dns.exception
import dns.resolver
from dnslib import QTYPE, RCODE, RR, TXT, DNSRecord
from dnslib.server import BaseResolver, DNSLogger, DNSServer

from postoffice.mailauth.dkim_dns import DnsTxtResolver

HERE = Path(__file__).resolve()


def txt_rdata(text: str) -> TXT:
    """One TXT record holding ``text`` in strings of at most 255 octets."""
    data = text.encode()
    return TXT([data[start : start + 255] for start in range(0, len(data), 255)] or [b""])


class TxtZone(BaseResolver):  # type: ignore[misc]
    """TXT records from a table a test fills; other names are NXDOMAIN."""

    def __init__(self, records: dict[str, list[str]] | None = None) -> None:
        self.records: dict[str, list[str]] = {}
        self.servfail: set[str] = set()
        self.silent: set[str] = set()  # answered too late: the client times out
        self.queries: list[str] = []
        self.reset(records or {})

    @staticmethod
    def _name(name: str) -> str:
        return name.lower().rstrip(".") + "."

    def reset(self, records: dict[str, list[str]]) -> None:
        """Serve ``records`` from now on, and forget the queries and failures so far."""
        self.records.clear()
        self.servfail.clear()
        self.silent.clear()
        self.queries.clear()
        for name, texts in records.items():
            for text in texts:
                self.add(name, text)

    def add(self, name: str, text: str) -> None:
        self.records.setdefault(self._name(name), []).append(text)

    def resolve(self, request: DNSRecord, handler: Any) -> DNSRecord:
        name = self._name(str(request.q.qname))
        self.queries.append(name)
        reply = request.reply()
        if name in self.silent:
            time.sleep(2)  # the answer comes after the client has given up
        if name in self.servfail or name in self.silent:
            reply.header.rcode = RCODE.SERVFAIL
        elif name not in self.records:
            reply.header.rcode = RCODE.NXDOMAIN
        elif request.q.qtype == QTYPE.TXT:
            for text in self.records[name]:
                reply.add_answer(RR(name, QTYPE.TXT, rdata=txt_rdata(text), ttl=60))
        return reply


@dataclass
class TxtDns:
    zone: TxtZone
    port: int
    servers: list[DNSServer] = field(default_factory=list)

    @property
    def address(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)

    def resolver(self, timeout: float = 2.0) -> DnsTxtResolver:
        """postoffice's own TXT resolver, asking this server."""
        return DnsTxtResolver(self.address, timeout=timeout)

    def dkimpy_dnsfunc(self) -> Any:
        """A ``dnsfunc`` for dkimpy that asks this server (dnspython, synchronous)."""
        resolver = dns.resolver.Resolver(configure=False)
        resolver.nameservers = [self.address[0]]
        resolver.port = self.port
        resolver.lifetime = 2.0

        def dnsfunc(name: bytes, timeout: float = 5) -> bytes | None:
            try:
                answer = resolver.resolve(name.decode(), "TXT")
            except dns.exception.DNSException:
                return None
            return b"".join(answer.rrset[0].strings)

        return dnsfunc


def _udp_and_tcp(zone: TxtZone, port: int, logger: DNSLogger) -> tuple[DNSServer, DNSServer]:
    """UDP and TCP servers on one port; with port 0, a free UDP port can be taken for TCP by
    another test running meanwhile, so another port is tried then."""
    for _ in range(20):
        udp = DNSServer(zone, address="127.0.0.1", port=port, logger=logger)
        try:
            tcp = DNSServer(
                zone, address="127.0.0.1", port=udp.server.server_address[1], logger=logger, tcp=True
            )
        except OSError as exc:
            udp.server.server_close()
            if port or exc.errno != errno.EADDRINUSE:
                raise
            continue
        udp.start_thread()
        tcp.start_thread()
        return udp, tcp
    raise OSError(errno.EADDRINUSE, "no port free for both UDP and TCP")


@contextlib.contextmanager
def txt_dns(records: dict[str, list[str]] | None = None, port: int = 0) -> Iterator[TxtDns]:
    """A dnslib server on 127.0.0.1 (UDP and TCP, ``port`` 0 for any free one)."""
    zone = TxtZone(records)
    quiet = DNSLogger(log="-request,-reply,-truncated,-data,-recv,-send,-error", prefix=False)
    udp, tcp = _udp_and_tcp(zone, port, quiet)
    port = udp.server.server_address[1]
    try:
        yield TxtDns(zone, port, [udp, tcp])
    finally:
        udp.stop()
        tcp.stop()


# --- OpenDKIM ----------------------------------------------------------------------------------


def opendkim_testmsg(
    message: bytes, workdir: Path, records: dict[str, list[str]] | None = None, *args: str
) -> subprocess.CompletedProcess[bytes]:
    """``opendkim-testmsg ARGS`` reading ``message``; with ``records`` (verifying) it runs in a
    private namespace whose only DNS server serves them (see the module docstring)."""
    command = ["opendkim-testmsg", *args]
    if records is not None:
        zone = workdir / "zone.json"
        zone.write_text(json.dumps(records))
        command = ["unshare", "--net", "--mount", sys.executable, str(HERE), str(zone), "--", *command]
    return subprocess.run(command, input=message, capture_output=True, timeout=60, check=False)


def _inside_namespace(zone_file: Path, command: list[str]) -> int:
    """In the fresh namespace: loopback up, resolv.conf replaced, the zone on port 53."""
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    resolv = zone_file.with_name("resolv.conf")
    resolv.write_text("nameserver 127.0.0.1\noptions timeout:2 attempts:1\n")
    subprocess.run(["mount", "--bind", str(resolv), "/etc/resolv.conf"], check=True)
    with txt_dns(json.loads(zone_file.read_text()), port=53):
        return subprocess.run(command, check=False).returncode


# --- published vectors -------------------------------------------------------------------------


def dkimpy_test_data(cache: Path) -> Path:
    """dkimpy's test data directory, from its source distribution on PyPI (the version that is
    installed), downloaded once into ``cache``. It carries RFC 6376 Appendix A's message and
    RFC 8463 Appendix A's signed example."""
    version = importlib.metadata.version("dkimpy")
    data = cache / f"dkimpy-{version}" / "dkim" / "tests" / "data"
    if data.is_dir():
        return data
    cache.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--quiet",
            "--no-deps",
            "--no-binary",
            ":all:",
            "--dest",
            str(cache),
            f"dkimpy=={version}",
        ],
        check=True,
        timeout=300,
    )
    with tarfile.open(cache / f"dkimpy-{version}.tar.gz") as archive:
        members = [member for member in archive.getmembers() if "/dkim/tests/data/" in member.name]
        archive.extractall(cache, members=members, filter="data")
    return data


if __name__ == "__main__":
    separator = sys.argv.index("--")
    sys.exit(_inside_namespace(Path(sys.argv[1]), sys.argv[separator + 1 :]))


# --- signing with the other implementations ----------------------------------------------------


def dkimpy_sign(message: bytes, key: Any, **options: Any) -> bytes:
    """A DKIM-Signature field made by dkimpy with ``key`` (a postoffice DkimKey)."""
    import dkim
    from cryptography.hazmat.primitives import serialization

    if key.algorithm == "rsa":
        private = key.private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
        algorithm = options.pop("signature_algorithm", b"rsa-sha256")
    else:
        import base64

        seed = key.private_key.private_bytes(
            serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
        )
        private = base64.b64encode(seed)
        algorithm = b"ed25519-sha256"
    options.setdefault("canonicalize", (b"relaxed", b"simple"))
    signature: bytes = dkim.sign(
        message, key.selector.encode(), key.domain.encode(), private, signature_algorithm=algorithm, **options
    )
    return signature


MILTER_SCRIPT = """
mt.set_timeout(20)
conn = mt.connect("inet:{port}@127.0.0.1", 80, 0.25)
if conn == nil then error "no connection to opendkim" end
if mt.conninfo(conn, "localhost", "127.0.0.1") ~= nil then error "conninfo" end
mt.macro(conn, SMFIC_MAIL, "i", "test-id")
if mt.mailfrom(conn, "sender@example.com") ~= nil then error "mailfrom" end
{headers}
if mt.eoh(conn) ~= nil then error "eoh" end
if mt.bodystring(conn, {body}) ~= nil then error "body" end
if mt.eom(conn) ~= nil then error "eom" end
print(mt.getheader(conn, "DKIM-Signature", 0))
mt.disconnect(conn)
"""


def _lua_string(data: bytes) -> str:
    return '"' + "".join(f"\\{byte:03d}" for byte in data) + '"'


def opendkim_milter_sign(message: bytes, key: Any, workdir: Path, port: int, canonicalization: str) -> bytes:
    """The DKIM-Signature field OpenDKIM's milter (``opendkim``, driven by ``miltertest``) puts
    on ``message`` (CRLF line endings) with ``key``: rsa-sha256 or ed25519-sha256."""
    from cryptography.hazmat.primitives import serialization

    from postoffice.mailauth.dkim_canon import read_header_section

    key_file = workdir / "opendkim.key"
    key_file.write_bytes(
        key.private_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    key_file.chmod(0o600)
    config = workdir / "opendkim.conf"
    config.write_text(
        f"Mode s\nDomain {key.domain}\nSelector {key.selector}\nKeyFile {key_file}\n"
        f"Canonicalization {canonicalization}\nSignatureAlgorithm {key.algorithm}-sha256\n"
        f"Socket inet:{port}@127.0.0.1\nPidFile {workdir / 'opendkim.pid'}\nSyslog no\nUserID root\n"
        "RequireSafeKeys no\n"  # pytest's tmp_path is under /tmp, which others may write
    )
    stream = io.BytesIO(message)
    headers = []
    for item in read_header_section(stream):
        name, _, value = item.raw.removesuffix(b"\r\n").partition(b":")
        value = value.removeprefix(b" ")
        headers.append(
            f"if mt.header(conn, {_lua_string(name)}, {_lua_string(value)}) ~= nil then error 'header' end"
        )
    script = workdir / "sign.lua"
    script.write_text(
        MILTER_SCRIPT.format(port=port, headers="\n".join(headers), body=_lua_string(stream.read()))
    )
    milter = subprocess.Popen(["opendkim", "-f", "-x", str(config)], stderr=subprocess.PIPE)
    try:
        result = subprocess.run(
            ["miltertest", "-s", str(script)], capture_output=True, timeout=60, check=False
        )
    finally:
        milter.kill()  # SIGTERM makes it wait seconds for connections long gone
        _, errors = milter.communicate(timeout=10)
    assert result.returncode == 0, (result.stderr, errors)
    value = result.stdout.rstrip(b"\n").replace(b"\n", b"\r\n")
    return b"DKIM-Signature:" + value + b"\r\n"
