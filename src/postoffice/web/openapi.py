"""The OpenAPI 3.1 description of ``/api/v1``, written by hand and served as JSON.

Untrusted input seen here: none; this is a constant document. Tests validate it with
openapi-spec-validator and fuzz the live server against it with schemathesis, so the
document and the code cannot drift apart unnoticed.
"""

from __future__ import annotations

from typing import Any

from postoffice import __version__
from postoffice.maildir.folders import FOLDER_PATTERN
from postoffice.web import openapi_toolkit
from postoffice.web.api import DEFAULT_LIMIT, MAX_OFFSET
from postoffice.web.authresults import POLICIES, RESULTS, VERDICTS
from postoffice.web.index import MAX_PAGE
from postoffice.web.message import SNIPPET_LENGTH
from postoffice.web.openapi_parts import CSRF as _CSRF
from postoffice.web.openapi_parts import MESSAGE_ID as _MESSAGE_ID
from postoffice.web.openapi_parts import NOT_FOUND as _NOT_FOUND
from postoffice.web.openapi_parts import UNAUTHORISED as _UNAUTHORISED
from postoffice.web.openapi_parts import error as _error
from postoffice.web.openapi_parts import json_body as _json
from postoffice.web.openapi_parts import ref as _ref
from postoffice.web.tags import MAX_TAGS, TAG_PATTERN, TAG_PATTERN_ANY_CASE

_FORBIDDEN = _error("Missing or wrong X-CSRF-Token, or a mailbox that is not the caller's.")

_SUMMARY_PROPERTIES: dict[str, Any] = {
    "id": {"type": "integer"},
    "mailbox": {"type": "string", "description": "The mailbox (address) the message was delivered to."},
    "from": {"type": "string", "description": "The From header, decoded."},
    "to": {"type": "string", "description": "To, Cc and the envelope recipient, decoded."},
    "subject": {"type": "string"},
    "date": {
        "type": ["string", "null"],
        "format": "date-time",
        "description": "The Date header (UTC), or the time received when it has none.",
    },
    "received": {"type": ["string", "null"], "format": "date-time"},
    "size": {"type": "integer", "description": "Octets, as stored."},
    "read": {"type": "boolean", "description": "The Maildir 'S' (seen) flag."},
    "has_attachments": {"type": "boolean"},
    "snippet": {
        "type": "string",
        "maxLength": SNIPPET_LENGTH,
        "description": "The start of the body text on one line (whitespace runs as one space); empty if none.",
    },
    "folder": {
        "type": "string",
        "description": 'The folder the message is in: "INBOX", or a Maildir++ folder ("Junk",'
        ' "Archive/2024"); mail the server quarantined (DMARC p=quarantine) is in "Junk", listed'
        " but not counted as unread. Searched with in:.",
    },
    "authentication": {
        "anyOf": [_ref("Authentication"), {"type": "null"}],
        "description": "The results of checking the message on arrival; null for mail that was not"
        " checked (submitted by a user, captured).",
    },
    "tags": {
        "type": "array",
        "items": {"type": "string", "pattern": TAG_PATTERN},
        "description": "Its tags, sorted: from its X-Tags field, its recipient's plus-address"
        " (alice+signup@ tags signup) and PUT /api/v1/messages/{id}/tags. Searched with tag:.",
    },
}


def _result(method: str, **names: dict[str, Any]) -> dict[str, Any]:
    """One method's result object: ``result`` and what it was about (``names``)."""
    properties: dict[str, Any] = {"result": {"type": "string", "enum": list(RESULTS[method])}, **names}
    return {"type": "object", "required": list(properties), "properties": properties}


def _or_null(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"anyOf": [schema, {"type": "null"}], "description": description}


def _text(description: str) -> dict[str, Any]:
    return {"type": ["string", "null"], "description": description}


_AUTHENTICATION: dict[str, Any] = {
    "type": "object",
    "description": "The server's own Authentication-Results field (RFC 8601), as it checked the message.",
    "required": ["verdict", "spf", "dkim", "dmarc", "arc"],
    "properties": {
        "verdict": {
            "type": "string",
            "enum": list(VERDICTS),
            "description": "DMARC's result when it is pass or fail; else fail if SPF failed (fail, softfail)"
            " or no DKIM signature verified and one failed, pass if SPF or a signature passed, none"
            " otherwise. Searched with auth:.",
        },
        "spf": _or_null(
            _result("spf", domain=_text("The MAIL FROM domain, or the HELO name.")), "SPF (RFC 7208)."
        ),
        "dkim": {
            "type": "array",
            "description": "One entry per DKIM signature (RFC 6376).",
            "items": _result(
                "dkim", domain=_text("d=, the signing domain."), selector=_text("s=, the selector.")
            ),
        },
        "dmarc": _or_null(
            _result(
                "dmarc",
                domain=_text("The From domain."),
                policy=_or_null(
                    {"type": "string", "enum": list(POLICIES)},
                    "The domain's policy (p=) for mail that fails.",
                ),
            ),
            "DMARC (RFC 7489).",
        ),
        "arc": _or_null(_result("arc"), "ARC (RFC 8617): the chain's validation status."),
    },
}

_SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {"error": {"type": "string"}},
    },
    "Session": {
        "type": "object",
        "required": ["address", "mailbox", "admin", "csrf_token", "login_required"],
        "properties": {
            "address": {"type": ["string", "null"], "description": "null when no login is needed."},
            "mailbox": {"type": ["string", "null"]},
            "admin": {"type": "boolean", "description": "Sees every mailbox."},
            "csrf_token": {"type": "string"},
            "login_required": {"type": "boolean"},
        },
    },
    "Login": {
        "type": "object",
        "required": ["address", "password"],
        "properties": {
            "address": {"type": "string", "minLength": 1},
            "password": {"type": "string", "minLength": 1, "format": "password"},
        },
    },
    "Mailbox": {
        "type": "object",
        "required": ["address", "total", "unread"],
        "properties": {
            "address": {"type": "string"},
            "total": {"type": "integer", "minimum": 0},
            "unread": {"type": "integer", "minimum": 0},
        },
    },
    "Folder": {
        "type": "object",
        "required": ["name", "special_use", "total", "unread"],
        "properties": {
            "name": {
                "type": "string",
                "description": 'INBOX, or a Maildir++ folder ("Junk", "Archive/2024").',
            },
            "special_use": {
                "type": ["string", "null"],
                "description": "RFC 6154's attribute (\\Junk, \\Trash, \\Archive, \\Sent, \\Drafts).",
            },
            "total": {"type": "integer", "minimum": 0},
            "unread": {"type": "integer", "minimum": 0},
        },
    },
    "Move": {
        "type": "object",
        "required": ["folder"],
        "additionalProperties": False,
        "properties": {
            "folder": {
                "type": "string",
                "pattern": FOLDER_PATTERN,
                "description": 'Where to: "INBOX", "Archive", "Junk", "Trash" or any folder name (levels'
                " of letters, digits, spaces, - and _ joined by /); made when missing.",
            }
        },
    },
    "MessageSummary": {
        "type": "object",
        "required": list(_SUMMARY_PROPERTIES),
        "properties": _SUMMARY_PROPERTIES,
    },
    "Authentication": _AUTHENTICATION,
    "MessageList": {
        "type": "object",
        "required": ["total", "messages"],
        "properties": {
            "total": {"type": "integer", "minimum": 0, "description": "All matches, not only this page."},
            "messages": {"type": "array", "items": _ref("MessageSummary")},
        },
    },
    "Attachment": {
        "type": "object",
        "required": ["name", "content_type", "size", "content_id", "url"],
        "properties": {
            "name": {"type": "string"},
            "content_type": {"type": "string"},
            "size": {"type": "integer", "minimum": 0},
            "content_id": {"type": ["string", "null"], "description": "For inline images (cid:)."},
            "url": {"type": "string"},
        },
    },
    "Message": {
        "type": "object",
        "required": [*_SUMMARY_PROPERTIES, "headers", "text", "html", "remote_content", "attachments"],
        "properties": {
            **_SUMMARY_PROPERTIES,
            "headers": {
                "type": "array",
                "description": "Every header field in order, decoded (RFC 2047).",
                "items": {
                    "type": "object",
                    "required": ["name", "value"],
                    "properties": {"name": {"type": "string"}, "value": {"type": "string"}},
                },
            },
            "text": {"type": ["string", "null"], "description": "The text/plain body."},
            "html": {
                "type": ["string", "null"],
                "description": "The text/html body, sanitised (no script, forms, frames or event handlers);"
                " inline cid: images embedded as data: URLs.",
            },
            "remote_content": {"type": "boolean", "description": "The HTML refers to remote images or CSS."},
            "attachments": {"type": "array", "items": _ref("Attachment")},
        },
    },
    "TagSet": {
        "type": "object",
        "required": ["tags"],
        "additionalProperties": False,
        "properties": {
            "tags": {
                "type": "array",
                "maxItems": MAX_TAGS,
                "items": {"type": "string", "pattern": TAG_PATTERN_ANY_CASE},
                "description": "Letters, digits, '.', '_' and '-' (kept in lower case).",
            }
        },
    },
    "MessageTags": {
        "type": "object",
        "required": ["id", "tags"],
        "properties": {"id": {"type": "integer"}, "tags": {"type": "array", "items": {"type": "string"}}},
    },
    "ReadState": {
        "type": "object",
        "required": ["read"],
        "additionalProperties": False,
        "properties": {"read": {"type": "boolean"}},
    },
    "Deleted": {
        "type": "object",
        "required": ["deleted"],
        "properties": {"deleted": {"type": "integer", "minimum": 0}},
    },
}

_PATHS: dict[str, Any] = {
    "/api/v1/session": {
        "get": {
            "summary": "Who the caller is, and the CSRF token for changes",
            "operationId": "getSession",
            "responses": {"200": _json(_ref("Session"), "The session."), "401": _UNAUTHORISED},
        }
    },
    "/api/v1/login": {
        "post": {
            "summary": "Log in with a mail account (sets an HttpOnly session cookie)",
            "operationId": "login",
            "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("Login")}}},
            "responses": {
                "200": _json(_ref("Session"), "Logged in."),
                "400": _error("Address or password missing."),
                "401": _error("Wrong address or password."),
                "413": _error("Body too large."),
                "415": _error("Body is not JSON."),
                "429": _error("Too many failed logins; see Retry-After."),
            },
        }
    },
    "/api/v1/logout": {
        "post": {
            "summary": "End the session",
            "operationId": "logout",
            "parameters": [_CSRF],
            "responses": {"204": {"description": "Logged out."}, "401": _UNAUTHORISED, "403": _FORBIDDEN},
        }
    },
    "/api/v1/mailboxes": {
        "get": {
            "summary": "The mailboxes the caller may see, with counts",
            "operationId": "listMailboxes",
            "responses": {
                "200": _json({"type": "array", "items": _ref("Mailbox")}, "Mailboxes by address."),
                "401": _UNAUTHORISED,
            },
        }
    },
    "/api/v1/mailboxes/{address}/messages": {
        "delete": {
            "summary": "Delete every message in a mailbox",
            "operationId": "clearMailbox",
            "parameters": [
                {"name": "address", "in": "path", "required": True, "schema": {"type": "string"}},
                _CSRF,
            ],
            "responses": {
                "200": _json(_ref("Deleted"), "How many messages were deleted."),
                "401": _UNAUTHORISED,
                "403": _FORBIDDEN,
                "404": _error("No such mailbox."),
            },
        }
    },
    "/api/v1/mailboxes/{address}/folders": {
        "get": {
            "summary": "A mailbox's folders, with counts",
            "description": "INBOX first, then every Maildir++ folder of the mailbox, and Archive, Junk"
            " and Trash even before they exist (a move makes them).",
            "operationId": "listFolders",
            "parameters": [{"name": "address", "in": "path", "required": True, "schema": {"type": "string"}}],
            "responses": {
                "200": _json({"type": "array", "items": _ref("Folder")}, "The folders."),
                "401": _UNAUTHORISED,
                "403": _FORBIDDEN,
                "404": _error("No such mailbox."),
            },
        }
    },
    "/api/v1/messages": {
        "get": {
            "summary": "List or search messages, newest first",
            "description": 'Search syntax (Mailpit\'s): free words and "phrases", from:, to:, subject:,'
            " has:attachment, is:read, is:unread, before:YYYY-MM-DD, after:YYYY-MM-DD, larger:1M,"
            " smaller:500K; and the authentication results: auth:pass|fail|none (the verdict),"
            " spf:, dkim: (any signature), dmarc:, arc: with a result (pass, fail, softfail, none,"
            " neutral, temperror, permerror, policy); in:INBOX, in:Junk, in:Trash (the folder);"
            " tag:NAME (the message's tags);"
            " prefix any term with - to negate it.",
            "operationId": "listMessages",
            "parameters": [
                {
                    "name": "mailbox",
                    "in": "query",
                    "description": "Only this mailbox; all the caller may see when absent.",
                    "schema": {"type": "string"},
                },
                {"name": "q", "in": "query", "description": "A search query.", "schema": {"type": "string"}},
                {
                    "name": "limit",
                    "in": "query",
                    "schema": {
                        "type": "integer",
                        "minimum": 1,
                        "maximum": MAX_PAGE,
                        "default": DEFAULT_LIMIT,
                    },
                },
                {
                    "name": "offset",
                    "in": "query",
                    "schema": {"type": "integer", "minimum": 0, "maximum": MAX_OFFSET, "default": 0},
                },
            ],
            "responses": {
                "200": _json(_ref("MessageList"), "A page of messages."),
                "400": _error("A parameter or the query cannot be understood."),
                "401": _UNAUTHORISED,
                "403": _FORBIDDEN,
            },
        }
    },
    "/api/v1/messages/{id}": {
        "get": {
            "summary": "One message: headers, text, sanitised HTML, attachments",
            "operationId": "getMessage",
            "parameters": [_MESSAGE_ID],
            "responses": {
                "200": _json(_ref("Message"), "The message."),
                "401": _UNAUTHORISED,
                "404": _NOT_FOUND,
            },
        },
        "patch": {
            "summary": "Mark read or unread (the Maildir S flag)",
            "operationId": "updateMessage",
            "parameters": [_MESSAGE_ID, _CSRF],
            "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("ReadState")}}},
            "responses": {
                "200": _json(_ref("MessageSummary"), "The message as it is now."),
                "400": _error('The body is not {"read": true|false}.'),
                "401": _UNAUTHORISED,
                "403": _FORBIDDEN,
                "404": _NOT_FOUND,
                "413": _error("Body too large."),
                "415": _error("Body is not JSON."),
            },
        },
        "delete": {
            "summary": "Delete a message (its Maildir file)",
            "operationId": "deleteMessage",
            "parameters": [_MESSAGE_ID, _CSRF],
            "responses": {
                "204": {"description": "Deleted."},
                "401": _UNAUTHORISED,
                "403": _FORBIDDEN,
                "404": _NOT_FOUND,
            },
        },
    },
    "/api/v1/messages/{id}/tags": {
        "get": {
            "summary": "A message's tags",
            "operationId": "getTags",
            "parameters": [_MESSAGE_ID],
            "responses": {
                "200": _json(_ref("MessageTags"), "Its tags, sorted."),
                "401": _UNAUTHORISED,
                "404": _NOT_FOUND,
            },
        },
        "put": {
            "summary": "Replace a message's tags (kept in the index, by its Maildir key)",
            "operationId": "setTags",
            "parameters": [_MESSAGE_ID, _CSRF],
            "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("TagSet")}}},
            "responses": {
                "200": _json(_ref("MessageSummary"), "The message as it is now, with its tags."),
                "400": _error('The body is not {"tags": [...]}, or one of them is not a tag.'),
                "401": _UNAUTHORISED,
                "403": _FORBIDDEN,
                "404": _NOT_FOUND,
                "413": _error("Body too large."),
                "415": _error("Body is not JSON."),
            },
        },
    },
    "/api/v1/messages/{id}/move": {
        "post": {
            "summary": "Move a message to another folder of its mailbox (a Maildir rename)",
            "operationId": "moveMessage",
            "parameters": [_MESSAGE_ID, _CSRF],
            "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("Move")}}},
            "responses": {
                "200": _json(_ref("MessageSummary"), "The message as it is now (same id)."),
                "400": _error('The body is not {"folder": NAME}, or NAME is no folder name.'),
                "401": _UNAUTHORISED,
                "403": _FORBIDDEN,
                "404": _NOT_FOUND,
                "413": _error("Body too large."),
                "415": _error("Body is not JSON."),
                "503": _error("The mailbox cannot take the message now."),
            },
        }
    },
    "/api/v1/messages/{id}/raw": {
        "get": {
            "summary": "The message as stored (.eml)",
            "operationId": "getRawMessage",
            "parameters": [_MESSAGE_ID],
            "responses": {
                "200": {
                    "description": "The message source.",
                    "content": {"message/rfc822": {"schema": {"type": "string", "format": "binary"}}},
                },
                "401": _UNAUTHORISED,
                "404": _NOT_FOUND,
            },
        }
    },
    "/api/v1/messages/{id}/html": {
        "get": {
            "summary": "The sanitised HTML body as a document for a sandboxed frame",
            "description": "Served with a Content-Security-Policy that blocks scripts and every remote"
            " request; remote=1 allows https: images.",
            "operationId": "getMessageHtml",
            "parameters": [
                _MESSAGE_ID,
                {"name": "remote", "in": "query", "schema": {"type": "string", "enum": ["0", "1"]}},
            ],
            "responses": {
                "200": {
                    "description": "An HTML document.",
                    "content": {"text/html": {"schema": {"type": "string"}}},
                },
                "400": _error("remote is not 0 or 1."),
                "401": _UNAUTHORISED,
                "404": _error("No such message, or it has no HTML part."),
            },
        }
    },
    "/api/v1/messages/{id}/attachments/{n}": {
        "get": {
            "summary": "One attachment, decoded (always a download)",
            "operationId": "getAttachment",
            "parameters": [
                _MESSAGE_ID,
                {
                    "name": "n",
                    "in": "path",
                    "required": True,
                    "description": "Its position in the message's attachments list, from 0.",
                    "schema": {"type": "integer", "minimum": 0, "maximum": 1000000},
                },
            ],
            "responses": {
                "200": {
                    "description": "The attachment.",
                    "content": {
                        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}
                    },
                },
                "401": _UNAUTHORISED,
                "404": _error("No such message or attachment."),
            },
        }
    },
    "/api/v1/events": {
        "get": {
            "summary": "Live events (Server-Sent Events)",
            "description": "Event names: new (data: a MessageSummary), updated ({id, mailbox, read}; also"
            " folder after a move, tags after PUT .../tags),"
            " deleted ({id, mailbox}), cleared ({mailbox}). Only mailboxes the caller may see.",
            "operationId": "streamEvents",
            "responses": {
                "200": {"description": "An endless event stream.", "content": {"text/event-stream": {}}},
                "401": _UNAUTHORISED,
            },
        }
    },
    "/api/v1/openapi.json": {
        "get": {
            "summary": "This document",
            "operationId": "getOpenApi",
            "responses": {"200": {"description": "OpenAPI 3.1.", "content": {"application/json": {}}}},
        }
    },
}


def document() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "postoffice",
            "version": __version__,
            "description": "Read, search and manage the mailboxes of a postoffice mail server.",
        },
        "paths": {**_PATHS, **openapi_toolkit.PATHS},
        "components": {
            "schemas": {**_SCHEMAS, **openapi_toolkit.SCHEMAS},
            "securitySchemes": {
                "session": {"type": "apiKey", "in": "cookie", "name": "postoffice_session"},
            },
        },
        "security": [{"session": []}, {}],
    }
