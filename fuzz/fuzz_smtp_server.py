"""Coverage-guided fuzzing of the sans-I/O SMTP server core and the PROXY protocol parser.

Untrusted input seen here: every byte atheris generates, as if a client sent it.

The invariant is the one the Hypothesis tests in ``tests/test_smtp_fuzz.py`` check, over inputs
libFuzzer evolves towards new branches: whatever arrives, in whatever pieces, the core either
waits for more or answers with well-formed reply lines; it never raises, its state is always a
:class:`State`, and end of file always ends in exactly one ``Closing``. The PROXY header parser
must return a header, ask for more bytes, or raise :class:`ProxyProtocolError`, nothing else.

Run (see fuzz/README.md)::

    pip install atheris
    PYTHONPATH=src python fuzz/fuzz_smtp_server.py -max_total_time=600 fuzz/corpus
"""

from __future__ import annotations

import contextlib
import re
import sys

import atheris

with atheris.instrument_imports():
    from postoffice.net import proxy_protocol
    from postoffice.smtp import events as ev
    from postoffice.smtp import replies
    from postoffice.smtp.server import ServerConnection, ServerSettings
    from postoffice.smtp.state import State

REPLY_LINE = re.compile(rb"\d{3}[ -][^\r\n]*")
SETTINGS = (
    ServerSettings(hostname="mx.fuzz"),
    ServerSettings(
        hostname="mx.fuzz", max_message_size=40, max_recipients=2, text_line_limit=30, max_errors=6
    ),
    ServerSettings(hostname="mx.fuzz", auth_mechanisms=("PLAIN", "LOGIN"), dsn=True, starttls=True),
)


def _answer(event: ev.Event) -> replies.Reply | None:
    """The accept-everything application: every decision gets its positive reply."""
    if isinstance(event, ev.HelloReceived):
        return None  # answered through hello_reply below
    if isinstance(event, ev.MailReceived):
        return replies.SENDER_OK
    if isinstance(event, ev.RcptReceived):
        return replies.RECIPIENT_OK
    if isinstance(event, ev.DataReceived):
        return replies.START_MAIL_INPUT
    if isinstance(event, ev.ChunkReceived):
        return replies.chunk_received(event.size)
    if isinstance(event, ev.MessageComplete):
        return replies.queued("FUZZ")
    if isinstance(event, (ev.StartTlsRequested, ev.AuthRequested, ev.AuthResponse)):
        return replies.NOT_IMPLEMENTED
    return None


def _pump(conn: ServerConnection) -> list[ev.Event]:
    seen: list[ev.Event] = []
    for _ in range(100_000):
        event = conn.next_event()
        if isinstance(event, ev.NeedData):
            return seen
        seen.append(event)
        if isinstance(event, ev.HelloReceived):
            conn.send(conn.hello_reply(event))
        else:
            reply = _answer(event)
            if reply is not None:
                conn.send(reply)
        if isinstance(event, ev.Closing):
            return seen
    raise AssertionError("the core produced events without end")


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

    conn = ServerConnection(settings)
    conn.greet(replies.greeting(settings.hostname))
    output = bytearray(conn.data_to_send())
    events: list[ev.Event] = []
    while fdp.remaining_bytes():
        piece = fdp.ConsumeBytes(fdp.ConsumeIntInRange(1, 64))
        if not piece:
            break
        conn.receive_data(piece)
        events += _pump(conn)
        output += conn.data_to_send()
        assert isinstance(conn.state, State)
        if conn.state is State.CLOSED:
            break
    if conn.state is not State.CLOSED:
        conn.receive_data(b"")
        events += _pump(conn)
        output += conn.data_to_send()
    _check_output(bytes(output))
    assert conn.state is State.CLOSED
    assert sum(isinstance(e, ev.Closing) for e in events) == 1
    assert isinstance(events[-1], ev.Closing)


def main() -> None:
    atheris.Setup(sys.argv, fuzz_one)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
