"""The guided client: asks for a server, a login, From, To, Subject and the text, then sends.

Untrusted input seen here: answers typed at a terminal, checked as :mod:`compose` checks
command-line values (a wrong address is asked again, never sent), and the server's replies,
shown as a transcript with control characters escaped.

The classroom client asked the same questions and ended the text at a line ``end of email``;
this one sends with real SMTP and shows the real conversation. End of input (Ctrl-D) leaves
quietly at any question, Ctrl-C leaves from anywhere, both without a traceback.
"""

from __future__ import annotations

import dataclasses
import getpass
import sys
from collections.abc import Callable
from typing import TextIO

from postoffice.cli.compose import Draft, Mailbox, build, parse_mailboxes
from postoffice.cli.submit import (
    EX_OK,
    SUBMISSIONS_PORT,
    ServerOptions,
    describe,
    describe_refused,
    submit,
)
from postoffice.cli.transcript import TranscriptPrinter, terminal_safe
from postoffice.client.connection import TlsMode
from postoffice.errors import ConfigError, MessageError, SmtpClientError

# The classroom client's end marker, and the SMTP one (RFC 5321 §4.1.1.4) for those who know it.
END_MARKERS = ("end of email", ".")
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report it


class Guided:
    """One guided session on ``stdout``; ``ask`` reads a line (``input`` by default)."""

    def __init__(
        self,
        options: ServerOptions,
        parse_server: Callable[[str], tuple[str, int | None]],
        *,
        stdout: TextIO | None = None,
        ask: Callable[[str], str] = input,
        ask_secret: Callable[[str], str] = getpass.getpass,
    ) -> None:
        self.options = options
        self._parse_server = parse_server
        self._out = stdout or sys.stdout
        self._ask = ask
        self._ask_secret = ask_secret

    def run(self) -> int:
        try:
            return self._session()
        except EOFError:
            self._say("")
            return EX_OK
        except KeyboardInterrupt:
            self._say("")
            return EXIT_INTERRUPTED

    def _say(self, text: str) -> None:
        self._out.write(text + "\n")
        self._out.flush()

    def _session(self) -> int:
        self._say("postoffice guided mail: answer each question (Ctrl-D leaves).")
        self._choose_server()
        self._log_in()
        sender: Mailbox | None = None
        while True:
            draft = self._compose(sender)
            sender = draft.sender
            try:
                outgoing = build(draft)
            except MessageError as exc:
                self._say(f"That message cannot be built: {exc}")
                continue
            self._say("----- the message -----")
            for line in outgoing.data.decode("utf-8", "replace").splitlines():
                self._say(terminal_safe(line))
            self._say("----- end of the message -----")
            if self._yes("Send it?", default=True):
                self._send(outgoing.sender, outgoing.recipients, outgoing.data)
            if not self._yes("Send another message?", default=False):
                return EX_OK

    def _choose_server(self) -> None:
        current = self._server_text()
        while True:
            answer = self._ask(f"SMTP server [{current}]: ").strip()
            if not answer:
                return
            try:
                host, port = self._parse_server(answer)
            except ConfigError as exc:
                self._say(f"  {exc.detail}")
                continue
            if port is None:
                port = self.options.port
            tls = TlsMode.IMPLICIT if port == SUBMISSIONS_PORT else self.options.tls
            self.options = dataclasses.replace(self.options, host=host, port=port, tls=tls)
            return

    def _server_text(self) -> str:
        host = f"[{self.options.host}]" if ":" in self.options.host else self.options.host
        return f"{host}:{self.options.port}"

    def _log_in(self) -> None:
        default = self.options.credentials[0] if self.options.credentials else ""
        shown = f" [{default}]" if default else ""
        user = self._ask(f"Log in as (user name{shown}, Enter for no login): ").strip() or default
        if not user:
            self.options = dataclasses.replace(self.options, credentials=None)
            return
        if self.options.credentials and user == default:
            return
        password = self._ask_secret("Password: ")
        self.options = dataclasses.replace(self.options, credentials=(user, password))

    def _address(
        self, prompt: str, *, default: Mailbox | None = None, optional: bool = False
    ) -> Mailbox | None:
        while True:
            shown = f" [{default.address}]" if default else ""
            answer = self._ask(f"{prompt}{shown}: ").strip()
            if not answer:
                if default is not None:
                    return default
                if optional:
                    return None
                self._say("  an address is needed here, as in alice@example.com")
                continue
            try:
                found = parse_mailboxes(answer, what=prompt)
            except MessageError as exc:
                self._say(f"  {exc}")
                continue
            if len(found) == 1:
                return found[0]
            self._say("  one address at a time, please")

    def _compose(self, sender: Mailbox | None) -> Draft:
        from_box = self._address("From", default=sender)
        assert from_box is not None
        first = self._address("To")
        assert first is not None
        recipients = [first]
        while (another := self._address("Another recipient (Enter when done)", optional=True)) is not None:
            recipients.append(another)
        subject = self._ask("Subject: ")
        while not subject.isprintable():
            self._say("  the subject is one line of text")
            subject = self._ask("Subject: ")
        self._say('Type the message. End it with a line that says "end of email" (or a single ".").')
        lines: list[str] = []
        while (line := self._ask("")) not in END_MARKERS:
            lines.append(line)
        return Draft(from_box, tuple(recipients), subject=subject, text="\n".join(lines))

    def _yes(self, question: str, *, default: bool) -> bool:
        hint = "[Y/n]" if default else "[y/N]"
        while True:
            answer = self._ask(f"{question} {hint} ").strip().lower()
            if not answer:
                return default
            if answer in ("y", "yes"):
                return True
            if answer in ("n", "no"):
                return False

    def _send(self, sender: str, recipients: tuple[str, ...], data: bytes) -> None:
        printer = TranscriptPrinter(self._out)
        try:
            result = submit(self.options, sender, recipients, data, printer)
        except SmtpClientError as exc:
            self._say(f"Not sent: {describe(exc)}")
            return
        for address, reply in result.refused.items():
            self._say(f"Not sent to one recipient: {describe_refused(address, reply)}")
        self._say(f"Sent: {terminal_safe(str(result.reply))}")
