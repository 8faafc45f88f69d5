"""The token table and the method -> role table, without a server."""

from __future__ import annotations

import pytest

from wallet.v1 import analytics_pb2, fraud_pb2, transfer_pb2, wallet_pb2
from wallet_common import audit, security


def _all_methods() -> set[str]:
    methods = set()
    for module in (wallet_pb2, transfer_pb2, analytics_pb2, fraud_pb2):
        for service in module.DESCRIPTOR.services_by_name.values():
            methods.update(f"/{service.full_name}/{m.name}" for m in service.methods)
    return methods


def test_parse_tokens_roles_and_subjects():
    table = security.parse_tokens(" a=reader ; b=writer+operator@ops ;\n c=admin;")
    assert table["a"].roles == {"reader"} and table["a"].subject.startswith("token:")
    assert table["b"] == security.Principal("ops", frozenset({"writer", "operator"}))
    assert table["c"].may("orchestrator") and table["c"].may("reader")
    assert table["b"].may("reader") and not table["b"].may("orchestrator")


@pytest.mark.parametrize("spec", ["a", "a=", "=reader", "a=root", "a=reader;a=writer"])
def test_parse_tokens_rejects_bad_specs(spec):
    with pytest.raises(ValueError):
        security.parse_tokens(spec)


def test_role_table_names_real_rpcs_and_new_rpcs_need_admin():
    methods = _all_methods()
    assert set(security.METHOD_ROLES) <= methods, "role table names an RPC that does not exist"
    assert set(audit.WRITE_METHODS) <= methods, "audit list names an RPC that does not exist"
    assert security.required_role("/wallet.v1.WalletService/SomethingNew") == "admin"
    assert security.required_role("/grpc.health.v1.Health/Check") is None
    assert security.required_role("/grpc.reflection.v1alpha.ServerReflection/X") is None
    # Every write RPC needs more than read access.
    for method in audit.WRITE_METHODS:
        assert security.required_role(method) != "reader", method


def test_bearer_token_parsing_and_constant_time_lookup():
    assert security.bearer_token([("authorization", "Bearer abc")]) == "abc"
    assert security.bearer_token([("authorization", "bearer  abc ")]) == "abc"
    assert security.bearer_token([("authorization", "Basic abc")]) is None
    assert security.bearer_token(None) is None
    table = security.TokenTable(security.parse_tokens("abc=reader"))
    assert table.lookup("abc") is not None
    assert table.lookup("abd") is None and table.lookup(None) is None
