"""The RPC table (wallet_platform.server.rpc_policy) has exactly one row per served RPC.

Every RPC of every service a server registers (the generated wallet.v1 descriptors,
health and reflection) must have a row, and no row may name an RPC that does not exist:
a new RPC cannot reach a server with its access, audit and tenant rules left to the
fallback by accident.
"""

from __future__ import annotations

import pytest
from google.protobuf.descriptor import MethodDescriptor
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2

from wallet.v1 import analytics_pb2, fraud_pb2, transfer_pb2, wallet_pb2
from wallet_platform.server import audit_calls, call_limits, rpc_policy, security, tenancy
from wallet_platform.server.grants import ADMIN, READER, Principal

_SERVED = (wallet_pb2, transfer_pb2, analytics_pb2, fraud_pb2, health_pb2, reflection_pb2)


def _served() -> dict[str, MethodDescriptor]:
    """Full method name -> its method descriptor, for every service a server registers."""
    methods: dict[str, MethodDescriptor] = {}
    for module in _SERVED:
        for service in module.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                methods[f"/{service.full_name}/{method.name}"] = method
    return methods


def test_every_served_rpc_has_exactly_one_row():
    served = set(_served())
    assert len(served) > 20  # the descriptors were found
    missing = served - set(rpc_policy.POLICIES)
    unknown = set(rpc_policy.POLICIES) - served
    assert not missing, f"RPCs without a row in rpc_policy.POLICIES: {sorted(missing)}"
    assert not unknown, f"rows naming RPCs no server serves: {sorted(unknown)}"


@pytest.mark.parametrize("method", sorted(rpc_policy.POLICIES))
def test_each_row_is_coherent(method):
    row = rpc_policy.POLICIES[method]
    descriptor = _served()[method]
    wallet_rpc = method.startswith("/wallet.v1.")
    # Only health and reflection are open; every wallet.v1 RPC needs a role.
    assert (row.role is None) == (not wallet_rpc), method
    if row.audited:
        assert row.role not in (None, READER), f"{method}: a write RPC open to readers"
    # The wallet fields are real fields of the request, and every *wallet_id field is one.
    request = descriptor.input_type
    assert set(row.wallet_fields) <= set(request.fields_by_name), method
    if wallet_rpc and row.wallet_fields:
        named = {f.name for f in request.fields if f.name.endswith("wallet_id")}
        assert set(row.wallet_fields) == named, method


def test_each_layer_reads_the_table():
    deposit = "/wallet.v1.WalletService/Deposit"
    summary = "/wallet.v1.TransferService/GetTransferSummary"
    check = "/grpc.health.v1.Health/Check"
    assert security.required_role(deposit) == "writer"
    assert security.required_role(summary) == READER
    assert security.required_role(check) is None
    assert audit_calls.is_write_method(deposit)
    assert not audit_calls.is_write_method(summary)
    assert not audit_calls.is_write_method(check)
    assert not rpc_policy.policy(check).capped and rpc_policy.policy(deposit).capped
    assert not hasattr(call_limits, "UNCAPPED_METHODS")  # no second list
    tenant = Principal("acme", frozenset({ADMIN}), "acme-")
    assert tenancy.tenant_refusal(tenant, summary, object()) is not None


def test_an_unlisted_rpc_is_admin_only_audited_and_closed_to_tenants():
    new = "/wallet.v1.WalletService/SomethingNew"
    assert rpc_policy.policy(new) == rpc_policy.UNLISTED
    assert security.required_role(new) == ADMIN
    assert audit_calls.is_write_method(new)
    tenant = Principal("acme", frozenset({ADMIN}), "acme-")
    assert "is not available" in (tenancy.tenant_refusal(tenant, new, object()) or "")
