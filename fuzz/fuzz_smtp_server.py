"""Coverage-guided fuzzing of the SMTP server: the sans-I/O core with the transaction layer over
it (``postoffice.smtpd``), and the PROXY protocol parser.

Untrusted input seen here: every byte atheris generates, as if a client sent it.

The invariant is the one the Hypothesis tests in ``tests/test_smtp_fuzz.py`` check, over inputs
libFuzzer evolves towards new branches: whatever arrives, in whatever pieces, the conversation
either waits for more or answers with well-formed reply lines; nothing raises, the core's state
is always a :class:`State`, end of file always ends the session, every ``250 queued as`` has its
stored message and every message opened is stored or discarded. The conversation runs with the
standard stages (policy in capture mode, the junk-command limit, the Received: field, the login
throttle), AUTH that accepts ``user``/``pw``, and an in-memory store (``tests/smtpd_pair.py``),
so commands reach the stages and content reaches the writer. The PROXY header parser must return
a header, ask for more bytes, or raise :class:`ProxyProtocolError`, nothing else.

Run (see fuzz/README.md)::

    pip install atheris
    PYTHONPATH=src python fuzz/fuzz_smtp_server.py -max_total_time=600 fuzz/corpus
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import sys
from pathlib import Path

import atheris

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

with atheris.instrument_imports():
    from postoffice.net import proxy_protocol
    from postoffice.smtp.server import ServerSettings
    from postoffice.smtp.state import State
    from smtpd_pair import MemoryStore, SmtpdSession, fuzz_services

REPLY_LINE = re.compile(rb"\d{3}[ -][^\r\n]*")
QUEUED = re.compile(rb"^250 .*queued as", re.MULTILINE)
SETTINGS = (
    ServerSettings(hostname="mx.fuzz"),
    ServerSettings(
        hostname="mx.fuzz", max_message_size=40, max_recipients=2, text_line_limit=30, max_errors=6
    ),
    ServerSettings(hostname="mx.fuzz", auth_mechanisms=("PLAIN", "LOGIN"), dsn=True, starttls=True),
)
# One event loop for every input: the conversation's waits (the commit, the password check)
# run on it as they would in the server.
LOOP = asyncio.new_event_loop()


def _check_output(output: bytes) -> None:
    assert output == b"" or output.endswith(b"\r\n"), output[-80:]
    for line in output.split(b"\r\n")[:-1]:
        assert REPLY_LINE.fullmatch(line), line[:80]
        assert len(line) + 2 <= 512, line[:80]


def fuzz_one(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    settings = SETTINGS[fdp.ConsumeIntInRange(0, len(SETTINGS) - 1)]
    header_length = fdp.ConsumeIntInRange(0, 300)
    header = fdp.ConsumeBytes(header_length)
    with contextlib.suppress(proxy_protocol.ProxyProtocolError):
        proxy_protocol.parse(header)

    store = MemoryStore()
    session = SmtpdSession(fuzz_services(store), settings, loop=LOOP)
    try:
        while fdp.remaining_bytes() and session.closed is None:
            piece = fdp.ConsumeBytes(fdp.ConsumeIntInRange(1, 64))
            if not piece:
                break
            session.feed(piece)
            assert isinstance(session.conversation.state, State)
        if session.closed is None:
            session.feed(b"")
    finally:
        session.close()
    output = bytes(session.transcript)
    _check_output(output)
    assert session.closed is not None and session.conversation.state is State.CLOSED
    assert len(QUEUED.findall(output)) == len(store.messages)
    assert store.all_ended


def main() -> None:
    atheris.Setup(sys.argv, fuzz_one)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
