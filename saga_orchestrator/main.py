"""``saga-orchestrator``: TransferService in its own process (default 127.0.0.1:50052)."""

from __future__ import annotations

from collections.abc import Sequence

from saga_orchestrator.bootstrap import build_components
from wallet_platform.server.process import run_server


def main(argv: Sequence[str] | None = None) -> None:
    run_server(
        "saga-orchestrator: TransferService, the crash-safe transfer saga",
        role="saga-orchestrator",
        default_listen="127.0.0.1:50052",
        build_components=build_components,
        argv=argv,
    )


if __name__ == "__main__":
    main()
