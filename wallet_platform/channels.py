"""Client channels that speak the platform's security settings.

Every client of a platform service (the orchestrator's stub to WalletService,
``walletctl``, ``wallet-bench``) opens its channel here, so TLS, mutual TLS, the bearer
token and audit-id propagation are configured once:

- ``WALLET_TLS_CA`` (CA that signed the server certificate) and/or
  ``WALLET_TLS_CLIENT_CERT`` + ``WALLET_TLS_CLIENT_KEY`` (mTLS) -> a TLS channel;
  neither -> plaintext (the local default).
- ``WALLET_AUTH_TOKEN`` -> ``authorization: Bearer <token>`` on every call.
- the current audit id (``observability.logs.audit_id_var``) -> ``x-audit-id`` request
  metadata, so the saga's step calls stamp their ledger events with the audit id of the
  ``CreateTransfer`` that started the saga.
- calls spread round-robin over every address the target resolves to
  (:data:`ROUND_ROBIN`): with ``dns:///`` and a headless Kubernetes Service, the
  orchestrator uses every WalletService replica instead of the first one gRPC's default
  ``pick_first`` policy connects to. A target with one address behaves as before.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import grpc

from wallet_platform.observability.logs import audit_id_var

# The metadata key of a write call's audit id: the trailer every write answer carries,
# and the header the orchestrator's step calls send (``server.audit_ids``).
AUDIT_ID_HEADER = "x-audit-id"
MAX_MESSAGE_BYTES = 4 * 1024 * 1024
# The default service config of every channel: the round_robin load-balancing policy.
ROUND_ROBIN = ("grpc.service_config", json.dumps({"loadBalancingConfig": [{"round_robin": {}}]}))
_BALANCING_OPTIONS = ("grpc.service_config", "grpc.lb_policy_name")


def _read(path: str) -> bytes:
    return Path(path).read_bytes()


def channel_credentials(settings: Any) -> grpc.ChannelCredentials | None:
    """TLS credentials from the client settings, or None for plaintext."""
    ca = getattr(settings, "tls_ca", "") or ""
    cert = getattr(settings, "tls_client_cert", "") or ""
    key = getattr(settings, "tls_client_key", "") or ""
    if not (ca or cert):
        return None
    if bool(cert) != bool(key):
        raise ValueError("WALLET_TLS_CLIENT_CERT and WALLET_TLS_CLIENT_KEY go together")
    return grpc.ssl_channel_credentials(
        root_certificates=_read(ca) if ca else None,
        private_key=_read(key) if key else None,
        certificate_chain=_read(cert) if cert else None,
    )


def _with_metadata(details: Any, extra: Sequence[tuple[str, str]]) -> Any:
    if not extra:
        return details
    metadata = list(details.metadata or ())
    present = {key for key, _ in metadata}
    metadata.extend((key, value) for key, value in extra if key not in present)
    return details._replace(metadata=tuple(metadata))


class CallMetadata:
    """The metadata every outgoing call carries: the bearer token and the current audit id.

    Called once per call (the audit id is read from the caller's context at that moment).
    :func:`make_channel` attaches it with an interceptor; a hot client may instead open
    its channel with ``metadata_interceptor=False`` and pass ``metadata=metadata()`` on
    each call itself: grpc.aio runs every intercepted call through an extra task and
    call object, a measurable share of the CPU of a small call (docs/benchmarks.md,
    "Saga throughput").
    """

    def __init__(self, settings: Any) -> None:
        token = getattr(settings, "auth_token", "") or ""
        self._static: tuple[tuple[str, str], ...] = (
            (("authorization", f"Bearer {token}"),) if token else ()
        )

    def __call__(self) -> tuple[tuple[str, str], ...]:
        audit_id = audit_id_var.get()
        if audit_id:
            return (*self._static, (AUDIT_ID_HEADER, audit_id))
        return self._static


class _AddsMetadata:
    """Adds :class:`CallMetadata` to an outgoing call's details."""

    def __init__(self, metadata: CallMetadata) -> None:
        self._metadata = metadata

    def _details(self, client_call_details: Any) -> Any:
        return _with_metadata(client_call_details, self._metadata())


class _UnaryMetadataInterceptor(_AddsMetadata, grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(
        self,
        continuation: Callable[[Any, Any], Awaitable[Any]],
        client_call_details: Any,
        request: Any,
    ) -> Any:
        return await continuation(self._details(client_call_details), request)


class _StreamMetadataInterceptor(_AddsMetadata, grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(
        self,
        continuation: Callable[[Any, Any], Awaitable[Any]],
        client_call_details: Any,
        request: Any,
    ) -> Any:
        return await continuation(self._details(client_call_details), request)


def metadata_interceptors(settings: Any) -> list[grpc.aio.ClientInterceptor]:
    """The interceptors that add :class:`CallMetadata` to unary and server-streaming calls.

    One object per kind of call: a grpc.aio channel files each interceptor under the
    first kind it implements only, so one object implementing both would never see a
    streaming call (``WatchTransfers`` would go out without the bearer token).
    """
    metadata = CallMetadata(settings)
    return [_UnaryMetadataInterceptor(metadata), _StreamMetadataInterceptor(metadata)]


def make_channel(
    target: str,
    settings: Any,
    *,
    options: Sequence[tuple[str, Any]] = (),
    interceptors: Sequence[grpc.aio.ClientInterceptor] = (),
    metadata_interceptor: bool = True,
) -> grpc.aio.Channel:
    """A ``grpc.aio`` channel to ``target`` with TLS/mTLS and the bearer token applied.

    Plaintext when no TLS setting is given; load-balanced with :data:`ROUND_ROBIN` unless
    ``options`` set a service config or policy of their own. Must be called inside a
    running event loop (grpc.aio binds channels to the loop that creates them).
    ``metadata_interceptor=False`` leaves the token and audit id to the caller (pass
    ``metadata=CallMetadata(settings)()`` on every call, see :class:`CallMetadata`).
    """
    all_options = [
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        *options,
    ]
    if not any(name in _BALANCING_OPTIONS for name, _ in options):
        all_options.append(ROUND_ROBIN)
    all_interceptors: list[grpc.aio.ClientInterceptor] = [*interceptors]
    if metadata_interceptor:
        all_interceptors[:0] = metadata_interceptors(settings)
    credentials = channel_credentials(settings)
    if credentials is None:
        return grpc.aio.insecure_channel(target, options=all_options, interceptors=all_interceptors)
    return grpc.aio.secure_channel(
        target, credentials, options=all_options, interceptors=all_interceptors
    )
