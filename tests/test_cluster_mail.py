"""Issue 21's check for the mail itself, on three real nodes sharing one database
(tests/cluster_support.py): a message taken in by node A is listed and readable through node
C's API within a second, and flags set through one node are what another shows."""

from __future__ import annotations

import smtplib
import time
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import httpx

from cluster_support import Cluster, require_cluster_stores


def _listed(base: str, subject: str) -> dict[str, Any] | None:
    answer = httpx.get(f"{base}/api/v1/messages", params={"q": f'subject:"{subject}"'}, timeout=5)
    assert answer.status_code == 200, answer.text
    found = [m for m in answer.json()["messages"] if m["subject"] == subject]
    return found[0] if found else None


def test_mail_taken_in_by_node_a_is_read_through_node_c_within_a_second(pg_url: str, tmp_path: Path) -> None:
    require_cluster_stores()
    with Cluster(pg_url, tmp_path) as cluster:
        node_a, _node_b, node_c = cluster.start(3)
        message = EmailMessage()
        message["From"], message["To"], message["Subject"] = "app@example.com", "dev@example.com", "Across"
        message.set_content("Sent to node A, read on node C.\n")
        with smtplib.SMTP("127.0.0.1", node_a.smtp_port, timeout=10) as smtp:
            smtp.send_message(message)
        accepted = time.monotonic()  # the 250 came after the database's commit
        node_c_web = f"http://127.0.0.1:{node_c.http_port}"
        while (listed := _listed(node_c_web, "Across")) is None:
            assert time.monotonic() - accepted < 1.0, "node C did not list node A's message within a second"
            time.sleep(0.02)
        raw = httpx.get(f"{node_c_web}/api/v1/messages/{listed['id']}/raw", timeout=5)
        assert raw.status_code == 200 and b"Sent to node A, read on node C." in raw.content
        assert listed["mailbox"] == "dev@example.com" and listed["read"] is False
        with httpx.Client(base_url=node_c_web, timeout=5) as web:  # open access: loopback, capture mode
            token = {"X-CSRF-Token": web.get("/api/v1/session").json()["csrf_token"]}
            marked = web.patch(f"/api/v1/messages/{listed['id']}", json={"read": True}, headers=token)
        assert marked.status_code in (200, 204), marked.text
        node_a_web = f"http://127.0.0.1:{node_a.http_port}"
        start = time.monotonic()
        while not ((seen := _listed(node_a_web, "Across")) and seen["read"]):
            assert time.monotonic() - start < 2.0, "node A did not show the flag set through node C"
            time.sleep(0.05)
