"""Mailpit's search syntax compiled to SQL and FTS5, run against a real index.

The index is filled with prepared rows (no Maildir needed: search only reads the index), and
every query is run for real, so these tests check meaning, not SQL text.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from postoffice.maildir.store import MaildirStore
from postoffice.web.index import MailIndex, Row, SearchText
from postoffice.web.search import MAX_QUERY_LENGTH, SearchError, compile_query, mailbox_token, tokenize

DAY = 86400.0
# 2024-05-01T00:00:00Z
MAY_1 = 1714521600.0


def row(key: str, **fields: object) -> tuple[Row, SearchText]:
    values: dict[str, object] = {
        "id": 0,
        "mailbox": "box@example.test",
        "key": key,
        "location": f"new/{key}",
        "sender": "Someone <someone@example.org>",
        "recipients": "box@example.test",
        "subject": key,
        "date": None,
        "received": MAY_1,
        "size": 1000,
        "seen": False,
        "has_attachments": False,
    }
    body = str(fields.pop("body", ""))
    values.update(fields)
    item = Row(**values)  # type: ignore[arg-type]
    return item, SearchText(item.recipients, body)


@pytest.fixture
def index(tmp_path: Path) -> MailIndex:
    idx = MailIndex(tmp_path / "index.sqlite3", MaildirStore(tmp_path / "mail", "mx.test"))
    idx.insert_many(
        [
            row(
                "invoice",
                sender="Billing <billing@shop.example>",
                subject="Invoice 42 for May",
                body="please pay",
            ),
            row("lunch", sender="friend@example.org", subject="Lunch tomorrow?", body="pizza at noon, café"),
            row(
                "photos", subject="Holiday photos", body="see attached", has_attachments=True, size=5_000_000
            ),
            row("old", subject="An old message", received=MAY_1 - 30 * DAY, seen=True, body="archive"),
            row("quoted", subject='He said "hello world" twice', body="hello there world"),
            row(
                "other",
                mailbox="other@example.test",
                recipients="other@example.test",
                subject="pizza for the other box",
                body="pizza",
            ),
        ]
    )
    return idx


def keys(index: MailIndex, query: str, mailboxes: list[str] | None = None) -> list[str]:
    page = index.page(mailboxes, compile_query(query), limit=100, offset=0)
    assert page.total == len(page.rows)
    return sorted(r.key for r in page.rows)


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("", ["invoice", "lunch", "old", "other", "photos", "quoted"]),
        ("pizza", ["lunch", "other"]),
        ("PIZ", ["lunch", "other"]),  # prefix, any case
        ("cafe", ["lunch"]),  # accents folded
        ("pizza noon", ["lunch"]),  # terms are ANDed
        ('"hello world"', ["quoted"]),
        ('"world hello"', []),
        ("from:billing", ["invoice"]),
        ("from:billing@shop.example", ["invoice"]),
        ("from:friend", ["lunch"]),
        ("to:other@example.test", ["other"]),
        ("subject:invoice", ["invoice"]),
        ('subject:"invoice 42"', ["invoice"]),
        ("subject:pay", []),  # only in the body
        ("has:attachment", ["photos"]),
        ("-has:attachment -pizza", ["invoice", "old", "quoted"]),
        ("is:read", ["old"]),
        ("is:unread -subject:pizza", ["invoice", "lunch", "photos", "quoted"]),
        ("before:2024-05-01", ["old"]),
        ("after:2024-05-01", ["invoice", "lunch", "other", "photos", "quoted"]),
        ("after:2024-04-01T00:00Z before:2024-04-02", ["old"]),
        ("larger:1M", ["photos"]),
        ("smaller:2K", ["invoice", "lunch", "old", "other", "quoted"]),
        ("!pizza !photos !invoice", ["old", "quoted"]),
        ("-from:billing pizza", ["lunch", "other"]),
        ("http://x", []),  # unknown field: plain text
        ("@@@ pizza", ["lunch", "other"]),  # a term without words is ignored
    ],
)
def test_query_meaning(index: MailIndex, query: str, expected: list[str]) -> None:
    assert keys(index, query) == expected


def test_search_stays_inside_the_visible_mailboxes(index: MailIndex) -> None:
    assert keys(index, "pizza", ["box@example.test"]) == ["lunch"]
    assert keys(index, "pizza is:unread", ["box@example.test"]) == ["lunch"]
    assert keys(index, "pizza", ["other@example.test", "box@example.test"]) == ["lunch", "other"]
    assert keys(index, "pizza", ["nobody@example.test"]) == []
    assert keys(index, "pizza", []) == []
    # The mailbox token is not a word anyone finds by searching.
    assert keys(index, mailbox_token("box@example.test")) == []


@pytest.mark.parametrize(
    "query",
    [
        "'; DROP TABLE messages; --",
        '" OR 1=1 --',
        "pizza) OR (1=1",
        "NEAR(pizza noon)",
        "sender:pizza",
        "subject:*",
        '"unbalanced',
        "body : x OR y NOT z",
        "{sender recipients}: pizza",
        "^pizza",
        "\x00",
    ],
)
def test_hostile_queries_are_only_words(index: MailIndex, query: str) -> None:
    """Nothing a person types becomes SQL or an FTS5 operator: each runs as plain words."""
    keys(index, query)  # no exception: the words are bound and quoted
    assert index.mailboxes()[0].total == 5  # and nothing was changed


@pytest.mark.parametrize(
    ("query", "complaint"),
    [
        ("is:maybe", "is:maybe"),
        ("has:wings", "has:wings"),
        ("before:soon", "before:soon"),
        ("after:2024-13-01", "after:2024-13-01"),
        ("larger:big", "larger:big"),
        ("x" * (MAX_QUERY_LENGTH + 1), "longer"),
        (" ".join(["a"] * 40), "terms"),
    ],
)
def test_bad_queries_name_the_problem(query: str, complaint: str) -> None:
    with pytest.raises(SearchError, match=complaint.replace("*", r"\*")):
        compile_query(query)


def test_values_are_bound_never_formatted() -> None:
    compiled = compile_query('from:"x\'y" larger:2K -is:read secret')
    joined = " ".join(compiled.conditions)
    assert "x'y" not in joined and "secret" not in joined and "2048" not in joined
    assert compiled.params == (2048,)
    assert compiled.match == '(sender : "x\'y" *) AND ({sender recipients subject body} : "secret" *)'


def test_negated_words_are_subtracted_inside_fts() -> None:
    compiled = compile_query("pizza -noon -from:bob")
    text = "{sender recipients subject body}"
    assert compiled.match == f'((({text} : "pizza" *)) NOT ({text} : "noon" *)) NOT (sender : "bob" *)'
    assert compiled.conditions == ()
    only_negated = compile_query("-noon")
    assert only_negated.match is None and only_negated.params == (f'{text} : "noon" *',)


def test_tokenize_quotes_and_negation() -> None:
    terms = tokenize('-subject:"a b" !c "d ""e"""')
    assert [(t.negated, t.field, t.value) for t in terms] == [
        (True, "subject", "a b"),
        (True, None, "c"),
        (False, None, 'd "e"'),
    ]
