"""``[storage]``: where mail is kept — the embedded files of the data directory, or a database
shared by several nodes (docs/cluster.md).

Untrusted input seen here: none; this module declares. :mod:`postoffice.config.loader` reads
the file against it. The database URL is checked when the server starts (a malformed one, a
wrong password or an unknown database is one line and exit 1).
"""

from __future__ import annotations

from dataclasses import dataclass

from postoffice.config.kinds import COUNT, DURATION, choice_of
from postoffice.config.schema import Bound, Kind, plain, setting
from postoffice.config.values import string

BACKENDS = ("embedded", "postgresql")
TEXT = Kind("text", plain(string))


@dataclass(frozen=True, slots=True)
class StorageSettings:
    """Where mail, accounts and the queue are kept, under ``[storage]``."""

    backend: str = setting(
        "embedded",
        choice_of(BACKENDS),
        "embedded: the spool, Maildirs, accounts file and SQLite index in the data directory (one"
        " machine). postgresql: the queue, mailboxes, accounts and sessions in one PostgreSQL"
        " database that several postoffice nodes share (docs/cluster.md).",
    )
    database: str | None = setting(
        None,
        TEXT,
        "The PostgreSQL database of the postgresql backend: a postgresql:// URL or key=value"
        " pairs (sslmode=verify-full for TLS); unset, libpq's PG* environment variables and"
        " defaults. --database sets it and the backend.",
        default_text="the PG* environment variables",
        flag="--database",
    )
    node_name: str | None = setting(
        None,
        TEXT,
        "This node's name in the cluster (postoffice status, /metrics, the queue's leases).",
        default_text="the host name",
    )
    pool_size: int = setting(
        10,
        COUNT,
        "Connections this node keeps open to the database, per pool (one for the event loop, one"
        " for storage calls in threads); PostgreSQL's max_connections must cover every node's.",
        ceiling=Bound(200, "PostgreSQL's default max_connections is 100"),
    )
    queue_lease: float = setting(
        60.0,
        DURATION,
        "How long a node's hold on a queued message (its lease) lasts unless renewed (every quarter"
        " of it): the time a node that died leaves its messages before the others deliver them.",
        floor=Bound(1.0, "renewed every quarter of it, a lease shorter than a second outruns its renewal"),
        ceiling=Bound(3600.0, "a dead node's mail waiting an hour is already a long delay"),
    )
