"""What the components of one process share: settings, the database, named extras.

Built once per process by :func:`wallet_platform.server.process.start_server` and handed
to every service's ``build_components``; the event bus and other shared objects hang off
``extras`` so that services in one process (``wallet-stack``) use one of each.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from wallet_platform.config import Settings
from wallet_platform.storage.database import Database

# The key of the process's one event bus in ``Runtime.extras`` (made by
# ``messaging.factory``; read by the server's readiness probe too).
BUS_EXTRA_KEY = "bus"


@dataclass
class Runtime:
    """Shared by the components of one process (built once, in ``run_server``)."""

    settings: Settings
    db: Database
    # "stack" when every service runs in this process, else the service's name.
    role: str = "stack"
    # Set once the server is bound: how this process reaches its own services.
    self_target: str = ""
    # Extra shared objects added by components (e.g. the event bus), by name.
    extras: dict[str, Any] = field(default_factory=dict)
