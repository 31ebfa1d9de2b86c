"""Log output: one line per event, as ``key=value`` text or as one JSON object per line.

Untrusted input seen here: values in log records that came from clients (addresses, HELO
names, reply text). The code logs them with ``%r`` or as plain tokens; this module only
re-renders the ``key=value`` pairs, escaping through JSON, so no client text can start a new
line. Secrets never reach a log record: AUTH lines are redacted before any logging
(:mod:`postoffice.net.session`), and passwords are only held by :mod:`postoffice.accounts`.

``SIGHUP`` calls :func:`reopen`: a log file renamed away by logrotate is closed and created
again under its configured name (the ``copytruncate``-free way, like nginx's ``USR1``).

INFO lines logged on the event loop are held and written together, at most ``FLUSH_DELAY``
seconds after the first of them (:class:`BatchingStreamHandler`): a server logs five lines per
message, and one ``write(2)`` each, with the interpreter lock let go and taken back around it
(another thread waiting for it then runs first), cost more than the rest of the logging.
Warnings and errors, lines from other threads, :func:`flush`, the handler's close (logging's
own at exit) and a stopped event loop write what is held at once, in order. Only a process
killed outright (SIGKILL) loses lines: those of its last ``FLUSH_DELAY`` at most.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import json
import logging
import re
import select
import sys
import time
from pathlib import Path
from typing import Any, TextIO

# key=value, where the value is a Python repr of a string ('...' or "...") or a bare token.
_PAIR = re.compile(r"""([A-Za-z_][\w.-]*)=('(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*"|\S*)""")


def fields(message: str) -> dict[str, str]:
    """The ``key=value`` pairs of a log message; quoted values are unquoted."""
    found: dict[str, str] = {}
    for key, value in _PAIR.findall(message):
        if value[:1] in ("'", '"'):
            if len(value) > 1 and value[-1] == value[0] and "\\" not in value and value.isprintable():
                # A whole quoted value of printable characters with no escape means its text
                # as is; the parser is for escapes (and leaves a malformed value as it was).
                value = value[1:-1]
            else:
                with contextlib.suppress(ValueError, SyntaxError):
                    value = str(ast.literal_eval(value))
        found[key] = value
    return found


# POSIX guarantees at least 512; Linux pipes take 4096 octets in one write without interleaving.
_PIPE_BUF = getattr(select, "PIPE_BUF", 512)


class _Clock:
    """UTC timestamps in RFC 3339 form, with ``separator`` between date and time.

    The date and time of day are formatted once a second: a busy server logs many lines a second.
    """

    def __init__(self, separator: str) -> None:
        self._format = f"%Y-%m-%d{separator}%H:%M:%S"
        # One tuple, replaced whole: a thread never sees one second's text under another's.
        self._last: tuple[int, str] = (-1, "")

    def stamp(self, record: logging.LogRecord) -> str:
        second = int(record.created)
        last = self._last
        if last[0] != second:
            last = self._last = (second, time.strftime(self._format, time.gmtime(second)))
        return f"{last[1]}.{int(record.msecs):03d}Z"


# What a record's pathname is when no caller is looked up (configure sets logging._srcfile to
# None): its file name and module are this text too, as LogRecord would work them out.
_UNKNOWN_FILE = "(unknown file)"
# When logging was imported: relativeCreated counts from it.
_START_TIME: float = vars(logging)["_startTime"]
_LEVEL_NAMES = {level: logging.getLevelName(level) for level in range(0, 60, 10)}


class _Record(logging.LogRecord):
    """A log record made without what no line of ours prints (the record factory, see configure).

    LogRecord's own ``__init__`` is most of a line's cost: it splits the caller's path into a
    file and a module name, and checks a lone argument against ``collections.abc.Mapping``.
    Without a caller the path is fixed, so those are constants; anything else (a lone argument,
    thread or process names asked for) takes LogRecord's own way.
    """

    def __init__(
        self,
        name: str,
        level: int,
        pathname: str,
        lineno: int,
        msg: object,
        args: Any,
        exc_info: Any,
        func: str | None = None,
        sinfo: str | None = None,
        **kwargs: object,
    ) -> None:
        if (
            pathname != _UNKNOWN_FILE
            or (args and len(args) == 1)
            or kwargs
            or logging.logThreads
            or logging.logProcesses
            or logging.logMultiprocessing
        ):
            super().__init__(name, level, pathname, lineno, msg, args, exc_info, func, sinfo, **kwargs)
            return
        created = time.time()
        self.name = name
        self.msg = msg
        self.args = args
        self.levelname = _LEVEL_NAMES.get(level) or logging.getLevelName(level)
        self.levelno = level
        self.pathname = self.filename = self.module = pathname
        self.exc_info = exc_info
        self.exc_text = None
        self.stack_info = sinfo
        self.lineno = lineno
        self.funcName = func  # type: ignore[assignment]  # None without a caller, as LogRecord has it
        self.created = created
        self.msecs = int((created - int(created)) * 1000) + 0.0
        self.relativeCreated = (created - _START_TIME) * 1000
        self.thread = self.threadName = self.processName = self.process = None


class TextFormatter(logging.Formatter):
    """``2026-11-29 01:02:03.456Z INFO postoffice.smtp session=00002A event=connect ...``"""

    def __init__(self) -> None:
        super().__init__()
        # RFC 3339's space-separated form: readable and still sortable.
        self._clock = _Clock(" ")

    def format(self, record: logging.LogRecord) -> str:
        line = f"{self._clock.stamp(record)} {record.levelname} {record.name} {record.getMessage()}"
        if record.exc_info:
            # A traceback is several lines; keep it one event by escaping the newlines.
            line += " exception=" + json.dumps(self.formatException(record.exc_info))
        if line.isascii() and line.isprintable():
            return line  # nothing splitlines() would split: the common line, as it is
        return " ".join(line.splitlines())


# json.dumps(..., ensure_ascii=False) builds a new encoder for every call; this one is reused.
_JSON = json.JSONEncoder(ensure_ascii=False)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``ts``, ``level``, ``logger``, ``msg`` and every key=value field."""

    def __init__(self) -> None:
        super().__init__()
        self._clock = _Clock("T")

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        entry: dict[str, str] = {
            "ts": self._clock.stamp(record),
            "level": record.levelname,
            "logger": record.name,
            "msg": message,
        }
        for key, value in fields(message).items():
            entry.setdefault(key, value)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return _JSON.encode(entry)


# How long an INFO line logged on the event loop may wait for the lines after it: under load
# one write(2) then carries the lines of many messages (W1a: about 9 writes of the event loop's
# thread per message before, 7 after, the 7 replies; see docs/performance.md), and a reader of
# the log sees a line this much later at most.
FLUSH_DELAY = 0.02
# Held lines that are written at once, without waiting for the delay: bounds what is held.
MAX_HELD = 256


class BatchingStreamHandler(logging.StreamHandler[TextIO]):
    """A stream handler that writes the INFO lines logged on an event loop together.

    The first such line asks the loop to write everything held ``FLUSH_DELAY`` later
    (``call_later``; ``MAX_HELD`` lines are written at once). A warning or error, a line logged
    outside a running loop (a worker thread, start-up, the CLI), :meth:`flush` and
    :meth:`close` write what is held at once, in order. A loop that stops before its timer
    fires leaves the lines to the next of those (the server flushes as its loop ends, and
    logging's exit handler closes the handler); a line on another loop asks that loop anew.
    """

    def __init__(self, stream: TextIO) -> None:
        super().__init__(stream)
        self._held: list[str] = []
        # The loop whose timer will write what is held, while one is due.
        self._flushing: asyncio.AbstractEventLoop | None = None

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record) + self.terminator
        except Exception:
            self.handleError(record)
            return
        held = self._held
        held.append(line)
        if record.levelno < logging.WARNING and len(held) < MAX_HELD:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                pass
            else:
                if self._flushing is not loop:
                    self._flushing = loop
                    loop.call_later(FLUSH_DELAY, self.flush)
                return
        self._write_held()

    def flush(self) -> None:
        self.acquire()
        try:
            self._write_held()
        finally:
            self.release()

    def close(self) -> None:
        self.flush()
        super().close()

    def _write_held(self) -> None:
        # Called with the handler's lock held (emit runs under it).
        self._flushing = None
        held = self._held
        if not held:
            super().flush()
            return
        lines = held[:]
        held.clear()
        # Writes of at most PIPE_BUF octets, each whole lines: on a pipe shared by worker
        # processes (serve --workers) such a write is never interleaved with another's
        # (POSIX write(2)), so lines stay whole, as with one write per line.
        chunk: list[str] = []
        size = 0
        try:
            for line in lines:
                octets = len(line) if line.isascii() else 4 * len(line)  # UTF-8: at most 4 each
                if chunk and size + octets > _PIPE_BUF:
                    self._write_now("".join(chunk))
                    chunk, size = [], 0
                chunk.append(line)
                size += octets
            self._write_now("".join(chunk))
        except Exception:
            self.handleError(logging.makeLogRecord({"msg": "log lines lost: " + "".join(lines)}))

    def _write_now(self, text: str) -> None:
        self.stream.write(text)
        super().flush()


class ReopenableFileHandler(BatchingStreamHandler):
    """Appends to a file and opens it again by name on :meth:`reopen` (after log rotation)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        super().__init__(self._open())

    def _open(self) -> TextIO:
        return self.path.open("a", encoding="utf-8")

    def reopen(self) -> None:
        self.acquire()
        try:
            self._write_held()  # lines logged before the rotation belong to the old file
            old = self.stream
            self.stream = self._open()
            old.close()
        finally:
            self.release()


_handler: logging.Handler | None = None


def configure(log_format: str = "text", log_file: Path | None = None) -> None:
    """Send the ``postoffice`` loggers to standard error or ``log_file``, in ``log_format``."""
    global _handler
    # Log lines name no process or thread, so records need not look them up (the logging
    # HOWTO's "Optimization" section): a few per message add up under load.
    logging.logProcesses = False
    logging.logThreads = False
    logging.logMultiprocessing = False
    # Nor where in the source a line was logged: without this, every record walks the stack
    # to find its caller (a fifth of a line's cost; the HOWTO names this attribute for it).
    logging._srcfile = None
    logging.setLogRecordFactory(_Record)
    root = logging.getLogger("postoffice")
    if _handler is not None:
        root.removeHandler(_handler)
        _handler.close()
    handler: logging.Handler = (
        ReopenableFileHandler(log_file) if log_file is not None else BatchingStreamHandler(sys.stderr)
    )
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    _handler = handler


def flush() -> None:
    """Write the lines held for the event loop now (its loop is ending, or the process is)."""
    if _handler is not None:
        _handler.flush()


def reopen() -> None:
    """Reopen the log file, if logging goes to one (SIGHUP)."""
    if isinstance(_handler, ReopenableFileHandler):
        _handler.reopen()
