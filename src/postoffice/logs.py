"""Log output: one line per event, as ``key=value`` text or as one JSON object per line.

Untrusted input seen here: values in log records that came from clients (addresses, HELO
names, reply text). The code logs them with ``%r`` or as plain tokens; this module only
re-renders the ``key=value`` pairs, escaping through JSON, so no client text can start a new
line. Secrets never reach a log record: AUTH lines are redacted before any logging
(:mod:`postoffice.net.session`), and passwords are only held by :mod:`postoffice.accounts`.

``SIGHUP`` calls :func:`reopen`: a log file renamed away by logrotate is closed and created
again under its configured name (the ``copytruncate``-free way, like nginx's ``USR1``).
"""

from __future__ import annotations

import ast
import contextlib
import json
import logging
import re
import sys
import time
from pathlib import Path
from typing import TextIO

# key=value, where the value is a Python repr of a string ('...' or "...") or a bare token.
_PAIR = re.compile(r"""([A-Za-z_][\w.-]*)=('(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*"|\S*)""")


def fields(message: str) -> dict[str, str]:
    """The ``key=value`` pairs of a log message; quoted values are unquoted."""
    found: dict[str, str] = {}
    for match in _PAIR.finditer(message):
        key, value = match.group(1), match.group(2)
        if value[:1] in ("'", '"'):
            with contextlib.suppress(ValueError, SyntaxError):
                value = str(ast.literal_eval(value))
        found[key] = value
    return found


def _timestamp(record: logging.LogRecord, separator: str = "T") -> str:
    # UTC, RFC 3339; text lines use its space-separated form, readable and still sortable.
    seconds = time.strftime(f"%Y-%m-%d{separator}%H:%M:%S", time.gmtime(record.created))
    return f"{seconds}.{int(record.msecs):03d}Z"


class TextFormatter(logging.Formatter):
    """``2026-11-29 01:02:03.456Z INFO postoffice.smtp session=00002A event=connect ...``"""

    def format(self, record: logging.LogRecord) -> str:
        line = f"{_timestamp(record, ' ')} {record.levelname} {record.name} {record.getMessage()}"
        if record.exc_info:
            # A traceback is several lines; keep it one event by escaping the newlines.
            line += " exception=" + json.dumps(self.formatException(record.exc_info))
        return " ".join(line.splitlines())


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``ts``, ``level``, ``logger``, ``msg`` and every key=value field."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        entry: dict[str, str] = {
            "ts": _timestamp(record),
            "level": record.levelname,
            "logger": record.name,
            "msg": message,
        }
        for key, value in fields(message).items():
            entry.setdefault(key, value)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


class ReopenableFileHandler(logging.StreamHandler[TextIO]):
    """Appends to a file and opens it again by name on :meth:`reopen` (after log rotation)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        super().__init__(self._open())

    def _open(self) -> TextIO:
        return self.path.open("a", encoding="utf-8")

    def reopen(self) -> None:
        self.acquire()
        try:
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
    root = logging.getLogger("postoffice")
    if _handler is not None:
        root.removeHandler(_handler)
        _handler.close()
    handler: logging.Handler = (
        ReopenableFileHandler(log_file) if log_file is not None else logging.StreamHandler(sys.stderr)
    )
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    _handler = handler


def reopen() -> None:
    """Reopen the log file, if logging goes to one (SIGHUP)."""
    if isinstance(_handler, ReopenableFileHandler):
        _handler.reopen()
