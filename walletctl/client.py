"""gRPC channels for walletctl: one target per service, TLS, bearer token, deadline.

Every service defaults to ``--target`` (``WALLET_TARGET``, a ``wallet-stack``); a
per-service flag points one of them elsewhere when the services run as separate
processes. The TLS and token options are the client-side fields of
``wallet_platform.config.Settings`` (same environment variables), so one set of
variables configures the servers' clients and the operator's CLI alike.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc

from wallet.v1 import (
    analytics_pb2_grpc,
    fraud_pb2_grpc,
    transfer_pb2_grpc,
    wallet_pb2_grpc,
)
from wallet_platform.channels import AUDIT_ID_HEADER

SERVICES = ("wallet", "transfer", "analytics", "fraud")
_STUBS: dict[str, Any] = {
    "wallet": wallet_pb2_grpc.WalletServiceStub,
    "transfer": transfer_pb2_grpc.TransferServiceStub,
    "analytics": analytics_pb2_grpc.AnalyticsServiceStub,
    "fraud": fraud_pb2_grpc.FraudServiceStub,
}


@dataclass
class ClientConfig:
    """Where and how to reach the services."""

    target: str = "127.0.0.1:50051"
    service_targets: dict[str, str] = field(default_factory=dict)
    timeout: float = 10.0
    tls_ca: str = ""
    tls_client_cert: str = ""
    tls_client_key: str = ""
    tls_server_name: str = ""
    tls: bool = False
    auth_token: str = ""

    def target_for(self, service: str) -> str:
        return self.service_targets.get(service) or self.target

    @property
    def secure(self) -> bool:
        return self.tls or bool(self.tls_ca or self.tls_client_cert)

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        if not self.auth_token:
            return ()
        return (("authorization", f"Bearer {self.auth_token}"),)


def audit_id_of(call: Any) -> str | None:
    """The ``x-audit-id`` trailing metadata of a finished call, if the server sent one."""
    try:
        trailers = call.trailing_metadata() or ()
    except Exception:
        return None
    for key, value in trailers:
        if key == AUDIT_ID_HEADER:
            return str(value)
    return None


class CredentialsError(Exception):
    """A TLS file named by the options cannot be read (a usage error, exit 2)."""


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError as error:
        raise CredentialsError(f"cannot read {path}: {error.strerror}") from None


def channel_credentials(config: ClientConfig) -> grpc.ChannelCredentials:
    root = _read(config.tls_ca) if config.tls_ca else None
    key = _read(config.tls_client_key) if config.tls_client_key else None
    chain = _read(config.tls_client_cert) if config.tls_client_cert else None
    return grpc.ssl_channel_credentials(
        root_certificates=root, private_key=key, certificate_chain=chain
    )


def open_channel(config: ClientConfig, target: str) -> grpc.Channel:
    # Our own subchannels: a channel never inherits another channel's connection
    # back-off (gRPC shares them process-wide by default), so a command run right after
    # a server restart connects at once instead of failing fast on a stale state.
    # Short reconnect back-off: the live dashboard is back within 2 s of a restart.
    options: list[tuple[str, Any]] = [
        ("grpc.use_local_subchannel_pool", 1),
        ("grpc.initial_reconnect_backoff_ms", 200),
        ("grpc.max_reconnect_backoff_ms", 2000),
    ]
    if config.tls_server_name:
        options.append(("grpc.ssl_target_name_override", config.tls_server_name))
    if config.secure:
        return grpc.secure_channel(target, channel_credentials(config), options=options)
    return grpc.insecure_channel(target, options=options)


class Clients:
    """Lazily opened channels and stubs, closed together at the end of a command."""

    def __init__(self, config: ClientConfig) -> None:
        self.config = config
        self._channels: dict[str, grpc.Channel] = {}
        self.last_audit_id: str | None = None

    def stub(self, service: str) -> Any:
        target = self.config.target_for(service)
        channel = self._channels.get(target)
        if channel is None:
            channel = open_channel(self.config, target)
            self._channels[target] = channel
        return _STUBS[service](channel)

    def call(self, service: str, method: str, request: Any, timeout: float | None = None) -> Any:
        """A unary call with the configured deadline and credentials metadata.

        The server's ``x-audit-id`` trailer (set on audited writes) is kept in
        ``last_audit_id`` so the operator can look the call up with ``walletctl audit``.
        """
        rpc = getattr(self.stub(service), method)
        self.last_audit_id = None
        try:
            response, call = rpc.with_call(
                request,
                timeout=self.config.timeout if timeout is None else timeout,
                metadata=self.config.metadata,
            )
        except grpc.RpcError as error:
            self.last_audit_id = audit_id_of(error)
            raise
        self.last_audit_id = audit_id_of(call)
        return response

    def stream(self, service: str, method: str, request: Any, timeout: float | None) -> Any:
        """A server-streaming call (the caller cancels it or gives a deadline).

        It waits for the server to be reachable instead of failing at once, so a watch
        opened while a server restarts attaches as soon as it is back.
        """
        rpc = getattr(self.stub(service), method)
        return rpc(request, timeout=timeout, metadata=self.config.metadata, wait_for_ready=True)

    def close(self) -> None:
        for channel in self._channels.values():
            with contextlib.suppress(Exception):
                channel.close()
        self._channels.clear()


@contextlib.contextmanager
def clients(config: ClientConfig) -> Iterator[Clients]:
    opened = Clients(config)
    try:
        yield opened
    finally:
        opened.close()
