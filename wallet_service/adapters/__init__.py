"""The wallet service's persistence adapter: all of its SQL, for both backends.

Entry point: :class:`~wallet_service.adapters.store.WalletStore`. Modules by role:

* ``store`` - the adapter's door: units of work, the group commit, reads;
* ``unit_of_work`` - one write transaction, in domain terms; transient database
  failures become ``UnavailableError`` here;
* ``idempotency_sql``, ``ledger_sql``, ``hold_store`` - SQLAlchemy Core statements
  (SQLite, and the portable path on PostgreSQL);
* ``pg_move`` - PostgreSQL: one balance change in one statement (``text()`` on the
  unit of work's connection);
* ``pg_batch``, ``group_commit`` - PostgreSQL: concurrent balance changes in one
  transaction of two statements, raw psycopg in pipeline mode;
* ``movement_sql``, ``hold_sql`` - the SQL of the domain's movement and hold rules,
  generated from :mod:`wallet_service.domain` and :mod:`wallet_service.holds`;
* ``reads`` - read-side queries, and the plain wallet read on psycopg;
* ``codec`` - a write's outcome as stored (its response message) and its event's
  outbox row;
* ``rows`` - database rows to domain objects.
"""
