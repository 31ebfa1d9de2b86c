"""Several server processes on one machine: a parent that forks workers and watches them.

Untrusted input seen here: none; the parent accepts no connection. It sees the configuration
(operator's) and signals; the mail it reads to keep the web index is parsed by
:mod:`postoffice.web.feed` and the index.

Each worker is a whole server (its own event loop, spool writer, scheduler and delivery) on a
listening socket of its own bound with ``SO_REUSEPORT`` to the same address, so the kernel
spreads incoming connections among them and each process uses its own core (one Python
process cannot use two: the interpreter runs one thread at a time). The workers share the data
directory safely because every message has one owner, named by its queue ID
(:func:`postoffice.spool.ids.owner_of`): a worker makes only IDs it owns for the mail it
accepts, what a previous run left in the queue is listed once, by the parent, before any
worker receives, and shared out by owner, and a worker that looks at the queue again (the
queue command's signals, passed on by the parent) takes up only its own. No message is ever
delivered by two processes at once. The parent keeps the web index for all of them
(:mod:`postoffice.web.feed`); worker 0 alone serves HTTP, on sockets the parent made (so the
parent's banner names them), and announces every worker's deliveries.

The parent holds the data directory's lock (:mod:`postoffice.runtime.pidfile`) for all of them. On
SIGTERM or SIGINT it passes SIGTERM on and waits; SIGHUP it passes on as it is (each worker
re-reads the configuration). If a worker dies unexpectedly, it stops the others and exits with
status 1, and the next start recovers whatever was left in the queue.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import logging
import os
import select
import signal
import socket
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from types import FrameType
from typing import Any

from postoffice.config import Config, Listener
from postoffice.errors import ListenError, PostofficeError
from postoffice.net.server import BoundSocket
from postoffice.spool.ids import owner_of

log = logging.getLogger("postoffice")

# prctl(2) option: the signal a process gets when its parent dies.
_PR_SET_PDEATHSIG = 1
# What signal.signal() returns and takes: the handler to put back.
_Handler = Callable[[int, FrameType | None], Any] | int | signal.Handlers | None
# How long the workers get to start listening.
START_TIMEOUT = 60.0
# How often the parent looks for a worker that ended (and runs the signal handlers that came).
_REAP_POLL = 0.1


@dataclass(frozen=True)
class WorkerRole:
    """What one worker process is told by the parent."""

    index: int
    # Queue IDs left by a previous run that this worker owns and delivers.
    recover: tuple[str, ...]
    # Called once the worker listens.
    ready: Callable[[], None]
    # Its own sockets, bound by the parent before it gave up root; empty: it binds its own.
    sockets: tuple[BoundSocket, ...] = ()
    # Worker 0's POP3 and IMAP sockets, bound by the parent (as root, or so that the banner
    # names their ports); empty: it binds what is configured.
    pop3: tuple[BoundSocket, ...] = ()
    imap: tuple[BoundSocket, ...] = ()


def reserve_listeners(
    listeners: Sequence[Listener], *, reuse_port: bool = True, first: bool = True
) -> tuple[list[socket.socket], tuple[Listener, ...]]:
    """Bind (without listening) every address, so port 0 becomes one port all workers share.

    Returns the reserving sockets, to be closed once the workers listen, and the listeners
    with concrete addresses and ports (in the order of the sockets). OSError names the listener.
    ``first``: the first set of several (with ``reuse_port``), which makes sure that no other
    server has the port already.
    """
    reserved: list[socket.socket] = []
    concrete: list[Listener] = []
    try:
        for listener in listeners:
            try:
                concrete += _reserve(listener, reserved, reuse_port, first)
            except OSError as exc:
                raise ListenError.from_os_error(listener.kind, listener.host, listener.port, exc) from None
    except BaseException:
        for sock in reserved:
            sock.close()
        raise
    return reserved, tuple(concrete)


def _reserve(
    listener: Listener, reserved: list[socket.socket], reuse_port: bool, first: bool
) -> list[Listener]:
    """Bind every address of ``listener`` (appending the sockets to ``reserved``)."""
    concrete: list[Listener] = []
    infos = socket.getaddrinfo(
        listener.host, listener.port, socket.AF_UNSPEC, socket.SOCK_STREAM, 0, socket.AI_PASSIVE
    )
    seen: set[tuple[int, str]] = set()
    for family, kind, proto, _, address in infos:
        host = str(address[0])
        if (family, host) in seen:
            continue
        seen.add((family, host))
        if reuse_port and first and listener.port:
            _bind(socket.socket(family, kind, proto), address, reuse_port=False).close()
        sock = socket.socket(family, kind, proto)
        reserved.append(sock)
        _bind(sock, address, reuse_port=reuse_port)
        concrete.append(Listener(listener.kind, host, sock.getsockname()[1]))
    return concrete


def _bind(sock: socket.socket, address: Any, *, reuse_port: bool) -> socket.socket:
    """Bind ``sock`` as a listener is bound (closing it if that fails).

    Without ``reuse_port`` this is the test that the port is free: Linux lets a socket join a
    port only if every socket on it, the new one too, has SO_REUSEPORT, so a second server of
    several workers would otherwise share a port in use silently, taking half its connections.
    """
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if sock.family == socket.AF_INET6:
            # As asyncio's create_server does, so the workers' sockets can join it.
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(address)
    except BaseException:
        sock.close()
        raise
    return sock


def share_limits(config: Config, count: int) -> Config:
    """``config`` for one of ``count`` workers: the connection limit stays the configured
    total, each worker taking its share; ``workers`` is ``count`` (a re-read "auto" too)."""
    limits = config.limits
    shared = replace(limits, connections=max(1, -(-limits.connections // count)))
    return replace(config, limits=shared, workers=count)


class _Children:
    def __init__(self) -> None:
        self.pids: set[int] = set()
        self.stopping = False

    def signal_all(self, signum: int) -> None:
        for pid in self.pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    def on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.stopping = True
        self.signal_all(signal.SIGTERM)


def supervise(
    config: Config,
    recover: Sequence[str],
    run_worker: Callable[[Config, WorkerRole], int],
    announce: Callable[[Config], None],
    forward: Sequence[int] = (signal.SIGHUP,),
    hangup: Callable[[], None] | None = None,
    sockets: Sequence[tuple[BoundSocket, ...]] = (),
) -> int:
    """Fork ``config.worker_count`` workers running ``run_worker``; the exit status for the CLI.

    ``announce`` is called with the workers' configuration (concrete ports) once they all
    listen; it prints what a single server prints. The signals in ``forward`` are passed on to
    every worker; ``hangup`` is called first on SIGHUP. ``sockets``: one set per worker, bound
    before root was given up (:mod:`postoffice.runtime.prebound`); without them each worker binds its own.
    """
    count = config.worker_count
    reserved, listeners = _workers_sockets(config, sockets)
    worker_config = replace(share_limits(config, count), listeners=listeners)
    children = _Children()
    previous = _handle_signals(children, forward, hangup)
    ready_read, ready_write = os.pipe()
    parent = os.getpid()
    _share_the_heap()

    def fork(index: int) -> None:
        pid = os.fork()
        if pid == 0:  # the worker
            _become_worker(
                parent,
                worker_config,
                forward,
                index,
                tuple(queue_id for queue_id in recover if owner_of(queue_id, count) == index),
                run_worker,
                reserved,
                tuple(sockets[index]) if sockets else (),
                ready_read,
                ready_write,
            )
        children.pids.add(pid)

    try:
        # Worker 0 first, alone: what every worker would fail at (a log file it cannot open, a
        # certificate it cannot load) is then said once, by it, and no other worker starts.
        fork(0)
        started = _wait_ready(ready_read, 1, children)
        for index in range(1, count if started else 1):
            fork(index)
        os.close(ready_write)
        ready_write = -1
        if not (started and _wait_ready(ready_read, count - 1, children)):
            return _stop_early(children)
        for sock in reserved:
            sock.close()
        announce(worker_config)
        return _reap(children)
    finally:
        _clean_up(reserved, (ready_read, ready_write), previous)


def _stop_early(children: _Children) -> int:
    """Stop the workers when one could not start (it said why, in one line: nothing to add)."""
    children.stopping = True
    children.signal_all(signal.SIGTERM)
    _reap(children)
    return 1


def _clean_up(reserved: list[socket.socket], fds: tuple[int, int], previous: dict[int, _Handler]) -> None:
    """The parent's part once the workers have ended (or never started)."""
    for sock in reserved:
        sock.close()
    for fd in fds:
        if fd >= 0:
            with contextlib.suppress(OSError):
                os.close(fd)
    for signum, handler in previous.items():
        signal.signal(signum, handler)


def _share_the_heap() -> None:
    """Keep the objects every worker inherits shared with the parent (copy-on-write), as the
    gc module's documentation advises for fork without exec.

    A collection writes to every object it examines (its reference counts, its links), so the
    first full one in a worker would copy each page of the inherited heap it passes (12 MB of
    an idle worker's, measured: docs/performance.md). ``gc.freeze()`` moves everything alive
    now out of the collector's reach, in every process forked after it and in the parent;
    what each makes after the fork is collected as usual.
    """
    gc.freeze()


def _workers_sockets(
    config: Config, sockets: Sequence[tuple[BoundSocket, ...]]
) -> tuple[list[socket.socket], tuple[Listener, ...]]:
    """Every worker's sockets, and the listeners they are for (concrete ports): bound before
    root was given up, or reserved now."""
    if sockets:
        return [sock for own in sockets for _, sock in own], tuple(listener for listener, _ in sockets[0])
    return reserve_listeners(config.listeners)


def _handle_signals(
    children: _Children, forward: Sequence[int], hangup: Callable[[], None] | None
) -> dict[int, _Handler]:
    """The parent's signal handlers; returns the handlers they replaced, to be put back."""
    previous: dict[int, _Handler] = {
        signum: signal.signal(signum, children.on_signal) for signum in (signal.SIGTERM, signal.SIGINT)
    }
    # SIGHUP (reopen logs, re-read the configuration and certificates) and the queue
    # command's signals are each worker's to act on.

    def pass_on(signum: int, frame: FrameType | None) -> None:
        if signum == signal.SIGHUP and hangup is not None:
            hangup()  # the parent's own part: it logs too (the web index's lines)
        children.signal_all(signum)

    for passed in forward:
        previous[passed] = signal.signal(passed, pass_on)
    return previous


def _become_worker(
    parent: int,
    config: Config,
    forward: Sequence[int],
    index: int,
    recover: tuple[str, ...],
    run_worker: Callable[[Config, WorkerRole], int],
    reserved: list[socket.socket],
    own: tuple[BoundSocket, ...],
    ready_read: int,
    ready_write: int,
) -> None:
    """Run one worker in the child process and leave; never returns."""
    status = 1
    try:
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, signal.SIG_DFL)
        # Until the worker's event loop takes them: a signal passed on early must not kill it.
        for passed in forward:
            signal.signal(passed, signal.SIG_IGN)
        _stop_with_parent(parent)
        os.close(ready_read)
        mine = [sock for _, sock in own]
        for sock in reserved:
            if not any(sock is kept for kept in mine):
                sock.close()

        def ready() -> None:
            os.write(ready_write, b".")

        status = run_worker(config, WorkerRole(index, recover, ready, own))
    except (PostofficeError, OSError) as exc:
        # What one process would say at the command line's boundary: one line, status 1.
        detail = f"{exc.filename}: {exc.strerror}" if isinstance(exc, OSError) and exc.strerror else str(exc)
        print(f"postoffice: {' '.join(detail.split())}", file=sys.stderr)
    except BaseException:
        log.exception("worker=%d status=crashed", index)
    finally:
        logging.shutdown()
        os._exit(status)


def _stop_with_parent(parent: int) -> None:
    """Have the kernel send SIGTERM if the parent dies (prctl PR_SET_PDEATHSIG, Linux).

    A parent killed with SIGKILL cannot stop its workers; without this they would go on
    receiving mail with nobody watching them.
    """
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent:  # it died before the request took effect
        os.kill(os.getpid(), signal.SIGTERM)


def _wait_ready(ready_read: int, count: int, children: _Children) -> bool:
    deadline = time.monotonic() + START_TIMEOUT
    received = 0
    while received < count:
        left = deadline - time.monotonic()
        if left <= 0 or children.stopping:
            return False
        readable, _, _ = select.select([ready_read], [], [], min(left, 0.5))
        if readable:
            data = os.read(ready_read, count)
            if not data:  # every worker is gone (each held the write end)
                return False
            received += len(data)
        pid, code = os.waitpid(-1, os.WNOHANG)
        if pid:
            children.pids.discard(pid)
            if os.waitstatus_to_exitcode(code) != 1:  # 1: it printed why, as one process does
                log.error("worker pid=%d status=exited-before-listening", pid)
            return False
    return True


def _wait_child() -> tuple[int, int]:
    """The next worker to end and its wait status, waiting with signals still handled.

    Once the parent indexes mail it has threads (the index feed, the Maildir watcher's), and
    the kernel may deliver SIGTERM to any of them: a main thread blocked in ``waitpid(2)`` is
    then never interrupted, so the handler that passes SIGTERM on would wait for a worker that
    is never told to stop. Python runs a handler as soon as the main thread runs bytecode
    again, so the wait is a short poll.
    """
    while True:
        pid, code = os.waitpid(-1, os.WNOHANG)
        if pid:
            return pid, code
        time.sleep(_REAP_POLL)


def _reap(children: _Children) -> int:
    """Wait for every worker; 0 only if all ended cleanly after a stop signal."""
    status = 0
    while children.pids:
        pid, code = _wait_child()
        if pid not in children.pids:
            continue
        children.pids.discard(pid)
        clean = os.waitstatus_to_exitcode(code) == 0
        if not children.stopping:
            log.error(
                "worker pid=%d status=exited code=%d: stopping the others",
                pid,
                os.waitstatus_to_exitcode(code),
            )
            children.stopping = True
            children.signal_all(signal.SIGTERM)
            status = 1
        elif not clean:
            status = 1
    return status
