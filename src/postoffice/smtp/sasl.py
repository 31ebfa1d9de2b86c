"""SASL for SMTP AUTH (RFC 4954): the PLAIN (RFC 4616) and LOGIN mechanisms, sans-I/O.

Untrusted input seen here: the initial response of an ``AUTH`` command and every line a client
sends in answer to a ``334`` challenge, base64 text carrying a user name and a password.
Nothing here logs, stores or echoes them; :class:`Credentials` keeps the password out of its
``repr``. Whether the credentials are right is not decided here (see ``net.login``).

An exchange is driven like the rest of the core: the session hands it the client's text and
gets back either a :class:`~postoffice.smtp.replies.Reply` to send (a ``334`` challenge or a
``501``) or :class:`Credentials` to verify::

    exchange = sasl.start("PLAIN")          # None: not a mechanism we offer (504)
    step = exchange.begin(initial_response)  # the AUTH argument, or None
    while isinstance(step, Reply) and step.code == 334:
        step = exchange.respond(next_line)
"""

from __future__ import annotations

import binascii
from dataclasses import dataclass, field

from postoffice.errors import LocalProtocolError
from postoffice.smtp import replies
from postoffice.smtp.replies import Reply

# The mechanisms offered, strongest first. Both send the password in the clear inside the
# session, which is why AUTH is only offered under TLS (RFC 4954 §4, RFC 8314 §3).
MECHANISMS = ("PLAIN", "LOGIN")

# draft-murchison-sasl-login-00 §2: the LOGIN prompts are "Username:" and "Password:".
_USERNAME_PROMPT = "VXNlcm5hbWU6"
_PASSWORD_PROMPT = "UGFzc3dvcmQ6"


@dataclass(frozen=True, slots=True)
class Credentials:
    """What the client claims: who it is (``authcid``), its password, and as whom it wants to
    act (``authzid``, RFC 4616 §2; empty means "as myself")."""

    authcid: str
    password: str = field(repr=False)
    authzid: str = ""


Step = Reply | Credentials


def decode_response(text: str, *, initial: bool = False) -> bytes | Reply:
    """The octets of one base64 client response, or the 501 reply that ends the exchange.

    RFC 4954 §4: ``*`` cancels the exchange; an initial response of ``=`` is an empty one; and
    a response that cannot be decoded is refused with ``501 5.5.2``. Only the canonical
    encoding is accepted (RFC 4648 §3.5: no whitespace, padding exactly where it belongs, no
    stray bits), so one response has exactly one meaning.
    """
    if text == "*":
        return replies.AUTH_CANCELLED
    if initial and text == "=":
        return b""
    try:
        encoded = text.encode("ascii")
        decoded = binascii.a2b_base64(encoded, strict_mode=True)
    except (UnicodeEncodeError, binascii.Error):
        return replies.AUTH_BAD_BASE64
    if binascii.b2a_base64(decoded, newline=False) != encoded:
        return replies.AUTH_BAD_BASE64
    return decoded


def parse_plain(message: bytes) -> Credentials | Reply:
    """RFC 4616 §2: ``message = [authzid] UTF8NUL authcid UTF8NUL passwd``.

    authcid and passwd are non-empty; all three are UTF-8 without NUL. Anything else is a
    malformed response (501), not a failed login: no password was tried.
    """
    parts = message.split(b"\0")
    if len(parts) != 3:
        return replies.AUTH_MALFORMED
    try:
        authzid, authcid, password = (part.decode("utf-8") for part in parts)
    except UnicodeDecodeError:
        return replies.AUTH_MALFORMED
    if not authcid or not password:
        return replies.AUTH_MALFORMED
    return Credentials(authcid, password, authzid)


def _text(octets: bytes) -> str | Reply:
    try:
        return octets.decode("utf-8")
    except UnicodeDecodeError:
        return replies.AUTH_MALFORMED


class Exchange:
    """One AUTH exchange in progress; subclasses are the mechanisms."""

    mechanism = ""

    def begin(self, initial_response: str | None) -> Step:
        raise NotImplementedError

    def respond(self, line: str) -> Step:
        raise NotImplementedError


class _Plain(Exchange):
    mechanism = "PLAIN"

    def __init__(self) -> None:
        self._waiting = False

    def begin(self, initial_response: str | None) -> Step:
        if initial_response is None:
            # RFC 4616 §2: the server sends an empty challenge and the client answers with
            # the message.
            self._waiting = True
            return replies.auth_challenge("")
        return self._finish(decode_response(initial_response, initial=True))

    def respond(self, line: str) -> Step:
        if not self._waiting:
            raise LocalProtocolError("PLAIN response without a challenge")
        self._waiting = False
        return self._finish(decode_response(line))

    @staticmethod
    def _finish(decoded: bytes | Reply) -> Step:
        if isinstance(decoded, Reply):
            return decoded
        return parse_plain(decoded)


class _Login(Exchange):
    """LOGIN (draft-murchison-sasl-login): the user name, then the password, each on request.

    Not standardised but what many clients (older Outlook, some devices) still use; an initial
    response, where sent, is the user name.
    """

    mechanism = "LOGIN"

    def __init__(self) -> None:
        self._username: str | None = None
        self._waiting = False

    def begin(self, initial_response: str | None) -> Step:
        self._waiting = True
        if initial_response is None:
            return replies.auth_challenge(_USERNAME_PROMPT)
        return self._take_username(decode_response(initial_response, initial=True))

    def respond(self, line: str) -> Step:
        if not self._waiting:
            raise LocalProtocolError("LOGIN response without a challenge")
        decoded = decode_response(line)
        if self._username is None:
            return self._take_username(decoded)
        self._waiting = False
        if isinstance(decoded, Reply):
            return decoded
        password = _text(decoded)
        if isinstance(password, Reply):
            return password
        return Credentials(self._username, password)

    def _take_username(self, decoded: bytes | Reply) -> Step:
        username = decoded if isinstance(decoded, Reply) else _text(decoded)
        if isinstance(username, Reply):
            self._waiting = False
            return username
        self._username = username
        return replies.auth_challenge(_PASSWORD_PROMPT)


def start(mechanism: str) -> Exchange | None:
    """A new exchange for ``mechanism`` (case-insensitive), or None if it is not offered."""
    name = mechanism.upper()
    if name == "PLAIN":
        return _Plain()
    if name == "LOGIN":
        return _Login()
    return None
