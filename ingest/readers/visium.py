"""Reader for 10x Visium Space Ranger output, several sections of one block per sample.

A *sample folder* holds one folder per section; each section folder is a Space Ranger
``outs/`` folder or contains one::

    SAMPLE/
      sections.txt                optional: z order, one section per line, "NAME [IMAGE]"
      SEC_A/outs/filtered_feature_bc_matrix.h5   (or filtered_feature_bc_matrix/ with mtx)
      SEC_A/outs/spatial/tissue_positions.csv    (or tissue_positions_list.csv, no header)
      SEC_A/outs/spatial/scalefactors_json.json
      SEC_A/outs/spatial/tissue_hires_image.png
      SEC_A/full_res_he.tif       optional: one full-resolution image beside outs/

The source may also be a folder of sample folders (``--samples`` then picks among them).

z order: the lines of ``sections.txt`` (z = 1, 2, … in line order; sections not listed are
ignored with a warning), else the natural sort of the section folder names (S2 before S10).

Image: the IMAGE column of ``sections.txt`` (relative to the sample folder), else a single
image file in the section folder beside ``outs/``, both at full resolution; else
``spatial/tissue_hires_image.png`` (spot pixels scaled by ``tissue_hires_scalef``), else
the lowres image. µm/px of the chosen image comes from the spot lattice itself (100 µm
centre to centre: one array_col step is 50 µm, one array_row step 100·√3/2 µm), via the
affine fit of pixel position on array position, because ``spot_diameter_fullres`` is
documented inconsistently (55 vs 65 µm); it falls back to 55 µm / spot_diameter_fullres.

Only in-tissue spots are kept; ``array_x, array_y`` are Space Ranger's array_col, array_row.
Duplicate gene symbols are made unique as anndata does (``NAME``, ``NAME-1``, …), and only
"Gene Expression" features are kept.
"""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from asign.errors import CountsError, ImageError, InputError
from asign.ingest.readers.base import (
    ORDER_FILE,
    ReadOptions,
    check_spots_in_image,
    find_images,
    folder_reader,
)
from asign.ingest.readers.tables import check_sparse, check_unique
from asign.ingest.sample import SectionInput

log = logging.getLogger(__name__)

SPOT_DIAMETER_UM = 55.0
SPOT_PITCH_UM = 100.0
_COL_STEP_UM = SPOT_PITCH_UM / 2
_ROW_STEP_UM = SPOT_PITCH_UM * np.sqrt(3) / 2
_H5 = "filtered_feature_bc_matrix.h5"
_MTX = "filtered_feature_bc_matrix"
_POSITIONS = ("tissue_positions.csv", "tissue_positions_list.csv")
_POS_COLS = [
    "barcode",
    "in_tissue",
    "array_row",
    "array_col",
    "pxl_row_in_fullres",
    "pxl_col_in_fullres",
]


def section_root(folder: Path) -> Path | None:
    """The Space Ranger ``outs`` folder of a section folder, or None if it is not one."""
    for d in (folder / "outs", folder):
        if (d / "spatial").is_dir() and ((d / _H5).is_file() or (d / _MTX).is_dir()):
            return d
    return None


def _is_section(folder: Path) -> bool:
    return section_root(folder) is not None


def _read(root: Path, name: str) -> tuple[Any, Path]:
    """Counts, positions and scale factors of one Space Ranger ``outs/`` as spatialdata-io
    parses them (gene-expression features only, duplicate symbols made unique the anndata
    way: NAME, NAME-1, …; tissue positions with or without header)."""
    import spatialdata_io

    if (root / _H5).is_file():
        counts_file, counts_path = _H5, root / _H5
    else:
        # the matrix file stands for the counts (its hash is the input's fingerprint)
        counts_file, counts_path = f"{_MTX}/matrix.mtx.gz", root / _MTX / "matrix.mtx.gz"
        if not counts_path.is_file():
            raise CountsError("missing matrix.mtx.gz", path=counts_path.parent,
                              fix="copy the complete filtered_feature_bc_matrix/ folder")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", (UserWarning, FutureWarning))
        try:
            sdata = spatialdata_io.visium(root, dataset_id=name, counts_file=counts_file)
        except (AssertionError, KeyError, OSError, ValueError, NameError) as err:
            raise CountsError(f"spatialdata-io cannot read this Space Ranger output ({err})",
                              path=counts_path, fix="copy the complete outs/ folder") from err
    return sdata.tables["table"], counts_path


def _um_per_px(pos: pd.DataFrame, scale: float, diameter_px: float | None, path: Path) -> float:
    """µm per pixel of the chosen image (pixel coordinates already multiplied by scale)."""
    design = np.c_[
        pos["array_col"] * _COL_STEP_UM, pos["array_row"] * _ROW_STEP_UM, np.ones(len(pos))
    ]
    if len(pos) >= 3 and np.linalg.matrix_rank(design) == 3:
        pix = np.c_[pos["pxl_col_in_fullres"], pos["pxl_row_in_fullres"]] * scale
        coef, *_ = np.linalg.lstsq(design, pix, rcond=None)
        px_per_um = float(np.sqrt(abs(np.linalg.det(coef[:2]))))
        if px_per_um > 0:
            return 1.0 / px_per_um
    if diameter_px:
        return SPOT_DIAMETER_UM / (diameter_px * scale)
    raise InputError(
        "cannot determine µm/px (too few spots, no spot_diameter_fullres)",
        path=path,
        fix="add scalefactors_json.json",
    )


def _pick_image(
    folder: Path, root: Path, listed: Path | None, scalef: dict
) -> tuple[Path | None, float]:
    """(image, factor from full-res pixels to that image's pixels)."""
    if listed is not None:
        return listed, 1.0
    beside = find_images(folder)
    if len(beside) > 1:
        raise ImageError(
            f"{len(beside)} images beside outs/ ({', '.join(p.name for p in beside[:3])})",
            path=folder,
            fix=f"keep one full-resolution image per section, or name it in {ORDER_FILE}",
        )
    if beside:
        return beside[0], 1.0
    for name, key in (
        ("tissue_hires_image.png", "tissue_hires_scalef"),
        ("tissue_lowres_image.png", "tissue_lowres_scalef"),
    ):
        path = root / "spatial" / name
        if path.is_file():
            if key not in scalef:
                raise InputError(
                    f"scalefactors_json.json lacks {key}",
                    path=root / "spatial",
                    fix="copy the complete spatial/ folder",
                )
            return path, float(scalef[key])
    return None, 1.0


def read_section(
    sample_id: str, name: str, folder: Path, z: int, listed: Path | None,
    options: ReadOptions | None = None,
) -> SectionInput:
    """``options`` has nothing for this layout."""
    root = section_root(folder)
    spatial = root / "spatial"
    sf_path = spatial / "scalefactors_json.json"
    try:
        scalef = json.loads(sf_path.read_text(encoding="utf-8")) if sf_path.is_file() else {}
    except (OSError, json.JSONDecodeError) as err:
        raise InputError(
            f"cannot parse scale factors ({err})",
            path=sf_path,
            fix="re-export scalefactors_json.json",
        ) from err
    table, counts_path = _read(root, name)
    barcodes = table.obs_names.astype(str).tolist()
    check_unique(barcodes, counts_path, "barcode")
    matrix = check_sparse(sp.csr_matrix(table.X), counts_path)
    genes = list(table.var_names)
    missing = table.obs["in_tissue"].isna().to_numpy()
    if missing.any():
        pos_path = next(p for p in (spatial / n for n in _POSITIONS) if p.is_file())
        raise CountsError(
            f"{int(missing.sum())} barcode(s) in counts are absent from the spot table "
            f"{pos_path} (e.g. {barcodes[int(np.flatnonzero(missing)[0])]})",
            path=counts_path, fix="use the spatial/ folder of the same Space Ranger run")
    in_tissue = table.obs["in_tissue"].to_numpy() == 1
    if not in_tissue.all():
        log.info(
            "%s: dropping %d counted spots outside tissue", counts_path, int((~in_tissue).sum())
        )
    keep = np.flatnonzero(in_tissue)
    xy = np.asarray(table.obsm["spatial"], dtype=np.float64)[keep]  # (col, row) full-res px
    pos = pd.DataFrame({"barcode": np.asarray(barcodes)[keep],
                        "array_col": table.obs["array_col"].to_numpy()[keep],
                        "array_row": table.obs["array_row"].to_numpy()[keep],
                        "pxl_col_in_fullres": xy[:, 0], "pxl_row_in_fullres": xy[:, 1]})
    matrix = matrix[keep]
    pos_path = spatial

    image, scale = _pick_image(folder, root, listed, scalef)
    diameter = scalef.get("spot_diameter_fullres")
    um_per_px = _um_per_px(pos, scale, diameter, pos_path)
    spots = pd.DataFrame(
        {
            "spot_id": name + "/" + pos["barcode"],
            "barcode": pos["barcode"],
            "array_x": pos["array_col"].to_numpy(),
            "array_y": pos["array_row"].to_numpy(),
            "px": pos["pxl_col_in_fullres"].to_numpy(float) * scale,
            "py": pos["pxl_row_in_fullres"].to_numpy(float) * scale,
        }
    )
    if image is not None:
        check_spots_in_image(spots, image,
                             fix="a full-resolution image must be the one Space Ranger was run on")
    return SectionInput(
        sample_id=sample_id,
        section_id=name,
        z=z,
        image_path=image,
        um_per_px=um_per_px,
        spot_diameter_um=SPOT_DIAMETER_UM,
        spot_pitch_um=SPOT_PITCH_UM,
        spots=spots,
        genes=tuple(genes),
        counts=matrix,
        counts_path=counts_path,
        total_counts=np.asarray(matrix.sum(axis=1, dtype=np.int64)).ravel(),
        lattice="hex",
    )


READER = folder_reader(
    "visium",
    "10x Visium: a sample folder of section folders, each a Space Ranger outs/ (or holding one)",
    _is_section, read_section)
