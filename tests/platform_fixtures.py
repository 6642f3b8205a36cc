"""Vendor output folders in their on-disk layouts, written by the tests from real her2st
pixels and counts (never committed): a Space Ranger Visium HD output and a Xenium Onboard
Analysis output per section. spatialdata-io parses both, exactly as it parses the vendor's.

Pixels: a square window of the her2st H&E around the section's spots, resampled to the
platform's µm/px. Counts: each bin or cell takes the counts of the nearest her2st spot,
binomially thinned (the real expression, spatially structured, at a lower depth).
What is assumed rather than copied from a vendor file is listed in docs/platforms.md."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
from her2st_small import HER2ST, IMAGE_NAMES
from PIL import Image
from scipy.spatial import cKDTree

SECTIONS = ("C2", "C3")


def _source(section: str, n_genes: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(spots with pixel_x, pixel_y; counts spots × top genes of C2)."""
    first = pd.read_csv(HER2ST / "ST-cnts" / "C2.tsv.gz", sep="\t", index_col=0)
    genes = first.sum(axis=0).sort_values(ascending=False).index[:n_genes]
    counts = pd.read_csv(HER2ST / "ST-cnts" / f"{section}.tsv.gz", sep="\t", index_col=0)
    spots = pd.read_csv(HER2ST / "ST-spotfiles" / f"{section}_selection.tsv", sep="\t")
    spots.index = [f"{x}x{y}" for x, y in zip(spots.x, spots.y, strict=True)]
    common = spots.index.intersection(counts.index)
    return spots.loc[common], counts.loc[common].reindex(columns=genes, fill_value=0)


def _window(section: str, spots: pd.DataFrame, width_um: float, um_per_px: float
            ) -> tuple[np.ndarray, np.ndarray, float]:
    """(RGB of the whole section: the spot cloud plus one array pitch of margin, as a
    square ``width_um`` wide at ``um_per_px``; its top-left corner in her2st pixels; her2st
    pixels per fixture pixel). The physical scale is the fixture's own: a whole section
    shrunk to ``width_um`` keeps a bin count a test can afford, and it keeps the tissue
    outline that alignment needs."""
    Image.MAX_IMAGE_PIXELS = None
    xy = spots[["pixel_x", "pixel_y"]].to_numpy()
    centre = (xy.min(axis=0) + xy.max(axis=0)) / 2
    half = (xy.max(axis=0) - xy.min(axis=0)).max() / 2 + 290.0
    box = (*(centre - half).astype(int), *(centre + half).astype(int))
    n = int(round(width_um / um_per_px))
    with Image.open(HER2ST / "ST-imgs" / "C" / section / IMAGE_NAMES[section]) as im:
        im.draft("RGB", (im.width // 4, im.height // 4))
        f = im.width / Image.open(HER2ST / "ST-imgs" / "C" / section / IMAGE_NAMES[section]).width
        crop = im.convert("RGB").crop(tuple(int(v * f) for v in box))
        rgb = np.asarray(crop.resize((n, n), Image.Resampling.BOX))
    return rgb, np.asarray(box[:2], float), (box[2] - box[0]) / n


def _thinned(counts: pd.DataFrame, spots: pd.DataFrame, her2st_px: np.ndarray, p: float,
             seed: int) -> tuple[sp.csr_matrix, np.ndarray]:
    """Counts of the nearest her2st spot, thinned with probability ``p``; and whether that
    spot is within 0.75 array pitch (else off tissue: no spot there)."""
    dist, idx = cKDTree(spots[["pixel_x", "pixel_y"]].to_numpy()).query(her2st_px)
    rng = np.random.default_rng(seed)
    dense = rng.binomial(counts.to_numpy()[idx].astype(np.int64), p)
    return sp.csr_matrix(dense.astype(np.int32)), dist < 0.75 * 290.0


def write_10x_h5(path: Path, barcodes: list[str], genes: list[str], matrix: sp.csr_matrix
                 ) -> None:
    """A 10x feature-barcode HDF5 (Cell Ranger ≥3 layout: features × barcodes, CSC)."""
    import h5py

    csc = sp.csc_matrix(matrix.T)
    with h5py.File(path, "w") as f:
        g = f.create_group("matrix")
        g["barcodes"] = np.array(barcodes, dtype="S")
        g["data"] = csc.data.astype(np.int32)
        g["indices"] = csc.indices.astype(np.int64)
        g["indptr"] = csc.indptr.astype(np.int64)
        g["shape"] = np.array(csc.shape, dtype=np.int32)
        fg = g.create_group("features")
        fg["id"] = np.array([f"ENSG{i:011d}" for i in range(len(genes))], dtype="S")
        fg["name"] = np.array(genes, dtype="S")
        fg["feature_type"] = np.array(["Gene Expression"] * len(genes), dtype="S")
        fg["genome"] = np.array(["GRCh38"] * len(genes), dtype="S")
        fg["_all_tag_keys"] = np.array([b"genome"])


# ---- Visium HD --------------------------------------------------------------------------

def write_visium_hd_section(dst: Path, section: str, *, bins_um: tuple[int, ...] = (8, 16),
                            width_um: float = 640.0, um_per_px: float = 2.0,
                            rotation_deg: float = 1.5, n_genes: int = 30, seed: int = 0) -> Path:
    """One Space Ranger HD output (``binned_outputs/square_0XXum/...``, ``spatial/``,
    ``feature_slice.h5``, ``microscope_image/``). The bin grid is turned by
    ``rotation_deg`` in the image, as a real slide sits slightly askew."""
    spots, counts = _source(section, n_genes)
    rgb, corner, her2st_per_px = _window(section, spots, width_um, um_per_px)
    dst.mkdir(parents=True, exist_ok=True)
    (dst / "microscope_image").mkdir(exist_ok=True)
    Image.fromarray(rgb).save(dst / "microscope_image" / f"{section}_HE.tif")
    a = np.radians(rotation_deg)
    rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    hires = 0.5
    lowres = 0.125
    for scale, name in ((hires, "tissue_hires_image.png"), (lowres, "tissue_lowres_image.png")):
        (dst / "spatial").mkdir(exist_ok=True)
        size = (int(rgb.shape[1] * scale), int(rgb.shape[0] * scale))
        Image.fromarray(rgb).resize(size, Image.Resampling.BOX).save(dst / "spatial" / name)
    base = {"tissue_hires_scalef": hires, "tissue_lowres_scalef": lowres,
            "fiducial_diameter_fullres": 100.0, "regist_target_img_scalef": hires}
    (dst / "spatial" / "scalefactors_json.json").write_text(json.dumps(
        {**base, "spot_diameter_fullres": 2.0 / um_per_px, "bin_size_um": 2.0,
         "microns_per_pixel": um_per_px}))
    for b_um in bins_um:
        n = int(width_um // b_um)
        row, col = (g.ravel() for g in np.mgrid[0:n, 0:n])
        centre = (np.c_[col, row] + 0.5) * b_um - width_um / 2  # µm from the window centre
        px = (centre @ rot.T) / um_per_px + rgb.shape[1] / 2
        inside = (px >= 0).all(axis=1) & (px < rgb.shape[1] - 1).all(axis=1)
        matrix, near = _thinned(counts, spots, corner + px * her2st_per_px,
                                p=min(1.0, 0.05 * (b_um / 8) ** 2), seed=seed)
        in_tissue = near & inside
        barcodes = [f"s_{b_um:03d}um_{r:05d}_{c:05d}-1" for r, c in zip(row, col, strict=True)]
        folder = dst / "binned_outputs" / f"square_{b_um:03d}um"
        (folder / "spatial").mkdir(parents=True, exist_ok=True)
        keep = np.flatnonzero(in_tissue)
        write_10x_h5(folder / "filtered_feature_bc_matrix.h5", [barcodes[i] for i in keep],
                     list(counts.columns), matrix[keep])
        pd.DataFrame({"barcode": barcodes, "in_tissue": in_tissue.astype(np.int32),
                      "array_row": row.astype(np.int32), "array_col": col.astype(np.int32),
                      "pxl_row_in_fullres": px[:, 1], "pxl_col_in_fullres": px[:, 0]}
                     ).to_parquet(folder / "spatial" / "tissue_positions.parquet", index=False)
        (folder / "spatial" / "scalefactors_json.json").write_text(json.dumps(
            {**base, "spot_diameter_fullres": b_um / um_per_px, "bin_size_um": float(b_um),
             "microns_per_pixel": um_per_px}))
    _write_feature_slice(dst / "feature_slice.h5")
    return dst


def _write_feature_slice(path: Path) -> None:
    """Only the attribute spatialdata-io reads: ``metadata_json`` → ``hd_layout_json`` with
    the file format (assumed layout, from spatialdata-io's ``_parse_metadata``)."""
    import h5py

    layout = {"file_format": "1.0", "transform": np.eye(3).ravel().tolist()}
    with h5py.File(path, "w") as f:
        f.attrs["metadata_json"] = json.dumps({"hd_layout_json": json.dumps(layout)})


def make_visium_hd_sample(dst: Path, sections: tuple[str, ...] = SECTIONS, **kw) -> Path:
    """A sample folder ``dst`` with one Space Ranger HD output per section."""
    for i, s in enumerate(sections):
        write_visium_hd_section(dst / s, s, seed=i, **kw)
    return dst


# ---- Xenium -----------------------------------------------------------------------------

XENIUM_UM_PER_PX = 0.2125


def write_xenium_section(dst: Path, section: str, *, width_um: float = 440.0,
                         cell_area_um2: float = 200.0, n_genes: int = 30, seed: int = 0,
                         with_he: bool = True, morph_um_per_px: float = 0.85) -> Path:
    """One Xenium output (XOA 2.x layout): ``experiment.xenium``, ``cells.parquet``,
    ``cell_feature_matrix.h5``, ``cells.zarr.zip``, ``morphology_focus/`` OME-TIFF and,
    with ``with_he``, an H&E OME-TIFF plus its alignment CSV. The morphology image is
    stored at ``morph_um_per_px`` (a 4× binned level) to keep it small; experiment.xenium
    gives the pixel size of that image."""
    import tifffile

    spots, counts = _source(section, n_genes)
    rgb, corner, her2st_per_px = _window(section, spots, width_um, morph_um_per_px)
    dst.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    n_cells = int(width_um ** 2 / cell_area_um2)
    xy_um = rng.uniform(0, width_um, (n_cells, 2))
    her2st_px = corner + xy_um / morph_um_per_px * her2st_per_px
    matrix, near = _thinned(counts, spots, her2st_px, p=0.02, seed=seed)
    keep = np.flatnonzero(near)
    xy_um, matrix = xy_um[keep], matrix[keep]
    ids = xenium_cell_ids(len(keep))
    write_10x_h5(dst / "cell_feature_matrix.h5", ids, list(counts.columns), matrix)
    area = rng.uniform(0.6, 1.4, len(keep)) * cell_area_um2
    pd.DataFrame({"cell_id": ids, "x_centroid": xy_um[:, 0], "y_centroid": xy_um[:, 1],
                  "transcript_counts": np.asarray(matrix.sum(axis=1)).ravel(),
                  "control_probe_counts": 0, "control_codeword_counts": 0,
                  "total_counts": np.asarray(matrix.sum(axis=1)).ravel(),
                  "cell_area": area, "nucleus_area": area / 3}
                 ).to_parquet(dst / "cells.parquet", index=False)
    (dst / "experiment.xenium").write_text(json.dumps(
        {"pixel_size": morph_um_per_px, "analysis_sw_version": "xenium-2.0.0.10",
         "run_name": f"asign-fixture-{section}", "region_name": section}))
    _write_cells_zarr(dst / "cells.zarr.zip", ids, xy_um, area)
    dapi = (255 - rgb.mean(axis=2)).astype(np.uint16) * 64  # haematoxylin-dark → bright
    (dst / "morphology_focus").mkdir(exist_ok=True)
    tifffile.imwrite(dst / "morphology_focus" / "morphology_focus_0000.ome.tif", dapi[None],
                     ome=True, metadata={"axes": "CYX", "Channel": {"Name": ["DAPI"]},
                                         "PhysicalSizeX": morph_um_per_px,
                                         "PhysicalSizeY": morph_um_per_px})
    if with_he:
        # The H&E at twice the morphology resolution, shifted: the alignment CSV maps its
        # pixels onto morphology pixels (as Xenium Explorer's image alignment writes it).
        he = np.asarray(Image.fromarray(rgb).resize((rgb.shape[1] * 2, rgb.shape[0] * 2)))
        pad = 20
        he = np.pad(he, ((pad, 0), (pad, 0), (0, 0)), constant_values=240)
        tifffile.imwrite(dst / f"{section}_he_image.ome.tif", he[None], ome=True,
                         photometric="rgb", metadata={"axes": "QYXS"})
        align = np.array([[0.5, 0, -pad / 2], [0, 0.5, -pad / 2], [0, 0, 1]])
        pd.DataFrame(align).to_csv(dst / f"{section}_he_imagealignment.csv", header=False,
                                   index=False)
    return dst


def xenium_cell_ids(n: int) -> list[str]:
    """Cell ids as XOA ≥1.3 writes them (8 letters a–p encoding a uint32, then -1)."""
    from spatialdata_io.readers.xenium import cell_id_str_from_prefix_suffix_uint32

    return list(cell_id_str_from_prefix_suffix_uint32(np.arange(1, n + 1), np.ones(n, int)))


def _write_cells_zarr(path: Path, ids: list[str], xy_um: np.ndarray, area: np.ndarray) -> None:
    """``cells.zarr.zip`` with what spatialdata-io reads when no segmentation labels are
    asked for: ``cell_id`` (prefix, suffix uint32) and ``cell_summary`` (assumed content:
    no masks or polygon sets, as spatialdata-io's reader tolerates)."""
    import tempfile

    import zarr
    from spatialdata_io.readers.xenium import prefix_suffix_uint32_from_cell_id_str

    prefix, suffix = prefix_suffix_uint32_from_cell_id_str(np.asarray(ids))
    summary = np.c_[xy_um, area, xy_um, area / 3, np.zeros(len(ids))]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "cells.zarr"
        root = zarr.open_group(folder, mode="w", zarr_format=2)
        root.create_array("cell_id", data=np.c_[prefix, suffix].astype(np.uint32))
        arr = root.create_array("cell_summary", data=summary.astype(np.float64))
        arr.attrs["column_names"] = ["cell_centroid_x", "cell_centroid_y", "cell_area",
                                     "nucleus_centroid_x", "nucleus_centroid_y",
                                     "nucleus_area", "z_level"]
        with zipfile.ZipFile(path, "w") as zf:
            for f in sorted(folder.rglob("*")):
                if f.is_file():
                    zf.write(f, f.relative_to(folder))


def make_xenium_sample(dst: Path, sections: tuple[str, ...] = SECTIONS, **kw) -> Path:
    for i, s in enumerate(sections):
        write_xenium_section(dst / s, s, seed=i, **kw)
    return dst
