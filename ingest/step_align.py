"""Step 2, align: register every imaged section of a sample into one frame (µm, the
reference section's pixel frame), map spots through it, lay virtual spots on sections
without counts, and write transforms, aligned spots and a QC overlay."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from asign.ingest.config import IngestConfig
from asign.ingest.deform import to_aligned
from asign.ingest.runner import Runner, raise_failures
from asign.progress import Reporter
from asign.store import Store
from asign.store.warps import Warp, write_warps

log = logging.getLogger(__name__)

# ~1/16 of her2st's 0.69 µm/px: where tissue shape is resolved and ANTs is fast
THUMB_UM_PER_PX = 11.0
FINE_UM_PER_PX = 4.0  # reports and exports: nuclei (~10 µm) stay a few pixels wide


def _sections(store: Store, sample_id: str) -> pd.DataFrame:
    df = store.read("sections").to_pandas()
    return df[df.sample_id == sample_id].sort_values("z").reset_index(drop=True)


@dataclass
class AlignUnits:
    """A sample's started align units (handles from :meth:`Runner.start`), in commit order:
    its sections read (one per section), its adjacent pairs registered (one per pair),
    the finish (chain, spots, virtual spots, referee, overlay; needs all of those) and the
    4 µm/px thumbnails (one per section, needed by nothing but the store)."""

    handles: list[Any] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    kinds: list[str] = field(default_factory=list)  # section, pair, finish, fine


def start_align(store: Store, cfg: IngestConfig, sample_id: str, runner: Runner) -> AlignUnits:
    """Plan a sample's alignment (options checked here, before any work) and start its
    units. Units are independent but for their arguments: each pair takes its two sections'
    results, the finish all of them, so on a cluster every pair registers at once."""
    from asign.ingest import align

    sections = _sections(store, sample_id)
    spots = store.read("spots", key=sample_id, columns=["x_um", "is_virtual"]).to_pandas()
    u = AlignUnits()
    root = str(store.root)
    # Coordinates given with the input (a manifest's aligned x/y) are kept. Coordinates an
    # earlier align wrote come with its transforms table (written before the spots, and
    # removed by register), and are recomputed: align's parameters may have changed.
    # The sections table says which coordinates came with the input: a lost transforms
    # table must not make an earlier align's output pass for given coordinates.
    measured = sections[sections.n_spots > 0]
    given = "has_coords" not in measured or measured.has_coords.fillna(True).astype(bool).all()
    if (given and spots.x_um[~spots.is_virtual].notna().all()
            and not store.has("transforms", sample_id)):
        u.handles += runner.start(finish_unit, [(root, cfg, sample_id, {}, [])],
                                  [f"sample {sample_id}"], description=f"align-{sample_id}")
        u.labels.append(f"sample {sample_id}")
        u.kinds.append("finish")
        return u

    imaged = sections[sections.has_image]
    order = [str(s) for s in imaged.section_id]
    ref = None
    plans: list[Any] = []
    if len(order) > 1:
        init = {tuple(k.split(":", 1)): align.InitGuess(rotation_deg=v[0], flip=v[1])
                for k, v in cfg.align.init.items()}
        ref, plans = align.plan_pairs(order, reference=cfg.align.reference, init=init,
                                      transform=cfg.align.transform)
    rows = {str(r.section_id): (str(r.image_path), float(r.um_per_px), int(r.width))
            for r in imaged.itertuples()}

    def add(fn: Any, args: list[tuple], labels: list[str], kind: str) -> list[Any]:
        handles = runner.start(fn, args, labels, description=f"align-{sample_id}-{kind}")
        u.handles.extend(handles)
        u.labels.extend(labels)
        u.kinds.extend([kind] * len(labels))
        return handles

    secs = dict(zip(order,
                    add(section_unit, [rows[s] for s in order], [f"section {s}" for s in order],
                        "section"),
                    strict=True))
    a = cfg.align
    pairs = add(pair_unit, [(secs[p.moving], secs[p.fixed], p, a.transform, a.syn, cfg.seed,
                             (rows[p.moving][0], rows[p.fixed][0])) for p in plans],
                [f"pair {p.moving}->{p.fixed}" for p in plans], "pair")
    add(finish_unit, [(root, cfg, sample_id, {s: secs[s] for s in order}, pairs, ref)],
        [f"sample {sample_id}"], "finish")
    add(fine_unit, [rows[s] for s in order], [f"section {s}" for s in order], "fine")
    return u


def run_align(store: Store, cfg: IngestConfig, sample_id: str, rep: Reporter,
              runner: Runner | None = None) -> dict[str, Any]:
    """Align a sample (its units run here, or on workers) and write what they found: the
    driver's half, the only store writes, once every unit of the sample has succeeded."""
    runner = runner or Runner()
    units = runner.take(("align", sample_id)) or start_align(store, cfg, sample_id, runner)
    task = rep.task(f"align {sample_id}", total=len(units.handles))
    thumbs: dict[str, tuple[np.ndarray, float]] = {}
    fine: dict[str, tuple[np.ndarray, float]] = {}
    done: dict[str, Any] = {}

    def commit(i: int, result: Any) -> None:
        kind, sid = units.kinds[i], units.labels[i].split(" ", 1)[1]
        if kind == "section":
            thumbs[sid] = (result["thumb"], result["ds"])
        elif kind == "fine":
            fine[sid] = result
        elif kind == "finish":
            done.update(result)
        rep.advance(task, last=units.labels[i])

    failed = runner.finish(units.handles, units.labels, commit)
    raise_failures(failed, "align", sample_id)
    if "transforms" not in done:  # precomputed coordinates
        write_warps(store, sample_id, [])
        return done["info"]
    order = list(thumbs)
    info = dict(done["info"])
    info = {"n_virtual": info["n_virtual"], "reference": info["reference"],
            "thumb_downsample": {s: thumbs[s][1] for s in order},
            "fine_thumb_downsample": {s: fine[s][1] for s in order},
            "qc": info["qc"], "referee": info["referee"]}
    _write_align(store, sample_id, done, {s: thumbs[s][0] for s in order},
                 {s: fine[s][0] for s in order})
    return info


def _write_align(store: Store, sample_id: str, r: dict[str, Any], thumbs: dict[str, np.ndarray],
                 fine: dict[str, np.ndarray]) -> None:
    write_warps(store, sample_id, r["warps"])
    store.write("transforms", r["transforms"], key=sample_id)
    store.write("spots", r["spots"], key=sample_id)
    for sid, thumb in thumbs.items():
        store.write_thumbnail(sid, thumb)
    if r["overlay"] is not None:
        store.write_alignment_png(sample_id, r["overlay"])
    _write_fine(store, fine)


def section_unit(image_path: str, um_per_px: float, width: int) -> dict[str, Any]:
    """Read and check one section: its ~11 µm/px thumbnail and tissue mask (errors name the
    file), and full-resolution px per thumbnail px."""
    from asign.ingest.images import read_thumbnail
    from asign.ingest.tissue import tissue_mask

    thumb = read_thumbnail(image_path, max(1.0, THUMB_UM_PER_PX / um_per_px))
    mask = tissue_mask(thumb, name=image_path)
    # the thumbnail's size is rounded: use the exact ratio, not the requested one
    return {"thumb": thumb, "mask": mask, "ds": float(width) / thumb.shape[1], "um": um_per_px}


def fine_unit(image_path: str, um_per_px: float, width: int) -> tuple[np.ndarray, float]:
    """A ≤ 4 µm/px thumbnail of one section (the registration grid is 11 µm/px, too coarse
    to see morphology), and full-resolution px per thumbnail px."""
    from asign.ingest.images import read_thumbnail

    thumb = read_thumbnail(image_path, max(1.0, FINE_UM_PER_PX / um_per_px))
    return thumb, float(width) / thumb.shape[1]


def _prepared(sid: str, sec: dict[str, Any]) -> Any:
    from asign.ingest.align import prepare_section

    return prepare_section(sid, sec["thumb"], sec["mask"], sec["ds"], sec["um"])


def pair_unit(mov: dict[str, Any], fix: dict[str, Any], plan: Any, transform: str, syn: bool,
              seed: int, sources: tuple[str, str]) -> Any:
    """Register one adjacent pair (independent of every other pair)."""
    from asign.ingest.align import register_pair

    return register_pair(_prepared(plan.moving, mov), _prepared(plan.fixed, fix), plan.guess,
                         transform=transform, syn=syn, seed=seed, sources=sources)


def finish_unit(root: str, cfg: IngestConfig, sample_id: str, secs: dict[str, dict[str, Any]],
                pairs: list[Any], reference: str | None = None) -> dict[str, Any]:
    """Chain the pairs to the reference, map the spots, lay virtual spots, referee and
    overlay: everything the driver writes but the thumbnails. Reads the store (read-only,
    as a worker may)."""
    from pathlib import Path

    from asign.ingest import align
    from asign.ingest.overlay import render_overlay
    from asign.store import open_store

    store = open_store(Path(root))
    sections = _sections(store, sample_id)
    spots = store.read("spots", key=sample_id).to_pandas()
    spots = spots[~spots.is_virtual].reset_index(drop=True)
    if not secs:
        log.info("sample %s: keeping precomputed aligned coordinates", sample_id)
        return {"info": {"method": "precomputed",
                         "referee": _referee(store, sample_id, spots, sections)}}

    thumbs = {s: v["thumb"] for s, v in secs.items()}
    ds = {s: v["ds"] for s, v in secs.items()}
    um = {s: v["um"] for s, v in secs.items()}
    if len(thumbs) == 1:
        sid = next(iter(thumbs))
        transforms = [align.SectionTransform(section_id=sid, reference_id=sid,
                                             matrix=np.diag([um[sid], um[sid], 1.0]), qc=None,
                                             method="identity(single section)")]
    else:
        assert reference is not None
        transforms = align.compose(list(thumbs), reference, um, pairs)
    by_id = {t.section_id: t for t in transforms}

    # aligned coordinates of measured spots: through the affine chain and, with --syn, the
    # deformation field of every pair on the way to the reference (ingest/deform.py)
    x_um = np.full(len(spots), np.nan)
    y_um = np.full(len(spots), np.nan)
    for sid in by_id:
        m = (spots.section_id == sid).to_numpy()
        x_um[m], y_um[m] = to_aligned(by_id, um, sid, spots.px.to_numpy()[m],
                                      spots.py.to_numpy()[m])
    spots["x_um"], spots["y_um"] = x_um, y_um

    virtual = _virtual_spots(sections, thumbs, ds, by_id, um)
    out = pd.concat([spots, virtual], ignore_index=True) if len(virtual) else spots
    info = {"n_virtual": int(len(virtual)), "reference": transforms[0].reference_id,
            "qc": {t.section_id: _qc_dict(t) for t in transforms if t.qc is not None},
            "referee": _referee(store, sample_id, out, sections)}
    return {"warps": [Warp(t.section_id, t.qc.fixed, t.warp, t.warp_grid)
                      for t in transforms if t.warp is not None],
            "transforms": _transform_rows(sample_id, transforms),
            "spots": _spot_columns(out),
            "overlay": render_overlay(thumbs, ds, transforms, um) if len(thumbs) > 1 else None,
            "info": info}


def _referee(store: Store, sample_id: str, spots: pd.DataFrame,
             sections: pd.DataFrame) -> dict[str, float]:
    """Expression referee (ingest/referee.py) for each pair of adjacent labelled sections."""
    from asign.ingest.referee import referee_pcc

    if not store.has("labels", sample_id):
        return {}
    labels = store.read("labels", key=sample_id,
                        columns=["spot_id", "section_id", "value"]).to_pandas()
    xy = spots.set_index("spot_id")[["x_um", "y_um"]]
    labels = labels[labels.spot_id.isin(xy.index)]
    secs = [s for s in sections.section_id if (labels.section_id == s).sum() >= 2]
    out = {}
    for a, b in zip(secs, secs[1:], strict=False):
        la, lb = labels[labels.section_id == a], labels[labels.section_id == b]
        if xy.loc[la.spot_id].isna().any().any() or xy.loc[lb.spot_id].isna().any().any():
            continue
        out[f"{a}-{b}"] = round(referee_pcc(xy.loc[la.spot_id].to_numpy(),
                                            np.stack(la.value.to_numpy()),
                                            xy.loc[lb.spot_id].to_numpy(),
                                            np.stack(lb.value.to_numpy())), 4)
        log.info("referee %s-%s: per-gene PCC %.3f (IDW across the pair in the aligned frame)", a,
                 b, out[f"{a}-{b}"])
    return out


def _spot_columns(spots: pd.DataFrame) -> dict[str, list]:
    """Columns for the spots table. Concatenating with virtual spots turns absent integer
    array positions (a spot table without array_x, array_y) into float NaN: store nulls."""
    cols = {c: spots[c].tolist() for c in spots.columns}
    for c in ("array_x", "array_y"):
        cols[c] = [None if v is None or v != v else int(v) for v in cols[c]]
    return cols


def _fine_thumbnails(imaged: pd.DataFrame) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """:func:`fine_unit` of every imaged section, here."""
    thumbs: dict[str, np.ndarray] = {}
    ds: dict[str, float] = {}
    for row in imaged.itertuples():
        thumbs[row.section_id], ds[row.section_id] = fine_unit(str(row.image_path),
                                                               float(row.um_per_px), int(row.width))
    return thumbs, ds


def _write_fine(store: Store, thumbs: dict[str, np.ndarray]) -> None:
    for sid, thumb in thumbs.items():
        store.write_thumbnail(sid, thumb, fine=True)


def backfill_fine_thumbnails(store: Store, manifest: dict[str, Any], sample_id: str
                             ) -> dict[str, Any]:
    """A finished align step of an older store has no fine thumbnails: write them (the
    alignment itself is untouched, so nothing after it is redone). Returns the manifest."""
    record = store.step_record(manifest, sample_id, "align")
    align = {} if record is None else record.extra
    if align.get("method") == "precomputed":
        return manifest
    sections = _sections(store, sample_id)
    imaged = sections[sections.has_image]
    have = align.get("fine_thumb_downsample", {})
    if imaged.empty or (set(imaged.section_id) <= set(have) and all(
            store.has_fine_thumbnail(s) for s in imaged.section_id)):
        return manifest
    log.info("sample %s: writing 4 µm/px thumbnails (missing in this store)", sample_id)
    thumbs, downsample = _fine_thumbnails(imaged)
    _write_fine(store, thumbs)
    if record is not None:
        store.mark_step_done(manifest, sample_id, "align",
                             record.updated(fine_thumb_downsample=downsample))
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
        layout = getattr(ref, "lattice", None)  # the platform's layout (schema ≥ 3)
        layout = layout if layout in ("hex", "square") else "square"
        xy = virtual_lattice(mask, thumb_to_aligned, float(ref.spot_pitch_um), layout)
        inv = np.linalg.inv(t.matrix)
        pix = (inv @ np.c_[xy, np.ones(len(xy))].T).T
        xy = np.column_stack(to_aligned(by_id, um, row.section_id, pix[:, 0],
                                        pix[:, 1])) if len(xy) else xy
        for i, ((x, y), (px, py, _)) in enumerate(zip(xy, pix, strict=True)):
            rows.append({"sample_id": row.sample_id, "section_id": row.section_id,
                         "spot_id": f"{row.section_id}/v{i}", "barcode": f"v{i}", "z": int(row.z),
                         "array_x": None, "array_y": None, "px": float(px), "py": float(py),
                         "x_um": float(x), "y_um": float(y), "is_virtual": True})
        log.info("section %s: %d virtual spots over detected tissue", row.section_id, len(xy))
    return pd.DataFrame(rows)


def _qc_dict(t: Any) -> dict[str, Any]:
    q = t.qc
    return {"pair": f"{q.moving}->{q.fixed}", "inliers": q.ransac_inliers,
            "overlap_before": round(q.overlap_before, 3),
            "overlap_after": round(q.overlap_after, 3), "rotation_deg": round(q.rotation_deg, 2),
            "scale": round(q.scale, 4), "shear": round(q.shear, 4), "flipped": q.flipped}


def _transform_rows(sample_id: str, transforms: list[Any]) -> dict[str, list]:
    names = ("sample_id", "section_id", "reference_id", "method", "matrix", "pair",
             "ransac_inliers", "overlap_before", "overlap_after", "rotation_deg", "scale", "shear",
             "flipped", "metric", "neighbour_id", "pair_matrix")
    cols: dict[str, list] = {k: [] for k in names}
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
