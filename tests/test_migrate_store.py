"""``postoffice migrate-store``: accounts, mailboxes and queue moved between stores without loss.

The corpus (tests/migration_corpus.py) goes from one embedded data directory to another and on
to a third, and, where the cluster's stores are built, into a PostgreSQL database and back; each
time every message's bytes (SHA-256), flags, keywords, folder and received time, every user's
password hash, the aliases, subscriptions, and each queued message's bytes, envelope and
delivery state are compared with the source's.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import tracemalloc
from pathlib import Path

import pytest
from conftest import ServerProcess, make_config
from migration_corpus import BIG, read_holdings, side_of, write_corpus

from postoffice.accounts import Accounts
from postoffice.cli import main
from postoffice.migration.run import migrate


def _migrate(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    status = main(["migrate-store", *args])
    out, err = capsys.readouterr()
    return status, out, err


def _mail_bytes(data_dir: Path) -> int:
    """The octets of every message file of a data directory's Maildirs."""
    return sum(p.stat().st_size for p in (data_dir / "mail").rglob("*") if p.parent.name in ("cur", "new"))


@pytest.fixture
def source(tmp_path: Path) -> Path:
    data_dir = tmp_path / "source"
    write_corpus(make_config(data_dir))
    return data_dir


def test_the_corpus_round_trips_through_two_more_data_directories(
    source: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    expected = read_holdings(make_config(source))
    status, out, err = _migrate(capsys, "--data-dir", str(source), "--to", str(tmp_path / "second"))
    assert (status, err) == (0, "")
    assert read_holdings(make_config(tmp_path / "second")) == expected
    lines = out.splitlines()
    assert lines[0] == f"migrating data directory {source} -> data directory {tmp_path / 'second'}"
    assert lines[1] == "  accounts: 3 users, 2 aliases"
    assert any(line.startswith("  mailbox alice@example.com: 5 folders, 7 messages") for line in lines)
    assert lines[-1] == (
        f"migrated 3 users, 2 aliases, 3 mailboxes, 7 folders, 9 messages ({_mail_bytes(source)} bytes),"
        " 2 queued; 0 already there"
    )
    # And back out again, as a database is exported: a third directory from the second.
    status, _, err = _migrate(capsys, "--data-dir", str(tmp_path / "second"), "--to", str(tmp_path / "third"))
    assert (status, err) == (0, "")
    assert read_holdings(make_config(tmp_path / "third")) == expected
    # The users log in with their passwords where they were moved to; the admin is one still.
    accounts = Accounts(tmp_path / "third" / "accounts.json")
    assert accounts.verify("jörg@example.com", "jörg's secret")
    assert [(user.address, user.admin) for user in accounts.users()][0] == ("alice@example.com", True)
