"""``analytics-worker``: the analytics consumer plus AnalyticsService (default :50053)."""

from __future__ import annotations

from collections.abc import Sequence

from analytics_worker.bootstrap import build_components
from wallet_platform.server.process import run_server

DEFAULT_LISTEN = "127.0.0.1:50053"


def main(argv: Sequence[str] | None = None) -> None:
    run_server(
        "analytics-worker: consumes analytics.wallet-events, serves AnalyticsService",
        role="analytics-worker",
        default_listen=DEFAULT_LISTEN,
        build_components=build_components,
        argv=argv,
    )


if __name__ == "__main__":
    main()
