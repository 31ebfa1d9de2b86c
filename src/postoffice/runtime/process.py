"""Running ``postoffice serve``: one process, or a parent and its workers, until SIGTERM.

Untrusted input seen here: none directly; the :class:`~postoffice.app.Application` it runs
sees the network. Started as root with ``user`` set, every listener is bound first
(:mod:`postoffice.runtime.prebound`) and root is given up before anything else runs.

What a person reads here is one line: ``postoffice: <what failed>`` on standard error with
exit status 1, or the banner (:mod:`postoffice.runtime.banner`) once the server listens.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import signal
import socket
import sqlite3
import sys
from collections.abc import Callable, Sequence

from postoffice import __version__, logs
from postoffice.app import Application, needs_tls
from postoffice.config import Config
from postoffice.errors import ListenError, PostofficeError
from postoffice.net.local_socket import bind_local_socket, remove_local_socket
from postoffice.net.server import BoundAddress, BoundSocket
from postoffice.net.session import name_sessions
from postoffice.net.tls import ServerTls
from postoffice.pg.heartbeat import Heartbeat
from postoffice.runtime import privileges
from postoffice.runtime.banner import banner, listen_failure
from postoffice.runtime.database_wait import Waited, wait_for_database
from postoffice.runtime.loop import event_loop_factory, log_loop_error
from postoffice.runtime.pidfile import FLUSH_SIGNAL, RESCAN_SIGNAL, PidFile
from postoffice.runtime.prebound import Prebound, bind_then_drop
from postoffice.runtime.signals import handle_signals
from postoffice.runtime.workers import WorkerRole, reserve_listeners, share_limits, supervise
from postoffice.spool.files import FileSpool
from postoffice.spool.ids import claim_queue_ids
from postoffice.stores import open_mailboxes
from postoffice.web.service import WebShare
from postoffice.web.workers import WorkersWeb
from postoffice.worker_reports import workers_directory

log = logging.getLogger("postoffice")


def serve(config: Config, *, reload: Callable[[], Config] | None = None) -> int:
    """Run the server until SIGTERM/SIGINT; the exit code for the CLI.

    ``reload`` re-reads the configuration on SIGHUP (a single process; workers keep theirs).
    The pid file is the data directory's lock: one ``serve`` (with its workers) per directory.
    Started as root with ``user`` set, it binds every listener and becomes that user first.
    """
    logs.configure(config.log_format, config.log_file)
    # "auto" is decided once, here: the sockets bound as root and the workers forked agree,
    # and a configuration re-read on SIGHUP keeps the number (it needs a restart).
    config = _decide_workers(config)
    if reload is not None:
        reload = functools.partial(_reload_keeping_workers, reload, config.worker_count)
    pid_file = PidFile(config.data_dir)
    prebound = None
    try:
        prebound = bind_then_drop(config)
        config.data_dir.mkdir(parents=True, exist_ok=True)
        pid_file.acquire()
    except ListenError as exc:  # bound as root: the same one line as an unprivileged start
        print(listen_failure(exc, config), file=sys.stderr)
        return 1
    except (PostofficeError, OSError) as exc:
        if prebound is not None:
            prebound.close()
        detail = f"{exc.filename}: {exc.strerror}" if isinstance(exc, OSError) and exc.strerror else str(exc)
        print(f"postoffice: {detail}", file=sys.stderr)
        return 1
    waited = Waited()
    try:
        if config.clustered:  # the database first: a node that cannot reach it waits, or exits
            waited = wait_for_database(config, prebound.http if prebound is not None else None)
            if waited.exit is not None:
                return waited.exit
        if config.worker_count > 1:
            return _serve_workers(config, reload, prebound, http=waited.http)
        return _run(config, None, reload, prebound=prebound, http=waited.http)
    except ListenError as exc:  # a web listener bound while waiting for the database
        print(listen_failure(exc, config), file=sys.stderr)
        return 1
    finally:
        waited.close()
        if prebound is not None:
            prebound.close()
        pid_file.release()


def _decide_workers(config: Config) -> Config:
    """``config`` with ``workers`` a number (the banner says how many when more than one)."""
    return config if config.workers is not None else dataclasses.replace(config, workers=config.worker_count)


def _reload_keeping_workers(reload: Callable[[], Config], count: int) -> Config:
    return dataclasses.replace(reload(), workers=count)


def _run(
    config: Config,
    worker: WorkerRole | None,
    reload: Callable[[], Config] | None = None,
    web_share: WebShare | None = None,
    prebound: Prebound | None = None,
    acme_sockets: tuple[socket.socket, ...] | None = None,
    local: socket.socket | None = None,
    http: Sequence[socket.socket] | None = None,
) -> int:
    """``http``: the web listeners, bound already (as root, or while waiting for the database)."""
    if http is None and prebound is not None:
        http = prebound.http
    try:
        with (
            contextlib.suppress(KeyboardInterrupt),
            asyncio.Runner(loop_factory=event_loop_factory()) as runner,
        ):
            return runner.run(_serve(config, reload, worker, web_share, prebound, acme_sockets, local, http))
        return 130
    finally:
        # The lines the loop held for its next write (logs.py), before whatever the process
        # says or does next: however the loop ended (stopped, interrupted, crashed).
        logs.flush()


async def _serve(
    config: Config,
    reload: Callable[[], Config] | None,
    worker: WorkerRole | None,
    web_share: WebShare | None = None,
    prebound: Prebound | None = None,
    acme_sockets: tuple[socket.socket, ...] | None = None,
    local: socket.socket | None = None,
    http: Sequence[socket.socket] | None = None,
) -> int:
    # What asyncio catches itself is one log line from here on, never a traceback.
    asyncio.get_running_loop().set_exception_handler(log_loop_error)
    if worker is not None:
        name_sessions(f"w{worker.index}-")  # session=w1-000003: which worker, in one log
        claim_queue_ids(worker.index, config.worker_count)
    try:
        app = Application(
            config,
            clean_tmp=worker is None,
            web_share=web_share,
            worker_index=worker.index if worker is not None else None,
            http_sockets=http,
            acme_sockets=prebound.acme if prebound is not None else acme_sockets,
        )
    except PostofficeError as exc:
        print(f"postoffice: {exc}", file=sys.stderr)
        return 1
    # Handlers go in before anything is announced: a supervisor may signal as soon as it reads
    # the "listening" line, and a SIGTERM then must stop us cleanly, not kill us.
    stop = handle_signals(app, reload)
    bound = await _start_listening(app, config, worker, prebound, local)
    if bound is None:
        return 1
    heartbeat = await _heartbeat(app, config, worker)
    if worker is None or worker.index == 0:
        privileges.warn_if_root(config)  # once the listeners are open: a failure says only why
    # The banner comes last: whoever waits for "listening" may signal the server at once.
    if worker is None:
        banner(config, bound, app.http_addresses, app.security.tls, acme=app.acme_addresses)
    else:
        worker.ready()
    await stop.wait()
    log.info("event=shutdown")
    if heartbeat is not None:
        await heartbeat.stop()
    await app.stop()
    log.info("event=stopped")
    return 0


async def _heartbeat(app: Application, config: Config, worker: WorkerRole | None) -> Heartbeat | None:
    """A cluster node's row in ``nodes``, written by the one process that serves /api/v1/status
    (the only one, or worker 0), whose status and /metrics then show the cluster."""
    database = app.stores.database
    if database is None or (worker is not None and worker.index != 0):
        return None
    # Deliveries deferred while the database was away are retried once it answers again.
    heartbeat = Heartbeat(database, config.node_name, __version__, on_reachable=app.scheduler.flush)
    await heartbeat.start()
    app.operations.cluster = heartbeat
    return heartbeat


async def _start_listening(
    app: Application,
    config: Config,
    worker: WorkerRole | None,
    prebound: Prebound | None,
    local: socket.socket | None = None,
) -> Sequence[BoundAddress] | None:
    """Start ``app``; None (with its one line said, everything stopped) when it cannot listen."""
    try:
        if worker is None:
            if prebound is None:
                return await app.start(local=local)
            return await app.start(
                sockets=prebound.smtp[0],
                pop3_sockets=prebound.pop3 or None,
                imap_sockets=prebound.imap or None,
                local=local,
            )
        return await app.start(
            recover=worker.recover,
            reuse_port=True,
            sockets=worker.sockets or None,
            pop3_sockets=worker.pop3 or None,
            imap_sockets=worker.imap or None,
            local=local,
        )
    except ListenError as exc:
        print(listen_failure(exc, config), file=sys.stderr)
    except OSError as exc:
        print(f"postoffice: {exc.strerror or exc}", file=sys.stderr)
    await app.stop(grace=0)
    return None


def _serve_workers(
    config: Config,
    reload: Callable[[], Config] | None,
    prebound: Prebound | None = None,
    http: Sequence[socket.socket] | None = None,
) -> int:
    # Under the lock and before any worker receives: clear tmp/ of a previous run's debris and
    # list what it left in the queue, for the workers that own it to deliver.
    try:
        recover = FileSpool(config.spool_dir).pending()
        tls, mail = _prepare_for_workers(config, prebound)
        if http is None and prebound is not None:
            http = prebound.http
        web = WorkersWeb(config, open_mailboxes(config), sockets=http)
    except ListenError as exc:
        print(listen_failure(exc, config), file=sys.stderr)
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
        # POP3 and IMAP run in the first worker, on the sockets bound here.
        listeners = (*worker_config.listeners, *(listener for listener, _ in (*mail[0], *mail[1])))
        bound = [BoundAddress(listener.kind, listener.host, listener.port) for listener in listeners]
        banner(config, bound, web.addresses, tls)

    # One local socket for all the workers, bound here (as the server's user, so its file is
    # theirs) and accepted on by each: the kernel gives each connection to one of them.
    local = _bind_local(config)
    run_worker = _worker_runner(reload, web, local, prebound, mail)
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
        print(listen_failure(exc, config), file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"postoffice: {exc.strerror or exc}", file=sys.stderr)
        return 1
    finally:
        if local is not None:
            local.close()
            remove_local_socket(config.local_socket_path)
        web.close()  # every worker has stopped: the parent indexes what they sent last
        _close_all(mail)


_MailSockets = tuple[tuple[BoundSocket, ...], tuple[BoundSocket, ...]]


def _mail_sockets(config: Config, prebound: Prebound | None) -> _MailSockets:
    """The POP3 and IMAP sockets worker 0 serves: bound as root, or here, before any worker
    starts, so that the banner names their ports (port 0 becomes one). ListenError names a
    listener that cannot be bound, with nothing left open."""
    if prebound is not None:
        return prebound.pop3, prebound.imap
    pop3: tuple[BoundSocket, ...] = ()
    if config.pop3_listeners:
        sockets, listeners = reserve_listeners(config.pop3_listeners, reuse_port=False)
        pop3 = tuple(zip(listeners, sockets, strict=True))
    try:
        if not config.imap_listeners:
            return pop3, ()
        sockets, listeners = reserve_listeners(config.imap_listeners, reuse_port=False)
    except BaseException:
        _close_all((pop3, ()))
        raise
    return pop3, tuple(zip(listeners, sockets, strict=True))


def _close_all(mail: _MailSockets) -> None:
    for _, sock in (*mail[0], *mail[1]):
        with contextlib.suppress(OSError):
            sock.close()


def _worker_runner(
    reload: Callable[[], Config] | None,
    web: WorkersWeb,
    local: socket.socket | None,
    prebound: Prebound | None,
    mail: _MailSockets = ((), ()),
) -> Callable[[Config, WorkerRole], int]:
    """What each forked worker runs: a whole server on its share of the configuration."""

    def run_worker(worker_config: Config, role: WorkerRole) -> int:
        if role.index == 0:  # it serves POP3 and IMAP
            role = dataclasses.replace(role, pop3=mail[0], imap=mail[1])
        else:
            _close_all(mail)
        worker_reload = None
        if reload is not None:
            file_reload = reload

            def worker_reload() -> Config:
                return share_limits(file_reload(), worker_config.worker_count)

        if local is None:  # none was made: no worker makes its own in the others' place
            worker_config = dataclasses.replace(worker_config, local_socket=False)
        acme = prebound.acme if prebound is not None and role.index == 0 else None  # it orders certificates
        share = web.share(role.index)
        return _run(worker_config, role, worker_reload, share, acme_sockets=acme, local=local)

    return run_worker


def _bind_local(config: Config) -> socket.socket | None:
    """The workers' local socket, or None (not configured, or it cannot be made: one line)."""
    if not config.local_socket:
        return None
    try:
        return bind_local_socket(config.local_socket_path)
    except OSError as exc:
        log.warning(
            "event=local-socket-failed path=%s error=%r",
            config.local_socket_path,
            exc.strerror or type(exc).__name__,
        )
        return None


def _prepare_for_workers(config: Config, prebound: Prebound | None) -> tuple[ServerTls | None, _MailSockets]:
    """What the workers share is made once, before any of them starts: the certificate (for
    the banner too) and worker 0's POP3 and IMAP sockets."""
    # Imported once, here, so every worker shares the module's pages instead of loading its own.
    event_loop_factory()
    # Workers making a self-signed certificate at the same moment would each write a key the
    # other's certificate lacks.
    tls = ServerTls.from_config(config) if needs_tls(config) else None
    # Reports of a previous run would be added up until the new workers replace them.
    reports = workers_directory(config)
    with contextlib.suppress(FileNotFoundError):
        for stale in reports.iterdir():
            with contextlib.suppress(OSError):
                stale.unlink()
    reports.mkdir(exist_ok=True)
    return tls, _mail_sockets(config, prebound)
