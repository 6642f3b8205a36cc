"""`asign export --spatialdata / --ome-tiff`: the aligned H&E stack leaves asign.

SpatialData (``OUT.zarr``), per test sample S, all in coordinate system ``aligned_S``
(µm; x, y of the sample's aligned frame, z = (layer − first layer) × the section spacing):

- image ``he_S``: the aligned H&E stack, (c, z, y, x) uint8, multiscale in x/y;
- shapes ``spots_<section>``: one circle per spot (true radius, µm) of each exported
  section, measured and virtual, placed at the section's z;
- table ``table``: the AnnData of :mod:`asign.report.export` annotating those shapes
  (``obs['region']`` = shapes element, ``obs['instance_id']`` = row in it).

OME-TIFF (``OUT.ome.tif``; one file per sample, ``_S`` appended when there are several):
the same stack as Z×Y×X RGB with physical sizes in µm, for napari, QuPath or Fiji.
Both are written into a temporary name beside the target, then renamed.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from asign.errors import ConfigError, InputError
from asign.report.stack import AlignedStack, SectionImage, aligned_stack
from asign.store.sections import DEFAULT_SECTION_UM, spot_shape

log = logging.getLogger(__name__)



def sample_stacks(data: Any, spacing_um: float,
                  samples: list[str] | None = None) -> dict[str, AlignedStack]:
    """The aligned H&E stack of each test sample (or of ``samples``) that has thumbnails
    and transforms."""

    tf = data.transforms
    out: dict[str, AlignedStack] = {}
    for sample, secs in data.sections.groupby("sample_id", sort=True):
        if samples is not None and str(sample) not in samples:
            continue
        items = []
        for r in secs.itertuples():
            sec = str(r.section_id)
            row = tf[tf.section_id == sec] if tf is not None and len(tf) else pd.DataFrame()
            if sec not in data.thumbs or row.empty:
                continue
            thumb = data.thumbs[sec].read()
            matrix = np.asarray(row.matrix.iloc[0], dtype=np.float64).reshape(3, 3)
            items.append(SectionImage(sec, int(r.z), thumb, data.thumbs[sec].downsample, matrix))
        if items:
            out[str(sample)] = aligned_stack(items, spacing_um)
        else:
            log.warning("sample %s: no thumbnails with alignment transforms; no H&E stack",
                        sample)
    return out


def recorded_spacing_um(sections: pd.DataFrame) -> float:
    """The section spacing the store recorded (one per store in practice), else the default."""
    if "section_um" in sections:
        given = pd.to_numeric(sections["section_um"], errors="coerce").dropna()
        if len(given):
            return float(given.iloc[0])
    return DEFAULT_SECTION_UM


def _name(text: str) -> str:
    return "".join(c if c.isalnum() or c in "_-" else "_" for c in str(text))


def build_spatialdata(adata: Any, stacks: dict[str, AlignedStack], data: Any) -> Any:
    import spatialdata as sd
    from spatialdata.models import Image3DModel, TableModel
    from spatialdata.transformations import Affine, Scale, Sequence, Translation

    spacing = next(iter(stacks.values())).spacing_um if stacks else DEFAULT_SECTION_UM
    images: dict[str, Any] = {}
    for sample, st in stacks.items():
        chw = np.moveaxis(st.image, -1, 0)  # (c, z, y, x)
        levels = [{"z": 1, "y": 2, "x": 2}] * int(max(0, min(3, np.log2(min(chw.shape[2:]) / 256))))
        # spatialdata puts pixel k's centre at k + 0.5: shift so plane k sits at k·spacing
        to_um = Sequence([Scale([st.spacing_um, st.res_um, st.res_um], axes=("z", "y", "x")),
                          Translation([-0.5 * st.spacing_um, st.origin_um[1] - 0.5 * st.res_um,
                                       st.origin_um[0] - 0.5 * st.res_um], axes=("z", "y", "x"))])
        images[f"he_{_name(sample)}"] = Image3DModel.parse(
            chw, dims=("c", "z", "y", "x"), c_coords=["r", "g", "b"],
            scale_factors=levels or None, transformations={f"aligned_{_name(sample)}": to_um})
    obs = adata.obs
    secs = data.sections.set_index("section_id")
    shapes: dict[str, Any] = {}
    region = np.empty(adata.n_obs, dtype=object)
    instance = np.zeros(adata.n_obs, dtype=np.int64)
    z_first = {s: int(g.z.min()) for s, g in data.sections.groupby("sample_id")}
    for sec in obs.section.cat.categories:
        rows = np.flatnonzero((obs.section == sec).to_numpy())
        if not len(rows):
            continue
        sample = str(obs["sample"].iloc[rows[0]])
        z_um = (int(secs.loc[sec].z) - z_first[sample]) * (stacks[sample].spacing_um
                                                            if sample in stacks else spacing)
        xy = adata.obsm["spatial_3d"][rows, :2]
        name = f"spots_{_name(sec)}"
        place = Affine(np.array([[1, 0, 0], [0, 1, 0], [0, 0, z_um], [0, 0, 1.0]]),
                       input_axes=("x", "y"), output_axes=("x", "y", "z"))
        shapes[name] = _spot_shapes(xy, secs.loc[sec], {f"aligned_{_name(sample)}": place})
        region[rows] = name
        instance[rows] = np.arange(len(rows))
    import anndata as ad

    # the same matrices, not a copy (each layer of a Visium HD stack is GBs); own obs and
    # uns, which change here. The H&E lives in the images, in the aligned frame: no
    # uns['spatial']
    table = ad.AnnData(X=adata.X, obs=adata.obs.copy(), var=adata.var, obsm=dict(adata.obsm),
                       layers=dict(adata.layers),
                       uns={k: v for k, v in adata.uns.items() if k != "spatial"})
    table.obs["region"] = pd.Categorical(region)
    table.obs["instance_id"] = instance
    table.uns["asign"] = {**table.uns["asign"], "z_spacing_um": float(spacing),
                          "z_um": "(z - first layer of the sample) * z_spacing_um",
                          "geometry": _geometry(secs, obs.section.cat.categories)}
    table = TableModel.parse(table, region=sorted(shapes), region_key="region",
                             instance_key="instance_id")
    return sd.SpatialData(images=images, shapes=shapes, tables={"table": table})


def _spot_shapes(xy: np.ndarray, sec: pd.Series, transformations: dict[str, Any]) -> Any:
    """Circles of the true radius, or squares of the true side (axis-aligned in the
    aligned frame) for binned platforms; both in µm."""
    import geopandas as gpd
    import shapely
    from spatialdata.models import ShapesModel

    size = float(sec.spot_diameter_um)
    index = np.arange(len(xy))
    if spot_shape(sec) == "square":
        lo, hi = xy - size / 2, xy + size / 2
        boxes = shapely.box(lo[:, 0], lo[:, 1], hi[:, 0], hi[:, 1])
        return ShapesModel.parse(gpd.GeoDataFrame(geometry=boxes, index=index),
                                 transformations=transformations)
    return ShapesModel.parse(xy, geometry=0, radius=np.full(len(xy), size / 2), index=index,
                             transformations=transformations)


def _geometry(secs: pd.DataFrame, sections: Any) -> dict[str, dict[str, Any]]:
    """Per exported section: spot shape, size, pitch and lattice (read back by
    ``asign ingest OUT.zarr``)."""
    out = {}
    for sec in sections:
        row = secs.loc[sec]
        lattice = row.get("lattice")
        out[str(sec)] = {"spot_shape": spot_shape(row),
                         "spot_diameter_um": float(row.spot_diameter_um),
                         "spot_pitch_um": float(row.spot_pitch_um),
                         "lattice": lattice if isinstance(lattice, str) else "square"}
    return out


def write_spatialdata(sdata: Any, out: Path) -> Path:
    """Write ``out`` (a .zarr folder) atomically: into a temporary folder beside it, then
    renamed over it (an older export is removed only after the new one is complete)."""
    out = Path(out)
    if out.suffix != ".zarr":
        raise InputError("the SpatialData target must end in .zarr", path=out,
                         fix="e.g. --spatialdata results/run.zarr")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    old = None
    try:
        with warnings.catch_warnings():
            # zarr announces a future default on every array written; nothing to act on
            warnings.filterwarnings("ignore", message=".*autosharding.*", category=UserWarning)
            sdata.write(tmp / out.name)
        if out.exists():
            old = out.parent / f".{out.name}.old-{os.getpid()}"
            os.replace(out, old)
        os.replace(tmp / out.name, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    return out


def write_ome_tiff(stacks: dict[str, AlignedStack], out: Path) -> list[Path]:
    """One OME-TIFF per sample (ZYX + RGB, physical sizes in µm), written atomically."""
    import tifffile

    from asign.store.atomic import atomic_path

    out = Path(out)
    if not out.name.endswith((".ome.tif", ".ome.tiff")):
        raise InputError("the OME-TIFF target must end in .ome.tif", path=out,
                         fix="e.g. --ome-tiff results/run.ome.tif")
    if not stacks:
        raise ConfigError("no aligned H&E stack to write (no thumbnails with transforms)",
                          fix="run `asign ingest --steps align` on the store first")
    written = []
    stem = out.name[: -len(".ome.tiff")] if out.name.endswith(".ome.tiff") else out.name[:-8]
    for sample, st in stacks.items():
        target = out if len(stacks) == 1 else out.with_name(f"{stem}_{_name(sample)}.ome.tif")
        target.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(target) as tmp, tifffile.TiffWriter(tmp, ome=True) as tif:
            tif.write(st.image, photometric="rgb", compression="zlib",
                      metadata={"axes": "ZYXS", "Name": f"asign aligned H&E, sample {sample}",
                                "PhysicalSizeX": st.res_um, "PhysicalSizeXUnit": "µm",
                                "PhysicalSizeY": st.res_um, "PhysicalSizeYUnit": "µm",
                                "PhysicalSizeZ": st.spacing_um, "PhysicalSizeZUnit": "µm"})
        written.append(target)
    return written


def export_stack(store_path: Path, run_name: str, *, spatialdata: Path | None = None,
                 ome_tiff: Path | None = None, model: str | None = None,
                 z_spacing_um: float | None = None) -> dict[str, Any]:
    """The SpatialData and/or OME-TIFF export of run ``run_name``; returns what was written.
    ``z_spacing_um`` None: the section spacing recorded at ingest (``--section-um``), so
    the images sit at the same z as ``obsm['spatial_3d']``."""
    from asign.report.formats import export_run

    return export_run(store_path, run_name, {"spatialdata": spatialdata, "ome_tiff": ome_tiff},
                      model=model, z_spacing_um=z_spacing_um)
