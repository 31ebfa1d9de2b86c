"""``postoffice user|alias|dkim|dns`` against a cluster's database (``--database URL`` or the
configuration's ``[storage]``), run as an operator would, on a real, throwaway PostgreSQL."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from postoffice.accounts import Accounts
from postoffice.mailauth import dkim_keys
from postoffice.pg.database import Database
from postoffice.pgstore.accounts import PgAccounts


def postoffice(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "postoffice", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_users_and_aliases_on_the_command_line_are_the_clusters(pg_url: str, tmp_path: Path) -> None:
    node_b = ("--database", pg_url, "--data-dir", str(tmp_path / "b"))
    added = postoffice(
        "user", "add", "Alice@Example.com", "--password-stdin", "--admin", *node_b, stdin="s3cret\n"
    )
    assert added.returncode == 0, added.stderr
    assert "added user alice@example.com" in added.stdout
    assert not (tmp_path / "b" / "accounts.json").exists()  # nothing in node B's data directory
    assert postoffice("alias", "add", "sales@example.com", "alice@example.com", *node_b).returncode == 0
    # Node A, configured in its file, sees them: the user logs in there.
    config = tmp_path / "a.toml"
    config.write_text(
        f'data_dir = "{tmp_path / "a"}"\n[storage]\nbackend = "postgresql"\ndatabase = "{pg_url}"\n'
    )
    listed = postoffice("user", "list", "--config", str(config))
    assert listed.stdout.splitlines() == ["alice@example.com (admin)"], listed.stderr
    assert (
        postoffice("alias", "list", "--config", str(config)).stdout
        == "sales@example.com -> alice@example.com\n"
    )
    database = Database(pg_url, pool_size=1)
    try:
        assert Accounts(PgAccounts(database)).verify("alice@example.com", "s3cret")
    finally:
        database.close()
    again = postoffice(
        "user", "add", "alice@example.com", "--password-stdin", "--config", str(config), stdin="x\n"
    )
    assert (
        again.returncode == 1 and again.stderr.strip() == "postoffice: user alice@example.com already exists"
    )
    assert postoffice("alias", "del", "sales@example.com", "--config", str(config)).returncode == 0
    assert postoffice("user", "del", "alice@example.com", *node_b).returncode == 0
    assert postoffice("user", "list", "--config", str(config)).stdout == ""


def test_a_database_nobody_can_reach_is_one_line(tmp_path: Path) -> None:
    result = postoffice(
        "user",
        "list",
        "--database",
        "postgresql://po@127.0.0.1:1/x?connect_timeout=2",
        "--data-dir",
        str(tmp_path),
    )
    assert result.returncode == 1
    assert len(result.stderr.splitlines()) == 1 and "127.0.0.1:1/x" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_dkim_keys_made_on_one_node_are_printed_on_another(pg_url: str, tmp_path: Path) -> None:
    made = postoffice("dkim", "generate", "example.com", "--selector", "s1", "--database", pg_url)
    assert made.returncode == 0, made.stderr
    assert "(in the database)" in made.stdout
    zone_line = made.stdout.strip().splitlines()[-1]
    config = tmp_path / "c.toml"
    config.write_text(
        f'hostname = "mx.example.com"\ndomains = ["example.com"]\ndata_dir = "{tmp_path / "c"}"\n'
        f'[storage]\nbackend = "postgresql"\ndatabase = "{pg_url}"\n'
    )
    listed = postoffice("dkim", "list", "--config", str(config))
    assert listed.returncode == 0 and listed.stdout.startswith("example.com  s1  rsa-2048  signs"), listed
    records = postoffice("dns", "example.com", "--config", str(config))
    assert records.returncode == 0, records.stderr
    assert zone_line in records.stdout  # the DNS record printed from the database's key
    assert not (tmp_path / "c" / "dkim").exists()
    assert postoffice("dkim", "retire", "example.com", "s1", "--config", str(config)).returncode == 0
    assert "retired" in postoffice("dkim", "list", "--config", str(config)).stdout


def test_a_data_directorys_keys_are_imported_once(pg_url: str, tmp_path: Path) -> None:
    data = tmp_path / "old"
    signing = dkim_keys.generate(data, "example.com", "s1", "ed25519")
    dkim_keys.generate(data, "example.com", "s0", "ed25519")
    dkim_keys.retire(data, "example.com", "s0")
    imported = postoffice("dkim", "import", str(data), "--database", pg_url)
    assert imported.returncode == 0, imported.stderr
    assert "2 key(s) copied" in imported.stdout and imported.stderr == ""
    listed = postoffice("dkim", "list", "--records", "--database", pg_url).stdout.splitlines()
    assert [line.split()[:4] for line in listed[::2]] == [
        ["example.com", "s0", "ed25519-256", "retired"],
        ["example.com", "s1", "ed25519-256", "signs"],
    ]
    assert listed[3].strip() == signing.zone_line()  # the same key: the published record holds
    again = postoffice("dkim", "import", str(data), "--database", pg_url)
    assert again.returncode == 0 and "0 key(s) copied" in again.stdout
    assert again.stderr.count("has it already") == 2
