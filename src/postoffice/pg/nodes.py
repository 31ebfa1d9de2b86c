"""The cluster's nodes as the database sees them: each node's row in ``nodes`` (v0001), and
what every node shows of the cluster (its nodes, its shared queue's size).

Untrusted input seen here: none; the rows are written by postoffice nodes. Node names come
from each node's configuration (``[storage] node_name``).

A node writes its row when it starts and again every :data:`HEARTBEAT` seconds
(:mod:`postoffice.pg.heartbeat`); a row not written for :data:`GONE_AFTER` seconds is a node
that stopped or died. Rows are kept (an operator wants to see which node went away, and
when); ``postoffice db forget NAME`` removes one.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import psycopg

# Seconds between a node's writes of its row; three missed ones and it is shown as gone.
HEARTBEAT = 5.0
GONE_AFTER = 3 * HEARTBEAT

# The shared queue's table (schema version 2, postoffice.pgstore's queue). Counted only once it
# exists, so a node of a schema without it shows no cluster queue rather than failing.
QUEUE_TABLE = "queue_messages"

# One statement both for the first write and for each beat: a node whose row was removed
# (postoffice db forget) while it runs simply writes it again. It returns the start time the row
# had before (the CTE reads the snapshot before the write): another one than the node's own,
# after its first beat, means another node runs under the same name.
UPSERT = """
WITH before AS (SELECT started FROM nodes WHERE name = %(name)s)
INSERT INTO nodes (name, version, started, seen) VALUES (%(name)s, %(version)s, %(started)s, now())
ON CONFLICT (name) DO UPDATE SET version = EXCLUDED.version, started = EXCLUDED.started, seen = now()
RETURNING (SELECT started FROM before)
"""

SELECT = "SELECT name, version, started, seen, now() FROM nodes ORDER BY name"


@dataclass(frozen=True, slots=True)
class NodeRow:
    """One node's row, and how long ago (by the database's clock) it was last written."""

    name: str
    version: str
    started: datetime
    seen: datetime
    age: float  # seconds since ``seen``

    @property
    def up(self) -> bool:
        return self.age < GONE_AFTER

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "started": self.started.isoformat(timespec="seconds"),
            "seen": self.seen.isoformat(timespec="seconds"),
            "seen_seconds_ago": round(self.age, 1),
            "up": self.up,
        }


@dataclass(frozen=True, slots=True)
class ClusterView:
    """What one node knows of the cluster, as of its last look."""

    node: str
    nodes: tuple[NodeRow, ...]
    queue: int | None  # the shared queue's messages; None until its table exists


def rows(found: list[tuple[Any, ...]]) -> tuple[NodeRow, ...]:
    """:data:`SELECT`'s rows as :class:`NodeRow`."""
    return tuple(
        NodeRow(name, version, started, seen, max(0.0, (now - seen).total_seconds()))
        for name, version, started, seen, now in found
    )


def queue_count_sql(table_exists: bool) -> str | None:
    """How to count the shared queue's messages, or None when its table does not exist yet."""
    return f"SELECT count(*) FROM {QUEUE_TABLE}" if table_exists else None


QUEUE_EXISTS = f"SELECT to_regclass('{QUEUE_TABLE}') IS NOT NULL"


def list_nodes(connection: psycopg.Connection[Any]) -> tuple[NodeRow, ...]:
    """Every node's row (blocking: ``postoffice db status``)."""
    return rows(connection.execute(SELECT).fetchall())


def queue_size(connection: psycopg.Connection[Any]) -> int | None:
    """The shared queue's messages, or None when the schema has no queue yet (blocking)."""
    exists = connection.execute(QUEUE_EXISTS).fetchone()
    sql = queue_count_sql(bool(exists and exists[0]))
    if sql is None:
        return None
    count = connection.execute(sql.encode()).fetchone()
    return int(count[0]) if count else 0


def forget(connection: psycopg.Connection[Any], name: str) -> bool:
    """Remove ``name``'s row (a node taken out of the cluster); False when there was none."""
    return connection.execute("DELETE FROM nodes WHERE name = %s", (name,)).rowcount > 0
