"""The OpenAPI description of the testing toolkit's endpoints (waiting, links, codes, chaos),
merged into :func:`postoffice.web.openapi.document`.

Untrusted input seen here: none; this is a constant document.
"""

from __future__ import annotations

from typing import Any

from postoffice.web.wait import DEFAULT_WAIT, MAX_WAIT


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _error(description: str) -> dict[str, Any]:
    return _json(_ref("Error"), description)


_MESSAGE_ID = {
    "name": "id",
    "in": "path",
    "required": True,
    "description": "The message's id, as listed by GET /api/v1/messages.",
    "schema": {"type": "integer", "minimum": 1, "maximum": 2**63 - 1},
}
_UNAUTHORISED = _error("Not logged in.")
_NOT_FOUND = _error("No such message, or not one the caller may see.")

SCHEMAS: dict[str, Any] = {
    "Links": {
        "type": "object",
        "required": ["links"],
        "properties": {
            "links": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["url", "text", "source"],
                    "properties": {
                        "url": {
                            "type": "string",
                            "description": "As written (character references decoded).",
                        },
                        "text": {
                            "type": "string",
                            "description": "The anchor text; empty for a URL in text.",
                        },
                        "source": {"type": "string", "enum": ["html", "text"]},
                    },
                },
            }
        },
    },
    "Codes": {
        "type": "object",
        "required": ["codes"],
        "properties": {
            "codes": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["code", "context"],
                    "properties": {
                        "code": {"type": "string", "description": "4 to 64 letters, digits and dashes."},
                        "context": {"type": "string", "description": "The words around it."},
                    },
                },
            }
        },
    },
}

PATHS: dict[str, Any] = {
    "/api/v1/messages/wait": {
        "get": {
            "summary": "The newest matching message above an id, now or when it arrives",
            "description": "Answers at once when a message matches q (the search syntax of"
            " GET /api/v1/messages) and has an id above after; otherwise holds the request until"
            f" one is indexed, or answers 408 after timeout seconds (default {DEFAULT_WAIT:g}, at"
            f" most {MAX_WAIT:g}: a larger value is cut to it). Take the highest id you know first"
            " and wait after it: ids only grow.",
            "operationId": "waitForMessage",
            "parameters": [
                {"name": "q", "in": "query", "description": "A search query.", "schema": {"type": "string"}},
                {
                    "name": "after",
                    "in": "query",
                    "description": "Only messages with a higher id; any message when absent.",
                    "schema": {"type": "integer", "minimum": 0, "maximum": 2**63 - 1, "default": 0},
                },
                {
                    "name": "timeout",
                    "in": "query",
                    "description": "Seconds to hold the request.",
                    "schema": {"type": "number", "minimum": 0, "default": DEFAULT_WAIT},
                },
            ],
            "responses": {
                "200": _json(_ref("Message"), "The message, as GET /api/v1/messages/{id} gives it."),
                "400": _error("A parameter or the query cannot be understood (the search's error)."),
                "401": _UNAUTHORISED,
                "408": _error("No matching message arrived in time."),
            },
        }
    },
    "/api/v1/messages/{id}/links": {
        "get": {
            "summary": "Every link of the message (HTML and text parts), each URL once",
            "operationId": "getMessageLinks",
            "parameters": [_MESSAGE_ID],
            "responses": {"200": _json(_ref("Links"), "The links."), "401": _UNAUTHORISED, "404": _NOT_FOUND},
        }
    },
    "/api/v1/messages/{id}/codes": {
        "get": {
            "summary": "One-time codes and tokens next to words like code, PIN, token, verification",
            "operationId": "getMessageCodes",
            "parameters": [_MESSAGE_ID],
            "responses": {"200": _json(_ref("Codes"), "The codes."), "401": _UNAUTHORISED, "404": _NOT_FOUND},
        }
    },
}
