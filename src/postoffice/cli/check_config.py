"""``postoffice check-config``: check a configuration file and say what it means.

Untrusted input seen here: the command line and the configuration file, the operator's; every
problem found is one line (:func:`postoffice.config.check_config`).
"""

from __future__ import annotations

import argparse
import sys

from postoffice.cli.common import Subparsers, config_options
from postoffice.config import Config, check_config, load_config


def add_parser(subparsers: Subparsers) -> None:
    check = subparsers.add_parser(
        "check-config",
        help="check a configuration file and summarise it",
        description="Check the configuration and print what it means; list every problem found.",
        parents=[config_options(data_dir=False)],
    )
    check.set_defaults(handler=_run_check_config)


def _run_check_config(args: argparse.Namespace) -> int:
    problems = check_config(args.config)
    if problems:
        for problem in problems:
            print(problem, file=sys.stderr)
        return 1
    config = load_config(args.config)
    if config.capture_mode:
        mode = "capture (no local domains: every recipient is accepted, nothing is relayed)"
    else:
        mode = f"MTA for {', '.join(config.domains)}"
    print(f"{args.config if args.config is not None else '(built-in defaults)'}: ok")
    print(f"  mode: {mode}")
    print(f"  hostname: {config.hostname}")
    print(f"  listeners: {', '.join(str(listener) for listener in config.listeners)}")
    tls = config.tls.cert or f"self-signed, made in {config.tls_dir} when a listener needs it"
    if config.acme.enabled:
        tls = (
            f"ACME for {', '.join(config.acme_domains)} from {config.acme.directory} ({_challenges(config)})"
        )
    print(f"  tls certificate: {tls}")
    print(f"  web: {', '.join(str(listener) for listener in config.http_listeners) or 'off'}")
    print(f"  data dir: {config.data_dir}")
    delivery = config.delivery
    if delivery.relay_host is not None:
        outbound = (
            f"through relay {delivery.relay_host[0]}:{delivery.relay_host[1]} (TLS: {delivery.relay_tls})"
        )
    else:
        resolver = f"{delivery.dns[0]}:{delivery.dns[1]}" if delivery.dns else "the system resolver"
        outbound = f"to MX hosts on port {delivery.mx_port}, looked up with {resolver}"
    print(f"  outbound mail: {outbound}")
    return 0


def _challenges(config: Config) -> str:
    """Which ACME challenges are answered where: ``HTTP-01 on 0.0.0.0:80, TLS-ALPN-01 on ...``."""
    https = ", ".join(listener.address for listener in config.http_listeners if listener.kind == "https")
    where = {
        "http-01": ", ".join(listener.address for listener in config.acme_listeners),
        "tls-alpn-01": https,
    }
    return "; ".join(f"{kind.upper()} on {where[kind]}" for kind in config.acme_challenges)
