"""The composition root: builds every part of the server from a :class:`Config` and runs it.

Untrusted input seen here: none directly; this module wires the parts that see it.

The flow (Postfix's split, as modules): SMTP sessions → spool (durable, then 250) → scheduler →
delivery agents (Maildir for local mailboxes). Only :mod:`postoffice.cli` imports this module.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Callable, Sequence

from postoffice.accounts import Accounts
from postoffice.config import Config
from postoffice.datadir import DataDirInUse, DataDirLock
from postoffice.delivery.agent import DeliveryAgent
from postoffice.delivery.mailbox_names import mailbox_path
from postoffice.delivery.maildir import MaildirAgent
from postoffice.errors import SpoolError
from postoffice.net.server import BoundAddress, SmtpServer
from postoffice.net.session import SessionObserver
from postoffice.policy import Policy
from postoffice.smtp.server import ServerSettings
from postoffice.spool.envelope import Route
from postoffice.spool.files import FileSpool
from postoffice.spool.scheduler import Scheduler
from postoffice.workers import WorkerRole, supervise

log = logging.getLogger("postoffice")


def server_settings(config: Config) -> ServerSettings:
    limits = config.limits
    return ServerSettings(
        hostname=config.hostname,
        max_message_size=limits.message_size,
        max_recipients=limits.recipients,
        command_line_limit=limits.command_line,
        text_line_limit=limits.text_line,
        max_errors=limits.errors_per_session,
    )


class Application:
    """Everything one ``postoffice serve`` process runs."""

    def __init__(
        self, config: Config, *, observer: SessionObserver | None = None, clean_tmp: bool = True
    ) -> None:
        """``clean_tmp=False`` for a worker: the parent cleaned ``tmp/`` before any received."""
        self.config = config
        config.mail_dir.mkdir(parents=True, exist_ok=True)
        self.accounts = Accounts(config.accounts_file)
        self.spool = FileSpool(config.spool_dir, clean_tmp=clean_tmp)
        agents: dict[Route, DeliveryAgent] = {
            # The spool's worker threads: its commits and the deliveries flush side by side.
            Route.LOCAL: MaildirAgent(config.mail_dir, self.spool, config.hostname, io=self.spool.io),
        }
        self.scheduler = Scheduler(self.spool, agents)
        self.smtp = SmtpServer(
            settings=server_settings(config),
            limits=config.limits,
            policy=Policy(config, self.accounts, mailbox_ok=self._mailbox_ok),
            spool=self.spool,
            on_queued=self.scheduler.submit,
            listeners=config.listeners,
            observer=observer,
        )

    def _mailbox_ok(self, address: str) -> bool:
        try:
            mailbox_path(self.config.mail_dir, address)
        except ValueError:
            return False
        return True

    async def start(
        self, *, recover: Sequence[str] | None = None, reuse_port: bool = False
    ) -> Sequence[BoundAddress]:
        """Recover, then listen. A worker gets ``recover`` (its share of what a previous run
        left in the queue: all of it or nothing) and listens with ``reuse_port``."""
        await self.scheduler.start(recover)  # deliver what a previous run accepted but did not finish
        return await self.smtp.start(reuse_port=reuse_port)

    async def stop(self, grace: float = 30.0) -> None:
        await self.smtp.stop(grace)
        await self.scheduler.stop()
        await asyncio.to_thread(self.spool.io.close)  # nothing is left to flush: end its threads


def _configure_logging() -> None:
    # Log lines name no process or thread, so records need not look them up (the logging
    # HOWTO's "Optimization" section): a few per message add up under load.
    logging.logProcesses = False
    logging.logThreads = False
    logging.logMultiprocessing = False
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger("postoffice")
    root.addHandler(handler)
    root.setLevel(logging.INFO)


def _banner(config: Config, bound: Sequence[BoundAddress]) -> None:
    mode = (
        "capture mode: every recipient is accepted, nothing is relayed"
        if config.capture_mode
        else ("mail server for " + ", ".join(config.domains))
    )
    print(f"postoffice {config.hostname}: {mode}", flush=True)
    for address in bound:
        print(f"listening {address}", flush=True)
    print(f"data in {config.data_dir} (mail in {config.mail_dir})", flush=True)
    if config.capture_mode and any(not listener.is_loopback for listener in config.listeners):
        log.warning("capture mode on a non-loopback address: anyone who can reach it can file mail here")


async def _serve(config: Config, worker: WorkerRole | None = None) -> int:
    app = Application(config, clean_tmp=worker is None)
    try:
        if worker is None:
            bound = await app.start()
        else:
            bound = await app.start(recover=worker.recover, reuse_port=True)
    except OSError as exc:
        print(f"postoffice: cannot listen: {exc.strerror or exc}", file=sys.stderr)
        await app.scheduler.stop()
        return 1
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    # Only now: whoever reads "listening" may signal us at once.
    if worker is None:
        _banner(config, bound)
    else:
        worker.ready()
    await stop.wait()
    log.info("event=shutdown")
    await app.stop()
    return 0


def event_loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's event loop when it is installed (``pip install 'postoffice[fast]'``).

    Its transports do the socket work of a session in C; the server behaves the same on
    either loop, and the test suite runs on the standard one.
    """
    try:
        import uvloop
    except ImportError:
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def serve(config: Config) -> int:
    """Run the server until SIGTERM/SIGINT; the exit code for the CLI."""
    _configure_logging()
    lock = DataDirLock(config.data_dir)
    try:
        lock.acquire()
    except (DataDirInUse, OSError) as exc:
        detail = f"{exc.filename}: {exc.strerror}" if isinstance(exc, OSError) and exc.strerror else str(exc)
        print(f"postoffice: {detail}", file=sys.stderr)
        return 1
    try:
        if config.workers > 1:
            return _serve_workers(config)
        return _run(config, None)
    finally:
        lock.release()


def _run(config: Config, worker: WorkerRole | None) -> int:
    with contextlib.suppress(KeyboardInterrupt), asyncio.Runner(loop_factory=event_loop_factory()) as runner:
        return runner.run(_serve(config, worker))
    return 130


def _serve_workers(config: Config) -> int:
    # Under the lock and before any worker receives: clear tmp/ of a previous run's debris and
    # list what it left in the queue, for worker 0 to deliver.
    try:
        recover = FileSpool(config.spool_dir).pending()
    except SpoolError as exc:
        print(f"postoffice: {exc}", file=sys.stderr)
        return 1

    def announce(worker_config: Config) -> None:
        bound = [
            BoundAddress(listener.kind, listener.host, listener.port) for listener in worker_config.listeners
        ]
        _banner(config, bound)

    try:
        return supervise(config, recover, _run, announce)
    except OSError as exc:
        print(f"postoffice: cannot listen: {exc.strerror or exc}", file=sys.stderr)
        return 1
