"""Roles for client certificates: ``WALLET_TLS_CLIENT_ROLES`` (mutual TLS only).

With mutual TLS the server has already verified, during the handshake, that the
client holds a certificate from ``WALLET_TLS_CLIENT_CA``; this mapping says what that
certificate may do, so a deployment can run on certificates alone, without tokens::

    WALLET_TLS_CLIENT_ROLES='saga-orchestrator=orchestrator;teller.example.com=writer[acme-]'

The key is a certificate name, compared exactly (case and all, no wildcard
expansion) with the certificate's DNS subject alternative names, in certificate
order, then its subject common name. The first of those names that has an entry
decides; the others are not consulted. The grant is the one of
``wallet_platform.server.grants`` (roles, optional wallet-id prefix).

A verified certificate none of whose names has an entry is authenticated but
authorised for nothing: ``PERMISSION_DENIED`` on every RPC that needs a role.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import grpc

from wallet_platform.server.grants import Principal, parse_grant, spec_entries

VARIABLE = "WALLET_TLS_CLIENT_ROLES"
# grpc's names for the verified peer certificate's properties.
COMMON_NAME = "x509_common_name"
DNS_NAMES = "peer_dns"


def parse_certificate_roles(spec: str) -> dict[str, Principal]:
    """``name=role[+role][[prefix]];...`` -> name -> Principal; ValueError if malformed."""
    entries: dict[str, Principal] = {}
    for name, grant in spec_entries(spec, VARIABLE):
        roles, prefix = parse_grant(grant, VARIABLE)
        entries[name] = Principal(f"certificate {name}", roles, prefix)
    return entries


def peer_property(context: grpc.aio.ServicerContext, name: str) -> list[str]:
    """The non-empty values of one property of the verified peer (empty without TLS)."""
    try:
        auth = context.auth_context() or {}
    except Exception:  # not every transport has an auth context
        return []
    values = (v.decode() if isinstance(v, bytes) else str(v) for v in auth.get(name) or ())
    return [value for value in values if value]


def certificate_names(context: grpc.aio.ServicerContext) -> list[str]:
    """The names a mapping entry may match, in precedence order: DNS SANs, then CN."""
    return [*peer_property(context, DNS_NAMES), *peer_property(context, COMMON_NAME)]


class CertificateRoles:
    """The certificate name -> grant table of one server."""

    def __init__(self, entries: Mapping[str, Principal]) -> None:
        self._entries = dict(entries)

    def __bool__(self) -> bool:
        return bool(self._entries)

    def lookup(self, names: Sequence[str]) -> Principal | None:
        """The grant of the first name that has an entry, or None."""
        for name in names:
            found = self._entries.get(name)
            if found is not None:
                return found
        return None

    def principal(self, context: grpc.aio.ServicerContext) -> Principal | None:
        return self.lookup(certificate_names(context))
