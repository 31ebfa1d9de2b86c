"""The JSON API over real HTTP, against a server that received its mail over SMTP.

Each test starts the whole server (SMTP and HTTP on ephemeral loopback ports), sends mail with
smtplib, and then reads, searches, flags and deletes it with httpx, checking the Maildir on
disk too: the Maildirs stay the truth.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import smtplib
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from conftest import RunningServer
from postoffice.accounts import Accounts
from web_helpers import client, csrf, make_message, messages, send, wait_for

pytestmark = pytest.mark.timeout(30)


def maildir_files(server: RunningServer, address: str) -> list[Path]:
    local, _, domain = address.partition("@")
    box = server.config.mail_dir / domain / local
    return sorted([*box.joinpath("new").iterdir(), *box.joinpath("cur").iterdir()])


def test_mailboxes_and_messages_newest_first(server: RunningServer) -> None:
    for number in range(3):
        send(server, make_message("alice@example.test", f"message {number}"))
    send(server, make_message("bob@example.test", "for bob"))
    with client(server) as http:
        boxes = http.get("/api/v1/mailboxes").json()
        assert boxes == [
            {"address": "alice@example.test", "total": 3, "unread": 3},
            {"address": "bob@example.test", "total": 1, "unread": 0 + 1},
        ]
        page = messages(http, mailbox="alice@example.test")
        assert page["total"] == 3
        assert [m["subject"] for m in page["messages"]] == ["message 2", "message 1", "message 0"]
        first = page["messages"][0]
        assert first["from"] == "Sender <sender@example.org>"
        assert first["to"] == "alice@example.test"
        assert first["read"] is False and first["has_attachments"] is False
        assert first["size"] == maildir_files(server, "alice@example.test")[-1].stat().st_size
        # Mailbox names are case-insensitive, as delivery treats them.
        assert messages(http, mailbox="Alice@EXAMPLE.test")["total"] == 3
        # No mailbox: everything this caller may see (capture mode on loopback: all).
        assert messages(http)["total"] == 4
        # Paging.
        second = messages(http, mailbox="alice@example.test", limit=1, offset=1)
        assert second["total"] == 3 and [m["subject"] for m in second["messages"]] == ["message 1"]


def test_list_names_the_mailbox_and_a_one_line_snippet(server: RunningServer) -> None:
    send(
        server,
        make_message("ann@example.test", "plain", "Hello Ann,\n\n  your   order\t#42\r\nhas shipped.\n"),
    )
    html_only = make_message("bob@example.test", "html only")
    html_only.set_content("<style>p {color: red}</style><p>Big <b>news</b>&amp; more</p>", subtype="html")
    send(server, html_only)
    send(server, make_message("bob@example.test", "long", "word " * 500))
    send(server, make_message("bob@example.test", "empty", "\n"))
    with client(server) as http:
        listed = {m["subject"]: m for m in messages(http)["messages"]}
        assert listed["plain"]["mailbox"] == "ann@example.test"
        assert listed["plain"]["snippet"] == "Hello Ann, your order #42 has shipped."
        assert listed["html only"]["mailbox"] == "bob@example.test"
        assert listed["html only"]["snippet"] == "Big news& more"
        assert listed["long"]["snippet"] == ("word " * 40)[:200].rstrip()
        assert listed["empty"]["snippet"] == ""
        # One message says the same as its row in the list.
        one = http.get(f"/api/v1/messages/{listed['plain']['id']}").json()
        assert one["snippet"] == listed["plain"]["snippet"]


def test_one_message_with_html_text_headers_and_attachments(server: RunningServer) -> None:
    message = make_message(
        "carol@example.test",
        "Quarterly numbers",
        "plain text version",
        html="<p>Hello <b>Carol</b><script>alert(1)</script><img src=x onerror=alert(2)></p>",
        attachments=[("report.pdf", "application/pdf", b"%PDF-1.4 fake"), ("notes.txt", "text/plain", b"n")],
    )
    message["X-Custom"] = "yes"
    send(server, message)
    with client(server) as http:
        summary = messages(http)["messages"][0]
        assert summary["has_attachments"] is True
        detail = http.get(f"/api/v1/messages/{summary['id']}").json()
        assert detail["text"].strip() == "plain text version"
        assert "<b>Carol</b>" in detail["html"]
        assert "script" not in detail["html"] and "onerror" not in detail["html"]
        assert {"name": "X-Custom", "value": "yes"} in detail["headers"]
        assert [(a["name"], a["content_type"], a["size"]) for a in detail["attachments"]] == [
            ("report.pdf", "application/pdf", 13),
            ("notes.txt", "text/plain", 1),
        ]
        pdf = http.get(detail["attachments"][0]["url"])
        assert pdf.status_code == 200 and pdf.content == b"%PDF-1.4 fake"
        assert pdf.headers["content-disposition"].startswith('attachment; filename="report.pdf"')
        assert pdf.headers["x-content-type-options"] == "nosniff"
        assert http.get(f"/api/v1/messages/{summary['id']}/attachments/2").status_code == 404

        raw = http.get(f"/api/v1/messages/{summary['id']}/raw")
        assert raw.headers["content-type"] == "message/rfc822"
        assert raw.content == maildir_files(server, "carol@example.test")[0].read_bytes()


def test_message_html_document_is_locked_down(server: RunningServer) -> None:
    send(
        server,
        make_message("dan@example.test", "html", html='<p>hi<img src="https://example.org/t.png"></p>'),
    )
    with client(server) as http:
        message_id = messages(http)["messages"][0]["id"]
        assert http.get(f"/api/v1/messages/{message_id}").json()["remote_content"] is True
        page = http.get(f"/api/v1/messages/{message_id}/html")
        policy = page.headers["content-security-policy"]
        assert "default-src 'none'" in policy and "sandbox" in policy
        assert "script-src" not in policy and "https:" not in policy
        assert "img-src data: cid:;" in policy
        remote = http.get(f"/api/v1/messages/{message_id}/html", params={"remote": "1"})
        assert "img-src data: cid: https:;" in remote.headers["content-security-policy"]
        # Text-only messages have no HTML document.
        send(server, make_message("dan@example.test", "text only"))
        text_id = messages(http, q="subject:text")["messages"][0]["id"]
        assert http.get(f"/api/v1/messages/{text_id}/html").status_code == 404


def test_mark_read_and_unread_uses_maildir_flags(server: RunningServer) -> None:
    send(server, make_message("erin@example.test", "flag me"))
    (path,) = maildir_files(server, "erin@example.test")
    assert path.parent.name == "new"
    with client(server) as http:
        message_id = messages(http)["messages"][0]["id"]
        response = http.patch(f"/api/v1/messages/{message_id}", json={"read": True}, headers=csrf(http))
        assert response.status_code == 200 and response.json()["read"] is True
        (path,) = maildir_files(server, "erin@example.test")
        assert path.parent.name == "cur" and path.name.endswith(":2,S")
        assert http.get("/api/v1/mailboxes").json()[0]["unread"] == 0
        assert messages(http, q="is:read")["total"] == 1
        http.patch(f"/api/v1/messages/{message_id}", json={"read": False}, headers=csrf(http))
        (path,) = maildir_files(server, "erin@example.test")
        assert path.parent.name == "cur" and path.name.endswith(":2,")
        assert messages(http, q="is:unread")["total"] == 1


def test_index_follows_a_file_another_reader_moved(server: RunningServer) -> None:
    """mutt reads the message and flags it (new/ -> cur/ with :2,FS): the API still finds it."""
    send(server, make_message("fay@example.test", "moved behind our back", "body"))
    (path,) = maildir_files(server, "fay@example.test")
    moved = path.parent.parent / "cur" / (path.name + ":2,FS")
    os.rename(path, moved)
    with client(server) as http:
        message_id = messages(http)["messages"][0]["id"]
        assert http.get(f"/api/v1/messages/{message_id}").json()["text"].strip() == "body"
        assert http.get(f"/api/v1/messages/{message_id}/raw").content == moved.read_bytes()
        # Marking unread keeps the other reader's flag (F, flagged).
        http.patch(f"/api/v1/messages/{message_id}", json={"read": False}, headers=csrf(http))
        (now,) = maildir_files(server, "fay@example.test")
        assert now.name.endswith(":2,F")
        # Gone behind our back: 404, and the index forgets it.
        now.unlink()
        assert http.get(f"/api/v1/messages/{message_id}").status_code == 404
        assert messages(http)["total"] == 0


def test_delete_one_and_delete_all(server: RunningServer) -> None:
    for number in range(3):
        send(server, make_message("gus@example.test", f"n{number}"))
    with client(server) as http:
        page = messages(http)
        victim = page["messages"][0]["id"]
        assert http.delete(f"/api/v1/messages/{victim}").status_code == 403  # no CSRF token
        assert http.delete(f"/api/v1/messages/{victim}", headers=csrf(http)).status_code == 204
        assert len(maildir_files(server, "gus@example.test")) == 2
        assert http.get(f"/api/v1/messages/{victim}").status_code == 404
        assert http.delete(f"/api/v1/messages/{victim}", headers=csrf(http)).status_code == 404
        cleared = http.delete("/api/v1/mailboxes/gus@example.test/messages", headers=csrf(http))
        assert cleared.json() == {"deleted": 2}
        assert maildir_files(server, "gus@example.test") == []
        assert http.get("/api/v1/mailboxes").json() == [
            {"address": "gus@example.test", "total": 0, "unread": 0}
        ]
        missing = http.delete("/api/v1/mailboxes/nobody@example.test/messages", headers=csrf(http))
        assert missing.status_code == 404


def test_search_over_http(server: RunningServer) -> None:
    send(server, make_message("hal@example.test", "Invoice 42", "please pay", sender="billing@shop.example"))
    send(server, make_message("hal@example.test", "Lunch?", "pizza at noon", sender="friend@example.org"))
    send(
        server,
        make_message(
            "hal@example.test", "Photos", "see attached", attachments=[("a.png", "image/png", b"x")]
        ),
    )
    with client(server) as http:

        def subjects(q: str) -> list[str]:
            return [m["subject"] for m in messages(http, q=q)["messages"]]

        assert subjects("pizza") == ["Lunch?"]
        assert subjects("piz") == ["Lunch?"]  # prefix
        assert subjects("from:billing") == ["Invoice 42"]
        assert subjects("-from:billing -from:friend") == ["Photos"]
        assert subjects("has:attachment") == ["Photos"]
        assert subjects('subject:"invoice 42"') == ["Invoice 42"]
        assert subjects("to:hal@example.test larger:1") == ["Photos", "Lunch?", "Invoice 42"]
        assert subjects("before:2000-01-01") == []
        bad = http.get("/api/v1/messages", params={"q": "before:yesterday"})
        assert bad.status_code == 400 and "before:yesterday" in bad.json()["error"]


@pytest.mark.parametrize(
    "params",
    [
        {"limit": "0"},
        {"limit": "501"},
        {"limit": "x"},
        {"offset": "-1"},
        {"offset": "1e3"},
        {"q": "is:maybe"},
    ],
)
def test_bad_parameters_are_400(server: RunningServer, params: dict[str, str]) -> None:
    with client(server) as http:
        response = http.get("/api/v1/messages", params=params)
        assert response.status_code == 400 and response.json()["error"]


def test_bad_bodies(server: RunningServer) -> None:
    send(server, make_message("ivy@example.test", "x"))
    with client(server) as http:
        message_id = messages(http)["messages"][0]["id"]
        url = f"/api/v1/messages/{message_id}"
        headers = csrf(http)
        assert http.patch(url, content=b"read=1", headers=headers).status_code == 415
        json_headers = {**headers, "Content-Type": "application/json"}
        assert http.patch(url, content=b"{", headers=json_headers).status_code == 400
        assert http.patch(url, json={"read": "yes"}, headers=headers).status_code == 400
        assert http.patch(url, json={"read": True, "x": 1}, headers=headers).status_code == 400
        assert http.patch(url, content=b" " * 20000, headers=json_headers).status_code == 413
        assert http.get(f"/api/v1/messages/{2**64}").status_code == 404


def test_event_stream_announces_new_updated_and_deleted(server: RunningServer) -> None:
    with client(server) as http:
        token = csrf(http)
        with http.stream("GET", "/api/v1/events") as stream:
            assert stream.headers["content-type"].startswith("text/event-stream")
            lines = stream.iter_lines()
            assert wait_for(lambda: next(lines).startswith(": connected") or None)
            send(server, make_message("jay@example.test", "live one"))

            def next_event() -> tuple[str, dict[str, object]]:
                kind = ""
                for line in lines:
                    if line.startswith("event: "):
                        kind = line[7:]
                    elif line.startswith("data: ") and kind:
                        return kind, json.loads(line[6:])
                raise AssertionError("stream ended")

            kind, data = next_event()
            assert kind == "new" and data["subject"] == "live one" and data["mailbox"] == "jay@example.test"
            message_id = data["id"]
            http.patch(f"/api/v1/messages/{message_id}", json={"read": True}, headers=token)
            assert next_event() == (
                "updated",
                {"id": message_id, "mailbox": "jay@example.test", "read": True},
            )
            http.delete(f"/api/v1/messages/{message_id}", headers=token)
            assert next_event() == ("deleted", {"id": message_id, "mailbox": "jay@example.test"})


def test_open_mode_refuses_foreign_host_names(server: RunningServer) -> None:
    """DNS rebinding: a page on evil.example resolving to 127.0.0.1 gets nothing."""
    with client(server) as http:
        assert http.get("/api/v1/mailboxes", headers={"Host": "evil.example"}).status_code == 421
        assert (
            http.get("/api/v1/mailboxes", headers={"Host": f"localhost:{server.http_port}"}).status_code
            == 200
        )


def test_ui_pages_have_a_strict_policy(server: RunningServer) -> None:
    with client(server) as http:
        for path in ("/", "/api/docs"):
            page = http.get(path)
            assert page.status_code == 200
            policy = page.headers["content-security-policy"]
            assert "script-src 'self'" in policy and "unsafe-inline" not in policy
            assert page.headers["x-frame-options"] == "DENY"
        for asset in ("/ui/app.js", "/ui/app.css", "/ui/docs.js"):
            assert http.get(asset).status_code == 200


# --- accounts mode: login, sessions, who sees what -------------------------------------------------


@pytest.fixture
def mta(server_factory: Callable[..., RunningServer], tmp_path: Path) -> RunningServer:
    data_dir = tmp_path / "mta"
    accounts = Accounts(data_dir / "accounts.json")
    accounts.add_user("alice@example.test", "alice-password")
    accounts.add_user("bob@example.test", "bob-password")
    accounts.add_user("root@example.test", "root-password", admin=True)
    return server_factory(domains=("example.test",), data_dir=data_dir)


@contextlib.contextmanager
def login(server: RunningServer, address: str, password: str) -> Iterator[httpx.Client]:
    with client(server) as http:
        response = http.post("/api/v1/login", json={"address": address, "password": password})
        assert response.status_code == 200, response.text
        yield http


def test_login_required_and_cookie_flags(mta: RunningServer) -> None:
    with client(mta) as anonymous:
        assert anonymous.get("/api/v1/mailboxes").status_code == 401
        assert anonymous.get("/api/v1/events").status_code == 401
        assert anonymous.get("/").status_code == 200  # the page itself, which shows the login form
        wrong = anonymous.post("/api/v1/login", json={"address": "alice@example.test", "password": "nope"})
        assert wrong.status_code == 401
        good = anonymous.post(
            "/api/v1/login", json={"address": "Alice@Example.test", "password": "alice-password"}
        )
        assert good.status_code == 200
        cookie = good.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=strict" in cookie and "path=/" in cookie
        session = anonymous.get("/api/v1/session").json()
        assert session["address"] == "alice@example.test" and session["admin"] is False
        assert session["login_required"] is True
        # Logging out needs the CSRF token too, and ends the session.
        assert anonymous.post("/api/v1/logout").status_code == 403
        assert (
            anonymous.post("/api/v1/logout", headers={"X-CSRF-Token": session["csrf_token"]}).status_code
            == 204
        )
        assert anonymous.get("/api/v1/session").status_code == 401


def test_a_user_cannot_read_another_users_mailbox(mta: RunningServer) -> None:
    send(mta, make_message("alice@example.test", "for alice only", "alice's secret"))
    send(mta, make_message("bob@example.test", "for bob only", "bob's secret"))
    with login(mta, "alice@example.test", "alice-password") as alice, client(mta) as peer:
        assert [b["address"] for b in alice.get("/api/v1/mailboxes").json()] == ["alice@example.test"]
        assert [m["subject"] for m in messages(alice)["messages"]] == ["for alice only"]
        assert [m["snippet"] for m in messages(alice)["messages"]] == ["alice's secret"]
        assert messages(alice, q="secret")["total"] == 1
        assert alice.get("/api/v1/messages", params={"mailbox": "bob@example.test"}).status_code == 403

        with login(mta, "root@example.test", "root-password") as root:
            everything = messages(root)
            assert everything["total"] == 2
            bobs_id = next(m["id"] for m in everything["messages"] if m["mailbox"] == "bob@example.test")

        token = csrf(alice)
        for method, path in [
            ("GET", f"/api/v1/messages/{bobs_id}"),
            ("GET", f"/api/v1/messages/{bobs_id}/raw"),
            ("GET", f"/api/v1/messages/{bobs_id}/html"),
            ("GET", f"/api/v1/messages/{bobs_id}/attachments/0"),
            ("PATCH", f"/api/v1/messages/{bobs_id}"),
            ("DELETE", f"/api/v1/messages/{bobs_id}"),
            ("DELETE", "/api/v1/mailboxes/bob@example.test/messages"),
        ]:
            body = {"read": True} if method == "PATCH" else None
            response = alice.request(method, path, json=body, headers=token)
            assert response.status_code in (403, 404), (method, path, response.status_code)
            assert b"bob's secret" not in response.content
        # A cookie someone made up is no session.
        peer.cookies.set("postoffice_session", "made-up")
        assert peer.get(f"/api/v1/messages/{bobs_id}").status_code == 401
    assert len(maildir_files(mta, "bob@example.test")) == 1
    assert maildir_files(mta, "bob@example.test")[0].parent.name == "new"


def test_events_only_show_your_own_mailbox(mta: RunningServer) -> None:
    with (
        login(mta, "alice@example.test", "alice-password") as alice,
        alice.stream("GET", "/api/v1/events") as stream,
    ):
        lines = stream.iter_lines()
        assert next(lines).startswith("retry:")
        send(mta, make_message("bob@example.test", "bob's news"))
        send(mta, make_message("alice@example.test", "alice's news"))
        events = []
        for line in lines:
            if line.startswith("data: "):
                events.append(json.loads(line[6:]))
                break
        assert [e["subject"] for e in events] == ["alice's news"]
        assert events[0]["mailbox"] == "alice@example.test" and events[0]["snippet"] == "hello"


def test_login_throttling(mta: RunningServer) -> None:
    with client(mta) as http:
        statuses = [
            http.post(
                "/api/v1/login", json={"address": "bob@example.test", "password": f"guess{n}"}
            ).status_code
            for n in range(6)
        ]
        assert statuses == [401] * 5 + [429]
        throttled = http.post(
            "/api/v1/login", json={"address": "bob@example.test", "password": "bob-password"}
        )
        assert throttled.status_code == 429 and int(throttled.headers["retry-after"]) > 0


def test_non_loopback_capture_mode_needs_login(server_factory: Callable[..., RunningServer]) -> None:
    """Capture mode served beyond loopback is not open: only accounts (admins) may look."""
    from postoffice.config import Listener
    from postoffice.web.service import open_access

    running = server_factory()
    assert open_access(running.config)
    exposed = dataclasses.replace(running.config, http_listeners=(Listener("http", "0.0.0.0", 0),))
    assert not open_access(exposed)
    with_domains = dataclasses.replace(running.config, domains=("example.test",))
    assert not open_access(with_domains)


def test_eight_bit_mail_with_undecodable_bytes(server: RunningServer) -> None:
    """8BITMIME mail in no declared charset: shown with replacement characters, never a 500."""
    raw = (
        b"From: J\xf6rg <j@example.org>\r\n"
        b"To: kim@example.test\r\n"
        b"Subject: Gr\xfc\xdfe\r\n"
        b"MIME-Version: 1.0\r\n"
        b'Content-Type: multipart/mixed; boundary="b"\r\n'
        b"\r\n--b\r\nContent-Type: text/plain\r\n\r\nsch\xf6n\r\n"
        b'--b\r\nContent-Type: application/octet-stream\r\nContent-Disposition: attachment; filename="d\xe9j\xe0.bin"\r\n'
        b"\r\nxyz\r\n--b--\r\n"
    )
    with smtplib.SMTP(server.host, server.port) as smtp:
        smtp.ehlo()
        smtp.sendmail("j@example.org", ["kim@example.test"], raw, mail_options=["BODY=8BITMIME"])
    server.index_idle()
    with client(server) as http:
        (summary,) = messages(http)["messages"]
        assert summary["subject"].startswith("Gr") and "\ufffd" in summary["subject"]
        detail = http.get(f"/api/v1/messages/{summary['id']}")
        assert detail.status_code == 200
        (attachment,) = detail.json()["attachments"]
        download = http.get(attachment["url"])
        assert download.status_code == 200 and download.content == b"xyz"
        assert messages(http, q="sch")["total"] == 1


def test_logout_ends_the_event_stream(mta: RunningServer) -> None:
    with login(mta, "alice@example.test", "alice-password") as alice:
        token = csrf(alice)
        with alice.stream("GET", "/api/v1/events") as stream:
            lines = stream.iter_lines()
            assert next(lines).startswith("retry:")
            assert alice.post("/api/v1/logout", headers=token).status_code == 204
            # The next event (a delivery to alice) is not sent; the stream ends instead.
            send(mta, make_message("alice@example.test", "after logout"))
            rest = list(lines)
            assert not any("after logout" in line for line in rest)


def test_index_that_falls_behind_catches_up_from_the_maildirs(
    server_factory: Callable[..., RunningServer],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Past the backlog bound, deliveries are not queued for indexing (memory stays flat under
    any load); a sync from the Maildirs finds them once the backlog drains, and the event
    stream still announces each one."""
    from postoffice.web import service

    monkeypatch.setattr(service, "MAX_BACKLOG", 0)
    server = server_factory()
    with client(server) as http, http.stream("GET", "/api/v1/events") as stream:
        lines = stream.iter_lines()
        assert wait_for(lambda: next(lines).startswith(": connected") or None)
        for number in range(5):
            send(server, make_message("late@example.test", f"late {number}"))
        announced = set()
        while len(announced) < 5:
            line = next(lines)
            if line.startswith("data: "):
                announced.add(json.loads(line[6:])["subject"])
        assert announced == {f"late {number}" for number in range(5)}
        page = messages(http, mailbox="late@example.test")
        assert page["total"] == 5
    assert "event=index-behind" in caplog.text
