"""Who may call what: the method -> role table, bearer tokens, and the caller's identity.

Authorisation is configured per server (``wallet_platform.server.authority``): bearer
tokens (``WALLET_AUTH_TOKENS``), client-certificate roles under mutual TLS
(``WALLET_TLS_CLIENT_ROLES``, ``cert_roles``), or both. With neither every call is
allowed, which ``exposure`` refuses on a non-loopback address unless the operator
says ``--allow-insecure``. When configured, every RPC except health and reflection
needs a credential: an unknown or missing token is ``UNAUTHENTICATED`` and a known
credential without the role the method needs (or outside its wallet prefix, see
``tenancy``) is ``PERMISSION_DENIED``, as the gRPC status code guide prescribes.

``WALLET_AUTH_TOKENS`` is ``token=role[+role][[wallet-prefix]][@subject];...`` (the
grant grammar of ``grants``). The subject names the caller in the audit trail;
without one the caller is ``token:<hash prefix>`` so the token itself never reaches a
log or a table.

The method -> role table (:data:`METHOD_ROLES`) is the only place that decides what a
role may call; an RPC missing from it needs ``admin`` (new RPCs are closed until
someone decides otherwise).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import grpc

from wallet_platform.server.cert_roles import COMMON_NAME, peer_property
from wallet_platform.server.grants import (
    ADMIN,
    OPERATOR,
    ORCHESTRATOR,
    READER,
    WRITER,
    Principal,
    parse_grant,
    spec_entries,
)
from wallet_platform.server.handlers import with_behaviour

if TYPE_CHECKING:
    from wallet_platform.server.authority import Authority

TOKENS_VARIABLE = "WALLET_AUTH_TOKENS"

_WALLET = "/wallet.v1.WalletService/"
_TRANSFER = "/wallet.v1.TransferService/"

# The one table of who may call what (full gRPC method name -> required role).
METHOD_ROLES: Mapping[str, str] = {
    _WALLET + "CreateWallet": WRITER,
    _WALLET + "GetWallet": READER,
    _WALLET + "Deposit": WRITER,
    _WALLET + "Withdraw": WRITER,
    _WALLET + "ListWalletEvents": READER,
    _WALLET + "FreezeWallet": OPERATOR,
    _WALLET + "UnfreezeWallet": OPERATOR,
    _WALLET + "DebitForTransfer": ORCHESTRATOR,
    _WALLET + "CreditForTransfer": ORCHESTRATOR,
    _WALLET + "RefundForTransfer": ORCHESTRATOR,
    _TRANSFER + "CreateTransfer": WRITER,
    _TRANSFER + "BatchCreateTransfers": WRITER,
    _TRANSFER + "GetTransfer": READER,
    _TRANSFER + "ListTransfers": READER,
    _TRANSFER + "GetTransferSummary": READER,
    _TRANSFER + "WatchTransfers": READER,
    "/wallet.v1.AnalyticsService/GetWalletStats": READER,
    "/wallet.v1.FraudService/ListFraudAlerts": READER,
}
DEFAULT_ROLE = ADMIN

# Always open: load balancers and grpcurl must work without credentials.
OPEN_PREFIXES = (
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1alpha.ServerReflection/",
    "/grpc.reflection.v1.ServerReflection/",
)

AUTHORIZATION_HEADER = "authorization"
ANONYMOUS = "anonymous"


def required_role(method: str) -> str | None:
    """The role ``method`` needs, or None when it is open to everyone."""
    if method.startswith(OPEN_PREFIXES):
        return None
    return METHOD_ROLES.get(method, DEFAULT_ROLE)


def token_fingerprint(token: str) -> str:
    """A short, non-reversible name for a token (for logs and the audit trail)."""
    return "token:" + hashlib.sha256(token.encode()).hexdigest()[:10]


def parse_tokens(spec: str) -> dict[str, Principal]:
    """Parse ``token=role[+role][[prefix]][@subject];...``; raise ValueError on anything odd."""
    principals: dict[str, Principal] = {}
    for token, rest in spec_entries(spec, TOKENS_VARIABLE):
        grant, _, subject = rest.partition("@")
        subject = subject.strip()
        if "[" in subject or "]" in subject:
            # "t=writer@teller[acme-]" would otherwise be an unlimited token for a
            # subject named "teller[acme-]".
            raise ValueError(
                f"{TOKENS_VARIABLE}: the wallet prefix goes before @subject: "
                "token=role[wallet-prefix]@subject"
            )
        roles, prefix = parse_grant(grant, TOKENS_VARIABLE)
        principals[token] = Principal(subject or token_fingerprint(token), roles, prefix)
    return principals


def bearer_token(metadata: Iterable[tuple[str, Any]] | None) -> str | None:
    """The token of an ``authorization: Bearer ...`` header, if any."""
    for key, value in metadata or ():
        if key.lower() != AUTHORIZATION_HEADER:
            continue
        text = value.decode() if isinstance(value, bytes) else str(value)
        scheme, _, token = text.strip().partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
    return None


class TokenTable:
    """Looks tokens up without leaking, through timing, how much of one matched."""

    def __init__(self, principals: Mapping[str, Principal]) -> None:
        self._entries = [(token.encode(), principal) for token, principal in principals.items()]

    def __bool__(self) -> bool:
        return bool(self._entries)

    def lookup(self, token: str | None) -> Principal | None:
        if token is None:
            return None
        candidate = token.encode()
        found: Principal | None = None
        for known, principal in self._entries:
            if hmac.compare_digest(known, candidate):
                found = principal
        return found


def certificate_subject(context: grpc.aio.ServicerContext) -> str | None:
    """The common name of a verified client certificate (mTLS), if any."""
    names = peer_property(context, COMMON_NAME)
    return names[0] if names else None


def caller_identity(
    context: grpc.aio.ServicerContext,
    tokens: TokenTable | None = None,
    *,
    certificates: bool = True,
) -> str:
    """Who is calling, for the audit trail: token subject, else certificate CN, else anonymous.

    ``certificates=False`` (a plaintext server: no client certificate can exist) skips
    the auth context, which costs a noticeable share of a call's CPU.
    """
    parts: list[str] = []
    if tokens:
        principal = tokens.lookup(bearer_token(context.invocation_metadata()))
        if principal is not None:
            parts.append(principal.subject)
    cn = certificate_subject(context) if certificates else None
    if cn:
        parts.append(f"cn={cn}")
    return " ".join(parts) if parts else ANONYMOUS


def guard(
    method: str, handler: grpc.RpcMethodHandler, authority: Authority
) -> grpc.RpcMethodHandler:
    """``handler`` checking the caller's credentials before any servicer code runs.

    Built once per method by the plumbing interceptor (``wallet_platform.server.plumbing``);
    the credentials are read from each call (``authority.Authority.refusal``). Open
    methods (health, reflection) are returned unchanged. A refused call is aborted
    inside the handler, so the outer layers (audit, metrics) see it like any other and
    record its status. A streamed request cannot be checked against a tenant's wallet
    prefix up front, so the check gets ``None`` for it.
    """
    role = required_role(method)
    if role is None:
        return handler

    async def refuse(request: Any, context: grpc.aio.ServicerContext) -> None:
        refused = authority.refusal(method, role, context, request)
        if refused is not None:
            await context.abort(*refused)

    unary_request = not handler.request_streaming
    if handler.response_streaming:
        inner_stream = handler.unary_stream or handler.stream_stream

        async def streamed(request: Any, context: grpc.aio.ServicerContext) -> Any:
            await refuse(request if unary_request else None, context)
            async for item in inner_stream(request, context):
                yield item

        return with_behaviour(handler, streamed)
    inner = handler.unary_unary or handler.stream_unary

    async def answered(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await refuse(request if unary_request else None, context)
        return await inner(request, context)

    return with_behaviour(handler, answered)
