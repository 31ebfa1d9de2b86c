"""The settings ``user``, ``group`` and ``mail_file_mode``: values, flags, and one-line errors
naming the key and the file.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from postoffice.config import check_config, load_config
from postoffice.errors import ConfigError

TARGET = "nobody"
SHARED_GROUP = "mail"  # Debian's group for mail readers


def write(directory: Path, text: str) -> Path:
    path = directory / "postoffice.toml"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("text", "key", "fragment"),
    [
        ('mail_file_mode = "rwx"', "mail_file_mode", "'rwx' is not an octal mode"),
        ("mail_file_mode = 0o777", "mail_file_mode", "0o777 lets every user of this machine read the mail"),
        ('mail_file_mode = "0644"', "mail_file_mode", "0o644 lets every user"),
        ('mail_file_mode = "0700"', "mail_file_mode", "0o700 is not a mail file mode"),
        ("mail_file_mode = 660", "mail_file_mode", 'an octal mode is written 0o660 or "0660"'),
        ('mail_file_mode = "0400"', "mail_file_mode", "does not let the server read and write"),
        ("mail_file_mode = true", "mail_file_mode", "expected an octal mode"),
        ('user = "no-such-user-here"', "user", "no user 'no-such-user-here' on this machine"),
        ('user = "root"', "user", "'root' is root"),
        ("user = 65534", "user", "expected a string"),
        (f'user = "{TARGET}"\ngroup = "no-such-group-here"', "group", "no group 'no-such-group-here'"),
        (f'user = "{TARGET}"\ngroup = "root"', "group", "root's group"),
        ('group = "nogroup"', "group", "a group needs its user"),
        ('user = "no-such-user-here"\ngroup = "nogroup"', "user", "no user 'no-such-user-here'"),
    ],
)
def test_bad_values_are_one_line_naming_the_key_and_the_file(
    tmp_path: Path, text: str, key: str, fragment: str
) -> None:
    path = write(tmp_path, text + "\n")
    problems = check_config(path)
    assert len(problems) == 1, problems
    assert problems[0].startswith(f"{path}: {key}: ")
    assert fragment in problems[0]
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert (info.value.key, info.value.path) == (key, str(path))


def test_the_command_line_reports_a_bad_mode_in_one_line(tmp_path: Path) -> None:
    path = write(tmp_path, 'mail_file_mode = "rwx"\n')
    for command in (["check-config"], ["serve", "--data-dir", str(tmp_path / "data")]):
        result = subprocess.run(
            [sys.executable, "-m", "postoffice", *command, "--config", str(path)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 1
        lines = (result.stdout + result.stderr).splitlines()
        assert len(lines) == 1, lines
        assert f"{path}: mail_file_mode: 'rwx' is not an octal mode" in lines[0]
    assert not (tmp_path / "data").exists()


@pytest.mark.parametrize(
    ("value", "mode"), [('"0660"', 0o660), ("0o640", 0o640), ('"600"', 0o600), ('"0o660"', 0o660)]
)
def test_mode_spellings(tmp_path: Path, value: str, mode: int) -> None:
    assert load_config(write(tmp_path, f"mail_file_mode = {value}\n")).mail_file_mode == mode


def test_user_and_group_load_and_the_flags_replace_them(tmp_path: Path) -> None:
    assert load_config(None).mail_file_mode == 0o600
    assert (load_config(None).user, load_config(None).group) == (None, None)
    path = write(tmp_path, f'user = "{TARGET}"\ngroup = "{SHARED_GROUP}"\n')
    config = load_config(path)
    assert (config.user, config.group) == (TARGET, SHARED_GROUP)
    assert load_config(path, user="daemon", group="daemon").user == "daemon"
    with pytest.raises(ConfigError, match=r"^--user: no user 'no-such-user-here'"):
        load_config(path, user="no-such-user-here")
