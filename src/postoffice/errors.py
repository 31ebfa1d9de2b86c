"""The one exception tree of postoffice.

Untrusted input seen here: none; exceptions carry replies chosen by our own code, never
exception text from a peer, so nothing here can leak internals to a client.

::

    PostofficeError
    ├── ConfigError                  a setting is wrong; names the key and the file
    ├── AccountError                 a user/alias operation failed (exists, unknown, bad address)
    ├── ProtocolError                an SMTP exchange went wrong; may carry a Reply
    │   ├── LocalProtocolError       we tried to do something the protocol forbids (a bug)
    │   └── RemoteProtocolError      the peer broke the protocol; ``reply`` answers it
    ├── SpoolError                   the queue could not store or read a message
    │   └── StorageFullError         out of space or read-only: a temporary condition
    └── DeliveryError                a delivery agent failed outside its per-recipient results

The local/remote split follows h11: a remote error is the peer's fault and is answered on the
wire, a local error is ours and must never be shown to a client.
"""

from __future__ import annotations

from postoffice.smtp.replies import Reply


class PostofficeError(Exception):
    """Base of every error postoffice raises on purpose."""


class ConfigError(PostofficeError):
    """A configuration value is wrong.

    ``str()`` is one line a person can act on: ``FILE: KEY: what is wrong``.
    """

    def __init__(self, message: str, *, key: str | None = None, path: str | None = None) -> None:
        self.key = key
        self.path = path
        self.detail = message
        where = ": ".join(part for part in (path, key) if part)
        super().__init__(f"{where}: {message}" if where else message)


class AccountError(PostofficeError):
    """A user or alias operation cannot be done (unknown user, duplicate, invalid address)."""


class ProtocolError(PostofficeError):
    """An SMTP protocol violation; ``reply`` is what the peer should be told, if anything."""

    def __init__(self, message: str, reply: Reply | None = None) -> None:
        super().__init__(message)
        self.reply = reply


class LocalProtocolError(ProtocolError):
    """Our side tried something the protocol does not allow in the current state."""


class RemoteProtocolError(ProtocolError):
    """The peer sent something the protocol does not allow; ``reply`` answers it."""


class SpoolError(PostofficeError):
    """The spool could not store or read a message."""


class StorageFullError(SpoolError):
    """No space left or read-only storage: the client should retry later (452 4.3.1)."""


class DeliveryError(PostofficeError):
    """A delivery agent failed as a whole (not a per-recipient result)."""
