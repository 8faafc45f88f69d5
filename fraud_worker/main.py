"""``fraud-worker``: the fraud consumer plus FraudService (default :50054)."""

from __future__ import annotations

from collections.abc import Sequence

from fraud_worker.bootstrap import build_components
from wallet_platform.server.process import run_server

DEFAULT_LISTEN = "127.0.0.1:50054"


def main(argv: Sequence[str] | None = None) -> None:
    run_server(
        "fraud-worker: consumes fraud.wallet-events, serves FraudService",
        role="fraud-worker",
        default_listen=DEFAULT_LISTEN,
        build_components=build_components,
        argv=argv,
    )


if __name__ == "__main__":
    main()
