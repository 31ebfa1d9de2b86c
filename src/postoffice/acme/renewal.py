"""When to order a certificate, and what happens when it fails: the renewal schedule.

Untrusted input seen here: none directly; the order (:mod:`postoffice.acme.order`) talks to
the CA, in a thread of its own so the event loop never waits on the network.

A certificate is ordered at start when there is none (or it does not cover the configured
names), and then at two thirds of its lifetime. A failed attempt is one log line, and the next
comes after ``retry_min``, doubling up to ``retry_max`` (exponential backoff, as certbot and
Let's Encrypt's integration guide ask); the certificate in use stays until a new one is saved,
so a CA that is down or a challenge that fails costs nothing but the retry.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from postoffice.acme.ca import CaSettings, OrderError, Responders
from postoffice.acme.certificate import CertificateInfo, certificate_info, read_certificate_info
from postoffice.acme.files import AcmeFiles

log = logging.getLogger("postoffice.acme")

_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class Backoff:
    """The waits after failed attempts: ``first``, doubled each time, at most ``most``."""

    first: float
    most: float

    def after(self, failures: int) -> float:
        return min(self.most, self.first * 2.0 ** max(0, failures - 1))


class AcmeService:
    """Keeps ``<data-dir>/acme/cert.pem`` valid; ``on_certificate`` is called (on the loop)
    after each new one is saved."""

    def __init__(
        self,
        ca: CaSettings,
        files: AcmeFiles,
        challenges: Responders,
        backoff: Backoff,
        on_certificate: Callable[[], None],
    ) -> None:
        self.ca = ca
        self.files = files
        self.challenges = challenges
        self.backoff = backoff
        self._on_certificate = on_certificate
        self._task: asyncio.Task[None] | None = None
        self.failures = 0

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="postoffice-acme")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def current(self) -> CertificateInfo | None:
        return read_certificate_info(self.files.cert, "acme") if self.files.has_certificate() else None

    def due_in(self, now: datetime.datetime) -> float:
        """Seconds until the next order: 0 without a certificate from the configured CA for
        every configured name."""
        info = self.current()
        if info is None or set(self.ca.domains) - set(info.names):
            return 0.0
        if self.files.ordered_from() != self.ca.directory:
            return 0.0
        return max(0.0, (info.renew_at() - now).total_seconds())

    async def _run(self) -> None:
        while True:
            wait = self.due_in(datetime.datetime.now(datetime.UTC))
            if wait > 0:
                log.info("event=acme-renewal-scheduled in=%ds names=%s", wait, ",".join(self.ca.domains))
                await asyncio.sleep(wait)
            try:
                renewed = await self._attempt()
            except Exception:  # a bug: one line with its traceback (logs.py), then the backoff
                log.exception("event=acme-error names=%s", ",".join(self.ca.domains))
                renewed = False
            if renewed:
                self.failures = 0
                continue
            self.failures += 1
            await asyncio.sleep(self.backoff.after(self.failures))

    async def _attempt(self) -> bool:
        """One order; True once the new certificate is saved and announced."""
        log.info("event=acme-order names=%s directory=%s", ",".join(self.ca.domains), self.ca.directory)
        try:
            info = await _in_thread(self._order)
        except OrderError as exc:
            retry = self.backoff.after(self.failures + 1)
            log.warning(
                "event=acme-failed names=%s retry_in=%ds reason=%r: the current certificate stays in use",
                ",".join(self.ca.domains),
                retry,
                str(exc),
            )
            return False
        log.info(
            "event=acme-issued names=%s not_after=%s issuer=%r",
            ",".join(info.names),
            info.not_after.isoformat(),
            info.issuer,
        )
        self._on_certificate()
        return True

    def _order(self) -> CertificateInfo:
        """In the ACME thread: order, check and save the certificate."""
        from postoffice.acme.order import obtain  # the ACME library, only once it is needed

        chain = obtain(self.ca, self.files, self.challenges)
        try:
            info = certificate_info(chain, "acme", str(self.files.cert))
        except ValueError:
            raise OrderError("the CA sent a chain that is not a PEM certificate") from None
        try:
            self.files.save_certificate(chain, self.ca.directory)
        except OSError as exc:
            raise OrderError(f"cannot save {self.files.cert}: {exc.strerror or exc}") from None
        return info


async def _in_thread(work: Callable[[], _T]) -> _T:
    """``work()`` in a daemon thread: a stop does not wait for a CA that does not answer (the
    default executor would hold the process's exit until the request timed out)."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[_T] = loop.create_future()

    def settle(result: _T | None, error: BaseException | None) -> None:
        if future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)  # type: ignore[arg-type]

    def run() -> None:
        try:
            result = work()
        except BaseException as exc:  # handed to the awaiting task, which decides
            outcome: tuple[_T | None, BaseException | None] = (None, exc)
        else:
            outcome = (result, None)
        # The server may have stopped meanwhile: then nobody waits for the outcome.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(settle, *outcome)

    threading.Thread(target=run, name="postoffice-acme", daemon=True).start()
    return await future
