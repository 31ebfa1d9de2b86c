"""IMAP keywords (``$Junk``, ``$Forwarded``, a client's own flags) in a Maildir, as Dovecot keeps
them: each folder's ``dovecot-keywords`` file numbers them (``0 $Junk``), and a message's info
carries the letter of each number it has (``a`` for 0 ... ``z`` for 25), after the system
flags (``:2,Sa``). Dovecot and postoffice on the same Maildir so read the same keywords.

Untrusted input seen here: keyword names a client chose (IMAP atoms, already checked by
:func:`postoffice.imap.grammar.flag_list`) and the file's lines (another program may have written
them: a line that is not ``NUMBER NAME`` is skipped).
"""

from __future__ import annotations

import threading
from collections.abc import Collection
from pathlib import Path

from postoffice.durable import replace_file
from postoffice.storage import KEYWORD_LETTERS, number_keywords

KEYWORDS_FILE = "dovecot-keywords"
_lock = threading.Lock()  # sessions of this process add keywords one at a time


def read_keywords(folder: Path) -> list[str]:
    """The folder's keywords by number (``""`` for a number not in use)."""
    try:
        text = (folder / KEYWORDS_FILE).read_text("utf-8", "replace")
    except FileNotFoundError:
        return []
    found: dict[int, str] = {}
    for line in text.splitlines():
        number, _, name = line.partition(" ")
        if number.isdigit() and int(number) < len(KEYWORD_LETTERS) and name.strip():
            found[int(number)] = name.strip()
    return [found.get(index, "") for index in range(max(found, default=-1) + 1)]


def letters_for(folder: Path, names: Collection[str], *, add: bool) -> str:
    """The info letters of keywords ``names`` in ``folder`` (keywords match without regard to
    case, RFC 9051 §2.3.2); with ``add``, those not numbered yet get the next free numbers
    (past 26 they are dropped), written to the file first."""
    if not names:
        return ""
    with _lock:
        numbered, letters = number_keywords(read_keywords(folder), names, add=add)
        if numbered is not None:
            lines = "".join(f"{index} {name}\n" for index, name in enumerate(numbered) if name)
            replace_file(folder / KEYWORDS_FILE, lines.encode("utf-8"))
    return letters
