"""Benchmark a cluster: one, two and three postoffice nodes sharing one PostgreSQL, beside the
embedded default, and what one message costs in the database.

    python bench/cluster.py                 # W1a, W1b, W2; embedded, 1, 2 and 3 nodes
    python bench/cluster.py --quick         # smaller workloads (a minute or two)
    python bench/cluster.py --nodes 1,3 --workloads W1a --messages 2000

The database is a throwaway PostgreSQL made here (tests/pg_server.py: ``initdb`` in a temporary
directory, as the ``postgres`` user when run as root), with ``fsync`` and
``synchronous_commit`` at their durable defaults and ``pg_stat_statements`` loaded. Each
measurement gets a new database and new nodes (``postoffice serve --database URL``, capture
mode, a data directory each); the load (bench/load.py: smtp-source, or the asyncio client) is
split evenly over the nodes' SMTP ports and runs against all of them at once.

Per message, from the statistics views (deltas over the run, read after the nodes stopped so
their backends have reported everything): statements (``pg_stat_statements`` calls),
transactions committed (``pg_stat_database.xact_commit``), WAL records and bytes and WAL
flushes (``pg_stat_wal``: ``wal_records``, ``wal_bytes``, ``wal_sync``). The nodes' heartbeats
(a few statements every 5 s per node) are in these figures, and are noise beside the load.
"""

from __future__ import annotations

import argparse
import importlib.util
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path

import load
import procstat
import run
import servers
from load import Workload

sys.path[:0] = [str(servers.SOURCES), str(servers.REPO / "tests")]

from pg_server import PostgresServer, postgres_bin  # noqa: E402  (tests/, put on the path above)

# What a cluster node runs on (issue 21); until all exist a node cannot start.
CLUSTER_STORES = ("postoffice.pgstore.queue", "postoffice.pgstore.mailboxes", "postoffice.pgstore.accounts")
WORKLOADS = ("W1a", "W1b", "W2")
NODE_CONFIG = """\
hostname = "postoffice.bench.test"
data_dir = "{data_dir}"

[listen]
smtp = ["127.0.0.1:0"]
http = ["127.0.0.1:0"]

[storage]
backend = "postgresql"
database = "{url}"
node_name = "{name}"
"""


@dataclass
class Cost:
    """What one message cost the database, on average."""

    statements: float | None
    commits: float
    wal_records: float
    wal_kib: float
    wal_flushes: float


@dataclass
class Row:
    workload: str
    setup: str
    msgs_per_s: float = 0.0
    stored_msgs_per_s: float | None = None
    cpu_ms_per_msg: float = 0.0  # the nodes' and PostgreSQL's CPU time per message
    cost: Cost | None = None
    error: str | None = None


def missing_stores() -> list[str]:
    return [name for name in CLUSTER_STORES if importlib.util.find_spec(name) is None]


# --- the database -------------------------------------------------------------------------------


def start_postgres() -> PostgresServer:
    """A throwaway cluster with pg_stat_statements loaded (a restart after ALTER SYSTEM)."""
    import psycopg

    bindir = postgres_bin()
    if bindir is None:
        raise SystemExit("bench/cluster.py: PostgreSQL is not installed (apt-get install postgresql)")
    server = PostgresServer(bindir)
    server.start()
    with psycopg.connect(server.url(), autocommit=True) as connection:
        connection.execute("ALTER SYSTEM SET shared_preload_libraries = 'pg_stat_statements'")
    server.restart()
    with psycopg.connect(server.url(), autocommit=True) as connection:
        # The view, in the database the counters are read from, shows every database's statements.
        connection.execute("CREATE EXTENSION pg_stat_statements")
    return server


_COUNTERS = """
SELECT
  (SELECT xact_commit FROM pg_stat_database WHERE datname = %(db)s),
  (SELECT coalesce(sum(calls), 0) FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid
    WHERE d.datname = %(db)s),
  w.wal_records, w.wal_bytes, w.wal_sync
FROM pg_stat_wal w
"""


def counters(server: PostgresServer, database: str) -> tuple[float, ...]:
    import psycopg

    with psycopg.connect(server.url(), autocommit=True) as connection:
        row = connection.execute(_COUNTERS, {"db": database}).fetchone()
    assert row is not None
    return tuple(float(value or 0) for value in row)


def new_database(server: PostgresServer) -> str:
    return server.create_database()


def postmaster_pid(server: PostgresServer) -> int:
    return int((server.data / "postmaster.pid").read_text().split()[0])


# --- the nodes ----------------------------------------------------------------------------------


def start_nodes(count: int, url: str, workdir: Path) -> list[servers.RunningServer]:
    """``count`` nodes on ``url``, started together; each listening when this returns."""
    started: list[tuple[str, subprocess.Popen[bytes], Path]] = []
    for index in range(count):
        name = f"node-{chr(ord('a') + index)}"
        node_dir = workdir / name
        node_dir.mkdir(parents=True)
        config = node_dir / "postoffice.toml"
        config.write_text(NODE_CONFIG.format(data_dir=node_dir / "data", url=url, name=name))
        log = (node_dir / "postoffice.log").open("wb")
        # One process a node: on two cores the nodes and PostgreSQL already share them, and the
        # figures stay comparable with the embedded server's one process.
        command = [sys.executable, "-m", "postoffice", "serve", "--config", str(config), "--workers", "1"]
        env = {**servers.os.environ, "PYTHONPATH": str(servers.SOURCES)}
        started.append(
            (name, subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log, env=env), node_dir)
        )
        log.close()
    nodes = []
    for name, process, node_dir in started:
        try:
            port = servers._read_port(process, "listening smtp ", timeout=60)
        except RuntimeError:
            lines = (node_dir / "postoffice.log").read_text(errors="replace").strip().splitlines()
            for _, other, _ in started:
                other.kill()
            raise RuntimeError(f"node {name} did not start: {lines[-1] if lines else 'no output'}") from None
        servers._drain(process)
        nodes.append(servers.RunningServer(name, process, port, node_dir, None))
    return nodes


def split_load(workload: Workload, ports: list[int], asyncio_load: bool) -> float:
    """``workload`` spread evenly over ``ports`` at once; the seconds until all were accepted."""
    shares = [
        replace(
            workload,
            messages=workload.messages // len(ports) + (index < workload.messages % len(ports)),
            sessions=max(1, workload.sessions // len(ports)),
        )
        for index in range(len(ports))
    ]
    errors: list[BaseException] = []

    def send(share: Workload, port: int) -> None:
        try:
            load.run_load(share, port, servers.RECIPIENT, prefer_smtp_source=not asyncio_load)
        except BaseException as error:  # reported below, for the table
            errors.append(error)

    threads = [threading.Thread(target=send, args=pair) for pair in zip(shares, ports, strict=True)]
    began = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise load.LoadError(str(errors[0]))
    return time.perf_counter() - began


def wait_queue_empty(url: str, stall: float = 30.0) -> float | None:
    """Seconds until the shared queue is empty; None when the schema has no queue to watch, or
    when it stops shrinking for ``stall`` seconds (deliveries failing: said on stderr)."""
    import psycopg

    from postoffice.pg.nodes import queue_size

    began = progress = time.perf_counter()
    last: int | None = None
    with psycopg.connect(url, autocommit=True) as connection:
        while True:
            left = queue_size(connection)
            if left is None:
                return None
            if left == 0:
                return time.perf_counter() - began
            if last is None or left < last:
                last, progress = left, time.perf_counter()
            elif time.perf_counter() - progress > stall:
                print(
                    f"  the shared queue kept {left} messages for {stall:.0f} s: not delivered",
                    file=sys.stderr,
                )
                return None
            time.sleep(0.05)


def measure_cluster(
    server: PostgresServer, count: int, workload: Workload, args: argparse.Namespace, root: Path
) -> Row:
    setup = f"{count} node" + ("s" if count > 1 else "")
    name = new_database(server)
    url = server.url(name)
    nodes = start_nodes(count, url, root / f"{workload.name}-{count}")
    try:
        time.sleep(0.5)  # start-up (migrations, first heartbeats) settles before the baseline
        before = counters(server, name)
        pids = [node.pid for node in nodes] + [postmaster_pid(server)]
        cpu_before = sum(procstat.cpu_seconds(pid) for pid in pids)
        seconds = split_load(workload, [node.port for node in nodes], args.asyncio_load)
        drained = wait_queue_empty(url)
        cpu = sum(procstat.cpu_seconds(pid) for pid in pids) - cpu_before
    finally:
        for node in nodes:
            node.stop()  # its backends report their statistics as they exit
    after = counters(server, name)
    n = workload.messages
    delta = [b - a for a, b in zip(before, after, strict=True)]
    cost = Cost(
        delta[1] / n if delta[1] else None, delta[0] / n, delta[2] / n, delta[3] / 1024 / n, delta[4] / n
    )
    stored = None if drained is None else n / max(seconds, seconds + drained)
    return Row(workload.name, setup, n / seconds, stored, cpu * 1000 / n, cost)


def measure_embedded(workload: Workload, args: argparse.Namespace, root: Path) -> Row:
    options = argparse.Namespace(workloads_table={workload.name: workload}, asyncio_load=args.asyncio_load)
    sample = run.measure("postoffice-w1", workload.name, options, root / f"{workload.name}-embedded")
    return Row(workload.name, "embedded", sample.msgs_per_s, sample.stored_msgs_per_s, sample.cpu_ms_per_msg)


# --- the table ----------------------------------------------------------------------------------


def _figure(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def render(rows: list[Row]) -> str:
    head = (
        f"{'workload':8} {'setup':9} {'msg/s':>7} {'stored/s':>8} {'cpu ms/msg':>10}"
        f" {'stmts/msg':>9} {'commits/msg':>11} {'WAL rec/msg':>11} {'WAL KiB/msg':>11} {'flushes/msg':>11}"
    )
    lines = [head, "-" * len(head)]
    for row in rows:
        if row.error is not None:
            lines.append(f"{row.workload:8} {row.setup:9} failed: {row.error}")
            continue
        cost = row.cost
        lines.append(
            f"{row.workload:8} {row.setup:9} {row.msgs_per_s:7.0f} {_figure(row.stored_msgs_per_s, 0):>8}"
            f" {row.cpu_ms_per_msg:10.2f}"
            + (
                f" {_figure(cost.statements):>9} {cost.commits:11.2f} {cost.wal_records:11.1f}"
                f" {cost.wal_kib:11.2f} {cost.wal_flushes:11.2f}"
                if cost is not None
                else ""
            )
        )
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Benchmark postoffice nodes sharing one PostgreSQL.")
    parser.add_argument("--quick", action="store_true", help="smaller workloads")
    parser.add_argument("--nodes", default="1,2,3", help="comma-separated node counts (default 1,2,3)")
    parser.add_argument("--workloads", default=",".join(WORKLOADS), help="comma-separated, from W1a,W1b,W2")
    parser.add_argument("--messages", type=int, help="messages per workload")
    parser.add_argument("--runs", type=int, default=1, help="runs; the table shows medians of msg/s")
    parser.add_argument("--no-embedded", action="store_true", help="leave out the embedded default's row")
    parser.add_argument(
        "--asyncio-load", action="store_true", help="the asyncio client even if smtp-source exists"
    )
    args = parser.parse_args(argv)
    table = run.QUICK if args.quick else run.FULL
    args.workload_list = [name.strip() for name in args.workloads.split(",") if name.strip()]
    for name in args.workload_list:
        if name not in WORKLOADS:
            parser.error(f"unknown workload {name!r} (W1a, W1b or W2)")
    args.table = {
        name: replace(table[name], messages=args.messages or table[name].messages) for name in WORKLOADS
    }
    try:
        args.node_counts = [int(count) for count in args.nodes.split(",")]
    except ValueError:
        parser.error(f"--nodes: not a list of numbers: {args.nodes!r}")
    return args


def _median(rows: list[Row]) -> Row:
    good = [row for row in rows if row.error is None]
    if not good:
        return rows[0]
    middle = sorted(good, key=lambda row: row.msgs_per_s)[len(good) // 2]
    return replace(middle, msgs_per_s=statistics.median(row.msgs_per_s for row in good))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # A SIGTERM (a timeout) still stops the nodes and removes the throwaway PostgreSQL.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    missing = missing_stores()
    if missing:
        print(
            f"bench/cluster.py: a cluster node cannot start yet: {', '.join(missing)} not built (issue 21)",
            file=sys.stderr,
        )
        return 1
    root = Path(tempfile.mkdtemp(prefix="postoffice-cluster-bench-"))
    server = start_postgres()
    rows: list[Row] = []
    try:
        for workload_name in args.workload_list:
            workload = args.table[workload_name]
            setups: list[int] = ([] if args.no_embedded else [0]) + args.node_counts
            for count in setups:
                samples = []
                for number in range(args.runs):
                    where = root / f"run{number}"
                    try:
                        if count == 0:
                            samples.append(measure_embedded(workload, args, where))
                        else:
                            samples.append(measure_cluster(server, count, workload, args, where))
                    except (load.LoadError, RuntimeError, OSError) as error:
                        samples.append(Row(workload_name, f"{count} nodes", error=str(error)[:200]))
                rows.append(_median(samples))
                print(
                    f"  {workload_name} {rows[-1].setup}: {rows[-1].error or f'{rows[-1].msgs_per_s:.0f} msg/s'}",
                    file=sys.stderr,
                    flush=True,
                )
    finally:
        server.remove()
        shutil.rmtree(root, ignore_errors=True)
    print(render(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
