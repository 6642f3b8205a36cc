"""Step 2, align: register every imaged section of a sample into one frame (µm, the
reference section's pixel frame), map spots through it, lay virtual spots on sections
without counts, and write transforms, aligned spots and a QC overlay."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd

from asign.ingest.config import IngestConfig
from asign.ingest.runner import Runner, raise_failures
from asign.progress import Reporter, silent
from asign.store import Store

log = logging.getLogger(__name__)

THUMB_UM_PER_PX = 11.0  # ~1/16 of her2st's 0.69 µm/px: where tissue shape is resolved and ANTs is fast


def _sections(store: Store, sample_id: str) -> pd.DataFrame:
    df = store.read("sections").to_pandas()
    return df[df.sample_id == sample_id].sort_values("z").reset_index(drop=True)


def run_align(store: Store, cfg: IngestConfig, sample_id: str, rep: Reporter,
              runner: Runner | None = None) -> dict[str, Any]:
    """Align a sample (one unit of work: here, or on a worker) and write what it found."""
    runner = runner or Runner()
    task = rep.task(f"align {sample_id}", total=1)
    out: dict[str, Any] = {}

    def commit(_: int, result: dict[str, Any]) -> None:
        out.update(_write_align(store, sample_id, result))
        rep.advance(task)

    failed = runner.map(align_unit, [(str(store.root), cfg, sample_id)], [sample_id], commit,
                        description=f"align {sample_id}")
    raise_failures(failed, "align", sample_id)
    return out


def _write_align(store: Store, sample_id: str, r: dict[str, Any]) -> dict[str, Any]:
    if "transforms" not in r:
        return r["info"]
    store.write("transforms", r["transforms"], key=sample_id)
    store.write("spots", r["spots"], key=sample_id)
    for sid, thumb in r["thumbs"].items():
        store.write_qc_png(store.layout.thumbnail(sid), thumb)
    if r["overlay"] is not None:
        store.write_qc_png(store.layout.alignment_png(sample_id), r["overlay"])
    return r["info"]


def align_unit(root: str, cfg: IngestConfig, sample_id: str) -> dict[str, Any]:
    """Read a sample's sections, register them and map spots; returns what to write."""
    from pathlib import Path

    from asign.store import open_store

    return _compute_align(open_store(Path(root)), cfg, sample_id, silent())


def _compute_align(store: Store, cfg: IngestConfig, sample_id: str, rep: Reporter) -> dict[str, Any]:
    from asign.ingest import align
    from asign.ingest.images import read_thumbnail
    from asign.ingest.overlay import render_overlay
    from asign.ingest.tissue import tissue_mask

    sections = _sections(store, sample_id)
    spots = store.read("spots", key=sample_id).to_pandas()
    spots = spots[~spots.is_virtual].reset_index(drop=True)

    # Coordinates given with the input (a manifest's aligned x/y) are kept. Coordinates an
    # earlier align wrote come with its transforms table (written before the spots, and
    # removed by register), and are recomputed: align's parameters may have changed.
    if spots.x_um.notna().all() and not store.has("transforms", sample_id):
        log.info("sample %s: keeping precomputed aligned coordinates", sample_id)
        return {"info": {"method": "precomputed"}}

    imaged = sections[sections.has_image]

    task = rep.task(f"align {sample_id}", total=len(imaged) + 1)
    thumbs: dict[str, np.ndarray] = {}
    ds: dict[str, float] = {}
    um: dict[str, float] = {}
    masks: dict[str, np.ndarray] = {}
    for row in imaged.itertuples():
        um[row.section_id] = float(row.um_per_px)
        thumb = read_thumbnail(row.image_path, max(1.0, THUMB_UM_PER_PX / float(row.um_per_px)))
        thumbs[row.section_id] = thumb
        masks[row.section_id] = tissue_mask(thumb, name=str(row.image_path))  # errors name the file
        # the thumbnail's size is rounded: use the exact ratio, not the requested one
        ds[row.section_id] = float(row.width) / thumb.shape[1]
        rep.advance(task)

    if len(thumbs) == 1:
        sid = next(iter(thumbs))
        transforms = [align.SectionTransform(section_id=sid, reference_id=sid,
                                             matrix=np.diag([um[sid], um[sid], 1.0]), qc=None,
                                             method="identity(single section)")]
    else:
        init = {tuple(k.split(":", 1)): align.InitGuess(rotation_deg=v[0], flip=v[1])
                for k, v in cfg.align.init.items()}
        transforms = align.align_sample(thumbs, ds, um, reference=cfg.align.reference, init=init,
                                        transform=cfg.align.transform, syn=cfg.align.syn, seed=cfg.seed,
                                        masks=masks, sources={r.section_id: str(r.image_path) for r in imaged.itertuples()})
    rep.advance(task)
    by_id = {t.section_id: t for t in transforms}

    # aligned coordinates of measured spots
    x_um = np.full(len(spots), np.nan)
    y_um = np.full(len(spots), np.nan)
    for sid, t in by_id.items():
        m = (spots.section_id == sid).to_numpy()
        x_um[m], y_um[m] = align.apply_transform(t.matrix, spots.px.to_numpy()[m], spots.py.to_numpy()[m])
    spots["x_um"], spots["y_um"] = x_um, y_um

    virtual = _virtual_spots(sections, thumbs, ds, by_id)
    out = pd.concat([spots, virtual], ignore_index=True) if len(virtual) else spots
    info = {"n_virtual": int(len(virtual)), "reference": transforms[0].reference_id,
            "thumb_downsample": ds,
            "qc": {t.section_id: _qc_dict(t) for t in transforms if t.qc is not None}}
    return {"transforms": _transform_rows(sample_id, transforms),
            "spots": {c: out[c].tolist() for c in out.columns}, "thumbs": thumbs,
            "overlay": render_overlay(thumbs, ds, transforms, um) if len(thumbs) > 1 else None,
            "info": info}


def _virtual_spots(sections: pd.DataFrame, thumbs: dict[str, np.ndarray], ds: dict[str, float],
                   by_id: dict[str, Any]) -> pd.DataFrame:
    """Lattice spots over detected tissue for imaged sections without counts (DESIGN §1)."""
    from asign.ingest.lattice import virtual_lattice
    from asign.ingest.tissue import tissue_mask

    known = sections[sections.has_counts]
    rows = []
    for row in sections[sections.has_image & ~sections.has_counts].itertuples():
        ref = known.iloc[0] if len(known) else row
        t = by_id[row.section_id]
        mask = tissue_mask(thumbs[row.section_id])
        thumb_to_aligned = t.matrix @ np.diag([ds[row.section_id], ds[row.section_id], 1.0])
        xy = virtual_lattice(mask, thumb_to_aligned, float(ref.spot_pitch_um))
        inv = np.linalg.inv(t.matrix)
        pix = (inv @ np.c_[xy, np.ones(len(xy))].T).T
        for i, ((x, y), (px, py, _)) in enumerate(zip(xy, pix, strict=True)):
            rows.append({"sample_id": row.sample_id, "section_id": row.section_id,
                         "spot_id": f"{row.section_id}/v{i}", "barcode": f"v{i}", "z": int(row.z),
                         "array_x": None, "array_y": None, "px": float(px), "py": float(py),
                         "x_um": float(x), "y_um": float(y), "is_virtual": True})
        log.info("section %s: %d virtual spots over detected tissue", row.section_id, len(xy))
    return pd.DataFrame(rows)


def _qc_dict(t: Any) -> dict[str, Any]:
    q = t.qc
    return {"pair": f"{q.moving}->{q.fixed}", "inliers": q.ransac_inliers, "overlap_before": round(q.overlap_before, 3),
            "overlap_after": round(q.overlap_after, 3), "rotation_deg": round(q.rotation_deg, 2),
            "scale": round(q.scale, 4), "shear": round(q.shear, 4), "flipped": q.flipped}


def _transform_rows(sample_id: str, transforms: list[Any]) -> dict[str, list]:
    cols: dict[str, list] = {k: [] for k in ("sample_id", "section_id", "reference_id", "method", "matrix", "pair",
                                             "ransac_inliers", "overlap_before", "overlap_after", "rotation_deg",
                                             "scale", "shear", "flipped", "metric")}
    for t in transforms:
        q = t.qc
        cols["sample_id"].append(sample_id)
        cols["section_id"].append(t.section_id)
        cols["reference_id"].append(t.reference_id)
        cols["method"].append(t.method)
        cols["matrix"].append([float(v) for v in np.asarray(t.matrix, dtype=float).ravel()])
        cols["pair"].append(f"{q.moving}->{q.fixed}" if q else None)
        cols["ransac_inliers"].append(q.ransac_inliers if q else None)
        for k in ("overlap_before", "overlap_after", "rotation_deg", "scale", "shear", "metric"):
            cols[k].append(float(getattr(q, k)) if q else None)
        cols["flipped"].append(bool(q.flipped) if q else None)
    return cols
