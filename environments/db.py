"""MockDatabase: a SQLite database seeded from a JSON fixture, fresh and isolated for every episode.

Design
------
The fixture is ``{"table": [{column: value, ...}, ...], ...}``. Columns are inferred from the rows (their
union, in first-seen order; SQLite's dynamic typing keeps the JSON value types) unless an explicit
``schema`` (``{"table": "CREATE TABLE ..."}``) is given. The fixture is loaded once into a template
in-memory database; ``fresh()`` copies it with SQLite's backup API into a new ``:memory:`` connection, so
parallel episodes never share state and a reset costs a page copy, not a re-parse.

``state_hash()`` is a canonical SHA-256 of the content: tables sorted by name, each row as a canonical JSON
object (sorted keys), rows sorted by that JSON. Two databases with the same content hash equal whatever the
insertion order, and any changed value changes the hash; the reward's DB check compares these hashes.
"""
from __future__ import annotations

import hashlib
import json
import re
import sqlite3
from pathlib import Path
from typing import Any

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _quote(name: str, where: str) -> str:
    if not _NAME.fullmatch(name):
        raise ValueError(f"{where}: {name!r} is not a valid SQL identifier")
    return f'"{name}"'


def _seed(conn: sqlite3.Connection, fixture: dict[str, list[dict[str, Any]]], schema: dict[str, str] | None,
          source: str) -> None:
    if not isinstance(fixture, dict):
        raise ValueError(f"{source}: the fixture must be a JSON object of table -> list of rows")
    for table, rows in fixture.items():
        qtable = _quote(table, f"{source}, table")
        if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
            raise ValueError(f"{source}: table {table!r} must be a list of row objects")
        columns: list[str] = []
        for row in rows:
            columns.extend(c for c in row if c not in columns)
        if schema and table in schema:
            conn.execute(schema[table])
        else:
            if not columns:
                raise ValueError(f"{source}: table {table!r} has no rows and no schema, so no columns")
            conn.execute(f"CREATE TABLE {qtable} ({', '.join(_quote(c, f'{source}, {table}') for c in columns)})")
        for row in rows:
            names = ", ".join(_quote(c, f"{source}, {table}") for c in row)
            marks = ", ".join("?" for _ in row)
            values = [json.dumps(v) if isinstance(v, list | dict) else v for v in row.values()]
            conn.execute(f"INSERT INTO {qtable} ({names}) VALUES ({marks})", values)
    conn.commit()


class MockDatabase:
    """One episode's database (``conn``), or the template that ``fresh()`` copies."""

    def __init__(self, conn: sqlite3.Connection):
        conn.row_factory = sqlite3.Row
        self.conn = conn

    @classmethod
    def from_fixture(cls, fixture: dict[str, list[dict[str, Any]]], schema: dict[str, str] | None = None,
                     source: str = "fixture") -> MockDatabase:
        conn = sqlite3.connect(":memory:", check_same_thread=False)
        _seed(conn, fixture, schema, source)
        return cls(conn)

    @classmethod
    def from_json(cls, path: str | Path, schema: dict[str, str] | None = None) -> MockDatabase:
        path = Path(path)
        try:
            fixture = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: not valid JSON: {exc}") from exc
        return cls.from_fixture(fixture, schema, source=str(path))

    def fresh(self) -> MockDatabase:
        """An independent in-memory copy of this database."""
        conn = sqlite3.connect(":memory:", check_same_thread=False)
        self.conn.backup(conn)
        return MockDatabase(conn)

    def tables(self) -> list[str]:
        rows = self.conn.execute("SELECT name FROM sqlite_master WHERE type='table' ORDER BY name").fetchall()
        return [r[0] for r in rows]

    def query(self, sql: str, params: tuple | dict = ()) -> list[dict[str, Any]]:
        """Rows of a SELECT as dicts."""
        return [dict(r) for r in self.conn.execute(sql, params).fetchall()]

    def execute(self, sql: str, params: tuple | dict = ()) -> int:
        """Run a write statement and commit; returns the number of rows changed."""
        cursor = self.conn.execute(sql, params)
        self.conn.commit()
        return cursor.rowcount

    def dump(self) -> dict[str, list[dict[str, Any]]]:
        """All tables as ``{table: [row, ...]}``, rows in canonical order."""
        out = {}
        for table in self.tables():
            rows = self.query(f"SELECT * FROM {_quote(table, 'table')}")
            out[table] = sorted(rows, key=lambda r: json.dumps(r, sort_keys=True, default=str))
        return out

    def state_hash(self) -> str:
        """Canonical SHA-256 of the content, independent of insertion order."""
        canonical = json.dumps(self.dump(), sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
        return hashlib.sha256(canonical.encode()).hexdigest()

    def close(self) -> None:
        self.conn.close()
