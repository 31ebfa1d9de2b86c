"""Every SMTP reply postoffice sends, defined once.

Untrusted input seen here: none directly; texts that embed client-supplied words (the HELO name)
are sanitised by :func:`printable` so a client cannot inject CR/LF into a reply.

A reply carries a basic code (RFC 5321 §4.2) and, where RFC 3463 gives one, an enhanced status
code. RFC 2034 §3 ties enhanced codes to sessions that used EHLO and exempts the greeting and
the HELO/EHLO replies, so :meth:`Reply.render` takes ``enhanced`` from the session.
Nothing else in the code base writes a literal that starts with a reply code: tests import
the constants from here.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field


def printable(text: str, limit: int = 200) -> str:
    """Text safe to echo inside a reply: printable characters only, at most ``limit`` octets.

    The bound is in UTF-8 octets, not characters: RFC 5321 §4.5.3.1.5 limits a reply line to
    512 octets, and 200 four-octet characters (an SMTPUTF8 HELO name) would be 800.
    """
    if text.isascii() and len(text) <= limit and text.isprintable():
        return text  # the usual HELO name: nothing to replace or cut
    cleaned = "".join(ch if ch.isprintable() else "?" for ch in text)
    return cleaned.encode("utf-8")[:limit].decode("utf-8", "ignore")


@dataclass(frozen=True, slots=True)
class Reply:
    """One SMTP reply: ``code``, optional RFC 3463 ``enhanced`` code, one or more text lines."""

    code: int
    enhanced: str | None
    lines: tuple[str, ...]
    # The wire form with and without the enhanced code, made on first use: most replies are
    # module constants sent again and again.
    _wire: dict[bool, bytes] = field(default_factory=dict, init=False, repr=False, compare=False)

    @classmethod
    def of(cls, code: int, enhanced: str | None, *lines: str) -> Reply:
        return cls(code, enhanced, lines or ("",))

    @property
    def text(self) -> str:
        return "\n".join(self.lines)

    @property
    def positive(self) -> bool:
        return self.code < 400

    @property
    def transient(self) -> bool:
        return 400 <= self.code < 500

    @property
    def permanent(self) -> bool:
        return self.code >= 500

    def with_text(self, *lines: str) -> Reply:
        return Reply(self.code, self.enhanced, lines)

    def render(self, *, enhanced: bool) -> bytes:
        """The reply on the wire: ``250-line`` continuation lines and a final ``250 line`` (§4.2.1)."""
        wire = self._wire.get(enhanced)
        if wire is None:
            wire = self._wire[enhanced] = self._render(enhanced)
        return wire

    def _render(self, enhanced: bool) -> bytes:
        prefix = f"{self.enhanced} " if enhanced and self.enhanced else ""
        out = []
        last = len(self.lines) - 1
        for index, line in enumerate(self.lines):
            separator = " " if index == last else "-"
            out.append(f"{self.code}{separator}{prefix}{line}\r\n")
        return "".join(out).encode("utf-8")

    def __str__(self) -> str:
        prefix = f"{self.enhanced} " if self.enhanced else ""
        return f"{self.code} {prefix}{' / '.join(self.lines)}"


# --- connection level -------------------------------------------------------------------------


# The same few replies are made for every session (the 220, the EHLO reply to a client that
# comes back); kept, each is rendered once. Bounded: the EHLO name is the client's text.
@functools.lru_cache(maxsize=16)
def greeting(hostname: str) -> Reply:
    """§4.2 / §3.1: the 220 greeting names the server."""
    return Reply.of(220, None, f"{hostname} ESMTP postoffice ready")


def helo_ok(hostname: str, client_name: str) -> Reply:
    return Reply.of(250, None, f"{hostname} Hello {printable(client_name)}, pleased to meet you")


def ehlo_ok(hostname: str, client_name: str, keywords: list[str]) -> Reply:
    """§4.1.1.1: first line greets, the others list one extension keyword each."""
    return _ehlo_ok(hostname, client_name, tuple(keywords))


@functools.lru_cache(maxsize=128)
def _ehlo_ok(hostname: str, client_name: str, keywords: tuple[str, ...]) -> Reply:
    return Reply(250, None, (f"{hostname} Hello {printable(client_name)}", *keywords))


CLOSING = Reply.of(221, "2.0.0", "Bye")


def shutting_down(hostname: str) -> Reply:
    """§3.8: 421 before closing the channel when the service is going down."""
    return Reply.of(421, "4.3.2", f"{hostname} Service shutting down, closing transmission channel")


TOO_MANY_CONNECTIONS = Reply.of(421, "4.7.0", "Too many connections, try again later")
TOO_MANY_CONNECTIONS_FROM_CLIENT = Reply.of(421, "4.7.0", "Too many connections from your address")
TOO_MANY_ERRORS = Reply.of(421, "4.7.0", "Too many errors, closing connection")
TOO_MANY_JUNK_COMMANDS = Reply.of(421, "4.7.0", "Too many commands without mail, closing connection")
# Never sent: the core closes the connection without writing it (fault injection's
# "disconnect", smtpd/chaos.py). A 421, so every layer treats it as the end of the session.
DROP = Reply.of(421, "4.4.2", "Connection dropped")
TIMEOUT = Reply.of(421, "4.4.2", "Timeout exceeded, closing connection")
TOO_MANY_AUTH_FAILURES = Reply.of(421, "4.7.0", "Too many failed authentication attempts, try again later")

# --- positive replies -------------------------------------------------------------------------

OK = Reply.of(250, "2.0.0", "Ok")
SENDER_OK = Reply.of(250, "2.1.0", "Ok")
RECIPIENT_OK = Reply.of(250, "2.1.5", "Ok")
RESET_OK = Reply.of(250, "2.0.0", "Ok")
START_MAIL_INPUT = Reply.of(354, None, 'Enter message, ending with "." on a line by itself')
VRFY_CANNOT_VERIFY = Reply.of(252, "2.5.0", "Cannot VRFY user, but will accept message and attempt delivery")
HELP = Reply(
    214,
    "2.0.0",
    (
        "postoffice speaks ESMTP (RFC 5321). Commands:",
        "EHLO HELO MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY HELP",
        "End of HELP info",
    ),
)


def queued(queue_id: str) -> Reply:
    """§4.2.2: 250 after end of data, sent only once the message is durable."""
    return Reply.of(250, "2.0.0", f"Ok: queued as {queue_id}")


def chunk_received(size: int) -> Reply:
    """RFC 3030 §2: each non-final BDAT chunk is acknowledged."""
    return Reply.of(250, "2.0.0", f"Ok: {size} octets received")


# --- STARTTLS (RFC 3207) and AUTH (RFC 4954) -------------------------------------------------

READY_TO_START_TLS = Reply.of(220, "2.0.0", "Ready to start TLS")
# RFC 3207 §4: "454 TLS not available due to temporary reason".
TLS_NOT_AVAILABLE = Reply.of(454, "4.7.0", "TLS not available due to temporary reason")
AUTH_SUCCESSFUL = Reply.of(235, "2.7.0", "Authentication successful")
# RFC 4954 §6: the accounts could not be read; the client may try again later.
AUTH_TEMPORARY_FAILURE = Reply.of(454, "4.7.0", "Temporary authentication failure")


def auth_challenge(encoded: str) -> Reply:
    """RFC 4954 §4: a server challenge is ``334`` and base64 text (possibly empty), no enhanced code."""
    return Reply.of(334, None, encoded)


# RFC 4954 §4: "If the client wishes to cancel ... the server MUST reject the AUTH command by
# sending a 501 reply"; a response that is not base64 gets 501 with 5.5.2.
AUTH_CANCELLED = Reply.of(501, "5.0.0", "Authentication cancelled")
AUTH_BAD_BASE64 = Reply.of(501, "5.5.2", "Cannot decode the response as base64")
AUTH_MALFORMED = Reply.of(501, "5.5.2", "Malformed authentication response")
AUTH_UNKNOWN_MECHANISM = Reply.of(504, "5.5.4", "Unrecognized authentication type")
AUTH_REQUIRED = Reply.of(530, "5.7.0", "Authentication required")
# One reply for a wrong password, an unknown user and a refused authorization identity: the
# server never tells which (RFC 4954 §6 535 5.7.8).
AUTH_FAILED = Reply.of(535, "5.7.8", "Authentication credentials invalid")
ENCRYPTION_REQUIRED = Reply.of(538, "5.7.11", "Encryption required for requested authentication mechanism")
# RFC 8689 §4.1 (REQUIRETLS): the MAIL parameter is taken only over TLS; RFC 3463 X.7.10
# "Encryption Needed" (registered by RFC 5248).
REQUIRETLS_NEEDS_TLS = Reply.of(530, "5.7.10", "REQUIRETLS needs a TLS session (use STARTTLS first)")

# --- command errors (§4.2.4) ------------------------------------------------------------------

UNRECOGNIZED_COMMAND = Reply.of(500, "5.5.2", "Syntax error, command unrecognized")
LINE_TOO_LONG = Reply.of(500, "5.5.2", "Line too long (RFC 5321 §4.5.3.1.4)")
BARE_LINE_ENDING_IN_COMMAND = Reply.of(
    500, "5.5.2", "Command contains a bare CR or LF; lines end with CRLF (RFC 5321 §2.3.8)"
)
SYNTAX_ERROR_IN_PARAMETERS = Reply.of(501, "5.5.4", "Syntax error in parameters or arguments")
BAD_SENDER_SYNTAX = Reply.of(501, "5.1.7", "Bad sender address syntax")
BAD_RECIPIENT_SYNTAX = Reply.of(501, "5.1.3", "Bad recipient address syntax")
HELO_REQUIRES_DOMAIN = Reply.of(501, "5.5.4", "Syntax: HELO/EHLO domain")
NOT_IMPLEMENTED = Reply.of(502, "5.5.1", "Command not implemented")
BAD_SEQUENCE = Reply.of(503, "5.5.1", "Bad sequence of commands")
NEED_HELO = Reply.of(503, "5.5.1", "Send HELO/EHLO first")
NEED_MAIL = Reply.of(503, "5.5.1", "Need MAIL command")
NEED_RCPT = Reply.of(503, "5.5.1", "Need RCPT command")
NESTED_MAIL = Reply.of(503, "5.5.1", "Sender already specified")
DATA_AFTER_BDAT = Reply.of(503, "5.5.1", "DATA not allowed after BDAT (RFC 3030 §3)")
PARAMETER_NOT_IMPLEMENTED = Reply.of(
    555, "5.5.4", "MAIL FROM/RCPT TO parameters not recognized or not implemented"
)
PARAMETER_NOT_IMPLEMENTED_504 = Reply.of(504, "5.5.4", "Command parameter not implemented")

# --- transaction errors -----------------------------------------------------------------------

NO_VALID_RECIPIENTS = Reply.of(554, "5.5.1", "No valid recipients")
MESSAGE_TOO_BIG = Reply.of(552, "5.3.4", "Message size exceeds fixed maximum message size")
TOO_MANY_RECIPIENTS = Reply.of(452, "4.5.3", "Too many recipients")
BARE_LINE_ENDING_IN_DATA = Reply.of(
    554, "5.6.0", "Message contains a bare CR or LF; lines must end with CRLF (RFC 5321 §2.3.8)"
)


def text_line_too_long(limit: int) -> Reply:
    return Reply.of(554, "5.6.0", f"Message has a line longer than {limit} octets (RFC 5321 §4.5.3.1.6)")


NON_ASCII_NEEDS_SMTPUTF8 = Reply.of(
    553, "5.6.7", "Non-ASCII address requires the SMTPUTF8 parameter (RFC 6531 §3.4)"
)

# --- policy decisions -------------------------------------------------------------------------

USER_UNKNOWN = Reply.of(550, "5.1.1", "Recipient address rejected: User unknown")
RELAY_DENIED = Reply.of(554, "5.7.1", "Relay access denied")
BAD_DESTINATION_MAILBOX = Reply.of(553, "5.1.3", "Mailbox name not allowed")
# RFC 6409 §6.1: the submission server may check that the sender is one the user may use.
SENDER_NOT_OWNED = Reply.of(553, "5.7.1", "Sender address rejected: not owned by the authenticated user")
NULL_SENDER_REFUSED = Reply.of(553, "5.7.1", "Sender address rejected: the null sender is not accepted here")


def dmarc_reject(domain: str) -> Reply:
    """RFC 7489 §6.7 and §10.3: the author's domain publishes p=reject and the message fails
    DMARC; refused at the end of the data, never after a 250."""
    return Reply.of(
        550,
        "5.7.1",
        f"Message rejected: DMARC policy of {printable(domain)} (p=reject) and the message fails"
        " SPF and DKIM alignment",
    )


# --- local trouble ----------------------------------------------------------------------------

LOCAL_ERROR = Reply.of(451, "4.3.0", "Local error in processing")
INSUFFICIENT_STORAGE = Reply.of(452, "4.3.1", "Insufficient system storage")

# --- outbound delivery (the text is ours; a remote server's own replies are passed on as given) --


def remote_reply(code: int, enhanced: str | None, text: str) -> Reply:
    """A reply received from another server, kept as data: every line made printable."""
    lines = tuple(printable(line, 512) for line in text.splitlines()[:10]) or ("",)
    return Reply(code, enhanced, lines)


def null_mx(domain: str) -> Reply:
    """RFC 7505 §4.1: a domain that publishes a null MX accepts no mail."""
    return Reply.of(
        556, "5.1.10", f"Recipient address rejected: {printable(domain)} accepts no mail (null MX)"
    )


def domain_not_found(domain: str) -> Reply:
    """RFC 3463 X.1.2: the destination domain does not exist."""
    return Reply.of(550, "5.1.2", f"Host or domain name not found: {printable(domain)}")


def dns_failure(domain: str, detail: str) -> Reply:
    """RFC 3463 X.4.3: directory server failure; a later lookup may work."""
    return Reply.of(451, "4.4.3", f"DNS lookup for {printable(domain)} failed: {printable(detail)}")


def no_route(domain: str) -> Reply:
    """RFC 3463 X.4.4: no mail exchanger of the domain has an address."""
    return Reply.of(554, "5.4.4", f"Unable to route: no address for the mail servers of {printable(domain)}")


def loops_back(domain: str) -> Reply:
    """RFC 3463 X.4.6: the domain's mail exchanger is this server (Postfix "loops back to myself")."""
    return Reply.of(554, "5.4.6", f"Mail for {printable(domain)} loops back to myself")


def cannot_connect(host: str, detail: str) -> Reply:
    """RFC 3463 X.4.1: no answer from host."""
    return Reply.of(451, "4.4.1", f"Connect to {printable(host)}: {printable(detail)}")


def lost_connection(host: str, stage: str) -> Reply:
    """RFC 3463 X.4.2: bad connection. ``stage`` may quote the server (a garbled reply)."""
    return Reply.of(451, "4.4.2", f"Lost connection with {printable(host)} while {printable(stage, 400)}")


def timed_out(host: str, stage: str) -> Reply:
    """RFC 3463 X.4.2: the connection went quiet."""
    return Reply.of(451, "4.4.2", f"Timed out talking to {printable(host)} while {printable(stage, 400)}")


def tls_not_offered(host: str) -> Reply:
    """RFC 3463 X.7.4: a required security feature is missing (RFC 3207 §4: STARTTLS)."""
    return Reply.of(451, "4.7.4", f"TLS is required, but {printable(host)} does not offer STARTTLS")


def tls_failed(host: str, detail: str) -> Reply:
    """RFC 3463 X.7.5: cryptographic failure."""
    return Reply.of(451, "4.7.5", f"TLS with {printable(host)} failed: {printable(detail)}")


def policy_mx_refused(host: str, domain: str) -> Reply:
    """RFC 3463 X.7.5: the domain's MTA-STS policy in enforce mode does not list this MX host
    (RFC 8461 §4.1); the host is not used."""
    return Reply.of(
        451, "4.7.5", f"MTA-STS policy of {printable(domain)} does not allow the MX host {printable(host)}"
    )


def policy_tls_failed(host: str, policy: str, detail: str) -> Reply:
    """RFC 3463 X.7.5: a policy (MTA-STS, RFC 8461 §5; DANE, RFC 7672 §2.2) requires
    authenticated TLS with ``host``, and it could not be had."""
    return Reply.of(
        451, "4.7.5", f"{policy} requires authenticated TLS with {printable(host)}: {printable(detail)}"
    )


def requiretls_unmet(host: str, detail: str) -> Reply:
    """RFC 8689 §5: a REQUIRETLS message the next hop cannot take over verified TLS is not
    relayed and is returned; X.7.10 "Encryption Needed" (RFC 5248)."""
    return Reply.of(550, "5.7.10", f"REQUIRETLS: no verified TLS with {printable(host)}: {printable(detail)}")


def requiretls_not_offered(host: str) -> Reply:
    """RFC 8689 §4.2.1/§6: the next hop does not offer REQUIRETLS; X.7.30 "REQUIRETLS support
    required" (registered by RFC 8689 §7.3)."""
    return Reply.of(550, "5.7.30", f"REQUIRETLS support required, but {printable(host)} does not offer it")


def unsendable_address(address: str, detail: str, *, sender: bool = False) -> Reply:
    """RFC 3463 X.1.7 (sender) / X.1.3 (recipient): an address, or its DSN parameters, that no
    SMTP command can carry (our own check before sending, not a server's answer)."""
    return Reply.of(
        553,
        "5.1.7" if sender else "5.1.3",
        f"Cannot send <{printable(address)}> in an SMTP command: {printable(detail)}",
    )


def smtputf8_not_offered(host: str) -> Reply:
    """RFC 6531 §3.2: an internationalised message needs a server that offers SMTPUTF8.

    X.6.7 is RFC 6531's "non-ASCII addresses not permitted" (registered by RFC 6531 §4.1).
    """
    return Reply.of(
        553,
        "5.6.7",
        f"The message needs SMTPUTF8 (internationalised addresses or headers), "
        f"which {printable(host)} does not offer",
    )


def too_big_for_peer(host: str, limit: int) -> Reply:
    """RFC 1870 §6.2: the message is larger than the server announced it accepts."""
    return Reply.of(552, "5.3.4", f"Message too big for {printable(host)} (it accepts {limit} octets)")


def relay_auth_failed(host: str, detail: str) -> Reply:
    """RFC 3463 X.7.0; temporary, since an operator fixes credentials without the sender's help."""
    return Reply.of(451, "4.7.0", f"Authentication with {printable(host)} failed: {printable(detail)}")
