"""The OpenAPI document: valid OpenAPI 3.1, served as written, and true of the live server.

schemathesis generates requests from the document (valid ones and, in its negative mode,
invalid ones) against a real server holding real mail received over SMTP, and checks every
answer against the document: status codes, content types, response schemas, no 5xx.
"""

from __future__ import annotations

from collections.abc import Callable

import jsonschema
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from openapi_spec_validator import validate

from conftest import RunningServer
from postoffice.mailauth import results
from postoffice.mailauth.verdicts import DkimVerdict, SpfVerdict
from postoffice.web.openapi import document
from web_helpers import client, make_message, messages, send, send_with_fields

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
    # Checked on arrival: every kind of result, including a DKIM signature with no selector.
    send_with_fields(
        running,
        make_message("fuzz@example.test", "checked"),
        results.header_field(
            running.config.hostname,
            [
                results.spf_result(SpfVerdict("softfail", "example.org")),
                results.dkim_result(DkimVerdict("pass", "example.org", "sel", "abc")),
                results.MethodResult("dkim", "fail", (results.Property("header", "i", "@list.example"),)),
                results.dmarc_result("fail", "example.org", "reject", "reject"),
                results.arc_result("pass", 1, 1),
            ],
        ),
    )
    return running


def test_authentication_results_match_the_document(live: RunningServer) -> None:
    """Both shapes of ``authentication`` (null, and every result present) as the document says."""
    spec = document()
    with client(live) as http:
        listed = messages(http)
        one = http.get(f"/api/v1/messages/{listed['messages'][0]['id']}").json()
    assert [m["authentication"] is None for m in listed["messages"]] == [False, True, True]
    assert one["authentication"]["dkim"][1] == {"result": "fail", "domain": "list.example", "selector": None}
    validator = jsonschema.Draft202012Validator({**spec, "$ref": "#/components/schemas/MessageList"})
    validator.validate(listed)
    jsonschema.Draft202012Validator({**spec, "$ref": "#/components/schemas/Message"}).validate(one)
    broken = {**listed["messages"][0], "authentication": {**one["authentication"], "verdict": "maybe"}}
    assert not validator.is_valid({"total": 1, "messages": [broken]})


@pytest.fixture
def live_token(live: RunningServer) -> str:
    with client(live) as http:
        token: str = http.get("/api/v1/session").json()["csrf_token"]
    return token


@pytest.fixture
def live_schema(live: RunningServer) -> schemathesis.BaseSchema:
    return schemathesis.openapi.from_url(f"{live.base_url}/api/v1/openapi.json")


schema = schemathesis.pytest.from_fixture("live_schema")


# The wait holds each request up to its timeout: fuzzing it would only measure the clock.
@schema.exclude(path="/api/v1/events").exclude(path="/api/v1/messages/wait").parametrize()
@settings(max_examples=10, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
def test_api_matches_its_document(case: schemathesis.Case, live: RunningServer, live_token: str) -> None:
    if case.headers and "X-CSRF-Token" in case.headers:
        # A real client sends the token it was given; a random one only ever meets 403.
        case.headers["X-CSRF-Token"] = live_token
    case.call_and_validate(base_url=live.base_url)
