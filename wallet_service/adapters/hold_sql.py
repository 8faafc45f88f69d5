"""SQL fragments of the hold rules, built from :mod:`wallet_service.holds`.

The PostgreSQL single-request statement (``pg_move.PG_MOVE``) and the group-commit
statement (``pg_batch_sql.MOVE_MANY``) decide in SQL whether a transfer step applies. Their
hold predicates are generated here from the domain's tables (``HoldAction``,
``MATCHED_FIELDS``, ``SETTLEABLE``), so a rule changed in the domain changes the SQL
with it; ``tests/integration/test_hold_sql.py`` runs every case through both.

How the statements use them, and why it is safe under READ COMMITTED:

1. the ``held`` CTE locks the hold row(s) of the claimed credit/refund requests with
   ``SELECT ... FOR UPDATE`` in a MATERIALIZED CTE. When another transaction settled
   the hold after this statement's snapshot, the lock waits for it and then returns
   the row's LATEST version (PostgreSQL re-reads a locked row), so the state seen is
   the committed one, never the stale snapshot's.
2. the wallet ``UPDATE`` carries :func:`gate`: it applies only if the locked hold
   still satisfies :func:`settle_predicate` (or, for a debit, no hold exists);
3. the hold's ``UPDATE`` (settle) and ``INSERT`` (open) read the wallet update's
   ``RETURNING`` rows, so the hold changes only when the balance did, and the balance
   changes only when the hold allowed it: both or neither, in one statement.

Two concurrent settlements of the same hold therefore serialise on its row lock and
the second sees POSTED/VOIDED: exactly one applies.
"""

from __future__ import annotations

from wallet_service.holds import MATCHED_FIELDS, SETTLEABLE, HoldAction

# The hold actions that settle an existing hold, and the literal each sends.
SETTLING = tuple(action for action in HoldAction if action.party is not None)
SETTLING_CODES = ", ".join(f"'{action.code}'" for action in SETTLING)


def settle_predicate(hold: str, action: str, wallet: str, amount: str, currency: str) -> str:
    """SQL for :func:`wallet_service.holds.settle_allowed` on alias ``hold``.

    ``action``, ``wallet``, ``amount`` and ``currency`` are SQL expressions of the
    request (the action code, the step's wallet, amount and currency).
    """
    request = {"amount": amount, "currency": currency}
    matched = " AND ".join(f"{hold}.{name} = {request[name]}" for name in MATCHED_FIELDS)
    parties = " OR ".join(
        f"({action} = '{a.code}' AND {hold}.{a.party} = {wallet})" for a in SETTLING
    )
    return f"({hold}.state = '{SETTLEABLE}' AND {matched} AND ({parties}))"


def gate(*, held: str, action: str, transfer: str, wallet: str, amount: str, currency: str) -> str:
    """The hold condition of a balance change (true for deposits and withdrawals).

    ``held`` names the CTE of locked holds (columns as in ``transfer_holds``).
    """
    settles = settle_predicate("h", action, wallet, amount, currency)
    return f"""(
        {action} = ''
        OR ({action} = '{HoldAction.OPEN.code}' AND NOT EXISTS (
            SELECT 1 FROM transfer_holds AS h WHERE h.transfer_id = {transfer}))
        OR ({action} IN ({SETTLING_CODES}) AND EXISTS (
            SELECT 1 FROM {held} AS h WHERE h.transfer_id = {transfer} AND {settles}))
    )"""


def settled_state(action: str) -> str:
    """SQL for the state a settling action leaves the hold in."""
    whens = " ".join(f"WHEN '{a.code}' THEN '{a.settled}'" for a in SETTLING)
    return f"(CASE {action} {whens} END)"


HOLD_FIELDS = ("transfer_id", "from_wallet_id", "to_wallet_id", "amount", "currency", "state")


def columns(alias: str = "") -> str:
    """The hold's columns for a SELECT or INSERT list, optionally qualified."""
    prefix = f"{alias}." if alias else ""
    return ", ".join(prefix + name for name in HOLD_FIELDS)
