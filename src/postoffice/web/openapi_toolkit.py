"""The OpenAPI description of the testing toolkit's endpoints (waiting, links, codes, chaos),
merged into :func:`postoffice.web.openapi.document`.

Untrusted input seen here: none; this is a constant document.
"""

from __future__ import annotations

from typing import Any

from postoffice.smtpd.chaos import MAX_DELAY, MAX_RULES, REPLY_PATTERN, STAGES
from postoffice.web.openapi_parts import CSRF as _CSRF
from postoffice.web.openapi_parts import MESSAGE_ID as _MESSAGE_ID
from postoffice.web.openapi_parts import NOT_FOUND as _NOT_FOUND
from postoffice.web.openapi_parts import UNAUTHORISED as _UNAUTHORISED
from postoffice.web.openapi_parts import error as _error
from postoffice.web.openapi_parts import json_body as _json
from postoffice.web.openapi_parts import ref as _ref
from postoffice.web.wait import DEFAULT_WAIT, MAX_WAIT

_GLOB = {"type": ["string", "null"], "minLength": 1, "maxLength": 320}
_RULE: dict[str, Any] = {
    "type": "object",
    "required": ["stage"],
    "additionalProperties": False,
    "properties": {
        "stage": {"type": "string", "enum": list(STAGES)},
        "reply": {
            "type": ["string", "null"],
            "pattern": REPLY_PATTERN,
            "description": "A 4xx or 5xx reply, '451 4.3.0 Try again later' (the enhanced code optional,"
            " of the same class), or 'disconnect'; null for a delay alone.",
        },
        "delay": {
            "type": ["number", "null"],
            "minimum": 0,
            "maximum": MAX_DELAY,
            "description": "Seconds first.",
        },
        "probability": {"type": ["number", "null"], "minimum": 0, "maximum": 1, "default": 1},
        "sender": {**_GLOB, "description": "A glob on the MAIL FROM address."},
        "recipient": {**_GLOB, "description": "A glob on the RCPT TO address(es)."},
    },
    # A reply, or a delay to wait before going on.
    "anyOf": [
        {"required": ["reply"], "properties": {"reply": {"type": "string"}}},
        {"required": ["delay"], "properties": {"delay": {"type": "number", "exclusiveMinimum": 0}}},
    ],
}
_CHAOS_ERRORS = {
    "401": _UNAUTHORISED,
    "403": _error("Not an administrator, a missing X-CSRF-Token, or fault injection is not allowed here."),
}

SCHEMAS: dict[str, Any] = {
    "Release": {
        "type": "object",
        "required": ["to"],
        "additionalProperties": False,
        "properties": {
            "to": {
                "type": "array",
                "minItems": 1,
                "maxItems": 100,
                "items": {"type": "string", "format": "email"},
            },
            "from": {
                "type": "string",
                "description": "The envelope sender; the message's Return-Path when absent, '' for <>.",
            },
        },
    },
    "Released": {
        "type": "object",
        "required": ["queue_id", "from", "to"],
        "properties": {
            "queue_id": {"type": "string"},
            "from": {"type": "string"},
            "to": {"type": "array", "items": {"type": "string"}},
        },
    },
    "ChaosRule": _RULE,
    "ChaosRules": {
        "type": "object",
        "required": ["enabled", "rules"],
        "properties": {
            "enabled": {"type": "boolean"},
            "rules": {"type": "array", "items": _ref("ChaosRule")},
        },
    },
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
    "/api/v1/messages/{id}/release": {
        "post": {
            "summary": "Send a captured message on to real addresses (the relay host or MX)",
            "description": "Queued as a new message by the outbound route, without the Return-Path and"
            " Delivered-To fields of its local delivery; administrators only.",
            "operationId": "releaseMessage",
            "parameters": [_MESSAGE_ID, _CSRF],
            "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("Release")}}},
            "responses": {
                "202": _json(
                    _ref("Released"), "Queued; the queue ID names it in the log and postoffice queue."
                ),
                "400": _error("An address cannot be used."),
                "401": _UNAUTHORISED,
                "403": _error("Not an administrator, or a missing X-CSRF-Token."),
                "404": _NOT_FOUND,
                "413": _error("Body too large."),
                "415": _error("Body is not JSON."),
            },
        }
    },
    "/api/v1/chaos": {
        "get": {
            "summary": "The fault-injection rules in force",
            "operationId": "getChaos",
            "responses": {"200": _json(_ref("ChaosRules"), "The rules."), **_CHAOS_ERRORS},
        },
        "put": {
            "summary": "Replace the fault-injection rules (the whole set; [] clears)",
            "description": "Rules reach every worker process for connections opened from now on.",
            "operationId": "setChaos",
            "parameters": [_CSRF],
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": {"type": "array", "maxItems": MAX_RULES, "items": _ref("ChaosRule")}
                    }
                },
            },
            "responses": {
                "200": _json(_ref("ChaosRules"), "The rules now in force."),
                "400": _error("A rule cannot be used (the error names it and the field)."),
                **_CHAOS_ERRORS,
                "413": _error("Body too large."),
                "415": _error("Body is not JSON."),
            },
        },
        "delete": {
            "summary": "Remove every fault-injection rule",
            "operationId": "clearChaos",
            "parameters": [_CSRF],
            "responses": {"200": _json(_ref("ChaosRules"), "No rules."), **_CHAOS_ERRORS},
        },
    },
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
                "503": _error("The server stopped before a message or the timeout."),
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
