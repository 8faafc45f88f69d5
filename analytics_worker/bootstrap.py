"""Composition root of the analytics worker: its consumer and AnalyticsService.

``analytics-worker`` and ``wallet-stack`` both call :func:`build_components`.
"""

from __future__ import annotations

from analytics_worker.grpc_api import AnalyticsApi
from analytics_worker.projection import AnalyticsProjection
from analytics_worker.service import AnalyticsService
from analytics_worker.store import AnalyticsStore
from wallet_platform.messaging.consumer import consumer_component
from wallet_platform.runtime import Runtime
from wallet_platform.server.builder import Component


def build_components(runtime: Runtime) -> list[Component]:
    store = AnalyticsStore(runtime.db)
    return [
        consumer_component(runtime, AnalyticsProjection(store), "analytics-consumer"),
        AnalyticsApi(AnalyticsService(store)),
    ]
