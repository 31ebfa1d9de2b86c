"""Coverage-guided fuzzing of the sans-I/O IMAP core (``postoffice.imap``).

Untrusted input seen here: every byte atheris generates, as if an IMAP client sent it, and as
if a sender wrote it into a message.

The invariant, the one ``tests/test_imap_core.py`` checks with Hypothesis: whatever arrives,
in whatever pieces, the reader gives events, and the parsers (command, sequence sets, FETCH
items, SEARCH keys, mailbox names) return a value or raise ImapParseError, nothing else; the
MIME structure pass over the same bytes gives parts whose offsets lie inside the message.

Run (see fuzz/README.md)::

    pip install atheris
    PYTHONPATH=src python fuzz/fuzz_imap.py -dict=fuzz/imap.dict -max_total_time=600 fuzz/imap-corpus
"""

from __future__ import annotations

import contextlib
import io
import sys

import atheris

with atheris.instrument_imports():
    from postoffice.imap import ImapParseError
    from postoffice.imap.fetch_items import fetch_items
    from postoffice.imap.grammar import mailbox_name, sequence_set
    from postoffice.imap.reader import Command, CommandReader
    from postoffice.imap.search import parse_search
    from postoffice.imap.structure import parse_structure
    from postoffice.imap.tokens import parse_command


def commands(data: bytes, piece: int) -> None:
    reader = CommandReader(max_line=256, max_literal=128)
    for start in range(0, len(data), piece):
        reader.receive_data(data[start : start + piece])
        while (event := reader.next_event()) is not None:
            if not isinstance(event, Command):
                continue
            try:
                parsed = parse_command(event)
            except ImapParseError:
                continue
            for arg in parsed.args:
                for parse in (fetch_items, sequence_set, mailbox_name):
                    with contextlib.suppress(ImapParseError):
                        parse(arg)  # type: ignore[operator]
            with contextlib.suppress(ImapParseError):
                parse_search(parsed.args)


def structure(data: bytes) -> None:
    root = parse_structure(io.BytesIO(data))
    stack = [root]
    while stack:
        part = stack.pop()
        assert 0 <= part.start <= part.body_start <= len(data), part
        assert part.body_start <= part.end <= len(data) or part.end == part.body_start, part
        stack.extend(part.children)
        if part.message is not None:
            stack.append(part.message)


def test_one_input(data: bytes) -> None:
    if not data:
        return
    commands(data[1:], 1 + data[0] % 64)
    structure(data[1:])


if __name__ == "__main__":
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()
