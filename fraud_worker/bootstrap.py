"""Composition root of the fraud worker: its consumer and FraudService.

``fraud-worker`` and ``wallet-stack`` both call :func:`build_components`; the rule
thresholds come from the settings (``WALLET_FRAUD_*``).
"""

from __future__ import annotations

from fraud_worker.grpc_api import FraudApi
from fraud_worker.housekeeping import WithdrawalPruner
from fraud_worker.projection import FraudProjection
from fraud_worker.rules import FraudRules
from fraud_worker.service import FraudService
from fraud_worker.store import FraudStore
from wallet_platform.messaging.consumer import consumer_component
from wallet_platform.runtime import Runtime
from wallet_platform.server.builder import Component


def build_components(runtime: Runtime) -> list[Component]:
    rules = FraudRules.from_settings(runtime.settings)
    store = FraudStore(runtime.db)
    return [
        consumer_component(runtime, FraudProjection(store, rules), "fraud-consumer"),
        FraudApi(FraudService(store)),
        WithdrawalPruner(runtime.db, rules),
    ]
