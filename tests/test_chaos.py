"""Fault injection: rules set over HTTP or with ``postoffice chaos`` change what real SMTP
clients (``postoffice send``, smtplib) hear, and show in the status, /metrics and the banner.
"""

from __future__ import annotations

import os
import re
import smtplib
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from conftest import RunningServer, ServerProcess, wait_until
from postoffice.accounts import Accounts
from postoffice.runtime.banner import banner
from postoffice.smtp import replies
from postoffice.smtpd.chaos import ChaosError, ChaosRules, parse_rules
from web_helpers import client, csrf

pytestmark = pytest.mark.timeout(60)

TRY_LATER = "451 4.3.0 Try again later"


def postoffice(*args: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "postoffice", *args], capture_output=True, text=True, timeout=30, check=False
    )
    assert "Traceback" not in result.stderr, result.stderr
    return result


def send(server: RunningServer, to: str = "bob@example.test") -> subprocess.CompletedProcess[str]:
    return postoffice(
        "send", "--server", f"127.0.0.1:{server.port}", "--from", "alice@client.test", "--to", to,
        "--subject", "hi", "--ehlo", "client.test",
    )  # fmt: skip


def test_a_rule_makes_postoffice_send_see_451_at_rcpt(server: RunningServer) -> None:
    api = ["chaos", "--api", server.base_url]
    chosen = postoffice(*api, "set", "rcpt", TRY_LATER)
    assert chosen.returncode == 0, chosen.stderr
    assert chosen.stdout == f"rcpt: {TRY_LATER}\n"
    refused = send(server)
    assert refused.returncode != 0
    assert TRY_LATER in refused.stdout + refused.stderr
    assert postoffice(*api, "list").stdout == f"rcpt: {TRY_LATER}\n"
    assert postoffice(*api, "clear").stdout == "no fault-injection rules\n"
    assert send(server).returncode == 0
    assert len(server.messages("bob@example.test")) == 1


def test_globs_disconnect_delay_and_probability(server: RunningServer) -> None:
    rules = [
        {"stage": "mail", "reply": "disconnect", "sender": "*@flaky.example"},
        {"stage": "ehlo", "delay": 0.4, "probability": 1},
        {"stage": "data-end", "reply": "554 5.7.1 No thanks", "recipient": "carol@*"},
        {"stage": "rcpt", "reply": "550 never", "probability": 0},
    ]
    with client(server) as http:
        answer = http.put("/api/v1/chaos", json=rules, headers=csrf(http))
    assert answer.status_code == 200, answer.text
    assert answer.json()["rules"][1] == {
        "stage": "ehlo", "reply": None, "delay": 0.4, "probability": 1.0, "sender": None, "recipient": None,
    }  # fmt: skip
    with smtplib.SMTP(server.host, server.port, timeout=10) as smtp:
        started = time.monotonic()
        assert smtp.ehlo()[0] == 250
        assert time.monotonic() - started >= 0.4
        assert smtp.mail("ok@fine.example")[0] == 250
        assert smtp.rcpt("bob@example.test")[0] == 250
        assert smtp.rcpt("carol@example.test")[0] == 250
        code, text = smtp.data(b"Subject: x\r\n\r\nbody\r\n")
        assert (code, text) == (554, b"5.7.1 No thanks")
        smtp.rset()
        with pytest.raises(smtplib.SMTPServerDisconnected):
            smtp.mail("anyone@FLAKY.example")
            smtp.noop()


@pytest.mark.parametrize(
    ("rules", "error"),
    [
        ([{"stage": "rcpt", "reply": "250 fine"}], "rule 1: reply '250 fine': write a 4xx or 5xx reply"),
        ([{"stage": "rcpt", "reply": "451 5.3.0 x"}], "class must be 4"),
        ([{"stage": "rcpt", "reply": "451 bad\r\n250 injected"}], "write a 4xx or 5xx reply"),
        ([{"stage": "quit", "reply": TRY_LATER}], "rule 1: stage must be one of connect, ehlo"),
        ([{"stage": {}, "reply": TRY_LATER}], "rule 1: stage must be one of"),
        ([{"stage": "rcpt"}], "give a reply"),
        ([{"stage": "rcpt", "reply": TRY_LATER, "probability": 2}], "probability must be from 0 to 1"),
        ([{"stage": "rcpt", "reply": TRY_LATER, "when": 1}], "unknown field 'when'"),
        ({"stage": "rcpt"}, "send a JSON list of rules"),
    ],
)
def test_bad_rules_are_refused_with_one_line(server: RunningServer, rules: object, error: str) -> None:
    with client(server) as http:
        answer = http.put("/api/v1/chaos", json=rules, headers=csrf(http))
        assert answer.status_code == 400
        assert error in answer.json()["error"]
        assert http.get("/api/v1/chaos").json() == {"enabled": True, "rules": []}


def test_shown_in_status_metrics_and_banner(
    server: RunningServer, capsys: pytest.CaptureFixture[str]
) -> None:
    with client(server) as http:
        assert "chaos" not in http.get("/api/v1/status").json()
        http.put(
            "/api/v1/chaos", json=[{"stage": "connect", "reply": "421 4.3.2 Go away"}], headers=csrf(http)
        )
        assert http.get("/api/v1/status").json()["chaos"][0]["reply"] == "421 4.3.2 Go away"
        with pytest.raises(smtplib.SMTPConnectError, match="Go away"):
            smtplib.SMTP(server.host, server.port, timeout=10)
        metrics = http.get("/metrics").text
        assert "postoffice_chaos_rules 1.0" in metrics
        assert 'postoffice_chaos_injected_total{stage="connect"} 1.0' in metrics
        banner(server.config, [], [], None)
        assert "chaos   1 fault-injection rules in force at connect" in capsys.readouterr().out
        http.delete("/api/v1/chaos", headers=csrf(http))
        assert "chaos" not in http.get("/api/v1/status").json()
        assert "postoffice_chaos_rules 0.0" in http.get("/metrics").text


def test_rules_reach_other_processes_through_the_file(tmp_path: Path) -> None:
    """What ``serve --workers`` relies on: each process looks at the file as a connection opens."""
    writer, reader = ChaosRules(tmp_path, enabled=True), ChaosRules(tmp_path, enabled=True)
    writer.replace(parse_rules([{"stage": "rcpt", "reply": TRY_LATER}]))
    assert reader.rules == ()
    reader.refresh()
    assert [rule.to_json()["reply"] for rule in reader.rules] == [TRY_LATER]
    writer.replace(())
    reader.refresh()
    assert reader.rules == ()
    (tmp_path / "chaos.json").write_text("[{]")
    reader.refresh()
    assert reader.rules == ()
    with pytest.raises(ChaosError):
        parse_rules([{"stage": "rcpt", "reply": 451}])
    assert parse_rules([{"stage": "auth", "reply": "disconnect"}])[0].reply is replies.DROP


@pytest.fixture
def mta_admin(tmp_path: Path) -> Callable[..., RunningServer]:
    def make(factory: Callable[..., RunningServer], **overrides: object) -> RunningServer:
        data_dir = tmp_path / f"mta{len(overrides)}"
        Accounts(data_dir / "accounts.json").add_user("root@example.test", "root-password", admin=True)
        return factory(domains=("example.test",), data_dir=data_dir, **overrides)

    return make


def test_refused_on_a_real_mail_server_unless_allowed(
    server_factory: Callable[..., RunningServer], mta_admin: Callable[..., RunningServer]
) -> None:
    rule = [{"stage": "rcpt", "reply": TRY_LATER}]
    for allowed in (False, True):
        mta = mta_admin(server_factory, **({"allow_chaos": True} if allowed else {}))
        with httpx.Client(base_url=mta.base_url, timeout=10) as http:
            login = http.post(
                "/api/v1/login", json={"address": "root@example.test", "password": "root-password"}
            )
            token = {"X-CSRF-Token": login.json()["csrf_token"]}
            answer = http.put("/api/v1/chaos", json=rule, headers=token)
        if not allowed:
            assert answer.status_code == 403
            assert "allow_chaos = true" in answer.json()["error"]
            (mta.data_dir / "chaos.json").write_text('[{"stage": "rcpt", "reply": "451 4.3.0 x"}]')
        else:
            assert answer.status_code == 200, answer.text
        with smtplib.SMTP(mta.host, mta.port, timeout=10) as smtp:
            smtp.ehlo("client.test")
            smtp.mail("someone@client.test")
            code = smtp.rcpt("root@example.test")[0]
        assert code == (451 if allowed else 250)


def test_chaos_command_needs_a_server() -> None:
    result = postoffice("chaos", "--api", "http://127.0.0.1:9", "list")
    assert result.returncode == 1
    assert result.stderr.startswith("postoffice: cannot reach http://127.0.0.1:9")
    assert os.linesep not in result.stderr.rstrip("\n")


def test_a_rule_reaches_every_worker(server_process: Callable[..., ServerProcess], tmp_path: Path) -> None:
    running = server_process("--workers", "2", data_dir=tmp_path / "data")
    base = f"http://127.0.0.1:{running.http_port()}"

    def ready() -> bool:
        try:
            return httpx.get(f"{base}/readyz", timeout=5).status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(ready, what="worker 0 serving HTTP")
    with httpx.Client(base_url=base, timeout=10) as http:
        answer = http.put("/api/v1/chaos", json=[{"stage": "rcpt", "reply": TRY_LATER}], headers=csrf(http))
        assert answer.status_code == 200, answer.text
    codes = []
    for _ in range(24):  # SO_REUSEPORT spreads connections over both workers
        with smtplib.SMTP("127.0.0.1", running.port, timeout=10) as smtp:
            smtp.ehlo("client.test")
            smtp.mail("a@client.test")
            codes.append(smtp.rcpt("b@example.test")[0])
    assert codes == [451] * 24

    def workers_that_refused() -> set[str]:
        return set(re.findall(r"session=(w\d+)-\S+ event=chaos", "".join(running.output)))

    wait_until(lambda: len(workers_that_refused()) == 2, what="a chaos line from each worker")


def test_commands_log_in_where_the_api_asks(
    server_factory: Callable[..., RunningServer], mta_admin: Callable[..., RunningServer]
) -> None:
    """``postoffice chaos`` and ``postoffice wait`` on a real mail server: they log in with
    POSTOFFICE_ADDRESS and POSTOFFICE_PASSWORD, and send the session's CSRF token."""
    mta = mta_admin(server_factory, allow_chaos=True)
    env = {**os.environ, "POSTOFFICE_ADDRESS": "root@example.test", "POSTOFFICE_PASSWORD": "root-password"}

    def run(*args: str, environment: dict[str, str] = env) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "postoffice", *args]
        return subprocess.run(
            command, capture_output=True, text=True, timeout=30, env=environment, check=False
        )

    refused = run("chaos", "--api", mta.base_url, "list", environment=dict(os.environ))
    assert refused.returncode == 1
    assert refused.stderr == "postoffice: GET /api/v1/chaos: HTTP 401: log in first\n"
    chosen = run(
        "chaos", "--api", mta.base_url, "set", "mail", "550 5.7.1 Not today", "--sender", "*@spam.example"
    )
    assert chosen.returncode == 0, chosen.stderr
    assert chosen.stdout == "mail: 550 5.7.1 Not today, sender *@spam.example\n"
    with smtplib.SMTP(mta.host, mta.port, timeout=10) as smtp:
        smtp.ehlo("client.test")
        assert smtp.mail("x@spam.example") == (550, b"5.7.1 Not today")
        assert smtp.mail("x@ham.example")[0] == 250
        assert smtp.rcpt("root@example.test")[0] == 250
        assert smtp.data(b"Subject: for root\r\n\r\nhello\r\n")[0] == 250
    found = run("wait", "--api", mta.base_url, "--subject", "for root", "--timeout", "10")
    assert found.returncode == 0, found.stderr
    assert '"subject": "for root"' in found.stdout
