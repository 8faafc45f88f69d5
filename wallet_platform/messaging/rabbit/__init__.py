"""The RabbitMQ bus: ``bus`` (RabbitBus: connection supervision, publish, consume),
``connection`` (opening a connection that notices a dead peer), ``topology`` (queue
declarations, quorum or classic), ``publisher``, ``consumer`` (one queue: deliveries,
retries, dead letters), ``acks`` (batched acks), ``messages`` (AMQP properties and
headers)."""

from wallet_platform.messaging.rabbit.acks import AckWindow
from wallet_platform.messaging.rabbit.bus import RabbitBus
from wallet_platform.messaging.rabbit.messages import HEADER_ROUTING_KEY, amqp_message
from wallet_platform.messaging.rabbit.topology import (
    DEFAULT_QUEUE_TYPE,
    QUEUE_TYPES,
    TopologyMismatchError,
    declare_topology,
)

__all__ = [
    "DEFAULT_QUEUE_TYPE",
    "HEADER_ROUTING_KEY",
    "QUEUE_TYPES",
    "AckWindow",
    "RabbitBus",
    "TopologyMismatchError",
    "amqp_message",
    "declare_topology",
]
