"""Building the report sender from the configuration, and running it once an hour in a server.

Untrusted input seen here: none directly (see :mod:`postoffice.tlsrpt.sender`).

The timer asks every hour; a report is sent once its UTC day is over, so it goes out in the
first hour of the next day (and at start, for days the server was down through). Each
(day, domain) is claimed once in the count database, so a day's report is sent once however
many processes (``--workers``, ``postoffice tlsrpt send``) ask.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from typing import BinaryIO

from postoffice.accounts import Accounts
from postoffice.config import Config
from postoffice.delivery.tlsrpt import TlsReportStore
from postoffice.dns_resolver import make_resolver
from postoffice.errors import DkimError
from postoffice.mailauth.dkim_signer import Signer, signature_fields
from postoffice.maildir.store import MaildirStore
from postoffice.recipients import Recipients, report_recipients
from postoffice.spool.envelope import QueuedMessage, Recipient
from postoffice.storage import MessageStore
from postoffice.tlsrpt.sender import RecipientsFor, Reporter, ReportSender, ReportSigner, remote_recipients

log = logging.getLogger("postoffice.tlsrpt")

# How often the server looks for finished days to report.
INTERVAL = 3600.0


def reporter(config: Config) -> Reporter:
    """Who we are in the reports: [tls_reporting] organization and contact, or the host name
    and the postmaster address."""
    settings = config.tls_reporting
    first = config.domains[0] if config.domains else config.hostname.lower()
    contact = settings.contact or config.postmaster or f"postmaster@{first}"
    return Reporter(config.hostname, settings.organization or config.hostname, contact)


def report_sender(
    config: Config,
    store: TlsReportStore,
    spool: MessageStore,
    *,
    sign: ReportSigner | None,
    recipients_for: RecipientsFor = remote_recipients,
    submit: Callable[[QueuedMessage], None] | None = None,
    clock: Callable[[], float] = time.time,
) -> ReportSender:
    resolver = make_resolver(config.delivery.dns, timeout=config.authentication.dns_timeout)
    return ReportSender(
        store,
        spool,
        resolver,
        reporter(config),
        sign=sign,
        recipients_for=recipients_for,
        submit=submit,
        ca_file=config.delivery.tls_ca_file,
        clock=clock,
    )


def config_recipients(config: Config) -> RecipientsFor:
    """Where a report to an address goes, resolved as the server resolves it (a local rua
    address goes into its mailbox), for a command that runs without the server."""
    mailboxes = MaildirStore.from_config(config)

    def resolve(address: str) -> tuple[Recipient, ...]:
        recipients = Recipients(
            config,
            Accounts(config.accounts_file),
            mailbox_ok=lambda name: mailboxes.mailbox_name(name) is not None,
        )
        return report_recipients(recipients, address)

    return resolve


def host_signer(signer: Signer, hostname: str) -> ReportSigner:
    """DKIM-Signature fields for a report from our host name, with the keys of the host name or
    the local domain it is under (as the server signs its bounces)."""

    def sign(report: BinaryIO, queue_id: str) -> Sequence[bytes]:
        domain = signer.for_host(hostname)
        if domain is None or not signer.enabled:
            return ()
        try:
            return signature_fields(signer.sign(report, domain, what=f"queue_id={queue_id}"))
        except DkimError as exc:
            log.warning("queue_id=%s event=dkim-not-signed domain=%s reason=%r", queue_id, domain, str(exc))
            return ()

    return sign


class DailyReports:
    """Runs :meth:`ReportSender.send_due` every :data:`INTERVAL` seconds while the server runs."""

    def __init__(self, sender: ReportSender, interval: float = INTERVAL) -> None:
        self.sender = sender
        self._interval = interval
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            try:
                await self.sender.send_due()
            except Exception as exc:  # the boundary: one line, and the next round tries again
                log.error("event=tlsrpt-round-failed reason=%r", str(exc), exc_info=True)
            await asyncio.sleep(self._interval)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
