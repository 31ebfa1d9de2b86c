"""A client of a running server's JSON API, for ``postoffice wait``, ``postoffice chaos``, the
pytest plugin and the MCP server.

Untrusted input seen here: the answers of whatever listens at the given URL; a body that is not
JSON, or a failure to connect, becomes one :class:`ApiClientError` line.

When the API asks for a login (401) and an address and a password were given (by default from
``POSTOFFICE_ADDRESS`` and ``POSTOFFICE_PASSWORD``), the client logs in once and keeps the
session cookie; calls that change something carry the session's CSRF token.
"""

from __future__ import annotations

import http.cookiejar
import json
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from postoffice.errors import PostofficeError

DEFAULT_API = "http://127.0.0.1:8025"
# The server holds a wait at most this long (web/wait.py MAX_WAIT); longer waits are several.
SERVER_MAX_WAIT = 300.0
# Seconds the connection may take beyond the wait the server was asked to hold.
SLACK = 10.0
MAX_ANSWER = 64 * 1024 * 1024


class ApiClientError(PostofficeError):
    """The API could not be reached, or refused the call; ``status`` is its HTTP status (0: none)."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


def quoted(field: str, value: str) -> str:
    """One search term, ``field:"value"`` with the value's quotes doubled (web/search.py)."""
    return f'{field}:"{value.replace(chr(34), chr(34) * 2)}"'


def search_query(
    *, to: str | None = None, sender: str | None = None, subject: str | None = None, query: str | None = None
) -> str:
    terms = [
        quoted(name, value) for name, value in (("to", to), ("from", sender), ("subject", subject)) if value
    ]
    if query:
        terms.append(query)
    return " ".join(terms)


class ApiClient:
    """Calls to ``base_url``'s ``/api/v1``; each returns the decoded JSON answer."""

    def __init__(
        self,
        base_url: str = DEFAULT_API,
        *,
        address: str | None = None,
        password: str | None = None,
        timeout: float = 10.0,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.address = address if address is not None else os.environ.get("POSTOFFICE_ADDRESS")
        self.password = password if password is not None else os.environ.get("POSTOFFICE_PASSWORD")
        self.timeout = timeout
        self._opener = urllib.request.build_opener(
            urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar())
        )
        self._csrf: str | None = None

    def call(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, Any] | None = None,
        body: Any = None,
        timeout: float | None = None,
    ) -> Any:
        status, answer = self._call(method, path, params, body, timeout)
        if status == 401 and self.address and self.password and path != "/api/v1/login":
            self.login()
            status, answer = self._call(method, path, params, body, timeout)
        if status >= 400:
            error = answer.get("error") if isinstance(answer, dict) else None
            raise ApiClientError(f"{method} {path}: HTTP {status}: {error or 'no error text'}", status)
        return answer

    def login(self) -> None:
        answer = self.call("POST", "/api/v1/login", body={"address": self.address, "password": self.password})
        self._csrf = answer.get("csrf_token") if isinstance(answer, dict) else None

    def _token(self) -> str:
        if self._csrf is None:
            session = self.call("GET", "/api/v1/session")
            self._csrf = str(session.get("csrf_token", "")) if isinstance(session, dict) else ""
        return self._csrf

    def _call(
        self, method: str, path: str, params: dict[str, Any] | None, body: Any, timeout: float | None
    ) -> tuple[int, Any]:
        url = self.base_url + path
        if params:
            url += "?" + urllib.parse.urlencode({k: v for k, v in params.items() if v is not None})
        headers = {"Accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        if method not in ("GET", "HEAD") and path != "/api/v1/login":
            headers["X-CSRF-Token"] = self._token()
        request = urllib.request.Request(url, data=data, headers=headers, method=method)
        try:
            with self._opener.open(request, timeout=timeout or self.timeout) as response:
                return response.status, _decode(response.read(MAX_ANSWER), url)
        except urllib.error.HTTPError as exc:
            with exc:
                return exc.code, _decode(exc.read(MAX_ANSWER), url, strict=False)
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ApiClientError(
                f"cannot reach {self.base_url}: {reason}; is postoffice serving HTTP there?"
            ) from None

    # -- the toolkit's calls -------------------------------------------------------------------

    def newest_id(self) -> int:
        """The highest message id the caller can see (0: none): wait after it for new mail."""
        listed = self.call("GET", "/api/v1/messages", params={"limit": 1})
        messages = listed.get("messages") if isinstance(listed, dict) else None
        return int(messages[0]["id"]) if messages else 0

    def wait(self, query: str = "", *, after: int = 0, timeout: float = 30.0) -> dict[str, Any] | None:
        """The newest message matching ``query`` above id ``after``, waiting up to ``timeout``
        seconds for one; None when none came."""
        deadline = time.monotonic() + timeout
        while True:
            hold = max(0.0, min(deadline - time.monotonic(), SERVER_MAX_WAIT))
            try:
                found = self.call(
                    "GET",
                    "/api/v1/messages/wait",
                    params={"q": query, "after": after, "timeout": f"{hold:.3f}"},
                    timeout=hold + SLACK,
                )
            except ApiClientError as exc:
                if exc.status != 408:
                    raise
                if time.monotonic() >= deadline:
                    return None
                continue
            return found if isinstance(found, dict) else None


def _decode(raw: bytes, url: str, *, strict: bool = True) -> Any:
    if not raw:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        if strict:
            raise ApiClientError(f"{url}: the answer is not JSON") from None
        return None
