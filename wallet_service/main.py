"""``wallet-service``: WalletService in its own process (default 127.0.0.1:50051)."""

from __future__ import annotations

from collections.abc import Sequence

from wallet_platform.server.process import run_server
from wallet_service.bootstrap import build_components


def main(argv: Sequence[str] | None = None) -> None:
    run_server(
        "wallet-service: wallets, deposits, withdrawals, history, transfer steps",
        role="wallet-service",
        default_listen="127.0.0.1:50051",
        build_components=build_components,
        argv=argv,
    )


if __name__ == "__main__":
    main()
