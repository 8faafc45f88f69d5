"""``walletctl dlq``: inspect, replay and purge the consumers' dead-letter queues.

Works on the bus the platform uses: RabbitMQ's ``*.dlq`` queues when ``--amqp-url`` /
``WALLET_AMQP_URL`` is set, else the in-process bus's dead rows in the database
(``--database-url``). Queues may be named ``analytics``, ``analytics.wallet-events``
or ``analytics.wallet-events.dlq`` (same for ``fraud``). Listing removes nothing.
Replay sends a dead letter back to the queue it died in (the consumer's inbox makes
a replay of an already applied event harmless); purge deletes for good and asks for
``--yes``.

Replay and purge are recorded in the audit trail (``audit_log`` through
``--database-url``, see ``walletctl.action_audit``): an intent row before the
action, its outcome and the message ids that moved after it. When that record
cannot be written the action does not run (exit 3).
"""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, TypeVar

from wallet_platform.config import Settings
from walletctl import exitcodes, render
from walletctl.commands import group, leaf, positive_int
from walletctl.context import Context, UnavailableError, UsageError

if TYPE_CHECKING:
    from walletctl.action_audit import ActionAudit

T = TypeVar("T")

LIST_COLUMNS = (
    "queue",
    "message_id",
    "routing_key",
    "attempts",
    "dead_lettered_at",
    "reason",
)


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    _, cmds = group(sub, "dlq", "inspect, replay and purge the dead-letter queues", __doc__)

    p = leaf(cmds, "list", common, list_letters, "counts per queue and the dead letters")
    p.add_argument("queue", nargs="?", help="analytics or fraud (default: both)")
    p.add_argument("--limit", type=positive_int, default=100, help="at most this many (100)")

    p = leaf(cmds, "show", common, show, "one dead letter with its decoded body and reason")
    p.add_argument("queue", help="analytics or fraud")
    p.add_argument("message_id")

    for name, handler, text in (
        ("replay", replay, "send dead letters back to their queue"),
        ("purge", purge, "delete dead letters for good (needs --yes)"),
    ):
        p = leaf(cmds, name, common, handler, text)
        p.add_argument("queue", help="analytics or fraud")
        p.add_argument("message_ids", nargs="*", metavar="MESSAGE_ID", help="these messages")
        p.add_argument("--all", action="store_true", help="every dead letter of the queue")
        if name == "purge":
            p.add_argument("--yes", action="store_true", help="confirm the deletion")


def _settings(ctx: Context) -> Settings:
    return Settings(database_url=ctx.database_url, amqp_url=ctx.amqp_url, db_pool_size=1)


def _run(ctx: Context, work: Callable[[Settings], Coroutine[Any, Any, T]]) -> T:
    """Run one library call, mapping bad queue names and broker outages to exit codes."""
    try:
        return asyncio.run(work(_settings(ctx)))
    except ValueError as error:
        raise UsageError(str(error)) from None
    except (TimeoutError, ConnectionError, OSError) as error:
        raise UnavailableError(f"broker: {type(error).__name__}: {error}") from None
    except Exception as error:
        if type(error).__module__.split(".")[0] in ("aio_pika", "aiormq", "pamqp"):
            raise UnavailableError(f"broker: {type(error).__name__}: {error}") from None
        raise


def _lib() -> Any:
    """The DLQ library (imported on use: it pulls in aio-pika and SQLAlchemy)."""
    from wallet_platform.messaging import dlq

    return dlq


def _letter(letter: Any, with_body: bool = False) -> dict[str, Any]:
    from google.protobuf.json_format import MessageToDict

    from wallet_platform.messaging.events import UndecodableMessageError, decode

    data: dict[str, Any] = {
        "queue": letter.queue,
        "dlq": letter.dlq,
        "message_id": letter.message_id,
        "routing_key": letter.routing_key,
        "message_type": letter.message_type,
        "attempts": letter.attempts,
        "dead_lettered_at": render.iso(letter.dead_lettered_at),
        "reason": letter.reason,
        "body_bytes": len(letter.body),
    }
    if with_body:
        try:
            data["body"] = MessageToDict(
                decode(letter.message_type, letter.body), preserving_proto_field_name=True
            )
        except UndecodableMessageError as error:
            data["body"] = None
            data["body_error"] = str(error)
            data["body_hex"] = letter.body[:4096].hex()
    return data


def list_letters(ctx: Context, args: argparse.Namespace) -> int:
    async def work(settings: Settings) -> tuple[dict[str, int], list[Any]]:
        counts = await _lib().count_dead_letters(settings)
        letters = await _lib().list_dead_letters(settings, args.queue, limit=args.limit)
        return counts, letters

    counts, letters = _run(ctx, work)
    rows = [_letter(letter) for letter in letters]
    bus = "rabbitmq" if ctx.amqp_url else "in-process (database)"

    def text() -> str:
        lines = [f"bus: {bus}"]
        lines.append(
            render.table(
                [{"queue": q, "dead_letters": n} for q, n in counts.items()],
                ("queue", "dead_letters"),
                right=("dead_letters",),
            )
        )
        lines.append("")
        lines.append(render.table(rows, LIST_COLUMNS, right=("attempts",)))
        return "\n".join(lines)

    ctx.emit({"bus": bus, "counts": counts, "dead_letters": rows}, text)
    return exitcodes.OK


def show(ctx: Context, args: argparse.Namespace) -> int:
    letter = _run(
        ctx, lambda settings: _lib().show_dead_letter(settings, args.queue, args.message_id)
    )
    if letter is None:
        ctx.emit(
            {"error": {"code": "NOT_FOUND", "message": f"no dead letter {args.message_id!r}"}},
            f"no dead letter {args.message_id!r} in {args.queue}",
        )
        return exitcodes.FAILED
    data = _letter(letter, with_body=True)

    def text() -> str:
        keys = [k for k in data if k not in ("body", "body_hex")]
        lines = [render.record(data, keys), "body:"]
        if data.get("body") is not None:
            lines.append(json.dumps(data["body"], indent=2))
        else:
            lines.append(data.get("body_hex") or "")
        return "\n".join(lines)

    ctx.emit({"dead_letter": data}, text)
    return exitcodes.OK


def _selection(args: argparse.Namespace) -> list[str] | None:
    if args.all and args.message_ids:
        raise UsageError("give message ids or --all, not both")
    if not args.all and not args.message_ids:
        raise UsageError("name the message ids, or --all for the whole queue")
    return None if args.all else list(args.message_ids)


def replay(ctx: Context, args: argparse.Namespace) -> int:
    wanted = _selection(args)
    return _audited(ctx, args.queue, "replay", wanted, _lib().replay_dead_letters)


def purge(ctx: Context, args: argparse.Namespace) -> int:
    wanted = _selection(args)
    if not args.yes:
        raise UsageError("purge deletes dead letters for good; add --yes to confirm")
    return _audited(ctx, args.queue, "purge", wanted, _lib().purge_dead_letters)


# Per action: the past tense of the output and the audit method
# (``walletctl audit --method dlq`` finds both).
ACTIONS = {
    "replay": ("replayed", "walletctl/DlqReplay"),
    "purge": ("purged", "walletctl/DlqPurge"),
}
MAX_RECORDED_IDS = 500


def _ids(ids: list[str]) -> dict[str, Any]:
    """Message ids for the audit record: all of them up to a bound, and the count."""
    return {
        "count": len(ids),
        "ids": ids[:MAX_RECORDED_IDS],
        "truncated": len(ids) > MAX_RECORDED_IDS,
    }


def _status_of(error: BaseException) -> str:
    if isinstance(error, UnavailableError):
        return "UNAVAILABLE"
    if isinstance(error, UsageError):
        return "INVALID_ARGUMENT"
    if isinstance(error, KeyboardInterrupt):
        return "CANCELLED"
    return "UNKNOWN"


def _audited(
    ctx: Context,
    queue_arg: str,
    command: str,
    wanted: list[str] | None,
    action: Callable[..., Coroutine[Any, Any, int]],
) -> int:
    """Run replay or purge between its audit intent row and its outcome."""
    from wallet_platform.messaging.bus import resolve_queue
    from walletctl.action_audit import ActionAudit, Operator

    try:
        queue = resolve_queue(queue_arg)
    except ValueError as error:
        raise UsageError(str(error)) from None
    verb, method = ACTIONS[command]
    record = ActionAudit(ctx.database_url, method, Operator.current(ctx.config.auth_token))
    record.begin(
        {
            "command": f"dlq {command}",
            "bus": "rabbitmq" if ctx.amqp_url else "in-process",
            "queue": queue,
            "selection": "all" if wanted is None else _ids(wanted),
        },
        refusal=f"nothing was {verb}",
    )
    moved: list[str] = []
    try:
        _run(ctx, lambda settings: action(settings, queue, wanted, moved=moved))
    except BaseException as error:
        message = str(error) or type(error).__name__
        _finish(ctx, record, _status_of(error), message, {verb: _ids(moved)})
        raise
    missing = sorted(set(wanted) - set(moved)) if wanted is not None else []
    _finish(
        ctx,
        record,
        "NOT_FOUND" if missing else "OK",
        f"{len(missing)} of the given ids were not in the DLQ" if missing else None,
        {verb: _ids(moved), "not_found": _ids(missing)},
    )
    ctx.emit(
        {verb: len(moved), "not_found": len(missing), "audit_id": record.audit_id},
        f"{verb} {len(moved)} dead letter(s)"
        + (f"; {len(missing)} of the given ids were not found" if missing else "")
        + f"\n(audit id {record.audit_id})",
    )
    return exitcodes.FAILED if missing else exitcodes.OK


def _finish(
    ctx: Context, record: ActionAudit, status: str, message: str | None, outcome: dict[str, Any]
) -> None:
    if not record.finish(status, message, outcome):
        ctx.note(
            f"warning: the outcome ({status}) could not be added to audit record "
            f"{record.audit_id}, which stays 'no outcome recorded'; this output is the "
            "only record of what happened"
        )
