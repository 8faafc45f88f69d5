"""The plumbing interceptor wraps each method's handler once, not once per call."""

from __future__ import annotations

import grpc

from wallet_platform.observability.audit import AuditWriter
from wallet_platform.server.builder import WrappingInterceptor
from wallet_platform.server.plumbing import PlumbingInterceptor


class _CountingInterceptor(WrappingInterceptor):
    def __init__(self) -> None:
        super().__init__()
        self.wrapped: list[str] = []

    def wrap(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        self.wrapped.append(method)
        return grpc.unary_unary_rpc_method_handler(handler.unary_unary)


async def _noop(request, context):
    return request


def _details(method: str) -> grpc.HandlerCallDetails:
    class Details(grpc.HandlerCallDetails):
        def __init__(self) -> None:
            self.method = method
            self.invocation_metadata = ()

    return Details()


async def test_a_handler_is_wrapped_once_per_method_and_again_when_it_changes():
    interceptor = _CountingInterceptor()
    first = grpc.unary_unary_rpc_method_handler(_noop)
    second = grpc.unary_unary_rpc_method_handler(_noop)
    current = {"handler": first}

    async def continuation(_details):
        return current["handler"]

    a1 = await interceptor.intercept_service(continuation, _details("/s/A"))
    a2 = await interceptor.intercept_service(continuation, _details("/s/A"))
    b1 = await interceptor.intercept_service(continuation, _details("/s/B"))
    assert a1 is a2 and a1 is not first and b1 is not a1
    assert interceptor.wrapped == ["/s/A", "/s/B"]
    current["handler"] = second  # a different handler object: wrapped afresh
    a3 = await interceptor.intercept_service(continuation, _details("/s/A"))
    assert a3 is not a1
    assert interceptor.wrapped == ["/s/A", "/s/B", "/s/A"]


async def test_unknown_methods_pass_through_as_none():
    interceptor = _CountingInterceptor()

    async def continuation(_details):
        return None

    assert await interceptor.intercept_service(continuation, _details("/s/X")) is None
    assert interceptor.wrapped == []


async def test_the_plumbing_interceptor_reuses_its_wrapped_handlers():
    # No call is made, so the writer never needs its database: only wrapping is tested.
    writer = AuditWriter(db=None)  # type: ignore[arg-type]
    interceptor = PlumbingInterceptor(writer, None, certificates=False)
    handler = grpc.unary_unary_rpc_method_handler(_noop)

    async def continuation(_details):
        return handler

    method = "/wallet.v1.WalletService/Deposit"
    first = await interceptor.intercept_service(continuation, _details(method))
    again = await interceptor.intercept_service(continuation, _details(method))
    assert first is again and first.unary_unary is not _noop
