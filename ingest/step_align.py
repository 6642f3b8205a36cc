"""Step 2, align: register every imaged section of a sample into one frame (µm, the
reference section's pixel frame), map spots through it, lay virtual spots on sections
without counts, and write transforms, aligned spots and a QC overlay."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd

from asign.ingest.config import IngestConfig
from asign.ingest.deform import to_aligned
from asign.ingest.runner import Runner, raise_failures
from asign.progress import Reporter, silent
from asign.store import Store
from asign.store.warps import Warp, write_warps

log = logging.getLogger(__name__)

THUMB_UM_PER_PX = 11.0  # ~1/16 of her2st's 0.69 µm/px: where tissue shape is resolved and ANTs is fast
FINE_UM_PER_PX = 4.0  # reports and exports: nuclei (~10 µm) stay a few pixels wide


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
    """The driver's half: write what :func:`align_unit` computed (the only store writes)."""
    write_warps(store, sample_id, r.get("warps", []))
    if "transforms" not in r:  # precomputed coordinates
        return r["info"]
    store.write("transforms", r["transforms"], key=sample_id)
    store.write("spots", r["spots"], key=sample_id)
    for sid, thumb in r["thumbs"].items():
        store.write_qc_png(store.layout.thumbnail(sid), thumb)
    if r["overlay"] is not None:
        store.write_qc_png(store.layout.alignment_png(sample_id), r["overlay"])
    _write_fine(store, r["fine"])
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
        return {"info": {"method": "precomputed", "referee": _referee(store, sample_id, spots, sections)}}

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

    # aligned coordinates of measured spots: through the affine chain and, with --syn, the
    # deformation field of every pair on the way to the reference (ingest/deform.py)
    x_um = np.full(len(spots), np.nan)
    y_um = np.full(len(spots), np.nan)
    for sid in by_id:
        m = (spots.section_id == sid).to_numpy()
        x_um[m], y_um[m] = to_aligned(by_id, um, sid, spots.px.to_numpy()[m], spots.py.to_numpy()[m])
    spots["x_um"], spots["y_um"] = x_um, y_um

    virtual = _virtual_spots(sections, thumbs, ds, by_id, um)
    out = pd.concat([spots, virtual], ignore_index=True) if len(virtual) else spots
    # Everything the driver writes is computed here, in the unit: the referee reads the
    # store's labels (read-only, as a worker may), fine thumbnails are decoded here.
    referee = _referee(store, sample_id, out, sections)
    fine, fine_ds = _fine_thumbnails(imaged)
    info = {"n_virtual": int(len(virtual)), "reference": transforms[0].reference_id,
            "thumb_downsample": ds, "fine_thumb_downsample": fine_ds,
            "qc": {t.section_id: _qc_dict(t) for t in transforms if t.qc is not None},
            "referee": referee}
    return {"warps": [Warp(t.section_id, t.qc.fixed, t.warp, t.warp_grid)
                      for t in transforms if t.warp is not None],
            "transforms": _transform_rows(sample_id, transforms),
            "spots": _spot_columns(out), "thumbs": thumbs,
            "overlay": render_overlay(thumbs, ds, transforms, um) if len(thumbs) > 1 else None,
            "fine": fine, "info": info}


def _referee(store: Store, sample_id: str, spots: pd.DataFrame, sections: pd.DataFrame) -> dict[str, float]:
    """Expression referee (ingest/referee.py) for each pair of adjacent labelled sections."""
    from asign.ingest.referee import referee_pcc

    if not store.has("labels", sample_id):
        return {}
    labels = store.read("labels", key=sample_id, columns=["spot_id", "section_id", "value"]).to_pandas()
    xy = spots.set_index("spot_id")[["x_um", "y_um"]]
    labels = labels[labels.spot_id.isin(xy.index)]
    secs = [s for s in sections.section_id if (labels.section_id == s).sum() >= 2]
    out = {}
    for a, b in zip(secs, secs[1:], strict=False):
        la, lb = labels[labels.section_id == a], labels[labels.section_id == b]
        if xy.loc[la.spot_id].isna().any().any() or xy.loc[lb.spot_id].isna().any().any():
            continue
        out[f"{a}-{b}"] = round(referee_pcc(xy.loc[la.spot_id].to_numpy(), np.stack(la.value.to_numpy()),
                                            xy.loc[lb.spot_id].to_numpy(), np.stack(lb.value.to_numpy())), 4)
        log.info("referee %s-%s: per-gene PCC %.3f (IDW across the pair in the aligned frame)", a, b,
                 out[f"{a}-{b}"])
    return out


def _spot_columns(spots: pd.DataFrame) -> dict[str, list]:
    """Columns for the spots table. Concatenating with virtual spots turns absent integer
    array positions (a spot table without array_x, array_y) into float NaN: store nulls."""
    cols = {c: spots[c].tolist() for c in spots.columns}
    for c in ("array_x", "array_y"):
        cols[c] = [None if v is None or v != v else int(v) for v in cols[c]]
    return cols


def _fine_thumbnails(imaged: pd.DataFrame) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """A ≤ 4 µm/px thumbnail per imaged section (the registration grid is 11 µm/px, too
    coarse to see morphology), and full-resolution px per thumbnail px. Computed where the
    unit runs; :func:`_write_fine` writes them."""
    from asign.ingest.images import read_thumbnail

    thumbs: dict[str, np.ndarray] = {}
    ds: dict[str, float] = {}
    for row in imaged.itertuples():
        thumb = read_thumbnail(row.image_path, max(1.0, FINE_UM_PER_PX / float(row.um_per_px)))
        thumbs[row.section_id] = thumb
        ds[row.section_id] = float(row.width) / thumb.shape[1]
    return thumbs, ds


def _write_fine(store: Store, thumbs: dict[str, np.ndarray]) -> None:
    for sid, thumb in thumbs.items():
        store.write_qc_png(store.layout.fine_thumbnail(sid), thumb)


def backfill_fine_thumbnails(store: Store, manifest: dict[str, Any], sample_id: str
                             ) -> dict[str, Any]:
    """A finished align step of an older store has no fine thumbnails: write them (the
    alignment itself is untouched, so nothing after it is redone). Returns the manifest."""
    align = manifest.get("steps", {}).get(sample_id, {}).get("align", {})
    if align.get("method") == "precomputed":
        return manifest
    sections = _sections(store, sample_id)
    imaged = sections[sections.has_image]
    have = align.get("fine_thumb_downsample", {})
    if imaged.empty or (set(imaged.section_id) <= set(have) and all(
            store.layout.fine_thumbnail(s).exists() for s in imaged.section_id)):
        return manifest
    log.info("sample %s: writing 4 µm/px thumbnails (missing in this store)", sample_id)
    thumbs, align["fine_thumb_downsample"] = _fine_thumbnails(imaged)
    _write_fine(store, thumbs)
    store.save_manifest(manifest)
    return manifest


def _virtual_spots(sections: pd.DataFrame, thumbs: dict[str, np.ndarray], ds: dict[str, float],
                   by_id: dict[str, Any], um: dict[str, float]) -> pd.DataFrame:
    """Lattice spots over detected tissue for imaged sections without counts (DESIGN §1):
    laid in the affinely aligned frame, then moved with the section's tissue through the
    deformation fields when --syn gave any."""
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
        xy = np.column_stack(to_aligned(by_id, um, row.section_id, pix[:, 0], pix[:, 1])) if len(xy) else xy
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
                                             "scale", "shear", "flipped", "metric", "neighbour_id",
                                             "pair_matrix")}
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
        cols["neighbour_id"].append(q.fixed if q else None)
        cols["pair_matrix"].append(None if t.pair is None else [float(v) for v in np.ravel(t.pair)])
    return cols
