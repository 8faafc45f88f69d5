"""The audit layer of every server: each write call leaves one ``audit_log`` row.

:func:`audit` wraps every write RPC (those marked ``audited`` in the RPC table,
``rpc_policy``, and any RPC missing from it). For each call it

- makes an audit id (UUID) and puts it in ``logs.audit_id_var`` while the call runs,
  so the service can stamp it on the events and transfers the call produces
  and every log line of the call carries it;
- sends it back to the client as trailing metadata ``x-audit-id``;
- records method, request, caller identity, peer, start time, duration and the
  resulting status code, including calls refused by authentication, validation,
  limits or business rules. The request is stored as redacted JSON of at most 8 KiB,
  except for calls refused before they could act: those get a fixed-size summary
  (``observability.audit_request``), since anyone can send them with any body.

A call that arrives with ``x-audit-id`` (the orchestrator's step calls, sent by
``wallet_platform.channels``) still gets its own row, but the id it stamps on events is
the incoming one when the caller may set it (``audit_ids``: a caller holding the
``orchestrator`` role with authorisation on, a same-host peer with it off), so the
``CreateTransfer`` audit id leads to the debit, credit or refund entries in the ledger.

The rows go to ``observability.audit.AuditWriter``, which writes them in batches off
the hot path; while its backlog is full, write calls are refused up front
(``AUDIT_BACKLOG_FULL``) rather than run unaudited.

A batch call (``BatchDeposit``...) gets its own row plus one row per item
(``audit_batch``), each under the item's own audit id.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import TYPE_CHECKING, Any

import grpc

from wallet_platform.channels import AUDIT_ID_HEADER
from wallet_platform.clock import Clock, utcnow
from wallet_platform.errors import ResourceExhaustedError
from wallet_platform.observability.audit import AuditWriter, outcome_note
from wallet_platform.observability.audit_request import (
    MAX_REFUSED_MESSAGE,
    MAX_TEXT,
    REFUSED_STATUSES,
    request_json,
    request_summary,
)
from wallet_platform.observability.logs import audit_id_var
from wallet_platform.server.audit_batch import batch_request_json, item_rows, item_rows_bytes
from wallet_platform.server.audit_ids import trusted_audit_id
from wallet_platform.server.batches import is_batch_method, is_batch_request
from wallet_platform.server.builder import abort_with
from wallet_platform.server.handlers import with_behaviour
from wallet_platform.server.rpc_policy import policy
from wallet_platform.server.security import caller_identity

if TYPE_CHECKING:
    from wallet_platform.server.authority import Authority


class AuditBacklogFullError(ResourceExhaustedError):
    reason = "AUDIT_BACKLOG_FULL"
    retry_after = 2.0  # the backlog drains once the database takes rows again


def is_write_method(method: str) -> bool:
    """Whether every call to ``method`` is audited (``rpc_policy``; unlisted RPCs are)."""
    return policy(method).audited


def _status_name(code: Any) -> str:
    if isinstance(code, grpc.StatusCode):
        return code.name
    return "OK" if code is None else str(code)


def audit(
    method: str,
    handler: grpc.RpcMethodHandler,
    writer: AuditWriter,
    authority: Authority | None = None,
    clock: Clock = utcnow,
    *,
    certificates: bool = True,
) -> grpc.RpcMethodHandler:
    """``handler`` recording each call (see the module docstring); reads pass unchanged.

    Built once per method by the plumbing interceptor (``wallet_platform.server.plumbing``),
    outside the auth check so refused calls are recorded too. ``certificates=False``
    on a plaintext server (no client certificate to name the caller by).
    """
    if not handler.unary_unary or not is_write_method(method):
        return handler
    inner = handler.unary_unary
    tokens = authority.tokens if authority else None  # names the caller
    # A batch's items get their own rows and audit ids (audit_batch); an incoming
    # x-audit-id names one transfer, never a batch of them, so a batch ignores it.
    batch = is_batch_method(method)

    async def audited(request: Any, context: grpc.aio.ServicerContext) -> Any:
        audit_id = str(uuid.uuid4())
        started_at = clock()
        t0 = time.perf_counter()
        context.set_trailing_metadata(((AUDIT_ID_HEADER, audit_id),))
        batch_call = batch and is_batch_request(method, request)
        trusted = None if batch else trusted_audit_id(context, authority)
        reset = audit_id_var.set(trusted or audit_id)
        note_reset = outcome_note.set(None)
        status = "OK"
        error_message: str | None = None
        response: Any = None
        reserved = 0
        try:
            if batch_call and writer.accepting_writes:
                wanted = item_rows_bytes(method, request)
                reserved = wanted if writer.backlog.reserve(wanted) else -1
            if not writer.accepting_writes or reserved < 0:
                reserved = 0
                await abort_with(
                    context,
                    AuditBacklogFullError(
                        "the audit trail cannot be written right now (database slow or "
                        "down); nothing was changed, retry later with the same request_id"
                    ),
                )
            response = await inner(request, context)
            code = context.code()
            status = _status_name(code)
            if status != "OK":
                error_message = context.details() or None
            return response
        except asyncio.CancelledError:
            status = "CANCELLED"
            raise
        except BaseException as error:
            code = context.code()
            status = _status_name(code) if code is not None else "UNKNOWN"
            if status == "OK":
                status = "UNKNOWN"
            error_message = context.details() or str(error) or type(error).__name__
            raise
        finally:
            audit_id_var.reset(reset)
            note = outcome_note.get()
            outcome_note.reset(note_reset)
            if status == "OK" and note:
                error_message = note
            refused = status in REFUSED_STATUSES
            limit = MAX_REFUSED_MESSAGE if refused else MAX_TEXT
            if refused:
                request_text = request_summary(request)
            elif batch_call:
                request_text = batch_request_json(method, request)
            else:
                request_text = request_json(request)
            row = {
                "audit_id": audit_id,
                "method": method,
                "request_json": request_text,
                "caller": caller_identity(context, tokens, certificates=certificates)[:128],
                "peer": (context.peer() or "")[:128],
                "status_code": status,
                "error_message": error_message[:limit] if error_message else None,
                "started_at": started_at,
                "duration_ms": int((time.perf_counter() - t0) * 1000),
            }
            writer.submit(row, refused=refused)
            if batch_call and status == "OK" and response is not None:
                for item_row, item_refused in item_rows(method, request, response, row):
                    writer.submit(item_row, refused=item_refused)
            writer.backlog.release(reserved)

    return with_behaviour(handler, audited)
