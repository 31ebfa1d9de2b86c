"""DKIM tag=value lists (RFC 6376 §3.2): the syntax of DKIM-Signature fields and key records.

Untrusted input seen here: the value of every DKIM-Signature header field of every message
received, and every key record a signer's DNS publishes. The parser is strict where RFC 6376
is ("if a tag name does occur more than once, the entire tag-list is invalid") and otherwise
lenient as the RFC asks ("Unrecognized tags MUST be ignored"); it never raises anything but
:class:`TagListError`, which the Hypothesis fuzz test holds it to.

::

    tag-list  =  tag-spec *( ";" tag-spec ) [ ";" ]
    tag-spec  =  [FWS] tag-name [FWS] "=" [FWS] tag-value [FWS]
    tag-name  =  ALPHA *ALNUMPUNC
    tag-value =  [ tval *( 1*(WSP / FWS) tval ) ]
    tval      =  1*VALCHAR
    VALCHAR   =  %x21-3A / %x3C-7E     ; "!" to "~" except ";"
"""

from __future__ import annotations

import re

# RFC 6376 §3.2 tag-name; values may also carry UTF-8 (RFC 8616 §4 lets i= and d= hold
# internationalised names), so only controls other than folding white space are refused.
_TAG_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# FWS (RFC 5322 §3.2.2 as DKIM uses it): white space, possibly with a line break in it.
_FWS = re.compile(r"[ \t]*\r?\n[ \t]+|[ \t]+")
_EDGE_WS = " \t\r\n"


class TagListError(ValueError):
    """The text is not a tag-list; ``str()`` says where, in one line."""


def parse_tag_list(text: str) -> dict[str, str]:
    """The tags of ``text`` by name (case-sensitive, RFC 6376 §3.2: "Tags MUST be interpreted in
    a case-sensitive manner"), each value with its internal folding white space kept."""
    tags: dict[str, str] = {}
    specs = text.split(";")
    if specs and specs[-1].strip(_EDGE_WS) == "":
        specs.pop()  # "[ ";" ]": a trailing semicolon ends the list
    if not specs or (len(specs) == 1 and not specs[0].strip(_EDGE_WS)):
        raise TagListError("no tags")
    for index, spec in enumerate(specs, start=1):
        name, equals, value = spec.partition("=")
        name = name.strip(_EDGE_WS)
        if not equals:
            raise TagListError(f"tag {index} has no '='")
        if _TAG_NAME.fullmatch(name) is None:
            raise TagListError(f"tag {index}: {name[:20]!r} is not a tag name")
        if name in tags:
            raise TagListError(f"tag {name}= appears twice")
        value = value.strip(_EDGE_WS)
        if _CONTROL.search(_FWS.sub(" ", value)):  # a line break only as part of FWS
            raise TagListError(f"tag {name}= has a control character in its value")
        tags[name] = value
    return tags


def without_whitespace(value: str) -> str:
    """A value with all its folding white space removed: base64 (b=, bh=, p=) and the lists
    whose separators may be surrounded by FWS (h=, RFC 6376 §3.5)."""
    return _FWS.sub("", value)


def colon_list(value: str) -> list[str]:
    """The items of a colon-separated value (h=, q=, s=, k= lists), white space removed."""
    return without_whitespace(value).split(":")
