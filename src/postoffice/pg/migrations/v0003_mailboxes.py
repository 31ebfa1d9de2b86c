"""The mailboxes (:mod:`postoffice.pgstore.mailboxes`): one row per mailbox (its canonical
address and IMAP subscriptions), per folder (its UIDVALIDITY, next UID, highest mod-sequence
and keywords, RFC 9051 §2.3.1.1, RFC 7162) and per message (its key, UID, flags and summary);
message bodies in ``mail_chunks``, 256 KiB of ``bytea`` a row, so none is ever read or written
whole. A message owns its body (a copy copies the chunks, server-side): the trigger drops the
chunks with the message, whichever way it goes (expunged, or its folder or mailbox removed)."""

SQL = """
CREATE TABLE mailboxes (
    id bigserial PRIMARY KEY,
    address text NOT NULL UNIQUE,
    subscriptions text[]
);

CREATE TABLE mail_folders (
    id bigserial PRIMARY KEY,
    mailbox_id bigint NOT NULL REFERENCES mailboxes (id) ON DELETE CASCADE,
    name text NOT NULL,
    uidvalidity bigint NOT NULL,
    uidnext bigint NOT NULL DEFAULT 1,
    highestmodseq bigint NOT NULL DEFAULT 1,
    keywords text[] NOT NULL DEFAULT '{}',
    UNIQUE (mailbox_id, name)
);

CREATE SEQUENCE mail_bodies;

-- UIDVALIDITY (RFC 9051 §2.3.1.1): never the same twice for a folder's name, so it counts on
-- from the time the schema was made.
CREATE SEQUENCE mail_uidvalidity;
SELECT setval('mail_uidvalidity', extract(epoch FROM now())::bigint);

CREATE TABLE mail_chunks (
    body bigint NOT NULL,
    seq integer NOT NULL,
    data bytea NOT NULL,
    PRIMARY KEY (body, seq)
);

CREATE TABLE mail_messages (
    id bigserial PRIMARY KEY,
    mailbox_id bigint NOT NULL REFERENCES mailboxes (id) ON DELETE CASCADE,
    folder_id bigint NOT NULL REFERENCES mail_folders (id) ON DELETE CASCADE,
    key text NOT NULL,
    uid bigint NOT NULL,
    modseq bigint NOT NULL,
    flags text NOT NULL DEFAULT '',
    fresh boolean NOT NULL DEFAULT true,
    received double precision NOT NULL,
    size bigint NOT NULL,
    body bigint NOT NULL,
    UNIQUE (mailbox_id, key),
    UNIQUE (folder_id, uid)
);

CREATE FUNCTION mail_drop_body() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM mail_chunks WHERE body = OLD.body;
    RETURN NULL;
END
$$;

CREATE TRIGGER mail_messages_drop_body AFTER DELETE ON mail_messages
    FOR EACH ROW EXECUTE FUNCTION mail_drop_body();
"""
