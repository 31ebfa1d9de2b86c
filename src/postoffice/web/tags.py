"""Tags: short labels on captured messages, kept in the index.

Untrusted input seen here: an ``X-Tags`` header field's value, the recipient address a message
was delivered to (its plus-address detail), and the tags a caller sends through the API. A tag
is kept only in its normal form (:func:`normal`): lower case letters, digits, ``.``, ``_`` and
``-``, at most MAX_TAG_LENGTH characters, so it is always one search term (``tag:signup``) and
one chip in the UI.

Where tags come from: ``X-Tags: signup, welcome`` (comma-separated, Mailpit's field), the detail
of a plus-address (``alice+signup@example.test`` tags ``signup``, as Mailpit and Postfix's
``recipient_delimiter`` read it) and ``PUT /api/v1/messages/{id}/tags``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

MAX_TAG_LENGTH = 64
# Tags one message may carry: a header cannot make a row grow without bound.
MAX_TAGS = 32
TAG_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,63}$"
# What a caller may send: any case (kept in lower case).
TAG_PATTERN_ANY_CASE = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
_TAG = re.compile(TAG_PATTERN)


def normal(value: str) -> str | None:
    """``value`` as a tag (trimmed, lower case), or None when it cannot be one."""
    tag = value.strip().lower()
    return tag if _TAG.fullmatch(tag) else None


def normalise(values: Iterable[str]) -> list[str]:
    """The tags among ``values``, each once, sorted; what cannot be a tag is left out."""
    found = {tag for tag in map(normal, values) if tag is not None}
    return sorted(found)[:MAX_TAGS]


def plus_detail(address: str) -> str | None:
    """The detail of a plus-address: ``signup`` of ``alice+signup@example.test``."""
    local = address.strip().strip("<>").rpartition("@")[0]
    if "+" not in local:
        return None
    return normal(local.partition("+")[2])


def from_message(x_tags: str, delivered_to: str, mailbox: str) -> list[str]:
    """The tags a message brings itself: its X-Tags field and its recipient's plus-address
    detail (the Delivered-To of its local delivery, else the mailbox it is in)."""
    values = x_tags.split(",") if x_tags else []
    detail = plus_detail(delivered_to or mailbox)
    if detail is not None:
        values.append(detail)
    return normalise(values)
