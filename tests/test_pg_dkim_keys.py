"""A cluster's DKIM keys in a real, throwaway PostgreSQL: made once, every node signs with
them; a retired key stops signing everywhere."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from postoffice.errors import DkimError
from postoffice.mailauth import dkim_keys
from postoffice.mailauth.dkim_sign import sign
from postoffice.mailauth.dkim_signer import Signer
from postoffice.pg.database import Database
from postoffice.pg.migrate import migrate
from postoffice.pgstore.dkim_keys import PgKeys
from postoffice.pgstore.watch import SharedWatch

MESSAGE = b"From: a@local.test\r\nTo: b@else.test\r\nSubject: s\r\n\r\nbody\r\n"


@pytest.fixture
def database(pg_url: str) -> Iterator[Database]:
    database = Database(pg_url, pool_size=2)
    migrate(database)
    yield database
    database.close()


def test_a_key_made_once_signs_on_every_node(database: Database, pg_url: str) -> None:
    made = dkim_keys.generate(PgKeys(database), "Local.Test", "s1", "ed25519")
    assert made.path is None and made.location == "(in the database)"
    other = Database(pg_url, pool_size=1)
    watch = SharedWatch(other, interval=0.2)
    watch.start()
    try:
        # Node A asks the version each time; node C listens. Neither has a key file.
        node_a = Signer(PgKeys(database), ["local.test"])
        node_c = Signer(PgKeys(other, watch), ["local.test"])
        keys_a, keys_c = node_a.keys("local.test"), node_c.keys("local.test")
        assert [k.record() for k in keys_a] == [k.record() for k in keys_c] == [made.record()]
        # Ed25519 signatures are deterministic: the same key signs the same bytes alike.
        assert sign(MESSAGE, keys_a, now=1e9) == sign(MESSAGE, keys_c, now=1e9)
        signed = node_c.sign(MESSAGE, "local.test", what="test")
        assert signed is not None and signed.selectors == ("s1",)
        PgKeys(database).retire("local.test", "s1")
        assert node_a.keys("local.test") == []
        deadline = time.monotonic() + 1.0
        while node_c.keys("local.test") and time.monotonic() < deadline:
            time.sleep(0.02)
        assert node_c.keys("local.test") == []  # the listening node heard it within a second
        assert [key.signing for key in PgKeys(database).ring().keys] == [False]  # still listed
    finally:
        watch.stop()
        other.close()


def test_a_selector_is_made_once(database: Database) -> None:
    keys = PgKeys(database)
    dkim_keys.generate(keys, "local.test", "s1", "ed25519")
    with pytest.raises(DkimError, match="already has a key s1"):
        dkim_keys.generate(keys, "local.test", "s1", "rsa")
    with pytest.raises(DkimError, match="no key s9"):
        keys.retire("local.test", "s9")
    with pytest.raises(DkimError, match="not a valid domain"):
        dkim_keys.generate(keys, "../etc", "s2", "ed25519")


def test_a_row_that_is_not_a_key_is_skipped_with_a_line(database: Database) -> None:
    with database.connection() as conn:
        conn.execute(
            "INSERT INTO dkim_keys (domain, selector, private_key) VALUES ('local.test', 'bad', 'x')"
        )
    ring = PgKeys(database).ring()
    assert ring.keys == () and len(ring.problems) == 1 and "bad._domainkey.local.test" in ring.problems[0]
