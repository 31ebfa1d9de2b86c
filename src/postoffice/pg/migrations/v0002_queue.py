"""The shared queue (pgstore/queue.py): one row per accepted message with its envelope and
lease, its content in 256 KiB ``bytea`` chunks, and its state log as appended batches.

``lease_holder`` names the server process delivering the message now (its node name and a token
of its own); ``lease_until`` is when others may take it over if that process stops renewing.
Chunks are stored uncompressed (``STORAGE EXTERNAL``): most of a message's octets are base64
attachments that pglz does not shrink, and compressing them costs the nodes' CPU per message.
"""

SQL = """
CREATE TABLE queue_messages (
    queue_id text PRIMARY KEY,
    envelope text NOT NULL,
    size bigint NOT NULL,
    node text NOT NULL,
    accepted timestamptz NOT NULL DEFAULT now(),
    lease_holder text,
    lease_until timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX queue_messages_lease_until ON queue_messages (lease_until);
CREATE INDEX queue_messages_lease_holder ON queue_messages (lease_holder);

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
