"""How the adapter stores a write's outcome and announces its event.

* An outcome is stored as the write RPC's response message (``wallet.v1``), serialized:
  it is what a replay answers with, byte for byte. :func:`encode` builds it from the
  domain result; :meth:`StoredOutcome.replay` decodes it back into a domain result
  (``replayed = True``, the bytes kept in ``stored_response`` for the gRPC edge), or
  raises the stored error.
* An event is queued in the outbox as its events.proto message
  (:func:`wallet_platform.messaging.events.wallet_event_outbox_row`).

The event's protobuf is built once per write and serves both. Only the adapter sees
these bytes; the service layer hands in and gets back domain objects.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from wallet_platform.errors import IdempotencyKeyReusedError, error_from_record
from wallet_platform.messaging.events import wallet_event_outbox_row
from wallet_service import domain
from wallet_service.adapters.idempotency_sql import IdempotencyRecord
from wallet_service.messages import event_to_pb, response_to_pb, result_from_stored


@dataclass(frozen=True)
class Encoded:
    """A write's outcome as stored (``response``) and its event's outbox row."""

    response: bytes
    outbox_row: dict[str, Any] | None


def as_stored(result: domain.WriteResult, encoded: Encoded) -> domain.WriteResult:
    """``result`` carrying its stored form, which the gRPC edge answers with."""
    return replace(result, stored_response=encoded.response)


def encode(method: str, result: domain.WriteResult, traceparent: str | None = None) -> Encoded:
    """The stored response of ``result`` and, when it appended an event, its outbox row
    (carrying ``traceparent``, the trace context of the write, when tracing is on)."""
    if result.event is None:
        return Encoded(response_to_pb(method, result).SerializeToString(), None)
    event_pb = event_to_pb(result.event)
    response = response_to_pb(method, result, event_pb)
    outbox_row = wallet_event_outbox_row(event_pb, result.event.occurred_at, traceparent)
    return Encoded(response.SerializeToString(), outbox_row)


@dataclass(frozen=True)
class StoredOutcome:
    """What an idempotency key already holds, for the write that finds it taken."""

    key: domain.WriteKey
    record: IdempotencyRecord

    @property
    def same_request(self) -> bool:
        """Same method and parameters as the earlier request (else the key is reused)."""
        return self.record.fingerprint == self.key.fingerprint

    def replay(self) -> domain.WriteResult:
        """The earlier outcome: its result (``replayed``), or its error raised again.

        A key taken with another fingerprint raises ``IdempotencyKeyReusedError``.
        """
        record = self.record
        if not self.same_request:
            raise IdempotencyKeyReusedError(
                f"request_id {self.key.request_id!r} was already used with other parameters "
                "(or another method)",
                field="request_id",
            )
        if record.status_code != "OK":
            raise error_from_record(
                record.status_code, record.error_reason or "", record.error_message or ""
            )
        return result_from_stored(self.key.method, record.response or b"")


def stored_outcome(key: domain.WriteKey, record: IdempotencyRecord) -> StoredOutcome:
    return StoredOutcome(key, record)
