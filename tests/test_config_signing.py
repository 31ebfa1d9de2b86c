"""``[authentication] sign``: DKIM signing of mail that leaves, on unless turned off."""

from __future__ import annotations

from pathlib import Path

import pytest

from postoffice.config import load_config
from postoffice.errors import ConfigError


def test_signing_is_on_by_default(tmp_path: Path) -> None:
    path = tmp_path / "postoffice.toml"
    path.write_text(f'data_dir = "{tmp_path}"\n', encoding="utf-8")
    assert load_config(path).authentication.sign is True


def test_sign_false_turns_it_off(tmp_path: Path) -> None:
    path = tmp_path / "postoffice.toml"
    path.write_text(f'data_dir = "{tmp_path}"\n[authentication]\nsign = false\n', encoding="utf-8")
    assert load_config(path).authentication.sign is False


def test_sign_must_be_a_boolean(tmp_path: Path) -> None:
    path = tmp_path / "postoffice.toml"
    path.write_text(f'data_dir = "{tmp_path}"\n[authentication]\nsign = "yes"\n', encoding="utf-8")
    with pytest.raises(ConfigError, match=r"authentication\.sign"):
        load_config(path)
