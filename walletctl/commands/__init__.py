"""One module per command group; each exposes ``register(subparsers, common)``."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

Handler = Callable[..., int]


def group(
    sub: Any, name: str, help_text: str, description: str | None = None
) -> tuple[argparse.ArgumentParser, Any]:
    """A command group (``walletctl wallets ...``) and its sub-command registry."""
    parser = sub.add_parser(
        name,
        help=help_text,
        description=description or help_text,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.set_defaults(group_parser=parser, handler=None)
    return parser, parser.add_subparsers(dest=f"{name}_command", metavar="SUBCOMMAND")


def leaf(
    sub: Any,
    name: str,
    common: argparse.ArgumentParser,
    handler: Handler,
    help_text: str,
    description: str | None = None,
) -> argparse.ArgumentParser:
    """A runnable command with the global options attached."""
    parser = sub.add_parser(
        name,
        parents=[common],
        help=help_text,
        description=description or help_text,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.set_defaults(handler=handler)
    return parser


def positive_int(raw: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {raw!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0: {raw!r}")
    return value


def amount(raw: str) -> int:
    """Minor units (cents): a positive integer, no decimals (money is never a float)."""
    if not raw.isdigit():
        raise argparse.ArgumentTypeError(
            f"amount must be a positive integer of minor units (cents), got {raw!r}"
        )
    return positive_int(raw)


def timestamp(raw: str) -> datetime:
    """ISO 8601; a time without an offset is taken as UTC; a trailing Z is accepted."""
    text = raw.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not an ISO 8601 time: {raw!r} (e.g. 2026-01-31T12:00:00Z)"
        ) from None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


MORE_HINT = "\n(more: use --limit N or --all)"


def fetch_pages(
    call: Callable[[int, str], Any],
    items: Callable[[Any], Any],
    limit: int | None,
) -> tuple[list[Any], bool]:
    """Follow ``next_page_token`` until ``limit`` items (None: all) or the last page.

    ``call(page_size, page_token)`` makes one list RPC; ``items(response)`` gives that
    page's rendered items. Returns the items and whether the server has more.
    """
    found: list[Any] = []
    token = ""
    while True:
        page_size = 1000 if limit is None else min(1000, limit - len(found))
        response = call(page_size, token)
        found.extend(items(response))
        token = response.next_page_token
        if not token or (limit is not None and len(found) >= limit):
            break
    return found, bool(token)
