"""Export formats, one record each. `asign export`'s options, its "nothing to export" and
"outside the store" checks and its summary all come from :data:`EXPORTS`, so a new format is
its writer and its entry here."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from asign.errors import ConfigError, InputError

log = logging.getLogger("asign")


@dataclass
class ExportJob:
    """What the writers of one `asign export` share: the run's data, loaded once, and the
    AnnData and image stacks, each built on first use (the .h5ad writer needs no image)."""

    data: Any
    run: str
    z_spacing_um: float | None = None
    _adata: Any = None
    _stacks: dict[str, Any] | None = field(default=None, repr=False)

    def anndata(self) -> Any:
        from asign.report.export import build_anndata

        if self._adata is None:
            self._adata = build_anndata(self.data)
        return self._adata

    def stacks(self) -> dict[str, Any]:
        from asign.report.sdata import recorded_spacing_um, sample_stacks

        if self._stacks is None:
            if self.z_spacing_um is None:
                self.z_spacing_um = recorded_spacing_um(self.data.sections)
            if not self.z_spacing_um > 0:
                raise ConfigError(f"--z-spacing-um must be positive (got {self.z_spacing_um})",
                                  fix="give the distance between consecutive sections in µm, "
                                      "e.g. 50")
            self._stacks = sample_stacks(self.data, self.z_spacing_um)
        return self._stacks

    def stack_summary(self) -> dict[str, Any]:
        """The image stacks written, if any writer built them."""
        if self._stacks is None:
            return {}
        return {"z_spacing_um": self.z_spacing_um,
                "stacks": {s: {"shape": list(st.image.shape), "um_per_px": st.res_um}
                           for s, st in self._stacks.items()}}


@dataclass(frozen=True)
class ExportFormat:
    """``write(job, target)`` returns what it wrote (a path, or a list of paths);
    ``suffix``: the target's required ending, checked before anything is loaded."""

    help: str
    what: str  # names the target in messages ("the .h5ad export")
    metavar: str
    write: Callable[[ExportJob, Path], Any]
    suffix: str | None = None


def _h5ad(job: ExportJob, out: Path) -> str:
    from asign.store.atomic import atomic_path

    adata = job.anndata()
    with atomic_path(out) as tmp:
        adata.write_h5ad(tmp)
    log.info("exported %d spots × %d genes of run %s (%s) to %s", adata.n_obs, adata.n_vars,
             job.run, job.data.map_model, out)
    return str(out)


def _spatialdata(job: ExportJob, out: Path) -> str:
    from asign.report.sdata import build_spatialdata, write_spatialdata

    try:
        import spatialdata as _  # noqa: F401
    except ImportError as err:
        raise ConfigError("the spatialdata package is not installed",
                          fix="pip install 'asign[spatialdata]'") from err
    return str(write_spatialdata(build_spatialdata(job.anndata(), job.stacks(), job.data), out))


def _ome_tiff(job: ExportJob, out: Path) -> list[str]:
    from asign.report.sdata import write_ome_tiff

    return [str(p) for p in write_ome_tiff(job.stacks(), out)]


EXPORTS: dict[str, ExportFormat] = {
    "h5ad": ExportFormat(
        help="Output .h5ad file (AnnData: X in log1p(CP10k), layers counts/asign/measured).",
        what="the .h5ad export", metavar="FILE.h5ad", write=_h5ad, suffix=".h5ad"),
    "spatialdata": ExportFormat(
        help="Output .zarr folder (SpatialData: aligned H&E stack, spot circles, the AnnData "
             "as table).",
        what="the SpatialData export", metavar="DIR.zarr", write=_spatialdata),
    "ome_tiff": ExportFormat(
        help="Output .ome.tif: the aligned H&E stack (Z×Y×X RGB, µm), one file per sample.",
        what="the OME-TIFF export", metavar="FILE.ome.tif", write=_ome_tiff),
}


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def export_run(store_path: Path, run_name: str, targets: dict[str, Path | None], *,
               model: str | None = None, z_spacing_um: float | None = None) -> dict[str, Any]:
    """Write run ``run_name`` (its ``model`` run; default asign3d if present) in every format
    ``targets`` names (format → path; None: not asked); returns what was written."""
    from asign.report.data import load_run_data
    from asign.store import StoreLayout, open_store

    asked = {name: Path(t) for name, t in targets.items() if t is not None}
    if not asked:
        raise ConfigError("nothing to export", fix="give " + " and/or ".join(
            f"{flag(n)} {f.metavar}" for n, f in EXPORTS.items()))
    layout = StoreLayout(Path(store_path))
    for name, target in asked.items():
        fmt = EXPORTS[name]
        layout.require_outside(target, fmt.what)
        if fmt.suffix is not None and not target.name.endswith(fmt.suffix):
            raise InputError(f"the export target must end in {fmt.suffix}", path=target,
                             fix=f"e.g. {flag(name)} results/run{fmt.suffix}")
    data = load_run_data(open_store(Path(store_path)), run_name, model, compare=False)
    job = ExportJob(data, run_name, z_spacing_um)
    out = {name: EXPORTS[name].write(job, target) for name, target in asked.items()}
    return out | job.stack_summary()
