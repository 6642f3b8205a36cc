"""`asign export`: one run's imputed 3D volume as AnnData (``.h5ad``).

Layout (scanpy / squidpy conventions):

- one observation per spot of the test samples' imaged sections: the known layer and every
  hidden section (measured or virtual spots);
- ``X``: the imputed volume, float32 — the model's prediction on hidden sections and the
  measurement itself on the known layer (what the method clamps there); ``obs['role']``
  says which;
- ``layers['measured']``: the measured expression where a spot has counts, NaN elsewhere
  (virtual spots); ``obs['has_measured']`` marks the rows that have it;
- ``layers['lower']`` / ``layers['upper']``: the run's per-spot, per-gene interval
  (``runs.config`` coverage) on hidden rows, NaN on the known layer (runs with intervals);
- ``obsm['spatial']``: (px, py) full-resolution image pixels of the spot's own section;
  ``obsm['spatial_3d']``: (x_um, y_um, z_um) in the sample's aligned frame, z_um = z × the
  section spacing recorded at ingest (``sections.z_um``);
- ``obs``: sample, section (categorical; also the library id), z, virtual, role
  (known / hidden), has_measured, fold;
- ``var``: gene panel in rank order (``var['rank']``);
- ``uns['spatial'][section]``: ``images['hires']`` (the H&E thumbnail) and
  ``scalefactors`` {``tissue_hires_scalef`` = 1 / thumbnail downsample,
  ``spot_diameter_fullres``} — ready for ``sc.pl.spatial(adata[adata.obs.section == S],
  library_id=S)`` and squidpy's ``library_key='section'``;
- ``uns['asign']``: run id, name, model, setting, normalisation, config (JSON text) and
  ``uns['asign_metrics']``: the per-section metrics of the run (a DataFrame).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from asign.errors import InputError
from asign.store.sections import spot_z_um

log = logging.getLogger(__name__)


def build_anndata(data: Any) -> Any:
    """AnnData of a loaded :class:`asign.report.data.RunData` (see the module docstring)."""
    import anndata as ad
    from PIL import Image

    spots = data.spots[data.spots.role.isin(["known", "hidden"])]
    rows = spots.index.to_numpy()
    pred = data.predictions[data.map_model][rows]
    measured = data.labels[rows]
    known = (spots.role == "known").to_numpy()
    x = np.where(known[:, None], measured, pred).astype(np.float32)
    secs = data.sections.set_index("section_id")
    obs = pd.DataFrame({
        "sample": pd.Categorical(spots.sample_id.astype(str)),
        "section": pd.Categorical(spots.section_id.astype(str),
                                  categories=[s for s in secs.index if s in set(spots.section_id)]),
        "z": spots.z.to_numpy(dtype=np.int32),
        "virtual": spots.is_virtual.to_numpy(dtype=bool),
        "role": pd.Categorical(spots.role.astype(str), categories=["known", "hidden"]),
        "has_measured": ~np.isnan(measured).any(axis=1),
        "fold": spots.fold.to_numpy(dtype=np.int32),
    }, index=pd.Index(spots.spot_id.astype(str), name="spot_id"))
    var = pd.DataFrame({"rank": np.arange(len(data.genes), dtype=np.int32)},
                       index=pd.Index(data.genes, name="gene"))
    adata = ad.AnnData(X=x, obs=obs, var=var)
    adata.layers["measured"] = measured.astype(np.float32)
    if data.map_model in data.bounds:  # the run's intervals (train/intervals.py); NaN on known rows
        for name, b in zip(("lower", "upper"), data.bounds[data.map_model], strict=True):
            adata.layers[name] = np.where(known[:, None], np.nan, b[rows]).astype(np.float32)
    adata.obsm["spatial"] = spots[["px", "py"]].to_numpy(dtype=np.float64)
    adata.obsm["spatial_3d"] = np.column_stack([spots.x_um.to_numpy(dtype=np.float64),
                                                spots.y_um.to_numpy(dtype=np.float64),
                                                spot_z_um(data.sections, spots.section_id)])
    spatial: dict[str, Any] = {}
    for sec in obs.section.cat.categories:
        info = secs.loc[sec]
        um = float(info.um_per_px) if pd.notna(info.um_per_px) else None
        if sec not in data.thumbs or not um:
            continue
        with Image.open(data.thumbs[sec].path) as im:
            img = np.asarray(im.convert("RGB"))
        spatial[str(sec)] = {
            "images": {"hires": img},
            "scalefactors": {
                "tissue_hires_scalef": 1.0 / data.thumbs[sec].downsample,
                "spot_diameter_fullres": float(info.spot_diameter_um) / um,
            },
            "metadata": {"source": "asign H&E thumbnail", "um_per_px": um},
        }
    adata.uns["spatial"] = spatial
    run = data.runs[data.map_model]
    adata.uns["asign"] = {
        "run_id": run.run_id, "run_name": run.name, "model": run.model,
        "setting": run.setting, "normalisation": data.normalisation,
        "known_layers": {k: v for k, v in sorted(data.known.items())},
        "config": json.dumps(run.config, sort_keys=True, default=str),
        "x": "prediction on hidden sections; measurement on the known layer",
    }
    metrics = data.metrics[data.metrics.model == data.map_model].drop(columns=["model"])
    adata.uns["asign_metrics"] = metrics.reset_index(drop=True).astype(
        {"run_id": str, "sample_id": str, "section_id": str, "setting": str, "metric": str,
         "fold": np.int32, "value": np.float64})
    return adata


def export_h5ad(store_path: Path, run_name: str, out_path: Path, model: str | None = None) -> Path:
    """Write run ``run_name`` (its ``model`` run; default asign3d if present) as ``.h5ad``."""
    from asign.report.data import load_run_data
    from asign.report.files import output_path
    from asign.store import open_store

    out = Path(out_path)
    if out.suffix != ".h5ad":
        raise InputError("the export target must end in .h5ad", path=out,
                         fix="e.g. --h5ad results/run.h5ad")
    data = load_run_data(open_store(Path(store_path)), run_name, model)
    adata = build_anndata(data)
    with output_path(out) as tmp:
        adata.write_h5ad(tmp)
    log.info("exported %d spots × %d genes of run %s (%s) to %s", adata.n_obs, adata.n_vars,
             run_name, data.map_model, out)
    return out
