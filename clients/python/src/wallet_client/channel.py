"""Channels to the platform: plaintext, TLS or mutual TLS, and the bearer token header."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc


@dataclass(frozen=True)
class TlsConfig:
    """TLS towards the platform (``WALLET_TLS_*`` on the servers).

    ``ca_cert`` verifies the server (``None``: the system's roots); ``client_cert`` and
    ``client_key`` (both or neither) are for servers that require mutual TLS;
    ``server_name`` overrides the name the server's certificate is checked against.
    All certificates and keys are PEM bytes.
    """

    ca_cert: bytes | None = None
    client_cert: bytes | None = None
    client_key: bytes | None = None
    server_name: str | None = None

    def __post_init__(self) -> None:
        if (self.client_cert is None) != (self.client_key is None):
            raise ValueError("client_cert and client_key go together (mutual TLS)")

    @classmethod
    def from_files(
        cls,
        ca_cert: str | Path | None = None,
        client_cert: str | Path | None = None,
        client_key: str | Path | None = None,
        server_name: str | None = None,
    ) -> TlsConfig:
        def read(path: str | Path | None) -> bytes | None:
            return Path(path).read_bytes() if path else None

        return cls(read(ca_cert), read(client_cert), read(client_key), server_name)

    def credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca_cert,
            private_key=self.client_key,
            certificate_chain=self.client_cert,
        )


def open_channel(
    target: str, tls: TlsConfig | None = None, options: tuple[tuple[str, Any], ...] = ()
) -> grpc.Channel:
    """A channel to ``target`` (``host:port``), over TLS when ``tls`` is given."""
    if tls is None:
        return grpc.insecure_channel(target, options=list(options))
    channel_options = list(options)
    if tls.server_name:
        channel_options.append(("grpc.ssl_target_name_override", tls.server_name))
    return grpc.secure_channel(target, tls.credentials(), options=channel_options)


def auth_metadata(token: str | None) -> tuple[tuple[str, str], ...]:
    """The ``authorization: Bearer`` header the platform's token auth reads."""
    if not token:
        return ()
    if any(ch in token for ch in "\r\n") or token != token.strip():
        raise ValueError("a bearer token is one line without surrounding spaces")
    return (("authorization", f"Bearer {token}"),)
