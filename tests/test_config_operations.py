"""The operations keys of the configuration: log_format, log_file, [proxy_protocol]."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from postoffice.config import ProxyProtocol, check_config, load_config
from postoffice.logs import JsonFormatter, TextFormatter, fields


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "postoffice.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults() -> None:
    config = load_config(None)
    assert (config.log_format, config.log_file) == ("text", None)
    assert config.proxy_protocol == ProxyProtocol()
    assert not config.proxy_protocol.expects_header("smtp")


def test_operations_keys_load(tmp_path: Path) -> None:
    config = load_config(
        write(
            tmp_path,
            'log_format = "json"\nlog_file = "logs/po.log"\n'
            '[proxy_protocol]\nsmtp = true\ntrusted = ["10.0.0.0/8", "2001:db8::/32"]\n',
        )
    )
    assert config.log_format == "json"
    assert config.log_file == tmp_path / "logs" / "po.log"
    assert config.proxy_protocol.expects_header("smtp")
    assert config.proxy_protocol.is_trusted("10.1.2.3")
    assert config.proxy_protocol.is_trusted("2001:db8::5")
    assert not config.proxy_protocol.is_trusted("192.0.2.1")


@pytest.mark.parametrize(
    ("toml", "problem"),
    [
        ('log_format = "xml"\n', "log_format: 'xml' is not a log format; use one of text, json"),
        ("log_format = 1\n", "log_format: expected a string, got an integer"),
        (
            '[proxy_protocol]\nsmtp = "yes"\ntrusted = ["10.0.0.0/8"]\n',
            "proxy_protocol.smtp: expected true or false",
        ),
        ("[proxy_protocol]\nsmtp = true\n", "proxy_protocol.trusted: no trusted proxy networks"),
        (
            '[proxy_protocol]\nsmtp = true\ntrusted = ["10.0.0.1/8"]\n',
            "proxy_protocol.trusted: '10.0.0.1/8' has host bits",
        ),
        (
            "[proxy_protocol]\nsmpt = true\n",
            "proxy_protocol.smpt: unknown key; did you mean 'proxy_protocol.smtp'?",
        ),
        ("[limits]\njunk_commands = 0\n", "limits.junk_commands: 0 is too small; the least is 1"),
    ],
)
def test_mistakes_are_one_line_naming_the_key(tmp_path: Path, toml: str, problem: str) -> None:
    path = write(tmp_path, toml)
    (line,) = check_config(path)
    assert line.startswith(f"{path}: {problem}"), line


def record(message: str, *args: object) -> logging.LogRecord:
    return logging.LogRecord("postoffice.smtp", logging.INFO, __file__, 1, message, args, None)


def test_fields_of_a_log_line() -> None:
    message = "session=00002A queue_id=1B2C3D4E5F6G7H8J event=reject to=<a b@c> reply='550 5.1.1 \\'no\\''"
    assert fields(message) == {
        "session": "00002A",
        "queue_id": "1B2C3D4E5F6G7H8J",
        "event": "reject",
        "to": "<a",
        "reply": "550 5.1.1 'no'",
    }


def test_formatters_keep_one_event_on_one_line() -> None:
    hostile = record("session=%s event=helo name=%r", "000001", "evil\r\nevent=forged")
    text = TextFormatter().format(hostile)
    assert "\n" not in text and text.endswith("name='evil\\r\\nevent=forged'")
    entry = json.loads(JsonFormatter().format(hostile))
    assert entry["name"] == "evil\r\nevent=forged"
    assert entry["event"] == "helo"  # the forged pair inside the quoted value does not count
    assert entry["session"] == "000001"
