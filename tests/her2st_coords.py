"""Patient C as a PASTE user would hand it to asign: per section a counts table and a spot
table with aligned ``x_um, y_um`` and no image. The coordinates are the authors' own
alignment (``ST-aligned/*-cluster-annotation.tsv.gz``: ``warped_x, warped_y`` in the pixel
frame of C1, × 0.69 µm/px per the her2st README). Built from ../shared/data/her2st."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from her2st_small import HER2ST

UM_PER_PX = 0.69
SECTIONS = ("C1", "C2", "C3", "C4", "C5", "C6")
GENES = ("ERBB2", "MDK", "FASN", "GNAS", "SCD", "CD74", "KRT19", "ACTB", "MUCL1", "TFF1")


def aligned_spots(section: str) -> pd.DataFrame:
    """spot_id (array ``XxY``, the counts' row names), pixel_x/y and the authors' x_um, y_um."""
    a = pd.read_csv(HER2ST / "ST-aligned" / f"{section}-cluster-annotation.tsv.gz", sep="\t",
                    index_col=0)
    ids = a["x"].astype(int).astype(str) + "x" + a["y"].astype(int).astype(str)
    return pd.DataFrame({"spot_id": ids.to_numpy(), "pixel_x": a["pixel_x"].to_numpy(),
                         "pixel_y": a["pixel_y"].to_numpy(),
                         "x_um": a["warped_x"].to_numpy() * UM_PER_PX,
                         "y_um": a["warped_y"].to_numpy() * UM_PER_PX})


def counts(section: str, genes: tuple[str, ...] = GENES) -> pd.DataFrame:
    c = pd.read_csv(HER2ST / "ST-cnts" / f"{section}.tsv.gz", sep="\t", index_col=0)
    return c[[g for g in genes if g in c.columns]]


def write_coords_manifest(dst: Path, samples: dict[str, tuple[str, ...]] | None = None,
                          section_um: float | None = None) -> Path:
    """A counts-only manifest; ``samples`` maps a sample id to the her2st sections it copies
    (default: C → C1..C6), so one real sample can stand for several."""
    dst.mkdir(parents=True, exist_ok=True)
    samples = samples or {"C": SECTIONS}
    head = "[defaults]\nspot_diameter_um = 100\nspot_pitch_um = 200\n"
    if section_um is not None:
        head += f"section_um = {section_um}\n"
    entries = []
    for sample, secs in samples.items():
        for z, sec in enumerate(secs, start=1):
            name = sec if sample == "C" else f"{sample}{sec[1:]}"
            spots = aligned_spots(sec)
            c = counts(sec)
            keep = np.isin(spots.spot_id, c.index)
            spots[keep][["spot_id", "x_um", "y_um"]].to_csv(dst / f"{name}_spots.csv", index=False)
            c.loc[spots.spot_id[keep]].to_csv(dst / f"{name}_counts.csv")
            entries.append(f'[[sections]]\nsample = "{sample}"\nsection = "{name}"\nz = {z}\n'
                           f'counts = "{name}_counts.csv"\nspots = "{name}_spots.csv"\n')
    (dst / "manifest.toml").write_text(head + "\n" + "\n".join(entries))
    return dst / "manifest.toml"


def section_xy_labels(sec: str) -> tuple[np.ndarray, np.ndarray]:
    """A section's counted spots: aligned (x, y) in µm and ln((c+1)/Σ_panel(c+1)) labels."""
    spots = aligned_spots(sec)
    c = counts(sec)
    spots = spots[np.isin(spots.spot_id, c.index)]
    x = c.loc[spots.spot_id].to_numpy(np.float64) + 1.0
    return spots[["x_um", "y_um"]].to_numpy(), np.log(x / x.sum(axis=1, keepdims=True))


def inline_idw_pcc_gene(sections: tuple[str, ...] = SECTIONS, known: str = "C1",
                        k: int = 8) -> dict[str, float]:
    """Per hidden section, the per-gene PCC of IDW from the known section, computed here in
    plain numpy (brute-force distances): weights 1/d of the k nearest known spots, labels
    ln((c+1)/Σ_panel(c+1)) over the panel ``GENES``, genes constant on a section skipped."""
    xy_k, y_k = section_xy_labels(known)
    out = {}
    for sec in sections:
        if sec == known:
            continue
        xy, y = section_xy_labels(sec)
        d = np.sqrt(((xy[:, None, :] - xy_k[None, :, :]) ** 2).sum(-1))
        nn = np.argsort(d, axis=1)[:, :k]
        w = 1.0 / np.maximum(np.take_along_axis(d, nn, axis=1), 1e-6)
        pred = (w[:, :, None] * y_k[nn]).sum(1) / w.sum(1, keepdims=True)
        pccs = [np.corrcoef(pred[:, g], y[:, g])[0, 1] for g in range(y.shape[1])
                if y[:, g].std() > 0 and pred[:, g].std() > 0]
        out[sec] = float(np.mean(pccs))
    return out
