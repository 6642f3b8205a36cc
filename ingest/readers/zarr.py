"""Reader for a SpatialData zarr store (``asign ingest data.zarr``), read by
``spatialdata.read_zarr``: sections the user already holds in SpatialData (for example from
sopa) and asign's own ``asign export --spatialdata`` output.

Model: every table that annotates shapes elements gives spots; each annotated shapes
element is one section (its spots are the table rows whose region is that element).

- sample: ``obs['sample']`` when present, else the zarr's name; section: ``obs['section']``
  when present, else the shapes element's name; spot id: the table's index when it is
  ``section/barcode`` (asign's own), else ``section/instance``.
- z: ``obs['z']`` when present, else the shapes' z in the chosen coordinate system (an
  (x, y) → (x, y, z) affine, as asign's export writes), else the natural order of names.
- placement: the shapes' centres mapped into one coordinate system shared by all of a
  sample's sections (the first such system, in µm): they are the aligned coordinates
  ``x_um, y_um``, so the sections are placed without an image. Images in the zarr are not
  re-encoded (asign encodes image files; see docs/platforms.md).
- geometry: circles → discs of the stored radius; polygons → squares of side √area; pitch
  is the median nearest-spot distance of the section; asign's export records each
  section's size, pitch and lattice in ``uns['asign']['geometry']``, which then wins.
- counts: ``layers['counts']`` when present, else ``X`` (must be non-negative integers);
  with ``obs['has_measured']`` (asign's export) only measured rows carry counts and a
  section without any is image-free and unlabelled (its spots are kept).
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy.spatial import cKDTree

from asign.errors import InputError
from asign.ingest.readers.base import (
    Reader,
    ReadOptions,
    finish_sample,
    natural_key,
    sample_matches,
)
from asign.ingest.readers.tables import check_sparse
from asign.ingest.sample import SampleInput, SectionInput

log = logging.getLogger(__name__)


def detect(path: Path) -> bool:
    path = Path(path)
    return path.is_dir() and path.suffix == ".zarr" and any(
        (path / d).is_dir() for d in ("tables", "shapes"))


def _open(path: Path) -> Any:
    import spatialdata as sd

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", (UserWarning, FutureWarning))
        try:
            return sd.read_zarr(path)
        except (OSError, KeyError, ValueError) as err:
            raise InputError(f"cannot read as SpatialData ({err})", path=path,
                             fix="write it with SpatialData.write (spatialdata ≥0.4)") from err


def _annotations(sdata: Any, path: Path) -> list[tuple[str, Any, str]]:
    """(table name, table, shapes element) for every shapes element a table annotates."""
    out = []
    for name, table in sdata.tables.items():
        attrs = table.uns.get("spatialdata_attrs", {})
        regions = attrs.get("region", [])
        for region in [regions] if isinstance(regions, str) else list(regions):
            if region in sdata.shapes:
                out.append((name, table, region))
    if not out:
        raise InputError("no table annotates a shapes element", path=path,
                         fix="link the table to the spots' shapes (TableModel.parse region=…)")
    return out


def _sample_of(table: Any, rows: np.ndarray, default: str) -> str:
    if "sample" in table.obs:
        return str(table.obs["sample"].iloc[rows[0]])
    return default


def list_samples(path: Path) -> list[str]:
    path = Path(path)
    sdata = _open(path)
    out = set()
    for _, table, region in _annotations(sdata, path):
        rows = _rows(table, region)
        if len(rows):
            out.add(_sample_of(table, rows, path.stem))
    return sorted(out)


def _rows(table: Any, region: str) -> np.ndarray:
    key = table.uns["spatialdata_attrs"]["region_key"]
    return np.flatnonzero((table.obs[key].astype(str) == region).to_numpy())


def _placement(element: Any, systems: list[str]) -> tuple[str, np.ndarray]:
    """(coordinate system, 4×3 affine from the element's (x, y, 1) to (x, y, z, 1))."""
    from spatialdata.transformations import get_transformation

    have = get_transformation(element, get_all=True)
    for cs in systems:
        if cs in have:
            m = np.asarray(have[cs].to_affine_matrix(("x", "y"), ("x", "y", "z")), float)
            return cs, m
    raise KeyError(systems)


def _geometry(gdf: Any) -> tuple[np.ndarray, str, np.ndarray]:
    """(centres (N, 2), shape, size per spot: diameter for discs, side for squares)."""
    if "radius" in gdf.columns:
        xy = np.c_[gdf.geometry.x.to_numpy(), gdf.geometry.y.to_numpy()]
        return xy, "disc", 2.0 * gdf["radius"].to_numpy(np.float64)
    cent = gdf.geometry.centroid
    return np.c_[cent.x.to_numpy(), cent.y.to_numpy()], "square", np.sqrt(gdf.geometry.area)


def _counts(table: Any, rows: np.ndarray, path: Path) -> sp.csr_matrix:
    x = table.layers["counts"] if "counts" in table.layers else table.X
    matrix = sp.csr_matrix(x[rows], dtype=np.float64)
    if matrix.nnz and (np.any(matrix.data < 0) or np.any(matrix.data != np.rint(matrix.data))):
        raise InputError("the table's counts are not non-negative integers", path=path,
                         fix="store raw counts in layers['counts'] (or in X)")
    return check_sparse(matrix, path)


def _table_file(path: Path, table_name: str) -> Path | None:
    """The table's zarr metadata file: the file whose hash stands for the counts (it
    changes whenever the table is rewritten)."""
    for name in ("zarr.json", ".zattrs"):
        if (path / "tables" / table_name / name).is_file():
            return path / "tables" / table_name / name
    return None


def _section(sdata: Any, table_name: str, table: Any, region: str, rows: np.ndarray, cs: str,
             sample_id: str, path: Path) -> tuple[float | None, SectionInput]:
    gdf = sdata.shapes[region]
    _, affine = _placement(gdf, [cs])
    obs = table.obs.iloc[rows]
    inst_key = table.uns["spatialdata_attrs"]["instance_key"]
    pos = gdf.index.get_indexer(obs[inst_key].to_numpy())
    if (pos < 0).any():
        raise InputError(f"{int((pos < 0).sum())} table rows of {region} have no shape",
                         path=path, fix="write the table and shapes of one SpatialData")
    xy_local, shape, size = _geometry(gdf.iloc[pos])
    xyz = (affine @ np.c_[xy_local, np.ones(len(pos))].T).T
    name = str(obs["section"].iloc[0]) if "section" in obs else region
    index = obs.index.astype(str)
    barcodes = [i.split("/", 1)[1] if i.startswith(f"{name}/") else i for i in index]
    measured = (obs["has_measured"].to_numpy(bool) if "has_measured" in obs
                else np.ones(len(obs), bool))
    keep = measured if measured.any() else np.ones(len(obs), bool)
    rows_kept = rows[keep]
    spots = pd.DataFrame({
        "spot_id": [f"{name}/{b}" for b in np.asarray(barcodes)[keep]],
        "barcode": np.asarray(barcodes)[keep], "array_x": 0, "array_y": 0,
        "px": xy_local[keep, 0], "py": xy_local[keep, 1],
        "x_um": xyz[keep, 0], "y_um": xyz[keep, 1],
    })
    counts = _counts(table, rows_kept, path) if measured.any() else None
    pitch = (float(np.median(cKDTree(xyz[:, :2]).query(xyz[:, :2], k=2)[0][:, 1]))
             if len(xyz) > 1 else float(np.median(size)))
    z = int(obs["z"].iloc[0]) if "z" in obs else 0
    spacing = table.uns.get("asign", {}).get("z_spacing_um")  # asign's export records it
    given = dict(table.uns.get("asign", {}).get("geometry", {}).get(name, {}))
    section = SectionInput(
        sample_id=sample_id, section_id=name, z=z, image_path=None, um_per_px=None,
        spot_diameter_um=float(given.get("spot_diameter_um", np.median(size))),
        spot_pitch_um=float(given.get("spot_pitch_um", pitch)), spots=spots,
        genes=tuple(map(str, table.var_names)), counts=counts,
        counts_path=_table_file(path, table_name),
        total_counts=(None if counts is None
                      else np.asarray(counts.sum(axis=1)).ravel().astype(np.int64)),
        spot_shape=shape, lattice=str(given.get("lattice", "square")),
        section_um=float(spacing) if spacing else None,
    )
    z_um = float(np.median(xyz[:, 2])) if np.ptp(xyz[:, 2]) < 1e-6 else None
    return z_um, section


def read(path: Path, samples: str | None = None,
         options: ReadOptions | None = None) -> list[SampleInput]:
    del options  # nothing to choose: the zarr carries its own geometry
    path = Path(path)
    sdata = _open(path)
    found: dict[str, list[tuple[float | None, SectionInput]]] = {}
    for table_name, table, region in _annotations(sdata, path):
        rows = _rows(table, region)
        if not len(rows):
            continue
        sample_id = _sample_of(table, rows, path.stem)
        if not sample_matches(sample_id, samples):
            continue
        cs = _shared_system(sdata, table, region, path)
        found.setdefault(sample_id, []).append(
            _section(sdata, table_name, table, region, rows, cs, sample_id, path))
    out = []
    for sample_id, items in sorted(found.items()):
        out.append(finish_sample(sample_id, _ordered(items), fmt="zarr", source=path))
    return out


def _shared_system(sdata: Any, table: Any, region: str, path: Path) -> str:
    """The first coordinate system of the element (asign's export: ``aligned_<sample>``)."""
    from spatialdata.transformations import get_transformation

    systems = sorted(get_transformation(sdata.shapes[region], get_all=True))
    if not systems:
        raise InputError(f"shapes {region} are in no coordinate system", path=path,
                         fix="give the shapes a transformation")
    return systems[0]


def _ordered(items: list[tuple[float | None, SectionInput]]) -> list[SectionInput]:
    """z from obs (already set), else from the shapes' z, else the natural name order."""
    from dataclasses import replace

    if all(s.z > 0 for _, s in items):
        return [s for _, s in items]
    if all(z is not None for z, _ in items):
        order = sorted(items, key=lambda t: (t[0], natural_key(t[1].section_id)))
    else:
        order = sorted(items, key=lambda t: natural_key(t[1].section_id))
    return [replace(s, z=i) for i, (_, s) in enumerate(order, start=1)]


READER = Reader(
    name="zarr",
    description="SpatialData: a .zarr store with a table annotating one shapes element "
                "per section (e.g. asign export --spatialdata)",
    detect=detect,
    read=read,
    list_samples=list_samples,
)
