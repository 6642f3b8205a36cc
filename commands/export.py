"""Bodies of `asign report` and `asign export`: they build the call and return a JSON-able
summary."""

from __future__ import annotations

from dataclasses import make_dataclass
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


def _export_config() -> type:
    """One option per format of EXPORTS (generated: a new format needs no line here)."""
    from asign.options import opt
    from asign.report.formats import EXPORTS

    fields: list[tuple[str, Any, Any]] = [
        (name, Path | None, opt(None, help=f.help, metavar=f.metavar, group="Formats"))
        for name, f in EXPORTS.items()]
    fields.append(("z_spacing_um", float | None, opt(
        None, gt=0, help="Distance between consecutive sections in µm for the image stack "
                         "(default: the spacing recorded at ingest, --section-um).")))
    return make_dataclass("ExportConfig", fields, frozen=True)


ExportConfig = _export_config()


def export_command(store: Path, run: str, *, model: str | None = None,
                   z_spacing_um: float | None = None, **targets: Path | None) -> dict[str, Any]:
    """``targets``: format name (``EXPORTS``) → output path, or None where not asked."""
    from asign.errors import ConfigErrors
    from asign.options import problems
    from asign.report.formats import export_run

    bad = problems(_export_config()(z_spacing_um=z_spacing_um, **targets))  # declared bounds
    if bad:
        raise ConfigErrors(bad, what="asign export options", fix="see `asign export --help`")
    return export_run(store, run, targets, model=model, z_spacing_um=z_spacing_um)
