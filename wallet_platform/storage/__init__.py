"""The database: engines for SQLite and PostgreSQL, the table definitions, migrations
and the group-commit scheduler."""
