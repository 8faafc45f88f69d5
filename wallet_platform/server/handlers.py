"""Rebuilding a gRPC method handler around a wrapped behaviour.

Every layer of the server plumbing (error mapping, metrics, audit, auth) wraps a
method's behaviour once and must hand gRPC back a handler of the same kind with the
same (de)serializers; this is that one step.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc

# (request streaming, response streaming) -> the constructor of that kind of handler.
_CONSTRUCTORS: dict[tuple[bool, bool], Callable[..., grpc.RpcMethodHandler]] = {
    (False, False): grpc.unary_unary_rpc_method_handler,
    (False, True): grpc.unary_stream_rpc_method_handler,
    (True, False): grpc.stream_unary_rpc_method_handler,
    (True, True): grpc.stream_stream_rpc_method_handler,
}


def with_behaviour(handler: grpc.RpcMethodHandler, behaviour: Any) -> grpc.RpcMethodHandler:
    """A handler of ``handler``'s kind and serializers that runs ``behaviour``."""
    construct = _CONSTRUCTORS[(handler.request_streaming, handler.response_streaming)]
    return construct(
        behaviour,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


async def responses(result: Any) -> AsyncIterator[Any]:
    """The responses of a streaming behaviour's ``result``, for a layer to pass on.

    A behaviour either yields its responses (an async generator) or writes them with
    ``context.write`` and returns a coroutine (grpc's health ``Watch``). The second kind
    has nothing to pass on: it is awaited, and its writes reach the client directly.
    """
    if inspect.isawaitable(result):
        await result
        return
    async for item in result:
        yield item
