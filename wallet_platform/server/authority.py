"""Who may call what on one server: bearer tokens, certificate roles, or both.

A server authorises calls with every mechanism it is configured for:

- ``WALLET_AUTH_TOKENS`` only: the bearer token decides; a client certificate (if
  mutual TLS is on) is only named in the audit trail.
- ``WALLET_TLS_CLIENT_ROLES`` only (mutual TLS): the client certificate decides.
- both: BOTH must allow the call. A missing or unknown token is ``UNAUTHENTICATED``;
  a certificate without an entry, or either credential without the role or outside
  its wallet prefix, is ``PERMISSION_DENIED``. A stolen token is then useless without
  a certificate that may do the same, and the other way round.
- neither: no authorisation. With mutual TLS every verified certificate may call
  everything (``exposure`` warns at start-up); without it, anyone who can connect.

What a role may do, and which request fields a wallet prefix applies to, are decided
by one table alone: ``rpc_policy.POLICIES``.
"""

from __future__ import annotations

from typing import Any

import grpc

from wallet_platform.server.cert_roles import VARIABLE as CERT_ROLES_VARIABLE
from wallet_platform.server.cert_roles import (
    CertificateRoles,
    certificate_names,
    parse_certificate_roles,
)
from wallet_platform.server.grants import Principal
from wallet_platform.server.security import TokenTable, bearer_token, parse_tokens
from wallet_platform.server.tenancy import tenant_refusal

Refusal = tuple[grpc.StatusCode, str]
_NAMES_SHOWN = 4  # certificate names quoted in a refusal


def mutual_tls(settings: Any) -> bool:
    """Whether the server requires a client certificate signed by a CA it names."""
    return bool(getattr(settings, "tls_cert", "")) and bool(getattr(settings, "tls_client_ca", ""))


class Authority:
    """The credentials a server checks on every call that needs a role."""

    def __init__(
        self, tokens: TokenTable | None = None, certificates: CertificateRoles | None = None
    ) -> None:
        self.tokens = tokens if tokens else None
        self.certificates = certificates if certificates else None

    def __bool__(self) -> bool:
        return self.tokens is not None or self.certificates is not None

    def _principals(
        self, context: grpc.aio.ServicerContext
    ) -> tuple[list[Principal], Refusal | None]:
        """One principal per configured mechanism, or why the caller is refused outright."""
        principals: list[Principal] = []
        if self.tokens is not None:
            principal = self.tokens.lookup(bearer_token(context.invocation_metadata()))
            if principal is None:
                return [], (grpc.StatusCode.UNAUTHENTICATED, "missing or unknown bearer token")
            principals.append(principal)
        if self.certificates is not None:
            names = certificate_names(context)
            principal = self.certificates.lookup(names)
            if principal is None:
                shown = ", ".join(names[:_NAMES_SHOWN]) or "(no DNS name or common name)"
                return [], (
                    grpc.StatusCode.PERMISSION_DENIED,
                    f"client certificate {shown} has no entry in {CERT_ROLES_VARIABLE}",
                )
            principals.append(principal)
        return principals, None

    def refusal(
        self, method: str, role: str, context: grpc.aio.ServicerContext, request: Any
    ) -> Refusal | None:
        """Why this call to ``method`` (needing ``role``) is refused, or None if allowed.

        ``request`` is None when the request is streamed (tenant limits then refuse).
        """
        principals, refused = self._principals(context)
        if refused is not None:
            return refused
        for principal in principals:
            if not principal.may(role):
                return (
                    grpc.StatusCode.PERMISSION_DENIED,
                    f"{principal.subject} lacks role {role!r} for {method.rsplit('/', 1)[-1]}",
                )
        for principal in principals:
            outside = tenant_refusal(principal, method, request)
            if outside is not None:
                return grpc.StatusCode.PERMISSION_DENIED, outside
        return None

    def may_act_as(self, context: grpc.aio.ServicerContext, role: str) -> bool:
        """Whether every configured credential of this call holds ``role``."""
        principals, refused = self._principals(context)
        return refused is None and all(principal.may(role) for principal in principals)


def authority_from_settings(settings: Any) -> Authority | None:
    """The server's authority from settings, or None when nothing is configured.

    A malformed spec, or certificate roles without mutual TLS, stops the process.
    """
    token_spec = getattr(settings, "auth_tokens", "") or ""
    cert_spec = getattr(settings, "tls_client_roles", "") or ""
    try:
        tokens = TokenTable(parse_tokens(token_spec)) if token_spec.strip() else None
        certificates = (
            CertificateRoles(parse_certificate_roles(cert_spec)) if cert_spec.strip() else None
        )
    except ValueError as error:
        raise SystemExit(str(error)) from None
    if certificates is not None and not mutual_tls(settings):
        raise SystemExit(
            f"{CERT_ROLES_VARIABLE} needs mutual TLS: set WALLET_TLS_CERT, WALLET_TLS_KEY "
            "and WALLET_TLS_CLIENT_CA"
        )
    authority = Authority(tokens, certificates)
    return authority if authority else None
