"""The [queue] and [delivery] tables and the serve flags for outbound mail."""

from __future__ import annotations

from pathlib import Path

import pytest

from postoffice import cli
from postoffice.config import DeliverySettings, QueueSettings, check_config, load_config
from postoffice.errors import ConfigError

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "postoffice.toml"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "postoffice.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_the_example_documents_the_defaults() -> None:
    config = load_config(EXAMPLE)
    assert config.queue == QueueSettings()
    assert config.delivery == DeliverySettings()
    text = EXAMPLE.read_text(encoding="utf-8")
    for name in (
        "minimal_backoff_time",
        "maximal_backoff_time",
        "maximal_queue_lifetime",
        "delay_warning_time",
        "concurrency",
        "destination_concurrency",
        "dns",
        "mx_port",
        "relay_host",
        "relay_user",
        "relay_password_file",
        "relay_tls",
        "tls_ca_file",
        "connect_timeout",
        "command_timeout",
    ):
        assert f"{name} = " in text, name


def test_postfix_defaults() -> None:
    queue = QueueSettings()
    assert (queue.minimal_backoff_time, queue.maximal_backoff_time) == (300, 4000)
    assert queue.maximal_queue_lifetime == 5 * 86400 and queue.delay_warning_time == 0


def test_queue_and_delivery_values(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        [queue]
        maximal_queue_lifetime = "2d"
        minimal_backoff_time = "1m"
        delay_warning_time = "4h"
        destination_concurrency = 2
        [delivery]
        dns = "127.0.0.1:5353"
        mx_port = 2525
        relay_host = "smtp.example.net:587"
        relay_user = "me@example.net"
        relay_password_file = "secret"
        tls_ca_file = "ca.pem"
        [delivery.tls_policy]
        "Example.COM" = "verify"
        """,
    )
    config = load_config(path)
    assert config.queue == QueueSettings(
        maximal_queue_lifetime=2 * 86400,
        minimal_backoff_time=60,
        delay_warning_time=4 * 3600,
        destination_concurrency=2,
    )
    delivery = config.delivery
    assert (delivery.dns, delivery.mx_port, delivery.relay_host) == (
        ("127.0.0.1", 5353),
        2525,
        ("smtp.example.net", 587),
    )
    assert delivery.relay_password_file == tmp_path / "secret"  # relative to the file
    assert (
        delivery.tls_policy_for("example.com") == "verify" and delivery.tls_policy_for("other.test") == "may"
    )


@pytest.mark.parametrize(
    ("text", "key", "problem"),
    [
        ('[queue]\nmaximal_queue_lifetime = "5 weeks"', "queue.maximal_queue_lifetime", "not a duration"),
        ("[queue]\nconcurrency = 0", "queue.concurrency", "too small"),
        (
            '[queue]\nminimal_backoff_time = "2h"',
            "queue.minimal_backoff_time",
            "longer than maximal_backoff_time",
        ),
        (
            "[queue]\nmaximum_backoff_time = 5",
            "queue.maximum_backoff_time",
            "did you mean 'queue.maximal_backoff_time'",
        ),
        ('[delivery]\ndns = "ns.example.net:53"', "delivery.dns", "by IP address"),
        ("[delivery]\nmx_port = 0", "delivery.mx_port", "from 1 to 65535"),
        ('[delivery]\nrelay_tls = "maybe"', "delivery.relay_tls", "not one of none, starttls, tls"),
        ('[delivery.tls_policy]\n"example.com" = "always"', "delivery.tls_policy", "not one of none, may"),
        (
            '[delivery]\nrelay_host = "smtp.example.net:25"\nrelay_user = "me"',
            "delivery.relay_password_file",
            "go together",
        ),
        (
            '[delivery]\nrelay_user = "me"\nrelay_password_file = "pw"',
            "delivery.relay_user",
            "without a relay_host",
        ),
        (
            '[delivery]\nrelay_host = "smtp.example.net:25"\nrelay_tls = "none"\nrelay_user = "me"\n'
            'relay_password_file = "pw"',
            "delivery.relay_tls",
            "in the clear",
        ),
    ],
)
def test_mistakes_name_the_key(tmp_path: Path, text: str, key: str, problem: str) -> None:
    path = write(tmp_path, text)
    [error] = check_config(path)
    assert error.startswith(f"{path}: {key}: ") and problem in error, error


def test_plaintext_credentials_are_fine_to_a_relay_on_loopback(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[delivery]\nrelay_host = "127.0.0.1:25"\nrelay_tls = "none"\nrelay_user = "me"\nrelay_password_file = "pw"',
    )
    assert check_config(path) == []


def test_serve_flags_override_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, '[delivery]\ndns = "127.0.0.1:53"\nmx_port = 25')
    config = load_config(
        path, delivery={"dns": ("127.0.0.2", 5300), "mx_port": 2526, "relay_host": ("relay.test", 587)}
    )
    assert (config.delivery.dns, config.delivery.mx_port, config.delivery.relay_host) == (
        ("127.0.0.2", 5300),
        2526,
        ("relay.test", 587),
    )


@pytest.mark.parametrize(
    ("flag", "value"), [("--dns", "name.test:53"), ("--mx-port", "70000"), ("--relay-host", "relay.test:0")]
)
def test_bad_serve_flags_are_usage_errors(flag: str, value: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["serve", flag, value]) == 2
    assert flag in capsys.readouterr().err


def test_a_missing_relay_password_file_is_one_line(tmp_path: Path) -> None:
    from postoffice.app import remote_settings

    path = write(
        tmp_path,
        '[delivery]\nrelay_host = "127.0.0.1:25"\nrelay_user = "me"\nrelay_password_file = "nothere"',
    )
    with pytest.raises(ConfigError) as info:
        remote_settings(load_config(path))
    assert (
        str(info.value)
        == f"{path}: delivery.relay_password_file: {tmp_path / 'nothere'}: No such file or directory"
    )
