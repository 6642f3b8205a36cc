"""Body of `asign query`: read-only SQL over a store, printed as a table, JSON or CSV, or
saved to a file."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

FORMATS = ("table", "json", "csv")


def run_query(store: Path, sql: str, out: Path | None) -> Any:
    """The result table; with ``out`` it is also written there (atomically, never inside
    the store)."""
    from asign.store import open_store
    from asign.store.query import write_result

    opened = open_store(store)
    result = opened.query(sql)
    if out is not None:
        write_result(result, out, opened.layout)
    return result


def print_result(table: Any, fmt: str) -> None:
    if fmt == "json":
        from asign.store.query import strict_json

        sys.stdout.write(strict_json(table.to_pylist()) + "\n")
    elif fmt == "csv":
        from asign.store.query import write_csv

        write_csv(table, sys.stdout)
    else:
        from rich.console import Console
        from rich.table import Table

        out = Table(show_lines=False)
        for name in table.column_names:
            out.add_column(name)
        for row in table.to_pylist():
            out.add_row(*[_cell(row[c]) for c in table.column_names])
        Console(width=max(120, len(table.column_names) * 14)).print(out)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return "" if value is None else str(value)
