"""The web UI in a real browser: Debian's Chromium, headless, driven by Playwright.

Mail arrives over SMTP while the page is open; the page must show it without a reload, open
it, find it by search and delete it. A hostile message must show and do nothing: no script,
no dialog, no navigation, and not a single request to the listener its links point at, until
the person asks for remote content.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import pytest

from conftest import RunningServer, require_tool
from postoffice.accounts import Accounts
from postoffice.mailauth import results
from postoffice.mailauth.verdicts import DkimVerdict, SpfVerdict
from web_helpers import client, make_message, messages, send, send_with_fields, wait_for

pytest.importorskip("playwright.sync_api")
from playwright.sync_api import Browser, Dialog, Page, Route, expect, sync_playwright

pytestmark = pytest.mark.timeout(60)

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
# Playwright waits this long (ms) for a condition before failing.
WAIT = 10_000


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    executable = require_tool("chromium")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@dataclass
class Watch:
    """What a page did that it should not: dialogs opened, errors in its console (which
    include Content-Security-Policy violations of the UI's own pages)."""

    dialogs: list[str] = field(default_factory=list)
    console_errors: list[str] = field(default_factory=list)


@pytest.fixture
def watch() -> Watch:
    return Watch()


@pytest.fixture
def page(browser: Browser, watch: Watch) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    context.set_default_timeout(WAIT)
    page = context.new_page()

    def dismiss(dialog: Dialog) -> None:
        watch.dialogs.append(dialog.message)
        dialog.dismiss()

    page.on("dialog", dismiss)
    page.on(
        "console", lambda entry: watch.console_errors.append(entry.text) if entry.type == "error" else None
    )
    yield page
    context.close()


class Listener:
    """A TCP port on 127.0.0.1 that records every connection made to it and the first bytes of
    every request sent over one (it answers nothing)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self.requests: list[bytes] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                connection, _ = self.sock.accept()
            except OSError:
                continue
            self.connections += 1
            with contextlib.suppress(OSError):
                connection.settimeout(1.0)
                data = connection.recv(200)
                if data:
                    self.requests.append(data)
            connection.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()


@pytest.fixture
def listener() -> Iterator[Listener]:
    watching = Listener()
    yield watching
    watching.close()


def open_ui(page: Page, server: RunningServer) -> None:
    page.goto(server.base_url + "/")
    page.wait_for_selector(".live.on")


def test_mail_appears_live_opens_is_found_and_deleted(
    page: Page, server: RunningServer, watch: Watch
) -> None:
    send(server, make_message("dev@example.test", "An older message", "old news", sender="old@example.org"))
    open_ui(page, server)
    p = page
    # The list loads beside the event stream: wait for it rather than race it.
    expect(p.locator("#message-list li")).to_have_count(1, timeout=WAIT)

    send(
        server,
        make_message(
            "dev@example.test",
            "Your order has shipped",
            "tracking number 12345",
            sender="Shop <shop@example.org>",
            html="<h1>Shipped!</h1><p>Tracking <b>12345</b></p>",
            attachments=[("label.pdf", "application/pdf", b"%PDF-1.4")],
        ),
    )
    row = p.locator("#message-list li", has_text="Your order has shipped")
    row.wait_for()  # arrived through the event stream: no reload
    assert p.locator("#message-list li").count() == 2
    assert "unread" in (row.get_attribute("class") or "")
    assert row.locator(".clip").count() == 1  # the attachment mark

    row.click()
    p.locator("#view-subject", has_text="Your order has shipped").wait_for()
    frame = p.frame_locator("#tab-html")
    frame.locator("h1", has_text="Shipped!").wait_for()
    # Opening marks it read, in the Maildir too.
    wait_for(lambda: "unread" not in (row.get_attribute("class") or ""), what="read mark")
    p.click("button[data-tab=text]")
    p.locator("#tab-text", has_text="tracking number 12345").wait_for()
    p.click("button[data-tab=headers]")
    p.locator("#headers-body th", has_text="Subject").first.wait_for()
    p.click("button[data-tab=source]")
    p.locator("#tab-source", has_text="Subject: Your order has shipped").wait_for()
    p.click("button[data-tab=attachments]")
    p.locator("#tab-attachments a", has_text="label.pdf").wait_for()

    # Search, from the keyboard: "/" focuses the box.
    p.click("#message-list")
    p.keyboard.press("/")
    p.keyboard.type("from:shop tracking")
    p.keyboard.press("Enter")
    p.locator("#list-count", has_text="1 found").wait_for()
    assert p.locator("#message-list li").all_inner_texts()[0].startswith("Shop")

    # Delete with the keyboard: the row goes, and so does the Maildir file.
    p.click("#message-list li")
    p.locator("#message-list").focus()
    p.keyboard.press("Delete")
    p.locator("#message-list li").first.wait_for(state="detached")
    box = server.config.mail_dir / "example.test" / "dev"
    remaining = [*box.joinpath("new").iterdir(), *box.joinpath("cur").iterdir()]
    assert len(remaining) == 1 and b"old news" in remaining[0].read_bytes()
    assert watch.dialogs == []
    assert watch.console_errors == []


def test_api_docs_page_works_offline(page: Page, server: RunningServer, watch: Watch) -> None:
    send(server, make_message("docs@example.test", "for the explorer"))
    p = page
    p.goto(server.base_url + "/api/docs")
    card = p.locator("details.operation", has_text="/api/v1/mailboxes").first
    card.locator("summary").click()
    card.locator("button", has_text="Send").click()
    card.locator("pre", has_text="docs@example.test").wait_for()
    assert "200 OK" in card.locator("pre").inner_text()
    assert watch.console_errors == []


def hostile_html(port: int, https_port: int) -> str:
    target = f"http://127.0.0.1:{port}"
    return f"""<html><head>
<meta http-equiv="refresh" content="0;url={target}/refresh">
<base href="{target}/base/">
<link rel="stylesheet" href="{target}/style.css">
<style>@import url({target}/import.css); body {{ background: url({target}/background.png); }}</style>
<script>alert("script ran"); fetch("{target}/fetch"); top.location = "{target}/top";</script>
</head><body onload="alert('onload ran')">
<p id="visible">Hostile but harmless</p>
<img src="{target}/pixel.png" onerror="alert('onerror ran')">
<img src="x" onerror="alert('onerror ran'); new Image().src='{target}/onerror'">
<svg><script>alert("svg ran")</script><image href="{target}/svg.png"/></svg>
<iframe src="{target}/frame"></iframe>
<object data="{target}/object"></object><embed src="{target}/embed">
<video src="{target}/video.mp4" autoplay></video><audio src="{target}/audio.mp3" autoplay></audio>
<form action="{target}/form" method="post"><input name="q" value="x" autofocus onfocus="alert('focus ran')">
<button id="submit">Send</button></form>
<a href="javascript:alert('link ran')">javascript link</a>
<div style="background-image: url({target}/div.png)">styled</div>
<img src="https://127.0.0.1:{https_port}/remote.png" alt="remote">
</body></html>"""


def test_hostile_html_runs_nothing_and_loads_nothing(
    page: Page, server: RunningServer, listener: Listener, tmp_path: Path, watch: Watch
) -> None:
    remote = Listener()  # stands for a remote image host, reached only after "load remote content"
    try:
        send(
            server,
            make_message(
                "victim@example.test",
                f"<img src=http://127.0.0.1:{listener.port}/subject onerror=alert('subject')>",
                "text",
                sender='"<b onmouseover=alert(1)>Eve</b>" <eve@example.org>',
                html=hostile_html(listener.port, remote.port),
                attachments=[
                    (f"<img src=http://127.0.0.1:{listener.port}/name>.pdf", "application/pdf", b"%")
                ],
            ),
        )
        p = page
        open_ui(p, server)
        row = p.locator("#message-list li").first
        # Headers are text on the page, never markup.
        assert "<img src=" in row.inner_text()
        row.click()
        frame = p.frame_locator("#tab-html")
        frame.locator("#visible", has_text="Hostile but harmless").wait_for()
        assert p.locator("#remote-bar").is_visible()
        assert "<b onmouseover" in p.locator("#view-from").inner_text()
        p.click("button[data-tab=attachments]")
        p.locator("#tab-attachments a").first.wait_for()
        assert p.locator("#tab-attachments img").count() == 0
        p.click("button[data-tab=headers]")
        p.click("button[data-tab=html]")
        frame.locator("#visible").wait_for()
        # Give the frame every chance to misbehave: click the form's button and the link.
        frame.locator("a", has_text="javascript link").click()
        p.wait_for_load_state("networkidle")
        assert p.url.startswith(server.base_url)
        assert watch.dialogs == []
        assert listener.connections == 0
        assert remote.connections == 0

        # The person asks for remote content: the https image is requested, nothing else is.
        p.click("#load-remote")
        wait_for(lambda: remote.connections > 0, what="the remote image request")
        assert listener.connections == 0
        assert watch.dialogs == []
    finally:
        remote.close()


def test_frame_policy_holds_even_if_sanitising_missed_everything(
    page: Page, server: RunningServer, listener: Listener, watch: Watch
) -> None:
    """The second wall: the frame's own CSP and sandbox, tested with the sanitiser bypassed."""
    remote = Listener()
    try:
        send(server, make_message("victim@example.test", "Bypass", "text", html="<p>placeholder</p>"))
        raw = hostile_html(listener.port, remote.port)
        p = page

        def unsanitised(route: Route) -> None:
            real = route.fetch()
            # The server's real headers (CSP with sandbox) around markup nothing has cleaned.
            route.fulfill(response=real, body=raw)

        p.route("**/api/v1/messages/*/html*", unsanitised)
        open_ui(p, server)
        p.click("#message-list li")
        frame = p.frame_locator("#tab-html")
        frame.locator("#visible", has_text="Hostile but harmless").wait_for()
        frame.locator("#submit").click()
        p.wait_for_load_state("networkidle")
        assert p.url.startswith(server.base_url)
        assert watch.dialogs == []
        # Not one request. (Chromium may open a speculative TCP connection for the nested
        # <iframe> before its CSP check refuses the navigation; the sanitiser removes iframes,
        # and the test above checks that with it nothing connects at all.)
        assert listener.requests == []
        assert remote.requests == []
    finally:
        remote.close()


def test_phone_width_shows_one_pane_at_a_time(
    browser: Browser, server: RunningServer, tmp_path: Path
) -> None:
    for number in range(3):
        send(
            server,
            make_message(f"user{number}@example.test", f"A message with a fairly long subject line {number}"),
        )
    context = browser.new_context(viewport={"width": 375, "height": 740}, is_mobile=True, has_touch=True)
    context.set_default_timeout(WAIT)
    try:
        p = context.new_page()
        open_ui(p, server)
        p.locator("#message-list li").first.wait_for()
        assert p.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
        assert not p.locator("#view-pane").is_visible()
        p.screenshot(path=str(tmp_path / "phone-list.png"))
        p.locator("#message-list li").first.click()
        p.locator("#back").wait_for()
        assert not p.locator("#list-pane").is_visible()
        assert p.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
        p.click("#back")
        p.locator("#list-pane").wait_for()
        # The mailboxes live in a drawer behind the menu button.
        p.click("#menu")
        p.locator("#mailbox-list button", has_text="user1@example.test").click()
        p.locator("#list-title", has_text="user1@example.test").wait_for()
        # The title changes at once, the list when the mailbox's page arrives.
        expect(p.locator("#message-list li")).to_have_count(1, timeout=WAIT)
    finally:
        context.close()


@pytest.fixture
def mta(server_factory: Callable[..., RunningServer], tmp_path: Path) -> RunningServer:
    data_dir = tmp_path / "mta"
    accounts = Accounts(data_dir / "accounts.json")
    accounts.add_user("alice@example.test", "alice-password")
    accounts.add_user("bob@example.test", "bob-password")
    return server_factory(domains=("example.test",), data_dir=data_dir)


def test_login_then_only_your_own_mail(page: Page, mta: RunningServer) -> None:
    send(mta, make_message("alice@example.test", "Hi Alice", html="<p id=greeting>Hello Alice</p>"))
    send(mta, make_message("bob@example.test", "Hi Bob", html="<p>Hello Bob</p>"))
    p = page
    p.goto(mta.base_url + "/")
    p.fill("#login-address", "alice@example.test")
    p.fill("#login-password", "wrong")
    p.click("#login-form button[type=submit]")
    p.locator("#login-error", has_text="wrong address or password").wait_for()
    p.fill("#login-password", "alice-password")
    p.click("#login-form button[type=submit]")
    p.locator("#message-list li", has_text="Hi Alice").wait_for()
    assert p.locator("#message-list li").count() == 1
    assert p.locator("#mailbox-list").inner_text().count("bob") == 0
    # The session cookie is HttpOnly: page script cannot read it.
    assert "postoffice_session" not in p.evaluate("document.cookie")
    # The sandboxed frame is still allowed the session (same site), so the HTML shows.
    p.click("#message-list li")
    p.frame_locator("#tab-html").locator("#greeting", has_text="Hello Alice").wait_for()


def test_ui_screenshots(browser: Browser, server: RunningServer, tmp_path: Path) -> None:
    """Desktop and phone screenshots of a realistic mailbox (kept in the test's tmp dir)."""
    send(
        server,
        make_message(
            "dev@example.test",
            "Welcome to postoffice",
            "Plain text",
            sender="Team <team@example.org>",
            html="<h2>Welcome!</h2><p>Your <b>mailbox</b> is ready.</p>",
        ),
    )
    send(
        server,
        make_message(
            "dev@example.test",
            "Invoice #1042",
            "Pay soon",
            sender="billing@shop.example",
            attachments=[("invoice.pdf", "application/pdf", b"%PDF" * 500)],
        ),
    )
    send(server, make_message("qa@example.test", "Password reset", "Click the link"))
    for width, height, name in ((1280, 800, "desktop"), (390, 844, "phone")):
        context = browser.new_context(viewport={"width": width, "height": height})
        context.set_default_timeout(WAIT)
        try:
            p = context.new_page()
            open_ui(p, server)
            p.locator("#message-list li", has_text="Welcome to postoffice").click()
            p.frame_locator("#tab-html").locator("h2").wait_for()
            shot = tmp_path / f"ui-{name}.png"
            p.screenshot(path=str(shot))
            assert shot.stat().st_size > 1000
        finally:
            context.close()


def test_read_toggle_made_while_the_open_is_marking_read_wins(page: Page, server: RunningServer) -> None:
    """Opening a message marks it read; a "u" pressed before that request is answered must
    still leave the message unread, on the page and on the server."""
    send(server, make_message("toggle@example.test", "toggled"))
    held: list[Route] = []

    def hold_changes(route: Route) -> None:
        if route.request.method == "PATCH":
            held.append(route)  # answered later, in the order the page sent them
        else:
            route.continue_()

    p = page
    p.route("**/api/v1/messages/*", hold_changes)
    open_ui(p, server)
    p.locator("#message-list li", has_text="toggled").click()
    p.locator("#view-subject", has_text="toggled").wait_for()
    while not held:
        p.wait_for_timeout(20)
    p.keyboard.press("u")  # the mark-read of the open has not been answered yet
    p.locator("#message-list li.unread", has_text="toggled").wait_for()
    released = 0
    while released < 2:
        if held:
            held.pop(0).continue_()
            released += 1
        else:
            p.wait_for_timeout(20)
    with client(server) as http:
        wait_for(lambda: messages(http)["messages"][0]["read"] is False, what="unread on the server")
    p.locator("#message-list li.unread", has_text="toggled").wait_for()


def test_keyboard_navigation(page: Page, server: RunningServer) -> None:
    for subject in ("oldest", "middle", "newest"):
        send(server, make_message("keys@example.test", subject))
    p = page
    open_ui(p, server)
    p.locator("#message-list li").nth(2).wait_for()
    p.locator("#message-list").focus()
    for key in ("j", "j", "j", "k", "Enter"):
        p.keyboard.press(key)
    p.locator("#view-subject", has_text="middle").wait_for()
    p.keyboard.press("u")
    p.locator("#message-list li.unread", has_text="middle").wait_for()
    p.keyboard.press("Escape")
    p.locator("#view-empty").wait_for()
    p.keyboard.press("/")
    assert p.evaluate("document.activeElement.id") == "search"


@pytest.fixture
def us_page(browser: Browser, watch: Watch) -> Iterator[Page]:
    """A desktop page in a fixed locale and time zone, for what dates look like."""
    context = browser.new_context(viewport={"width": 1280, "height": 800}, locale="en-US", timezone_id="UTC")
    context.set_default_timeout(WAIT)
    page = context.new_page()
    page.on(
        "console", lambda entry: watch.console_errors.append(entry.text) if entry.type == "error" else None
    )
    yield page
    context.close()


def test_rows_name_the_mailbox_show_a_snippet_and_the_day(
    us_page: Page, server: RunningServer, watch: Watch
) -> None:
    old = make_message("ann@example.test", "From the past", "Minutes of the\n\nmeeting   follow.")
    old["Date"] = "Tue, 03 Mar 2020 10:00:00 +0000"
    send(server, old)
    send(server, make_message("bob@example.test", "Fresh", "News of today"))
    with client(server) as http:
        fresh = next(m for m in messages(http)["messages"] if m["subject"] == "Fresh")
    received = datetime.fromisoformat(fresh["date"].replace("Z", "+00:00"))
    p = us_page
    open_ui(p, server)
    past = p.locator("#message-list li", has_text="From the past")
    today = p.locator("#message-list li", has_text="Fresh")
    # "All mailboxes" mixes mailboxes: each row says which one it came to.
    expect(past.locator(".mailbox")).to_have_text("ann@example.test")
    expect(today.locator(".mailbox")).to_have_text("bob@example.test")
    expect(past.locator(".snippet")).to_have_text("Minutes of the meeting follow.")
    expect(today.locator(".snippet")).to_have_text("News of today")
    # The day, not only the time; the year when it is not this one.
    expect(past.locator(".date")).to_have_text("Mar 3, 2020")
    expect(today.locator(".date")).to_contain_text(f"{received:%b} {received.day}, ")
    assert "2020" in (past.locator(".date").get_attribute("title") or "")
    # One mailbox's list need not repeat its name on every row.
    p.locator("#mailbox-list button", has_text="bob@example.test").click()
    expect(p.locator("#message-list li")).to_have_count(1)
    expect(p.locator("#message-list .mailbox")).to_have_count(0)
    expect(p.locator("#message-list .snippet")).to_have_text("News of today")
    assert watch.console_errors == []


def test_the_address_names_the_open_message_and_editing_it_navigates(
    page: Page, server: RunningServer, watch: Watch
) -> None:
    send(server, make_message("a@example.test", "first"))
    send(server, make_message("b@example.test", "second"))
    send(server, make_message("b@example.test", "third"))
    with client(server) as http:
        ids = {m["subject"]: m["id"] for m in messages(http)["messages"]}
    p = page
    p.goto(f"{server.base_url}/#id={ids['first']}")
    expect(p.locator("#view-subject")).to_have_text("first")
    # The open message's row is marked, however it was opened.
    expect(p.locator("#message-list li.open")).to_have_count(1)
    expect(p.locator("#message-list li.open")).to_contain_text("first")

    p.evaluate(f"location.hash = 'mailbox=b%40example.test&id={ids['second']}'")
    expect(p.locator("#list-title")).to_have_text("b@example.test")
    expect(p.locator("#view-subject")).to_have_text("second")
    expect(p.locator("#message-list li")).to_have_count(2)
    expect(p.locator("#message-list li.open")).to_contain_text("second")
    expect(p.locator("#mailbox-list button.current")).to_contain_text("b@example.test")

    p.evaluate("location.hash = 'mailbox=b%40example.test'")
    expect(p.locator("#view-empty")).to_be_visible()
    expect(p.locator("#message-list li.open")).to_have_count(0)

    # Back goes where the address was; so it does after a click (a phone's Back button
    # leaves the message, not the page).
    p.go_back()
    expect(p.locator("#view-subject")).to_have_text("second")
    p.locator("#message-list li", has_text="third").click()
    expect(p.locator("#view-subject")).to_have_text("third")
    assert f"id={ids['third']}" in p.url
    p.go_back()
    expect(p.locator("#view-subject")).to_have_text("second")
    expect(p.locator("#message-list li.open")).to_contain_text("second")
    assert watch.dialogs == [] and watch.console_errors == []


def test_a_user_is_shown_only_their_own_mailbox_and_what_they_may_do(page: Page, mta: RunningServer) -> None:
    send(mta, make_message("alice@example.test", "Hi Alice"))
    send(mta, make_message("bob@example.test", "Hi Bob"))
    asked: list[str] = []
    p = page
    p.on("request", lambda request: asked.append(request.url))
    # A link naming someone else's mailbox, followed by a person who logs in as alice.
    p.goto(mta.base_url + "/#mailbox=bob%40example.test")
    p.fill("#login-address", "alice@example.test")
    p.fill("#login-password", "alice-password")
    p.click("#login-form button[type=submit]")
    expect(p.locator("#toast")).to_contain_text("bob@example.test is not your mailbox")
    expect(p.locator("#message-list li")).to_have_count(1)
    expect(p.locator("#message-list li")).to_contain_text("Hi Alice")
    # The sidebar and the heading say the same: her mailbox, and nothing besides.
    expect(p.locator("#mailbox-list li")).to_have_count(1)
    expect(p.locator("#mailbox-list button.current")).to_contain_text("alice@example.test")
    expect(p.locator("#list-title")).to_have_text("alice@example.test")
    expect(p.locator("#clear-mailbox")).to_be_visible()  # her own mailbox she may empty

    p.locator("#toast").click()  # dismissed
    expect(p.locator("#toast")).to_be_hidden()
    p.evaluate("location.hash = 'mailbox=bob%40example.test'")
    expect(p.locator("#toast")).to_contain_text("bob@example.test is not your mailbox")
    expect(p.locator("#list-title")).to_have_text("alice@example.test")
    expect(p.locator("#message-list li")).to_contain_text("Hi Alice")
    assert "bob" not in p.locator("#app").inner_text().replace("bob@example.test is not your mailbox.", "")
    assert not [url for url in asked if "/api/" in url and "bob" in url]


@pytest.mark.parametrize("width", [1280, 400])
def test_an_error_message_leaves_the_pager_usable(
    browser: Browser, server: RunningServer, width: int
) -> None:
    send(server, make_message("pager@example.test", "one"))
    context = browser.new_context(viewport={"width": width, "height": 800})
    context.set_default_timeout(WAIT)
    try:
        p = context.new_page()
        open_ui(p, server)
        p.locator("#message-list li").first.wait_for()
        p.fill("#search", "is:bogus")
        p.press("#search", "Enter")
        expect(p.locator("#toast")).to_contain_text("expected is:read or unread")
        toast = p.locator("#toast").bounding_box()
        pager = p.locator(".pager").bounding_box()
        assert toast is not None and pager is not None
        assert toast["y"] + toast["height"] <= pager["y"], (toast, pager)
        for button in ("#newer", "#older"):
            box = p.locator(button).bounding_box()
            assert box is not None
            centre = (box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
            assert p.evaluate("([x, y]) => document.elementFromPoint(x, y).id", centre) == button[1:]
        assert toast["x"] >= 0 and toast["x"] + toast["width"] <= width
    finally:
        context.close()


def test_a_link_opens_its_mailbox_search_and_message(page: Page, server: RunningServer) -> None:
    """The address bar's ``#mailbox=…&q=…&id=…`` (docs/web-ui.md) restores the view it names."""
    send(server, make_message("dev@example.test", "Invoice 7", "pay", sender="shop@example.org"))
    send(server, make_message("dev@example.test", "Invoice 8", "pay", sender="shop@example.org"))
    send(server, make_message("qa@example.test", "Invoice 9", "pay", sender="shop@example.org"))
    with client(server) as http:
        wanted = next(m for m in messages(http)["messages"] if m["subject"] == "Invoice 7")
    p = page
    p.goto(f"{server.base_url}/#mailbox=dev%40example.test&q=subject%3Ainvoice&id={wanted['id']}")
    p.locator("#view-subject", has_text="Invoice 7").wait_for()
    p.locator("#list-count", has_text="2 found").wait_for()  # dev's two invoices, not qa's
    assert p.locator("#list-title").inner_text() == "dev@example.test"
    assert p.locator("#search").input_value() == "subject:invoice"
    # The page writes where it is back into the address, so reload and bookmarks keep it.
    assert p.evaluate("location.hash") == f"#mailbox=dev%40example.test&q=subject%3Ainvoice&id={wanted['id']}"


def test_a_link_to_a_message_survives_the_login(page: Page, mta: RunningServer) -> None:
    send(mta, make_message("alice@example.test", "Quarterly report", "numbers"))
    with client(mta) as http:
        http.post("/api/v1/login", json={"address": "alice@example.test", "password": "alice-password"})
        (summary,) = messages(http)["messages"]
    p = page
    p.goto(f"{mta.base_url}/#id={summary['id']}")
    p.fill("#login-address", "alice@example.test")
    p.fill("#login-password", "alice-password")
    p.click("#login-form button[type=submit]")
    p.locator("#view-subject", has_text="Quarterly report").wait_for()


def test_authentication_results_show_as_badges_and_a_dmarc_failure_is_marked_in_the_list(
    page: Page, server: RunningServer, watch: Watch, tmp_path: Path
) -> None:
    """Mail checked on arrival carries our Authentication-Results field (the server's host name
    is mx.test); the open message shows each result, the list marks a DMARC failure."""
    to = "dev@example.test"
    passed = [
        results.spf_result(SpfVerdict("pass", "shop.example")),
        results.dkim_result(DkimVerdict("pass", "shop.example", "s2024", "abcdefghij")),
        results.dmarc_result("pass", "shop.example", "reject", "none"),
        results.arc_result("none"),
    ]
    failed = [
        results.spf_result(SpfVerdict("softfail", "bank.example")),
        results.dkim_result(DkimVerdict("fail", "bank.example", "k1", "zyxwvuts")),
        results.dmarc_result("fail", "bank.example", "reject", "reject"),
    ]
    send_with_fields(
        server,
        make_message(to, "Your order", sender="shop@shop.example"),
        results.header_field("mx.test", passed),
    )
    send_with_fields(
        server,
        make_message(to, "Verify your account", sender="bank@bank.example"),
        results.header_field("mx.test", failed),
    )
    send(server, make_message(to, "Sent by a colleague"))
    open_ui(page, server)
    p = page
    expect(p.locator("#message-list li")).to_have_count(3)
    # The list marks the message failing DMARC, and only it.
    flags = p.locator("#message-list .auth-flag")
    expect(flags).to_have_count(1)
    expect(p.locator("#message-list li", has_text="Verify your account").locator(".auth-flag")).to_have_text(
        "DMARC"
    )
    assert "bank.example" in (flags.get_attribute("title") or "")

    p.locator("#message-list li", has_text="Your order").click()
    badges = p.locator("#view-auth .auth-badge")
    expect(badges).to_have_text(["SPF pass", "DKIM pass (d=shop.example, s=s2024)", "DMARC pass", "ARC none"])
    expect(p.locator("#view-auth .auth-badge.good")).to_have_count(3)
    expect(p.locator("#view-auth .auth-badge.other")).to_have_text(["ARC none"])
    assert "selector s2024" in (badges.nth(1).get_attribute("title") or "")
    assert "policy reject" in (badges.nth(2).get_attribute("title") or "")
    p.screenshot(path=str(tmp_path / "auth-pass.png"))

    p.locator("#message-list li", has_text="Verify your account").click()
    expect(badges).to_have_text(["SPF softfail", "DKIM fail (d=bank.example, s=k1)", "DMARC fail"])
    expect(p.locator("#view-auth .auth-badge.bad")).to_have_count(3)
    p.screenshot(path=str(tmp_path / "auth-fail.png"))
    p.set_viewport_size({"width": 390, "height": 844})  # a phone: the badges wrap, none hidden
    expect(p.locator("#mailboxes")).not_to_be_in_viewport()  # the drawer has slid away
    for number in range(3):
        expect(badges.nth(number)).to_be_in_viewport()
    p.screenshot(path=str(tmp_path / "auth-fail-phone.png"))
    p.set_viewport_size({"width": 1280, "height": 800})

    # Mail the server did not check shows no row of results at all.
    p.locator("#message-list li", has_text="Sent by a colleague").click()
    p.locator("#view-subject", has_text="Sent by a colleague").wait_for()
    expect(p.locator("#view-auth")).to_be_hidden()
    assert watch.console_errors == []


def test_junk_is_marked_in_the_list_left_out_of_unread_and_filtered_by_its_button(
    page: Page, server: RunningServer
) -> None:
    """A copy in the Junk folder (the DMARC quarantine's, or one a mail client moved there)."""
    to = "dev@example.test"
    send(server, make_message(to, "Lunch on Friday"))
    send(server, make_message(to, "You have won"))
    with client(server) as http:
        [won] = messages(http, q='subject:"You have won"')["messages"]
    box = server.config.mail_dir / "example.test" / "dev"
    [path] = [item for item in (box / "new").iterdir() if b"You have won" in item.read_bytes()]
    for part in ("tmp", "new", "cur"):
        (box / ".Junk" / part).mkdir(parents=True, exist_ok=True)
    path.rename(box / ".Junk" / "new" / path.name)
    with client(server) as http:
        wait_for(lambda: messages(http, q="in:junk")["total"] == 1 or None, 5.0, "the move followed")
        assert [item["folder"] for item in messages(http, q="in:junk")["messages"]] == ["Junk"]
        assert messages(http, q="in:junk")["messages"][0]["id"] == won["id"]  # the same message
    open_ui(page, server)
    p = page
    expect(p.locator("#message-list li")).to_have_count(2, timeout=WAIT)
    junk_row = p.locator("#message-list li", has_text="You have won")
    expect(junk_row.locator(".junk-badge")).to_have_text("Junk")
    expect(junk_row).not_to_have_class("unread")
    expect(p.locator("#message-list .junk-badge")).to_have_count(1)
    # The mailbox counts one unread message: the inbox's.
    expect(p.locator("#mailbox-list li", has_text=to).locator(".badge")).to_have_text("1")
    p.locator("#junk-filter").click()
    expect(p.locator("#search")).to_have_value("in:junk")
    expect(p.locator("#message-list li")).to_have_count(1)
    expect(p.locator("#junk-filter")).to_have_attribute("aria-pressed", "true")
    p.locator("#junk-filter").click()
    expect(p.locator("#message-list li")).to_have_count(2)
    expect(p.locator("#junk-filter")).to_have_attribute("aria-pressed", "false")


def test_folders_show_under_the_mailbox_and_a_message_moves_to_trash(
    page: Page, server: RunningServer, watch: Watch
) -> None:
    send(server, make_message("dev@example.test", "Keep this", "fine"))
    send(server, make_message("dev@example.test", "Spam offer", "buy now"))
    p = page
    p.goto(f"{server.base_url}/#mailbox=dev%40example.test")
    expect(p.locator("#message-list li")).to_have_count(2, timeout=WAIT)
    for name in ("INBOX", "Archive", "Junk", "Trash"):
        p.locator(f"#mailbox-list button[data-folder='{name}']").wait_for()
    p.locator("#message-list li", has_text="Spam offer").click()
    p.locator("#view-subject", has_text="Spam offer").wait_for()
    p.select_option("#move-to", "Trash")
    p.locator("#toast", has_text="Moved to Trash").wait_for()
    trash = server.config.mail_dir / "example.test" / "dev" / ".Trash"
    wait_for(lambda: [*trash.joinpath("cur").iterdir(), *trash.joinpath("new").iterdir()], what="the rename")
    p.click("#mailbox-list button[data-folder='Trash']")
    expect(p.locator("#message-list li")).to_have_count(1, timeout=WAIT)
    assert "Spam offer" in p.locator("#message-list li").inner_text()
    assert p.locator("#list-title").inner_text() == "dev@example.test · Trash"
    p.click("#mailbox-list button[data-folder='INBOX']")
    expect(p.locator("#message-list li")).to_have_count(1, timeout=WAIT)
    assert "Keep this" in p.locator("#message-list li").inner_text()
    assert watch.dialogs == [] and watch.console_errors == []


def test_tags_show_as_chips_are_added_removed_and_searched(
    page: Page, server: RunningServer, watch: Watch
) -> None:
    tagged = make_message("tia@example.test", "Tagged one", "hi")
    tagged["X-Tags"] = "signup"
    send(server, tagged)
    send(server, make_message("tia@example.test", "Plain one", "hi"))
    p = page
    open_ui(p, server)
    row = p.locator("#message-list li", has_text="Tagged one")
    expect(row.locator(".tag-chip")).to_have_text(["signup"])
    p.locator("#message-list li", has_text="Plain one").click()
    p.locator("#view-subject", has_text="Plain one").wait_for()
    expect(p.locator("#view-tags li")).to_have_count(0)
    p.fill("#tag-input", "Checked")
    p.press("#tag-input", "Enter")
    expect(p.locator("#view-tags li")).to_have_text(["checked×"])
    plain = p.locator("#message-list li", has_text="Plain one")
    expect(plain.locator(".tag-chip")).to_have_text(["checked"])
    with client(server) as http:
        assert [m["subject"] for m in messages(http, q="tag:checked")["messages"]] == ["Plain one"]
    # A chip in the list searches for its tag.
    row.locator(".tag-chip").click()
    expect(p.locator("#message-list li")).to_have_count(1)
    assert p.locator("#search").input_value() == "tag:signup"
    p.locator("#message-list li", has_text="Tagged one").click()
    p.locator("#view-subject", has_text="Tagged one").wait_for()
    p.click("#view-tags button[aria-label='Remove tag signup']")
    expect(p.locator("#view-tags li")).to_have_count(0)
    with client(server) as http:
        assert messages(http, q="tag:signup")["messages"] == []
    assert watch.dialogs == [] and watch.console_errors == []
