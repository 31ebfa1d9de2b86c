"""Following ACME's certificate file, so that every process presents the newest one.

Untrusted input seen here: none from the network; the file was written by
:mod:`postoffice.acme` (in this process or in worker 0) and is loaded by OpenSSL.

One process orders certificates (the only one, or worker 0 of ``serve --workers N``: the one
with the challenge listener); it saves ``<data-dir>/acme/cert.pem`` and calls :meth:`check`
at once. Every other process finds the new file here within :data:`INTERVAL` (one ``stat``),
which is far inside the weeks a renewed certificate's predecessor stays valid.
"""

from __future__ import annotations

import asyncio
import contextlib

from postoffice.acme.files import AcmeFiles
from postoffice.net.tls import ServerTls

INTERVAL = 5.0


class CertificateWatch:
    """Switches ``tls`` to ACME's certificate whenever ``cert.pem`` is replaced."""

    def __init__(self, tls: ServerTls, files: AcmeFiles, interval: float = INTERVAL) -> None:
        self.tls = tls
        self.files = files
        self.interval = interval
        # What is loaded now; a file that fails to load is not tried again until it changes.
        self._seen = files.signature() if tls.source == "acme" else None
        self._task: asyncio.Task[None] | None = None

    def check(self) -> None:
        signature = self.files.signature()
        if signature is None or signature == self._seen or not self.files.key.is_file():
            return
        self._seen = signature
        self.tls.use(self.files.cert, self.files.key, "acme")

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._follow(), name="postoffice-certwatch")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _follow(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            self.check()
