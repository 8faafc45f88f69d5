"""gRPC boundary of AnalyticsService: protobuf <-> domain, nothing else."""

from __future__ import annotations

from collections.abc import Sequence

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from analytics_worker.domain import WalletStats
from analytics_worker.service import AnalyticsService
from wallet.v1 import analytics_pb2, analytics_pb2_grpc

SERVICE_NAME = "wallet.v1.AnalyticsService"


def stats_to_proto(stats: WalletStats) -> analytics_pb2.WalletStats:
    message = analytics_pb2.WalletStats(wallet_id=stats.wallet_id)
    for name, value in stats.counters().items():
        setattr(message, name, value)
    if stats.last_activity_at is not None:
        stamp = Timestamp()
        stamp.FromDatetime(stats.last_activity_at)
        message.last_activity_at.CopyFrom(stamp)
    return message


class AnalyticsServicer(analytics_pb2_grpc.AnalyticsServiceServicer):
    def __init__(self, service: AnalyticsService) -> None:
        self._service = service

    async def GetWalletStats(
        self, request: analytics_pb2.GetWalletStatsRequest, context: grpc.aio.ServicerContext
    ) -> analytics_pb2.GetWalletStatsResponse:
        stats = await self._service.get_wallet_stats(request.wallet_id)
        return analytics_pb2.GetWalletStatsResponse(stats=stats_to_proto(stats))


class AnalyticsApi:
    """Component serving AnalyticsService (no background work of its own)."""

    name = "analytics-api"

    def __init__(self, service: AnalyticsService) -> None:
        self._service = service
        self.service_names: tuple[str, ...] = (SERVICE_NAME,)

    def add_to_server(self, server: grpc.aio.Server) -> Sequence[str]:
        analytics_pb2_grpc.add_AnalyticsServiceServicer_to_server(
            AnalyticsServicer(self._service), server
        )
        return self.service_names

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None
