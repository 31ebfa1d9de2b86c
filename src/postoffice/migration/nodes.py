"""Whether any node is running on a cluster's database: a migration out of it (or into it) waits
until every node has stopped, as one out of a data directory waits for its server.

Untrusted input seen here: none; the ``nodes`` rows (schema version 1) are written by
postoffice nodes, each every few seconds while it runs.
"""

from __future__ import annotations

from postoffice.pg.database import Database

# A node writes its row every 5 seconds while it runs; one not written for three beats has
# stopped (or died).
GONE_AFTER = 15.0

_RECENT = """
SELECT name, extract(epoch FROM now() - seen)::float8 FROM nodes
WHERE seen > now() - make_interval(secs => %s) ORDER BY name
"""


def running_nodes(database: Database, *, within: float = GONE_AFTER) -> list[tuple[str, float]]:
    """Each node seen in the last ``within`` seconds, with how many seconds ago."""
    with database.connection() as connection:
        rows = connection.execute(_RECENT, (within,)).fetchall()
    return [(str(name), float(age)) for name, age in rows]
