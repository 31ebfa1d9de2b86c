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
from collections.abc import Sequence

from postoffice.accounts import Accounts
from postoffice.config import Config
from postoffice.delivery.agent import DeliveryAgent
from postoffice.delivery.mailbox_names import mailbox_path
from postoffice.delivery.maildir import MaildirAgent
from postoffice.net.listeners import Security
from postoffice.net.login import Authenticator
from postoffice.net.login_throttle import LoginThrottle
from postoffice.net.server import BoundAddress, SmtpServer
from postoffice.net.session import SessionObserver
from postoffice.net.tls import ServerTls
from postoffice.policy import Policy
from postoffice.smtp.server import ServerSettings
from postoffice.spool.envelope import Route
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


def needs_tls(config: Config) -> bool:
    """A certificate is loaded (or made) when a listener will use it.

    Submission listeners always do. The MX listener offers STARTTLS with a configured
    certificate, and in MTA mode with a self-signed one (opportunistic TLS between servers does
    not verify certificates, RFC 7435). In capture mode without a certificate it offers none:
    client libraries that upgrade whenever STARTTLS is offered and verify the certificate
    (aiosmtplib does by default) would fail against a self-signed one.
    """
    submission = any(listener.kind != "smtp" for listener in config.listeners)
    return submission or config.tls.cert is not None or not config.capture_mode


def security(config: Config, accounts: Accounts) -> Security:
    tls = ServerTls.from_config(config) if needs_tls(config) else None
    auth = config.auth
    throttle = LoginThrottle(
        max_failures=auth.max_failures, window=auth.failure_window, delay=auth.failure_delay
    )
    return Security(
        tls=tls,
        login=Authenticator(accounts, throttle),
        starttls_on_smtp=tls is not None and (config.tls.cert is not None or not config.capture_mode),
        plaintext_auth_on_loopback=auth.allow_plaintext_on_loopback,
    )


class Application:
    """Everything one ``postoffice serve`` process runs."""

    def __init__(self, config: Config, *, observer: SessionObserver | None = None) -> None:
        self.config = config
        config.mail_dir.mkdir(parents=True, exist_ok=True)
        self.accounts = Accounts(config.accounts_file)
        self.spool = FileSpool(config.spool_dir)
        agents: dict[Route, DeliveryAgent] = {
            Route.LOCAL: MaildirAgent(config.mail_dir, self.spool, config.hostname),
        }
        self.scheduler = Scheduler(self.spool, agents)
        self.security = security(config, self.accounts)
        self.smtp = SmtpServer(
            settings=server_settings(config),
            limits=config.limits,
            policy=Policy(config, self.accounts, mailbox_ok=self._mailbox_ok),
            spool=self.spool,
            on_queued=self.scheduler.submit,
            listeners=config.listeners,
            observer=observer,
            security=self.security,
        )

    def _mailbox_ok(self, address: str) -> bool:
        try:
            mailbox_path(self.config.mail_dir, address)
        except ValueError:
            return False
        return True

    async def start(self) -> Sequence[BoundAddress]:
        await self.scheduler.start()  # deliver what a previous run accepted but did not finish
        return await self.smtp.start()

    def reload(self) -> None:
        """SIGHUP: re-read the TLS certificate and key; connections stay up."""
        if self.security.tls is not None:
            self.security.tls.reload()

    async def stop(self, grace: float = 30.0) -> None:
        await self.smtp.stop(grace)
        await self.scheduler.stop()


def _configure_logging() -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger("postoffice")
    root.addHandler(handler)
    root.setLevel(logging.INFO)


def _banner(config: Config, bound: Sequence[BoundAddress], tls: ServerTls | None) -> None:
    mode = (
        "capture mode: every recipient is accepted, nothing is relayed"
        if config.capture_mode
        else ("mail server for " + ", ".join(config.domains))
    )
    print(f"postoffice {config.hostname}: {mode}", flush=True)
    for address in bound:
        print(f"listening {address}", flush=True)
    print(f"data in {config.data_dir} (mail in {config.mail_dir})", flush=True)
    if tls is not None:
        print(f"tls certificate {tls.cert} (re-read on SIGHUP)", flush=True)
    if config.capture_mode and any(not listener.is_loopback for listener in config.listeners):
        log.warning("capture mode on a non-loopback address: anyone who can reach it can file mail here")


async def _serve(config: Config) -> int:
    app = Application(config)
    try:
        bound = await app.start()
    except OSError as exc:
        print(f"postoffice: cannot listen: {exc.strerror or exc}", file=sys.stderr)
        await app.scheduler.stop()
        return 1
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    loop.add_signal_handler(signal.SIGHUP, app.reload)
    # The banner comes last: whoever waits for "listening" may signal the server at once.
    _banner(config, bound, app.security.tls)
    await stop.wait()
    log.info("event=shutdown")
    await app.stop()
    return 0


def serve(config: Config) -> int:
    """Run the server until SIGTERM/SIGINT; the exit code for the CLI."""
    _configure_logging()
    with contextlib.suppress(KeyboardInterrupt):
        return asyncio.run(_serve(config))
    return 130
