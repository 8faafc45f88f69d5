"""gRPC boundary of FraudService: protobuf <-> domain, nothing else."""

from __future__ import annotations

from collections.abc import Sequence

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from fraud_worker.projection import alert_message
from fraud_worker.service import FraudService
from fraud_worker.store import StoredAlert
from wallet.v1 import fraud_pb2, fraud_pb2_grpc

SERVICE_NAME = "wallet.v1.FraudService"


def alert_to_proto(alert: StoredAlert) -> fraud_pb2.FraudAlert:
    stamp = Timestamp()
    stamp.FromDatetime(alert.created_at)
    return alert_message(
        alert.alert_id, alert.wallet_id, alert.rule, alert.event_ids, alert.detail, stamp
    )


class FraudServicer(fraud_pb2_grpc.FraudServiceServicer):
    def __init__(self, service: FraudService) -> None:
        self._service = service

    async def ListFraudAlerts(
        self, request: fraud_pb2.ListFraudAlertsRequest, context: grpc.aio.ServicerContext
    ) -> fraud_pb2.ListFraudAlertsResponse:
        page = await self._service.list_alerts(
            request.wallet_id, request.page_size, request.page_token
        )
        return fraud_pb2.ListFraudAlertsResponse(
            alerts=[alert_to_proto(alert) for alert in page.alerts],
            next_page_token=page.next_page_token,
        )


class FraudApi:
    """Component serving FraudService (no background work of its own)."""

    name = "fraud-api"

    def __init__(self, service: FraudService) -> None:
        self._service = service
        self.service_names: tuple[str, ...] = (SERVICE_NAME,)

    def add_to_server(self, server: grpc.aio.Server) -> Sequence[str]:
        fraud_pb2_grpc.add_FraudServiceServicer_to_server(FraudServicer(self._service), server)
        return self.service_names

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None
