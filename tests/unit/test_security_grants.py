"""Grants with wallet prefixes, certificate-role specs and the tenant table, without a server."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf.descriptor import Descriptor

from wallet.v1 import analytics_pb2, fraud_pb2, transfer_pb2, wallet_pb2
from wallet_platform.server import security, tenancy
from wallet_platform.server.authority import Authority, Refusal
from wallet_platform.server.cert_roles import CertificateRoles, parse_certificate_roles
from wallet_platform.server.grants import Principal
from wallet_platform.server.rpc_policy import POLICIES

_MODULES = (wallet_pb2, transfer_pb2, analytics_pb2, fraud_pb2)
# The RPCs a tenant may call, with the request fields that must carry its prefix.
WALLET_FIELDS = {m: p.wallet_fields for m, p in POLICIES.items() if p.wallet_fields}


def _methods() -> dict[str, Descriptor]:
    """Full method name -> its request message descriptor."""
    found: dict[str, Descriptor] = {}
    for module in _MODULES:
        for service in module.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                found[f"/{service.full_name}/{method.name}"] = method.input_type
    return found


def test_token_grants_take_a_wallet_prefix_before_the_subject():
    table = security.parse_tokens("a=writer[acme-]@acme-teller;b=reader+operator[x:];c=admin")
    assert table["a"] == Principal("acme-teller", frozenset({"writer"}), "acme-")
    assert table["b"].wallet_prefix == "x:" and table["b"].subject.startswith("token:")
    assert table["c"].wallet_prefix is None
    assert table["a"].owns("acme-1") and not table["a"].owns("beta-1")
    assert not table["a"].owns("acme")  # a prefix, not a substring or a stem
    assert table["c"].owns("anything")


@pytest.mark.parametrize(
    "spec",
    [
        "a=writer@teller[acme-]",  # the prefix after the subject would be silently ignored
        "a=writer[]",
        "a=writer[acme/]",
        "a=writer[acme-",
        "a=writer[a][b]",
        "a=[acme-]",
        "a=writer[" + "x" * 65 + "]",
    ],
)
def test_bad_wallet_prefixes_are_refused(spec):
    with pytest.raises(ValueError):
        security.parse_tokens(spec)


def test_certificate_role_specs():
    entries = parse_certificate_roles(
        "saga-orchestrator=orchestrator;\n teller.example.com = writer+reader[acme-] ;"
    )
    assert entries["saga-orchestrator"] == Principal(
        "certificate saga-orchestrator", frozenset({"orchestrator"})
    )
    assert entries["teller.example.com"].wallet_prefix == "acme-"
    for bad in ("svc", "svc=", "=reader", "svc=root", "svc=reader;svc=writer", "svc=reader@x"):
        with pytest.raises(ValueError, match="WALLET_TLS_CLIENT_ROLES"):
            parse_certificate_roles(bad)


def test_the_first_certificate_name_with_an_entry_decides_and_matching_is_exact():
    roles = CertificateRoles(parse_certificate_roles("a.example=writer;cn-only=operator"))
    # DNS SANs (certificate order) come before the common name.
    by_dns = roles.lookup(["a.example", "cn-only"])
    assert by_dns is not None and by_dns.roles == {"writer"}
    by_cn = roles.lookup(["unmapped", "cn-only"])
    assert by_cn is not None and by_cn.roles == {"operator"}
    assert roles.lookup(["A.example", "cn-only-x"]) is None
    assert roles.lookup(["*.example"]) is None
    assert roles.lookup([]) is None


def test_tenant_table_names_real_rpcs_and_real_wallet_fields():
    methods = _methods()
    for method, fields in WALLET_FIELDS.items():
        assert method in methods, method
        request_fields = methods[method].fields_by_name
        for field in fields:
            assert field in request_fields, (method, field)
    # Every wallet-id field of every request is checked (a new one must be listed).
    for method, descriptor in methods.items():
        wallet_fields = {f.name for f in descriptor.fields if f.name.endswith("wallet_id")}
        assert wallet_fields == set(WALLET_FIELDS.get(method, ())), method


def _request(method: str, **fields):
    descriptor = _methods()[method]
    for module in _MODULES:
        cls = getattr(module, descriptor.name, None)
        if cls is not None:
            return cls(**fields)
    raise AssertionError(method)


ACME = Principal("acme-teller", frozenset({"writer"}), "acme-")


@pytest.mark.parametrize("method", sorted(WALLET_FIELDS))
def test_each_wallet_field_of_each_rpc_must_carry_the_prefix(method):
    fields = WALLET_FIELDS[method]
    inside = {field: f"acme-{n}" for n, field in enumerate(fields)}
    assert tenancy.tenant_refusal(ACME, method, _request(method, **inside)) is None
    for field in fields:
        for foreign in ("beta-1", "", "acm", "xacme-1"):
            request = _request(method, **{**inside, field: foreign})
            refused = tenancy.tenant_refusal(ACME, method, request)
            assert refused is not None and field in refused and "acme-*" in refused
    unlimited = Principal("ops", frozenset({"admin"}))
    assert tenancy.tenant_refusal(unlimited, method, _request(method)) is None


def test_every_item_of_a_batch_must_carry_the_prefix():
    method = "/wallet.v1.TransferService/BatchCreateTransfers"

    def batch(*pairs: tuple[str, str]) -> transfer_pb2.BatchCreateTransfersRequest:
        return transfer_pb2.BatchCreateTransfersRequest(
            requests=[
                transfer_pb2.CreateTransferRequest(from_wallet_id=a, to_wallet_id=b)
                for a, b in pairs
            ]
        )

    inside = [("acme-1", "acme-2"), ("acme-2", "acme-3")]
    assert tenancy.tenant_refusal(ACME, method, batch(*inside)) is None
    for index in range(len(inside)):
        for side in (0, 1):
            pairs = list(inside)
            pair = list(pairs[index])
            pair[side] = "beta-1"
            pairs[index] = (pair[0], pair[1])
            refused = tenancy.tenant_refusal(ACME, method, batch(*pairs))
            field = ("from_wallet_id", "to_wallet_id")[side]
            assert refused is not None and f"requests[{index}].{field}='beta-1'" in refused
    assert tenancy.tenant_refusal(ACME, method, None) is not None  # nothing to check
    unlimited = Principal("ops", frozenset({"admin"}))
    assert tenancy.tenant_refusal(unlimited, method, batch(("x", "y"))) is None


def test_rpcs_whose_reach_is_not_in_the_request_are_closed_to_tenants():
    for method in (
        "/wallet.v1.TransferService/GetTransfer",
        "/wallet.v1.TransferService/GetTransferSummary",
        "/wallet.v1.WalletService/SomethingNew",
    ):
        request = _request(method) if method in _methods() else object()
        assert "is not available" in (tenancy.tenant_refusal(ACME, method, request) or "")
    # A streamed request cannot be checked up front.
    listed = "/wallet.v1.WalletService/GetWallet"
    assert tenancy.tenant_refusal(ACME, listed, None) is not None


class _Context:
    def __init__(self, token: str | None, names: dict[str, list[bytes]] | None = None) -> None:
        self.metadata = [("authorization", f"Bearer {token}")] if token else []
        self.names = names or {}

    def invocation_metadata(self):
        return self.metadata

    def auth_context(self):
        return self.names


_CERT = {"x509_common_name": [b"teller"], "peer_dns": [b"teller.example.com"]}
_DEPOSIT = "/wallet.v1.WalletService/Deposit"


def _refused(
    authority: Authority, context: _Context, request: wallet_pb2.DepositRequest
) -> Refusal:
    """The refusal of a Deposit needing the writer role (the call must be refused)."""
    refusal = authority.refusal(_DEPOSIT, "writer", context, request)
    assert refusal is not None, "the call was allowed"
    return refusal


def test_with_tokens_and_certificate_roles_both_must_allow():
    authority = Authority(
        security.TokenTable(
            security.parse_tokens("t-admin=admin;t-read=reader;t-acme=admin[acme-]")
        ),
        CertificateRoles(parse_certificate_roles("teller.example.com=writer;other=reader")),
    )
    ok = wallet_pb2.DepositRequest(wallet_id="acme-1")
    assert authority.refusal(_DEPOSIT, "writer", _Context("t-admin", _CERT), ok) is None
    code, _ = _refused(authority, _Context(None, _CERT), ok)
    assert code == grpc.StatusCode.UNAUTHENTICATED
    code, why = _refused(authority, _Context("t-read", _CERT), ok)
    assert code == grpc.StatusCode.PERMISSION_DENIED and "lacks role" in why
    # The admin token does not lift a certificate that may only read...
    reader_cert = {"x509_common_name": [b"other"]}
    code, why = _refused(authority, _Context("t-admin", reader_cert), ok)
    assert code == grpc.StatusCode.PERMISSION_DENIED and "certificate other" in why
    # ...nor one without an entry.
    stranger = {"x509_common_name": [b"stranger"], "peer_dns": [b"s.example"]}
    code, why = _refused(authority, _Context("t-admin", stranger), ok)
    assert code == grpc.StatusCode.PERMISSION_DENIED and "s.example, stranger" in why
    # A tenant-limited token stays limited whatever the certificate may do.
    foreign = wallet_pb2.DepositRequest(wallet_id="beta-1")
    assert authority.refusal(_DEPOSIT, "writer", _Context("t-acme", _CERT), ok) is None
    code, _ = _refused(authority, _Context("t-acme", _CERT), foreign)
    assert code == grpc.StatusCode.PERMISSION_DENIED
    assert authority.may_act_as(_Context("t-admin", _CERT), "orchestrator") is False
    assert authority.may_act_as(_Context("t-admin", _CERT), "writer") is True
