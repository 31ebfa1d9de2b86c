"""The pieces every part of the OpenAPI document is made of: references, JSON bodies, the
error answer, and the parameters and answers many calls share.

Untrusted input seen here: none; this module declares.
"""

from __future__ import annotations

from typing import Any


def ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def json_body(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def error(description: str) -> dict[str, Any]:
    return json_body(ref("Error"), description)


MESSAGE_ID = {
    "name": "id",
    "in": "path",
    "required": True,
    "description": "The message's id, as listed by GET /api/v1/messages.",
    "schema": {"type": "integer", "minimum": 1, "maximum": 2**63 - 1},
}
CSRF = {
    "name": "X-CSRF-Token",
    "in": "header",
    "required": True,
    "description": "The csrf_token of GET /api/v1/session; required on every call that changes something.",
    "schema": {"type": "string"},
}
UNAUTHORISED = error("Not logged in.")
NOT_FOUND = error("No such message, or not one the caller may see.")
