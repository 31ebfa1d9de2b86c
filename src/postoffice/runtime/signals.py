"""The signals a running server acts on: stop, reload, and the queue command's nudges.

Untrusted input seen here: none; signals come from the operator, a supervisor (systemd) or
the ``queue`` command (:mod:`postoffice.runtime.pidfile`).
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable

from postoffice import logs
from postoffice.app import Application
from postoffice.config import Config
from postoffice.runtime.pidfile import FLUSH_SIGNAL, RESCAN_SIGNAL

log = logging.getLogger("postoffice")


def handle_signals(app: Application, reload: Callable[[], Config] | None) -> asyncio.Event:
    """Install the running loop's signal handlers for ``app``; the event is set on SIGTERM or
    SIGINT. ``reload`` re-reads the configuration on SIGHUP."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    loop.add_signal_handler(signal.SIGHUP, on_hangup, app, reload)
    # `postoffice queue flush` / `hold` / `release` / `delete` (see postoffice.runtime.pidfile).
    rescans: set[asyncio.Task[None]] = set()

    def rescan(*, flush: bool) -> None:
        task = loop.create_task(app.scheduler.rescan(flush=flush))
        rescans.add(task)
        task.add_done_callback(rescans.discard)

    loop.add_signal_handler(FLUSH_SIGNAL, lambda: rescan(flush=True))
    loop.add_signal_handler(RESCAN_SIGNAL, lambda: rescan(flush=False))
    return stop


def on_hangup(app: Application, reload: Callable[[], Config] | None) -> None:
    """SIGHUP: reopen the log files, re-read certificates and the configuration (nginx and
    Postfix do the same)."""
    logs.reopen()
    log.info("event=sighup")
    config = None
    if reload is not None:
        try:
            config = reload()
        except Exception as exc:  # a broken file keeps the running configuration
            log.error("event=reload-failed error=%r", " ".join(str(exc).split()))
        else:
            logs.configure(config.log_format, config.log_file)
    app.reload(config)
