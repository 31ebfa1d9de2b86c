"""What the nodes share about people: users (argon2 hashes), aliases, DKIM keys, web sessions
and failed logins.

Users and aliases, and the DKIM keys, are read whole into each node's memory and read again
when ``shared_versions`` says they changed (a writer bumps the row in its transaction and
NOTIFYs ``postoffice_shared``): lookups at RCPT and AUTH never wait for the database. Web
sessions are keyed by the SHA-256 of the cookie's token, so the table alone lets nobody in.
``login_failures`` keeps the failed logins of the throttles' windows, so a node that starts
knows the recent ones; the running nodes hear of each as it happens (``postoffice_failures``).
"""

SQL = """
CREATE TABLE shared_versions (
    name text PRIMARY KEY,
    version bigint NOT NULL DEFAULT 0
);
INSERT INTO shared_versions (name) VALUES ('accounts'), ('dkim_keys');

CREATE TABLE account_users (
    address text PRIMARY KEY,
    password text NOT NULL,
    admin boolean NOT NULL DEFAULT false
);

CREATE TABLE account_aliases (
    alias text PRIMARY KEY,
    targets text[] NOT NULL
);

CREATE TABLE dkim_keys (
    domain text NOT NULL,
    selector text NOT NULL,
    private_key bytea NOT NULL,
    signing boolean NOT NULL DEFAULT true,
    created timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (domain, selector)
);

CREATE TABLE web_sessions (
    token_hash bytea PRIMARY KEY,
    address text NOT NULL,
    csrf_token text NOT NULL,
    created double precision NOT NULL,
    last_used double precision NOT NULL
);
CREATE INDEX web_sessions_last_used ON web_sessions (last_used);

CREATE TABLE login_failures (
    kind text NOT NULL,
    key text NOT NULL,
    at timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX login_failures_kind_at ON login_failures (kind, at);
"""
