"""The TOML loader: schema, units, RFC minimums, one-line errors naming file and key."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from postoffice.config import (
    DEFAULT_SMTP_LISTENER,
    LIMIT_NAMES,
    AuthConfig,
    Config,
    Limits,
    Listener,
    MiB,
    TLSConfig,
    check_config,
    load_config,
    normalize_address,
    normalize_domain,
    parse_hostport,
)
from postoffice.errors import ConfigError

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "postoffice.toml"


def write(tmp_path: Path, text: str, name: str = "postoffice.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def error_of(path: Path) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return info.value


# -- the example file ----------------------------------------------------------------------


def test_example_file_loads_and_sets_every_documented_key() -> None:
    config = load_config(EXAMPLE)
    assert config.hostname == "mail.example.com"
    assert config.data_dir == Path("/var/lib/postoffice")
    assert config.domains == ("example.com", "example.org")
    assert config.postmaster == "admin@example.com"
    assert config.listeners == (
        Listener("smtp", "127.0.0.1", 2525),
        Listener("smtp", "::1", 2525),
        Listener("submission", "127.0.0.1", 2587),
        Listener("smtps", "127.0.0.1", 2465),
    )
    assert config.tls == TLSConfig(
        Path("/etc/postoffice/tls/fullchain.pem"), Path("/etc/postoffice/tls/privkey.pem"), "TLSv1.2"
    )
    assert config.auth == AuthConfig()  # the example documents the defaults
    assert config.limits == Limits()  # the example documents the defaults
    assert config.source == EXAMPLE
    assert check_config(EXAMPLE) == []


def test_example_file_mentions_every_limit() -> None:
    text = EXAMPLE.read_text(encoding="utf-8")
    for name in LIMIT_NAMES:
        assert f"\n{name} = " in text, name


def test_every_limit_field_has_a_parser(tmp_path: Path) -> None:
    # Setting each field to its default through the file must give back the defaults: a
    # field added to Limits without a parser fails here.
    defaults = Limits()
    lines = ["[limits]"]
    for item in dataclasses.fields(Limits):
        value = getattr(defaults, item.name)
        if isinstance(value, tuple):
            lines.append(f"{item.name} = [{', '.join(repr(v).replace(chr(39), chr(34)) for v in value)}]")
        else:
            lines.append(f"{item.name} = {value}")
    assert load_config(write(tmp_path, "\n".join(lines))).limits == defaults


# -- defaults and overrides ----------------------------------------------------------------


def test_no_file_gives_defaults(tmp_path: Path) -> None:
    config = load_config(data_dir=tmp_path)
    assert config.listeners == (DEFAULT_SMTP_LISTENER,)
    assert config.domains == ()
    assert config.capture_mode
    assert config.limits == Limits()
    assert config.source is None
    assert config.data_dir == tmp_path
    assert check_config(None) == []


def test_command_line_values_override_the_file(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        'hostname = "file.example"\ndata_dir = "d"\ndomains = ["file.example"]\n'
        '[listen]\nsmtp = ["127.0.0.1:25"]\n',
    )
    listener = Listener("smtp", "::1", 0)
    config = load_config(
        path,
        data_dir=tmp_path / "flag",
        listeners=[listener],
        hostname="Flag.Example",
        domains=["A.example", "b.example"],
    )
    assert config.hostname == "flag.example"
    assert config.data_dir == tmp_path / "flag"
    assert config.listeners == (listener,)
    assert config.domains == ("a.example", "b.example")


def test_empty_overrides_keep_the_file_values(tmp_path: Path) -> None:
    path = write(tmp_path, 'domains = ["file.example"]\n[listen]\nsmtp = ["127.0.0.1:25"]\n')
    config = load_config(path, listeners=(), domains=())
    assert config.domains == ("file.example",)
    assert config.listeners == (Listener("smtp", "127.0.0.1", 25),)


def test_relative_data_dir_override_is_made_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert load_config(data_dir=Path("here")).data_dir == tmp_path / "here"


def test_invalid_hostname_flag_is_reported_under_the_flag() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(hostname="not a host")
    assert str(info.value).startswith("--hostname: ")


def test_invalid_domain_flag_is_reported_under_the_flag() -> None:
    with pytest.raises(ConfigError, match=r"^--domain: "):
        load_config(domains=["under_score.example"])


# -- data_dir ------------------------------------------------------------------------------


def test_relative_data_dir_is_relative_to_the_config_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "etc").mkdir()
    path = write(tmp_path / "etc", 'data_dir = "../var/po"\n')
    monkeypatch.chdir("/")
    assert load_config(path).data_dir == (tmp_path / "var" / "po").resolve()


def test_data_dir_expands_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    path = write(tmp_path, 'data_dir = "~/mail-data"\n')
    assert load_config(path).data_dir == (tmp_path / "mail-data").resolve()


def test_empty_data_dir_is_an_error(tmp_path: Path) -> None:
    assert str(error_of(write(tmp_path, 'data_dir = ""\n'))).endswith("data_dir: empty path")


# -- errors --------------------------------------------------------------------------------


def test_missing_file_names_the_path(tmp_path: Path) -> None:
    path = tmp_path / "absent.toml"
    error = error_of(path)
    assert str(error) == f"{path}: no such file"
    assert error.path == str(path)
    assert check_config(path) == [f"{path}: no such file"]


def test_directory_instead_of_file(tmp_path: Path) -> None:
    assert "is a directory" in str(error_of(tmp_path))


def test_toml_syntax_error_is_one_line_with_position(tmp_path: Path) -> None:
    path = write(tmp_path, 'hostname = "a"\nlimits = ]\nx = 1\n')
    message = str(error_of(path))
    assert message.startswith(f"{path}: not valid TOML: ")
    assert "line" in message
    assert "\n" not in message


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes('hostname = "caf\xe9.example"\n'.encode("latin-1"))
    assert "UTF-8" in str(error_of(path))


@pytest.mark.parametrize(
    ("text", "key", "fragment"),
    [
        ('hostnme = "x.example"', "hostnme", "did you mean 'hostname'?"),
        ("[limits]\nmesage_size = 1", "limits.mesage_size", "did you mean 'limits.message_size'?"),
        ('[listen]\nsmpt = ["127.0.0.1:25"]', "listen.smpt", "did you mean 'listen.smtp'?"),
        ("recipients = 500", "recipients", "belongs in the [limits] table"),
        ('smtp = ["127.0.0.1:25"]', "smtp", "belongs in the [listen] table"),
        ("frobnicate = 1", "frobnicate", "unknown key"),
    ],
)
def test_unknown_keys_are_errors_with_a_suggestion(
    tmp_path: Path, text: str, key: str, fragment: str
) -> None:
    path = write(tmp_path, text + "\n")
    error = error_of(path)
    assert error.key == key
    assert str(error).startswith(f"{path}: {key}: unknown key")
    assert fragment in str(error)


@pytest.mark.parametrize(
    ("text", "key", "fragment"),
    [
        ("hostname = 5", "hostname", "expected a string, got an integer"),
        ('domains = "example.com"', "domains", "expected an array"),
        ("domains = [1]", "domains", "expected a string, got an integer"),
        ("postmaster = true", "postmaster", "expected a string, got a boolean"),
        ('postmaster = "no-at-sign"', "postmaster", "local@domain"),
        ('limits = "big"', "limits", "expected a table"),
        ('listen = ["127.0.0.1:25"]', "listen", "expected a table"),
        ('[listen]\nsmtp = "127.0.0.1:25"', "listen.smtp", "expected an array"),
        ("[listen]\nsmtp = []", "listen.smtp", "no addresses"),
        ('[listen]\nsmtp = ["127.0.0.1:25", "127.0.0.1:25"]', "listen.smtp", "listed twice"),
        ("[limits]\nconnections = true", "limits.connections", "expected an integer, got a boolean"),
        ("[limits]\nconnections = 0", "limits.connections", "too small"),
        ("[limits]\nerrors_per_session = 1.5", "limits.errors_per_session", "got a float"),
        ('[limits]\ntrusted_networks = "10.0.0.0/8"', "limits.trusted_networks", "expected an array"),
        ("[limits]\ncommand_timeout = 1979-05-27", "limits.command_timeout", "got a date or time"),
    ],
)
def test_wrong_types_and_values(tmp_path: Path, text: str, key: str, fragment: str) -> None:
    path = write(tmp_path, text + "\n")
    error = error_of(path)
    assert error.key == key
    assert str(error).startswith(f"{path}: {key}: ")
    assert fragment in str(error)
    assert "\n" not in str(error)


def test_check_config_collects_every_problem(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
hostnme = "x"
domains = ["ok.example", "bad_name.example"]
[listen]
smtp = ["::1:25"]
[limits]
recipients = 10
message_size = "10 furlongs"
command_timeout = "5m"
""",
    )
    problems = check_config(path)
    keys = [line.split(": ")[1] for line in problems]
    assert keys == ["hostnme", "domains", "listen.smtp", "limits.message_size", "limits.recipients"]
    assert all(line.startswith(f"{path}: ") and "\n" not in line for line in problems)
    # load_config raises the first of them.
    assert str(error_of(path)) == problems[0]


# -- limits: units and RFC minimums --------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ('"25MiB"', 25 * MiB),
        ('"10MB"', 10_000_000),
        ('"512KiB"', 512 * 1024),
        ('"1GiB"', 1024**3),
        ('"100 kb"', 100_000),
        ('"70000"', 70_000),
        ('"1.5MiB"', 3 * MiB // 2),
        (str(MiB), MiB),
    ],
)
def test_message_size_units(tmp_path: Path, value: str, expected: int) -> None:
    path = write(tmp_path, f"[limits]\nmessage_size = {value}\n")
    assert load_config(path).limits.message_size == expected


@pytest.mark.parametrize("value", ['"10M"', '"lots"', '"MiB"', "-1", "1.5e7", "true", '"-5MiB"'])
def test_bad_sizes(tmp_path: Path, value: str) -> None:
    error = error_of(write(tmp_path, f"[limits]\nmessage_size = {value}\n"))
    assert error.key == "limits.message_size"


def test_message_size_below_64k_cites_the_rfc(tmp_path: Path) -> None:
    error = error_of(write(tmp_path, '[limits]\nmessage_size = "63KiB"\n'))
    assert "RFC 5321 §4.5.3.1.7" in str(error)
    assert load_config(write(tmp_path, '[limits]\nmessage_size = "64KiB"\n')).limits.message_size == 65536


@pytest.mark.parametrize(
    ("value", "expected"),
    [('"5m"', 300.0), ('"300s"', 300.0), ('"10min"', 600.0), ('"1h"', 3600.0), ("30", 30.0), ("2.5", 2.5)],
)
def test_timeout_units(tmp_path: Path, value: str, expected: float) -> None:
    path = write(tmp_path, f"[limits]\ncommand_timeout = {value}\n")
    assert load_config(path).limits.command_timeout == expected


@pytest.mark.parametrize("value", ['"0s"', "0", "-3", '"5 fortnights"', "inf", "nan", "true", '"m"'])
def test_bad_timeouts(tmp_path: Path, value: str) -> None:
    error = error_of(write(tmp_path, f"[limits]\ndata_done_timeout = {value}\n"))
    assert error.key == "limits.data_done_timeout"


def test_recipients_minimum_cites_rfc(tmp_path: Path) -> None:
    error = error_of(write(tmp_path, "[limits]\nrecipients = 99\n"))
    assert "RFC 5321 §4.5.3.1.8" in str(error)
    assert load_config(write(tmp_path, "[limits]\nrecipients = 100\n")).limits.recipients == 100


def test_command_line_minimum_cites_rfc(tmp_path: Path) -> None:
    error = error_of(write(tmp_path, "[limits]\ncommand_line = 511\n"))
    assert error.key == "limits.command_line"
    assert "§4.5.3.1.4" in str(error)
    assert load_config(write(tmp_path, '[limits]\ncommand_line = "1KiB"\n')).limits.command_line == 1024


@pytest.mark.parametrize(("value", "ok"), [(0, True), (1, False), (999, False), (1000, True), (4096, True)])
def test_text_line_is_zero_or_at_least_1000(tmp_path: Path, value: int, ok: bool) -> None:
    path = write(tmp_path, f"[limits]\ntext_line = {value}\n")
    if ok:
        assert load_config(path).limits.text_line == value
    else:
        assert "§4.5.3.1.6" in str(error_of(path))


def test_trusted_networks_are_normalised(tmp_path: Path) -> None:
    path = write(tmp_path, '[limits]\ntrusted_networks = ["10.0.0.0/8", "192.0.2.7", "2001:DB8::/32"]\n')
    limits = load_config(path).limits
    assert limits.trusted_networks == ("10.0.0.0/8", "192.0.2.7/32", "2001:db8::/32")
    assert limits.is_trusted("10.9.8.7")
    assert not limits.is_trusted("127.0.0.1")  # the list replaces the default


def test_trusted_network_with_host_bits_suggests_the_network(tmp_path: Path) -> None:
    error = error_of(write(tmp_path, '[limits]\ntrusted_networks = ["10.1.2.3/8"]\n'))
    assert "did you mean '10.0.0.0/8'?" in str(error)


def test_trusted_network_garbage(tmp_path: Path) -> None:
    error = error_of(write(tmp_path, '[limits]\ntrusted_networks = ["localnet"]\n'))
    assert error.key == "limits.trusted_networks"
    assert "CIDR" in str(error)


# -- domains, hostname, postmaster ---------------------------------------------------------


def test_domains_are_lowercased_deduplicated_and_may_be_internationalised(tmp_path: Path) -> None:
    path = write(
        tmp_path, 'domains = ["Example.COM", "example.com", "Bücher.Example", "xn--bcher-kva.example"]\n'
    )
    assert load_config(path).domains == ("example.com", "bücher.example", "xn--bcher-kva.example")


@pytest.mark.parametrize(
    "name",
    ["", "bad_name.example", "-lead.example", "trail-.example", "a..b", ".example", "example.com.",
     "192.0.2.1", "[192.0.2.1]", "a" * 64 + ".example", ".".join(["abcdefghi"] * 26), "sp ace.example"],
)  # fmt: skip
def test_invalid_domain_names(name: str) -> None:
    with pytest.raises(ValueError):
        normalize_domain(name)


@pytest.mark.parametrize("name", ["localhost", "mail.example.com", "1and1.example", "xn--bcher-kva.example"])
def test_valid_domain_names(name: str) -> None:
    assert normalize_domain(name.upper()) == name


def test_hostname_is_validated_and_lowercased(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, 'hostname = "MX.Example.NET"\n')).hostname == "mx.example.net"
    assert error_of(write(tmp_path, 'hostname = "mx..example"\n')).key == "hostname"


def test_postmaster_keeps_local_case_and_lowercases_the_domain(tmp_path: Path) -> None:
    path = write(tmp_path, 'postmaster = "Hostmaster@Example.ORG"\n')
    assert load_config(path).postmaster == "Hostmaster@example.org"


@pytest.mark.parametrize(
    "address", ["nobody", "@example.com", "a@", "a b@example.com", ".a@example.com", "a..b@example.com",
                "a@b@", "x" * 65 + "@example.com", '"quoted"@example.com'],
)  # fmt: skip
def test_invalid_addresses(address: str) -> None:
    with pytest.raises(ValueError):
        normalize_address(address)


def test_address_folding() -> None:
    assert normalize_address("Ünïcode.User+tag@Example.com") == "Ünïcode.User+tag@example.com"
    assert (
        normalize_address("Ünïcode.User+tag@Example.com", fold_local=True) == "ünïcode.user+tag@example.com"
    )


# -- listeners -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:2525", ("127.0.0.1", 2525)),
        ("0.0.0.0:25", ("0.0.0.0", 25)),
        ("[::1]:2525", ("::1", 2525)),
        ("[::]:0", ("::", 0)),
        ("LocalHost:65535", ("localhost", 65535)),
        ("mail.example.com:587", ("mail.example.com", 587)),
    ],
)
def test_parse_hostport(text: str, expected: tuple[str, int]) -> None:
    assert parse_hostport(text) == expected


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("127.0.0.1", "expected HOST:PORT"),
        (":25", "expected HOST:PORT"),
        ("::1:25", "brackets"),
        ("[::1]2525", "[IPV6-ADDRESS]:PORT"),
        ("[::1", "[IPV6-ADDRESS]:PORT"),
        ("[127.0.0.1]:25", "not an IPv6 address"),
        ("127.0.0.1:65536", "0 to 65535"),
        ("127.0.0.1:-1", "0 to 65535"),
        ("127.0.0.1:http", "0 to 65535"),
        ("1.2.3.999:25", "neither an IP address nor a host name"),
        ("bad_host:25", "neither an IP address nor a host name"),
    ],
)
def test_parse_hostport_errors(text: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_hostport(text, key="--smtp")
    assert str(info.value).startswith("--smtp: ")
    assert fragment in str(info.value)


def test_listeners_from_file(tmp_path: Path) -> None:
    path = write(tmp_path, '[listen]\nsmtp = ["[::1]:0", "127.0.0.1:0", "127.0.0.1:0"]\n')
    # Port 0 twice is two ephemeral ports, not a duplicate.
    assert load_config(path).listeners == (
        Listener("smtp", "::1", 0),
        Listener("smtp", "127.0.0.1", 0),
        Listener("smtp", "127.0.0.1", 0),
    )


def test_config_is_frozen() -> None:
    config = Config()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.hostname = "x"  # type: ignore[misc]


def test_a_quoted_key_with_a_newline_still_gives_one_line(tmp_path: Path) -> None:
    path = write(tmp_path, '"host\\nname" = "x"\n')
    error = error_of(path)
    assert "\n" not in str(error)
    assert str(error).startswith(f"{path}: 'host\\nname': unknown key")
