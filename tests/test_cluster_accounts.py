"""Issue 21's check for the people side, on real nodes (tests/cluster_support.py): a user added
on node B (``postoffice user add --database``) logs in on node A over SMTP AUTH, a web session
made on node C is good on node A, and failed web logins spread over the nodes meet one limit."""

from __future__ import annotations

import smtplib
import ssl
import subprocess
import sys
import time
from pathlib import Path

import httpx

from cluster_support import Cluster, require_cluster_stores
from postoffice.web.auth import LOGIN_FAILURES, SESSION_COOKIE

DOMAIN = "example.test"


def _smtp_login(port: int, address: str, password: str) -> None:
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE  # the node's own certificate
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as smtp:
        smtp.starttls(context=context)
        smtp.login(address, password)


def test_a_user_added_on_node_b_logs_in_on_node_a_and_sessions_go_anywhere(
    pg_url: str, tmp_path: Path
) -> None:
    require_cluster_stores()
    extra = ("--domain", DOMAIN, "--submission", "127.0.0.1:0")
    with Cluster(pg_url, tmp_path, extra=extra) as cluster:
        node_a, node_b, node_c = cluster.start(3)
        command = [sys.executable, "-m", "postoffice", "user", "add", f"alice@{DOMAIN}", "--password-stdin"]
        command += ["--database", pg_url, "--data-dir", str(node_b.data_dir)]
        added = subprocess.run(command, input="s3cret\n", capture_output=True, text=True, timeout=60)
        assert added.returncode == 0, added.stderr
        start = time.monotonic()
        while True:  # node A hears of the new user within a second
            try:
                _smtp_login(node_a.ports["submission"], f"alice@{DOMAIN}", "s3cret")
                break
            except smtplib.SMTPAuthenticationError:
                assert time.monotonic() - start < 1.0, "node A did not see the new user within a second"
                time.sleep(0.05)
        web = {
            name: f"http://127.0.0.1:{node.http_port}"
            for name, node in (("a", node_a), ("b", node_b), ("c", node_c))
        }
        login = httpx.post(
            f"{web['c']}/api/v1/login", json={"address": f"alice@{DOMAIN}", "password": "s3cret"}
        )
        assert login.status_code == 200, login.text
        cookies = {SESSION_COOKIE: login.cookies[SESSION_COOKIE]}
        session = httpx.get(f"{web['a']}/api/v1/session", cookies=cookies)
        assert session.status_code == 200 and session.json()["address"] == f"alice@{DOMAIN}"
        guess = {"address": f"alice@{DOMAIN}", "password": "x"}
        for attempt in range(LOGIN_FAILURES):  # a guesser spreading attempts over the nodes
            assert httpx.post(f"{web['ac'[attempt % 2]]}/api/v1/login", json=guess).status_code == 401
        start = time.monotonic()
        while (refused := httpx.post(f"{web['b']}/api/v1/login", json=guess)).status_code != 429:
            assert time.monotonic() - start < 1.0, refused.text  # B saw none of them itself
            time.sleep(0.05)
