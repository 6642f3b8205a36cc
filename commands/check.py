"""Body of `asign check`: verify a store (store/check.py) and print what it found."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer


def check_command(store: Path) -> dict[str, Any]:
    """``{"store", "ok", "problems", "notes"}`` (what ``--json`` prints)."""
    from asign.store import open_store
    from asign.store.check import inspect_store

    found = inspect_store(open_store(store))
    return {"store": str(store), "ok": not found.problems, "problems": found.problems,
            "notes": found.notes}


def print_check(summary: dict[str, Any]) -> None:
    for p in summary["problems"]:
        typer.echo(f"problem: {p}", err=True)
    for note in summary["notes"]:
        typer.echo(f"note: {note}", err=True)
    n = len(summary["problems"])
    typer.echo(f"{summary['store']}: {'ok' if not n else f'{n} problem(s)'}")
