"""Webhooks: a real HTTP receiver gets a signed POST per event, retried while it fails, and
still after a restart of the server; bad ``[[webhooks]]`` entries are refused one line each."""

from __future__ import annotations

import hashlib
import hmac
import json
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest

from conftest import RunningServer, wait_until
from postoffice.config import Webhook, check_config
from postoffice.delivery.agent import PermFail
from postoffice.smtp import replies
from postoffice.spool.envelope import Envelope, QueuedMessage, Recipient, Route
from web_helpers import client, csrf, make_message, messages, send

pytestmark = pytest.mark.timeout(60)

SECRET = "s3cret"


@dataclass
class Receiver:
    port: int
    answers: list[int] = field(default_factory=list)  # statuses to give first; then 200
    posts: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    server: HTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def start(self) -> None:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                status = owner.answers.pop(0) if owner.answers else 200
                if status == 200:
                    owner.posts.append((dict(self.headers), body))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = HTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(body) for _, body in self.posts]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    found = Receiver(_free_port())
    yield found
    found.stop()


def test_a_signed_post_per_message_and_deletion(
    server_factory: Callable[..., RunningServer], receiver: Receiver
) -> None:
    receiver.start()
    server = server_factory(webhooks=(Webhook(url=receiver.url, secret=SECRET),))
    send(server, make_message("alice@example.org", "Hello hooks"))
    wait_until(lambda: len(receiver.posts) == 1, what="a POST")
    headers, body = receiver.posts[0]
    assert (
        headers["X-Postoffice-Signature"]
        == "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    )
    event = json.loads(body)
    assert (event["event"], event["data"]["subject"]) == ("message.received", "Hello hooks")
    assert headers["X-Postoffice-Event"] == "message.received"
    assert headers["X-Postoffice-Event-Id"] == event["id"]
    with client(server) as http:
        message_id = messages(http)["messages"][0]["id"]
        assert http.delete(f"/api/v1/messages/{message_id}", headers=csrf(http)).status_code == 204
    wait_until(lambda: len(receiver.posts) == 2, what="the deletion's POST")
    assert receiver.events()[1]["event"] == "message.deleted"
    assert receiver.events()[1]["data"]["id"] == message_id


def test_a_failing_receiver_is_retried(
    server_factory: Callable[..., RunningServer], receiver: Receiver
) -> None:
    receiver.answers = [500]
    receiver.start()
    server = server_factory(webhooks=(Webhook(url=receiver.url, events=("message.received",)),))
    send(server, make_message("bob@example.org", "Retried"))
    wait_until(lambda: len(receiver.posts) == 1, timeout=15, what="the POST after a 500")
    assert "X-Postoffice-Signature" not in receiver.posts[0][0]  # no secret: unsigned
    with client(server) as http:
        state = http.get("/api/v1/status").json()["webhooks"]
        assert (state["retried"], state["delivered"], state["pending"]) == (1, 1, 0)
        assert state["webhooks"] == [{"url": receiver.url, "events": ["message.received"]}]
        assert 'postoffice_webhook_deliveries_total{outcome="retry"} 1.0' in http.get("/metrics").text


def test_deliveries_survive_a_restart(
    server_factory: Callable[..., RunningServer], receiver: Receiver, tmp_path: Path
) -> None:
    hooks = (Webhook(url=receiver.url, secret=SECRET),)
    first = server_factory(webhooks=hooks, data_dir=tmp_path / "data")
    send(first, make_message("carol@example.org", "While down"))
    wait_until(lambda: any((tmp_path / "data" / "webhooks").glob("*.json")), what="a queued delivery")
    first.stop()
    receiver.start()
    server_factory(webhooks=hooks, data_dir=tmp_path / "data")
    wait_until(lambda: len(receiver.posts) == 1, timeout=15, what="the POST after the restart")
    assert receiver.events()[0]["data"]["subject"] == "While down"
    wait_until(lambda: not any((tmp_path / "data" / "webhooks").glob("*.json")), what="an empty queue")


def test_a_final_delivery_failure_is_an_event(
    server_factory: Callable[..., RunningServer], receiver: Receiver
) -> None:
    receiver.start()
    server = server_factory(webhooks=(Webhook(url=receiver.url, events=("delivery.failed",)),))
    queued = QueuedMessage("Q1", Envelope("sender@example.org", (), 0.0), 10)
    recipient = Recipient("dave@example.org", "dave@example.org", Route.LOCAL)

    async def fail() -> None:
        server.app._on_delivery_result(queued, recipient, PermFail(recipient, replies.USER_UNKNOWN))

    server.call(fail())
    wait_until(lambda: len(receiver.posts) == 1, what="a delivery.failed POST")
    event = receiver.events()[0]
    assert event["event"] == "delivery.failed"
    assert event["data"]["recipient"] == "dave@example.org"
    assert event["data"]["reply"].startswith("550")


@pytest.mark.parametrize(
    ("text", "error"),
    [
        (
            '[[webhooks]]\nurl = "ftp://x.example"\n',
            "webhooks.url: 'ftp://x.example' is not an http:// or https:// URL",
        ),
        (
            '[[webhooks]]\nurl = "http://x.example"\nevents = ["mail"]\n',
            "webhooks.events: 'mail' is not an event",
        ),
        ('[[webhooks]]\nsecret = "x"\n', "webhooks.url: each [[webhooks]] needs a url"),
        ('[webhooks]\nurl = "http://x.example"\n', "webhooks: expected tables written [[webhooks]]"),
    ],
)
def test_bad_webhooks_are_refused(tmp_path: Path, text: str, error: str) -> None:
    path = tmp_path / "postoffice.toml"
    path.write_text(text)
    (problem,) = check_config(path)
    assert error in problem
