"""A corpus for the migrate-store tests, and what a set of stores holds, made comparable.

The corpus is written through the stores' own interfaces into an embedded data directory:
several users (an admin, a user with a UTF-8 address) and aliases (a catch-all too); folders
(the inbox, Junk, a nested one, an empty one) with subscriptions; flags, keywords, a message
still in ``new/``, two copies of one message, an 8-bit SMTPUTF8 message and a 5 MB one; and
queued messages, one with a state log (a deferral, a failure, a report sent, a hold); and two
DKIM keys, one retired.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
from dataclasses import dataclass
from typing import Any

from postoffice.accounts import Accounts
from postoffice.cli.migrate_store import open_side
from postoffice.config import Config
from postoffice.mailauth.dkim_keys import generate, public_key_base64
from postoffice.migration.queue import ORIGIN
from postoffice.migration.run import Side
from postoffice.smtp.replies import Reply
from postoffice.spool import state as queue_state
from postoffice.spool.envelope import Envelope, Recipient, Route
from postoffice.storage import MailboxStore, MessageStore
from postoffice.stores import open_stores

ALICE = "alice@example.com"
BOB = "bob@example.com"
JOERG = "jörg@example.com"
BIG = 5 * 1024 * 1024
T0 = 1_750_000_000.0


def message(subject: str, body: bytes = b"Hello.\r\n", *, header: bytes = b"") -> bytes:
    return (
        b"From: carol@remote.test\r\nTo: alice@example.com\r\nSubject: " + subject.encode() + b"\r\n"
        b"Message-ID: <" + subject.replace(" ", ".").encode() + b"@remote.test>\r\n" + header + b"\r\n" + body
    )


UTF8 = (
    "From: Jörg <jörg@example.com>\r\nTo: Zoë <zoë@remote.test>\r\nSubject: Grüße aus Köln\r\n"
    "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
    "Schöne Grüße — ☃ — \xa0non-breaking\r\n"
).encode()


def big_message() -> bytes:
    line = b"".join(bytes([48 + (n % 10)]) for n in range(76)) + b"\r\n"
    return message("big one", line * (BIG // len(line)))


def write_corpus(config: Config) -> None:
    """The corpus, into ``config``'s embedded stores."""
    stores = open_stores(config)
    try:
        _accounts(stores.accounts)
        generate(stores.keys, "example.com", "new", "ed25519")
        generate(stores.keys, "example.com", "old", "rsa")
        stores.keys.retire("example.com", "old")
        _mailboxes(stores.mailboxes)
        asyncio.run(_queue(stores.spool))
    finally:
        asyncio.run(stores.aclose())


def _accounts(accounts: Accounts) -> None:
    accounts.add_user(ALICE, "alice's secret", admin=True)
    accounts.add_user(BOB, "bob's secret")
    accounts.add_user(JOERG, "jörg's secret")
    accounts.add_alias("sales@example.com", [ALICE, BOB])
    accounts.add_alias("@example.org", [ALICE])


def _mailboxes(store: MailboxStore) -> None:
    store.deliver(
        ALICE,
        b"",
        io.BytesIO(message("unread")),
        "Q1-0",
        received_at=T0,
        size=len(message("unread")),
        recovering=False,
    )
    store.add(ALICE, None, message("read"), flags="S", received=T0 + 1)
    store.add(ALICE, None, message("answered"), flags="RS", received=T0 + 2)
    store.add(ALICE, None, message("twice"), flags="", received=T0 + 3)
    store.add(ALICE, None, message("twice"), flags="F", received=T0 + 4)
    for folder in ("Junk", "Archive", "Archive/2024", "Empty"):
        store.create_folder(ALICE, folder)
    store.add(ALICE, "Junk", message("spam", header=b"X-Spam: yes\r\n"), flags="", received=T0 + 5)
    # An unused keyword first, so the used ones are not "a": the target numbers them anew.
    store.keyword_letters(ALICE, "Archive/2024", ["$unused"], add=True)
    letters = store.keyword_letters(ALICE, "Archive/2024", ["$Forwarded", "project-x"], add=True)
    store.add(ALICE, "Archive/2024", message("kept"), flags="FS" + letters, received=T0 + 6)
    store.set_subscriptions(ALICE, ["INBOX", "Archive/2024", "Junk"])
    for address in (BOB, JOERG):
        store.listing(address, None)  # makes the mailbox, as a first delivery or login would
    store.add(BOB, None, big_message(), flags="S", received=T0 + 7)
    store.add(JOERG, None, UTF8, flags="", received=T0 + 8)


async def _queue(spool: MessageStore) -> None:
    envelope = Envelope(
        mail_from=JOERG,
        recipients=(
            Recipient("zoë@remote.test", "zoë@remote.test", Route.REMOTE, notify=("FAILURE",)),
            Recipient("dan@remote.test", "dan@remote.test", Route.REMOTE),
            Recipient("eve@remote.test", "eve@remote.test", Route.REMOTE),
        ),
        received_at=T0 + 9,
        client_address="192.0.2.7",
        helo="client.test",
        protocol="UTF8SMTPSA",
        body="8BITMIME",
        smtputf8=True,
        auth_user=JOERG,
        envid="env-1",
    )
    writer = spool.put(envelope)
    writer.write(UTF8)
    queued = await writer.commit()
    failure = queue_state.Outcome(
        1, queue_state.Action.FAILED, Reply.of(550, "5.1.1", "no such user"), T0 + 10, "mx.remote.test", True
    )
    deferral = queue_state.Deferral(Reply.of(451, "4.3.0", "try later"), "mx.remote.test")
    spool.append_state(
        queued.queue_id,
        [
            queue_state.deferred_record(2, T0 + 3600, T0 + 10, {0: deferral, 2: deferral}),
            queue_state.outcome_record(failure),
            queue_state.notified_record([1], "DSNID"),
            queue_state.WARNED,
            queue_state.HOLD,
        ],
    )
    writer = spool.put(
        Envelope(
            mail_from=ALICE,
            recipients=(Recipient("x@remote.test", "x@remote.test", Route.REMOTE),),
            received_at=T0 + 11,
        )
    )
    writer.write(big_message())
    await writer.commit()


@dataclass(frozen=True)
class Holdings:
    """What a set of stores holds, comparable across stores (their own keys, UIDs and queue
    IDs left out): per message the SHA-256 of its bytes, its flags with keywords by name, its
    folder and received time."""

    users: list[tuple[str, str, bool]]
    aliases: dict[str, list[str]]
    keys: list[tuple[str, str, bool, str]]
    mailboxes: dict[str, Any]
    queue: list[tuple[str, dict[str, Any], queue_state.QueueState]]


def holdings(side: Side) -> Holdings:
    keys = sorted(
        (key.domain, key.selector, key.signing, public_key_base64(key.private_key))
        for key in side.keys.ring().keys
    )
    users = [(address, r.password, r.admin) for address, r in sorted(side.accounts.user_records().items())]
    mailboxes = {address: _mailbox(side.mailboxes, address) for address in side.mailboxes.mailboxes()}
    return Holdings(users, side.accounts.aliases(), keys, mailboxes, _queue_holdings(side.every_queued))


def _sha(stream: Any) -> str:
    with stream:
        return hashlib.sha256(stream.read()).hexdigest()


def _mailbox(store: MailboxStore, address: str) -> dict[str, Any]:
    found: dict[str, Any] = {"subscriptions": sorted(store.subscriptions(address) or [])}
    for folder in store.folders(address):
        where = None if folder == "INBOX" else folder
        names = store.keywords(address, where)
        messages = []
        for _, stored in store.listing(address, where).messages:
            system = "".join(sorted(f for f in stored.flags if f.isupper()))
            keywords = sorted(names[ord(f) - ord("a")] for f in stored.flags if f.islower())
            messages.append((_sha(store.read(stored)), system, keywords, int(stored.received)))
        found[folder] = {"keywords": sorted(n for n in names if n), "messages": sorted(messages)}
    return found


def _queue_holdings(spool: MessageStore) -> list[tuple[str, dict[str, Any], queue_state.QueueState]]:
    found = []
    for queue_id in spool.pending():
        envelope = spool.load(queue_id).envelope.to_json_dict()
        envelope["extra"].pop(ORIGIN, None)
        found.append((_sha(spool.open(queue_id)), envelope, spool.read_state(queue_id)))
    return sorted(found, key=lambda item: item[0])


def read_holdings(config: Config) -> Holdings:
    async def read() -> Holdings:
        async with open_side(config) as side:
            return holdings(side)

    return asyncio.run(read())
