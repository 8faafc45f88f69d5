"""``walletctl db upgrade|current|history``: run and inspect the schema migrations.

Every server already migrates at start-up under an advisory lock; ``db upgrade`` runs
the same code (``wallet_platform.storage.migrate.upgrade``, same lock) on its own, so a
deployment can migrate once, in a job, before any new server starts, and see a failed
migration as a failed job rather than as servers that never become ready.

``current`` and ``history`` only read (one snapshot) and never create a database.
``current`` exits 1 when the schema is not what this build expects: migrations pending,
or a revision this build does not know (a newer release migrated the database: rolling
back the code is then not safe without checking the migration).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any

from walletctl import exitcodes, render
from walletctl.commands import group, leaf
from walletctl.context import Context, OperationFailedError


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    _, cmds = group(sub, "db", "run and inspect the database schema migrations", __doc__)
    leaf(
        cmds,
        "upgrade",
        common,
        upgrade,
        "apply pending migrations (advisory-locked, safe while servers start)",
    )
    leaf(
        cmds,
        "current",
        common,
        current,
        "the schema revision of the database; exit 1 unless it is this build's head",
    )
    leaf(cmds, "history", common, history, "every migration of this build and whether applied")


@dataclass(frozen=True)
class Migration:
    revision: str
    down_revision: str | None
    description: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "revision": self.revision,
            "down_revision": self.down_revision,
            "description": self.description,
        }


@dataclass(frozen=True)
class SchemaState:
    """What the database records against what this build ships."""

    recorded: tuple[str, ...]  # revisions in the database's alembic_version table
    heads: tuple[str, ...]  # the newest revision(s) of this build
    migrations: tuple[Migration, ...]  # this build's migrations, oldest first
    applied: frozenset[str]  # revisions of this build the database already has
    unknown: tuple[str, ...]  # recorded revisions this build does not know

    @property
    def pending(self) -> list[Migration]:
        return [m for m in self.migrations if m.revision not in self.applied]

    @property
    def up_to_date(self) -> bool:
        return not self.unknown and not self.pending

    def to_dict(self) -> dict[str, Any]:
        return {
            "current": list(self.recorded),
            "heads": list(self.heads),
            "pending": [m.to_dict() for m in self.pending],
            "unknown": list(self.unknown),
            "up_to_date": self.up_to_date,
        }


def _scripts() -> Any:
    from alembic.script import ScriptDirectory

    from wallet_platform.storage import migrate

    return ScriptDirectory.from_config(migrate.alembic_config())


def _recorded_revisions(database_url: str) -> tuple[str, ...]:
    from alembic.runtime.migration import MigrationContext

    from walletctl.dbutil import snapshot

    with snapshot(database_url) as connection:
        return tuple(sorted(MigrationContext.configure(connection).get_current_heads()))


def schema_state(database_url: str, recorded: tuple[str, ...] | None = None) -> SchemaState:
    """Read the database's revision(s) (unless given) and place them in this build's history."""
    scripts = _scripts()
    if recorded is None:
        recorded = _recorded_revisions(database_url)
    migrations = tuple(
        Migration(script.revision, script.down_revision, script.doc or "")
        for script in reversed(list(scripts.walk_revisions()))
    )
    known = {m.revision for m in migrations}
    unknown = tuple(r for r in recorded if r not in known)
    applied: set[str] = set()
    for revision in recorded:
        if revision in known:
            applied.update(s.revision for s in scripts.iterate_revisions(revision, "base"))
    return SchemaState(
        recorded=recorded,
        heads=tuple(sorted(scripts.get_heads())),
        migrations=migrations,
        applied=frozenset(applied),
        unknown=unknown,
    )


def _database_is_missing(database_url: str) -> bool:
    from wallet_platform.storage.database import sqlite_path

    path = sqlite_path(database_url)
    return path is not None and not path.exists()


def _revisions_text(revisions: tuple[str, ...] | list[str]) -> str:
    return ", ".join(revisions) if revisions else "none (empty database)"


def _unknown_text(state: SchemaState) -> str:
    return (
        f"the database is at revision {', '.join(state.unknown)}, which this build does not "
        "know: a newer release migrated it"
    )


def upgrade(ctx: Context, args: argparse.Namespace) -> int:
    from wallet_platform.storage import migrate
    from walletctl.dbutil import masked

    url = ctx.database_url
    before = schema_state(url, recorded=() if _database_is_missing(url) else None)
    if before.unknown:
        raise OperationFailedError(_unknown_text(before) + "; nothing applied")
    migrate.upgrade(url)
    after = schema_state(url)
    done = [m for m in before.pending if m.revision in after.applied]
    data = {
        "database": masked(url),
        "before": list(before.recorded),
        "after": list(after.recorded),
        "applied": [m.to_dict() for m in done],
    }

    def text() -> str:
        lines = [f"database {masked(url)}"]
        lines.extend(f"applied  {m.revision}  {m.description}" for m in done)
        if not done:
            lines.append("nothing to apply")
        lines.append(f"now at   {_revisions_text(after.recorded)} (head)")
        return "\n".join(lines)

    ctx.emit(data, text)
    return exitcodes.OK


def current(ctx: Context, args: argparse.Namespace) -> int:
    from walletctl.dbutil import masked

    state = schema_state(ctx.database_url)
    data = {"database": masked(ctx.database_url), **state.to_dict()}

    def text() -> str:
        lines = [
            f"database {masked(ctx.database_url)}",
            f"current  {_revisions_text(state.recorded)}",
            f"head     {', '.join(state.heads)}",
        ]
        if state.unknown:
            lines.append(_unknown_text(state))
        elif state.pending:
            lines.append(f"{len(state.pending)} migration(s) pending: run walletctl db upgrade")
            lines.extend(f"  {m.revision}  {m.description}" for m in state.pending)
        else:
            lines.append("up to date")
        return "\n".join(lines)

    ctx.emit(data, text)
    return exitcodes.OK if state.up_to_date else exitcodes.FAILED


def history(ctx: Context, args: argparse.Namespace) -> int:
    from walletctl.dbutil import masked

    state = schema_state(ctx.database_url)
    rows = [
        {
            **m.to_dict(),
            "applied": m.revision in state.applied,
            "head": m.revision in state.heads,
        }
        for m in state.migrations
    ]
    data = {
        "database": masked(ctx.database_url),
        "migrations": rows,
        "unknown": list(state.unknown),
    }

    def text() -> str:
        shown = [
            {
                "revision": row["revision"] + (" (head)" if row["head"] else ""),
                "applied": "yes" if row["applied"] else "no",
                "description": row["description"],
            }
            for row in rows
        ]
        table = render.table(shown, ("revision", "applied", "description"))
        lines = [f"database {masked(ctx.database_url)}", table]
        if state.unknown:
            lines.append(_unknown_text(state))
        return "\n".join(lines)

    ctx.emit(data, text)
    return exitcodes.OK
