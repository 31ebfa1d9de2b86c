"""Log output: lines logged on the event loop are held a moment and written together."""

from __future__ import annotations

import asyncio
import io
import logging
import select
import signal
import smtplib
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from conftest import ServerProcess, wait_until
from postoffice.logs import FLUSH_DELAY, MAX_HELD, BatchingStreamHandler, TextFormatter, configure


@pytest.fixture
def logged() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    stream = io.StringIO()
    handler = BatchingStreamHandler(stream)
    handler.setFormatter(TextFormatter())
    logger = logging.getLogger("postoffice.test-logs")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    yield logger, stream
    logger.removeHandler(handler)
    handler.close()


def events(stream: io.StringIO) -> list[str]:
    """The last ``key=value`` of each line written so far."""
    return [line.split()[-1] for line in stream.getvalue().splitlines()]


async def test_lines_on_the_loop_are_written_together_once_the_delay_has_passed(
    logged: tuple[logging.Logger, io.StringIO], monkeypatch: pytest.MonkeyPatch
) -> None:
    logger, stream = logged
    writes: list[str] = []
    original = stream.write
    monkeypatch.setattr(stream, "write", lambda text: (writes.append(text), original(text))[1])
    logger.info("event=one")
    for _ in range(3):
        await asyncio.sleep(0)  # loop passes: the lines of later ones join the same write
    logger.info("event=two")
    assert events(stream) == []
    await asyncio.sleep(FLUSH_DELAY + 0.05)
    assert events(stream) == ["event=one", "event=two"] and len(writes) == 1


async def test_many_held_lines_are_written_without_waiting(
    logged: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, stream = logged
    for n in range(MAX_HELD):
        logger.info("event=line%d", n)
    assert len(events(stream)) == MAX_HELD


def test_lines_held_by_a_loop_that_stopped_go_out_with_the_next_loops(
    logged: tuple[logging.Logger, io.StringIO],
) -> None:
    # The first loop ends before its write is due; the second must not take the held lines
    # for its own pending write and leave them (and its own) unwritten.
    logger, stream = logged

    async def log_and_return(event: str) -> None:
        logger.info(event)

    asyncio.run(log_and_return("event=first"))

    async def log_and_wait(event: str) -> None:
        logger.info(event)
        await asyncio.sleep(FLUSH_DELAY + 0.05)

    asyncio.run(log_and_wait("event=second"))
    assert events(stream) == ["event=first", "event=second"]


async def test_a_warning_writes_what_is_held_at_once_and_in_order(
    logged: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, stream = logged
    for level, event in ((logging.INFO, "event=first"), (logging.WARNING, "event=second")):
        logger.log(level, event)
    assert events(stream) == ["event=first", "event=second"]


def test_lines_outside_a_loop_are_written_at_once(logged: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = logged
    logger.info("event=main")
    thread = threading.Thread(target=logger.info, args=("event=thread",))
    thread.start()
    thread.join()
    assert events(stream) == ["event=main", "event=thread"]


async def test_a_line_from_another_thread_writes_the_held_lines_first(
    logged: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, stream = logged
    logger.info("event=loop")  # held for the loop's write
    thread = threading.Thread(target=logger.info, args=("event=thread",))
    thread.start()
    thread.join()
    assert events(stream) == ["event=loop", "event=thread"]


async def test_a_long_batch_is_written_in_whole_lines_of_at_most_pipe_buf_octets(
    logged: tuple[logging.Logger, io.StringIO], monkeypatch: pytest.MonkeyPatch
) -> None:
    logger, stream = logged
    writes: list[str] = []
    original = stream.write
    monkeypatch.setattr(stream, "write", lambda text: (writes.append(text), original(text))[1])
    for n in range(200):
        logger.info("event=line%03d padding=%s", n, "x" * 40)
    await asyncio.sleep(FLUSH_DELAY + 0.05)
    assert len(writes) > 1 and all(len(text) <= select.PIPE_BUF and text.endswith("\n") for text in writes)
    assert [line.split()[-2] for line in stream.getvalue().splitlines()] == [
        f"event=line{n:03d}" for n in range(200)
    ]


class Keeping(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def configured(tmp_path: Path) -> Iterator[Path]:
    """``logs.configure`` writing to a file; the logging module's globals restored after."""
    saved = (logging._srcfile, logging.logThreads, logging.logProcesses, logging.logMultiprocessing)
    root = logging.getLogger("postoffice")
    handlers, level = list(root.handlers), root.level
    path = tmp_path / "server.log"
    configure(log_file=path)
    yield path
    for handler in root.handlers:
        if handler not in handlers:
            root.removeHandler(handler)
            handler.close()
    root.setLevel(level)
    logging._srcfile, logging.logThreads, logging.logProcesses, logging.logMultiprocessing = saved


def test_records_skip_the_caller_lookup_and_still_carry_tracebacks(configured: Path) -> None:
    # The caller lookup walks the stack for every record; the log lines never print it.
    keep = Keeping()
    logger = logging.getLogger("postoffice.test-callers")
    logger.addHandler(keep)
    try:
        try:
            raise ValueError("boom")
        except ValueError:
            logger.exception("event=failed")
    finally:
        logger.removeHandler(keep)
    assert [record.funcName for record in keep.records] == ["(unknown function)"]
    logging.getLogger("postoffice").handlers[-1].flush()
    (line,) = configured.read_text(encoding="utf-8").splitlines()
    assert "ERROR postoffice.test-callers event=failed exception=" in line
    assert "ValueError: boom" in line


@pytest.mark.parametrize(
    ("message", "args"),
    [
        ("session=%s event=mail from=<%s> size=%s", ("00002A", "a@example.test", None)),
        ("event=one arg=%s", ("lone",)),  # a lone argument takes LogRecord's own way (Mapping check)
        ("event=none", ()),
        ("event=mapping %(key)s", ({"key": "value"},)),
    ],
)
def test_the_slim_record_has_every_attribute_logrecord_gives(message: str, args: tuple[object, ...]) -> None:
    configure()  # installs the record factory, and turns off caller, thread and process lookups
    factory = logging.getLogRecordFactory()
    made = factory("postoffice.smtp", logging.INFO, "(unknown file)", 0, message, args, None, None, None)
    reference = logging.LogRecord("postoffice.smtp", logging.INFO, "(unknown file)", 0, message, args, None)
    assert made.getMessage() == reference.getMessage()
    times = {"created", "msecs", "relativeCreated"}
    assert {k: v for k, v in vars(made).items() if k not in times} == {
        k: v for k, v in vars(reference).items() if k not in times
    }
    assert abs(made.created - reference.created) < 1.0
    assert abs(made.relativeCreated - reference.relativeCreated) < 1000.0
    assert TextFormatter().format(made).endswith(f"INFO postoffice.smtp {reference.getMessage()}")


def _send(port: int) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        client.sendmail("a@client.test", ["bob@mx.test"], b"Subject: logs\r\n\r\nhello\r\n")


def test_a_real_server_writes_held_lines_soon_and_all_of_them_before_it_exits(
    server_process: Callable[..., ServerProcess],
) -> None:
    running = server_process("--no-http")
    _send(running.port)
    # Running: the lines come out once the delay has passed, with nothing else happening.
    wait_until(lambda: any("event=disconnect" in line for line in running.output), 10, "the lines")
    # Stopped right after a session, while its lines are held: every one is written before exit.
    _send(running.port)
    assert running.terminate(signal.SIGTERM) == 0
    lines = [line for line in running.output if " INFO postoffice." in line]
    for event in ("event=connect", "event=mail", "event=queued", "event=disconnect", "status=delivered"):
        assert sum(event in line for line in lines) == 2, event
    sessions = [line.split("session=")[1].split()[0] for line in lines if "event=connect" in line]
    for session in sessions:  # in order within each session
        of_session = [line.split("event=")[1].split()[0] for line in lines if f"session={session} " in line]
        assert of_session == ["connect", "mail", "queued", "disconnect"]
