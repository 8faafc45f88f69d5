"""Whose x-audit-id is honoured: the orchestrator role with tokens, a local peer without."""

from __future__ import annotations

from typing import Any

from wallet_platform.server.audit_ids import is_local_peer, trusted_audit_id
from wallet_platform.server.authority import Authority
from wallet_platform.server.security import TokenTable, parse_tokens

PARENT = "6f1c1f0e-8a59-4c5e-9d2f-2f4f7f3b9a10"


class Context:
    """What trusted_audit_id reads of a call: its metadata and peer."""

    def __init__(self, peer: str, metadata: tuple[tuple[str, Any], ...]) -> None:
        self._peer = peer
        self._metadata = metadata

    def peer(self) -> str:
        return self._peer

    def invocation_metadata(self) -> tuple[tuple[str, Any], ...]:
        return self._metadata


def test_local_peers() -> None:
    for peer in (
        "ipv4:127.0.0.1:5000",
        "ipv4:127.8.9.10:1",
        "ipv6:[::1]:5000",
        "ipv6:[::ffff:127.0.0.1]:5000",
        "unix:/tmp/wallet.sock",
    ):
        assert is_local_peer(peer), peer
    for peer in (
        "ipv4:10.0.0.5:5000",
        "ipv4:192.0.2.2:41000",
        "ipv6:[fd00::2]:5000",
        "ipv6:[::ffff:10.0.0.1]:1",
        "ipv4:not-an-ip:1",
        "",
        "vsock:1:2",
    ):
        assert not is_local_peer(peer), peer


def test_without_tokens_only_a_local_caller_sets_the_audit_id() -> None:
    header = (("x-audit-id", PARENT),)
    assert trusted_audit_id(Context("ipv4:127.0.0.1:1", header), None) == PARENT
    assert trusted_audit_id(Context("ipv4:10.1.2.3:1", header), None) is None
    garbage = (("x-audit-id", "not-a-uuid"),)
    assert trusted_audit_id(Context("ipv4:127.0.0.1:1", garbage), None) is None


def test_with_tokens_only_the_orchestrator_or_admin_role_sets_it_from_anywhere() -> None:
    authority = Authority(TokenTable(parse_tokens("o=orchestrator;a=admin;w=writer")))

    def honoured(token: str, peer: str) -> str | None:
        metadata = (("authorization", f"Bearer {token}"), ("x-audit-id", PARENT))
        return trusted_audit_id(Context(peer, metadata), authority)

    assert honoured("o", "ipv4:10.1.2.3:1") == PARENT
    assert honoured("a", "ipv4:10.1.2.3:1") == PARENT
    assert honoured("w", "ipv4:127.0.0.1:1") is None  # local, but only a writer
    assert honoured("nope", "ipv4:127.0.0.1:1") is None
