"""The transaction layer with bytes alone: stages and checks, policy, the spool writer, AUTH.

Every test drives a real :class:`~postoffice.smtpd.Conversation` (the real SMTP core under it)
with client bytes through ``smtpd_pair.SmtpdSession``, the way net.session drives it, and reads
the replies as a client would. Policy and AUTH are the real ones (accounts in a temporary
file, the real password check); only storage is an in-memory fake (``MemoryStore``), the file
spool being covered by the real-socket suites.
"""

from __future__ import annotations

import asyncio
import base64
import logging
from dataclasses import replace
from pathlib import Path

import pytest
from argon2 import PasswordHasher

from postoffice.accounts import Accounts
from postoffice.config import Config
from postoffice.net.login import Authenticator
from postoffice.net.login_throttle import LoginThrottle
from postoffice.policy import Policy
from postoffice.smtp import replies as r
from postoffice.smtp.server import ServerSettings
from postoffice.smtpd import ACCEPT, DEFER, Context, MessageResult, Services, Stage, Stages, Verdict
from postoffice.smtpd.drive import drive
from postoffice.smtpd.standard import standard_stages
from postoffice.spool.envelope import Route
from postoffice.spool.files import FileSpool
from smtp_pair import HOST
from smtpd_pair import CLIENT_ADDRESS, MemoryStore, Observed, SmtpdSession, services

ALICE = "alice@example.test"
ALICE_PASSWORD = "correct horse battery staple"
BOB = "bob@example.test"
SALES = "sales@example.test"
REMOTE = "friend@elsewhere.test"
CONTENT = b"From: a@client.test\r\nSubject: hello\r\n\r\nBody.\r\n"
AUTH_SETTINGS = ServerSettings(hostname=HOST, auth_mechanisms=("PLAIN", "LOGIN"))


@pytest.fixture
def accounts(tmp_path: Path) -> Accounts:
    # The cheapest argon2 parameters: the password check is real, only fast.
    accounts = Accounts(
        tmp_path / "accounts.json", hasher=PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
    )
    accounts.add_user(ALICE, ALICE_PASSWORD)
    accounts.add_user(BOB, "bob's password")
    accounts.add_alias(SALES, [ALICE])
    return accounts


@pytest.fixture
def policy(tmp_path: Path, accounts: Accounts) -> Policy:
    return Policy(Config(hostname=HOST, data_dir=tmp_path, domains=("example.test",)), accounts)


def standard(
    policy: Policy,
    store: MemoryStore,
    *,
    submission: bool = False,
    authenticator: Authenticator | None = None,
    junk_commands: int = 100,
    results: list[MessageResult] | None = None,
) -> Services:
    stages = standard_stages(
        policy=policy,
        hostname=HOST,
        junk_commands=junk_commands,
        submission=submission,
        authenticator=authenticator,
    )
    return Services(
        stages=stages,
        store=store,
        on_queued=(results if results is not None else []).append,
        login=authenticator,
        spawn=asyncio.ensure_future,
    )


def plain(user: str, password: str) -> str:
    return base64.b64encode(f"\0{user}\0{password}".encode()).decode()


# --- stages and verdicts ------------------------------------------------------------------------


class Recorder:
    """A check that answers from a script and remembers at which stages it was asked."""

    def __init__(self, *verdicts: Verdict) -> None:
        self.verdicts = list(verdicts)
        self.stages: list[Stage] = []

    async def check(self, ctx: Context) -> Verdict:
        self.stages.append(ctx.stage)
        return self.verdicts.pop(0) if self.verdicts else ACCEPT


class Waits:
    """A check that really waits (a DNS lookup, say) before it accepts."""

    def __init__(self) -> None:
        self.done = False

    async def check(self, ctx: Context) -> Verdict:
        await asyncio.sleep(0.01)
        self.done = True
        return ACCEPT


class Broken:
    async def check(self, ctx: Context) -> Verdict:
        raise RuntimeError("the check has a bug")


def test_commands_whose_checks_never_wait_are_answered_without_waiting() -> None:
    """Handlers run to completion inside process(): only the commit asks the transport to wait."""
    store = MemoryStore()
    check = Recorder()
    stages = Stages(helo=(check,), mail=(check,), rcpt=(check,), data_start=(check,), data_end=(check,))
    with SmtpdSession(services(stages, store)) as session:
        session.command("EHLO client.test")
        got = session.transaction("a@client.test", ["x@capture.test", "y@capture.test"], CONTENT)
        assert [reply.code for reply in got] == [250, 250, 250, 354, 250]
        assert session.waits == ["commit"]
        assert check.stages == [
            Stage.HELO,
            Stage.MAIL,
            Stage.RCPT,
            Stage.RCPT,
            Stage.DATA_START,
            Stage.DATA_END,
        ]


def test_a_check_that_waits_is_resumed_and_pipelined_commands_answered_in_order() -> None:
    waits = Waits()
    with SmtpdSession(services(Stages(rcpt=(waits,)))) as session:
        session.command("EHLO client.test")
        got = session.pipeline("MAIL FROM:<a@client.test>", "RCPT TO:<x@capture.test>", "NOOP")
        assert [reply.code for reply in got] == [250, 250, 250]
        assert waits.done and session.waits == ["rcpt"]


def test_the_first_refusal_decides_and_later_checks_are_not_asked() -> None:
    first, second = Recorder(r.RELAY_DENIED), Recorder()
    with SmtpdSession(services(Stages(rcpt=(first, second)))) as session:
        session.command("EHLO client.test")
        session.command("MAIL FROM:<a@client.test>")
        assert session.command("RCPT TO:<x@capture.test>").is_(r.RELAY_DENIED)
        assert second.stages == []
        # Refused, the recipient was not added: DATA has nobody to deliver to.
        assert session.command("DATA").is_(r.NO_VALID_RECIPIENTS)


def test_a_deferred_check_decides_at_the_end_of_the_message() -> None:
    """DEFER at MAIL (SPF starting its lookups, say): asked again at data-end, before that
    stage's own checks, and its refusal then refuses the message: nothing is stored."""
    store = MemoryStore()
    spf, end = Recorder(DEFER, r.Reply.of(550, "5.7.23", "SPF validation failed")), Recorder()
    with SmtpdSession(services(Stages(mail=(spf,), data_end=(end,)), store)) as session:
        session.command("EHLO client.test")
        got = session.transaction("a@client.test", ["x@capture.test"], CONTENT)
        assert [reply.code for reply in got] == [250, 250, 354, 550]
        assert spf.stages == [Stage.MAIL, Stage.DATA_END]
        assert end.stages == []
        assert store.messages == [] and len(store.discarded) == 1
        # The session goes on: the next transaction is a new one, asked again from MAIL.
        assert [
            reply.code for reply in session.transaction("a@client.test", ["x@capture.test"], CONTENT)
        ] == [
            250,
            250,
            354,
            250,
        ]
        assert len(store.messages) == 1


class SpfLike:
    """Starts a lookup at MAIL and defers; awaits its result at the end of the message."""

    def __init__(self) -> None:
        self.started: list[asyncio.Future[str]] = []
        self.cancelled = 0

    async def lookup(self, result: asyncio.Future[str]) -> str:
        try:
            return await result
        except asyncio.CancelledError:
            self.cancelled += 1
            raise

    async def check(self, ctx: Context) -> Verdict:
        if ctx.stage is Stage.MAIL:
            result: asyncio.Future[str] = asyncio.get_running_loop().create_future()
            self.started.append(result)
            ctx.transaction.notes[self] = ctx.start(self.lookup(result))
            return DEFER
        verdict = await ctx.transaction.notes[self]
        return ACCEPT if verdict == "pass" else r.Reply.of(550, "5.7.23", "SPF fail")


def test_work_started_at_mail_runs_beside_the_content_and_is_awaited_at_its_end() -> None:
    spf = SpfLike()
    store = MemoryStore()
    with SmtpdSession(services(Stages(mail=(spf,)), store)) as session:
        session.command("EHLO client.test")
        session.command("MAIL FROM:<a@client.test>")
        session.command("RCPT TO:<x@capture.test>")
        session.command("DATA")
        spf.started[0].set_result("pass")  # the answer arrives while the content does
        assert session.message(CONTENT).code == 250
        assert session.waits == ["commit"]  # one wait: the rest of the lookup, then the commit
        # A transaction abandoned before its end (RSET): its lookup is cancelled, not leaked.
        session.command("MAIL FROM:<a@client.test>")
        assert session.command("RSET").is_(r.RESET_OK)
        session.loop.run_until_complete(asyncio.sleep(0))
        assert spf.cancelled == 1
        # And one the answer refuses: the message is refused at its end.
        session.command("MAIL FROM:<a@client.test>")
        session.command("RCPT TO:<x@capture.test>")
        session.command("DATA")
        spf.started[2].set_result("fail")
        assert session.message(CONTENT).code == 550
    assert len(store.messages) == 1


def test_a_check_that_raises_is_a_temporary_failure_and_one_log_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with SmtpdSession(services(Stages(mail=(Broken(),)))) as session:
        session.command("EHLO client.test")
        assert session.command("MAIL FROM:<a@client.test>").is_(r.LOCAL_ERROR)
        assert session.closed is None
        assert session.command("NOOP").is_(r.OK)
    [line] = [m for m in caplog.messages if "event=check-error" in m]
    assert "stage=mail check=Broken error='RuntimeError: the check has a bug'" in line
    assert not any(record.exc_info for record in caplog.records)


def test_a_421_from_a_check_ends_the_session() -> None:
    goodbye = r.Reply.of(421, "4.7.0", "Go away")
    with SmtpdSession(services(Stages(helo=(Recorder(goodbye),)))) as session:
        got = session.feed(b"EHLO client.test\r\nNOOP\r\n")
        assert [reply.code for reply in got] == [421]
        assert session.closed is not None


def test_a_connect_check_refusal_replaces_the_greeting() -> None:
    refused = r.Reply.of(554, "5.7.1", "Not from here")
    with SmtpdSession(services(Stages(connect=(Recorder(refused),)))) as session:
        assert [reply.code for reply in session.replies] == [554]
        assert session.closed is not None and session.closed.outcome == "refused"


def test_the_junk_command_limit_is_a_check_and_a_queued_message_resets_it(policy: Policy) -> None:
    store = MemoryStore()
    with SmtpdSession(standard(policy, store, junk_commands=3)) as session:
        session.command("EHLO client.test")
        session.pipeline("NOOP", "RSET")
        session.transaction("a@client.test", [ALICE], CONTENT)
        assert [reply.code for reply in session.pipeline("NOOP", "NOOP")] == [250, 250]
        got = session.feed(b"VRFY x\r\n")
        assert [reply.code for reply in got] == [252, 421]
        assert session.closed is not None and session.closed.outcome == "errors"


async def test_drive_runs_to_the_end_or_hands_over_the_rest() -> None:
    """A coroutine that never waits finishes inside drive(); one that waits is resumed by
    awaiting the Suspended, cancellation included."""
    seen: list[str] = []

    async def quick() -> None:
        seen.append("quick")

    async def slow() -> None:
        try:
            await asyncio.sleep(10)
        finally:
            seen.append("slow cancelled")

    assert drive(quick()) is None and seen == ["quick"]
    suspended = drive(slow())
    assert suspended is not None

    async def resume() -> None:
        await suspended

    task = asyncio.ensure_future(resume())
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert seen == ["quick", "slow cancelled"]


# --- policy ---------------------------------------------------------------------------------------


def test_policy_decides_mail_and_rcpt_and_routes_the_recipients(policy: Policy) -> None:
    store = MemoryStore()
    with SmtpdSession(standard(policy, store)) as session:
        session.command("EHLO client.test")
        assert session.command("MAIL FROM:<a@client.test>").is_(r.SENDER_OK)
        assert session.command(f"RCPT TO:<{REMOTE}>").is_(r.RELAY_DENIED)
        assert session.command("RCPT TO:<nobody@example.test>").is_(r.USER_UNKNOWN)
        assert session.command(f"RCPT TO:<{ALICE}>").is_(r.RECIPIENT_OK)
        # An alias of the same mailbox, and the same address in another case: one copy.
        assert session.command(f"RCPT TO:<{SALES}>").is_(r.RECIPIENT_OK)
        assert session.command("RCPT TO:<Alice@example.test>").is_(r.RECIPIENT_OK)
        assert session.command("DATA").code == 354
        assert session.message(CONTENT).code == 250
    [stored] = store.messages
    assert [(x.address, x.original, x.route) for x in stored.envelope.recipients] == [
        (ALICE, ALICE, Route.LOCAL)
    ]


def test_submission_needs_auth_before_mail(policy: Policy) -> None:
    with SmtpdSession(standard(policy, MemoryStore(), submission=True)) as session:
        session.command("EHLO client.test")
        assert session.command(f"MAIL FROM:<{ALICE}>").is_(r.AUTH_REQUIRED)
        # Refused, MAIL started no transaction.
        assert session.command(f"RCPT TO:<{ALICE}>").is_(r.NEED_MAIL)


# --- the spool writer -----------------------------------------------------------------------------


def test_the_stored_message_is_received_field_then_content_with_its_envelope(policy: Policy) -> None:
    store = MemoryStore()
    results: list[MessageResult] = []
    observed = Observed()
    with SmtpdSession(replace(standard(policy, store, results=results), observer=observed)) as session:
        session.command("EHLO client.test")
        got = session.transaction("a@client.test", [ALICE], CONTENT)
        assert got[-1].is_(r.queued(store.messages[0].queue_id))
    [stored] = store.messages
    received, _, rest = stored.content.partition(b"\r\n\tfor")
    assert received.startswith(
        b"Received: from client.test ([192.0.2.7])\r\n\tby mx.test (postoffice) with ESMTP id MEM00001"
    )
    assert rest.split(b"\r\n", 1)[1] == CONTENT
    envelope = stored.envelope
    assert (envelope.mail_from, envelope.helo, envelope.client_address, envelope.protocol) == (
        "a@client.test",
        "client.test",
        CLIENT_ADDRESS,
        "ESMTP",
    )
    assert [result.queued.queue_id for result in results] == ["MEM00001"] and results[0].folder is None
    # The transcript: every line, the end of the message answered without a client line.
    assert observed.lines[-3:] == ["C: DATA", "S: 354", "S: 250"]


def test_a_full_spool_refuses_data_and_keeps_the_transaction(policy: Policy) -> None:
    store = MemoryStore(full=True)
    with SmtpdSession(standard(policy, store)) as session:
        session.command("EHLO client.test")
        session.command("MAIL FROM:<a@client.test>")
        session.command(f"RCPT TO:<{ALICE}>")
        assert session.command("DATA").is_(r.INSUFFICIENT_STORAGE)
        store.full = False  # the operator made room: the same transaction may try again
        assert session.command("DATA").code == 354
        assert session.message(CONTENT).code == 250
    assert len(store.messages) == 1


def test_a_write_that_fails_reads_to_the_end_and_stores_nothing(policy: Policy) -> None:
    store = MemoryStore(fail_writes_after=100)
    with SmtpdSession(standard(policy, store)) as session:
        session.command("EHLO client.test")
        got = session.transaction("a@client.test", [ALICE], CONTENT + b"x" * 200 + b"\r\n")
        assert got[-1].is_(r.INSUFFICIENT_STORAGE)
        assert session.command("NOOP").is_(r.OK)  # the rest of the content was not read as commands
    assert store.messages == [] and store.discarded == ["MEM00001"]


def test_rset_after_a_bdat_chunk_discards_the_message(policy: Policy) -> None:
    store = MemoryStore()
    with SmtpdSession(standard(policy, store)) as session:
        session.command("EHLO client.test")
        session.command("MAIL FROM:<a@client.test>")
        session.command(f"RCPT TO:<{ALICE}>")
        [chunk] = session.feed(b"BDAT 10\r\n0123456789")
        assert chunk.is_(r.chunk_received(10))
        assert session.command("RSET").is_(r.RESET_OK)
    assert store.messages == [] and store.discarded == ["MEM00001"]


def test_a_data_start_refusal_answers_the_first_bdat_chunk() -> None:
    refused = r.Reply.of(550, "5.7.1", "Not today")
    store = MemoryStore()
    with SmtpdSession(services(Stages(data_start=(Recorder(refused),)), store)) as session:
        session.command("EHLO client.test")
        session.command("MAIL FROM:<a@client.test>")
        session.command("RCPT TO:<x@capture.test>")
        [chunk] = session.feed(b"BDAT 5 LAST\r\nhello")
        assert chunk.is_(refused)
        assert session.command("RCPT TO:<x@capture.test>").is_(r.NEED_MAIL)  # the transaction failed
    assert store.messages == []


class Authenticates:
    """A data-end check as DKIM/DMARC will be: reads the header section, streams the stored
    content, adds Authentication-Results at the top and files the message in Junk."""

    def __init__(self) -> None:
        self.header_section = b""
        self.content = b""

    async def check(self, ctx: Context) -> Verdict:
        message = ctx.message
        assert message is not None and ctx.stage is Stage.DATA_END
        self.header_section = message.header_section()
        with message.open() as stored:
            self.content = b"".join(iter(lambda: stored.read(7), b""))
        message.add_header(b"Authentication-Results: mx.test; dmarc=fail (p=quarantine)\r\n")
        ctx.transaction.folder = "Junk"
        return ACCEPT


def test_a_data_end_check_reads_the_message_adds_a_field_on_top_and_chooses_the_folder(
    policy: Policy, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "postoffice.smtp")
    store = MemoryStore()
    results: list[MessageResult] = []
    checker = Authenticates()
    conversation_services = standard(policy, store, results=results)
    stages = replace(conversation_services.stages, data_end=(checker,))
    with SmtpdSession(replace(conversation_services, stages=stages)) as session:
        session.command("EHLO client.test")
        assert session.transaction("a@client.test", [ALICE], CONTENT)[-1].code == 250
    [stored] = store.messages
    assert stored.content.startswith(
        b"Authentication-Results: mx.test; dmarc=fail (p=quarantine)\r\nReceived: "
    )
    assert stored.content.endswith(CONTENT)
    assert checker.content.endswith(CONTENT) and checker.content.startswith(b"Received: ")
    assert checker.header_section.startswith(b"Received: ")
    assert checker.header_section.endswith(b"From: a@client.test\r\nSubject: hello\r\n")
    assert results[0].folder == "Junk"
    assert any("event=queued" in m and m.endswith("folder=Junk") for m in caplog.messages)


# --- AUTH -----------------------------------------------------------------------------------------


@pytest.fixture
def authenticator(accounts: Accounts) -> Authenticator:
    throttle = LoginThrottle(max_failures=2, window=600, delay=0)
    return Authenticator(accounts, throttle)


def test_auth_plain_logs_the_user_in_and_mail_is_sent_as_them(
    policy: Policy, authenticator: Authenticator
) -> None:
    store = MemoryStore()
    with SmtpdSession(
        standard(policy, store, submission=True, authenticator=authenticator), AUTH_SETTINGS
    ) as session:
        session.command("EHLO client.test")
        assert session.command(f"AUTH PLAIN {plain(ALICE, ALICE_PASSWORD)}").is_(r.AUTH_SUCCESSFUL)
        assert session.waits == ["auth"]  # the password check ran in a worker thread
        assert session.command(f"MAIL FROM:<{BOB}>").is_(r.SENDER_NOT_OWNED)
        got = session.transaction(ALICE, [REMOTE], CONTENT)
        assert [reply.code for reply in got] == [250, 250, 354, 250]
    [stored] = store.messages
    assert stored.envelope.auth_user == ALICE and stored.envelope.protocol == "ESMTPA"
    assert [(x.address, x.route) for x in stored.envelope.recipients] == [(REMOTE, Route.REMOTE)]


def test_auth_login_takes_its_two_steps(policy: Policy, authenticator: Authenticator) -> None:
    with SmtpdSession(standard(policy, MemoryStore(), authenticator=authenticator), AUTH_SETTINGS) as session:
        session.command("EHLO client.test")
        assert session.command("AUTH LOGIN").code == 334
        assert session.command(base64.b64encode(ALICE.encode())).code == 334
        assert session.command(base64.b64encode(ALICE_PASSWORD.encode())).is_(r.AUTH_SUCCESSFUL)
        assert session.command("AUTH PLAIN").is_(r.BAD_SEQUENCE)  # RFC 4954 §4: only once


def test_failed_logins_end_in_421_and_the_throttle_refuses_before_the_exchange(
    policy: Policy, authenticator: Authenticator, caplog: pytest.LogCaptureFixture
) -> None:
    conversation_services = standard(policy, MemoryStore(), authenticator=authenticator)
    with SmtpdSession(conversation_services, AUTH_SETTINGS) as session:
        session.command("EHLO client.test")
        assert session.command(f"AUTH PLAIN {plain(ALICE, 'wrong')}").is_(r.AUTH_FAILED)
        got = session.feed(f"AUTH PLAIN {plain(ALICE, 'wrong again')}\r\nNOOP\r\n".encode())
        assert [reply.code for reply in got] == [421]
        assert session.closed is not None
    # The same client again: the auth stage's throttle check answers before any exchange.
    with SmtpdSession(conversation_services, AUTH_SETTINGS) as again:
        again.command("EHLO client.test")
        assert again.command(f"AUTH PLAIN {plain(ALICE, ALICE_PASSWORD)}").is_(r.TOO_MANY_AUTH_FAILURES)
        assert again.closed is not None and again.waits == []
    assert any("event=auth-refused" in m for m in caplog.messages)


def test_starttls_drops_pipelined_plaintext_and_the_client_starts_over(policy: Policy) -> None:
    """RFC 3207 §4.2 through the transaction layer: after the 220 nothing buffered is read,
    and the client starts over with EHLO."""
    conversation_services = replace(standard(policy, MemoryStore()), tls=True)
    settings = ServerSettings(hostname=HOST, starttls=True)
    with SmtpdSession(conversation_services, settings) as session:
        session.command("EHLO client.test")
        got = session.feed(b"STARTTLS\r\nMAIL FROM:<a@client.test>\r\n")
        assert [reply.code for reply in got] == [220]
        assert session.tls_started == 1
        # Enhanced status codes are off again until EHLO (RFC 2034 §3).
        assert session.command("MAIL FROM:<a@client.test>").is_(r.NEED_HELO, enhanced=False)
        assert session.command("EHLO client.test").code == 250
        assert session.command("MAIL FROM:<a@client.test>").is_(r.SENDER_OK)
        assert session.conversation.client.tls


@pytest.mark.parametrize("size", [100, 300_000], ids=["small", "large"])
def test_a_data_end_field_reaches_the_file_spool_above_the_received_field(
    policy: Policy, tmp_path: Path, size: int
) -> None:
    """The same check over the real spool writer: a message that outgrew the writer's buffer
    is read back from its file, and its added field goes into the room left for it."""
    spool = FileSpool(tmp_path / "spool")
    checker = Authenticates()
    content = CONTENT + (b"z" * 70 + b"\r\n") * (size // 72)
    conversation_services = replace(standard(policy, MemoryStore()), store=spool)
    stages = replace(conversation_services.stages, data_end=(checker,))
    with SmtpdSession(replace(conversation_services, stages=stages)) as session:
        session.command("EHLO client.test")
        assert session.transaction("a@client.test", [ALICE], content)[-1].code == 250
        [queue_id] = spool.pending()
    with spool.open(queue_id) as stored:
        message = stored.read()
    assert message.startswith(b"Authentication-Results: mx.test; dmarc=fail (p=quarantine)\r\nReceived: ")
    assert message.endswith(content) and checker.content.endswith(content)
