"""Log output: lines logged on the event loop are written once the loop has run what is ready."""

from __future__ import annotations

import asyncio
import io
import logging
import select
import threading
from collections.abc import Iterator

import pytest

from postoffice.logs import BatchingStreamHandler, TextFormatter


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


async def test_lines_on_the_loop_are_written_together_after_the_ready_callbacks(
    logged: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, stream = logged
    logger.info("event=one")
    logger.info("event=two")
    assert events(stream) == []
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert events(stream) == ["event=one", "event=two"]


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


async def test_a_long_batch_is_written_in_whole_lines_of_at_most_pipe_buf_octets(
    logged: tuple[logging.Logger, io.StringIO], monkeypatch: pytest.MonkeyPatch
) -> None:
    logger, stream = logged
    writes: list[str] = []
    original = stream.write
    monkeypatch.setattr(stream, "write", lambda text: (writes.append(text), original(text))[1])
    for n in range(200):
        logger.info("event=line%03d padding=%s", n, "x" * 40)
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert len(writes) > 1 and all(len(text) <= select.PIPE_BUF and text.endswith("\n") for text in writes)
    assert [line.split()[-2] for line in stream.getvalue().splitlines()] == [
        f"event=line{n:03d}" for n in range(200)
    ]
