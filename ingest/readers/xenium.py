"""Reader for 10x Xenium Onboard Analysis output, several sections of one block per sample,
parsed by spatialdata-io (``spatialdata_io.xenium``; cells table and images only).

A *sample folder* holds one folder per section, each a Xenium output folder::

    SAMPLE/
      sections.txt                 optional: z order, one section per line
      SEC_A/experiment.xenium      pixel_size (µm per morphology pixel)
      SEC_A/cell_feature_matrix.h5
      SEC_A/cells.parquet          cell_id, x_centroid, y_centroid (µm), cell_area (µm²)
      SEC_A/cells.zarr.zip
      SEC_A/morphology_focus/morphology_focus_0000.ome.tif
      SEC_A/NAME_he_image.ome.tif          the post-Xenium H&E …
      SEC_A/NAME_he_imagealignment.csv     … and its 3×3 alignment to the morphology image

Spots: with ``--bin-um B`` (default 55, the Visium spot scale) cells are summed into a
square grid of side B µm anchored at the Xenium frame's origin; each bin with at least one
cell is a spot (a square of side B, pitch B). With ``--bin-um 0`` every cell is a spot:
a disc of diameter 2·√(median cell area / π), pitch the median nearest-cell distance.

Image: asign encodes RGB H&E, so the H&E registered to the morphology image (Xenium's
alignment file, read by spatialdata-io) is the section's image; spot centres are mapped
from µm through the morphology pixel size and the inverse alignment into H&E pixels, and
µm/px is the pixel size times the alignment's scale. The morphology image (DAPI, one
channel) fixes the frame; a section without an H&E is kept for its labels only.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy.spatial import cKDTree

from asign.errors import InputError
from asign.ingest.readers.base import (
    ReadOptions,
    check_spots_in_image,
    folder_reader,
)
from asign.ingest.readers.tables import check_sparse
from asign.ingest.sample import SectionInput

log = logging.getLogger(__name__)

DEFAULT_BIN_UM = 55.0
_SPECS = "experiment.xenium"
_HE_SUFFIX = "he_image.ome.tif"


def _is_section(folder: Path) -> bool:
    return (folder / _SPECS).is_file() and (folder / "cell_feature_matrix.h5").is_file()


def bin_cells(xy_um: np.ndarray, counts: sp.csr_matrix, bin_um: float
              ) -> tuple[np.ndarray, np.ndarray, sp.csr_matrix, np.ndarray]:
    """Sum cells into square bins of side ``bin_um`` anchored at the origin: (bin column,
    bin row, summed counts, cells per bin) for the bins holding at least one cell."""
    ij = np.floor(np.asarray(xy_um, dtype=np.float64) / bin_um).astype(np.int64)
    keys, inverse, n_cells = np.unique(ij, axis=0, return_inverse=True, return_counts=True)
    inverse = inverse.ravel()
    member = sp.csr_matrix((np.ones(len(ij)), (inverse, np.arange(len(ij)))),
                           shape=(len(keys), len(ij)))
    summed = sp.csr_matrix(member @ counts)
    summed.data = np.rint(summed.data)
    return keys[:, 0], keys[:, 1], summed, n_cells


def _he_image(sdata, root: Path) -> tuple[Path | None, np.ndarray | None]:
    """(H&E file, 3×3 matrix from H&E pixels to morphology pixels) when an aligned H&E is
    present, from spatialdata-io's parsed transformation."""
    from spatialdata.transformations import get_transformation

    files = sorted(root.glob(f"*{_HE_SUFFIX}"))
    if not files or "he_image" not in sdata.images:
        return None, None
    if len(files) > 1:
        raise InputError(f"{len(files)} H&E images ({', '.join(f.name for f in files[:3])})",
                         path=root, fix="keep one *he_image.ome.tif per section")
    tf = get_transformation(sdata.images["he_image"], to_coordinate_system="global")
    return files[0], np.asarray(tf.to_affine_matrix(("x", "y"), ("x", "y")), dtype=np.float64)


def read_section(sample_id: str, name: str, folder: Path, z: int, listed: Path | None,
                 options: ReadOptions) -> SectionInput:
    import spatialdata_io

    bin_um = DEFAULT_BIN_UM if options.bin_um is None else float(options.bin_um)
    if not np.isfinite(bin_um) or bin_um < 0:
        raise InputError(f"--bin-um {bin_um:g} is not a bin size", path=folder,
                         fix="give a bin side in µm (e.g. 55), or 0 for cells as spots")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", (UserWarning, FutureWarning, DeprecationWarning))
        try:
            sdata = spatialdata_io.xenium(
                folder, cells_boundaries=False, nucleus_boundaries=False, cells_labels=False,
                nucleus_labels=False, transcripts=False, morphology_mip=False)
        except (AssertionError, KeyError, OSError, ValueError) as err:
            raise InputError(f"spatialdata-io cannot read this Xenium output ({err})",
                             path=folder, fix="copy the complete Xenium output folder") from err
    table = sdata.tables["table"]
    counts_path = folder / "cell_feature_matrix.h5"
    cells = check_sparse(sp.csr_matrix(table.X), counts_path)
    xy_um = np.asarray(table.obsm["spatial"], dtype=np.float64)
    pixel_size = _pixel_size(folder)
    if bin_um > 0:
        col, row, matrix, _ = bin_cells(xy_um, cells, bin_um)
        centre_um = (np.c_[col, row] + 0.5) * bin_um
        barcodes = np.array([f"bin_{c}_{r}" for c, r in zip(col, row, strict=True)])
        shape, diameter, pitch = "square", bin_um, bin_um
    else:
        col = row = np.zeros(len(xy_um), dtype=np.int64)
        matrix, centre_um = cells, xy_um
        barcodes = table.obs_names.to_numpy(dtype=str)
        area = table.obs["cell_area"].to_numpy(np.float64)
        diameter = float(2 * np.sqrt(np.median(area) / np.pi))
        pitch = float(np.median(cKDTree(xy_um).query(xy_um, k=2)[0][:, 1]))
        shape = "disc"
    image, he_to_morph = _he_image(sdata, folder)
    if image is None:
        px, um_per_px = centre_um / pixel_size, pixel_size
    else:
        morph = np.c_[centre_um / pixel_size, np.ones(len(centre_um))]
        px = (np.linalg.inv(he_to_morph) @ morph.T).T[:, :2]
        um_per_px = pixel_size * float(np.sqrt(abs(np.linalg.det(he_to_morph[:2, :2]))))
    spots = pd.DataFrame({
        "spot_id": [f"{name}/{b}" for b in barcodes], "barcode": barcodes,
        "array_x": col, "array_y": row, "px": px[:, 0], "py": px[:, 1],
    })
    if image is not None:
        check_spots_in_image(spots, image, fix="use the H&E aligned to this Xenium run")
    return SectionInput(
        sample_id=sample_id, section_id=name, z=z, image_path=image,
        um_per_px=um_per_px if image is not None else None,
        spot_diameter_um=float(diameter), spot_pitch_um=float(pitch), spots=spots,
        genes=tuple(table.var_names), counts=matrix, counts_path=counts_path,
        total_counts=np.asarray(matrix.sum(axis=1, dtype=np.int64)).ravel(),
        spot_shape=shape, lattice="square",
    )


def _pixel_size(folder: Path) -> float:
    import json

    try:
        return float(json.loads((folder / _SPECS).read_text(encoding="utf-8"))["pixel_size"])
    except (OSError, KeyError, ValueError, TypeError) as err:
        raise InputError(f"no pixel_size ({err})", path=folder / _SPECS,
                         fix="copy experiment.xenium from the Xenium output") from err


READER = folder_reader(
    "xenium",
    "10x Xenium: a sample folder of section folders, each a Xenium output "
    "(experiment.xenium, cell_feature_matrix.h5, cells.parquet)",
    _is_section, read_section)
