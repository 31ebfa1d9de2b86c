"""The testing toolkit's endpoints over real HTTP: waiting for a message, its links, its codes.

Mail arrives over SMTP (smtplib) at a whole running server; the answers are checked against the
OpenAPI document's schemas.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from typing import Any

import httpx
import jsonschema
import pytest

from conftest import RunningServer
from postoffice.web import extract
from postoffice.web.openapi import document
from web_helpers import client, make_message, send

pytestmark = pytest.mark.timeout(60)


def _valid(body: Any, schema: str) -> None:
    jsonschema.Draft202012Validator({**document(), "$ref": f"#/components/schemas/{schema}"}).validate(body)


def test_wait_answers_at_once_with_the_newest_match(server: RunningServer) -> None:
    send(server, make_message("a@example.org", "Welcome one"))
    send(server, make_message("a@example.org", "Welcome two"))
    send(server, make_message("b@example.org", "Other"))
    with client(server) as http:
        answer = http.get("/api/v1/messages/wait", params={"q": "to:a@example.org subject:welcome"})
        assert answer.status_code == 200, answer.text
        body = answer.json()
        _valid(body, "Message")
        assert body["subject"] == "Welcome two"
        assert body["text"].strip() == "hello"
        newest = body["id"]
        started = time.monotonic()
        late = http.get(
            "/api/v1/messages/wait", params={"q": "subject:welcome", "after": newest, "timeout": "0.3"}
        )
        assert late.status_code == 408
        assert "no matching message" in late.json()["error"]
        assert time.monotonic() - started >= 0.3


def test_wait_holds_until_the_message_arrives(server: RunningServer) -> None:
    with client(server) as http:
        timer = threading.Timer(0.5, send, (server, make_message("c@example.org", "Your code")))
        timer.start()
        started = time.monotonic()
        answer = http.get("/api/v1/messages/wait", params={"q": "to:c@example.org", "timeout": 20})
        timer.join()
    assert answer.status_code == 200, answer.text
    assert answer.json()["subject"] == "Your code"
    assert 0.4 < time.monotonic() - started < 10


@pytest.mark.parametrize(
    ("params", "error"),
    [
        ({"q": "before:yesterday"}, "before:yesterday: write a date"),
        ({"timeout": "soon"}, "timeout must be a number"),
        ({"timeout": "nan"}, "timeout must be a number"),
        ({"after": "-1"}, "after must be a whole number"),
        ({"mailbox": "x"}, "unknown parameter"),
    ],
)
def test_wait_refuses_bad_parameters(server: RunningServer, params: dict[str, str], error: str) -> None:
    with client(server) as http:
        answer = http.get("/api/v1/messages/wait", params=params)
    assert answer.status_code == 400
    assert error in answer.json()["error"]


def test_a_huge_timeout_is_capped_not_refused(server: RunningServer) -> None:
    send(server, make_message("d@example.org", "Here"))
    with client(server) as http:
        answer = http.get("/api/v1/messages/wait", params={"timeout": "100000"})
    assert answer.status_code == 200


CONFIRM_HTML = (
    '<p>Hello! <a href="https://app.example/confirm?token=abc&amp;u=1">Confirm <b>your</b> address</a>'
    ' or <a href="#top">top</a> <a href="javascript:alert(1)">x</a>'
    ' <a href="https://app.example/help">Help</a></p><p>Your verification code is 482913.</p>'
)
CONFIRM_TEXT = (
    "Confirm: https://app.example/confirm?token=abc&u=1\nHelp: https://app.example/help.\n"
    "More at https://app.example/faq, thanks.\nYour verification code is 482913. Order 2024 shipped.\n"
    "Ihr Bestätigungscode: AB12-CD34\n"
)


def test_links_and_codes(server: RunningServer) -> None:
    send(server, make_message("e@example.org", "Confirm", CONFIRM_TEXT, html=CONFIRM_HTML))
    with client(server) as http:
        message_id = http.get("/api/v1/messages").json()["messages"][0]["id"]
        links = http.get(f"/api/v1/messages/{message_id}/links").json()
        codes = http.get(f"/api/v1/messages/{message_id}/codes").json()
        missing = http.get("/api/v1/messages/999999/links")
    _valid(links, "Links")
    _valid(codes, "Codes")
    assert [(x["url"], x["text"], x["source"]) for x in links["links"]] == [
        ("https://app.example/confirm?token=abc&u=1", "Confirm your address", "html"),
        ("https://app.example/help", "Help", "html"),
        ("https://app.example/faq", "", "text"),
    ]
    assert [x["code"] for x in codes["codes"]] == ["482913", "AB12-CD34"]
    assert missing.status_code == 404


def test_wait_needs_a_login_where_the_api_does(server_factory: Any) -> None:
    mta = server_factory(domains=("example.test",))
    answer = httpx.get(f"{mta.base_url}/api/v1/messages/wait", params={"timeout": 0})
    assert answer.status_code == 401


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "postoffice", *args], capture_output=True, text=True, timeout=60, check=False
    )


def test_wait_command_prints_the_message_or_fails_in_one_line(server: RunningServer) -> None:
    send(server, make_message("f@example.org", 'Say "hi"', "body text"))
    found = _cli("wait", "--api", server.base_url, "--to", "f@example.org", "--subject", 'Say "hi"')
    assert found.returncode == 0, found.stderr
    assert json.loads(found.stdout)["subject"] == 'Say "hi"'
    missing = _cli("wait", "--api", server.base_url, "--to", "nobody@example.org", "--timeout", "0.5")
    assert missing.returncode == 1
    assert missing.stdout == ""
    assert missing.stderr == "postoffice: no matching message within 0.5 seconds\n"
    bad = _cli("wait", "--api", server.base_url, "--query", "is:maybe", "--timeout", "1")
    assert bad.returncode == 1
    assert bad.stderr.count("\n") == 1 and "is:maybe" in bad.stderr


def test_codes_in_many_languages_and_in_html_cells() -> None:
    cases = {
        "Ihr Bestätigungscode: AB12-CD34": ["AB12-CD34"],
        "Votre code de vérification : 7788": ["7788"],
        "Tu código de verificación es 551234.": ["551234"],
        "Ваш код: 900111": ["900111"],
        "您的验证码是 556677": ["556677"],
        "123456 is your PIN": ["123456"],
        "Order 2024 shipped. Thanks!": [],
        "Reset: https://x.example/r?token=abc123 now": [],
    }
    for text, expected in cases.items():
        assert [code.code for code in extract.codes(text)] == expected, text
    cell = extract.html_text("<table><tr><td>Code</td><td><b>771234</b></td></tr></table><style>p{}</style>")
    assert cell == "Code\n771234"
    assert [code.code for code in extract.codes(cell)] == ["771234"]
    assert extract.links(
        "", '<area href="https://x.example/map" alt="Map"><a href="mailto:a@x.example">a</a>'
    ) == [
        extract.Link("https://x.example/map", "Map", "html"),
        extract.Link("mailto:a@x.example", "a", "html"),
    ]


def test_a_wait_ends_with_503_when_the_server_stops(server: RunningServer) -> None:
    answers: list[httpx.Response] = []

    def wait() -> None:
        with client(server) as http:
            answers.append(http.get("/api/v1/messages/wait", params={"q": "subject:never", "timeout": 30}))

    waiter = threading.Thread(target=wait)
    waiter.start()
    time.sleep(0.5)  # the request is being held
    server.stop()
    waiter.join(20)
    assert [answer.status_code for answer in answers] == [503]
    assert answers[0].json() == {"error": "the server is stopping; wait again once it is back"}
