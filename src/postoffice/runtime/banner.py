"""What ``postoffice serve`` prints when it starts, and the one line when it cannot listen.

Untrusted input seen here: none; the banner shows the operator's configuration and the
addresses the listeners got. Scripts read the ``listening KIND HOST:PORT`` lines.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence

from postoffice.config import Config
from postoffice.errors import ListenError
from postoffice.net.server import BoundAddress
from postoffice.net.tls import ServerTls
from postoffice.pg.database import describe
from postoffice.smtpd.chaos import ChaosRules
from postoffice.web.server import HttpAddress

log = logging.getLogger("postoffice")


def say(line: str) -> None:
    """One line of the banner in one write: ``print`` writes the text and its newline
    separately, and a log line from another thread or worker (the same pipe, often) could land
    between them and break the ``listening`` line a script is waiting for."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def web_url(address: HttpAddress) -> str:
    """The web UI's URL for a browser on this machine (a wildcard address means loopback)."""
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(address.host, address.host)
    shown = f"[{host}]" if ":" in host else host
    return f"{address.scheme}://{shown}:{address.port}/"


def mail_where(config: Config) -> str:
    """Where the mail is: this node's Maildirs, or the cluster's database (never its password)."""
    if config.clustered:
        return f"node {config.node_name}; mail in the database {describe(config.storage.database or '')}"
    return f"mail in {config.mail_dir}"


def banner(
    config: Config,
    bound: Sequence[BoundAddress],
    http: Sequence[HttpAddress],
    tls: ServerTls | None,
    *,
    acme: Sequence[HttpAddress] = (),
) -> None:
    mode = (
        "capture mode: every recipient is accepted, nothing is relayed"
        if config.capture_mode
        else ("mail server for " + ", ".join(config.domains))
    )
    say(f"postoffice {config.hostname}: {mode}")
    for address in bound:
        say(f"listening {address}")
    for web_address in http:
        say(f"listening {web_address}")  # the web UI, JSON API and /metrics
    if http:
        # A URL a terminal makes clickable: the first thing a person wants after starting.
        # (The "listening" lines stay "listening KIND HOST:PORT": scripts read them.)
        say(f"web UI  {web_url(http[0])}")
    if config.worker_count > 1:  # a parent and its workers (operations.md#several-processes)
        say(f"workers {config.worker_count} server processes, sharing the listeners")
    say(f"data in {config.data_dir} ({mail_where(config)})")
    if tls is not None:
        say(f"tls certificate {tls.cert} ({tls.source}, re-read on SIGHUP)")
    if config.acme.enabled:
        where = ", ".join(f"{address.host}:{address.port}" for address in acme) or ", ".join(
            listener.address for listener in config.acme_listeners
        )
        if "http-01" not in config.acme_challenges:
            where = "the https listener (TLS-ALPN-01)"
        names = ", ".join(config.acme_domains)
        say(f"acme certificate for {names} from {config.acme.directory}; challenges on {where}")
    chaos = ChaosRules(config.data_dir, enabled=config.chaos_allowed).rules
    if chaos:
        stages = ", ".join(sorted({rule.stage for rule in chaos}))
        say(f"chaos   {len(chaos)} fault-injection rules in force at {stages} (postoffice chaos clear)")
    listeners = (*config.listeners, *config.imap_listeners)
    if config.capture_mode and any(not listener.is_loopback for listener in listeners):
        log.warning("capture mode on a non-loopback address: anyone who can reach it can file mail here")


def listen_failure(exc: ListenError, config: Config) -> str:
    """The one line for a listener that cannot listen: what failed, and the option that moves it.

    Mailpit and MailHog listen on 8025 too, so a taken web port is the likeliest first failure.
    """
    if exc.kind == "acme_http":  # no flag: the CA connects to port 80, set in the file
        where = f" in {config.source}" if config.source is not None else ""
        return f"postoffice: {exc}; the CA's HTTP-01 check needs it: set [listen] acme_http{where}"
    flag = f"--{exc.kind} HOST:PORT"
    if config.source is not None:
        flag += f" (or [listen] {exc.kind} in {config.source})"
    if exc.kind == "http":
        flag += ", or --no-http for no web UI"
    return f"postoffice: {exc}; choose another address with {flag}"
