"""What a test wants out of a message: its links and its one-time codes.

Untrusted input seen here: the message's text and HTML parts, as any sender wrote them. HTML is
read with the standard library's :class:`html.parser.HTMLParser` (a tokenizer that follows the
HTML standard's rules for tags, attributes and character references), never with patterns; the
links found are returned as text and never fetched.

Links: every ``<a href>`` and ``<area href>`` of the HTML part with its anchor text, then every
URL in the text part, each URL once (the first place it appears, its anchor text if any place
gave one). Codes: strings of four or more characters with at least one digit (``123456``,
``AB12-CD34``) that stand within a few words of a word such as code, PIN, token, password or
verification, in the languages listed in :data:`_KEYWORDS`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from html.parser import HTMLParser

# An href that is not a place to go: script, page fragments, embedded data and inline parts.
_NOT_LINKS = ("javascript:", "vbscript:", "data:", "cid:", "#")
# A URL in plain text (RFC 3986 characters up to a space or a delimiter), and the punctuation
# a sentence puts after it, which is not part of it.
_TEXT_URL = re.compile(r"""\b(?:https?://|mailto:)[^\s<>"'`{}|\\^]+""", re.IGNORECASE)
_TRAILING = ".,;:!?)]}'\""
# Anchor text kept per link, at most.
MAX_ANCHOR_TEXT = 200
# Words that announce a code, in the languages mail is commonly sent in. They match inside
# longer words too ("Bestätigungscode", "passcode").
_KEYWORDS = re.compile(
    r"code|c[oó]digo|codice|kod|koodi|pin|otp|token|passcode|pass\s?word|passwort|mot de passe"
    r"|contrase[ñn]a|senha|wachtwoord|verif|v[ée]rif|bestätig|bestaetig|confirm|einmal|one[- ]time"
    r"|验证码|驗證碼|認証|確認コード|인증|код|пароль|подтвержд|doğrulama|weryfikac",
    re.IGNORECASE,
)
# A code: letters, digits and single dashes, with at least one digit, 4 to 64 characters.
_CODE = re.compile(r"(?<![\w-])(?=[\w-]*\d)[A-Za-z0-9](?:[A-Za-z0-9]|-(?=[A-Za-z0-9])){3,63}(?![\w-])")
# How far from its keyword a code may stand (characters after it, before it); never beyond the
# end of the keyword's sentence ("Your code is 4821. Order 2024 ..." gives one code).
_AFTER, _BEFORE = 60, 40
_SENTENCE_END = re.compile(r"[.!?。]\s")
MAX_CODES = 20


@dataclass(frozen=True, slots=True)
class Link:
    url: str
    text: str
    source: str  # "html" or "text"


@dataclass(frozen=True, slots=True)
class Code:
    code: str
    context: str  # the words around it, on one line


class _Anchors(HTMLParser):
    """Collects (href, anchor text) of every link element, in document order."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.found: list[tuple[str, str]] = []
        self._open: tuple[str, list[str]] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag not in ("a", "area"):
            if tag == "img" and self._open is not None:
                alt = dict(attrs).get("alt")
                if alt:
                    self._open[1].append(alt)
            return
        self._close()
        href = (dict(attrs).get("href") or "").strip()
        if tag == "area":
            self.found.append((href, dict(attrs).get("alt") or ""))
        else:
            self._open = (href, [])

    def handle_endtag(self, tag: str) -> None:
        if tag == "a":
            self._close()

    def handle_data(self, data: str) -> None:
        if self._open is not None:
            self._open[1].append(data)

    def _close(self) -> None:
        if self._open is not None:
            href, parts = self._open
            self.found.append((href, " ".join("".join(parts).split())))
            self._open = None

    def close(self) -> None:
        super().close()
        self._close()


# Elements whose content is not text a person reads, and elements that break a line.
_HIDDEN = frozenset({"script", "style", "title", "head", "template"})
_BLOCKS = frozenset(
    {"p", "div", "br", "tr", "td", "th", "li", "ul", "ol", "table", "h1", "h2", "h3", "h4", "h5", "h6",
     "blockquote", "pre", "hr", "section", "article", "header", "footer"}
)  # fmt: skip


class _Text(HTMLParser):
    """The text of an HTML document as a reader sees it: block elements apart, hidden ones out."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._hidden = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _HIDDEN:
            self._hidden += 1
        elif tag in _BLOCKS:
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in _HIDDEN:
            self._hidden = max(0, self._hidden - 1)
        elif tag in _BLOCKS:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if not self._hidden:
            self.parts.append(data)


def html_text(markup: str) -> str:
    """``markup`` as text: one line per block, runs of spaces as one."""
    parser = _Text()
    parser.feed(markup)
    parser.close()
    lines = (" ".join(line.split()) for line in "".join(parser.parts).splitlines())
    return "\n".join(line for line in lines if line)


def _is_link(href: str) -> bool:
    return bool(href) and not href.lower().startswith(_NOT_LINKS)


def html_links(markup: str) -> list[tuple[str, str]]:
    parser = _Anchors()
    parser.feed(markup)
    parser.close()
    return [(href, text[:MAX_ANCHOR_TEXT]) for href, text in parser.found if _is_link(href)]


def text_urls(text: str) -> list[str]:
    return [match.group(0).rstrip(_TRAILING) for match in _TEXT_URL.finditer(text)]


def links(text: str | None, html: str | None) -> list[Link]:
    """Every link of the HTML part, then of the text part, each URL once."""
    found: dict[str, Link] = {}
    for url, anchor in html_links(html or ""):
        known = found.get(url)
        if known is None or (not known.text and anchor):
            found[url] = Link(url, anchor, known.source if known else "html")
    for url in text_urls(text or ""):
        found.setdefault(url, Link(url, "", "text"))
    return list(found.values())


def _window(text: str, start: int, end: int) -> tuple[int, int]:
    """Where codes for the keyword at ``start:end`` may be: near it, in its sentence."""
    before = max(0, start - _BEFORE)
    for stop in _SENTENCE_END.finditer(text, before, start):
        before = stop.end()
    after = _SENTENCE_END.search(text, end, end + _AFTER)
    return before, after.start() if after is not None else end + _AFTER


def codes(*texts: str | None) -> list[Code]:
    """The one-time codes in ``texts`` (the text part, the HTML part as text), each once."""
    found: dict[str, Code] = {}
    for text in texts:
        if not text:
            continue
        # URLs are links, not codes (a token=... query would be found twice, and wrongly).
        flat = " ".join(_TEXT_URL.sub(" ", text).split())
        for keyword in _KEYWORDS.finditer(flat):
            start, end = _window(flat, keyword.start(), keyword.end())
            for match in _CODE.finditer(flat, start, end):
                value = match.group(0)
                if value not in found and len(found) < MAX_CODES:
                    window = flat[max(0, match.start() - _BEFORE) : match.end() + _BEFORE]
                    found[value] = Code(value, window.strip())
    return list(found.values())
