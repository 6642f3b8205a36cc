"""Reader for a generic manifest: one entry per section, in TOML or CSV.

TOML (``manifest.toml``)::

    [defaults]                 # optional: any section key, used where a section omits it
    spot_diameter_um = 55
    spot_pitch_um = 100

    [[sections]]
    sample = "S1"
    section = "S1_L1"          # store-unique
    z = 1                      # sectioning order within the sample
    image = "img/L1.tif"       # optional when the spots carry x_um, y_um
    counts = "counts/L1.csv"   # optional: wide table, first column spot id, one column per gene
    spots = "spots/L1.csv"     # spot id, px, py (image pixels; px = column), optional x_um, y_um
    um_per_px = 0.5            # of the image; optional when the slide's metadata states it
    section_um = 15            # optional: spacing between consecutive z in µm (z in µm = z × it)

CSV (``manifest.csv``): the same keys as columns, one row per section, empty cell = absent.
Relative paths are relative to the manifest file. The source may be the manifest file or a
folder holding ``manifest.toml`` or ``manifest.csv``.

Spot tables take the id from ``spot_id`` (else ``barcode``, else the first column), and
``array_x, array_y`` when present. Aligned coordinates ``x_um, y_um`` (µm, for users who
aligned elsewhere, e.g. with PASTE) must then be given for every section of that sample;
the align step keeps them. A section with counts but neither image nor aligned coordinates
is kept for its labels only, with a warning. A section with an image and no spots is an
image-only section (a virtual lattice is laid later); it inherits spot diameter and pitch
from its sample. A slide that states its µm/px (OpenSlide ``mpp-x``, OME
``PhysicalSizeX``, TIFF resolution tags) is checked against ``um_per_px``, or supplies it.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from asign.errors import InputError, ValidationErrors
from asign.ingest.images import um_per_px
from asign.ingest.readers.base import (
    Reader,
    ReadOptions,
    check_spots_in_image,
    finish_sample,
    sample_matches,
)
from asign.ingest.readers.tables import (
    check_unique,
    match_counts_to_spots,
    read_counts_table,
    read_table,
)
from asign.ingest.sample import SPOT_COLUMNS, SampleInput, SectionInput

log = logging.getLogger(__name__)

NAMES = ("manifest.toml", "manifest.csv")
_REQUIRED = ("sample", "section", "z")
_FLOATS = ("um_per_px", "spot_diameter_um", "spot_pitch_um", "section_um")
_PATHS = ("image", "counts", "spots")
KEYS = (*_REQUIRED, *_PATHS, *_FLOATS)


def _manifest_file(path: Path) -> Path | None:
    path = Path(path)
    if path.is_dir():
        for name in NAMES:
            if (path / name).is_file():
                return path / name
        return None
    if path.is_file() and path.suffix.lower() == ".toml":
        return path
    if path.is_file() and path.suffix.lower() == ".csv":
        with open(path, encoding="utf-8", errors="replace") as fh:
            header = {c.strip().strip('"') for c in fh.readline().strip().split(",")}
        return path if set(_REQUIRED) <= header else None
    return None


def detect(path: Path) -> bool:
    return _manifest_file(path) is not None


def _load_rows(path: Path) -> list[dict[str, Any]]:
    if path.suffix.lower() == ".toml":
        try:
            import tomllib
        except ModuleNotFoundError:  # Python 3.10
            import tomli as tomllib
        try:
            doc = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as err:
            raise InputError(
                f"cannot parse manifest ({err})", path=path, fix="check the TOML syntax"
            ) from err
        rows = doc.get("sections", doc.get("section", []))
        if not isinstance(rows, list) or not rows:
            raise InputError(
                "manifest has no [[sections]] entries",
                path=path,
                fix="add one [[sections]] table per section",
            )
        defaults = doc.get("defaults", {})
        return [{**defaults, **row} for row in rows]
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, ValueError, pd.errors.ParserError) as err:
        raise InputError(
            f"cannot parse manifest ({err})",
            path=path,
            fix="write one CSV row per section with a header",
        ) from err
    return [
        {k.strip(): v.strip() for k, v in row.items() if v.strip() != ""}
        for row in df.to_dict("records")
    ]


def _parse_rows(path: Path, raw: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Type-check every entry; report all problems at once."""
    problems, rows = [], []
    base = path.parent
    for i, row in enumerate(raw, start=1):
        where = f"{path.name} entry {i}" + (f" ({row['section']})" if "section" in row else "")
        unknown = sorted(set(row) - set(KEYS))
        if unknown:
            problems.append(f"{where}: unknown key(s) {', '.join(unknown)}")
        for key in _REQUIRED:
            if key not in row:
                problems.append(f"{where}: missing {key}")
        out = {k: str(row[k]) for k in ("sample", "section") if k in row}
        if "z" in row:
            try:
                out["z"] = int(row["z"])
            except (TypeError, ValueError):
                problems.append(f"{where}: z={row['z']!r} is not an integer")
        for key in _FLOATS:
            if key in row:
                try:
                    val = float(row[key])
                except (TypeError, ValueError):
                    problems.append(f"{where}: {key}={row[key]!r} is not a number")
                    continue
                if not np.isfinite(val) or val <= 0:
                    problems.append(f"{where}: {key} must be positive")
                out[key] = val
        for key in _PATHS:
            if key in row:
                out[key] = (base / str(row[key])).resolve()
        if "image" in out and "um_per_px" not in out:
            meta = um_per_px(out["image"], None) if out["image"].is_file() else None
            if meta is None:
                problems.append(f"{where}: an image needs um_per_px (its file states none)")
            else:
                out["um_per_px"] = meta
        if "counts" in out and "spots" not in out:
            problems.append(f"{where}: counts need a spots table")
        if not {"image", "counts"} & set(out):
            problems.append(f"{where}: needs an image or counts (or both)")
        rows.append(out)
    if problems:
        raise ValidationErrors([f"{path}: {p}" for p in problems], what="manifest")
    return rows


def list_samples(path: Path) -> list[str]:
    manifest = _manifest_file(Path(path))
    if manifest is None:
        return []
    return sorted({str(r["sample"]) for r in _load_rows(manifest) if "sample" in r})


def _read_spots(path: Path, section: str) -> pd.DataFrame:
    df = read_table(path, "spot table")
    id_col = next((c for c in ("spot_id", "barcode") if c in df.columns), df.columns[0])
    ids = df[id_col].astype(str)
    check_unique(ids.tolist(), path, "spot id")
    out = pd.DataFrame({"spot_id": section + "/" + ids, "barcode": ids})
    for col in ("array_x", "array_y", "px", "py"):
        out[col] = pd.to_numeric(df[col], errors="coerce") if col in df.columns else np.nan
    has_px = {"px", "py"} <= set(df.columns)
    if ("px" in df.columns) != ("py" in df.columns):
        raise InputError("spot table has only one of px, py", path=path, fix="give both px and py")
    if has_px and not np.isfinite(out[["px", "py"]].to_numpy(float)).all():
        raise InputError(
            "spot table has empty, infinite or non-numeric px/py", path=path,
            fix="fill px, py for every spot"
        )
    if ("x_um" in df.columns) != ("y_um" in df.columns):
        raise InputError(
            "spot table has only one of x_um, y_um",
            path=path,
            fix="give both x_um and y_um, or neither",
        )
    if "x_um" in df.columns:
        for col in ("x_um", "y_um"):
            out[col] = pd.to_numeric(df[col], errors="coerce")
        if not np.isfinite(out[["x_um", "y_um"]].to_numpy(float)).all():
            raise InputError(
                "spot table has empty, infinite or non-numeric x_um/y_um",
                path=path,
                fix="fill x_um, y_um for every spot",
            )
    return out


def _empty_spots() -> pd.DataFrame:
    return pd.DataFrame(
        {c: pd.Series(dtype=object if c in ("spot_id", "barcode") else float) for c in SPOT_COLUMNS}
    )


def _read_section(row: dict[str, Any], manifest: Path) -> SectionInput:
    section = row["section"]
    spots_path, counts_path, image = row.get("spots"), row.get("counts"), row.get("image")
    spots = _read_spots(spots_path, section) if spots_path else _empty_spots()
    counts = None
    if counts_path:
        counts = read_counts_table(counts_path)
        rows = match_counts_to_spots(counts, spots["barcode"].tolist(), spots_path)
        if len(rows) < len(spots):
            log.info(
                "%s: %d spots have no counts and are dropped", spots_path, len(spots) - len(rows)
            )
        spots = spots.iloc[rows].reset_index(drop=True)
    if image is not None:
        if spots["px"].isna().all() and len(spots):
            raise InputError(
                "spot table has no px, py for an image section",
                path=spots_path,
                fix="add px, py (image pixels) columns",
            )
        row = {**row, "um_per_px": um_per_px(image, row.get("um_per_px"))}
        what = f"spot centre(s) of {spots_path.name}" if spots_path else "spot centre(s)"
        check_spots_in_image(spots, image, what=what,
                             fix="check the image, the px/py columns (px = column) and um_per_px "
                                 "belong together")
    return SectionInput(
        sample_id=row["sample"],
        section_id=section,
        z=row["z"],
        image_path=image,
        um_per_px=row.get("um_per_px"),
        spot_diameter_um=row.get("spot_diameter_um", np.nan),
        spot_pitch_um=row.get("spot_pitch_um", np.nan),
        section_um=row.get("section_um"),
        spots=spots,
        genes=counts.genes if counts else (),
        counts=counts.matrix if counts else None,
        counts_path=counts_path if counts else None,
        total_counts=counts.total if counts else None,
    )


def _finish_geometry(
    sections: list[SectionInput], sample: str, manifest: Path
) -> list[SectionInput]:
    """Spot diameter/pitch: inherited within a sample; aligned coordinates: all or none."""
    for key in ("spot_diameter_um", "spot_pitch_um"):
        known = [getattr(s, key) for s in sections if np.isfinite(getattr(s, key))]
        if not known:
            raise InputError(
                f"sample {sample} gives no {key}",
                path=manifest,
                fix=f"add {key} to the sections or to [defaults]",
            )
        sections = [
            s if np.isfinite(getattr(s, key)) else replace(s, **{key: known[0]}) for s in sections
        ]
    aligned = [s.section_id for s in sections if s.has_aligned_coords]
    if aligned and len(aligned) != len(sections):
        rest = [s.section_id for s in sections if not s.has_aligned_coords]
        raise InputError(
            f"sample {sample}: sections {', '.join(aligned)} carry x_um, y_um but "
            f"{', '.join(rest)} do not",
            path=manifest,
            fix="give aligned coordinates for every section of the sample, or for none",
        )
    return sections


def read(path: Path, samples: str | None = None,
         options: ReadOptions | None = None) -> list[SampleInput]:
    """``options`` has nothing for this layout."""
    manifest = _manifest_file(Path(path))
    if manifest is None:
        raise InputError(
            "no manifest found",
            path=path,
            fix=f"pass a .toml/.csv manifest or a folder holding one of {', '.join(NAMES)}",
        )
    rows = _parse_rows(manifest, _load_rows(manifest))
    by_sample: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        if sample_matches(row["sample"], samples):
            by_sample.setdefault(row["sample"], []).append(row)
    out = []
    for sample in sorted(by_sample):
        sections = [_read_section(r, manifest) for r in by_sample[sample]]
        sections = _finish_geometry(sections, sample, manifest)
        out.append(finish_sample(sample, sections, fmt="manifest", source=manifest))
    return out


READER = Reader(
    name="manifest",
    description="a manifest.toml / manifest.csv listing per section its sample, z, image, counts "
                "and spots",
    detect=detect,
    read=read,
    list_samples=list_samples,
)
