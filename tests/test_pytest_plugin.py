"""The pytest plugin as a project that tests its email would use it: a test file written only
against the ``postoffice_server`` fixture, run by pytest in a process of its own.

The inner test plays an application that sends a confirmation mail with a link to itself (a
small HTTP server on loopback), waits for the mail, finds the link and follows it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PLUGIN = "pytest_postoffice"

pytestmark = pytest.mark.timeout(120)

SIGNUP_TEST = '''
import smtplib
import threading
import urllib.request
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, HTTPServer

confirmed = []


class Confirm(BaseHTTPRequestHandler):
    def do_GET(self):
        confirmed.append(self.path)
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"confirmed")

    def log_message(self, *args):
        pass


def sign_up(address, smtp_host, smtp_port, web):
    """The application under test: it mails a confirmation link."""
    message = EmailMessage()
    message["From"] = "Shop <noreply@shop.example>"
    message["To"] = address
    message["Subject"] = "Confirm your address"
    link = f"{web}/confirm?token=s3cr3t"
    message.set_content(f"Confirm: {link}\\nYour verification code is 482913.")
    message.add_alternative(f'<p><a href="{link}">Confirm your address</a></p>', subtype="html")
    with smtplib.SMTP(smtp_host, smtp_port) as smtp:
        smtp.send_message(message)


def test_signup_confirmation(postoffice_server):
    web = HTTPServer(("127.0.0.1", 0), Confirm)
    threading.Thread(target=web.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{web.server_port}"
    sign_up("alice@example.com", postoffice_server.smtp_host, postoffice_server.smtp_port, base)

    mail = postoffice_server.wait(to="alice@example.com", subject="Confirm", timeout=10)
    (link,) = [l for l in postoffice_server.links(mail) if "/confirm" in l["url"]]
    assert link["text"] == "Confirm your address"
    assert urllib.request.urlopen(link["url"]).read() == b"confirmed"
    assert confirmed == ["/confirm?token=s3cr3t"]
    assert postoffice_server.codes(mail) == ["482913"]
    web.shutdown()


def test_messages_clear_and_timeout(postoffice_server):
    with smtplib.SMTP(postoffice_server.smtp_host, postoffice_server.smtp_port) as smtp:
        smtp.sendmail("a@x.example", ["b@y.example"], b"Subject: one\\r\\n\\r\\nbody\\r\\n")
    postoffice_server.wait(to="b@y.example")
    assert [m["subject"] for m in postoffice_server.messages("subject:one")] == ["one"]
    postoffice_server.clear()
    assert postoffice_server.messages() == []
    try:
        postoffice_server.wait(subject="one", timeout=0.2)
    except AssertionError as exc:
        assert "within 0.2 s" in str(exc)
    else:
        raise AssertionError("wait did not time out")
    assert postoffice_server.api_url.startswith("http://127.0.0.1:")
'''


def test_the_plugin_is_declared_as_a_pytest11_entry_point() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert pyproject["project"]["entry-points"]["pytest11"] == {"postoffice": PLUGIN}


def test_loading_the_plugin_imports_no_postoffice_module() -> None:
    """pytest loads entry points before ``pythonpath``: an import here would pin the installed copy."""
    probe = f"import sys, {PLUGIN}; print(sorted(m for m in sys.modules if m.split('.')[0] == 'postoffice'))"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert result.stdout == "[]\n"


def test_a_test_using_only_the_fixture_follows_a_confirmation_link(tmp_path: Path) -> None:
    (tmp_path / "test_signup.py").write_text(SIGNUP_TEST)
    # The plugin is named explicitly and entry points are off, so the run is the same whether
    # or not this checkout is the installed package.
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", PLUGIN, "-p", "no:cacheprovider", "-q", "test_signup.py"],
        cwd=tmp_path,
        env={**os.environ, "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"},
        capture_output=True,
        text=True,
        timeout=100,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 passed" in result.stdout
