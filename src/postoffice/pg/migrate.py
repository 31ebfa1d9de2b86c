"""The schema's versions: applied in order, once, by whichever node (or ``postoffice db
migrate``) gets there first.

Untrusted input seen here: what the database says is applied (a newer schema than this
postoffice knows is refused, not guessed at).

Every version is applied in one transaction with the ones before it, under a transaction-level
advisory lock (``pg_advisory_xact_lock``): two nodes starting at once do not both migrate, the
second waits for the first's commit, then finds nothing left to do; a failed version leaves the
schema as it was. ``postoffice_schema`` records what is applied.
"""

from __future__ import annotations

import importlib
import pkgutil
import re
from dataclasses import dataclass
from datetime import datetime

from postoffice.errors import DatabaseError
from postoffice.pg import migrations as _migrations
from postoffice.pg.database import Database, one_line

# The advisory lock every migration takes: an arbitrary constant, the same in every node.
LOCK_KEY = 0x706F_7374_6F66  # "postof"

_MODULE = re.compile(r"v(\d{4})_(\w+)")


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str


@dataclass(frozen=True, slots=True)
class Applied:
    version: int
    name: str
    at: datetime


@dataclass(frozen=True, slots=True)
class SchemaStatus:
    applied: list[Applied]
    pending: list[Migration]

    @property
    def version(self) -> int:
        return max((a.version for a in self.applied), default=0)


def known() -> list[Migration]:
    """Every version this postoffice has, in order."""
    found = []
    for module in pkgutil.iter_modules(_migrations.__path__):
        match = _MODULE.fullmatch(module.name)
        if match is None:
            continue
        loaded = importlib.import_module(f"{_migrations.__name__}.{module.name}")
        found.append(Migration(int(match[1]), match[2], loaded.SQL))
    found.sort(key=lambda m: m.version)
    return found


_CREATE = """
CREATE TABLE IF NOT EXISTS postoffice_schema (
    version integer PRIMARY KEY,
    name text NOT NULL,
    applied timestamptz NOT NULL DEFAULT now()
)
"""


def migrate(database: Database) -> list[Migration]:
    """Apply what is not applied yet; the versions applied now (none: already current)."""
    versions = known()
    with database.connection() as connection, connection.transaction():
        connection.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK_KEY,))
        connection.execute(_CREATE)
        done = {row[0] for row in connection.execute("SELECT version FROM postoffice_schema")}
        _refuse_newer(database, done, versions)
        pending = [m for m in versions if m.version not in done]
        for migration in pending:
            try:
                connection.execute(migration.sql.encode())
            except Exception as error:
                raise DatabaseError(
                    f"database {database.where}: schema version {migration.version}"
                    f" ({migration.name}) failed: {one_line(error)}",
                    permanent=True,
                ) from None
            connection.execute(
                "INSERT INTO postoffice_schema (version, name) VALUES (%s, %s)",
                (migration.version, migration.name),
            )
    return pending


def status(database: Database) -> SchemaStatus:
    """What is applied (when) and what this postoffice would apply."""
    with database.connection() as connection:
        exists = connection.execute("SELECT to_regclass('postoffice_schema') IS NOT NULL").fetchone()
        rows = []
        if exists and exists[0]:
            rows = connection.execute(
                "SELECT version, name, applied FROM postoffice_schema ORDER BY version"
            ).fetchall()
    applied = [Applied(version, name, at) for version, name, at in rows]
    done = {a.version for a in applied}
    return SchemaStatus(applied, [m for m in known() if m.version not in done])


def _refuse_newer(database: Database, done: set[int], versions: list[Migration]) -> None:
    newest = max((m.version for m in versions), default=0)
    if done and max(done) > newest:
        raise DatabaseError(
            f"database {database.where} has schema version {max(done)}, newer than this postoffice's"
            f" {newest}: upgrade postoffice on this node",
            permanent=True,
        )
