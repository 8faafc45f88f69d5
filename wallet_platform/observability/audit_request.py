"""What an audit row says about the request: redacted JSON, or a fixed-size summary.

A call that did something (or may have: accepted, rejected by a business rule, failed
on the way) keeps its request as JSON with secrets redacted, at most
:data:`MAX_REQUEST_JSON` bytes. A call refused before it could do anything
(:data:`REFUSED_STATUSES`: no or a wrong token, bad input, a server limit) is recorded
with :func:`request_summary` instead: the request's size and its identifiers when they
are well-formed, never its body. Anyone can send refused calls, so their rows must not
store what the caller chose to put in them.
"""

from __future__ import annotations

import json
import re
from typing import Any

from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message

REDACTED = "[REDACTED]"
# Field names that hold secrets, anywhere in a request.
_SECRET_FIELD = re.compile(
    r"(password|passwd|secret|credential|private_key|api_key|apikey|auth_token|access_token"
    r"|refresh_token|^token$|bearer|^pin$|card_number|cvv|iban)",
    re.IGNORECASE,
)
# json.dumps escapes every non-ASCII character, so characters are bytes here.
MAX_REQUEST_JSON = 8192
MAX_TEXT = 2000

# Status codes of calls refused before any servicer code could act on them.
REFUSED_STATUSES = frozenset(
    {"UNAUTHENTICATED", "PERMISSION_DENIED", "INVALID_ARGUMENT", "RESOURCE_EXHAUSTED"}
)
# What a refused call's row keeps of its error message (it may quote the bad input).
MAX_REFUSED_MESSAGE = 256
# The identifiers a refused call's summary names, when they look like identifiers.
SUMMARY_FIELDS = ("wallet_id", "from_wallet_id", "to_wallet_id", "transfer_id", "request_id")
_IDENTIFIER = re.compile(r"^[A-Za-z0-9._:@-]{1,64}$")


def redact(value: Any) -> Any:
    """A copy of a JSON-like value with every secret-named field replaced."""
    if isinstance(value, dict):
        return {
            key: (REDACTED if _SECRET_FIELD.search(str(key)) else redact(item))
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [redact(item) for item in value]
    return value


def request_json(request: Any, extra: dict[str, Any] | None = None) -> str:
    """The request as compact JSON with secrets redacted (bounded in size); ``extra``
    adds top-level keys (a batch item's link to its batch)."""
    if isinstance(request, Message):
        try:
            data: Any = MessageToDict(
                request,
                preserving_proto_field_name=True,
                always_print_fields_with_no_presence=True,
            )
        except TypeError:  # older protobuf without that keyword
            data = MessageToDict(request, preserving_proto_field_name=True)
    else:
        data = {"repr": repr(request)[:MAX_TEXT]}
    data.update(extra or {})
    text = json.dumps(redact(data), separators=(",", ":"), sort_keys=True, default=str)
    full, keep = text, MAX_REQUEST_JSON - 64
    while len(text) > MAX_REQUEST_JSON:  # escaping may grow the prefix: shrink until it fits
        text = json.dumps({"truncated": True, "prefix": full[:keep]})
        keep //= 2
    return text


def request_summary(request: Any, extra: dict[str, Any] | None = None) -> str:
    """A refused call's request in at most a few hundred bytes: its serialized size and
    the identifiers of :data:`SUMMARY_FIELDS` that are well-formed (else ``"[invalid]"``),
    plus ``extra`` (a batch item's link to its batch)."""
    summary: dict[str, Any] = {"omitted": "refused call", **(extra or {})}
    if isinstance(request, Message):
        summary["request_bytes"] = request.ByteSize()
        for name in SUMMARY_FIELDS:
            if name not in request.DESCRIPTOR.fields_by_name:
                continue
            value = getattr(request, name)
            if isinstance(value, str) and value:
                summary[name] = value if _IDENTIFIER.match(value) else "[invalid]"
    return json.dumps(summary, separators=(",", ":"), sort_keys=True)
