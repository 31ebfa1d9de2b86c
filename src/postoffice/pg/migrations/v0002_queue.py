"""The shared queue (pgstore/queue.py): one row per accepted message with its envelope and its
holder, its content in 256 KiB ``bytea`` chunks, and its state log as appended batches.

A message's ``holder`` names the server process delivering it (its node name and a token of its
own; NULL: let go). Each holder has one lease row in ``queue_holders`` that it renews, so
renewing costs one row however many messages a node holds; others take a holder's messages
once its ``until`` has passed. Chunks are stored uncompressed (``STORAGE EXTERNAL``): most of a
message's octets are base64 attachments that pglz does not shrink, and compressing them costs
the nodes' CPU per message.
"""

SQL = """
CREATE TABLE queue_holders (
    holder text PRIMARY KEY,
    node text NOT NULL,
    lease interval NOT NULL,
    until timestamptz NOT NULL
);

CREATE TABLE queue_messages (
    queue_id text PRIMARY KEY,
    envelope text NOT NULL,
    size bigint NOT NULL,
    node text NOT NULL,
    accepted timestamptz NOT NULL DEFAULT now(),
    holder text
);
CREATE INDEX queue_messages_holder ON queue_messages (holder);

CREATE TABLE queue_chunks (
    queue_id text NOT NULL REFERENCES queue_messages ON DELETE CASCADE,
    seq integer NOT NULL,
    data bytea NOT NULL,
    PRIMARY KEY (queue_id, seq)
);
ALTER TABLE queue_chunks ALTER COLUMN data SET STORAGE EXTERNAL;

CREATE TABLE queue_states (
    queue_id text NOT NULL REFERENCES queue_messages ON DELETE CASCADE,
    seq bigserial,
    records bytea NOT NULL,
    PRIMARY KEY (queue_id, seq)
);
"""
