"""The composition root: builds every part of the server from a :class:`Config` and runs it.

Untrusted input seen here: none directly; this module wires the parts that see it.

The flow (Postfix's split, as modules): SMTP sessions → spool (durable, then 250) → scheduler →
delivery agents (Maildir for local mailboxes, SMTP for other domains), and reports (DSNs) back
into the spool. Only :mod:`postoffice.cli` imports this module.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import signal
import socket
import sqlite3
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from postoffice import logs, metrics, privileges
from postoffice.accounts import Accounts
from postoffice.config import Config, maildir_directory_mode
from postoffice.delivery.agent import DeliveryAgent, DeliveryResult
from postoffice.delivery.direct import DirectReceiver
from postoffice.delivery.dns import MxResolver
from postoffice.delivery.local import LocalAgent
from postoffice.delivery.remote import RemoteAgent, RemoteSettings
from postoffice.errors import ConfigError, ListenError, PostofficeError
from postoffice.maildir.layout import make_mail_root
from postoffice.maildir.store import MaildirStore
from postoffice.net.listeners import Security
from postoffice.net.login import Authenticator
from postoffice.net.login_throttle import LoginThrottle
from postoffice.net.server import BoundAddress, BoundSocket, SmtpServer
from postoffice.net.session import SessionObserver, name_sessions
from postoffice.net.tls import ServerTls
from postoffice.net.transcript import TranscriptLog
from postoffice.operations import Operations
from postoffice.pidfile import FLUSH_SIGNAL, RESCAN_SIGNAL, PidFile
from postoffice.policy import Policy
from postoffice.prebound import Prebound, bind_then_drop
from postoffice.qmgr.bounce import Bouncer
from postoffice.qmgr.scheduler import Scheduler
from postoffice.recipients import Kind, Recipients
from postoffice.smtp.grammar import GrammarError, parse_path
from postoffice.smtp.server import ServerSettings
from postoffice.spool.envelope import QueuedMessage, Recipient, Route
from postoffice.spool.files import FileSpool
from postoffice.spool.ids import claim_queue_ids, owner_of
from postoffice.storage import Receiver, StoredMessage
from postoffice.web.ops import ops_routes
from postoffice.web.server import HttpAddress
from postoffice.web.service import WebService, WebShare
from postoffice.web.workers import WorkersWeb
from postoffice.worker_reports import ReportPublisher, read_reports, report_path
from postoffice.workers import WorkerRole, share_limits, supervise

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
        self.remote = RemoteAgent(remote_settings(config), MxResolver(config.delivery.dns), self.spool)
        self.web: WebService | None = None
        self.http_addresses: list[HttpAddress] = []
        self.mailboxes = mailboxes = MaildirStore.from_config(config)
        agents: dict[Route, DeliveryAgent] = {
            # The spool's worker threads: its commits and the deliveries flush side by side.
            Route.LOCAL: LocalAgent(mailboxes, self.spool, io=self.spool.io, on_delivered=self._delivered),
            Route.REMOTE: self.remote,
        }
        # Where sessions store what they receive: one local mailbox at once, the rest queued.
        receiver: Receiver = self.spool
        if config.delivery.local_before_reply:
            receiver = DirectReceiver(
                self.spool, mailboxes, on_delivered=self._delivered, on_result=self._on_delivery_result
            )
        queue = config.queue
        self.scheduler = Scheduler(
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
            notifier=Bouncer(self.spool, config.hostname, self._report_recipients, clock=clock),
            on_result=self._on_delivery_result,
            # Maildir copies are named the same on every attempt, and found again on a retry.
            recovers_copies=(Route.LOCAL,),
            blocking=self.spool.io.run,
            owns=_ownership(worker_index, config.workers),
        )
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
        )
        # With workers, worker 0 serves the operations endpoints and adds up what the others
        # report once a second (postoffice.worker_reports).
        reports = workers_directory(config)
        self.operations = Operations(
            hostname=config.hostname,
            spool_root=config.spool_dir,
            scheduler=self.scheduler,
            listeners=lambda: self.smtp.bound,
            sessions=lambda: len(self.smtp.sessions),
            peers=(lambda: read_reports(reports, exclude=0)) if worker_index == 0 else None,
        )
        self.reporter: ReportPublisher | None = None
        if worker_index is not None and worker_index > 0:
            index = worker_index
            self.reporter = ReportPublisher(
                report_path(reports, index), lambda: self.operations.report(index)
            )
            # The spool is shared: worker 0 counts its queue for everyone, so the others'
            # reports leave the queue gauge out instead of listing the directories each second.
            self.operations.metrics.watch_queue(dict)
        if config.http_listeners:
            # The web UI and JSON API, with the index kept up to date at each delivery; the
            # operations endpoints (/metrics, /livez, /readyz, /api/v1/status) beside them.
            self.web = WebService(
                config,
                self.accounts,
                mailboxes,
                extra_routes=ops_routes(self.operations),
                share=web_share,
                sockets=http_sockets,
            )

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
        try:
            path, rest = parse_path(f"<{sender}>", utf8=True, allow_null=False, allow_postmaster=False)
        except GrammarError:
            return ()
        if path.mailbox is None or rest:
            return ()
        found = Recipients(self.config, self.accounts, mailbox_ok=self._mailbox_ok).resolve(path.mailbox)
        if found.kind is Kind.RELAY:
            return (Recipient(sender, sender, Route.REMOTE),)
        return (
            *(Recipient(address, sender, Route.LOCAL) for address in found.local),
            *(Recipient(address, sender, Route.REMOTE) for address in found.remote),
        )

    async def start(
        self,
        *,
        recover: Sequence[str] | None = None,
        reuse_port: bool = False,
        sockets: Sequence[BoundSocket] | None = None,
    ) -> Sequence[BoundAddress]:
        """Open the listeners, recover, then accept. A worker gets ``recover`` (its share of
        what a previous run left in the queue: all of it or nothing) and listens with
        ``reuse_port``; ``sockets`` were bound before root was given up (:mod:`postoffice.prebound`).
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
        return bound

    def reload(self, config: Config | None = None) -> None:
        """SIGHUP: re-read the TLS certificate and key, reopen the transcript log (logrotate
        has moved it) and apply ``config`` if given; connections stay up."""
        if self.security.tls is not None:
            self.security.tls.reload()
        self.reopen_logs()
        if config is not None:
            self.apply(config)

    async def stop(self, grace: float = 30.0) -> None:
        self.operations.running = False  # /readyz says so before the listeners close
        await self.smtp.stop(grace)
        if self.reporter is not None:
            await self.reporter.stop()
        await self.scheduler.stop()
        await self.remote.close()
        if self.transcript is not None:
            await self.transcript.stop()
        if self.web is not None:
            await self.web.stop()
        logging.getLogger("postoffice").removeHandler(self.operations.errors)
        await asyncio.to_thread(self.spool.io.close)  # nothing is left to flush: end its threads

    def reopen_logs(self) -> None:
        """SIGHUP: reopen the transcript log (logrotate has moved it)."""
        if self.transcript is not None:
            self.transcript.reopen()


def _web_url(address: HttpAddress) -> str:
    """The web UI's URL for a browser on this machine (a wildcard address means loopback)."""
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(address.host, address.host)
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{address.port}/"


def _banner(
    config: Config, bound: Sequence[BoundAddress], http: Sequence[HttpAddress], tls: ServerTls | None
) -> None:
    mode = (
        "capture mode: every recipient is accepted, nothing is relayed"
        if config.capture_mode
        else ("mail server for " + ", ".join(config.domains))
    )
    print(f"postoffice {config.hostname}: {mode}", flush=True)
    for address in bound:
        print(f"listening {address}", flush=True)
    for web_address in http:
        print(f"listening {web_address}", flush=True)  # the web UI, JSON API and /metrics
    if http:
        # A URL a terminal makes clickable: the first thing a person wants after starting.
        # (The "listening" lines stay "listening KIND HOST:PORT": scripts read them.)
        print(f"web UI  {_web_url(http[0])}", flush=True)
    print(f"data in {config.data_dir} (mail in {config.mail_dir})", flush=True)
    if tls is not None:
        print(f"tls certificate {tls.cert} (re-read on SIGHUP)", flush=True)
    if config.capture_mode and any(not listener.is_loopback for listener in config.listeners):
        log.warning("capture mode on a non-loopback address: anyone who can reach it can file mail here")


def _listen_failure(exc: ListenError, config: Config) -> str:
    """The one line for a listener that cannot listen: what failed, and the option that moves it.

    Mailpit and MailHog listen on 8025 too, so a taken web port is the likeliest first failure.
    """
    flag = f"--{exc.kind} HOST:PORT"
    if config.source is not None:
        flag += f" (or [listen] {exc.kind} in {config.source})"
    if exc.kind == "http":
        flag += ", or --no-http for no web UI"
    return f"postoffice: {exc}; choose another address with {flag}"


def _on_hangup(app: Application, reload: Callable[[], Config] | None) -> None:
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


async def _serve(
    config: Config,
    reload: Callable[[], Config] | None,
    worker: WorkerRole | None,
    web_share: WebShare | None = None,
    prebound: Prebound | None = None,
) -> int:
    if worker is not None:
        name_sessions(f"w{worker.index}-")  # session=w1-000003: which worker, in one log
        claim_queue_ids(worker.index, config.workers)
    try:
        app = Application(
            config,
            clean_tmp=worker is None,
            web_share=web_share,
            worker_index=worker.index if worker is not None else None,
            http_sockets=prebound.http if prebound is not None else None,
        )
    except PostofficeError as exc:
        print(f"postoffice: {exc}", file=sys.stderr)
        return 1
    # Handlers go in before anything is announced: a supervisor may signal as soon as it reads
    # the "listening" line, and a SIGTERM then must stop us cleanly, not kill us.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    loop.add_signal_handler(signal.SIGHUP, _on_hangup, app, reload)
    # `postoffice queue flush` / `hold` / `release` / `delete` (see postoffice.pidfile).
    rescans: set[asyncio.Task[None]] = set()

    def rescan(*, flush: bool) -> None:
        task = loop.create_task(app.scheduler.rescan(flush=flush))
        rescans.add(task)
        task.add_done_callback(rescans.discard)

    loop.add_signal_handler(FLUSH_SIGNAL, lambda: rescan(flush=True))
    loop.add_signal_handler(RESCAN_SIGNAL, lambda: rescan(flush=False))
    bound = await _start_listening(app, config, worker, prebound)
    if bound is None:
        return 1
    if worker is None or worker.index == 0:
        privileges.warn_if_root(config)  # once the listeners are open: a failure says only why
    # The banner comes last: whoever waits for "listening" may signal the server at once.
    if worker is None:
        _banner(config, bound, app.http_addresses, app.security.tls)
    else:
        worker.ready()
    await stop.wait()
    log.info("event=shutdown")
    await app.stop()
    log.info("event=stopped")
    return 0


async def _start_listening(
    app: Application, config: Config, worker: WorkerRole | None, prebound: Prebound | None
) -> Sequence[BoundAddress] | None:
    """Start ``app``; None (with its one line said, everything stopped) when it cannot listen."""
    try:
        if worker is None:
            return await app.start(sockets=prebound.smtp[0] if prebound is not None else None)
        return await app.start(recover=worker.recover, reuse_port=True, sockets=worker.sockets or None)
    except ListenError as exc:
        print(_listen_failure(exc, config), file=sys.stderr)
    except OSError as exc:
        print(f"postoffice: {exc.strerror or exc}", file=sys.stderr)
    await app.stop(grace=0)
    return None


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


def serve(config: Config, *, reload: Callable[[], Config] | None = None) -> int:
    """Run the server until SIGTERM/SIGINT; the exit code for the CLI.

    ``reload`` re-reads the configuration on SIGHUP (a single process; workers keep theirs).
    The pid file is the data directory's lock: one ``serve`` (with its workers) per directory.
    Started as root with ``user`` set, it binds every listener and becomes that user first.
    """
    logs.configure(config.log_format, config.log_file)
    pid_file = PidFile(config.data_dir)
    prebound = None
    try:
        prebound = bind_then_drop(config)
        config.data_dir.mkdir(parents=True, exist_ok=True)
        pid_file.acquire()
    except ListenError as exc:  # bound as root: the same one line as an unprivileged start
        print(_listen_failure(exc, config), file=sys.stderr)
        return 1
    except (PostofficeError, OSError) as exc:
        if prebound is not None:
            prebound.close()
        detail = f"{exc.filename}: {exc.strerror}" if isinstance(exc, OSError) and exc.strerror else str(exc)
        print(f"postoffice: {detail}", file=sys.stderr)
        return 1
    try:
        if config.workers > 1:
            return _serve_workers(config, reload, prebound)
        return _run(config, None, reload, prebound=prebound)
    finally:
        if prebound is not None:
            prebound.close()
        pid_file.release()


def _run(
    config: Config,
    worker: WorkerRole | None,
    reload: Callable[[], Config] | None = None,
    web_share: WebShare | None = None,
    prebound: Prebound | None = None,
) -> int:
    with contextlib.suppress(KeyboardInterrupt), asyncio.Runner(loop_factory=event_loop_factory()) as runner:
        return runner.run(_serve(config, reload, worker, web_share, prebound))
    return 130


def _ownership(worker_index: int | None, count: int) -> Callable[[str], bool] | None:
    """Which queue IDs a worker schedules (None: a single process schedules them all)."""
    if worker_index is None:
        return None
    index = worker_index
    return lambda queue_id: owner_of(queue_id, count) == index


def workers_directory(config: Config) -> Path:
    """Where workers leave their reports for the one serving the operations endpoints."""
    return config.data_dir / "workers"


def _serve_workers(
    config: Config, reload: Callable[[], Config] | None, prebound: Prebound | None = None
) -> int:
    # Under the lock and before any worker receives: clear tmp/ of a previous run's debris and
    # list what it left in the queue, for the workers that own it to deliver.
    try:
        recover = FileSpool(config.spool_dir).pending()
        _prepare_for_workers(config)
        web = WorkersWeb(
            config, MaildirStore.from_config(config), sockets=prebound.http if prebound is not None else None
        )
    except ListenError as exc:
        print(_listen_failure(exc, config), file=sys.stderr)
        return 1
    except (PostofficeError, sqlite3.Error) as exc:
        print(f"postoffice: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"postoffice: {where}{exc.strerror or exc}", file=sys.stderr)
        return 1

    def announce(worker_config: Config) -> None:
        web.start_indexing()
        bound = [
            BoundAddress(listener.kind, listener.host, listener.port) for listener in worker_config.listeners
        ]
        _banner(config, bound, web.addresses, None)

    def run_worker(worker_config: Config, role: WorkerRole) -> int:
        worker_reload = None
        if reload is not None:
            file_reload = reload

            def worker_reload() -> Config:
                return share_limits(file_reload(), worker_config.workers)

        return _run(worker_config, role, worker_reload, web.share(role.index))

    # `postoffice queue flush` and the hold/release/delete commands signal the pid in the pid
    # file, the parent here, which passes them on: each worker looks at the messages it owns.
    try:
        return supervise(
            config,
            recover,
            run_worker,
            announce,
            forward=(signal.SIGHUP, FLUSH_SIGNAL, RESCAN_SIGNAL),
            hangup=logs.reopen,  # logrotate moved the log file: the parent writes to it too
            sockets=prebound.smtp if prebound is not None else (),
        )
    except ListenError as exc:
        print(_listen_failure(exc, config), file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"postoffice: {exc.strerror or exc}", file=sys.stderr)
        return 1
    finally:
        web.close()  # every worker has stopped: the parent indexes what they sent last


def _prepare_for_workers(config: Config) -> None:
    """What the workers share is made once, before any of them starts."""
    # Workers making a self-signed certificate at the same moment would each write a key the
    # other's certificate lacks.
    if needs_tls(config):
        ServerTls.from_config(config)
    # Reports of a previous run would be added up until the new workers replace them.
    reports = workers_directory(config)
    with contextlib.suppress(FileNotFoundError):
        for stale in reports.iterdir():
            with contextlib.suppress(OSError):
                stale.unlink()
    reports.mkdir(exist_ok=True)
