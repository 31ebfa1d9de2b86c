"""The logged-in IMAP session under random commands, over a real Maildir store.

Whatever a client sends once logged in, a command ends in responses, ``NO`` (:class:`No`) or
``BAD`` (ImapParseError): never another exception (the transport would otherwise answer
``NO [SERVERBUG]`` and log it). The commands are built from IMAP's own words, so they reach
the handlers rather than stopping at the tokenizer.
"""

from __future__ import annotations

import contextlib
import io
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from postoffice.imap import ImapParseError
from postoffice.imap.reader import Command, CommandReader
from postoffice.imap.tokens import parse_command
from postoffice.imapd.dispatch import execute
from postoffice.imapd.session import No, Session
from postoffice.maildir.store import MaildirStore

USER = "ann@example.test"
MESSAGE = (
    b"From: Bob <bob@example.test>\r\nSubject: =?utf-8?q?caf=C3=A9?=\r\n"
    b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Transfer-Encoding: base64\r\n\r\n"
    b"aGVsbG8=\r\n--b\r\nContent-Type: message/rfc822\r\n\r\nSubject: in\r\n\r\nx\r\n--b--\r\n"
)
WORDS = st.sampled_from(
    [
        "SELECT INBOX", "EXAMINE Sent", "SELECT Trash (CONDSTORE)", "SELECT INBOX (QRESYNC (1 1 1:*))",
        "ENABLE QRESYNC", "CREATE A.B", "DELETE A", "RENAME A.B C", "SUBSCRIBE Sent", "UNSUBSCRIBE X",
        'LIST "" *', 'LIST (SUBSCRIBED) "" % RETURN (STATUS (MESSAGES SIZE))', "LSUB \"\" *", "NAMESPACE",
        "STATUS INBOX (MESSAGES UIDNEXT UNSEEN SIZE HIGHESTMODSEQ)", "FETCH 1:* (FLAGS ENVELOPE BODYSTRUCTURE)",
        "FETCH 1 BODY[1.MIME]", "FETCH 2 (BODY.PEEK[2.HEADER.FIELDS (SUBJECT)]<0.3> BINARY[1] BINARY.SIZE[2])",
        "UID FETCH 1:* (FLAGS) (CHANGEDSINCE 1 VANISHED)", "STORE 1 +FLAGS (\\Deleted)",
        "UID STORE 1:* -FLAGS.SILENT (\\Seen)", "STORE 1 (UNCHANGEDSINCE 1) FLAGS (\\Flagged)",
        "COPY 1 Sent", "UID MOVE 1:* Trash", "MOVE 1 Nowhere", "EXPUNGE", "UID EXPUNGE 1:5", "CLOSE",
        "UNSELECT", "CHECK", "SEARCH OR FROM bob NOT SEEN", "UID SEARCH RETURN (MIN MAX COUNT) ALL",
        "SEARCH CHARSET UTF-8 SUBJECT café", "SEARCH MODSEQ 1 BODY hello TEXT x LARGER 1 SINCE 1-Jan-2020",
        "APPEND INBOX (\\Seen) {5+}\r\nhello", "APPEND Junk {10+}\r\n" + MESSAGE[:10].decode(),
        "FETCH 9 FLAGS", "FETCH 0 FLAGS", "FETCH * (RFC822.SIZE RFC822.HEADER RFC822.TEXT)", "SEARCH 2:* UID 1",
    ]
)  # fmt: skip


def run(session: Session, line: str) -> None:
    reader = CommandReader()
    reader.receive_data(f"t {line}\r\n".encode())
    while (event := reader.next_event()) is not None:
        if isinstance(event, Command):
            with contextlib.suppress(ImapParseError, No):
                for _ in execute(session, parse_command(event)):
                    pass  # made as taken (FETCH): take them all


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(WORDS, min_size=1, max_size=12))
def test_random_commands_end_in_responses_no_or_bad(lines: list[str]) -> None:
    with tempfile.TemporaryDirectory() as directory:
        store = MaildirStore(Path(directory) / "mail", "mx.test")
        for number in range(2):
            store.deliver(
                USER, b"", io.BytesIO(MESSAGE), f"Q{number}_0", received_at=1.7e9 + number,
                size=len(MESSAGE), recovering=False,
            )  # fmt: skip
        session = Session(store, USER)
        session.prepare()
        for line in lines:
            run(session, line)
            # What the session shows stays a valid mailbox: UIDs ascending and unique, each
            # below UIDNEXT, the same as the store's for what is still there.
            selected = session.selected
            if selected is not None:
                assert selected.uids == sorted(set(selected.uids))
                assert all(uid < selected.uidnext for uid in selected.uids)
        listing = store.listing(USER, None)
        uids = [uid for uid, _ in listing.messages]
        assert uids == sorted(set(uids)) and all(uid < listing.uidnext for uid in uids)
