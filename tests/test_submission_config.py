"""Configuration of listeners, TLS and AUTH: the file, the flags, and one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from postoffice import cli
from postoffice.config import (
    DEFAULT_SMTP_LISTENER,
    AuthConfig,
    Config,
    Listener,
    TLSConfig,
    check_config,
    load_config,
)
from postoffice.errors import ConfigError

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "postoffice.toml"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "postoffice.toml"
    path.write_text(text, encoding="utf-8")
    return path


def problems(tmp_path: Path, text: str) -> list[str]:
    return check_config(write(tmp_path, text))


def test_every_listener_kind_from_the_file(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[listen]\nsmtp = ["127.0.0.1:25"]\nsubmission = ["127.0.0.1:587", "[::1]:587"]\nsmtps = ["0.0.0.0:465"]\n',
    )
    assert load_config(path).listeners == (
        Listener("smtp", "127.0.0.1", 25),
        Listener("submission", "127.0.0.1", 587),
        Listener("submission", "::1", 587),
        Listener("smtps", "0.0.0.0", 465),
    )


def test_submission_alone_means_no_default_smtp_listener(tmp_path: Path) -> None:
    path = write(tmp_path, '[listen]\nsubmission = ["127.0.0.1:2587"]\n')
    assert load_config(path).listeners == (Listener("submission", "127.0.0.1", 2587),)
    assert load_config().listeners == (DEFAULT_SMTP_LISTENER,)


def test_flags_replace_listeners_of_their_kind_only(tmp_path: Path) -> None:
    path = write(tmp_path, '[listen]\nsmtp = ["127.0.0.1:25"]\nsubmission = ["127.0.0.1:587"]\n')
    config = load_config(
        path, listeners=[Listener("submission", "127.0.0.1", 0), Listener("smtps", "::1", 0)]
    )
    assert config.listeners == (
        Listener("smtp", "127.0.0.1", 25),
        Listener("submission", "127.0.0.1", 0),
        Listener("smtps", "::1", 0),
    )


def test_tls_paths_are_relative_to_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, '[tls]\ncert = "tls/chain.pem"\nkey = "tls/key.pem"\nmin_version = "1.3"\n')
    assert load_config(path).tls == TLSConfig(
        tmp_path / "tls" / "chain.pem", tmp_path / "tls" / "key.pem", "TLSv1.3"
    )


def test_tls_defaults() -> None:
    config = load_config()
    assert config.tls == TLSConfig(None, None, "TLSv1.2")
    assert config.tls_dir == config.data_dir / "tls"


def test_tls_flags_override_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, '[tls]\ncert = "file-chain.pem"\nkey = "file-key.pem"\n')
    only_cert = load_config(path, tls_cert=Path("/flag/both.pem"))
    assert (only_cert.tls.cert, only_cert.tls.key) == (Path("/flag/both.pem"), None)  # never the file's key
    both = load_config(path, tls_cert=Path("/flag/chain.pem"), tls_key=Path("/flag/key.pem"))
    assert (both.tls.cert, both.tls.key) == (Path("/flag/chain.pem"), Path("/flag/key.pem"))
    with pytest.raises(ConfigError, match="--tls-key: a key needs its certificate"):
        load_config(path, tls_key=Path("/flag/key.pem"))


def test_auth_settings(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[auth]\nallow_plaintext_on_loopback = true\nmax_failures = 3\nfailure_window = "1h"\nfailure_delay = 0\n',
    )
    assert load_config(path).auth == AuthConfig(True, 3, 3600.0, 0.0)
    assert Config().auth == AuthConfig(False, 5, 600.0, 2.0)


@pytest.mark.parametrize(
    ("text", "key", "says"),
    [
        (
            '[listen]\nsubmision = ["127.0.0.1:587"]\n',
            "listen.submision",
            "did you mean 'listen.submission'?",
        ),
        ('smtps = ["127.0.0.1:465"]\n', "smtps", "it belongs in the [listen] table"),
        ('[listen]\nsmtps = ["127.0.0.1"]\n', "listen.smtps", "expected HOST:PORT"),
        ("[listen]\nsubmission = []\n", "listen.submission", "no addresses"),
        ('[tls]\nkey = "k.pem"\n', "tls.key", "a key needs its certificate"),
        ('[tls]\nmin_version = "1.1"\n', "tls.min_version", "TLSv1.2, TLSv1.3"),
        ("[tls]\ncert = 5\n", "tls.cert", "expected a string"),
        ('[tls]\ncrt = "c.pem"\n', "tls.crt", "did you mean 'tls.cert'?"),
        (
            '[auth]\nallow_plaintext_on_loopback = "yes"\n',
            "auth.allow_plaintext_on_loopback",
            "true or false",
        ),
        ("[auth]\nmax_failures = 0\n", "auth.max_failures", "the least is 1"),
        ('[auth]\nfailure_window = "0s"\n', "auth.failure_window", "positive"),
        ('[auth]\nfailure_delay = "-1s"\n', "auth.failure_delay", "not a duration"),
        ("[auth]\nmax_fails = 3\n", "auth.max_fails", "did you mean 'auth.max_failures'?"),
        ('auth = "on"\n', "auth", "expected a table"),
    ],
)
def test_mistakes_are_one_line_naming_file_and_key(tmp_path: Path, text: str, key: str, says: str) -> None:
    [problem] = problems(tmp_path, text)
    assert problem.startswith(f"{tmp_path / 'postoffice.toml'}: {key}: "), problem
    assert says in problem
    assert "\n" not in problem


def test_cli_listener_flags(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    process = pytest.importorskip("postoffice.runtime.process", exc_type=ImportError)
    seen: list[Config] = []
    monkeypatch.setattr(process, "serve", lambda config, **options: seen.append(config) or 0)
    code = cli.main(
        ["serve", "--data-dir", str(tmp_path), "--smtp", "127.0.0.1:2525", "--submission", "127.0.0.1:2587",
         "--smtps", "[::1]:2465", "--tls-cert", "chain.pem", "--tls-key", "key.pem"]
    )  # fmt: skip
    assert code == 0
    [config] = seen
    assert config.listeners == (
        Listener("smtp", "127.0.0.1", 2525),
        Listener("submission", "127.0.0.1", 2587),
        Listener("smtps", "::1", 2465),
    )
    assert config.tls.cert == Path.cwd() / "chain.pem" and config.tls.key == Path.cwd() / "key.pem"


def test_cli_bad_listener_flag_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["serve", "--smtps", "nowhere"]) == 2
    assert "--smtps" in capsys.readouterr().err


def test_check_config_shows_the_certificate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, f'data_dir = "{tmp_path}"\n[listen]\nsubmission = ["127.0.0.1:2587"]\n')
    assert cli.main(["check-config", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    assert "  listeners: submission 127.0.0.1:2587" in out
    assert f"  tls certificate: self-signed, made in {tmp_path / 'tls'} when a listener needs it" in out
