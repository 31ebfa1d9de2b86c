"""``[acme]`` and ``[listen] acme_http``: defaults, what the file may say, and what it may not."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from postoffice.config import Listener, check_config, load_config
from postoffice.config.tables import LETS_ENCRYPT


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "postoffice.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_acme_is_off_by_default_and_then_has_no_challenge_listener(tmp_path: Path) -> None:
    config = load_config(data_dir=tmp_path)
    assert not config.acme.enabled
    assert config.acme_listeners == ()


def test_enabled_acme_defaults_to_lets_encrypt_the_host_name_and_port_80(tmp_path: Path) -> None:
    path = write(tmp_path, 'hostname = "mail.example.org"\n[acme]\nenabled = true\n')
    config = load_config(path)
    assert config.acme.directory == LETS_ENCRYPT
    assert config.acme_domains == ("mail.example.org",)
    assert config.acme_listeners == (Listener("acme_http", "0.0.0.0", 80),)
    assert config.acme_dir == config.data_dir / "acme"
    # The challenge listener is not an SMTP one.
    assert all(listener.kind == "smtp" for listener in config.listeners)


def test_acme_settings_are_read(tmp_path: Path) -> None:
    (tmp_path / "ca.pem").write_text("", encoding="utf-8")
    path = write(
        tmp_path,
        "[acme]\nenabled = true\n"
        'email = "Postmaster@Example.org"\n'
        'directory = "https://acme-staging-v02.api.letsencrypt.org/directory"\n'
        'domains = ["mail.example.org", "SMTP.example.org"]\n'
        'ca_file = "ca.pem"\nretry_min = "1m"\nretry_max = "6h"\n'
        '[listen]\nacme_http = ["127.0.0.1:8080"]\n',
    )
    config = load_config(path)
    acme = config.acme
    assert acme.email == "Postmaster@example.org"
    assert acme.directory.startswith("https://acme-staging-v02")
    assert config.acme_domains == ("mail.example.org", "smtp.example.org")
    assert acme.ca_file == tmp_path / "ca.pem"
    assert (acme.retry_min, acme.retry_max) == (60.0, 6 * 3600.0)
    assert config.acme_listeners == (Listener("acme_http", "127.0.0.1", 8080),)


@pytest.mark.parametrize(
    ("text", "key", "words"),
    [
        ('[acme]\ndirectory = "http://ca.example/dir"\n', "acme.directory", "https://"),
        ("[acme]\nenabled = true\n[tls]\ncert = 'c.pem'\n", "acme.enabled", "[tls] cert"),
        ('[acme]\nemail = "nobody"\n', "acme.email", ""),
        ("[listen]\nacme_http = []\n", "listen.acme_http", "no addresses"),
    ],
)
def test_bad_acme_settings_are_one_line_naming_the_key(
    tmp_path: Path, text: str, key: str, words: str
) -> None:
    (problem,) = check_config(write(tmp_path, text))
    assert key in problem and words in problem, problem
    assert "\n" not in problem


def test_check_config_says_where_the_certificate_comes_from(tmp_path: Path) -> None:
    path = write(tmp_path, 'hostname = "mail.example.org"\n[acme]\nenabled = true\n')
    result = subprocess.run(
        [sys.executable, "-m", "postoffice", "check-config", "--config", str(path)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert (
        f"  tls certificate: ACME for mail.example.org from {LETS_ENCRYPT} (HTTP-01 on 0.0.0.0:80)"
        in result.stdout
    )


def test_with_mta_sts_on_the_certificate_names_each_domains_policy_host(tmp_path: Path) -> None:
    # RFC 8461 §3.3: senders fetch https://mta-sts.DOMAIN/ and check the certificate for that name.
    text = 'hostname = "mail.example.org"\ndomains = ["example.org", "Example.NET"]\n[acme]\nenabled = true\n'
    assert load_config(write(tmp_path, text)).acme_domains == ("mail.example.org",)  # [mta_sts] off
    for mode in ("enforce", "testing", "none"):
        config = load_config(write(tmp_path, text + f'[mta_sts]\nmode = "{mode}"\n'))
        assert config.acme_domains == ("mail.example.org", "mta-sts.example.org", "mta-sts.example.net")
    # Names given in [acme] domains are the operator's: nothing is added.
    given = text + 'domains = ["mail.example.org"]\n[mta_sts]\nmode = "enforce"\n'
    assert load_config(write(tmp_path, given)).acme_domains == ("mail.example.org",)
