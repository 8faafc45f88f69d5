"""Alembic migrations for the shared database (applied at start-up by ``migrate``)."""
