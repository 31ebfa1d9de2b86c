"""``contrib/postoffice.service`` parses (``systemd-analyze verify``) and stays hardened."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from conftest import require_tool

ROOT = Path(__file__).resolve().parent.parent


def test_the_systemd_unit_verifies_and_is_hardened(tmp_path: Path) -> None:
    analyze = require_tool("systemd-analyze")
    text = (ROOT / "contrib" / "postoffice.service").read_text(encoding="utf-8")
    for setting in (
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ReadWritePaths=/var/lib/postoffice",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "AmbientCapabilities=CAP_NET_BIND_SERVICE",
        "User=postoffice",
    ):
        assert f"\n{setting}" in text, setting
    # verify checks that the command exists: the unit's, pointed at this interpreter.
    unit = tmp_path / "postoffice.service"
    unit.write_text(
        re.sub(
            r"(?m)^ExecStart=/usr/local/bin/postoffice ", f"ExecStart={sys.executable} -m postoffice ", text
        ),
        encoding="utf-8",
    )
    assert f"ExecStart={sys.executable} -m postoffice serve" in unit.read_text()
    result = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    # verify exits 0 even for unknown keys and bad values; it names them on stderr.
    assert (result.returncode, result.stdout + result.stderr) == (0, "")
    exposure = subprocess.run(
        [analyze, "security", "--offline=true", "--threshold=30", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert exposure.returncode == 0, exposure.stdout[-400:]
