"""Tags: from an X-Tags field, from a plus-address, and through ``PUT /api/v1/messages/{id}/tags``;
searched with ``tag:``; kept across restarts, reindexing and a rebuild of the index; and kept by
``[retention] keep_tagged`` (and flagged mail by ``keep_flagged``)."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import RunningServer
from postoffice import cli
from postoffice.config import RetentionSettings
from postoffice.maildir.store import MaildirStore
from postoffice.web.index import SCHEMA_VERSION, MailIndex
from postoffice.web.retention import Retention
from postoffice.web.search import compile_query
from web_helpers import client, csrf, make_message, messages, send

pytestmark = pytest.mark.timeout(60)


def _tagged(message: Any, tags: str) -> Any:
    message["X-Tags"] = tags
    return message


def _by_subject(http: httpx.Client, query: str = "") -> dict[str, list[str]]:
    return {m["subject"]: m["tags"] for m in messages(http, q=query)["messages"]}


def _id(http: httpx.Client, subject: str) -> int:
    [found] = [m["id"] for m in messages(http)["messages"] if m["subject"] == subject]
    return int(found)


def _put(http: httpx.Client, message_id: int, body: Any, **headers: str) -> httpx.Response:
    return http.put(f"/api/v1/messages/{message_id}/tags", json=body, headers={**csrf(http), **headers})


def test_tags_from_the_header_and_the_plus_address(server: RunningServer) -> None:
    send(server, _tagged(make_message("ann@example.test", "welcome"), "Signup, welcome ,, bad tag!"))
    send(server, make_message("ann+Reset@example.test", "reset"))
    send(server, make_message("ann@example.test", "plain"))
    with client(server) as http:
        assert _by_subject(http) == {"welcome": ["signup", "welcome"], "reset": ["reset"], "plain": []}
        assert list(_by_subject(http, "tag:signup")) == ["welcome"]
        assert list(_by_subject(http, "tag:RESET")) == ["reset"]
        # Capture mode files it under the address as given: the tag is its detail.
        assert messages(http, q="tag:reset")["messages"][0]["mailbox"] == "ann+reset@example.test"
        assert sorted(_by_subject(http, "-tag:signup")) == ["plain", "reset"]
        assert list(_by_subject(http, "welcome tag:welcome")) == ["welcome"]  # with words (FTS5) too
        bad = http.get("/api/v1/messages", params={"q": "tag:no!pe"})
        assert bad.status_code == 400 and "tag:no!pe" in bad.json()["error"]


def test_set_and_read_tags_through_the_api(server: RunningServer) -> None:
    send(server, _tagged(make_message("bo@example.test", "one"), "from-header"))
    with client(server) as http:
        message_id = _id(http, "one")
        assert http.get(f"/api/v1/messages/{message_id}/tags").json() == {
            "id": message_id,
            "tags": ["from-header"],
        }
        answer = _put(http, message_id, {"tags": ["Checked", "ci.run-7", "checked"]})
        assert answer.status_code == 200, answer.text
        assert answer.json()["tags"] == ["checked", "ci.run-7"]  # replaced, lower case, once each
        assert http.get(f"/api/v1/messages/{message_id}").json()["tags"] == ["checked", "ci.run-7"]
        assert list(_by_subject(http, "tag:checked")) == ["one"]
        assert _by_subject(http, "tag:from-header") == {}
        assert _put(http, message_id, {"tags": []}).json()["tags"] == []
        # Bad input: one clear line each; no CSRF header, no change.
        assert "not a tag" in _put(http, message_id, {"tags": ["a b"]}).json()["error"]
        assert _put(http, message_id, {"tags": "x"}).status_code == 400
        assert _put(http, message_id, {"tags": ["x"], "more": 1}).status_code == 400
        assert _put(http, message_id + 1000, {"tags": ["x"]}).status_code == 404
        no_token = http.put(f"/api/v1/messages/{message_id}/tags", json={"tags": ["x"]})
        assert no_token.status_code == 403
        assert http.get(f"/api/v1/messages/{message_id}/tags").json()["tags"] == []


def test_tags_survive_a_restart_a_reindex_and_a_rebuild(
    server_factory: Callable[..., RunningServer], tmp_path: Path
) -> None:
    data_dir = tmp_path / "kept"
    server = server_factory(data_dir=data_dir)
    send(server, _tagged(make_message("cy@example.test", "kept"), "header"))
    with client(server) as http:
        message_id = _id(http, "kept")
        assert _put(http, message_id, {"tags": ["header", "by-api"]}).status_code == 200
    server.stop()
    again = server_factory(data_dir=data_dir)
    with client(again) as http:
        assert _by_subject(http) == {"kept": ["by-api", "header"]}
    again.stop()
    assert cli.main(["reindex", "--full", "--data-dir", str(data_dir)]) == 0
    # An index of another version is rebuilt from the Maildirs; the tags are kept by Maildir key.
    with sqlite3.connect(data_dir / "index.sqlite3") as db:
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.close()
    rebuilt = server_factory(data_dir=data_dir)
    with client(rebuilt) as http:
        assert _by_subject(http, "tag:by-api") == {"kept": ["by-api", "header"]}


def test_a_deleted_message_takes_its_tags_along(server: RunningServer) -> None:
    send(server, _tagged(make_message("di@example.test", "gone"), "x"))
    with client(server) as http:
        assert http.delete(f"/api/v1/messages/{_id(http, 'gone')}", headers=csrf(http)).status_code == 204
    index = server.app.web.index if server.app.web is not None else None
    assert index is not None
    assert index._db.execute("SELECT count(*) FROM tags").fetchone()[0] == 0


def test_an_index_of_version_7_gains_tags_and_keeps_its_ids(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    mail_root = data_dir / "mail"
    store = MaildirStore(mail_root, "mx.test")
    from test_web_index import deliver

    deliver(mail_root, "ev@example.test", "1700000000.E_0.mx", "old one")
    path = tmp_path / "index.sqlite3"
    index = MailIndex(path, store)
    index.sync()
    [row] = index.page(None, compile_query(""), limit=10, offset=0).rows
    index.close()
    with sqlite3.connect(path) as db:  # made into the index of version 7 exactly
        db.execute("DROP TRIGGER messages_untagged")
        db.execute("DROP TABLE tags")
        db.execute("PRAGMA user_version = 7")
    db.close()
    index = MailIndex(path, store)
    try:
        tagged = index.set_tags(row.id, ["later"])
        assert tagged is not None and tagged.id == row.id and tagged.tags == ("later",)
        assert [r.id for r in index.page(None, compile_query("tag:later"), limit=10, offset=0).rows] == [
            row.id
        ]
        MailIndex(path, store).close()  # a second process finds nothing to do
    finally:
        index.close()


def test_retention_keeps_tagged_and_flagged_mail(server: RunningServer) -> None:
    send(server, make_message("fi@example.test", "tagged"))
    send(server, make_message("fi@example.test", "flagged"))
    send(server, make_message("fi@example.test", "plain"))
    send(server, make_message("fi@example.test", "newest"))
    index = server.app.web.index if server.app.web is not None else None
    assert index is not None
    with client(server) as http:
        assert _put(http, _id(http, "tagged"), {"tags": ["keep"]}).status_code == 200
        flagged = index.get(_id(http, "flagged"))
    assert flagged is not None
    stored = index.locate(flagged)
    assert stored is not None
    index.set_location(flagged.id, index.store.set_flags(stored, "F"))
    # Keep one message: tagged and flagged mail neither goes nor counts.
    keep_one = RetentionSettings(max_messages=1, keep_tagged=True, keep_flagged=True)
    assert Retention(index, keep_one).prune() == 1
    with client(server) as http:
        assert sorted(_by_subject(http)) == ["flagged", "newest", "tagged"]
    # Without the keep settings, they go like any other.
    assert Retention(index, RetentionSettings(max_messages=1)).prune() == 2
    with client(server) as http:
        assert list(_by_subject(http)) == ["newest"]
