"""The ledger's invariants, checked against the database: one definition for every tool.

``walletctl reconcile`` runs them over the whole database; ``wallet-bench`` runs them
over one run's wallets (:attr:`CheckOptions.wallet_prefix`). Each check is one or a few
SQL queries (portable between SQLite and PostgreSQL) that return only the rows breaking
an invariant, so the cost stays a few aggregate scans however large the ledger is.
The checks read tables only: no service code, just the schema and the shared tables
of what events do (:mod:`wallet_events.effects`) and what saga states mean
(:mod:`saga_orchestrator.domain`).

- :mod:`wallet_checks.catalog`: names and one-line meanings (no database stack);
- :mod:`wallet_checks.context`: options, results and the per-snapshot query helper;
- :mod:`wallet_checks.ledger`, :mod:`~wallet_checks.sagas`, :mod:`~wallet_checks.holds`,
  :mod:`~wallet_checks.delivery`: the checks, by subject;
- :mod:`wallet_checks.runner`: the registry and :func:`~wallet_checks.runner.run_checks`.
"""
