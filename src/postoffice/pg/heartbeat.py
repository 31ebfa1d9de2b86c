"""A running node's heartbeat: its row in ``nodes`` written every few seconds, and the cluster
as seen at that moment (its nodes, its queue's size) kept for ``/api/v1/status`` and
``/metrics``, which then never wait on the database.

Untrusted input seen here: none (rows written by postoffice nodes).

A beat that fails (the database is down or restarting) is one log line when the failure starts
and one when it ends; meanwhile :attr:`Heartbeat.reachable` is False, which ``/readyz`` reports
(503), and the node's other parts answer what their own database calls answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from datetime import UTC, datetime

from postoffice.pg.database import Database, one_line
from postoffice.pg.nodes import (
    HEARTBEAT,
    QUEUE_EXISTS,
    SELECT,
    UPSERT,
    ClusterView,
    queue_count_sql,
    rows,
)

log = logging.getLogger("postoffice")


class Heartbeat:
    """Writes node ``name``'s row every ``interval`` seconds; :attr:`view` is the latest look."""

    def __init__(
        self,
        database: Database,
        name: str,
        version: str,
        *,
        interval: float = HEARTBEAT,
        on_reachable: Callable[[], None] | None = None,
    ) -> None:
        """``on_reachable`` is called when the database answers again after failing (the node
        retries what it deferred for want of it, rather than after the retry delay)."""
        self.database = database
        self.on_reachable = on_reachable
        self.name = name
        self.version = version
        self.interval = interval
        self.started = datetime.now(UTC)
        self.view: ClusterView | None = None
        self.reachable = False
        self._failure: str | None = None
        self._first = True
        self._shared = False  # said once
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Write the row once (so the node is listed as soon as it serves), then keep beating."""
        await self.beat()
        self._task = asyncio.create_task(self._run(), name="postoffice-heartbeat")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            await self.beat()

    async def beat(self) -> None:
        """One write and one look; a failure is logged (once) and marks the database unreachable."""
        try:
            async with asyncio.timeout(max(self.interval, 2.0)):
                self.view = await self._write_and_look()
        except Exception as error:  # the boundary of a background task: one line, never a traceback
            self._failed(one_line(error) if not isinstance(error, TimeoutError) else "no answer in time")
            return
        if self._failure is not None:
            log.info("event=database-reachable node=%s", self.name)
            if self.on_reachable is not None:
                self.on_reachable()
        self._failure = None
        self.reachable = True

    async def _write_and_look(self) -> ClusterView:
        async with self.database.aconnection() as connection:
            params = {"name": self.name, "version": self.version, "started": self.started}
            before = await (await connection.execute(UPSERT, params)).fetchone()
            self._check_owner(before[0] if before else None)
            found = await (await connection.execute(SELECT)).fetchall()
            exists = await (await connection.execute(QUEUE_EXISTS)).fetchone()
            queue = None
            sql = queue_count_sql(bool(exists and exists[0]))
            if sql is not None:
                counted = await (await connection.execute(sql.encode())).fetchone()
                queue = int(counted[0]) if counted else 0
        return ClusterView(self.name, rows(found), queue)

    def _check_owner(self, started: datetime | None) -> None:
        """Two nodes under one name share one row (and one set of queue leases): after the
        first beat, a row written with another start time than ours was written by the other."""
        first, self._first = self._first, False
        if first or started is None or started == self.started or self._shared:
            return
        self._shared = True
        log.warning(
            "event=node-name-in-use node=%s reason=%r",
            self.name,
            "another running node has this name: give each node its own [storage] node_name",
        )

    def _failed(self, reason: str) -> None:
        self.reachable = False
        if self._failure is None:
            log.warning("event=database-unreachable node=%s error=%r", self.name, reason)
        self._failure = reason
