"""The token table and the role check, without a server (the RPC table itself:
test_rpc_policy.py)."""

from __future__ import annotations

import grpc
import pytest

from wallet_platform.server import security
from wallet_platform.server.authority import Authority


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


def test_bearer_token_parsing_and_constant_time_lookup():
    assert security.bearer_token([("authorization", "Bearer abc")]) == "abc"
    assert security.bearer_token([("authorization", "bearer  abc ")]) == "abc"
    assert security.bearer_token([("authorization", "Basic abc")]) is None
    assert security.bearer_token(None) is None
    table = security.TokenTable(security.parse_tokens("abc=reader"))
    assert table.lookup("abc") is not None
    assert table.lookup("abd") is None and table.lookup(None) is None


class _Refused(Exception):
    pass


class _Context:
    """Just what ``guard`` reads from a call: its metadata, and abort."""

    def __init__(self, token: str | None) -> None:
        self.metadata = [("authorization", f"Bearer {token}")] if token else []
        self.aborted: tuple[object, str] | None = None

    def invocation_metadata(self):
        return self.metadata

    async def abort(self, code, details):
        self.aborted = (code, details)
        raise _Refused(details)


async def _answer(request, context):
    return f"answer to {request}"


async def _stream(request, context):
    for n in range(2):
        yield f"{request}-{n}"


_KINDS = {
    "unary_unary": (grpc.unary_unary_rpc_method_handler, _answer, False),
    "unary_stream": (grpc.unary_stream_rpc_method_handler, _stream, True),
    "stream_unary": (grpc.stream_unary_rpc_method_handler, _answer, False),
    "stream_stream": (grpc.stream_stream_rpc_method_handler, _stream, True),
}


@pytest.mark.parametrize("kind", sorted(_KINDS))
async def test_guard_keeps_each_kind_of_handler_and_refuses_before_the_servicer(kind):
    construct, behaviour, streamed = _KINDS[kind]
    original = construct(behaviour, request_deserializer=bytes, response_serializer=str)
    authority = Authority(security.TokenTable(security.parse_tokens("r=reader")))
    # WatchTransfers needs the reader role; the guard does not look at the method's kind.
    wrapped = security.guard("/wallet.v1.TransferService/WatchTransfers", original, authority)
    assert wrapped is not original
    assert (wrapped.request_streaming, wrapped.response_streaming) == (
        original.request_streaming,
        original.response_streaming,
    )
    assert wrapped.request_deserializer is bytes and wrapped.response_serializer is str
    call = getattr(wrapped, kind)

    async def run(context: _Context):
        if streamed:
            return [item async for item in call("q", context)]
        return await call("q", context)

    assert await run(_Context("r")) == (["q-0", "q-1"] if streamed else "answer to q")
    refused = _Context(None)
    with pytest.raises(_Refused):
        await run(refused)
    assert refused.aborted is not None
    assert refused.aborted[0] == grpc.StatusCode.UNAUTHENTICATED
