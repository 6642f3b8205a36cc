"""Body of `asign plan`: rank which section(s) to send for ST (train/plan.py), printed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer


def plan_command(store: Path, budget: int, sample: str | None) -> dict[str, Any]:
    from asign.train.plan import plan

    return plan(store, budget=budget, sample=sample)


def print_plan(result: dict[str, Any], budget: int) -> None:
    for sid, rows in result["samples"].items():
        typer.echo(f"sample {sid} (budget {budget}):")
        for r in rows:
            typer.echo(f"  {r['rank']:>2}. {','.join(r['known']):<16} score {r['score']:.4f}")
