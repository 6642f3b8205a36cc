"""Reader for the legacy ST layout of the public her2st release (Andersson et al. 2021).

Layout under the source folder::

    ST-cnts/{S}.tsv.gz            spots × genes raw counts, first column "{x}x{y}"
    ST-spotfiles/{S}_selection.tsv  x y new_x new_y pixel_x pixel_y selected
    ST-imgs/{P}/{S}/*.jpg         one full-resolution H&E per section

A section name is a patient letter plus a number (``C3``): the letter is the sample, the
number is z (sectioning order). The ST platform has 100 µm spots on a 200 µm grid; µm/px is
not shipped, so it is estimated from the spot table: a least-squares affine fit of pixel
position on array position gives the pixels per array step (√|det|), and 200 µm / that is
µm/px (≈0.69 for patient C).

Spots of a counted section are the rows of its counts table, in file order; each must be in
the spot file (spot-file rows without counts are dropped). A section with an image and a
spot file but no counts keeps the spot-file rows with ``selected == 1``; one with an image
only has no spots and takes µm/px from its siblings. A section whose ``ST-imgs`` folder is
absent (C1) is kept for its labels, with a warning; a folder without an image is an error.
"""

from __future__ import annotations

import logging
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from asign.errors import CountsError, ImageError, InputError
from asign.ingest.images import verify_image
from asign.ingest.readers.base import (
    Reader,
    ReadOptions,
    check_spots_in_image,
    find_images,
    finish_sample,
    sample_matches,
)
from asign.ingest.readers.tables import match_counts_to_spots, read_counts_table, read_table
from asign.ingest.sample import SPOT_COLUMNS, SampleInput, SectionInput

log = logging.getLogger(__name__)

SPOT_DIAMETER_UM = 100.0
SPOT_PITCH_UM = 200.0
_NAME = re.compile(r"^([A-Za-z]+)(\d+)$")
_COUNTS_SUFFIX = ".tsv.gz"
_SPOTS_SUFFIX = "_selection.tsv"
_SPOT_COLS = ("x", "y", "pixel_x", "pixel_y")


def detect(path: Path) -> bool:
    path = Path(path)
    return path.is_dir() and (path / "ST-cnts").is_dir() and (path / "ST-spotfiles").is_dir()


def _section_names(root: Path) -> dict[str, str]:
    """section name → patient letter, from counts, spot files and image folders."""
    names: set[str] = set()
    names |= {p.name[: -len(_COUNTS_SUFFIX)] for p in (root / "ST-cnts").glob(f"*{_COUNTS_SUFFIX}")}
    names |= {
        p.name[: -len(_SPOTS_SUFFIX)] for p in (root / "ST-spotfiles").glob(f"*{_SPOTS_SUFFIX}")
    }
    imgs = root / "ST-imgs"
    if imgs.is_dir():
        names |= {p.name for p in imgs.glob("*/*") if p.is_dir()}
    out = {}
    for name in names:
        m = _NAME.match(name)
        if m is None:
            log.debug("her2st: ignoring %s (not a section name like C3)", name)
            continue
        out[name] = m.group(1)
    return out


def list_samples(path: Path) -> list[str]:
    return sorted(set(_section_names(Path(path)).values()))


def um_per_px_from_spots(spots: pd.DataFrame, path: Path) -> float:
    """µm per image pixel from the affine fit of pixel position on array position."""
    arr = spots[["x", "y"]].to_numpy(float)
    pix = spots[["pixel_x", "pixel_y"]].to_numpy(float)
    design = np.c_[arr, np.ones(len(arr))]
    if len(arr) < 3 or np.linalg.matrix_rank(design) < 3:
        raise InputError(
            "too few spots (or all on one line) to estimate µm/px",
            path=path,
            fix="the spot file needs at least 3 spots that are not collinear",
        )
    coef, *_ = np.linalg.lstsq(design, pix, rcond=None)
    step_px = float(np.sqrt(abs(np.linalg.det(coef[:2]))))
    if not np.isfinite(step_px) or step_px <= 0:
        raise InputError(
            "cannot estimate µm/px from spot positions",
            path=path,
            fix="check pixel_x/pixel_y in the spot file",
        )
    return SPOT_PITCH_UM / step_px


def _read_spotfile(path: Path) -> pd.DataFrame:
    df = read_table(path, "spot file")
    missing = [c for c in _SPOT_COLS if c not in df.columns]
    if missing:
        raise InputError(
            f"spot file lacks column(s) {', '.join(missing)}",
            path=path,
            fix="expected a her2st selection table with columns x y pixel_x pixel_y selected",
        )
    if df[list(_SPOT_COLS)].isna().any().any():
        raise InputError(
            "spot file has empty x/y/pixel values", path=path, fix="fill or remove those rows"
        )
    df = df.astype({"x": int, "y": int, "pixel_x": float, "pixel_y": float})
    df["barcode"] = df["x"].astype(str) + "x" + df["y"].astype(str)
    dup = df["barcode"][df["barcode"].duplicated()]
    if len(dup):
        raise InputError(
            f"{len(dup)} duplicate spot position(s), e.g. {dup.iloc[0]}",
            path=path,
            fix="each array position x,y must appear once",
        )
    return df


def _image(root: Path, patient: str, name: str) -> Path | None:
    folder = root / "ST-imgs" / patient / name
    if not folder.exists():
        return None
    images = find_images(folder)
    if not images:
        raise ImageError(
            "image folder holds no image",
            path=folder,
            fix="put the section's H&E (JPEG/TIFF/PNG) in this folder, or remove the folder to "
                "keep only its counts",
        )
    if len(images) > 1:
        raise ImageError(
            f"image folder holds {len(images)} images ({', '.join(p.name for p in images[:3])})",
            path=folder,
            fix="keep exactly one H&E image per section folder",
        )
    return images[0]


def read_section(root: Path, name: str, patient: str) -> SectionInput:
    counts_path = root / "ST-cnts" / f"{name}{_COUNTS_SUFFIX}"
    spot_path = root / "ST-spotfiles" / f"{name}{_SPOTS_SUFFIX}"
    image = _image(root, patient, name)
    has_counts = counts_path.is_file()
    if not spot_path.is_file():
        if has_counts:
            raise CountsError(
                f"no spot file {spot_path.name} for these counts",
                path=counts_path,
                fix=f"add {spot_path} (columns x y pixel_x pixel_y selected)",
            )
        if image is None:
            raise InputError(
                "section has neither counts nor image", path=root, fix="remove the empty section"
            )
        # Image only: no spots; a virtual lattice is laid later, µm/px from sibling sections.
        spots = pd.DataFrame(
            {
                c: pd.Series(dtype=object if c in ("spot_id", "barcode") else float)
                for c in SPOT_COLUMNS
            }
        )
        verify_image(image)
        return SectionInput(
            sample_id=patient,
            section_id=name,
            z=int(_NAME.match(name).group(2)),
            image_path=image,
            um_per_px=None,
            spot_diameter_um=SPOT_DIAMETER_UM,
            spot_pitch_um=SPOT_PITCH_UM,
            spots=spots,
        )
    table = _read_spotfile(spot_path)
    um_per_px = um_per_px_from_spots(table, spot_path)
    counts = None
    if has_counts:
        counts = read_counts_table(counts_path)
        rows = match_counts_to_spots(counts, table["barcode"].tolist(), spot_path)
        table = table.iloc[rows].reset_index(drop=True)
    elif image is None:
        raise InputError(
            "section has a spot file but neither counts nor image",
            path=spot_path,
            fix="add its counts or image, or remove the spot file",
        )
    elif "selected" in table.columns:
        table = table[table["selected"] == 1].reset_index(drop=True)
    spots = pd.DataFrame(
        {
            "spot_id": name + "/" + table["barcode"],
            "barcode": table["barcode"],
            "array_x": table["x"].to_numpy(),
            "array_y": table["y"].to_numpy(),
            "px": table["pixel_x"].to_numpy(),
            "py": table["pixel_y"].to_numpy(),
        }
    )
    if image is not None:
        check_spots_in_image(spots, image, example="barcode",
                             fix="check that the image and the spot file belong to the same "
                                 "section")
    return SectionInput(
        sample_id=patient,
        section_id=name,
        z=int(_NAME.match(name).group(2)),
        image_path=image,
        um_per_px=um_per_px,
        spot_diameter_um=SPOT_DIAMETER_UM,
        spot_pitch_um=SPOT_PITCH_UM,
        spots=spots,
        genes=counts.genes if counts else (),
        counts=counts.matrix if counts else None,
        counts_path=counts_path if counts else None,
        total_counts=counts.total if counts else None,
    )


def _fill_um_per_px(sections: list[SectionInput], patient: str, root: Path) -> list[SectionInput]:
    """An image-only section borrows µm/px from its siblings (same scanner, same block)."""
    known = [s.um_per_px for s in sections if s.um_per_px is not None]
    out = []
    for s in sections:
        if s.um_per_px is None:
            if not known:
                raise InputError(
                    f"section {s.section_id} has no spot file and no sibling to take µm/px from",
                    path=root / "ST-spotfiles",
                    fix=f"add {s.section_id}{_SPOTS_SUFFIX} or ingest it with a manifest that "
                        "gives um_per_px",
                )
            s = replace(s, um_per_px=float(np.median(known)))
        out.append(s)
    return out


def read(path: Path, samples: str | None = None,
         options: ReadOptions | None = None) -> list[SampleInput]:
    """``options`` has nothing for this layout."""
    root = Path(path)
    by_patient: dict[str, list[str]] = {}
    for name, patient in _section_names(root).items():
        if sample_matches(patient, samples):
            by_patient.setdefault(patient, []).append(name)
    out = []
    for patient in sorted(by_patient):
        sections = [read_section(root, name, patient) for name in by_patient[patient]]
        sections = _fill_um_per_px(sections, patient, root)
        out.append(finish_sample(patient, sections, fmt="her2st", source=root))
    return out


READER = Reader(
    name="her2st",
    description="legacy ST layout (ST-cnts/, ST-spotfiles/, ST-imgs/) as in the public her2st "
                "release",
    detect=detect,
    read=read,
    list_samples=list_samples,
)
