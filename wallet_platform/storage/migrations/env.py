"""Alembic environment: always runs on a connection handed in by ``storage.migrate``."""

from __future__ import annotations

from alembic import context

from wallet_platform.storage.schema import metadata

connection = context.config.attributes.get("connection")
if connection is None:  # pragma: no cover - only via wallet_platform.storage.migrate
    raise RuntimeError("run migrations through wallet_platform.storage.migrate.upgrade()")

context.configure(
    connection=connection,
    target_metadata=metadata,
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
