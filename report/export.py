"""`asign export`: one run's imputed 3D volume as AnnData (``.h5ad``).

Layout (scanpy / squidpy conventions):

- one observation per spot of the test samples' imaged sections: the known layer and every
  hidden section (measured or virtual spots);
- ``X``: the imputed volume on scanpy's scale, log1p(CP10k), float32, no NaN — the
  model's prediction on hidden sections and the measurement on the known layer (what the
  method clamps there), both converted from the store's scale the same way
  (:mod:`asign.report.scale`; the formula is in ``uns['asign']['x_formula']``). Ready for
  ``sc.pp.highly_variable_genes``, ``sc.tl.rank_genes_groups``, ``sc.pp.pca`` as is: do not
  run ``normalize_total``/``log1p`` on it again;
- ``layers['asign']``: the same volume on the model's own scale (the store's
  normalisation, ``uns['asign']['normalisation']``): what asign trains on and scores;
- ``layers['counts']``: raw counts of the panel genes for measured spots (float32); rows of
  spots without a measurement (virtual spots, unmeasured sections) are **0** — scanpy
  cannot take NaN — and ``obs['has_measured']`` is False there: subset to
  ``adata[adata.obs.has_measured]`` before using counts;
- ``layers['measured']``: the measured expression on the model's scale where a spot has
  counts, NaN elsewhere (for scoring against ``layers['asign']``);
- ``layers['lower']`` / ``layers['upper']``: the run's per-spot, per-gene interval on the
  model's scale (``layers['asign']``) (``runs.config`` coverage) on hidden rows, NaN on the
  known layer (runs with intervals);
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
- ``uns['asign']``: run id, name, model, setting, normalisation and the X formula, encoder
  and its weights (``weights_random`` flags features from random weights), run provenance
  (asign version, git commit, store hash, created at), config (JSON text); and
  ``uns['asign_metrics']``: the per-section metrics of the run (a DataFrame).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from asign.store.sections import spot_z_um

log = logging.getLogger(__name__)


def build_anndata(data: Any) -> Any:
    """AnnData of a loaded :class:`asign.report.data.RunData` (see the module docstring)."""
    import anndata as ad

    from asign.errors import StoreError
    from asign.report.scale import FORMULAS, SCANPY_SCALE, to_log1p_cp10k

    if data.normalisation not in FORMULAS:
        raise StoreError(f"the store's expression scale {data.normalisation!r} is unknown to "
                         "export", fix=f"re-ingest with --normalisation {' or '.join(FORMULAS)}")
    spots = data.spots[data.spots.role.isin(["known", "hidden"])]
    rows = spots.index.to_numpy()
    known = (spots.role == "known").to_numpy()
    # one (spots, genes) array per layer and no more: a Visium HD stack's are GBs each
    measured = _take(data.labels, rows)
    model_scale = data.predictions[data.map_model][rows]
    model_scale[known] = measured[known]
    complete = np.isfinite(model_scale).all(axis=1)
    if not complete.all():
        # scanpy takes no NaN in X: a spot without a value for every gene is left out
        log.warning("%d spot(s) without a value for every gene are left out of the export",
                    int((~complete).sum()))
        spots, rows, known = spots[complete], rows[complete], known[complete]
        model_scale, measured = model_scale[complete], measured[complete]
    counts = (data.counts[rows] if data.counts is not None
              else np.full(measured.shape, np.nan, dtype=np.float32))
    has_measured = np.isfinite(measured).all(axis=1) & np.isfinite(counts).all(axis=1)
    counts[~has_measured] = 0
    secs = data.sections.set_index("section_id")
    obs = pd.DataFrame({
        "sample": pd.Categorical(spots.sample_id.astype(str)),
        "section": pd.Categorical(spots.section_id.astype(str),
                                  categories=[s for s in secs.index if s in set(spots.section_id)]),
        "z": spots.z.to_numpy(dtype=np.int32),
        "virtual": spots.is_virtual.to_numpy(dtype=bool),
        "role": pd.Categorical(spots.role.astype(str), categories=["known", "hidden"]),
        "has_measured": has_measured,
        "fold": spots.fold.to_numpy(dtype=np.int32),
    }, index=pd.Index(spots.spot_id.astype(str), name="spot_id"))
    var = pd.DataFrame({"rank": np.arange(len(data.genes), dtype=np.int32)},
                       index=pd.Index(data.genes, name="gene"))
    adata = ad.AnnData(X=to_log1p_cp10k(model_scale, data.normalisation), obs=obs, var=var)
    adata.layers["asign"] = model_scale
    adata.layers["counts"] = counts.astype(np.float32, copy=False)
    adata.layers["measured"] = measured.astype(np.float32, copy=False)
    if data.map_model in data.bounds:  # the run's intervals (train/intervals.py); NaN on known rows
        for name, b in zip(("lower", "upper"), data.bounds[data.map_model], strict=True):
            layer = b[rows].astype(np.float32, copy=False)
            layer[known] = np.nan
            adata.layers[name] = layer
    adata.obsm["spatial"] = spots[["px", "py"]].to_numpy(dtype=np.float64)
    adata.obsm["spatial_3d"] = np.column_stack([spots.x_um.to_numpy(dtype=np.float64),
                                                spots.y_um.to_numpy(dtype=np.float64),
                                                spot_z_um(data.sections, spots.section_id)])
    adata.uns["spatial"] = _spatial_uns(data, obs, secs)
    run = data.runs[data.map_model]
    embed = data.embed
    adata.uns["asign"] = {
        "run_id": run.run_id, "run_name": run.name, "model": run.model,
        "setting": run.setting, "created_at": str(run.created_at),
        **{k: v for k, v in run.provenance.items()},
        "normalisation": data.normalisation, "x_scale": SCANPY_SCALE,
        "x_formula": FORMULAS[data.normalisation],
        "layers": {"asign": f"the model's scale: {data.unit}",
                   "counts": "raw panel counts; 0 where has_measured is False",
                   "measured": "measurement on the model's scale; NaN where not measured"},
        "encoder": str(embed.get("encoder", "unknown")),
        "weights": str(embed.get("weights_kind", embed.get("weights", "unknown"))),
        "weights_sha256": str(embed.get("weights_sha256", "")),
        "weights_random": _random_weights(embed),
        "known_layers": {k: v for k, v in sorted(data.known.items())},
        "config": json.dumps(run.config, sort_keys=True, default=str),
        "x": "prediction on hidden sections; measurement on the known layer",
    }
    metrics = data.metrics[data.metrics.model == data.map_model].drop(columns=["model"])
    adata.uns["asign_metrics"] = metrics.reset_index(drop=True).astype(
        {"run_id": str, "sample_id": str, "section_id": str, "setting": str, "metric": str,
         "fold": np.int32, "value": np.float64})
    return adata


def _take(a: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``a[rows]``, without the copy when ``rows`` is every row in order (layers that are
    only read)."""
    if len(rows) == len(a) and (rows == np.arange(len(a))).all():
        return a
    return a[rows]


def _random_weights(embed: dict[str, Any]) -> bool:
    return "random" in (str(embed.get("weights_kind", "")), str(embed.get("weights", "")))


def _spatial_uns(data: Any, obs: pd.DataFrame, secs: pd.DataFrame) -> dict[str, Any]:
    """``uns['spatial']`` in scanpy's Visium layout, one library per imaged section."""

    spatial: dict[str, Any] = {}
    for sec in obs.section.cat.categories:
        info = secs.loc[sec]
        um = float(info.um_per_px) if pd.notna(info.um_per_px) else None
        if sec not in data.thumbs or not um:
            continue
        img = data.thumbs[sec].read()
        spatial[str(sec)] = {
            "images": {"hires": img},
            "scalefactors": {
                "tissue_hires_scalef": 1.0 / data.thumbs[sec].downsample,
                "spot_diameter_fullres": float(info.spot_diameter_um) / um,
            },
            "metadata": {"source": "asign H&E thumbnail", "um_per_px": um},
        }
    return spatial


def export_h5ad(store_path: Path, run_name: str, out_path: Path, model: str | None = None) -> Path:
    """Write run ``run_name`` (its ``model`` run; default asign3d if present) as ``.h5ad``."""
    from asign.report.formats import export_run

    return Path(export_run(store_path, run_name, {"h5ad": out_path}, model=model)["h5ad"])
