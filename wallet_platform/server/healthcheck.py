"""A tiny gRPC health probe: ``python -m wallet_platform.server.healthcheck HOST:PORT [SERVICE]``.

Container health checks use it (the image has no grpcurl): exit 0 when the server
answers ``SERVING``, 1 otherwise. It reads the same ``WALLET_TLS_*`` settings as every
client (``wallet_platform.channels``), so it also probes TLS and mTLS servers. Health
needs no token even when authentication is on.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from wallet_platform.channels import make_channel
from wallet_platform.config import load_settings


async def check(target: str, service: str = "", deadline: float = 3.0) -> str:
    """The serving status name of ``service`` ('' = the whole server) at ``target``."""
    async with make_channel(target, load_settings()) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        response = await stub.Check(
            health_pb2.HealthCheckRequest(service=service), timeout=deadline
        )
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(response.status))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="gRPC health probe for wallet services")
    parser.add_argument("target", help="HOST:PORT")
    parser.add_argument("service", nargs="?", default="", help="service name ('' = server)")
    parser.add_argument("--timeout", type=float, default=3.0, help="seconds")
    args = parser.parse_args(argv)
    try:
        status = asyncio.run(check(args.target, args.service, args.timeout))
    except grpc.RpcError as error:
        print(f"{args.target}: {error.code().name}", file=sys.stderr)
        return 1
    print(f"{args.target}: {status}")
    return 0 if status == "SERVING" else 1


if __name__ == "__main__":
    sys.exit(main())
