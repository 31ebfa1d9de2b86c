"""Releasing a captured message: it leaves by the outbound route (here a relay host, an
independent aiosmtpd server) without our delivery's Return-Path and Delivered-To fields."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jsonschema
import pytest

from aiosmtpd_peer import Handler, peer_factory  # noqa: F401
from conftest import RunningServer, wait_until
from postoffice.config import DeliverySettings
from postoffice.web.openapi import document
from web_helpers import client, csrf, make_message, messages, send

pytestmark = pytest.mark.timeout(60)


def test_a_released_message_goes_to_the_relay(
    server_factory: Callable[..., RunningServer],
    peer_factory: Any,  # noqa: F811
) -> None:
    relay = peer_factory(Handler())
    server = server_factory(delivery=DeliverySettings(relay_host=("127.0.0.1", relay.port), relay_tls="none"))
    send(server, make_message("alice@example.org", "Release me", sender="Shop <shop@example.org>"))
    with client(server) as http:
        message_id = messages(http)["messages"][0]["id"]
        answer = http.post(
            f"/api/v1/messages/{message_id}/release", json={"to": ["qa@real.example"]}, headers=csrf(http)
        )
    assert answer.status_code == 202, answer.text
    body = answer.json()
    jsonschema.Draft202012Validator({**document(), "$ref": "#/components/schemas/Released"}).validate(body)
    assert (body["from"], body["to"]) == ("shop@example.org", ["qa@real.example"])  # its Return-Path
    wait_until(lambda: len(relay.handler.messages) == 1, what="the relay got it")
    (got,) = relay.handler.messages
    assert (got.mail_from, got.rcpt_tos) == ("shop@example.org", ["qa@real.example"])
    head = got.content.split(b"\r\n\r\n", 1)[0].lower()
    assert b"subject: release me" in head
    assert b"return-path:" not in head and b"delivered-to:" not in head


@pytest.mark.parametrize(
    ("body", "error"),
    [
        ({"to": []}, "to must be a list of 1 to 100 addresses"),
        ({"to": ["not an address"]}, "'not an address' is not an address"),
        ({"to": ["a@b.example"], "from": "x y"}, "'x y' is not an address"),
        ({"to": ["a@b.example"], "cc": []}, 'send {"to"'),
    ],
)
def test_bad_releases_are_400(server: RunningServer, body: dict[str, Any], error: str) -> None:
    send(server, make_message("bob@example.org", "Stay"))
    with client(server) as http:
        message_id = messages(http)["messages"][0]["id"]
        answer = http.post(f"/api/v1/messages/{message_id}/release", json=body, headers=csrf(http))
    assert answer.status_code == 400
    assert error in answer.json()["error"]
