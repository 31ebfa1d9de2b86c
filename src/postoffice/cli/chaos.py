"""``postoffice chaos set|list|clear``: the fault-injection rules of a running server.

Untrusted input seen here: the command line, and the server's answers (read by
:mod:`postoffice.client.api`). The server checks every rule (:mod:`postoffice.smtpd.chaos`) and
its one-line refusal is what the command prints.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from postoffice.cli.common import Subparsers
from postoffice.cli.wait import API_HELP
from postoffice.client.api import DEFAULT_API

_STAGES = "connect, ehlo, auth, mail, rcpt, data, data-end"


def add_parser(subparsers: Subparsers) -> None:
    chaos = subparsers.add_parser(
        "chaos",
        help="inject SMTP faults into a running server (testing)",
        description="Make a running server answer chosen SMTP stages with an error, hang up, or"
        " wait first: see docs/testing-toolkit.md.",
    )
    chaos.add_argument("--api", default=DEFAULT_API, metavar="URL", help=API_HELP)
    actions = chaos.add_subparsers(title="actions", metavar="ACTION", required=True)
    put = actions.add_parser("set", help="set a rule (replacing the others unless --add)")
    put.add_argument("stage", nargs="?", help=_STAGES)
    put.add_argument("reply", nargs="?", help="'451 4.3.0 Try again later', or disconnect")
    put.add_argument("--delay", type=float, metavar="S", help="seconds to wait first (a tarpit)")
    put.add_argument("--probability", type=float, metavar="P", help="from 0 to 1 (default 1)")
    put.add_argument("--sender", metavar="GLOB", help="only for senders matching, such as '*@shop.example'")
    put.add_argument("--recipient", metavar="GLOB", help="only for recipients matching")
    put.add_argument("--add", action="store_true", help="keep the rules already set")
    put.add_argument("--json", metavar="RULES", help="the whole set as a JSON list, instead of one rule")
    put.set_defaults(handler=_run_set)
    listed = actions.add_parser("list", help="show the rules in force")
    listed.set_defaults(handler=_run_list)
    clear = actions.add_parser("clear", help="remove every rule")
    clear.set_defaults(handler=_run_clear)


def _describe(rule: dict[str, Any]) -> str:
    words = [f"{rule.get('stage')}: {rule.get('reply') or 'go on'}"]
    if rule.get("delay"):
        words.append(f"after {rule['delay']:g} s")
    if rule.get("probability", 1) != 1:
        words.append(f"with probability {rule['probability']:g}")
    for name in ("sender", "recipient"):
        if rule.get(name):
            words.append(f"{name} {rule[name]}")
    return ", ".join(words)


def _print(answer: Any) -> int:
    rules = answer.get("rules", []) if isinstance(answer, dict) else []
    if not rules:
        print("no fault-injection rules")
    for rule in rules:
        print(_describe(rule))
    return 0


def _client(args: argparse.Namespace) -> Any:
    from postoffice.client.api import ApiClient

    return ApiClient(args.api)


def _run_set(args: argparse.Namespace) -> int:
    api = _client(args)
    if args.json is not None:
        try:
            rules = json.loads(args.json)
        except ValueError:
            print("postoffice: --json is not valid JSON", file=sys.stderr)
            return 1
    else:
        if args.stage is None:
            print(f"postoffice: name a stage ({_STAGES}) and a reply, or give --json", file=sys.stderr)
            return 1
        rule = {"stage": args.stage, "reply": args.reply, "delay": args.delay}
        rule.update(probability=args.probability, sender=args.sender, recipient=args.recipient)
        rules = [*api.call("GET", "/api/v1/chaos")["rules"]] if args.add else []
        rules.append({name: value for name, value in rule.items() if value is not None})
    return _print(api.call("PUT", "/api/v1/chaos", body=rules))


def _run_list(args: argparse.Namespace) -> int:
    return _print(_client(args).call("GET", "/api/v1/chaos"))


def _run_clear(args: argparse.Namespace) -> int:
    return _print(_client(args).call("DELETE", "/api/v1/chaos"))
