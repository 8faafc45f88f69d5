"""Roles, and what one credential (a bearer token or a client certificate) is granted.

Both kinds of credential are configured with the same grammar, so an operator learns
it once (``WALLET_AUTH_TOKENS`` for tokens, ``WALLET_TLS_CLIENT_ROLES`` for
certificates)::

    SPEC  = ENTRY *(";" ENTRY)            newlines count as ";"
    ENTRY = KEY "=" GRANT                 KEY: the token, or the certificate name
    GRANT = ROLE *("+" ROLE) ["[" PREFIX "]"]

``PREFIX`` limits the credential to one tenant: every wallet id in its requests must
start with it (``wallet_platform.server.tenancy``). It has the shape of a wallet id
(1-64 characters of ``[A-Za-z0-9._:-]``), so ``[acme-]`` reads "wallets acme-...".
Without it the credential may touch every wallet its roles allow.

A parse error is a ``ValueError`` naming the variable, so a typo stops the server at
start-up instead of silently granting more, or less, than was meant.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

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

# The shape of a wallet id (wallet_platform.validation.WALLET_ID_RE): a prefix of one.
WALLET_PREFIX_RE = re.compile(r"[A-Za-z0-9._:-]{1,64}")
_GRANT_RE = re.compile(r"(?P<roles>[^\[\]]*)(?:\[(?P<prefix>[^\[\]]*)\])?")


@dataclass(frozen=True)
class Principal:
    """An authenticated caller: who it is, what it may do, and on which wallets."""

    subject: str
    roles: frozenset[str]
    # None: every wallet; else only wallet ids starting with this (a tenant).
    wallet_prefix: str | None = None

    def may(self, role: str) -> bool:
        return any(role in ROLE_GRANTS.get(own, frozenset()) for own in self.roles)

    def owns(self, wallet_id: str) -> bool:
        """Whether this caller may name ``wallet_id`` in a request."""
        return self.wallet_prefix is None or wallet_id.startswith(self.wallet_prefix)


def spec_entries(spec: str, variable: str) -> Iterator[tuple[str, str]]:
    """The ``KEY=GRANT`` entries of a spec, stripped; ValueError on a malformed one."""
    seen: set[str] = set()
    for raw in spec.replace("\n", ";").split(";"):
        entry = raw.strip()
        if not entry:
            continue
        key, sep, rest = entry.partition("=")
        key, rest = key.strip(), rest.strip()
        if not sep or not key or not rest:
            raise ValueError(f"{variable} entries look like KEY=role[+role][[wallet-prefix]]")
        if key in seen:
            raise ValueError(f"{variable}: an entry is listed twice")
        seen.add(key)
        yield key, rest


def parse_grant(text: str, variable: str) -> tuple[frozenset[str], str | None]:
    """``writer+reader[acme-]`` -> the roles and the wallet-id prefix (None: all wallets)."""
    match = _GRANT_RE.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"{variable}: {text!r} is not role[+role][[wallet-prefix]]")
    roles = frozenset(r.strip() for r in match["roles"].split("+") if r.strip())
    unknown = roles - set(ROLES)
    if not roles or unknown:
        raise ValueError(
            f"{variable}: unknown role(s) {sorted(unknown)}; known: {', '.join(ROLES)}"
        )
    prefix = match["prefix"]
    if prefix is not None and not WALLET_PREFIX_RE.fullmatch(prefix):
        raise ValueError(
            f"{variable}: wallet prefix [{prefix}] must be 1-64 characters of [A-Za-z0-9._:-]"
        )
    return roles, prefix
