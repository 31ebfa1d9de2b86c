"""The nodes of the cluster: each running node's name, when it started and when it was last
seen, for ``postoffice status`` and ``/metrics`` (what the cluster is made of)."""

SQL = """
CREATE TABLE nodes (
    name text PRIMARY KEY,
    version text NOT NULL,
    started timestamptz NOT NULL DEFAULT now(),
    seen timestamptz NOT NULL DEFAULT now()
);
"""
