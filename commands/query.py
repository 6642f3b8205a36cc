"""Body of `asign query`: read-only SQL over a store, printed as a table (the first
``max_rows`` rows), JSON or CSV (streamed), or saved to a file (streamed, atomically)."""

from __future__ import annotations

import itertools
import sys
from pathlib import Path
from typing import Any

FORMATS = ("table", "json", "csv")
MAX_ROWS = 1000  # rows a table shows; the full result goes to --out or --format csv/json


def run_query(store: Path, sql: str, out: Path | None, fmt: str = "table",
              max_rows: int = MAX_ROWS, memory_limit: str | None = None) -> int:
    """Print the result (or write it to ``out``); returns the number of rows written or
    printed. Nothing but the rows shown is ever held in memory."""
    from asign.errors import ConfigError
    from asign.store import open_store
    from asign.store.query import check_memory_limit, open_result, write_result

    problems = check_memory_limit(memory_limit)
    if max_rows < 0:
        problems.append(f"--max-rows must be ≥ 0 (0 = all), got {max_rows}")
    if problems:
        raise ConfigError("; ".join(problems), fix="e.g. --max-rows 100 --memory-limit 2GB")
    opened = open_store(store)
    with open_result(opened.layout, sql, memory_limit) as result:
        if out is not None:
            return write_result(result, out, opened.layout)
        if fmt == "json":
            from asign.store.query_out import write_json

            return write_json(result.schema, result, sys.stdout)
        if fmt == "csv":
            from asign.store.query_out import write_csv

            return write_csv(result.schema, result, sys.stdout)
        return _print_table(result, max_rows)


def _print_table(result: Any, max_rows: int) -> int:
    from rich.console import Console
    from rich.table import Table

    names = result.schema.names
    rows = itertools.chain.from_iterable(b.to_pylist() for b in result)
    shown = list(itertools.islice(rows, max_rows or None))
    more = max_rows > 0 and next(rows, None) is not None
    out = Table(show_lines=False)
    for name in names:
        out.add_column(name)
    for row in shown:
        out.add_row(*[_cell(row[c]) for c in names])
    Console(width=max(120, len(names) * 14)).print(out)
    if more:
        sys.stderr.write(f"showing the first {max_rows} rows; pass --out FILE (or --format csv) "
                         "for all of them, or --max-rows 0\n")
    return len(shown)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return "" if value is None else str(value)
