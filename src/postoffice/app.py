"""The composition root: builds every part of the server from a :class:`Config`.

Untrusted input seen here: none directly; this module wires the parts that see it.

The flow (Postfix's split, as modules): SMTP sessions → spool (durable, then 250) → scheduler →
delivery agents (Maildir for local mailboxes, SMTP for other domains), and reports (DSNs) back
into the spool. :class:`Application` is one server process's parts, started and stopped
together; running it as a process (the pid file, root, workers, signals, the banner) is
:mod:`postoffice.runtime`'s, the only package that imports this module.
"""

from __future__ import annotations

import dataclasses
import logging
import socket
import ssl
import time
from collections.abc import Callable, Sequence
from typing import BinaryIO

import dns.resolver

from postoffice import metrics
from postoffice.accounts import Accounts
from postoffice.acme.ca import CaSettings, Responders
from postoffice.acme.certificate import CertificateInfo
from postoffice.acme.challenges import ChallengeApp, Challenges
from postoffice.acme.files import AcmeFiles
from postoffice.acme.renewal import AcmeService, Backoff
from postoffice.config import Config
from postoffice.delivery.agent import DeliveryAgent, DeliveryResult
from postoffice.delivery.dns import MxResolver
from postoffice.delivery.forward import ForwardAgent
from postoffice.delivery.local import LocalAgent
from postoffice.delivery.mtasts import StsPolicies
from postoffice.delivery.remote import RemoteAgent, RemoteSettings
from postoffice.delivery.tls_policy import TransportSecurity
from postoffice.delivery.tlsrpt import TlsReportStore
from postoffice.dns_resolver import make_resolver
from postoffice.errors import ConfigError
from postoffice.mailauth.arc_sealer import ArcSealer
from postoffice.mailauth.dkim_dns import DnsTxtResolver
from postoffice.mailauth.dkim_signer import Signer
from postoffice.mailauth.forwarding import SenderRewriting
from postoffice.mailauth.inbound import Verifier
from postoffice.mailauth.srs_secrets import SrsSecretError, SrsSecrets
from postoffice.net.certwatch import CertificateWatch
from postoffice.net.imap import imap_server
from postoffice.net.listeners import Security
from postoffice.net.login import Authenticator
from postoffice.net.login_throttle import LoginThrottle
from postoffice.net.pop3_server import Pop3Server
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
from postoffice.spool.ids import ownership
from postoffice.storage import Receiver, StoredMessage
from postoffice.stores import open_stores
from postoffice.tlsrpt.setup import DailyReports, host_signer, report_sender
from postoffice.web.ops import ops_routes
from postoffice.web.server import HttpAddress, HttpServer
from postoffice.web.service import WebService, WebShare
from postoffice.web.toolkit import Toolkit
from postoffice.worker_reports import ReportPublisher, read_reports, report_path, workers_directory

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


def srs_secrets(config: Config) -> SrsSecrets:
    """The SRS secrets of forwarded copies: ``[authentication] srs_secret_file``, which must
    hold one now (ConfigError if not), or ``<data-dir>/srs.secret``, made on first use."""
    given = config.authentication.srs_secret_file is not None
    secrets = SrsSecrets(config.srs_secret_file, create=not given)
    if given:
        try:
            secrets.current()
        except SrsSecretError as exc:
            source = str(config.source) if config.source is not None else None
            raise ConfigError(str(exc), key="authentication.srs_secret_file", path=source) from None
    return secrets


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


def transport_security(
    config: Config, resolver: MxResolver, reports: TlsReportStore | None = None
) -> TransportSecurity | None:
    """MTA-STS (policies cached in <data-dir>/mta-sts) and DANE, as ``[delivery]`` turns them on;
    their failures counted into ``reports`` (RFC 8460)."""
    delivery = config.delivery
    if not (delivery.mta_sts or delivery.dns_validates):
        return None
    sts = None
    if delivery.mta_sts:
        ca_file = str(delivery.tls_ca_file) if delivery.tls_ca_file is not None else None
        context = ssl.create_default_context(cafile=ca_file)
        sts = StsPolicies(resolver, config.data_dir / "mta-sts", context, port=delivery.mta_sts_port)
    return TransportSecurity(resolver, sts, dane=delivery.dns_validates, reports=reports)


def needs_tls(config: Config) -> bool:
    """A certificate is loaded (or made) when a listener will use it.

    Submission, POP3 and HTTPS listeners always do. The MX listener offers STARTTLS with a
    configured certificate, and in MTA mode with a self-signed one (opportunistic TLS between
    servers does not verify certificates, RFC 7435). In capture mode without a certificate it
    offers none: client libraries that upgrade whenever STARTTLS is offered and verify the
    certificate (aiosmtplib does by default) would fail against a self-signed one.
    """
    own_tls = [*config.listeners, *config.pop3_listeners, *config.imap_listeners, *config.http_listeners]
    listening = any(listener.kind not in ("smtp", "http") for listener in own_tls)
    return listening or has_certificate(config) or not config.capture_mode


def has_certificate(config: Config) -> bool:
    """A certificate clients can verify is configured or obtained (not a self-signed one)."""
    return config.tls.cert is not None or config.acme.enabled


def security(config: Config, accounts: Accounts, throttle: LoginThrottle | None = None) -> Security:
    tls = ServerTls.from_config(config) if needs_tls(config) else None
    return Security(
        tls=tls,
        login=Authenticator(accounts, throttle or LoginThrottle.configured(config.auth)),
        starttls_on_smtp=tls is not None and (has_certificate(config) or not config.capture_mode),
        plaintext_auth_on_loopback=config.auth.allow_plaintext_on_loopback,
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
        acme_sockets: Sequence[socket.socket] | None = None,
    ) -> None:
        """``clean_tmp=False`` for a worker: the parent cleaned ``tmp/`` before any received.
        ``web_share``: a worker's part in the web side (None: this process is the whole server).
        ``worker_index``: which worker of several this is (None: the only process).
        ``http_sockets``: the whole server's web listeners, bound before root was given up;
        ``acme_sockets`` the same for ``[listen] acme_http``."""
        self.config = config
        self.metrics = metrics.reset()
        observer = self._observer(observer)
        self.stores = stores = open_stores(config, clean_tmp=clean_tmp)
        self.accounts, self.spool = stores.accounts, stores.spool
        self.metrics.watch_flushes(lambda: stores.flushes)
        self.remote = self._remote_agent()
        self.web: WebService | None = None
        self.http_addresses: list[HttpAddress] = []
        self.acme_addresses: list[HttpAddress] = []
        self.mailboxes = stores.mailboxes
        self.signer = Signer(stores.keys, config.domains, enabled=config.authentication.sign)
        self.srs = SenderRewriting(srs_secrets(config), lambda domain: self.config.is_local_domain(domain))
        agents = self._agents()
        receiver = self._receiver()
        self.scheduler = self._scheduler(agents, clock, worker_index)
        self.security = security(config, self.accounts, LoginThrottle.configured(config.auth, stores.logins))
        self.toolkit = Toolkit(config, self.spool, lambda queued: self.scheduler.submit(queued))
        self.smtp = SmtpServer(
            settings=server_settings(config),
            limits=config.limits,
            policy=Policy(config, self.accounts, mailbox_ok=self._mailbox_ok, srs=self.srs.reverse),
            spool=receiver,
            on_queued=self.scheduler.submit,
            listeners=config.listeners,
            observer=observer,
            security=self.security,
            proxy=config.proxy_protocol,
            signer=self.signer,
            inbound=inbound_authentication(config),
            local_socket=config.local_socket_path if config.local_socket else None,
            chaos=self.toolkit.chaos,
        )
        self._acme(worker_index, acme_sockets)
        self.pop3 = self._pop3(worker_index)
        # IMAP (RFC 9051) over the same mailboxes, if asked for; with workers, worker 0's.
        self.imap = imap_server(config, self.security, self.mailboxes, serve=worker_index in (None, 0))
        self.operations, self.reporter = self._operations(worker_index)
        self.daily_reports = self._daily_reports(clock) if worker_index in (None, 0) else None
        if config.http_listeners:
            self.web = self._web(web_share, http_sockets)

    def _remote_agent(self) -> RemoteAgent:
        """SMTP to other servers: MX routing, MTA-STS and DANE, TLS results counted (RFC 8460)."""
        config = self.config
        resolver = MxResolver(config.delivery.dns)
        self.tls_reports = TlsReportStore(config.data_dir) if config.tls_reporting.send else None
        return RemoteAgent(
            remote_settings(config),
            resolver,
            self.spool,
            transport_security(config, resolver, self.tls_reports),
            tls_reports=self.tls_reports,
            blocking=self.spool.io.run,
        )

    def _observer(self, given: SessionObserver | None) -> SessionObserver | None:
        """Who sees each session's lines: ``given``, or the transcript log if one is configured."""
        self.transcript: TranscriptLog | None = None
        if given is None and self.config.transcript_log is not None:
            self.transcript = TranscriptLog(self.config.transcript_log)
            self.transcript.open()  # an unwritable path is reported now, not at the first session
            return self.transcript
        return given

    def _receiver(self) -> Receiver:
        """Where sessions store what they receive: one local mailbox at once, the rest queued."""
        if not self.config.delivery.local_before_reply:
            return self.spool
        direct = self.stores.direct(on_delivered=self._delivered, on_result=self._on_delivery_result)
        return self.spool if direct is None else direct

    def _acme(self, worker_index: int | None, sockets: Sequence[socket.socket] | None) -> None:
        """Automatic certificates: every process follows ``<data-dir>/acme/cert.pem``; one (the
        only one, or worker 0) orders and renews it and answers the CA's challenges."""
        config, tls = self.config, self.security.tls
        self.certificates: CertificateWatch | None = None
        self.acme: AcmeService | None = None
        self.acme_http: HttpServer | None = None
        if not config.acme.enabled or tls is None:
            return
        files = AcmeFiles(config.acme_dir)
        self.certificates = CertificateWatch(tls, files)
        if worker_index not in (None, 0):
            return
        acme, kinds = config.acme, config.acme_challenges
        ca = CaSettings(acme.directory, config.acme_domains, acme.email, acme.ca_file, kinds)
        responders = Responders(Challenges(), tls.alpn_challenges if "tls-alpn-01" in kinds else None)
        where = [(listener.host, listener.port) for listener in config.acme_listeners]
        self.acme_http = HttpServer(ChallengeApp(responders.http), where, sockets=sockets, kind="acme_http")
        backoff = Backoff(acme.retry_min, acme.retry_max)
        self.acme = AcmeService(ca, files, responders, backoff, on_certificate=self.certificates.check)

    def _pop3(self, worker_index: int | None) -> Pop3Server | None:
        """POP3 (RFC 1939) over the same mailboxes, if asked for; with workers, worker 0's."""
        config = self.config
        if not config.pop3_listeners or worker_index not in (None, 0):
            return None
        return Pop3Server(
            hostname=config.hostname,
            listeners=config.pop3_listeners,
            security=self.security,
            store=self.mailboxes,
            locks=self.stores.maildrop_locks,
            limits=config.limits,
            capture=config.capture_mode,
        )

    def _agents(self) -> dict[Route, DeliveryAgent]:
        """The delivery agents, by route."""
        return {
            # The spool's worker threads: its commits and the deliveries flush side by side.
            Route.LOCAL: LocalAgent(
                self.mailboxes, self.spool, io=self.spool.io, on_delivered=self._delivered
            ),
            Route.REMOTE: self.remote,
            Route.FORWARD: ForwardAgent(
                self.spool,
                self.srs,
                ArcSealer(self.signer, self.config.hostname),
                lambda copy: self.scheduler.submit(copy),
                default_domain=self.config.domains[0] if self.config.domains else self.config.hostname,
            ),
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
            destination_limit=queue.destination_concurrency_limit,
            destination=self._destination,
            notifier=Bouncer(
                self.spool, config.hostname, self._report_recipients, clock=clock, sign=self._sign_report
            ),
            on_result=self._on_delivery_result,
            # Maildir copies are named the same on every attempt, and found again on a retry.
            recovers_copies=(Route.LOCAL,),
            blocking=self.spool.io.run,
            # A shared queue's messages are whichever process holds their lease (pgstore/queue.py).
            owns=ownership(worker_index, config.worker_count) if self.stores.sweep_every is None else None,
            sweep_every=self.stores.sweep_every,
        )

    def _listening(self) -> list[BoundAddress | HttpAddress]:
        pop3 = self.pop3.bound if self.pop3 else ()
        return [*self.smtp.bound, *pop3, *self.imap.bound, *self.http_addresses]

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
            listeners=self._listening,
            sessions=lambda: len(self.smtp.sessions) + self.imap.open_sessions,
            peers=(lambda: read_reports(reports, exclude=0)) if worker_index == 0 else None,
            certificates=self._certificates,
            extra_status=self.toolkit.status,
        )
        self.toolkit.serve_metrics(operations.metrics, serves=worker_index in (None, 0))
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
            tls=self.security.tls.https_context if self.security.tls is not None else None,
            toolkit=self.toolkit,
            logins=self.stores.logins,
        )

    def _certificates(self) -> list[CertificateInfo]:
        """The certificate each TLS listener presents now (one, shared by all of them)."""
        tls = self.security.tls
        return [tls.info] if tls is not None and tls.info is not None else []

    def _sign_report(self, report: BinaryIO, queue_id: str) -> Sequence[bytes]:
        """DKIM-Signature fields for a report from MAILER-DAEMON@hostname (the host name as
        configured now: a reload may change it)."""
        return host_signer(self.signer, self.config.hostname)(report, queue_id)

    def _delivered(self, stored: StoredMessage) -> None:
        if self.web is not None:
            self.web.delivered(stored)

    def _on_delivery_result(
        self, message: QueuedMessage, recipient: Recipient, result: DeliveryResult
    ) -> None:
        self.operations.on_delivery_result(message, recipient, result)
        self.toolkit.delivery_result(message, recipient, result)

    def apply(self, config: Config) -> None:
        """Apply a re-read configuration to new sessions; open sessions keep theirs (SIGHUP).

        Domains, limits, accounts and the host name take effect; listeners, the data
        directory, the PROXY protocol settings, the user, the mail file mode and ``[acme]``
        need a restart and are reported if changed.
        """
        kept: tuple[str, ...] = ("listeners", "data_dir", "proxy_protocol", "user", "group", "mail_file_mode")
        kept += ("acme", "acme_http_listeners", "local_socket", "pop3_listeners", "imap_listeners")
        for name in kept:
            if getattr(config, name) != getattr(self.config, name):
                log.warning("event=reload-ignored key=%s reason=restart-needed", name)
        config = dataclasses.replace(config, **{name: getattr(self.config, name) for name in kept})
        self.config = config
        self.accounts = self.stores.reload_accounts(config)
        self.signer.configure(config.domains, enabled=config.authentication.sign)
        self.smtp.reconfigure(
            settings=server_settings(config),
            limits=config.limits,
            policy=Policy(config, self.accounts, mailbox_ok=self._mailbox_ok, srs=self.srs.reverse),
        )
        log.info("event=reloaded domains=%s", ",".join(config.domains) or "(capture mode)")

    def _mailbox_ok(self, address: str) -> bool:
        return self.mailboxes.mailbox_name(address) is not None  # the store never changes

    def _destination(self, recipient: Recipient) -> str:
        """The scheduler's unit of concurrency: local mailboxes, or one remote destination."""
        if recipient.route is not Route.REMOTE:
            return str(recipient.route.value)
        return "remote:" + self.remote.destination(recipient)

    def _report_recipients(self, sender: str) -> tuple[Recipient, ...]:
        """Where a report (DSN) to ``sender`` goes: where a message to that address would."""
        recipients = Recipients(self.config, self.accounts, mailbox_ok=self._mailbox_ok, srs=self.srs.reverse)
        return report_recipients(recipients, sender)

    async def start(
        self,
        *,
        recover: Sequence[str] | None = None,
        reuse_port: bool = False,
        sockets: Sequence[BoundSocket] | None = None,
        local: socket.socket | None = None,
        pop3_sockets: Sequence[BoundSocket] | None = None,
        imap_sockets: Sequence[BoundSocket] | None = None,
    ) -> Sequence[BoundAddress]:
        """Open the listeners, start recovering, then accept. A worker gets ``recover`` (its share of what a
        previous run left in the queue: all of it or nothing) and listens with ``reuse_port``; ``sockets``
        were bound before root was given up (:mod:`postoffice.runtime.prebound`); ``local`` is the local
        socket a worker shares with the others (None: bound here). The listeners open first, so that a
        taken port (ListenError) is the only thing said: nothing has started yet."""
        logging.getLogger("postoffice").addHandler(self.operations.errors)
        bound = await self.smtp.bind(reuse_port=reuse_port, sockets=sockets, local=local)
        try:
            if self.pop3 is not None:
                bound = [*bound, *await self.pop3.start(sockets=pop3_sockets)]
            bound = [*bound, *await self.imap.start(sockets=imap_sockets)]
            if self.web is not None:
                self.http_addresses = await self.web.start()
            if self.acme_http is not None:
                self.acme_addresses = await self.acme_http.start()
        except BaseException:
            await self.smtp.stop(0)
            if self.pop3 is not None:
                await self.pop3.stop(0)
            await self.imap.stop()
            if self.web is not None:
                await self.web.stop()
            raise
        self.scheduler.begin(recover)  # what a previous run left: loaded in the background
        if self.transcript is not None:
            await self.transcript.start()
        await self.smtp.serve()
        if self.certificates is not None:
            self.certificates.start()
        if self.acme is not None:
            self.acme.start()
        self.toolkit.start(self.web.hub if self.web is not None and self.web.serves else None)
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
        if self.acme is not None:
            await self.acme.stop()
        if self.certificates is not None:
            await self.certificates.stop()
        if self.acme_http is not None:
            await self.acme_http.stop()
        await self.smtp.stop(grace)
        if self.pop3 is not None:
            await self.pop3.stop(grace)
        await self.imap.stop()
        await self.toolkit.stop()
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
        await self.stores.aclose()  # nothing is left to flush: its threads end (a cluster's leases go)

    def reopen_logs(self) -> None:
        """SIGHUP: reopen the transcript log (logrotate has moved it)."""
        if self.transcript is not None:
            self.transcript.reopen()
