"""Bodies of `asign report` and `asign export`: they build the call and return a JSON-able
summary."""

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


def export_command(store: Path, run: str, h5ad: Path | None = None, model: str | None = None,
                   spatialdata: Path | None = None, ome_tiff: Path | None = None,
                   z_spacing_um: float | None = None) -> dict[str, Any]:
    from asign.errors import ConfigError
    from asign.report.export import export_h5ad
    from asign.report.sdata import export_stack
    from asign.store import StoreLayout

    layout = StoreLayout(Path(store))
    for target, what in ((h5ad, "the .h5ad export"), (spatialdata, "the SpatialData export"),
                         (ome_tiff, "the OME-TIFF export")):
        if target is not None:
            layout.require_outside(Path(target), what)
    if h5ad is None and spatialdata is None and ome_tiff is None:
        raise ConfigError("nothing to export", fix="give --h5ad FILE, --spatialdata DIR.zarr "
                                                   "and/or --ome-tiff FILE.ome.tif")
    out: dict[str, Any] = {}
    if h5ad is not None:
        out["h5ad"] = str(export_h5ad(store, run, h5ad, model=model))
    if spatialdata is not None or ome_tiff is not None:
        out.update(export_stack(store, run, spatialdata=spatialdata, ome_tiff=ome_tiff,
                                model=model, z_spacing_um=z_spacing_um))
    return out
