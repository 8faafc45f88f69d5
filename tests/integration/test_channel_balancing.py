"""Client channels spread calls over every address of their target (round_robin).

Two real gRPC servers behind one target that resolves to both addresses (the
``ipv4:`` resolver here; ``dns:///`` with a headless Kubernetes Service in a cluster):
``make_channel`` sends calls to both, while the same channel forced back to gRPC's
default ``pick_first`` sends every call to one of them.
"""

from __future__ import annotations

from collections import Counter

import grpc

from wallet_platform.channels import make_channel
from wallet_platform.config import Settings

METHOD = "/wallet.test.Echo/Ping"


async def _server(name: str, calls: Counter[str]) -> tuple[grpc.aio.Server, int]:
    async def ping(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        calls[name] += 1
        return name.encode()

    handler = grpc.method_handlers_generic_handler(
        "wallet.test.Echo", {"Ping": grpc.unary_unary_rpc_method_handler(ping)}
    )
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, port


async def _spread(options: list[tuple[str, object]], calls: Counter[str]) -> Counter[str]:
    servers = [await _server(name, calls) for name in ("a", "b")]
    target = "ipv4:" + ",".join(f"127.0.0.1:{port}" for _, port in servers)
    try:
        async with make_channel(target, Settings(), options=options) as channel:
            ping = channel.unary_unary(METHOD)
            await channel.channel_ready()
            for _ in range(20):
                await ping(b"", timeout=5, wait_for_ready=True)
    finally:
        for server, _ in servers:
            await server.stop(None)
    return calls


async def test_calls_are_spread_over_every_address() -> None:
    calls = await _spread([], Counter())
    assert sum(calls.values()) == 20
    assert calls["a"] >= 5 and calls["b"] >= 5, calls


async def test_a_caller_may_still_choose_pick_first() -> None:
    calls = await _spread([("grpc.lb_policy_name", "pick_first")], Counter())
    assert sorted(calls.values()) == [20], calls
