"""Consumers: the exactly-once runner (``runner``), what a projection implements
(``projection``), the inbox and its SQL (``inbox``), the server component
(``component``)."""

from wallet_platform.messaging.consumer.component import (
    CONSUMER_PREFETCH,
    ConsumerComponent,
    consumer_component,
)
from wallet_platform.messaging.consumer.inbox import (
    CoreInboxUnitOfWork,
    PipelineInboxUnitOfWork,
    Recorded,
)
from wallet_platform.messaging.consumer.projection import (
    InboxUnitOfWork,
    Projection,
    Translated,
    record_then_apply,
)
from wallet_platform.messaging.consumer.runner import ConsumerRunner

__all__ = [
    "CONSUMER_PREFETCH",
    "ConsumerComponent",
    "ConsumerRunner",
    "CoreInboxUnitOfWork",
    "InboxUnitOfWork",
    "PipelineInboxUnitOfWork",
    "Projection",
    "Recorded",
    "Translated",
    "consumer_component",
    "record_then_apply",
]
