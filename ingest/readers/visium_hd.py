"""Reader for 10x Visium HD Space Ranger output, several sections of one block per sample,
parsed by spatialdata-io (``spatialdata_io.visium_hd``).

A *sample folder* holds one folder per section, each a Space Ranger HD output (the folder
holding ``binned_outputs/``, or an ``outs/`` holding it)::

    SAMPLE/
      sections.txt          optional: z order, one section per line, "NAME [IMAGE]"
      SEC_A/binned_outputs/square_016um/filtered_feature_bc_matrix.h5
      SEC_A/binned_outputs/square_016um/spatial/tissue_positions.parquet
      SEC_A/binned_outputs/square_016um/spatial/scalefactors_json.json
      SEC_A/spatial/…       tissue_hires_image.png, scalefactors_json.json
      SEC_A/feature_slice.h5
      SEC_A/microscope_image/IMAGE.tif   the full-resolution H&E Space Ranger was run on

``--bin-um`` picks the binned level (2, 8 or 16 µm; default 16). Each in-tissue bin is
one spot: a square of side ``bin_um`` on a square lattice of pitch ``bin_um``. The pixel
transform is the data's own: µm/px comes from the affine fit of the bins' full-resolution
pixel centres on their array positions × bin size (so a slightly rotated bin grid still
gives the true scale). Image: the IMAGE column of ``sections.txt``, else the single file in
``microscope_image/``, else ``spatial/tissue_hires_image.png`` (pixels scaled by its scale
factor, read from the SpatialData transformation).
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from asign.errors import InputError
from asign.ingest.readers.base import (
    ORDER_FILE,
    ReadOptions,
    check_spots_in_image,
    find_images,
    folder_reader,
    grid_um_per_px,
)
from asign.ingest.readers.tables import check_sparse
from asign.ingest.sample import SectionInput

log = logging.getLogger(__name__)

DEFAULT_BIN_UM = 16
BIN_SIZES_UM = (2, 8, 16)


def section_root(folder: Path) -> Path | None:
    """The Space Ranger HD output folder of a section folder (holds ``binned_outputs/``)."""
    for d in (folder / "outs", folder):
        if (d / "binned_outputs").is_dir():
            return d
    return None


def _is_section(folder: Path) -> bool:
    return section_root(folder) is not None


def _bin_um(options: ReadOptions, root: Path) -> int:
    b = DEFAULT_BIN_UM if options.bin_um is None else options.bin_um
    if b not in BIN_SIZES_UM:
        raise InputError(f"--bin-um {b:g} is not a Visium HD bin size", path=root,
                         fix=f"use one of {', '.join(map(str, BIN_SIZES_UM))}")
    level = root / "binned_outputs" / f"square_{int(b):03d}um"
    if not level.is_dir():
        have = sorted(p.name for p in (root / "binned_outputs").iterdir() if p.is_dir())
        raise InputError(f"no {level.name} level (found {', '.join(have) or 'none'})",
                         path=root / "binned_outputs",
                         fix="pass --bin-um with an available bin size")
    return int(b)


def _full_image(root: Path, listed: Path | None) -> Path | None:
    if listed is not None:
        return listed
    images = find_images(root / "microscope_image")
    if len(images) > 1:
        raise InputError(f"{len(images)} images in microscope_image/", path=root,
                         fix=f"keep one full-resolution H&E, or name it in {ORDER_FILE}")
    return images[0] if images else None


def _hires_scale(sdata, dataset_id: str) -> float:
    """Full-resolution pixels → hires pixels, from spatialdata-io's transformation."""
    from spatialdata.transformations import get_transformation

    tf = get_transformation(sdata.images[f"{dataset_id}_hires_image"],
                            to_coordinate_system=dataset_id)
    return 1.0 / float(np.asarray(tf.to_affine_matrix(("x",), ("x",)))[0, 0])


def read_section(sample_id: str, name: str, folder: Path, z: int, listed: Path | None,
                 options: ReadOptions) -> SectionInput:
    import spatialdata_io

    root = section_root(folder)
    bin_um = _bin_um(options, root)
    image = _full_image(root, listed)
    with warnings.catch_warnings():
        # spatialdata-io warns about absent optional images and its future default
        warnings.simplefilter("ignore", (UserWarning, FutureWarning))
        try:
            sdata = spatialdata_io.visium_hd(
                root, bin_size=bin_um, load_segmentations_only=False, gex_only=True,
                fullres_image_file=image, var_names_make_unique=True)
        except (AssertionError, KeyError, OSError, ValueError) as err:
            raise InputError(f"spatialdata-io cannot read this Visium HD output ({err})",
                             path=root, fix="copy the complete Space Ranger HD output") from err
    table = sdata.tables[f"square_{bin_um:03d}um"]
    obs = table.obs
    keep = np.flatnonzero(obs["in_tissue"].to_numpy() == 1)
    pix = np.asarray(table.obsm["spatial"], dtype=np.float64)[keep]
    grid = obs[["array_col", "array_row"]].to_numpy(np.float64)[keep] * bin_um
    um_per_px = grid_um_per_px(grid, pix, root)
    scale = 1.0
    if image is None and any(k.endswith("_hires_image") for k in sdata.images):
        hires = next(k for k in sdata.images if k.endswith("_hires_image"))
        dataset_id = hires[: -len("_hires_image")]
        scale = _hires_scale(sdata, dataset_id)
        image = next(root.rglob("tissue_hires_image.png"))
        um_per_px /= scale
    level = root / "binned_outputs" / f"square_{bin_um:03d}um"
    counts_path = level / "filtered_feature_bc_matrix.h5"
    matrix = check_sparse(sp.csr_matrix(table.X)[keep], counts_path)
    barcodes = obs.index.to_numpy(dtype=str)[keep]
    spots = pd.DataFrame({
        "spot_id": [f"{name}/{b}" for b in barcodes], "barcode": barcodes,
        "array_x": obs["array_col"].to_numpy()[keep],
        "array_y": obs["array_row"].to_numpy()[keep],
        "px": pix[:, 0] * scale, "py": pix[:, 1] * scale,
    })
    if image is not None:
        check_spots_in_image(spots, image, fix="use the H&E image Space Ranger was run on")
    return SectionInput(
        sample_id=sample_id, section_id=name, z=z, image_path=image, um_per_px=um_per_px,
        spot_diameter_um=float(bin_um), spot_pitch_um=float(bin_um), spots=spots,
        genes=tuple(table.var_names), counts=matrix, counts_path=counts_path,
        total_counts=np.asarray(matrix.sum(axis=1, dtype=np.int64)).ravel(),
        spot_shape="square", lattice="square",
    )


READER = folder_reader(
    "visium_hd",
    "10x Visium HD: a sample folder of section folders, each a Space Ranger HD output with "
    "binned_outputs/",
    _is_section, read_section)
