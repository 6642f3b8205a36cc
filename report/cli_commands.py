"""Bodies of `asign report` and `asign export`, for cli.py to wire: plain typed functions
that build the call and return a JSON-able summary. They raise AsignError subclasses; the
CLI turns those into exit 1 with one line on stderr."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def split_genes(value: str | None) -> tuple[str, ...] | None:
    """``"ERBB2, MDK"`` → ``("ERBB2", "MDK")``; empty → None (the default genes)."""
    genes = tuple(g.strip() for g in (value or "").split(",") if g.strip())
    return genes or None


def report_command(store: Path, run: str, out: Path, genes: str | None = None,
                   model: str | None = None) -> dict[str, Any]:
    from asign.report import write_report
    from asign.store import StoreLayout

    StoreLayout(Path(store)).require_outside(Path(out), "the report")
    html = write_report(store, run, out, genes=split_genes(genes), model=model)
    pngs = sorted(p.name for p in Path(out).glob("*.png"))
    return {"report": str(html), "figures": pngs, "out": str(out)}


def export_command(store: Path, run: str, h5ad: Path, model: str | None = None) -> dict[str, Any]:
    from asign.report.export import export_h5ad
    from asign.store import StoreLayout

    StoreLayout(Path(store)).require_outside(Path(h5ad), "the .h5ad export")
    path = export_h5ad(store, run, h5ad, model=model)
    return {"h5ad": str(path)}
