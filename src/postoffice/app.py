"""The composition root: builds every part of the server from a :class:`Config` and runs it.

Untrusted input seen here: none directly; this module wires the parts that see it.

The flow (Postfix's split, as modules): SMTP sessions → spool (durable, then 250) → scheduler →
delivery agents (Maildir for local mailboxes). Only :mod:`postoffice.cli` imports this module.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import signal
import sys
from collections.abc import Callable, Sequence

from postoffice import logs, metrics
from postoffice.accounts import Accounts
from postoffice.config import Config
from postoffice.delivery.agent import DeliveryAgent, DeliveryResult
from postoffice.delivery.mailbox_names import mailbox_path
from postoffice.delivery.maildir import MaildirAgent
from postoffice.net.server import BoundAddress, SmtpServer
from postoffice.net.session import SessionObserver
from postoffice.operations import Operations
from postoffice.policy import Policy
from postoffice.smtp.server import ServerSettings
from postoffice.spool.envelope import QueuedMessage, Recipient, Route
from postoffice.spool.files import FileSpool
from postoffice.spool.scheduler import Scheduler

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

    def __init__(self, config: Config, *, observer: SessionObserver | None = None) -> None:
        self.config = config
        self.metrics = metrics.reset()
        config.mail_dir.mkdir(parents=True, exist_ok=True)
        self.accounts = Accounts(config.accounts_file)
        self.spool = FileSpool(config.spool_dir)
        agents: dict[Route, DeliveryAgent] = {
            Route.LOCAL: MaildirAgent(config.mail_dir, self.spool, config.hostname),
        }
        self.scheduler = Scheduler(self.spool, agents, on_result=self._on_delivery_result)
        self.smtp = SmtpServer(
            settings=server_settings(config),
            limits=config.limits,
            policy=Policy(config, self.accounts, mailbox_ok=self._mailbox_ok),
            spool=self.spool,
            on_queued=self.scheduler.submit,
            listeners=config.listeners,
            observer=observer,
            proxy=config.proxy_protocol,
        )
        self.operations = Operations(
            hostname=config.hostname,
            spool_root=config.spool_dir,
            scheduler=self.scheduler,
            listeners=lambda: self.smtp.bound,
            sessions=lambda: len(self.smtp.sessions),
        )

    def _on_delivery_result(
        self, message: QueuedMessage, recipient: Recipient, result: DeliveryResult
    ) -> None:
        self.operations.on_delivery_result(message, recipient, result)

    def reload(self, config: Config) -> None:
        """Apply a re-read configuration to new sessions; open sessions keep theirs (SIGHUP).

        Domains, limits, accounts and the host name take effect; listeners, the data
        directory and the PROXY protocol settings need a restart and are reported if changed.
        """
        for name in ("listeners", "data_dir", "proxy_protocol"):
            if getattr(config, name) != getattr(self.config, name):
                log.warning("event=reload-ignored key=%s reason=restart-needed", name)
        config = dataclasses.replace(
            config,
            listeners=self.config.listeners,
            data_dir=self.config.data_dir,
            proxy_protocol=self.config.proxy_protocol,
        )
        self.config = config
        self.accounts = Accounts(config.accounts_file)
        self.smtp.reconfigure(
            settings=server_settings(config),
            limits=config.limits,
            policy=Policy(config, self.accounts, mailbox_ok=self._mailbox_ok),
        )
        log.info("event=reloaded domains=%s", ",".join(config.domains) or "(capture mode)")

    def _mailbox_ok(self, address: str) -> bool:
        try:
            mailbox_path(self.config.mail_dir, address)
        except ValueError:
            return False
        return True

    async def start(self) -> Sequence[BoundAddress]:
        logging.getLogger("postoffice").addHandler(self.operations.errors)
        await self.scheduler.start()  # deliver what a previous run accepted but did not finish
        bound = await self.smtp.start()
        self.operations.running = True
        return bound

    async def stop(self, grace: float = 30.0) -> None:
        self.operations.running = False  # /readyz says so before the listeners close
        await self.smtp.stop(grace)
        await self.scheduler.stop()
        logging.getLogger("postoffice").removeHandler(self.operations.errors)


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


def _on_hangup(app: Application, reload: Callable[[], Config] | None) -> None:
    """SIGHUP: reopen the log file, then re-read the configuration (nginx and Postfix do both)."""
    logs.reopen()
    log.info("event=sighup")
    if reload is None:
        return
    try:
        config = reload()
    except Exception as exc:  # a broken file keeps the running configuration
        log.error("event=reload-failed error=%r", " ".join(str(exc).split()))
        return
    logs.configure(config.log_format, config.log_file)
    app.reload(config)


async def _serve(config: Config, reload: Callable[[], Config] | None, http: tuple[str, int] | None) -> int:
    app = Application(config)
    ops_http = None
    # Handlers go in before anything is announced: a supervisor may signal as soon as it reads
    # the "listening" line, and a SIGTERM then must stop us cleanly, not kill us.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    loop.add_signal_handler(signal.SIGHUP, _on_hangup, app, reload)
    try:
        bound = await app.start()
        if http is not None:
            # Until the web application serves the HTTP port, the operations endpoints run alone.
            from postoffice.web.ops_server import OpsHttpServer

            ops_http = OpsHttpServer(app.operations, *http)
            http_host, http_port = await ops_http.start()
    except OSError as exc:
        print(f"postoffice: cannot listen: {exc.strerror or exc}", file=sys.stderr)
        await app.stop(grace=0)
        return 1
    _banner(config, bound)
    if ops_http is not None:
        host = f"[{http_host}]" if ":" in http_host else http_host
        print(f"listening http {host}:{http_port}", flush=True)
    await stop.wait()
    log.info("event=shutdown")
    await app.stop()
    if ops_http is not None:
        await ops_http.stop()
    log.info("event=stopped")
    return 0


def serve(
    config: Config,
    *,
    reload: Callable[[], Config] | None = None,
    http: tuple[str, int] | None = None,
) -> int:
    """Run the server until SIGTERM/SIGINT; the exit code for the CLI.

    ``reload`` re-reads the configuration on SIGHUP; ``http`` serves the operations endpoints.
    """
    logs.configure(config.log_format, config.log_file)
    with contextlib.suppress(KeyboardInterrupt):
        return asyncio.run(_serve(config, reload, http))
    return 130
