"""The in-process bus: RabbitMQ's semantics on the platform database (``bus``), all
of its SQL in ``store``."""

from wallet_platform.messaging.inprocess.bus import InProcessBus
from wallet_platform.messaging.inprocess.store import now_ms

__all__ = ["InProcessBus", "now_ms"]
