"""Step 1, register: read samples, record sections and spots, choose the gene panel on
training layers only, normalise labels, and write them to the store."""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from asign.errors import ConfigError, InputError
from asign.hashing import file_sha256, fingerprint
from asign.ingest import labels as labels_mod
from asign.ingest.config import IngestConfig
from asign.ingest.images import verify_image
from asign.ingest.sample import SampleInput, SectionInput
from asign.store import LabelsInfo, Store

log = logging.getLogger(__name__)


def pick_layer(sections: Sequence[SectionInput], which: str) -> SectionInput:
    """The section named by first|middle|Z among the labelled sections of a sample that
    can join the 3D graph (an image or precomputed aligned coordinates): a labels-only
    section such as her2st C1 cannot be the known layer, since nothing links it to the others."""
    placed = [s for s in sections if s.has_counts and (s.has_image or s.has_aligned_coords)]
    labelled = sorted(placed or (s for s in sections if s.has_counts), key=lambda s: s.z)
    if not labelled:
        raise InputError(f"sample {sections[0].sample_id} has no section with counts",
                         fix="asign needs one measured ST section per sample")
    if which == "first":
        return labelled[0]
    if which == "middle":
        return labelled[len(labelled) // 2]
    for s in labelled:
        if str(s.z) == which or s.section_id == which:
            return s
    raise ConfigError(f"no labelled layer {which!r} in sample {sections[0].sample_id}",
                      fix=f"use first, middle, or one of z={[s.z for s in labelled]} / "
                          f"{[s.section_id for s in labelled]}")


def input_hashes(samples: Sequence[SampleInput]) -> dict[str, dict[str, str | None]]:
    out: dict[str, dict[str, str | None]] = {}
    for sample in samples:
        for s in sample.sections:
            out[s.section_id] = {
                "image_sha256": file_sha256(s.image_path) if s.image_path else None,
                "counts_sha256": file_sha256(s.counts_path) if s.counts_path else None,
            }
    return out


def requested_genes(genes: Sequence[str]) -> list[str]:
    """``--genes`` as given: gene names, or one file of names (one per line, or separated by
    commas/tabs/spaces; ``#`` starts a comment)."""
    if len(genes) != 1:
        return list(genes)
    path = Path(genes[0])
    if not (path.is_file() or "/" in genes[0] or path.suffix.lower() in _GENE_FILE_SUFFIXES):
        return list(genes)
    if not path.is_file():
        raise InputError("gene list file not found", path=path,
                         fix="give an existing file with one gene per line, or comma-separated "
                             "gene names")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"gene list file is unreadable ({err})", path=path,
                         fix="give a plain-text file with one gene per line") from err
    names = [g for line in text.splitlines()
             for g in re.split(r"[,\t ]+", line.split("#", 1)[0].strip()) if g]
    if not names:
        raise InputError("gene list file names no gene", path=path,
                         fix="put one gene symbol per line")
    return names


_GENE_FILE_SUFFIXES = {".txt", ".csv", ".tsv", ".list"}


def register_fingerprint(cfg: IngestConfig, samples: Sequence[SampleInput],
                         hashes: dict[str, Any]) -> str:
    spacing = [cfg.section_um, *(sec.section_um for s in samples for sec in s.sections)]
    # old stores keep their fingerprint
    extra = [spacing] if any(v is not None for v in spacing) else []
    if cfg.bin_um is not None:  # binned platforms: another bin size is another set of spots
        extra.append({"bin_um": cfg.bin_um})
    return fingerprint("register", [s.sample_id for s in samples], hashes, cfg.n_genes,
                       requested_genes(cfg.genes), cfg.normalisation, cfg.panel_from,
                       list(cfg.extra_2d), *extra)


def choose_panel(cfg: IngestConfig,
                 samples: Sequence[SampleInput]) -> tuple[list[str], list[str], np.ndarray]:
    """Panel genes, the training sections it was computed on, and their mean counts there.

    Training sections are the ``panel_from`` layer of each 3D sample plus every labelled
    section of the extra 2D samples — never a layer that will be hidden and scored."""
    train = [pick_layer(s.sections, cfg.panel_from) for s in samples
             if s.sample_id not in cfg.extra_2d]
    train += [sec for s in samples if s.sample_id in cfg.extra_2d for sec in s.sections
              if sec.has_counts]
    every = [sec for s in samples for sec in s.sections]
    panel = labels_mod.select_panel(every, cfg.n_genes,
                                    train_sections=[s.section_id for s in train],
                                    genes=requested_genes(cfg.genes) or None)
    counts = np.concatenate([labels_mod.panel_counts(s, panel) for s in train])
    return panel, [s.section_id for s in train], counts.mean(axis=0)


# Median nearest-spot distance over the platform's pitch beyond these bounds: the
# coordinates (or µm/px) are in another unit, e.g. µm given as pixels.
PITCH_RATIO = (0.5, 2.0)


def check_units(s: SectionInput) -> None:
    """Refuse spot coordinates whose spacing does not match the spot pitch: pixel
    coordinates × µm/px, and given aligned coordinates (µm), against ``spot_pitch_um``."""
    from scipy.spatial import cKDTree

    pitch = s.spot_pitch_um
    if len(s.spots) < 3 or not (pitch and np.isfinite(pitch)):
        return
    checks = []
    if s.um_per_px and {"px", "py"} <= set(s.spots) and s.spots["px"].notna().all():
        checks.append(("px, py × um_per_px", s.spots[["px", "py"]].to_numpy(float) * s.um_per_px))
    if s.has_aligned_coords:
        checks.append(("x_um, y_um", s.spots[["x_um", "y_um"]].to_numpy(float)))
    for what, xy in checks:
        xy = xy[np.isfinite(xy).all(axis=1)]
        if len(xy) < 3:
            continue
        dist, _ = cKDTree(xy).query(xy, k=2)
        spacing = float(np.median(dist[:, 1]))
        if not PITCH_RATIO[0] <= spacing / pitch <= PITCH_RATIO[1]:
            raise InputError(f"section {s.section_id}: spots are {spacing:.3g} µm apart by their "
                             f"{what}, but the spot pitch is {pitch:g} µm (coordinates in another "
                             "unit?)", path=s.counts_path or s.image_path,
                             fix="give px/py in full-resolution image pixels, x_um/y_um in µm, and "
                                 "the image's µm/px")


def _section_row(s: SectionInput, fmt: str, hashes: dict[str, Any], areas: dict[str, float],
                 section_um: float) -> dict[str, Any]:
    check_units(s)
    width = height = None
    if s.image_path is not None:
        width, height = verify_image(s.image_path)
        areas[s.section_id] = _tissue_area_um2(s, width)
    return {
        "sample_id": s.sample_id, "section_id": s.section_id, "z": s.z,
        "image_path": str(s.image_path) if s.image_path else None,
        "image_sha256": hashes[s.section_id]["image_sha256"],
        "width": width, "height": height, "um_per_px": s.um_per_px,
        "spot_diameter_um": s.spot_diameter_um, "spot_pitch_um": s.spot_pitch_um,
        "n_spots": len(s.spots), "has_counts": s.has_counts, "has_image": s.has_image,
        "counts_path": str(s.counts_path) if s.counts_path else None,
        "counts_sha256": hashes[s.section_id]["counts_sha256"], "format": fmt,
        "has_coords": s.has_aligned_coords and len(s.spots) > 0,
        "section_um": section_um, "z_um": float(s.z) * section_um,
        "spot_shape": s.spot_shape, "lattice": s.lattice,
    }


def section_spacing(cfg: IngestConfig, sample: SampleInput) -> tuple[float, str]:
    """(spacing between consecutive z in µm, where it came from): ``--section-um``, else the
    input's ``section_um``, else the default (logged: 3D distances then rest on it)."""
    from asign.store.sections import DEFAULT_SECTION_UM

    if cfg.section_um is not None:
        if not np.isfinite(cfg.section_um) or cfg.section_um <= 0:
            raise ConfigError(f"--section-um {cfg.section_um} must be a positive number of µm",
                              fix="give the spacing between consecutive sections, e.g. "
                                  "--section-um 15")
        return float(cfg.section_um), "option"
    given = {s.section_um for s in sample.sections if s.section_um is not None}
    if len(given) > 1:
        raise InputError(f"sample {sample.sample_id} gives several section_um values "
                         f"{sorted(given)}",
                         path=sample.source,
                         fix="give one section_um per sample (e.g. in [defaults])")
    if given:
        return float(given.pop()), "input"
    log.warning("sample %s: no section spacing given; z in µm assumes %.0f µm between consecutive "
                "sections (set section_um in the manifest or --section-um)", sample.sample_id,
                DEFAULT_SECTION_UM)
    return DEFAULT_SECTION_UM, "default"


def _tissue_area_um2(s: SectionInput, width: int) -> float:
    """Tissue area of a section's image; an image without detectable tissue (a blank or
    black scan) is refused here, before anything is written, rather than in the align step
    after the store was changed. Same thumbnail scale and tissue detector as align."""
    from asign.ingest.images import read_thumbnail
    from asign.ingest.step_align import THUMB_UM_PER_PX
    from asign.ingest.tissue import tissue_mask

    um_per_px = s.um_per_px or 1.0
    thumb = read_thumbnail(s.image_path, max(1.0, THUMB_UM_PER_PX / um_per_px))
    mask = tissue_mask(thumb, name=str(s.image_path))
    return float(mask.sum()) * (um_per_px * width / thumb.shape[1]) ** 2


def _check_tissue_areas(samples: Sequence[SampleInput], areas: dict[str, float]) -> None:
    """Neighbouring sections must show about the same tissue area: an image whose µm/px
    differs from the one its spots imply cannot be aligned, so refuse it before writing."""
    from asign.ingest.align import check_tissue_areas

    for sample in samples:
        imaged = [s for s in sample.sections if s.section_id in areas and s.um_per_px]
        for a, b in zip(imaged, imaged[1:], strict=False):
            check_tissue_areas(a.section_id, areas[a.section_id], b.section_id, areas[b.section_id],
                               path=f"{a.image_path}, {b.image_path}")


def spots_table(sample: SampleInput) -> dict[str, list]:
    names = ("sample_id", "section_id", "spot_id", "barcode", "z", "array_x", "array_y", "px",
             "py", "x_um", "y_um", "is_virtual")
    cols: dict[str, list] = {k: [] for k in names}
    for s in sample.sections:
        df = s.spots
        n = len(df)
        cols["sample_id"] += [s.sample_id] * n
        cols["section_id"] += [s.section_id] * n
        cols["spot_id"] += df["spot_id"].astype(str).tolist()
        cols["barcode"] += df["barcode"].astype(str).tolist()
        cols["z"] += [s.z] * n
        for c in ("array_x", "array_y"):
            cols[c] += [None if v is None or v != v else int(v)
                        for v in df[c]] if c in df else [None] * n
        for c in ("px", "py", "x_um", "y_um"):
            cols[c] += [None if v != v else float(v) for v in df[c]] if c in df else [None] * n
        cols["is_virtual"] += [False] * n
    return cols


def labels_table(sample: SampleInput, panel: list[str], normalisation: str) -> dict[str, Any]:
    """Columns of the labels table; the per-spot lists are built as Arrow list arrays
    straight from the (spots × genes) matrices (no Python object per value: 200k spots ×
    250 genes would be 100M of them)."""
    ids: list[np.ndarray] = []
    sections: list[np.ndarray] = []
    totals: list[np.ndarray] = []
    counts: list[np.ndarray] = []
    values: list[np.ndarray] = []
    absent: list[np.ndarray] = []
    for s in sample.sections:
        if not s.has_counts:
            continue
        c = labels_mod.panel_counts(s, panel)
        t = (s.total_counts if s.total_counts is not None
             else np.asarray(s.counts.sum(axis=1)).ravel())
        v = labels_mod.normalise(c, t, normalisation).astype(np.float32)
        # Absent is not zero: a panel gene the section's counts lack is masked (value NaN,
        # count null), so it is neither trained on nor scored as a measured zero.
        missing = np.isin(np.asarray(panel, dtype=object), np.asarray(s.genes, dtype=object),
                          invert=True)
        v[:, missing] = np.nan
        absent.append(np.broadcast_to(missing, c.shape))
        values.append(v)
        counts.append(np.asarray(c).astype(np.int32))
        totals.append(np.asarray(t).astype(np.int64))
        ids.append(s.spots["spot_id"].astype(str).to_numpy(dtype=object))
        sections.append(np.full(c.shape[0], s.section_id, dtype=object))
    n = sum(len(i) for i in ids)
    offsets = pa.array(np.arange(n + 1, dtype=np.int64) * len(panel))

    def lists(blocks: list[np.ndarray], dtype: Any,
              mask: list[np.ndarray] | None = None) -> pa.Array:
        flat = np.concatenate([b.reshape(-1) for b in blocks]) if blocks else np.zeros(0, dtype)
        nulls = np.concatenate([m.reshape(-1) for m in mask]) if mask else None
        if nulls is not None and not nulls.any():
            nulls = None  # the usual case: every gene measured
        return pa.LargeListArray.from_arrays(offsets, pa.array(flat.astype(dtype), mask=nulls))

    return {
        "sample_id": np.full(n, sample.sample_id, dtype=object),
        "section_id": np.concatenate(sections) if sections else np.zeros(0, object),
        "spot_id": np.concatenate(ids) if ids else np.zeros(0, object),
        "total_count": np.concatenate(totals) if totals else np.zeros(0, np.int64),
        "counts": lists(counts, np.int32, absent),
        "value": lists(values, np.float32),
    }


def check_ids(store: Store, samples: Sequence[SampleInput], sources: Sequence[Any]) -> None:
    """Sample and section ids name files: refuse ids that collide with each other or with
    those of the store's other samples (names.check_names), before anything is written."""
    from asign.store.names import check_names

    mine = {s.sample_id for s in samples}
    kept = store.read("sections", columns=["sample_id", "section_id"]).to_pylist() \
        if store.has("sections") else []
    kept = [r for r in kept if r["sample_id"] not in mine]
    where = ", ".join(str(p) for p in sources) or None
    check_names("sample id", [s.sample_id for s in samples], where=where,
                existing=[r["sample_id"] for r in kept])
    check_names("section id", [sec.section_id for s in samples for sec in s.sections], where=where,
                existing=[r["section_id"] for r in kept])


def _warn_absent(samples: Sequence[SampleInput], panel: list[str]) -> dict[str, list[str]]:
    """``{section: panel genes its counts lack}``, each section warned about once."""
    out = {}
    for s in (sec for smp in samples for sec in smp.sections if sec.has_counts):
        have = set(s.genes)
        missing = [g for g in panel if g not in have]
        if missing:
            out[s.section_id] = missing
            log.warning("section %s: %d of the %d panel genes are absent from %s (%s%s); they are "
                        "masked in its labels and not scored, not taken as zeros", s.section_id,
                        len(missing), len(panel), s.counts_path, ", ".join(missing[:5]),
                        " …" if len(missing) > 5 else "")
    return out


def write_register(store: Store, cfg: IngestConfig, samples: Sequence[SampleInput],
                   hashes: dict[str, Any]) -> LabelsInfo:
    """Write sections, spots, genes and labels of ``samples`` (replacing earlier versions);
    returns what the manifest records of the labels."""
    if cfg.normalisation not in labels_mod.NORMALISATIONS:
        raise ConfigError(f"unknown normalisation {cfg.normalisation!r}",
                          fix=f"use one of {', '.join(labels_mod.NORMALISATIONS)}")
    panel, train_sections, means = choose_panel(cfg, samples)
    sample_ids = {s.sample_id for s in samples}
    areas: dict[str, float] = {}
    spacing = {smp.sample_id: section_spacing(cfg, smp) for smp in samples}
    rows = [_section_row(s, smp.format, hashes, areas, spacing[smp.sample_id][0])
            for smp in samples for s in smp.sections]
    _check_tissue_areas(samples, areas)
    if store.has("sections"):
        old = store.read("sections").to_pylist()
        rows = [r for r in old if r["sample_id"] not in sample_ids] + rows
    if store.has("genes") and len(rows) > sum(len(s.sections) for s in samples):
        old_panel = store.read("genes").column("gene").to_pylist()
        if old_panel != panel:
            raise ConfigError("the gene panel differs from the one of the samples already in this "
                              "store",
                              path=store.root,
                              fix="ingest all samples of a store in one call, or use a new --store")
    absent = _warn_absent(samples, panel)
    for sample in samples:
        store.remove("transforms", sample.sample_id)  # stale: align must run again (see step_align)
        store.remove("warps", sample.sample_id)
        store.write("spots", spots_table(sample), key=sample.sample_id)
        store.write("labels", labels_table(sample, panel, cfg.normalisation), key=sample.sample_id)
    store.write("genes",
                {"gene": panel, "rank": list(range(len(panel))), "mean_count": means.tolist()})
    store.write("sections", {k: [r.get(k) for r in rows] for k in rows[-1]})
    return LabelsInfo(normalisation=cfg.normalisation, n_genes=len(panel),
                      panel_sections=train_sections, absent_genes=absent or None,
                      section_um={k: {"um": v[0], "source": v[1]} for k, v in spacing.items()})
