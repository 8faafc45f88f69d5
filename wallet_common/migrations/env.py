"""Alembic environment: always runs on a connection handed in by ``wallet_common.migrate``."""

from __future__ import annotations

from alembic import context

from wallet_common.schema import metadata

connection = context.config.attributes.get("connection")
if connection is None:  # pragma: no cover - only via wallet_common.migrate
    raise RuntimeError("run migrations through wallet_common.migrate.upgrade()")

context.configure(
    connection=connection,
    target_metadata=metadata,
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
