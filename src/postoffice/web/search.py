"""Mailpit's search syntax, compiled to SQL conditions and an FTS5 query with bound values.

Untrusted input seen here: the search string a person (or a script) types. It never becomes
SQL text: every condition below is a constant, the person's words travel only as bound
parameters, and inside an FTS5 MATCH expression each word is a double-quoted FTS5 string with
its quotes doubled (SQLite FTS5 documentation §3.1, "FTS5 Strings"), so no word can become an
FTS5 operator or column filter.

The syntax (Mailpit's, so people and scripts can move over)::

    hello "exact phrase"        free text: sender, recipients, subject and body
    from:alice to:bob@x.test    sender / recipients (To, Cc and the envelope recipient)
    subject:"weekly report"     subject
    has:attachment              with attachments
    is:read  is:unread          Maildir "S" flag
    in:junk  in:inbox           ours: the Junk folder (DMARC quarantine), or the inbox
    before:2024-05-01  after:2024-05-01T12:00    received time, UTC, ISO 8601
    larger:1M  smaller:500K     size in octets, K/M/G are powers of 1024
    -term  -from:noreply        negation of any term ("!" works too)

and, ours, the folder a message is in (Maildir++, maildir/folders.py)::

    in:INBOX  in:Junk  in:Archive/2024  -in:Trash

and, ours, the authentication results the server recorded on arrival (web/authresults.py)::

    auth:pass  auth:fail  auth:none     the verdict: DMARC's when it reached one; else fail if
                                        SPF failed (fail, softfail) or no DKIM signature verified
                                        and one failed, pass if SPF or a signature passed; none
                                        for the rest, and for mail that was not checked
    spf:softfail  dkim:fail  dmarc:pass  arc:none    one method's result (dkim: any signature's)

and, ours, the tags a message carries (web/tags.py: its X-Tags field, its plus-address, the API)::

    tag:signup  -tag:seen-by-ci

Words match as prefixes ("hel" finds "hello"), case- and accent-insensitively; a phrase
matches its words in order. Terms are joined with AND.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from postoffice.maildir.folders import directory_of
from postoffice.web import tags
from postoffice.web.authresults import RESULTS, VERDICTS

# The FTS5 table of the index and its columns (see index.py). Its "mailbox" column holds one
# opaque token per mailbox, so FTS5 itself can keep a search inside the caller's mailboxes.
TEXT_TABLE = "messages_text"
_COLUMNS = {"from": "sender", "to": "recipients", "subject": "subject"}
_TEXT_COLUMNS = "{sender recipients subject body}"

# A person's query is a line, not a document: these bound the work one request can ask for.
MAX_QUERY_LENGTH = 1000
MAX_TERMS = 32

_TOKEN = re.compile(r'\s*([-!]?)(?:([A-Za-z-]+):)?(?:"((?:[^"]|"")*)"?|(\S+))')
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([kmg]?)(?:i?b)?", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}

# Negated words when there is no positive one to subtract them from (see compile_query).
_NOT_MATCH = f"id NOT IN (SELECT rowid FROM {TEXT_TABLE} WHERE {TEXT_TABLE} MATCH ?)"
_CONDITIONS = {
    ("has", "attachment"): "has_attachments = 1",
    ("has", "attachments"): "has_attachments = 1",
    ("is", "read"): "seen = 1",
    ("is", "seen"): "seen = 1",
    ("is", "unread"): "seen = 0",
    ("is", "unseen"): "seen = 0",
}
_CHOICES = {"has": "attachment", "is": "read or unread"}
# Authentication results: the column each compares, and the values it can hold. auth_dkim holds
# every signature's result between spaces (Authentication.columns), so it is searched for " r ".
_AUTH_FIELDS = {
    "auth": ("auth_verdict = ?", VERDICTS),
    "spf": ("auth_spf = ?", RESULTS["spf"]),
    "dkim": ("instr(auth_dkim, ?) > 0", RESULTS["dkim"]),
    "dmarc": ("auth_dmarc = ?", RESULTS["dmarc"]),
    "arc": ("auth_arc = ?", RESULTS["arc"]),
}
# tag:NAME: the message's (mailbox, key) has the tag (the tags table, index_schema.py).
_TAGGED = (
    "EXISTS (SELECT 1 FROM tags WHERE tags.mailbox = messages.mailbox AND tags.key = messages.key"
    " AND tags.tag = ?)"
)
_COMPARISONS = {
    "before": "received < ?",
    "after": "received >= ?",
    "larger": "size > ?",
    "smaller": "size < ?",
}


class SearchError(ValueError):
    """The query cannot be understood; the message says which term and why."""


@dataclass(frozen=True, slots=True)
class Compiled:
    """A compiled query.

    ``match`` is an FTS5 expression every result must match (None: no words to match); the
    index drives the query from it. ``conditions`` are SQL conditions over ``messages``,
    joined with AND, with ``params`` bound in order.
    """

    match: str | None
    conditions: tuple[str, ...]
    params: tuple[object, ...]


@dataclass(frozen=True, slots=True)
class Term:
    negated: bool
    field: str | None
    value: str


def tokenize(query: str) -> list[Term]:
    if len(query) > MAX_QUERY_LENGTH:
        raise SearchError(f"the query is longer than {MAX_QUERY_LENGTH} characters")
    terms: list[Term] = []
    position = 0
    while position < len(query):
        if query[position:].isspace():
            break
        match = _TOKEN.match(query, position)
        if match is None:  # pragma: no cover - the pattern matches any non-space character
            raise SearchError(f"cannot read the query at {query[position : position + 20]!r}")
        position = match.end()
        negation, field, quoted, bare = match.groups()
        value = quoted.replace('""', '"') if quoted is not None else bare
        if field is not None and field.lower() not in _KNOWN_FIELDS:
            # "http://x" or "re:": not one of ours, so it is text.
            value, field = f"{field}:{value}", None
        terms.append(Term(bool(negation), field.lower() if field else None, value))
    if len(terms) > MAX_TERMS:
        raise SearchError(f"the query has more than {MAX_TERMS} terms")
    return terms


_KNOWN_FIELDS = frozenset(
    {"from", "to", "subject", "has", "is", "in", "tag", "before", "after", "larger", "smaller", *_AUTH_FIELDS}
)


def _fts_phrase(value: str) -> str | None:
    """``"value" *``: the words in order, the last one as a prefix; None if it has no words."""
    if not any(char.isalnum() for char in value):
        return None
    return '"' + value.replace('"', '""') + '" *'


def mailbox_token(address: str) -> str:
    """The token standing for ``address`` in the FTS5 "mailbox" column: letters and digits
    only, so the tokenizer keeps it whole, and never a word someone would search for."""
    return "mbx" + hashlib.sha256(address.encode("utf-8")).hexdigest()[:32]


def within_mailboxes(match: str, addresses: Sequence[str]) -> str:
    """``match`` limited to messages of ``addresses``."""
    tokens = " OR ".join(f'"{mailbox_token(address)}"' for address in addresses)
    return f"(mailbox : ({tokens})) AND ({match})"


def _timestamp(field: str, value: str) -> float:
    text = value.strip()
    try:
        moment = datetime.fromisoformat(text.replace("/", "-"))
    except ValueError:
        raise SearchError(f"{field}:{value}: write a date as YYYY-MM-DD or YYYY-MM-DDTHH:MM") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def _size(field: str, value: str) -> int:
    match = _SIZE.fullmatch(value.strip())
    if match is None:
        raise SearchError(f"{field}:{value}: write a size as 2048, 500K, 1.5M or 1G")
    return int(float(match.group(1)) * _SIZE_UNITS[match.group(2).lower()])


def _auth_condition(field: str, value: str) -> tuple[str, str]:
    condition, choices = _AUTH_FIELDS[field]
    result = value.strip().lower()
    if result not in choices:
        raise SearchError(f"{field}:{value}: expected {field}:" + ", ".join(choices))
    return condition, f" {result} " if field == "dkim" else result


def _folder_condition(value: str) -> tuple[str, tuple[object, ...]]:
    """``in:NAME``: the message's location starts with its folder's directory (``.Junk/``);
    the inbox's locations start with ``new/`` or ``cur/``, never a dot."""
    try:
        directory = directory_of(value.strip())
    except ValueError:
        raise SearchError(f"in:{value}: not a folder name") from None
    if not directory:
        return "substr(location, 1, 1) <> '.'", ()
    prefix = f"{directory}/"
    return "substr(location, 1, ?) = ?", (len(prefix), prefix)


def compile_query(query: str) -> Compiled:
    """Compile ``query``; SearchError if a term cannot be understood. Empty means "all"."""
    conditions: list[str] = []
    params: list[object] = []
    wanted: list[str] = []
    unwanted: list[str] = []
    for term in tokenize(query):
        if term.field is None or term.field in _COLUMNS:
            phrase = _fts_phrase(term.value)
            if phrase is not None:
                column = _COLUMNS[term.field] if term.field else _TEXT_COLUMNS
                expression = f"{column} : {phrase}"
                (unwanted if term.negated else wanted).append(expression)
            continue
        if term.field in _CHOICES:
            condition = _CONDITIONS.get((term.field, term.value.lower()))
            if condition is None:
                raise SearchError(f"{term.field}:{term.value}: expected {term.field}:{_CHOICES[term.field]}")
            conditions.append(f"NOT ({condition})" if term.negated else condition)
            continue
        if term.field == "in":
            condition, bound = _folder_condition(term.value)
            conditions.append(f"NOT ({condition})" if term.negated else condition)
            params.extend(bound)
            continue
        if term.field == "tag":
            tag = tags.normal(term.value)
            if tag is None:
                raise SearchError(f"tag:{term.value}: a tag is letters, digits, '.', '_' and '-'")
            conditions.append(f"NOT ({_TAGGED})" if term.negated else _TAGGED)
            params.append(tag)
            continue
        if term.field in _AUTH_FIELDS:
            condition, result = _auth_condition(term.field, term.value)
            conditions.append(f"NOT ({condition})" if term.negated else condition)
            params.append(result)
            continue
        value: object = (
            _timestamp(term.field, term.value)
            if term.field in ("before", "after")
            else _size(term.field, term.value)
        )
        condition = _COMPARISONS[term.field]
        conditions.append(f"NOT ({condition})" if term.negated else condition)
        params.append(value)
    if not wanted:
        # Only negated words: each excludes its matches (SQLite materialises them once).
        conditions[:0] = [_NOT_MATCH] * len(unwanted)
        params[:0] = unwanted
        return Compiled(None, tuple(conditions), tuple(params))
    # One FTS5 expression: FTS5 intersects the wanted words and subtracts the unwanted ones
    # itself ("a NOT b", FTS5 documentation §3.7), which is far faster than doing it in SQL.
    match = " AND ".join(f"({expression})" for expression in wanted)
    for expression in unwanted:
        match = f"({match}) NOT ({expression})"
    return Compiled(match, tuple(conditions), tuple(params))
