"""Folders in the web API: a mailbox's Maildir++ folders, moving a message to one, the folder
search term, and the index following a move made by another program."""

from __future__ import annotations

import os
from pathlib import Path

from conftest import RunningServer
from web_helpers import client, csrf, make_message, messages, send, wait_for


def mailbox_dir(server: RunningServer, address: str) -> Path:
    local, _, domain = address.partition("@")
    return server.config.mail_dir / domain / local


def folder_names(http_folders: list[dict[str, object]]) -> dict[str, tuple[object, object]]:
    return {str(item["name"]): (item["total"], item["unread"]) for item in http_folders}


def test_move_to_trash_and_back_with_folders_and_counts(server: RunningServer) -> None:
    send(server, make_message("ann@example.test", "keep"))
    send(server, make_message("ann@example.test", "throw away"))
    with client(server) as http:
        listed = messages(http, mailbox="ann@example.test")["messages"]
        assert {m["folder"] for m in listed} == {"INBOX"}
        target = next(m for m in listed if m["subject"] == "throw away")
        folders = http.get("/api/v1/mailboxes/ann@example.test/folders").json()
        assert folders[0] == {"name": "INBOX", "special_use": None, "total": 2, "unread": 2}
        assert {f["name"]: f["special_use"] for f in folders[1:]} == {
            "Archive": "\\Archive",
            "Junk": "\\Junk",
            "Trash": "\\Trash",
        }
        moved = http.post(
            f"/api/v1/messages/{target['id']}/move", json={"folder": "Trash"}, headers=csrf(http)
        )
        assert moved.status_code == 200, moved.text
        assert moved.json()["folder"] == "Trash" and moved.json()["id"] == target["id"]
        # A Maildir rename into .Trash, made when first needed.
        trash = mailbox_dir(server, "ann@example.test") / ".Trash"
        assert len(os.listdir(trash / "new")) == 1 and (trash / "cur").is_dir()
        assert len(os.listdir(mailbox_dir(server, "ann@example.test") / "new")) == 1
        counts = folder_names(http.get("/api/v1/mailboxes/ann@example.test/folders").json())
        assert counts["INBOX"] == (1, 1) and counts["Trash"] == (1, 1)
        assert [
            m["subject"] for m in messages(http, mailbox="ann@example.test", q="in:Trash")["messages"]
        ] == ["throw away"]
        assert [
            m["subject"] for m in messages(http, mailbox="ann@example.test", q="in:INBOX")["messages"]
        ] == ["keep"]
        assert messages(http, mailbox="ann@example.test", q="-in:Trash")["total"] == 1
        assert messages(http, mailbox="ann@example.test", q="in:trash")["total"] == 1  # special-use: any case
        assert messages(http, mailbox="ann@example.test", q="in:inbox")["total"] == 1
        # Read state and the message itself follow it into the folder.
        read = http.patch(f"/api/v1/messages/{target['id']}", json={"read": True}, headers=csrf(http))
        assert read.json()["read"] is True and read.json()["folder"] == "Trash"
        assert len(os.listdir(trash / "cur")) == 1
        assert http.get(f"/api/v1/messages/{target['id']}").json()["subject"] == "throw away"
        back = http.post(
            f"/api/v1/messages/{target['id']}/move", json={"folder": "INBOX"}, headers=csrf(http)
        )
        assert back.json()["folder"] == "INBOX" and back.json()["read"] is True


def test_bad_moves_are_refused(server: RunningServer) -> None:
    send(server, make_message("ann@example.test", "hi"))
    with client(server) as http:
        message_id = messages(http)["messages"][0]["id"]
        headers = csrf(http)
        for body in (
            {"folder": "../../etc"},
            {"folder": ".Trash"},
            {"folder": 3},
            {"folder": "Trash", "x": 1},
            {},
        ):
            response = http.post(f"/api/v1/messages/{message_id}/move", json=body, headers=headers)
            assert response.status_code == 400, body
        assert http.post(f"/api/v1/messages/{message_id}/move", json={"folder": "Trash"}).status_code == 403
        assert (
            http.post("/api/v1/messages/999999/move", json={"folder": "Trash"}, headers=headers).status_code
            == 404
        )
        assert http.get("/api/v1/messages", params={"q": "in:../x"}).status_code == 400


def test_the_index_follows_a_move_another_program_made(server: RunningServer) -> None:
    send(server, make_message("ann@example.test", "filed by mutt"))
    box = mailbox_dir(server, "ann@example.test")
    (name,) = os.listdir(box / "new")
    for sub in ("tmp", "cur", "new"):
        (box / ".Archive" / sub).mkdir(parents=True)
    os.rename(box / "new" / name, box / ".Archive" / "cur" / f"{name}:2,S")
    with client(server) as http:
        found = wait_for(
            lambda: [m for m in messages(http, q="in:Archive")["messages"] if m["read"]],
            what="the index to follow the move",
        )
        assert found[0]["subject"] == "filed by mutt" and found[0]["folder"] == "Archive"
        counts = folder_names(http.get("/api/v1/mailboxes/ann@example.test/folders").json())
        assert counts["Archive"] == (1, 0) and counts["INBOX"] == (0, 0)
