"""Versioned schema migrations: the packaged `store/migrations/NNNN_name.sql` files.

Every store implementation records what it applied in a `schema_migrations(version, applied_at)` table
and applies the missing versions in order, each in one transaction, when it opens.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass
from importlib import resources

_MIGRATION_FILE = re.compile(r"^(\d{4})_\w+\.sql$")

SCHEMA_MIGRATIONS_DDL = (
    "CREATE TABLE IF NOT EXISTS schema_migrations "
    "(version BIGINT NOT NULL PRIMARY KEY, applied_at BIGINT NOT NULL)"
)


class SchemaTooNew(RuntimeError):
    """The database carries migrations this release does not know: a newer release wrote it."""


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str


def load_migrations(package: str = "overnight.store", folder: str = "migrations") -> list[Migration]:
    """The migration files of `package`/`folder`, in version order."""
    found = []
    for entry in resources.files(package).joinpath(folder).iterdir():
        match = _MIGRATION_FILE.match(entry.name)
        if match:
            found.append(Migration(int(match[1]), entry.name, entry.read_text(encoding="utf-8")))
    found.sort(key=lambda migration: migration.version)
    versions = [migration.version for migration in found]
    if len(set(versions)) != len(versions):
        raise RuntimeError(f"two migrations share a version: {[m.name for m in found]}")
    return found


def check_known(applied: Collection[int], migrations: Sequence[Migration]) -> None:
    """Raise SchemaTooNew when the database has a version this release does not ship."""
    unknown = set(applied) - {migration.version for migration in migrations}
    if unknown:
        raise SchemaTooNew(
            f"the database has schema versions {sorted(unknown)} that this release of Overnight does not "
            "know: a newer release migrated it. Run that release (or a newer one) here too; never an "
            "older one against this database"
        )


def split_statements(script: str) -> Iterator[str]:
    """The statements of a SQL script; semicolons inside literals and comments stay where they are."""
    pending = ""
    for piece in script.split(";"):
        pending += piece + ";"
        if sqlite3.complete_statement(pending):
            yield pending.strip()
            pending = ""
    leftover = [
        line for line in pending[:-1].splitlines() if line.strip() and not line.strip().startswith("--")
    ]
    if leftover:
        raise ValueError(f"unterminated SQL statement: {' '.join(leftover)[:80]}")
