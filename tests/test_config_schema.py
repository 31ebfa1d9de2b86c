"""The configuration schema: every key declared once, and everything else derived from it.

Also how user, group and mail_file_mode read through the schema (tests/test_config_privileges.py
has their one-line errors) and the few places where reading every key the same way changed what
a file may say.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
from pathlib import Path
from typing import Any

import pytest

from postoffice import cli
from postoffice.config import Config, DeliverySettings, Limits, QueueSettings, check_config, load_config
from postoffice.config.model import SECTIONS
from postoffice.config.schema import Key, Section, default_of, keys_of
from postoffice.delivery.remote import RemoteSettings
from postoffice.qmgr.scheduler import Scheduler
from postoffice.smtp.server import ServerSettings

# The fields of Config that the file does not set directly: made from tables, or not from the file.
NOT_KEYS = {
    "listeners",
    "http_listeners",
    "acme_http_listeners",
    "acme",
    "pop3_listeners",
    "imap_listeners",
    "limits",
    "queue",
    "delivery",
    "tls",
    "auth",
    "authentication",
    "proxy_protocol",
    "mta_sts",
    "tls_reporting",
    "storage",
    "retention",
    "webhooks",
    "source",
}

EVERY_KEY = [
    pytest.param(section, item, key, id=section.dotted(item.name))
    for section in SECTIONS
    for item, key in keys_of(section.keys)
]
# The keys whose default the reference writes as TOML (the others' it says in words).
TOML_DEFAULTS = [param for param in EVERY_KEY if param.values[2].default_text is None]  # type: ignore[union-attr]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "postoffice.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_every_field_of_a_table_is_a_key() -> None:
    # A field added without setting() would be one the file cannot set: this fails instead.
    for section in SECTIONS:
        fields = {item.name for item in dataclasses.fields(section.keys)}
        keys = set(section.key_names())
        assert fields - keys == (NOT_KEYS if section.keys is Config else set()), section.name


@pytest.mark.parametrize(("section", "item", "key"), EVERY_KEY)
def test_every_key_has_one_line_of_help(section: Section, item: dataclasses.Field[Any], key: Key) -> None:
    assert key.help and "\n" not in key.help and key.help.endswith("."), section.dotted(item.name)


@pytest.mark.parametrize(("section", "item", "key"), TOML_DEFAULTS)
def test_the_documented_default_of_every_key_changes_nothing(
    tmp_path: Path, section: Section, item: dataclasses.Field[Any], key: Key
) -> None:
    # The reference writes each default as TOML; a file saying exactly that loads as no file
    # does. So the reader, the default and the reference agree for every key.
    line = f"{item.name} = {key.kind.show(default_of(item))}\n"
    if section.many:  # an entry of an array of tables: compared with the entry without the line
        entry = f'[[{section.name}]]\nurl = "http://127.0.0.1/hook"\n'
        expected = load_config(write(tmp_path, entry))
        assert load_config(write(tmp_path, entry + line)) == expected
        return
    path = write(tmp_path, f"[{section.name}]\n{line}" if section.name else line)
    assert dataclasses.replace(load_config(path), source=None) == load_config(None)


def test_serve_options_named_by_the_schema_exist(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["serve", "--help"]) == 0
    options = set(re.findall(r"--[a-z0-9-]+", capsys.readouterr().out))  # --pop3 has a digit
    flags = {key.flag for section in SECTIONS for _, key in keys_of(section.keys) if key.flag}
    assert flags - options == set()


# -- defaults shared with the layers that may not import config -----------------------------


def test_the_protocol_core_defaults_to_the_configured_limits() -> None:
    core, limits = ServerSettings(hostname="mx.test"), Limits()
    assert (
        core.max_message_size,
        core.max_recipients,
        core.command_line_limit,
        core.text_line_limit,
        core.max_errors,
    ) == (
        limits.message_size,
        limits.recipients,
        limits.command_line,
        limits.text_line,
        limits.errors_per_session,
    )


def test_the_scheduler_defaults_to_the_configured_queue() -> None:
    parameters = inspect.signature(Scheduler).parameters
    queue = QueueSettings()
    assert {
        "retry_base": queue.minimal_backoff_time,
        "retry_max": queue.maximal_backoff_time,
        "lifetime": queue.maximal_queue_lifetime,
        "delay_warning": queue.delay_warning_time,
        "concurrency": queue.concurrency,
        "destination_concurrency": queue.destination_concurrency,
    } == {name: parameters[name].default for name in ("retry_base", "retry_max", "lifetime", "delay_warning",
                                                       "concurrency", "destination_concurrency")}  # fmt: skip


def test_the_remote_agent_defaults_to_the_configured_delivery() -> None:
    remote, delivery = RemoteSettings(hostname="mx.test"), DeliverySettings()
    assert (remote.mx_port, remote.relay_tls, remote.connect_timeout, remote.command_timeout) == (
        delivery.mx_port,
        delivery.relay_tls,
        delivery.connect_timeout,
        delivery.command_timeout,
    )


# -- user, group, mail_file_mode -----------------------------------------------------------


def test_account_and_mode_defaults() -> None:
    config = load_config(None)
    assert (config.user, config.group, config.mail_file_mode) == (None, None, 0o600)


def test_account_and_mode_from_the_file(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, 'user = "nobody"\ngroup = "mail"\nmail_file_mode = 0o640\n'))
    assert (config.user, config.group, config.mail_file_mode) == ("nobody", "mail", 0o640)


@pytest.mark.parametrize(
    ("value", "mode"),
    [('"0660"', 0o660), ('"660"', 0o660), ('"0o640"', 0o640), ("0o600", 0o600), ("416", 0o640)],
)
def test_mail_file_mode_is_octal_text_or_an_integer(tmp_path: Path, value: str, mode: int) -> None:
    assert load_config(write(tmp_path, f"mail_file_mode = {value}\n")).mail_file_mode == mode


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ('"0666"', "0o666 lets every user of this machine read the mail; 0o660 at most"),
        ("0o604", "0o604 lets every user of this machine read the mail"),
        ('"0750"', "0o750 is not a mail file mode (read and write bits only)"),
        ("0o700", "0o700 is not a mail file mode"),
        ('"4600"', "0o4600 is not a mail file mode"),
        ("-1", "-1 is not a mail file mode"),
        ("640", 'an octal mode is written 0o640 or "0640"'),
        ('"rw-r-----"', "'rw-r-----' is not an octal mode"),
        ('"0680"', "is not an octal mode"),
        ('""', "'' is not an octal mode"),
        ("0o040", "does not let the server read and write its own files; 0o600 at least"),
        ("true", 'expected an octal mode such as "0660" or 0o660, got a boolean'),
    ],
)
def test_mail_file_mode_mistakes(tmp_path: Path, value: str, problem: str) -> None:
    path = write(tmp_path, f"mail_file_mode = {value}\n")
    [line] = check_config(path)
    assert line.startswith(f"{path}: mail_file_mode: ") and problem in line, line


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ('user = ""', "user: empty name"),
        ('group = ""', "group: empty name"),
        ('user = "post office"', "user: 'post office' is not an account name"),
        ('group = "a:b"', "group: 'a:b' is not an account name"),
        ("user = 1000", "user: expected a string, got an integer"),
        ('user = "nobody"\ngroup = "a b"', "group: 'a b' is not an account name"),
    ],
)
def test_account_name_mistakes(tmp_path: Path, text: str, problem: str) -> None:
    path = write(tmp_path, text + "\n")
    [line] = check_config(path)
    assert line.startswith(f"{path}: {problem}"), line


# -- what reading every key the same way changed -------------------------------------------


@pytest.mark.parametrize(
    ("key", "table"), [("cert", "tls"), ("concurrency", "queue"), ("relay_host", "delivery")]
)
def test_a_key_of_any_table_at_the_top_level_says_where_it_belongs(
    tmp_path: Path, key: str, table: str
) -> None:
    path = write(tmp_path, f"{key} = 1\n")
    assert check_config(path) == [f"{path}: {key}: unknown key; it belongs in the [{table}] table"]


def test_every_duration_that_may_be_off_takes_the_same_zeros(tmp_path: Path) -> None:
    path = write(tmp_path, '[queue]\ndelay_warning_time = "0s"\n[auth]\nfailure_delay = "0s"\n')
    config = load_config(path)
    assert (config.queue.delay_warning_time, config.auth.failure_delay) == (0.0, 0.0)


def test_a_rule_between_keys_waits_until_each_key_is_valid(tmp_path: Path) -> None:
    # The typo is the problem; "relay_user and relay_password_file go together" would be noise.
    path = write(tmp_path, '[delivery]\nrelay_usr = "me"\nrelay_password_file = "pw"\n')
    assert check_config(path) == [
        f"{path}: delivery.relay_usr: unknown key; did you mean 'delivery.relay_user'?"
    ]


def test_a_floor_names_its_precedent_for_any_value_below_it(tmp_path: Path) -> None:
    [line] = check_config(write(tmp_path, "[limits]\nrecipients = 0\n"))
    assert line.endswith(
        "limits.recipients: 0 is too small: RFC 5321 §4.5.3.1.8 requires accepting at least 100 recipients"
    )
