"""The OpenAPI document: valid OpenAPI 3.1, served as written, and true of the live server.

schemathesis generates requests from the document (valid ones and, in its negative mode,
invalid ones) against a real server holding real mail received over SMTP, and checks every
answer against the document: status codes, content types, response schemas, no 5xx.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from openapi_spec_validator import validate

from conftest import RunningServer
from postoffice.web.openapi import document
from web_helpers import client, make_message, send

pytestmark = pytest.mark.timeout(120)


def test_document_is_valid_openapi() -> None:
    validate(document())


def test_served_document_is_the_document(server: RunningServer) -> None:
    with client(server) as http:
        assert http.get("/api/v1/openapi.json").json() == document()


def test_every_api_route_is_documented(server: RunningServer) -> None:
    from starlette.routing import Route

    from postoffice.web.api import MailApi

    assert server.app.web is not None
    documented = {
        (path, method.upper()) for path, methods in document()["paths"].items() for method in methods
    }
    for route in MailApi(server.app.web.context).routes():
        assert isinstance(route, Route)
        path = route.path.replace("{message_id:int}", "{id}").replace("{number:int}", "{n}")
        path = path.replace("{address:path}", "{address}")
        for method in route.methods or ():
            if method != "HEAD":
                assert (path, method) in documented


@pytest.fixture
def live(server_factory: Callable[..., RunningServer]) -> RunningServer:
    running = server_factory()
    send(running, make_message("fuzz@example.test", "plain"))
    send(
        running,
        make_message(
            "fuzz@example.test",
            "rich",
            html="<p>hi</p>",
            attachments=[("a.bin", "application/octet-stream", b"\x00\x01")],
        ),
    )
    return running


@pytest.fixture
def live_token(live: RunningServer) -> str:
    with client(live) as http:
        token: str = http.get("/api/v1/session").json()["csrf_token"]
    return token


@pytest.fixture
def live_schema(live: RunningServer) -> schemathesis.BaseSchema:
    return schemathesis.openapi.from_url(f"{live.base_url}/api/v1/openapi.json")


schema = schemathesis.pytest.from_fixture("live_schema")


@schema.exclude(path="/api/v1/events").parametrize()
@settings(max_examples=10, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
def test_api_matches_its_document(case: schemathesis.Case, live: RunningServer, live_token: str) -> None:
    if case.headers and "X-CSRF-Token" in case.headers:
        # A real client sends the token it was given; a random one only ever meets 403.
        case.headers["X-CSRF-Token"] = live_token
    case.call_and_validate(base_url=live.base_url)
