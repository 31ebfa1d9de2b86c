"""A whole capture-mode server in a background thread, on ephemeral loopback ports.

Untrusted input seen here: whatever the application under test sends it (SMTP), handled by the
server as any mail is; and the server's own API answers, read by
:class:`~postoffice.client.api.ApiClient`.

It is the real server (:class:`~postoffice.app.Application`: SMTP, the spool, Maildirs, the
index and the JSON API), so what a test sees is what ``postoffice serve`` would show, started in
a fraction of a second with its data in a directory of the test's.
"""

from __future__ import annotations

import asyncio
import threading
import urllib.parse
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from postoffice.app import Application
from postoffice.client.api import ApiClient, search_query
from postoffice.config import Config, Listener

START_TIMEOUT = 30.0


class CaptureServer:
    """``with CaptureServer(data_dir) as server:`` a running capture server; see the docs'
    testing-toolkit page for what a test does with it."""

    def __init__(self, data_dir: Path, *, hostname: str = "postoffice.test", **settings: Any) -> None:
        self.config = Config(
            hostname=hostname,
            data_dir=data_dir,
            listeners=(Listener("smtp", "127.0.0.1", 0),),
            http_listeners=(Listener("http", "127.0.0.1", 0),),
            **settings,
        )
        self.smtp_host = "127.0.0.1"
        self.smtp_port = 0
        self.api_url = ""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._app: Application | None = None
        self._api: ApiClient | None = None

    def __enter__(self) -> CaptureServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def api(self) -> ApiClient:
        if self._api is None:
            raise RuntimeError("the server is not running")
        return self._api

    def start(self) -> None:
        loop = asyncio.new_event_loop()
        started: Future[Application] = Future()

        async def boot() -> None:
            try:
                app = Application(self.config)
                await app.start()
                started.set_result(app)
            except BaseException as exc:  # the test learns why it could not start
                started.set_exception(exc)

        def run() -> None:
            asyncio.set_event_loop(loop)
            loop.run_until_complete(boot())
            if started.exception() is None:
                loop.run_forever()
            loop.close()

        self._loop = loop
        self._thread = threading.Thread(target=run, name="postoffice-capture", daemon=True)
        self._thread.start()
        app = self._app = started.result(START_TIMEOUT)
        self.smtp_port = app.smtp.bound[0].port
        self.api_url = f"http://127.0.0.1:{app.http_addresses[0].port}"
        self._api = ApiClient(self.api_url)

    def stop(self) -> None:
        loop, app, thread = self._loop, self._app, self._thread
        self._app = self._api = None
        if loop is None or thread is None:
            return
        if app is not None:
            asyncio.run_coroutine_threadsafe(app.stop(grace=2.0), loop).result(START_TIMEOUT)
            loop.call_soon_threadsafe(loop.stop)
        thread.join(START_TIMEOUT)

    # -- what a test asks ----------------------------------------------------------------------

    def wait(
        self,
        *,
        to: str | None = None,
        sender: str | None = None,
        subject: str | None = None,
        query: str | None = None,
        after: int = 0,
        timeout: float = 10.0,
    ) -> dict[str, Any]:
        """The newest message matching every argument given (as GET /api/v1/messages/{id} has
        it: headers, text, html, attachments), waiting up to ``timeout`` seconds for it;
        AssertionError if none came."""
        wanted = search_query(to=to, sender=sender, subject=subject, query=query)
        found = self.api.wait(wanted, after=after, timeout=timeout)
        if found is None:
            raise AssertionError(f"no message matching {wanted or 'anything'!r} within {timeout:g} s")
        return found

    def messages(self, query: str = "", *, limit: int = 500) -> list[dict[str, Any]]:
        """Summaries of the messages matching ``query`` (the web UI's search), newest first."""
        listed = self.api.call("GET", "/api/v1/messages", params={"q": query, "limit": limit})
        return list(listed["messages"])

    def links(self, message: dict[str, Any] | int) -> list[dict[str, Any]]:
        """Every link of the message: ``{"url", "text", "source"}``."""
        return list(self.api.call("GET", f"/api/v1/messages/{_id(message)}/links")["links"])

    def codes(self, message: dict[str, Any] | int) -> list[str]:
        """The one-time codes of the message, in the order they appear."""
        return [
            item["code"] for item in self.api.call("GET", f"/api/v1/messages/{_id(message)}/codes")["codes"]
        ]

    def clear(self) -> None:
        """Delete every captured message."""
        for box in self.api.call("GET", "/api/v1/mailboxes"):
            self.api.call("DELETE", f"/api/v1/mailboxes/{urllib.parse.quote(box['address'])}/messages")

    def chaos(self, *rules: dict[str, Any]) -> None:
        """Fault injection: these rules from now on (none: off). See docs/testing-toolkit.md."""
        self.api.call("PUT", "/api/v1/chaos", body=list(rules))


def _id(message: dict[str, Any] | int) -> int:
    return message if isinstance(message, int) else int(message["id"])
