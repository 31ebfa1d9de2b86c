"""The composition root: builds every part of the server from a :class:`Config`.

Untrusted input seen here: none directly; this module wires the parts that see it.

The flow (Postfix's split, as modules): SMTP sessions → spool (durable, then 250) → scheduler →
delivery agents (Maildir for local mailboxes, SMTP for other domains), and reports (DSNs) back
into the spool. :class:`Application` is one server process's parts, started and stopped
together; running it as a process (the pid file, root, workers, signals, the banner) is
:mod:`postoffice.runtime`'s, the only package that imports this module.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import socket
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import BinaryIO

import dns.resolver

from postoffice import metrics
from postoffice.accounts import Accounts
from postoffice.config import Config, maildir_directory_mode
from postoffice.delivery.agent import DeliveryAgent, DeliveryResult
from postoffice.delivery.direct import DirectReceiver
from postoffice.delivery.dns import MxResolver
from postoffice.delivery.local import LocalAgent
from postoffice.delivery.remote import RemoteAgent, RemoteSettings
from postoffice.delivery.tlsrpt import TlsReportStore
from postoffice.dns_resolver import make_resolver
from postoffice.errors import ConfigError, DkimError
from postoffice.mailauth.dkim_dns import DnsTxtResolver
from postoffice.mailauth.dkim_signer import Signer, signature_fields
from postoffice.mailauth.inbound import Verifier
from postoffice.maildir.layout import make_mail_root
from postoffice.maildir.store import MaildirStore
from postoffice.net.listeners import Security
from postoffice.net.login import Authenticator
from postoffice.net.login_throttle import LoginThrottle
from postoffice.net.server import BoundAddress, BoundSocket, SmtpServer
from postoffice.net.session import SessionObserver
from postoffice.net.tls import ServerTls
from postoffice.net.transcript import TranscriptLog
from postoffice.operations import Operations
from postoffice.policy import Policy
from postoffice.qmgr.bounce import Bouncer
from postoffice.qmgr.scheduler import Scheduler
from postoffice.recipients import Recipients, report_recipients
from postoffice.smtp.server import ServerSettings
from postoffice.smtpd.checks.authentication import InboundAuthentication
from postoffice.spool.envelope import QueuedMessage, Recipient, Route
from postoffice.spool.files import FileSpool
from postoffice.spool.ids import owner_of
from postoffice.storage import Receiver, StoredMessage
from postoffice.tlsrpt.setup import DailyReports, report_sender
from postoffice.web.ops import ops_routes
from postoffice.web.server import HttpAddress
from postoffice.web.service import WebService, WebShare
from postoffice.worker_reports import ReportPublisher, read_reports, report_path

log = logging.getLogger("postoffice")


# Records kept by the verification's resolver (a few hundred octets each).
DNS_CACHE_SIZE = 10_000


def inbound_authentication(config: Config) -> InboundAuthentication | None:
    """SPF, DKIM, DMARC and ARC for mail from outside, when ``[authentication] verify`` says so
    (by default: unless in capture mode); every lookup asks ``[delivery] dns``."""
    if not config.verify_authentication:
        return None
    settings = config.authentication
    nameserver, timeout = config.delivery.dns, settings.dns_timeout
    resolver = make_resolver(nameserver, timeout=timeout)
    # Answers kept for their TTL: a sender's SPF and DMARC records are asked for every message
    # it sends, and a round trip to even a local resolver costs more than the rest of SPF.
    resolver.cache = dns.resolver.LRUCache(DNS_CACHE_SIZE)
    verifier = Verifier(
        resolver,
        DnsTxtResolver(nameserver, timeout=timeout),
        hostname=config.hostname,
    )
    return InboundAuthentication(verifier, settings, config.hostname)


def server_settings(config: Config) -> ServerSettings:
    limits = config.limits
    return ServerSettings(
        hostname=config.hostname,
        max_message_size=limits.message_size,
        max_recipients=limits.recipients,
        command_line_limit=limits.command_line,
        text_line_limit=limits.text_line,
        max_errors=limits.errors_per_session,
        # RFC 3461: NOTIFY, ORCPT, RET and ENVID are accepted, and honoured by the queue.
        dsn=True,
    )


def remote_settings(config: Config) -> RemoteSettings:
    """The remote agent's settings; reads the relay password file (ConfigError if it cannot)."""
    delivery = config.delivery
    password = None
    if delivery.relay_password_file is not None:
        try:
            with open(delivery.relay_password_file, encoding="utf-8") as stream:
                password = stream.readline().removesuffix("\n").removesuffix("\r")
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else "not UTF-8 text"
            raise ConfigError(
                f"{delivery.relay_password_file}: {reason}",
                key="delivery.relay_password_file",
                path=str(config.source) if config.source is not None else None,
            ) from None
    return RemoteSettings(
        hostname=config.hostname,
        mx_port=delivery.mx_port,
        relay=delivery.relay_host,
        relay_tls=delivery.relay_tls,
        relay_user=delivery.relay_user,
        relay_password=password,
        tls_policy=dict(delivery.tls_policy),
        ca_file=delivery.tls_ca_file,
        connect_timeout=delivery.connect_timeout,
        command_timeout=delivery.command_timeout,
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

    def __init__(
        self,
        config: Config,
        *,
        observer: SessionObserver | None = None,
        clock: Callable[[], float] = time.time,
        clean_tmp: bool = True,
        web_share: WebShare | None = None,
        worker_index: int | None = None,
        http_sockets: Sequence[socket.socket] | None = None,
    ) -> None:
        """``clean_tmp=False`` for a worker: the parent cleaned ``tmp/`` before any received.
        ``web_share``: a worker's part in the web side (None: this process is the whole server).
        ``worker_index``: which worker of several this is (None: the only process).
        ``http_sockets``: the whole server's web listeners, bound before root was given up."""
        self.config = config
        self.metrics = metrics.reset()
        make_mail_root(config.mail_dir, maildir_directory_mode(config.mail_file_mode))
        self.transcript: TranscriptLog | None = None
        if observer is None and config.transcript_log is not None:
            self.transcript = TranscriptLog(config.transcript_log)
            self.transcript.open()  # an unwritable path is reported now, not at the first session
            observer = self.transcript
        self.accounts = Accounts(config.accounts_file)
        self.spool = FileSpool(config.spool_dir, clean_tmp=clean_tmp)
        self.tls_reports = TlsReportStore(config.data_dir) if config.tls_reporting.send else None  # RFC 8460
        self.remote = RemoteAgent(
            remote_settings(config), MxResolver(config.delivery.dns), self.spool, tls_reports=self.tls_reports
        )
        self.web: WebService | None = None
        self.http_addresses: list[HttpAddress] = []
        self.mailboxes = mailboxes = MaildirStore.from_config(config)
        agents = self._agents()
        # Where sessions store what they receive: one local mailbox at once, the rest queued.
        receiver: Receiver = self.spool
        if config.delivery.local_before_reply:
            receiver = DirectReceiver(
                self.spool, mailboxes, on_delivered=self._delivered, on_result=self._on_delivery_result
            )
        # DKIM keys, read once and again when their directory changes (or on SIGHUP).
        self.signer = Signer(config.data_dir, config.domains, enabled=config.authentication.sign)
        self.scheduler = self._scheduler(agents, clock, worker_index)
        self.security = security(config, self.accounts)
        self.smtp = SmtpServer(
            settings=server_settings(config),
            limits=config.limits,
            policy=Policy(config, self.accounts, mailbox_ok=self._mailbox_ok),
            spool=receiver,
            on_queued=self.scheduler.submit,
            listeners=config.listeners,
            observer=observer,
            security=self.security,
            proxy=config.proxy_protocol,
            signer=self.signer,
            inbound=inbound_authentication(config),
        )
        self.operations, self.reporter = self._operations(worker_index)
        self.daily_reports = self._daily_reports(clock) if worker_index in (None, 0) else None
        if config.http_listeners:
            self.web = self._web(web_share, http_sockets)

    def _agents(self) -> dict[Route, DeliveryAgent]:
        """The delivery agents, by route."""
        return {
            # The spool's worker threads: its commits and the deliveries flush side by side.
            Route.LOCAL: LocalAgent(
                self.mailboxes, self.spool, io=self.spool.io, on_delivered=self._delivered
            ),
            Route.REMOTE: self.remote,
        }

    def _scheduler(
        self, agents: dict[Route, DeliveryAgent], clock: Callable[[], float], worker_index: int | None
    ) -> Scheduler:
        config = self.config
        queue = config.queue
        return Scheduler(
            self.spool,
            agents,
            retry_base=queue.minimal_backoff_time,
            retry_max=queue.maximal_backoff_time,
            lifetime=queue.maximal_queue_lifetime,
            delay_warning=queue.delay_warning_time,
            clock=clock,
            concurrency=queue.concurrency,
            destination_concurrency=queue.destination_concurrency,
            destination=self._destination,
            notifier=Bouncer(
                self.spool, config.hostname, self._report_recipients, clock=clock, sign=self._sign_report
            ),
            on_result=self._on_delivery_result,
            # Maildir copies are named the same on every attempt, and found again on a retry.
            recovers_copies=(Route.LOCAL,),
            blocking=self.spool.io.run,
            owns=_ownership(worker_index, config.workers),
        )

    def _operations(self, worker_index: int | None) -> tuple[Operations, ReportPublisher | None]:
        """The operations side, and for a worker other than 0 what publishes its report."""
        config = self.config
        # With workers, worker 0 serves the operations endpoints and adds up what the others
        # report once a second (postoffice.worker_reports).
        reports = workers_directory(config)
        operations = Operations(
            hostname=config.hostname,
            spool_root=config.spool_dir,
            scheduler=self.scheduler,
            listeners=lambda: self.smtp.bound,
            sessions=lambda: len(self.smtp.sessions),
            peers=(lambda: read_reports(reports, exclude=0)) if worker_index == 0 else None,
        )
        reporter: ReportPublisher | None = None
        if worker_index is not None and worker_index > 0:
            index = worker_index
            reporter = ReportPublisher(report_path(reports, index), lambda: operations.report(index))
            # The spool is shared: worker 0 counts its queue for everyone, so the others'
            # reports leave the queue gauge out instead of listing the directories each second.
            operations.metrics.watch_queue(dict)
        return operations, reporter

    def _daily_reports(self, clock: Callable[[], float]) -> DailyReports | None:
        """The hourly look for finished days to report (one process of several runs it)."""
        if self.tls_reports is None:
            return None
        sender = report_sender(
            self.config,
            self.tls_reports,
            self.spool,
            sign=self._sign_report,
            recipients_for=self._report_recipients,
            submit=self.scheduler.submit,
            clock=clock,
        )
        return DailyReports(sender)

    def _web(self, web_share: WebShare | None, http_sockets: Sequence[socket.socket] | None) -> WebService:
        # The web UI and JSON API, with the index kept up to date at each delivery; the
        # operations endpoints (/metrics, /livez, /readyz, /api/v1/status) beside them.
        return WebService(
            self.config,
            self.accounts,
            self.mailboxes,
            extra_routes=ops_routes(self.operations),
            share=web_share,
            sockets=http_sockets,
        )

    def _sign_report(self, report: BinaryIO, queue_id: str) -> Sequence[bytes]:
        """DKIM-Signature fields for a report from MAILER-DAEMON@hostname: the keys of the host
        name, or of the longest local domain it is under (aligned with From, RFC 7489 §3.1.1)."""
        signer = self.signer
        domain = signer.for_host(self.config.hostname)
        if domain is None or not signer.enabled:
            return ()
        try:
            return signature_fields(signer.sign(report, domain, what=f"queue_id={queue_id}"))
        except DkimError as exc:
            log.warning("queue_id=%s event=dkim-not-signed domain=%s reason=%r", queue_id, domain, str(exc))
            return ()

    def _delivered(self, stored: StoredMessage) -> None:
        if self.web is not None:
            self.web.delivered(stored)

    def _on_delivery_result(
        self, message: QueuedMessage, recipient: Recipient, result: DeliveryResult
    ) -> None:
        self.operations.on_delivery_result(message, recipient, result)

    def apply(self, config: Config) -> None:
        """Apply a re-read configuration to new sessions; open sessions keep theirs (SIGHUP).

        Domains, limits, accounts and the host name take effect; listeners, the data
        directory, the PROXY protocol settings, the user and the mail file mode need a restart
        and are reported if changed.
        """
        kept = ("listeners", "data_dir", "proxy_protocol", "user", "group", "mail_file_mode")
        for name in kept:
            if getattr(config, name) != getattr(self.config, name):
                log.warning("event=reload-ignored key=%s reason=restart-needed", name)
        config = dataclasses.replace(config, **{name: getattr(self.config, name) for name in kept})
        self.config = config
        self.accounts = Accounts(config.accounts_file)
        self.signer.configure(config.domains, enabled=config.authentication.sign)
        self.smtp.reconfigure(
            settings=server_settings(config),
            limits=config.limits,
            policy=Policy(config, self.accounts, mailbox_ok=self._mailbox_ok),
        )
        log.info("event=reloaded domains=%s", ",".join(config.domains) or "(capture mode)")

    def _mailbox_ok(self, address: str) -> bool:
        return self.mailboxes.mailbox_name(address) is not None  # the store never changes

    def _destination(self, recipient: Recipient) -> str:
        """The scheduler's unit of concurrency: local mailboxes, or one remote destination."""
        if recipient.route is Route.LOCAL:
            return "local"
        return "remote:" + self.remote.destination(recipient)

    def _report_recipients(self, sender: str) -> tuple[Recipient, ...]:
        """Where a report (DSN) to ``sender`` goes: where a message to that address would."""
        return report_recipients(Recipients(self.config, self.accounts, mailbox_ok=self._mailbox_ok), sender)

    async def start(
        self,
        *,
        recover: Sequence[str] | None = None,
        reuse_port: bool = False,
        sockets: Sequence[BoundSocket] | None = None,
    ) -> Sequence[BoundAddress]:
        """Open the listeners, recover, then accept. A worker gets ``recover`` (its share of
        what a previous run left in the queue: all of it or nothing) and listens with
        ``reuse_port``; ``sockets`` were bound before root was given up (:mod:`postoffice.runtime.prebound`).
        The listeners open first, so that a taken port (ListenError) is the only thing said:
        nothing has started yet."""
        logging.getLogger("postoffice").addHandler(self.operations.errors)
        bound = await self.smtp.bind(reuse_port=reuse_port, sockets=sockets)
        if self.web is not None:
            try:
                self.http_addresses = await self.web.start()
            except BaseException:
                await self.smtp.stop(0)
                raise
        await self.scheduler.start(recover)  # deliver what a previous run accepted but did not finish
        if self.transcript is not None:
            await self.transcript.start()
        await self.smtp.serve()
        self.operations.running = True
        if self.reporter is not None:
            self.reporter.start()
        if self.daily_reports is not None:
            self.daily_reports.start()
        return bound

    def reload(self, config: Config | None = None) -> None:
        """SIGHUP: re-read the TLS certificate and key, reopen the transcript log (logrotate
        has moved it) and apply ``config`` if given; connections stay up."""
        if self.security.tls is not None:
            self.security.tls.reload()
        self.reopen_logs()
        self.signer.reload()
        if config is not None:
            self.apply(config)

    async def stop(self, grace: float = 30.0) -> None:
        self.operations.running = False  # /readyz says so before the listeners close
        await self.smtp.stop(grace)
        if self.reporter is not None:
            await self.reporter.stop()
        if self.daily_reports is not None:
            await self.daily_reports.stop()
        await self.scheduler.stop()
        await self.remote.close()
        if self.transcript is not None:
            await self.transcript.stop()
        if self.web is not None:
            await self.web.stop()
        logging.getLogger("postoffice").removeHandler(self.operations.errors)
        if self.tls_reports is not None:
            self.tls_reports.close()
        await asyncio.to_thread(self.spool.io.close)  # nothing is left to flush: end its threads

    def reopen_logs(self) -> None:
        """SIGHUP: reopen the transcript log (logrotate has moved it)."""
        if self.transcript is not None:
            self.transcript.reopen()


def _ownership(worker_index: int | None, count: int) -> Callable[[str], bool] | None:
    """Which queue IDs a worker schedules (None: a single process schedules them all)."""
    if worker_index is None:
        return None
    index = worker_index
    return lambda queue_id: owner_of(queue_id, count) == index


def workers_directory(config: Config) -> Path:
    """Where workers leave their reports for the one serving the operations endpoints."""
    return config.data_dir / "workers"
