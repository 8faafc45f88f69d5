"""Which bus a process uses: RabbitMQ when ``WALLET_AMQP_URL`` is set, else the
database-backed in-process bus; one shared instance per process."""

from __future__ import annotations

from wallet_platform.messaging.bus import EventBus
from wallet_platform.messaging.inprocess import InProcessBus
from wallet_platform.messaging.rabbit import RabbitBus
from wallet_platform.runtime import BUS_EXTRA_KEY, Runtime


def create_bus(runtime: Runtime) -> EventBus:
    """A new bus for this runtime's settings (use :func:`get_bus` to share one)."""
    if runtime.settings.amqp_url:
        settings = runtime.settings
        return RabbitBus(
            settings.amqp_url,
            queue_type=settings.amqp_queue_type,
            envelope_max=settings.amqp_envelope_max if settings.amqp_envelopes else 0,
        )
    return InProcessBus(runtime.db)


def get_bus(runtime: Runtime) -> EventBus:
    """The one bus of this process (cached in ``runtime.extras["bus"]``)."""
    bus: EventBus | None = runtime.extras.get(BUS_EXTRA_KEY)
    if bus is None:
        bus = create_bus(runtime)
        runtime.extras[BUS_EXTRA_KEY] = bus
    return bus
