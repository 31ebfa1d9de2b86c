"""``postoffice dns DOMAIN [--check]``: the records a local domain needs, printed or looked up.

Untrusted input seen here: the domain the operator typed (checked to be a configured local
domain by :func:`~postoffice.mailauth.records.mail_domain`) and, with ``--check``, DNS answers
(compared and shown escaped by :mod:`~postoffice.mailauth.records_check`).

Exit status: 0 when the records are printed, or with ``--check`` when every one is published
as wanted; 1 when one is not (or cannot be looked up), and for an error a person can fix (a
domain that is not local, a host name nobody can look up), as the other commands.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import TextIO

from postoffice.config import Config
from postoffice.dns_resolver import make_resolver
from postoffice.errors import ConfigError
from postoffice.mailauth import dkim_keys
from postoffice.mailauth.records import mail_domain, records_for, zone_text
from postoffice.mailauth.records_check import Finding, Status, check_records
from postoffice.mailauth.records_tls import transport_records, with_transport

# dnspython's default lifetime: one query, retries included.
DEFAULT_TIMEOUT = 5.0
MAX_TIMEOUT = 60.0


def run(
    config: Config,
    domain: str,
    *,
    check: bool = False,
    nameserver: tuple[str, int] | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    out: TextIO = sys.stdout,
    keys: dkim_keys.KeyStore | None = None,
) -> int:
    """Print the records (0), or with ``check`` look each up through ``nameserver`` (else the
    configured ``[delivery] dns``, else the system's) and print a line for each. ``keys``: where
    the DKIM keys are (default the data directory's)."""
    if not 0 < timeout <= MAX_TIMEOUT:
        raise ConfigError(
            f"{timeout:g}: give more than 0 and at most {MAX_TIMEOUT:g} seconds", key="--timeout"
        )
    ring = (keys or dkim_keys.KeyDirectory(config.data_dir)).ring()
    facts = with_transport(config, mail_domain(config, domain, ring.keys))
    _report_key_problems(config.data_dir, facts.domain, ring.problems)
    records = records_for(facts) + transport_records(facts)
    if not check:
        out.write(zone_text(facts, records))
        return 0
    resolver = make_resolver(nameserver or config.delivery.dns, timeout=timeout)
    findings = asyncio.run(check_records(records, resolver))
    _print_findings(findings, out)
    return 0 if all(finding.status is Status.OK for finding in findings) else 1


def _report_key_problems(data_dir: Path, domain: str, problems: tuple[str, ...]) -> None:
    """A key of this domain that could not be read is one the records lack: say so."""
    directory = str(data_dir / dkim_keys.KEY_DIRECTORY / domain)
    for problem in problems:
        if problem.startswith(directory):
            print(f"postoffice: {problem}", file=sys.stderr)


def _print_findings(findings: list[Finding], out: TextIO) -> None:
    """A line for each record, and a summary. When every lookup failed the same way (the server
    does not answer), that is one line, not one per record: nothing could be checked."""
    looked_up = [finding for finding in findings if finding.looked_up]
    reasons = {finding.detail for finding in looked_up if finding.status is Status.ERROR}
    if looked_up and len(reasons) == 1 and all(finding.status is Status.ERROR for finding in looked_up):
        print(f"error: {reasons.pop()}; no record could be checked", file=out)
        for finding in findings:
            if not finding.looked_up:
                print(finding.line(), file=out)
        return
    for finding in findings:
        print(finding.line(), file=out)
    wrong = sum(finding.status is not Status.OK for finding in findings)
    if wrong:
        print(f"{wrong} of {len(findings)} records need attention", file=out)
    else:
        print(f"all {len(findings)} records are published", file=out)
