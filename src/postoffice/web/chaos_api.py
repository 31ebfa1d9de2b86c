"""``/api/v1/chaos``: read, replace and clear the fault-injection rules.

Untrusted input seen here: the JSON body of ``PUT`` (at most :data:`MAX_BODY` octets), checked
rule by rule by :func:`postoffice.smtpd.chaos.parse_rules`; a wrong rule is refused whole, with
its one line. Only an administrator may touch the rules (in capture mode on loopback everyone
is one); outside capture mode they are refused unless the configuration sets ``allow_chaos``.
"""

from __future__ import annotations

import json
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from postoffice.smtpd.chaos import ChaosError, ChaosRule, ChaosRules, parse_rules
from postoffice.web.api import ApiError, MailApi, _by_method
from postoffice.web.auth import Principal

# Up to MAX_RULES rules of a few fields each.
MAX_BODY = 64 * 1024
_OFF = "fault injection is off outside capture mode; set allow_chaos = true in the configuration"


def rules_json(rules: tuple[ChaosRule, ...]) -> dict[str, Any]:
    return {"enabled": True, "rules": [rule.to_json() for rule in rules]}


class ChaosApi:
    def __init__(self, api: MailApi, rules: ChaosRules | None) -> None:
        self.api = api
        self.rules = rules

    def routes(self) -> list[BaseRoute]:
        wrap = self.api._handle
        handlers = {"GET": wrap(self.read), "PUT": wrap(self.replace), "DELETE": wrap(self.clear)}
        return [Route("/api/v1/chaos", _by_method(handlers), methods=list(handlers))]

    def _allowed(self, principal: Principal | None) -> ChaosRules:
        assert principal is not None
        if not principal.admin:
            raise ApiError(403, "only an administrator may set fault injection")
        if self.rules is None or not self.rules.enabled:
            raise ApiError(403, _OFF)
        return self.rules

    async def read(self, request: Request, principal: Principal | None) -> Response:
        rules = self._allowed(principal)
        await self.api._run(rules.refresh)
        return JSONResponse(rules_json(rules.rules))

    async def replace(self, request: Request, principal: Principal | None) -> Response:
        rules = self._allowed(principal)
        try:
            wanted = parse_rules(await _json_body(request))
        except ChaosError as exc:
            raise ApiError(400, str(exc)) from None
        await self.api._run(rules.replace, wanted)
        return JSONResponse(rules_json(rules.rules))

    async def clear(self, request: Request, principal: Principal | None) -> Response:
        rules = self._allowed(principal)
        await self.api._run(rules.replace, ())
        return JSONResponse(rules_json(rules.rules))


async def _json_body(request: Request) -> Any:
    """The body as JSON: a list of rules, or ``{"rules": [...]}``."""
    if request.headers.get("content-type", "").split(";")[0].strip().lower() != "application/json":
        raise ApiError(415, "send the body as application/json")
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY:
            raise ApiError(413, "the body is too large")
    try:
        value = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ApiError(400, "the body is not valid JSON") from None
    if isinstance(value, dict) and set(value) == {"rules"}:
        return value["rules"]
    return value
