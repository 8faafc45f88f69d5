"""What the audit trail stores about a request: the write list and secret redaction."""

from __future__ import annotations

import json

from wallet.v1 import transfer_pb2, wallet_pb2
from wallet_platform.observability import audit_request
from wallet_platform.server import audit_calls as audit


def test_write_methods_are_audited_and_unlisted_rpcs_too():
    assert audit.is_write_method("/wallet.v1.WalletService/Deposit")
    assert audit.is_write_method("/wallet.v1.TransferService/CreateTransfer")
    assert audit.is_write_method("/wallet.v1.WalletService/RefundForTransfer")
    assert audit.is_write_method("/wallet.v1.DlqService/ReplayMessages")  # not in the table
    assert not audit.is_write_method("/wallet.v1.WalletService/GetWallet")
    assert not audit.is_write_method("/wallet.v1.TransferService/ListTransfers")
    assert not audit.is_write_method("/grpc.health.v1.Health/Check")


def test_redact_nested_secrets_but_not_ordinary_fields():
    data = {
        "wallet_id": "w",
        "password": "p",
        "nested": {"api_key": "k", "items": [{"auth_token": "t", "amount": 3}]},
        "page_token": "kept",
    }
    assert audit_request.redact(data) == {
        "wallet_id": "w",
        "password": audit_request.REDACTED,
        "nested": {
            "api_key": audit_request.REDACTED,
            "items": [{"auth_token": audit_request.REDACTED, "amount": 3}],
        },
        "page_token": "kept",
    }


def test_request_json_keeps_defaults_and_is_bounded():
    text = audit_request.request_json(
        transfer_pb2.CreateTransferRequest(request_id="r", from_wallet_id="a", to_wallet_id="b")
    )
    assert json.loads(text) == {
        "request_id": "r",
        "from_wallet_id": "a",
        "to_wallet_id": "b",
        "amount": "0",
    }
    huge = audit_request.request_json(wallet_pb2.CreateWalletRequest(wallet_id="x" * 20_000))
    assert len(huge) <= audit_request.MAX_REQUEST_JSON and json.loads(huge)["truncated"] is True
