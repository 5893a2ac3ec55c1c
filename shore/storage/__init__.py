"""Storage behind one narrow interface (`Storage`), two real engines: SQLite (default) and PostgreSQL."""

from __future__ import annotations

from shore.storage.base import Storage, StorageError, Survey, Totals

__all__ = ["Storage", "StorageError", "Survey", "Totals", "open_storage"]


def open_storage(url: str, *, schema: str | None = None) -> Storage:
    """`postgresql://…` (or `postgres://…`) opens PostgreSQL; anything else is a SQLite file path
    (`sqlite:///path` is accepted too)."""
    if url.startswith(("postgresql://", "postgres://")):
        from shore.storage.postgres import PostgresStorage

        return PostgresStorage(url, schema=schema)
    from shore.storage.sqlite import SqliteStorage

    path = url[len("sqlite:///") :] if url.startswith("sqlite:///") else url
    return SqliteStorage(path)
