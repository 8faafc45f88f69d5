"""Who may call what: bearer tokens with roles, and the caller's identity.

Authentication is optional. With ``WALLET_AUTH_TOKENS`` empty (the local default)
every call is allowed and the caller is whoever the TLS client certificate says, or
``anonymous``. With tokens configured, every RPC except health and reflection needs
``authorization: Bearer <token>``; an unknown or missing token is ``UNAUTHENTICATED``
and a known token without the role the method needs is ``PERMISSION_DENIED``, as the
gRPC status code guide prescribes.

``WALLET_AUTH_TOKENS`` is ``token=role[+role][@subject];...``. The subject names the
caller in the audit trail; without one the caller is ``token:<hash prefix>`` so the
token itself never reaches a log or a table.

The method -> role table (:data:`METHOD_ROLES`) is the only place that decides who
may call what; an RPC missing from it needs ``admin`` (new RPCs are closed until
someone decides otherwise).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import grpc

from wallet_platform.server.handlers import with_behaviour

# --- roles -----------------------------------------------------------------------------

READER = "reader"
WRITER = "writer"
OPERATOR = "operator"
ORCHESTRATOR = "orchestrator"
ADMIN = "admin"
ROLES = (READER, WRITER, OPERATOR, ORCHESTRATOR, ADMIN)

# A role grants itself plus what is listed here (admin grants everything).
ROLE_GRANTS: Mapping[str, frozenset[str]] = {
    READER: frozenset({READER}),
    WRITER: frozenset({WRITER, READER}),
    OPERATOR: frozenset({OPERATOR, READER}),
    ORCHESTRATOR: frozenset({ORCHESTRATOR, READER}),
    ADMIN: frozenset(ROLES),
}

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


@dataclass(frozen=True)
class Principal:
    """An authenticated token: who it is and what it may do."""

    subject: str
    roles: frozenset[str]

    def may(self, role: str) -> bool:
        return any(role in ROLE_GRANTS.get(own, frozenset()) for own in self.roles)


def token_fingerprint(token: str) -> str:
    """A short, non-reversible name for a token (for logs and the audit trail)."""
    return "token:" + hashlib.sha256(token.encode()).hexdigest()[:10]


def parse_tokens(spec: str) -> dict[str, Principal]:
    """Parse ``token=role[+role][@subject];...``; raise ValueError on anything odd."""
    principals: dict[str, Principal] = {}
    for raw in spec.replace("\n", ";").split(";"):
        entry = raw.strip()
        if not entry:
            continue
        token, sep, rest = entry.partition("=")
        token = token.strip()
        if not sep or not token or not rest.strip():
            raise ValueError("WALLET_AUTH_TOKENS entries look like token=role[+role][@subject]")
        roles_part, _, subject = rest.partition("@")
        roles = frozenset(r.strip() for r in roles_part.split("+") if r.strip())
        unknown = roles - set(ROLES)
        if not roles or unknown:
            raise ValueError(
                f"WALLET_AUTH_TOKENS: unknown role(s) {sorted(unknown)}; known: {', '.join(ROLES)}"
            )
        if token in principals:
            raise ValueError("WALLET_AUTH_TOKENS: a token is listed twice")
        principals[token] = Principal(subject.strip() or token_fingerprint(token), roles)
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
    try:
        auth = context.auth_context() or {}
    except Exception:  # not every transport has an auth context
        return None
    names = auth.get("x509_common_name") or []
    if names:
        value = names[0]
        return value.decode() if isinstance(value, bytes) else str(value)
    return None


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


def refusal(
    tokens: TokenTable, method: str, role: str, metadata: Any
) -> tuple[grpc.StatusCode, str] | None:
    """Why a call to ``method`` (needing ``role``) with this metadata is refused, if it is."""
    principal = tokens.lookup(bearer_token(metadata))
    if principal is None:
        return grpc.StatusCode.UNAUTHENTICATED, "missing or unknown bearer token"
    if not principal.may(role):
        return (
            grpc.StatusCode.PERMISSION_DENIED,
            f"{principal.subject} lacks role {role!r} for {method.rsplit('/', 1)[-1]}",
        )
    return None


def guard(method: str, handler: grpc.RpcMethodHandler, tokens: TokenTable) -> grpc.RpcMethodHandler:
    """``handler`` checking the bearer token and its role before any servicer code runs.

    Built once per method by the plumbing interceptor (``wallet_platform.server.plumbing``); the
    token is read from each call's metadata. Open methods (health, reflection) are
    returned unchanged. A refused call is aborted inside the handler, so the outer
    layers (audit, metrics) see it like any other and record its status.
    """
    role = required_role(method)
    if role is None:
        return handler

    async def refuse(context: grpc.aio.ServicerContext) -> None:
        refused = refusal(tokens, method, role, context.invocation_metadata())
        if refused is not None:
            await context.abort(*refused)

    if handler.response_streaming:
        inner_stream = handler.unary_stream or handler.stream_stream

        async def streamed(request: Any, context: grpc.aio.ServicerContext) -> Any:
            await refuse(context)
            async for item in inner_stream(request, context):
                yield item

        return with_behaviour(handler, streamed)
    inner = handler.unary_unary or handler.stream_unary

    async def answered(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await refuse(context)
        return await inner(request, context)

    return with_behaviour(handler, answered)


def token_table(settings: Any) -> TokenTable | None:
    """The server's tokens from settings, or None when authentication is off."""
    spec = getattr(settings, "auth_tokens", "") or ""
    if not spec.strip():
        return None
    try:
        return TokenTable(parse_tokens(spec))
    except ValueError as error:
        raise SystemExit(str(error)) from None
