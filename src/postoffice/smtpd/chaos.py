"""Fault injection ("chaos"): rules that make chosen SMTP stages answer with an error, hang up,
or wait first, so a developer can see what their application does when a mail server misbehaves.

Untrusted input seen here: the rules, as JSON from ``PUT /api/v1/chaos`` or from the rules file
(:data:`RULES_FILE` in the data directory). Each is checked here, and a wrong one is refused
with one line naming the rule and the field; a reply's text is printable ASCII only, so a rule
cannot put CR/LF into a reply (RFC 5321 §4.2).

A rule: ``stage`` (connect, ehlo, auth, mail, rcpt, data, data-end), ``reply`` (a 4xx or 5xx
reply with an optional RFC 3463 enhanced code of the same class, ``disconnect`` to close the
connection without a word, or absent with a ``delay`` for a tarpit), ``delay`` in seconds
before it, ``probability`` (0 to 1, default 1), and ``sender`` / ``recipient`` globs
(:func:`fnmatch.fnmatchcase`, lower case; a recipient glob matches the RCPT being decided, and
at data and data-end any recipient of the transaction). The first rule of the stage that
matches, and whose dice say so, decides.

Sharing between processes (``serve --workers N``): the process serving HTTP writes the whole
set to the rules file (durably, by rename) and every process looks at the file's identity (one
``stat``) as each connection opens, reading it again when it changed. So a change applies to
every connection opened after it returns, in every worker; a connection already open keeps the
rules it began with until its next connection.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from postoffice.durable import replace_file
from postoffice.smtp import replies
from postoffice.smtp.replies import Reply
from postoffice.smtpd.context import Context
from postoffice.smtpd.stages import Stage

log = logging.getLogger("postoffice.smtp")

RULES_FILE = "chaos.json"
MAX_RULES = 100
MAX_DELAY = 600.0
STAGES: dict[str, Stage] = {
    "connect": Stage.CONNECT,
    "ehlo": Stage.HELO,
    "helo": Stage.HELO,
    "auth": Stage.AUTH,
    "mail": Stage.MAIL,
    "rcpt": Stage.RCPT,
    "data": Stage.DATA_START,
    "data-end": Stage.DATA_END,
}
DISCONNECT = "disconnect"
_FIELDS = frozenset({"stage", "reply", "delay", "probability", "sender", "recipient"})
# RFC 5321 §4.2: a three-digit code, here 4yz or 5yz; RFC 3463 §2: class.subject.detail, the
# class the code's first digit.
# The text, printable ASCII, does not start with a digit (so a wrong enhanced code is not taken
# for text); REPLY_PATTERN says the same to the OpenAPI document.
_REPLY = re.compile(r"([45][0-5][0-9])(?: ([45])\.([0-9]{1,3})\.([0-9]{1,3}))?(?: ([ -/:-~][ -~]{0,199}))?")
_TEXT = r"( [ -/:-~][ -~]{0,199})?"
REPLY_PATTERN = (
    f"^(disconnect|4[0-5][0-9]( 4\\.[0-9]{{1,3}}\\.[0-9]{{1,3}})?{_TEXT}"
    f"|5[0-5][0-9]( 5\\.[0-9]{{1,3}}\\.[0-9]{{1,3}})?{_TEXT})$"
)


class ChaosError(ValueError):
    """A rule that cannot be used; the message names it and says why."""


@dataclass(frozen=True, slots=True)
class ChaosRule:
    stage: str  # as written (one of STAGES)
    reply: Reply | None  # None: only the delay; replies.DROP: hang up
    delay: float = 0.0
    probability: float = 1.0
    sender: str | None = None
    recipient: str | None = None

    @property
    def at(self) -> Stage:
        return STAGES[self.stage]

    def to_json(self) -> dict[str, Any]:
        reply = self.reply
        text = None if reply is None else DISCONNECT if reply is replies.DROP else _reply_text(reply)
        return {
            "stage": self.stage,
            "reply": text,
            "delay": self.delay,
            "probability": self.probability,
            "sender": self.sender,
            "recipient": self.recipient,
        }

    def matches(self, ctx: Context) -> bool:
        if self.sender is not None:
            mail = ctx.transaction.mail
            if mail is None or not fnmatch.fnmatchcase(str(mail.path).lower(), self.sender):
                return False
        if self.recipient is not None:
            if ctx.stage is Stage.RCPT:
                named = [str(ctx.rcpt.path)]
            else:
                named = [recipient.original for recipient in ctx.transaction.recipients]
            if not any(fnmatch.fnmatchcase(address.lower(), self.recipient) for address in named):
                return False
        return True


def _reply_text(reply: Reply) -> str:
    code = f"{reply.code} {reply.enhanced}" if reply.enhanced else str(reply.code)
    return f"{code} {reply.text}".rstrip()


def parse_reply(text: str) -> Reply:
    """``451 4.3.0 Try again later`` as a Reply, or ``disconnect``; ChaosError otherwise."""
    if text == DISCONNECT:
        return replies.DROP
    match = _REPLY.fullmatch(text)
    if match is None:
        raise ChaosError(
            f"reply {text[:60]!r}: write a 4xx or 5xx reply such as '451 4.3.0 Try again later'"
            " (printable ASCII), or 'disconnect'"
        )
    code, klass, subject, detail, words = match.groups()
    if klass is not None and klass != code[0]:
        raise ChaosError(f"reply {text[:60]!r}: the enhanced code's class must be {code[0]}, as the reply's")
    enhanced = f"{klass}.{subject}.{detail}" if klass is not None else None
    return Reply.of(int(code), enhanced, words or "Fault injected")


def _number(rule: dict[str, Any], name: str, default: float, high: float, where: str) -> float:
    value = rule.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ChaosError(f"{where}: {name} must be a number")
    if not 0 <= value <= high:
        raise ChaosError(f"{where}: {name} must be from 0 to {high:g}")
    return float(value)


def _glob(rule: dict[str, Any], name: str, where: str) -> str | None:
    value = rule.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or not value or len(value) > 320:
        raise ChaosError(f"{where}: {name} must be an address or a glob such as '*@example.com'")
    return value.lower()


def parse_rule(rule: Any, number: int) -> ChaosRule:
    where = f"rule {number}"
    if not isinstance(rule, dict):
        raise ChaosError(f"{where}: must be an object with stage and reply")
    unknown = sorted(set(rule) - _FIELDS)
    if unknown:
        raise ChaosError(f"{where}: unknown field {unknown[0][:40]!r}; expected {', '.join(sorted(_FIELDS))}")
    stage = rule.get("stage")
    if not isinstance(stage, str) or stage not in STAGES:
        raise ChaosError(f"{where}: stage must be one of {', '.join(STAGES)}")
    delay = _number(rule, "delay", 0.0, MAX_DELAY, where)
    text = rule.get("reply")
    if text is None and not delay:
        raise ChaosError(
            f"{where}: give a reply (such as '451 4.3.0 Try again later' or 'disconnect'), a delay, or both"
        )
    if text is not None and not isinstance(text, str):
        raise ChaosError(f"{where}: reply must be a string")
    try:
        reply = None if text is None else parse_reply(text)
    except ChaosError as exc:
        raise ChaosError(f"{where}: {exc}") from None
    return ChaosRule(
        stage=stage,
        reply=reply,
        delay=delay,
        probability=_number(rule, "probability", 1.0, 1.0, where),
        sender=_glob(rule, "sender", where),
        recipient=_glob(rule, "recipient", where),
    )


def parse_rules(value: Any) -> tuple[ChaosRule, ...]:
    """A JSON list of rules (the whole set; ``[]`` for none)."""
    if not isinstance(value, list):
        raise ChaosError("send a JSON list of rules ([] clears them)")
    if len(value) > MAX_RULES:
        raise ChaosError(f"at most {MAX_RULES} rules")
    return tuple(parse_rule(rule, number) for number, rule in enumerate(value, 1))


class ChaosRules:
    """The rules in force in this process, and the file that shares them (module docstring)."""

    def __init__(self, data_dir: Path, *, enabled: bool) -> None:
        self.path = data_dir / RULES_FILE
        self.enabled = enabled  # False: outside capture mode without allow_chaos
        self.rules: tuple[ChaosRule, ...] = ()
        self._identity: tuple[int, int, int] | None = None
        if enabled:
            self.refresh()

    def refresh(self) -> None:
        """Read the file again if it changed since the last look (one stat when it did not)."""
        try:
            status = os.stat(self.path)
        except FileNotFoundError:
            self.rules, self._identity = (), None
            return
        except OSError as exc:
            log.warning("event=chaos-rules status=unreadable error=%r", exc.strerror)
            return
        identity = (status.st_ino, status.st_mtime_ns, status.st_size)
        if identity == self._identity:
            return
        self._identity = identity
        try:
            self.rules = parse_rules(json.loads(self.path.read_bytes()))
        except (OSError, ValueError) as exc:
            # A file edited by hand into nonsense: no rules rather than old ones, and one line.
            self.rules = ()
            log.warning("event=chaos-rules status=invalid path=%s error=%r", self.path, str(exc))

    def count(self) -> int:
        """How many rules are in force, the file looked at first (for /metrics)."""
        if not self.enabled:
            return 0
        self.refresh()
        return len(self.rules)

    def replace(self, rules: tuple[ChaosRule, ...]) -> None:
        """Put ``rules`` in force here and, through the file, in every process."""
        data = json.dumps([rule.to_json() for rule in rules], indent=1).encode()
        status = replace_file(self.path, data)
        self.rules, self._identity = rules, (status.st_ino, status.st_mtime_ns, status.st_size)
        log.info("event=chaos-rules rules=%d", len(rules))
