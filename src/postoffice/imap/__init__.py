"""The IMAP4rev2 protocol (RFC 9051, with IMAP4rev1 clients of RFC 3501 in mind), sans-I/O.

Untrusted input seen here: every byte an IMAP client sends. :mod:`.reader` frames command lines
and literals within limits, :mod:`.tokens` splits a command into its tag, name and arguments,
:mod:`.grammar` reads sequence sets, FETCH items, flags and SEARCH keys from them, and
:mod:`.responses` turns response data into bytes. Nothing here touches a socket, a file or a
clock: the asyncio side (:mod:`postoffice.net.imap`) feeds bytes in and writes bytes out.
"""

from postoffice.errors import RemoteProtocolError


class ImapParseError(RemoteProtocolError):
    """The client sent something the grammar refuses: answered ``BAD``, the session goes on.

    ``tag`` is the command's tag when it was read before the problem (None: answer ``* BAD``).
    """

    def __init__(self, message: str, tag: str | None = None) -> None:
        super().__init__(message)
        self.tag = tag
