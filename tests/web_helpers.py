"""Helpers for the web tests: send mail over SMTP, talk to the HTTP API, wait for conditions."""

from __future__ import annotations

import smtplib
import time
from collections.abc import Callable, Iterable
from email import policy
from email.message import EmailMessage
from typing import Any, TypeVar

import httpx

from conftest import RunningServer

_T = TypeVar("_T")


def make_message(
    to: str,
    subject: str,
    text: str = "hello",
    *,
    sender: str = "Sender <sender@example.org>",
    html: str | None = None,
    attachments: Iterable[tuple[str, str, bytes]] = (),
) -> EmailMessage:
    message = EmailMessage()
    message["From"] = sender
    message["To"] = to
    message["Subject"] = subject
    message.set_content(text)
    if html is not None:
        message.add_alternative(html, subtype="html")
    for name, content_type, data in attachments:
        maintype, _, subtype = content_type.partition("/")
        message.add_attachment(data, maintype=maintype, subtype=subtype, filename=name)
    return message


def send(server: RunningServer, message: EmailMessage, *, to: list[str] | None = None) -> None:
    """Send over SMTP to the server, and wait until it is delivered and indexed."""
    with smtplib.SMTP(server.host, server.port, timeout=10) as client:
        client.send_message(message, to_addrs=to)
    server.index_idle()


def send_with_fields(server: RunningServer, message: EmailMessage, *fields: bytes) -> None:
    """Send ``message`` with header ``fields`` (each a whole field, CRLF-ended) on top, as the
    SMTP side puts its Authentication-Results field; wait until it is delivered and indexed."""
    data = b"".join(fields) + message.as_bytes(policy=policy.SMTP)
    with smtplib.SMTP(server.host, server.port, timeout=10) as client:
        client.sendmail("sender@example.org", [str(message["To"])], data)
    server.index_idle()


def wait_for(condition: Callable[[], _T | None], timeout: float = 10.0, what: str = "condition") -> _T:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def client(server: RunningServer, **kwargs: Any) -> httpx.Client:
    return httpx.Client(base_url=server.base_url, timeout=10.0, **kwargs)


def csrf(http: httpx.Client) -> dict[str, str]:
    return {"X-CSRF-Token": http.get("/api/v1/session").json()["csrf_token"]}


def messages(http: httpx.Client, **params: Any) -> dict[str, Any]:
    response = http.get("/api/v1/messages", params=params)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body
