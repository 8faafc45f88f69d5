"""Composition root of the analytics worker: its consumer and AnalyticsService.

``analytics-worker`` and ``wallet-stack`` both call :func:`build_components`.
"""

from __future__ import annotations

from analytics_worker.grpc_api import AnalyticsApi
from analytics_worker.projection import AnalyticsProjection
from analytics_worker.service import AnalyticsService
from wallet_common.consumer import consumer_component
from wallet_common.grpc_server import Component
from wallet_common.runtime import Runtime


def build_components(runtime: Runtime) -> list[Component]:
    return [
        consumer_component(runtime, AnalyticsProjection(), "analytics-consumer"),
        AnalyticsApi(AnalyticsService(runtime.db)),
    ]
