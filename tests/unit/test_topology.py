"""The broker names agree with the consumers that use them."""

from __future__ import annotations

from analytics_worker import projection as analytics
from analytics_worker.store import CONSUMER_NAME as ANALYTICS_NAME
from fraud_worker import projection as fraud
from wallet_platform import topology


def test_each_consumer_reads_the_queue_its_name_maps_to():
    assert {
        ANALYTICS_NAME: analytics.AnalyticsProjection.queue,
        fraud.CONSUMER_NAME: fraud.FraudProjection.queue,
    } == topology.CONSUMER_QUEUES
    assert set(topology.CONSUMER_QUEUES.values()) == set(topology.QUEUES)
