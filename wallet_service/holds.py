"""Pure rules of transfer holds: the money a transfer has taken and not yet delivered.

A transfer moves money in two phases, as TigerBeetle's pending / post / void transfers
do. The debit step takes the amount from the source AND records a hold (transfer id,
source, destination, amount, currency, state OPEN) in the same transaction. The hold
is then settled exactly once: the credit step posts it (the destination receives the
amount, state POSTED) or the refund step voids it (the source gets it back, state
VOIDED). A credit or a refund that does not describe an OPEN hold is refused and
changes nothing, whoever sends it: the ledger never creates money on a caller's word.

So at every instant, whatever any caller did: sum of balances + sum of OPEN holds =
deposits - withdrawals.

No I/O here. The persistence adapter hands in the locked hold (or None) and these
functions decide. The PostgreSQL statements enforce the same rules in SQL; their
predicates are built from the tables below (:mod:`wallet_service.adapters.hold_sql`),
and a test runs every case through both to prove they agree.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from wallet_platform.errors import (
    HoldAlreadyExistsError,
    HoldAlreadyPostedError,
    HoldAlreadyVoidedError,
    HoldMismatchError,
    HoldNotFoundError,
    InvalidArgumentError,
    WalletPlatformError,
)
from wallet_service.domain import Movement

OPEN = "OPEN"
POSTED = "POSTED"
VOIDED = "VOIDED"
HOLD_STATES = (OPEN, POSTED, VOIDED)

# Idempotency scope of the transfer steps' keys. Client writes use scope 'wallet', so
# no request_id a client chooses can ever collide with a step's key.
STEP_SCOPE = "step"


class HoldAction(enum.Enum):
    """What a transfer step does to its transfer's hold.

    ``party`` is the hold column that must name the step's wallet (None: the step
    creates the hold); ``settled`` is the state the step leaves an OPEN hold in.
    The values are what the SQL statements receive per request.
    """

    OPEN = ("open", None, None)
    POST = ("post", "to_wallet_id", POSTED)
    VOID = ("void", "from_wallet_id", VOIDED)

    def __init__(self, code: str, party: str | None, settled: str | None) -> None:
        self.code = code
        self.party = party
        self.settled = settled


# Each transfer step: the hold action it performs and the suffix of its derived key.
STEP_ACTIONS: dict[Movement, HoldAction] = {
    Movement.TRANSFER_DEBIT: HoldAction.OPEN,
    Movement.TRANSFER_CREDIT: HoldAction.POST,
    Movement.TRANSFER_REFUND: HoldAction.VOID,
}
STEP_NAMES: dict[Movement, str] = {
    Movement.TRANSFER_DEBIT: "debit",
    Movement.TRANSFER_CREDIT: "credit",
    Movement.TRANSFER_REFUND: "refund",
}
# Besides the party's wallet, a settling step must repeat these of the hold exactly.
MATCHED_FIELDS = ("amount", "currency")
# Only a hold in this state can be settled.
SETTLEABLE = OPEN

# Hold refusals are not stored under the step's key: they say nothing about that key,
# which stays free for the step the hold expects (a refused made-up credit must not
# block the saga's real credit of the same transfer).
UNRECORDED_ERRORS: tuple[type[WalletPlatformError], ...] = (
    HoldNotFoundError,
    HoldMismatchError,
    HoldAlreadyPostedError,
    HoldAlreadyVoidedError,
    HoldAlreadyExistsError,
)


@dataclass(frozen=True)
class Hold:
    """One transfer's money in flight, as stored in ``transfer_holds``."""

    transfer_id: str
    from_wallet_id: str
    to_wallet_id: str
    amount: int
    currency: str
    state: str


def step_key(transfer_id: str, movement: Movement) -> str:
    """The idempotency key of a step: ``<transfer_id>:<debit|credit|refund>``.

    Derived by the server, never taken from the caller, and stored under
    :data:`STEP_SCOPE`. Transfer ids never end in a step suffix ambiguity: the suffix
    is always one of three fixed words, so the key names exactly one (transfer, step).
    """
    return f"{transfer_id}:{STEP_NAMES[movement]}"


def check_step_request_id(request_id: str, transfer_id: str, movement: Movement) -> str:
    """The step's key; a caller's ``request_id`` must be empty or exactly that key.

    A foreign key is refused rather than silently ignored, so a caller who believes
    ``request_id`` makes a second credit "new" learns at once that it does not.
    """
    key = step_key(transfer_id, movement)
    if request_id and request_id != key:
        raise InvalidArgumentError(
            f"request_id of a transfer step must be empty or {key!r} (derived from the "
            f"transfer and the step), got {request_id[:80]!r}",
            field="request_id",
        )
    return key


def settle_allowed(
    hold: Hold | None, action: HoldAction, wallet_id: str, amount: int, currency: str
) -> bool:
    """True when a POST/VOID step may settle ``hold`` (the predicate SQL mirrors)."""
    if hold is None or action.party is None:
        return False
    return (
        hold.state == SETTLEABLE
        and getattr(hold, action.party) == wallet_id
        and hold.amount == amount
        and hold.currency == currency
    )


def check_open(hold: Hold | None, transfer_id: str) -> None:
    """A debit creates its transfer's hold; a transfer id that has one is refused."""
    if hold is not None:
        raise HoldAlreadyExistsError(
            f"transfer {transfer_id!r} already has a hold ({hold.state}) from a debit",
            field="transfer_id",
        )


def check_settle(
    hold: Hold | None,
    action: HoldAction,
    transfer_id: str,
    wallet_id: str,
    amount: int,
    currency: str,
) -> str:
    """The state a credit (POST) or refund (VOID) leaves the hold in, or why not.

    Order: no hold (NOT_FOUND), then the request against the hold (wallet, amount,
    currency: HOLD_MISMATCH), then the hold's state (already posted / voided).
    """
    if action.party is None or action.settled is None:
        raise ValueError(f"{action} does not settle a hold")
    if hold is None:
        raise HoldNotFoundError(transfer_id)
    party = getattr(hold, action.party)
    if party != wallet_id:
        role = "destination" if action is HoldAction.POST else "source"
        raise HoldMismatchError(
            f"transfer {transfer_id!r} holds money for {role} {party!r}, not {wallet_id!r}",
            field="wallet_id",
        )
    requested = {"amount": amount, "currency": currency}
    for name in MATCHED_FIELDS:
        if getattr(hold, name) != requested[name]:
            raise HoldMismatchError(
                f"transfer {transfer_id!r} holds {name} {getattr(hold, name)!r}, "
                f"not {requested[name]!r}",
                field=name,
            )
    if hold.state == POSTED:
        raise HoldAlreadyPostedError(
            f"transfer {transfer_id!r} was already credited to {hold.to_wallet_id!r}",
            field="transfer_id",
        )
    if hold.state == VOIDED:
        raise HoldAlreadyVoidedError(
            f"transfer {transfer_id!r} was already refunded to {hold.from_wallet_id!r}",
            field="transfer_id",
        )
    assert settle_allowed(hold, action, wallet_id, amount, currency)
    return action.settled


def check_step(
    hold: Hold | None,
    movement: Movement,
    transfer_id: str,
    wallet_id: str,
    amount: int,
    currency: str,
) -> str | None:
    """Any step against the hold: the hold's new state (None for a debit), or the error."""
    action = STEP_ACTIONS[movement]
    if action is HoldAction.OPEN:
        check_open(hold, transfer_id)
        return None
    return check_settle(hold, action, transfer_id, wallet_id, amount, currency)
