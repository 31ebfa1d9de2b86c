"""The command line for users, aliases and check-config, run as a person would run it."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest

from postoffice import __version__, cli
from postoffice.accounts import Accounts
from postoffice.cli import users
from postoffice.config import Config, Listener

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "postoffice.toml"

try:
    import postoffice.delivery.local  # noqa: F401  (only: is it there yet?)

    HAVE_MAILDIR = True
except ImportError:
    HAVE_MAILDIR = False
needs_maildir = pytest.mark.skipif(not HAVE_MAILDIR, reason="postoffice.delivery.local is not there yet")


def run(tmp_path: Path, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    # XDG_DATA_HOME points into tmp_path so that nothing can reach the real default data dir.
    env = {**os.environ, "XDG_DATA_HOME": str(tmp_path / "xdg")}
    return subprocess.run(
        [sys.executable, "-m", "postoffice", *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


def assert_one_error_line(result: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert result.returncode == 1, result
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("postoffice: ")
    for fragment in fragments:
        assert fragment in lines[0]
    assert "Traceback" not in result.stderr


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


# -- users ---------------------------------------------------------------------------------


@needs_maildir
def test_user_add_from_stdin_creates_user_and_maildir(tmp_path: Path, data_dir: Path) -> None:
    result = run(
        tmp_path, "user", "add", "Alice@Example.com", "--password-stdin", "--data-dir", str(data_dir),
        stdin=" pass word \n",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "alice@example.com" in result.stdout
    accounts = Accounts(data_dir / "accounts.json")
    assert accounts.verify("alice@example.com", " pass word ")  # only the newline is stripped
    maildir = data_dir / "mail" / "example.com" / "alice"
    assert all((maildir / sub).is_dir() for sub in ("new", "cur", "tmp"))

    listing = run(tmp_path, "user", "list", "--data-dir", str(data_dir))
    assert listing.returncode == 0
    assert listing.stdout.splitlines() == ["alice@example.com"]


@needs_maildir
def test_user_add_from_password_file_as_admin(tmp_path: Path, data_dir: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text("from-a-file\r\nsecond line ignored\n", encoding="utf-8")
    result = run(
        tmp_path, "user", "add", "root@example.com", "--password-file", str(secret), "--admin",
        "--data-dir", str(data_dir),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    accounts = Accounts(data_dir / "accounts.json")
    assert accounts.verify("root@example.com", "from-a-file")
    assert run(tmp_path, "user", "list", "--data-dir", str(data_dir)).stdout == "root@example.com (admin)\n"


def test_user_list_and_del(tmp_path: Path, data_dir: Path) -> None:
    accounts = Accounts(data_dir / "accounts.json")
    accounts.add_user("bob@example.com", "pw")
    accounts.add_user("amy@example.com", "pw", admin=True)
    listing = run(tmp_path, "user", "list", "--data-dir", str(data_dir))
    assert listing.returncode == 0
    assert listing.stdout.splitlines() == ["amy@example.com (admin)", "bob@example.com"]

    deleted = run(tmp_path, "user", "del", "BOB@example.com", "--data-dir", str(data_dir))
    assert deleted.returncode == 0, deleted.stderr
    assert [u.address for u in accounts.users()] == ["amy@example.com"]

    again = run(tmp_path, "user", "del", "bob@example.com", "--data-dir", str(data_dir))
    assert_one_error_line(again, "no user bob@example.com")


def test_duplicate_user_add_is_one_line_and_exit_1(tmp_path: Path, data_dir: Path) -> None:
    Accounts(data_dir / "accounts.json").add_user("alice@example.com", "first")
    result = run(
        tmp_path, "user", "add", "alice@example.com", "--password-stdin", "--data-dir", str(data_dir),
        stdin="second\n",
    )  # fmt: skip
    assert_one_error_line(result, "alice@example.com already exists")
    assert Accounts(data_dir / "accounts.json").verify("alice@example.com", "first")


def test_invalid_address_and_empty_password(tmp_path: Path, data_dir: Path) -> None:
    bad = run(
        tmp_path, "user", "add", "no-domain", "--password-stdin", "--data-dir", str(data_dir), stdin="x\n"
    )
    assert_one_error_line(bad, "local@domain")
    empty = run(
        tmp_path, "user", "add", "a@example.com", "--password-stdin", "--data-dir", str(data_dir), stdin="\n"
    )
    assert_one_error_line(empty, "password is empty")
    assert not (data_dir / "accounts.json").exists()


def test_missing_password_file_is_one_line(tmp_path: Path, data_dir: Path) -> None:
    missing = tmp_path / "nope"
    result = run(
        tmp_path, "user", "add", "a@example.com", "--password-file", str(missing), "--data-dir", str(data_dir)
    )
    assert_one_error_line(result, str(missing), "No such file")


def test_password_source_is_required(tmp_path: Path, data_dir: Path) -> None:
    result = run(tmp_path, "user", "add", "a@example.com", "--data-dir", str(data_dir))
    assert result.returncode == 2
    assert "--password-stdin" in result.stderr


def test_data_dir_comes_from_the_config_file(tmp_path: Path) -> None:
    config = tmp_path / "po.toml"
    config.write_text('data_dir = "from-config"\n', encoding="utf-8")
    Accounts(tmp_path / "from-config" / "accounts.json").add_user("cfg@example.com", "pw")
    result = run(tmp_path, "user", "list", "--config", str(config))
    assert result.stdout.splitlines() == ["cfg@example.com"]


# -- aliases -------------------------------------------------------------------------------


def test_alias_add_list_del(tmp_path: Path, data_dir: Path) -> None:
    added = run(
        tmp_path, "alias", "add", "Sales@Example.com", "alice@example.com", "bob@elsewhere.test",
        "--data-dir", str(data_dir),
    )  # fmt: skip
    assert added.returncode == 0, added.stderr
    listing = run(tmp_path, "alias", "list", "--data-dir", str(data_dir))
    assert listing.stdout.splitlines() == ["sales@example.com -> alice@example.com, bob@elsewhere.test"]
    assert Accounts(data_dir / "accounts.json").resolve("sales@example.com") == [
        "alice@example.com",
        "bob@elsewhere.test",
    ]
    deleted = run(tmp_path, "alias", "del", "sales@example.com", "--data-dir", str(data_dir))
    assert deleted.returncode == 0
    assert run(tmp_path, "alias", "list", "--data-dir", str(data_dir)).stdout == ""
    assert_one_error_line(run(tmp_path, "alias", "del", "sales@example.com", "--data-dir", str(data_dir)))


# -- configuration -------------------------------------------------------------------------


def test_broken_config_is_one_line_naming_file_and_key(tmp_path: Path) -> None:
    config = tmp_path / "broken.toml"
    config.write_text("[limits]\nrecipients = 10\n", encoding="utf-8")
    result = run(tmp_path, "user", "list", "--config", str(config))
    assert_one_error_line(result, str(config), "limits.recipients", "§4.5.3.1.8")


def test_missing_config_file_is_one_line(tmp_path: Path) -> None:
    result = run(tmp_path, "alias", "list", "--config", str(tmp_path / "absent.toml"))
    assert_one_error_line(result, "absent.toml", "no such file")


def test_check_config_of_the_example(tmp_path: Path) -> None:
    result = run(tmp_path, "check-config", "--config", str(EXAMPLE))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"{EXAMPLE}: ok"
    assert "  mode: MTA for example.com, example.org" in lines
    assert (
        "  listeners: smtp 127.0.0.1:2525, smtp [::1]:2525, submission 127.0.0.1:2587, smtps 127.0.0.1:2465"
        in lines
    )
    assert "  tls certificate: /etc/postoffice/tls/fullchain.pem" in lines
    assert "  data dir: /var/lib/postoffice" in lines


def test_check_config_lists_every_problem(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text('hostnme = "x"\n[limits]\ncommand_line = 100\ntext_line = 5\n', encoding="utf-8")
    result = run(tmp_path, "check-config", "--config", str(config))
    assert result.returncode == 1
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 3
    assert all(line.startswith(f"{config}: ") for line in lines)
    assert "did you mean 'hostname'?" in lines[0]


# -- in-process: flags and failure modes ---------------------------------------------------


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"postoffice {__version__}"


def test_no_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main([]) == 2
    assert "usage:" in capsys.readouterr().err


def test_bad_smtp_flag_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["serve", "--smtp", "::1:25"]) == 2
    assert "brackets" in capsys.readouterr().err


def test_check_config_without_a_file_checks_the_defaults(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    assert cli.main(["check-config"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("(built-in defaults): ok")
    assert "mode: capture" in out


def test_keyboard_interrupt_exits_130_quietly(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    def interrupted(args: argparse.Namespace) -> int:
        raise KeyboardInterrupt

    monkeypatch.setattr(users, "_run_user_list", interrupted)
    assert cli.main(["user", "list", "--data-dir", str(tmp_path)]) == 130
    assert capsys.readouterr().err == ""


def test_os_error_is_one_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("", encoding="utf-8")
    # The data dir cannot be created under a regular file.
    code = cli.main(["alias", "add", "a@example.com", "b@example.com", "--data-dir", str(blocker / "data")])
    assert code == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith(f"postoffice: {blocker / 'data'}: ")


def test_terminal_password_is_asked_twice(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    answers = iter(["one", "two"])
    monkeypatch.setattr(sys.stdin, "isatty", lambda: True)
    monkeypatch.setattr("getpass.getpass", lambda prompt: next(answers))
    code = cli.main(["user", "add", "a@example.com", "--password-stdin", "--data-dir", str(tmp_path)])
    assert code == 1
    assert capsys.readouterr().err == "postoffice: the passwords do not match\n"
    assert Accounts(tmp_path / "accounts.json").users() == []


def test_serve_builds_the_config_from_file_and_flags(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    process = pytest.importorskip("postoffice.runtime.process", exc_type=ImportError)
    seen: list[Config] = []

    def fake_serve(config: Config, **options: object) -> int:
        seen.append(config)
        return 7

    monkeypatch.setattr(process, "serve", fake_serve)
    code = cli.main(
        ["serve", "--config", str(EXAMPLE), "--data-dir", str(tmp_path), "--smtp", "[::1]:0",
         "--smtp", "localhost:2526", "--hostname", "mx.test.example", "--domain", "Test.Example"]
    )  # fmt: skip
    assert code == 7
    (config,) = seen
    # --smtp replaces the file's smtp listeners; its submission and smtps listeners stay.
    assert config.listeners == (
        Listener("smtp", "::1", 0),
        Listener("smtp", "localhost", 2526),
        Listener("submission", "127.0.0.1", 2587),
        Listener("smtps", "127.0.0.1", 2465),
    )
    assert config.data_dir == tmp_path
    assert config.hostname == "mx.test.example"
    assert config.domains == ("test.example",)
    assert config.postmaster == "admin@example.com"  # from the file
