"""The HTTP-01 challenge responder (RFC 8555 §8.3): ``/.well-known/acme-challenge/<token>``.

Untrusted input seen here: HTTP requests from anyone on port 80 (the CA's validation servers
among them), parsed by uvicorn (h11). Only a GET or HEAD of a token published at this moment
is answered with its key authorization; everything else is a 404 with an empty body, so the
listener tells a scanner nothing and serves nothing else.
"""

from __future__ import annotations

import re
import threading

from starlette.types import Receive, Scope, Send

PREFIX = "/.well-known/acme-challenge/"
# RFC 8555 §8.3: the token is base64url (RFC 4648 §5) without padding.
_TOKEN = re.compile(r"[A-Za-z0-9_-]{1,256}")


class Challenges:
    """Tokens being validated and their key authorizations; shared by the ACME thread (which
    publishes) and the event loop (which answers)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._answers: dict[str, bytes] = {}

    def publish(self, token: str, key_authorization: str) -> None:
        with self._lock:
            self._answers[token] = key_authorization.encode("ascii")

    def withdraw(self, token: str) -> None:
        with self._lock:
            self._answers.pop(token, None)

    def answer(self, path: str) -> bytes | None:
        if not path.startswith(PREFIX):
            return None
        token = path[len(PREFIX) :]
        if not _TOKEN.fullmatch(token):
            return None
        with self._lock:
            return self._answers.get(token)


class ChallengeApp:
    """The ASGI application of the ``[listen] acme_http`` listener."""

    def __init__(self, challenges: Challenges) -> None:
        self.challenges = challenges

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        answer = None
        if scope["method"] in ("GET", "HEAD"):
            answer = self.challenges.answer(scope["path"])
        status, body = (200, answer) if answer is not None else (404, b"")
        headers = [
            (b"content-type", b"application/octet-stream"),
            (b"content-length", str(len(body)).encode()),
        ]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body if scope["method"] != "HEAD" else b""})
