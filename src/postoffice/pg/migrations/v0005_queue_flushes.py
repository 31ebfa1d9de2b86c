"""One row per node that the queue's removal flush writes: a commit that writes something waits
for the WAL to reach the disk (synchronous_commit), and with it every removal committed before
without waiting (PgQueue.flush_removals)."""

SQL = """
CREATE TABLE queue_flushes (
    node text PRIMARY KEY,
    at timestamptz NOT NULL DEFAULT now()
);
"""
