"""A small synthetic 3D sample for the demo and for tests, written in the manifest layout so
that it goes through a real reader.

A block of tissue is described in one aligned frame (µm) by a tissue outline and two smooth
latent fields that drift slowly with depth: ``a`` (cellularity) sets the density of
nuclei-like blobs, ``b`` (stroma) their colour and the eosin tone. Each layer is imaged
through its own rigid transform (a few degrees, tens of µm), so alignment has work to do.
Spots sit on a square grid fixed in each image, as on a real slide; a spot under tissue
gets counts for ``n_genes`` genes whose means are log-linear in ``a`` and ``b`` at the spot,
drawn negative-binomially. Image features therefore predict expression, and expression
varies smoothly across layers.

Files under ``out_dir``::

    manifest.toml
    images/L{z}.jpg   counts/L{z}.csv   spots/L{z}.csv
    truth.json         ground truth for tests (transforms, fields); never read by the product
    truth_spots.csv    per spot: true aligned position and latent values

Everything is a function of ``seed``: the same arguments give byte-identical files.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from asign.store.atomic import atomic_path, write_bytes

SAMPLE_ID = "demo"
SPOT_DIAMETER_UM = 55.0
SPOT_PITCH_UM = 100.0
_BACKGROUND = np.array([244.0, 242.0, 246.0])
_EOSIN_LIGHT = np.array([238.0, 196.0, 214.0])
_EOSIN_DARK = np.array([214.0, 120.0, 168.0])
_HEMA_PURPLE = np.array([96.0, 44.0, 128.0])
_HEMA_BLUE = np.array([44.0, 40.0, 104.0])


@dataclass(frozen=True)
class _Block:
    """The latent 3D tissue, in aligned µm; z is the layer index."""

    bumps: np.ndarray  # (K, 2) centres of the cellularity bumps
    drift: np.ndarray  # (K, 2) µm per layer
    bump_sigma: float
    wave: np.ndarray  # (2,) wave vector of the stroma field, rad/µm
    wave_phase: float
    radii: tuple[float, float]
    wobble: np.ndarray  # (3, 2) harmonic amplitude/phase of the outline

    def cellularity(self, xy: np.ndarray, z: int) -> np.ndarray:
        c = self.bumps + z * self.drift
        d2 = ((xy[:, None, :] - c[None]) ** 2).sum(-1)
        return np.clip(np.exp(-d2 / (2 * self.bump_sigma**2)).sum(1), 0.0, 1.0)

    def stroma(self, xy: np.ndarray, z: int) -> np.ndarray:
        return 0.5 + 0.5 * np.cos(xy @ self.wave + self.wave_phase + 0.35 * z)

    def outline(self, xy: np.ndarray, z: int) -> np.ndarray:
        """Smooth implicit outline: ≤ 0 on tissue. Harmonics 1–3 make it asymmetric, so a
        registration cannot confuse it with its own rotation by 180°."""
        ang = np.arctan2(xy[:, 1], xy[:, 0])
        edge = 1.0 + sum(a * np.cos((k + 1) * ang + p) for k, (a, p) in enumerate(self.wobble))
        scale = 1.0 + 0.02 * z
        rx, ry = self.radii[0] * scale, self.radii[1] * scale
        return np.sqrt((xy[:, 0] / rx) ** 2 + (xy[:, 1] / ry) ** 2) - edge

    def tissue(self, xy: np.ndarray, z: int) -> np.ndarray:
        return self.outline(xy, z) <= 0


def _block(rng: np.random.Generator, half_um: float) -> _Block:
    return _Block(
        bumps=rng.uniform(-0.5, 0.5, (3, 2)) * half_um,
        drift=rng.normal(0.0, 15.0, (3, 2)),
        bump_sigma=0.3 * half_um,
        wave=rng.normal(0.0, 1.0, 2) / np.linalg.norm(rng.normal(0.0, 1.0, 2)) * (np.pi / half_um),
        wave_phase=float(rng.uniform(0, 2 * np.pi)),
        radii=(0.8 * half_um, 0.66 * half_um),
        wobble=np.c_[rng.uniform(0.05, 0.1, 3), rng.uniform(0, 2 * np.pi, 3)],
    )


def _rigid(theta_deg: float, shift: np.ndarray, um_per_px: float, centre_px: float) -> np.ndarray:
    """3×3 image pixel → aligned µm: centre, scale to µm, rotate, shift."""
    t = np.deg2rad(theta_deg)
    r = np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]]) * um_per_px
    m = np.eye(3)
    m[:2, :2] = r
    m[:2, 2] = shift - r @ np.array([centre_px, centre_px])
    return m


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    n = gaussian_filter(rng.normal(0.0, 1.0, shape).astype(np.float32), sigma)
    return n / (n.std() + 1e-12)


def _render(
    rng: np.random.Generator,
    block: _Block,
    z: int,
    to_aligned: np.ndarray,
    size: int,
    um_per_px: float,
) -> np.ndarray:
    from scipy.ndimage import gaussian_filter, map_coordinates

    # The fields are smooth: evaluate them every 4 px and interpolate (16x fewer points).
    step = 4
    c = np.arange(0, size + step, step, dtype=np.float64)
    cy, cx = np.meshgrid(c, c, indexing="ij")
    xy = (np.c_[cx.ravel(), cy.ravel(), np.ones(cx.size)] @ to_aligned.T)[:, :2]
    yy, xx = np.mgrid[:size, :size].astype(np.float32) / step

    def full(values: np.ndarray) -> np.ndarray:
        return map_coordinates(values.reshape(cx.shape), [yy, xx], order=1).astype(np.float32)

    tissue = full(block.outline(xy, z)) <= 0
    a = full(block.cellularity(xy, z))
    b = full(block.stroma(xy, z))

    # Nuclei: a Poisson field thinned by cellularity, splatted as small blobs (~6 µm).
    n_max = int(size * size * (um_per_px / 8.0) ** 2 * 1.2)
    ij = rng.uniform(0, size, (n_max, 2)).astype(np.int64)
    keep = tissue[ij[:, 1], ij[:, 0]] & (
        rng.uniform(0, 1, n_max) < 0.15 + 0.85 * a[ij[:, 1], ij[:, 0]]
    )
    acc = np.zeros((size, size), dtype=np.float32)
    np.add.at(acc, (ij[keep, 1], ij[keep, 0]), 1.0)
    nuclei = gaussian_filter(acc, max(0.6, 3.0 / um_per_px))
    nuclei = np.clip(nuclei * (2.2 / (nuclei.max() + 1e-12)), 0.0, 1.0)

    tone = np.clip(b + 0.15 * _smooth_noise(rng, (size, size), 4.0), 0, 1)
    fibres = 8.0 * _smooth_noise(rng, (size, size), 1.5)
    soft = gaussian_filter(tissue.astype(np.float32), 1.0)
    img = np.empty((size, size, 3), dtype=np.uint8)
    noise = rng.normal(0.0, 3.0, (3, size, size)).astype(np.float32)
    for ch in range(3):
        eosin = _EOSIN_LIGHT[ch] + (_EOSIN_DARK[ch] - _EOSIN_LIGHT[ch]) * tone
        hema = _HEMA_PURPLE[ch] + (_HEMA_BLUE[ch] - _HEMA_PURPLE[ch]) * tone
        inside = eosin + (hema - eosin) * nuclei + fibres
        value = _BACKGROUND[ch] + (inside - _BACKGROUND[ch]) * soft + noise[ch]
        img[..., ch] = np.clip(np.rint(value), 0, 255)
    return img


def _write_csv(df: pd.DataFrame, path: Path) -> None:
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False, lineterminator="\n", float_format="%.3f")


def make_demo_sample(
    out_dir: Path,
    n_layers: int = 4,
    grid: int = 12,
    seed: int = 0,
    image_px: int = 640,
    um_per_px: float = 2.0,
    n_genes: int = 50,
) -> Path:
    """Write the synthetic sample to ``out_dir`` and return ``out_dir`` (a manifest folder)."""
    from PIL import Image

    if n_layers < 2 or grid < 2 or n_genes < 1:
        raise ValueError("need n_layers ≥ 2, grid ≥ 2 and n_genes ≥ 1")
    span_px = (grid - 1) * SPOT_PITCH_UM / um_per_px
    if span_px >= image_px:
        raise ValueError(
            f"a {grid}×{grid} grid at {SPOT_PITCH_UM} µm does not fit {image_px} px "
            f"at {um_per_px} µm/px"
        )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    half_um = image_px * um_per_px / 2
    block = _block(rng, half_um)
    genes = [f"SYN{i + 1:03d}" for i in range(n_genes)]
    base = np.log(rng.uniform(0.5, 25.0, n_genes))
    load = np.c_[rng.normal(0.0, 1.2, n_genes), rng.normal(0.0, 1.0, n_genes)]
    dispersion = 5.0

    centre = (image_px - 1) / 2
    gi, gj = np.meshgrid(np.arange(grid), np.arange(grid))
    grid_px = np.c_[
        centre + (gi.ravel() - (grid - 1) / 2) * SPOT_PITCH_UM / um_per_px,
        centre + (gj.ravel() - (grid - 1) / 2) * SPOT_PITCH_UM / um_per_px,
    ]

    layers, truth_rows, entries = [], [], []
    for z in range(1, n_layers + 1):
        theta = float(rng.uniform(-8.0, 8.0))
        shift = rng.uniform(-40.0, 40.0, 2)
        to_aligned = _rigid(theta, shift, um_per_px, centre)
        name = f"{SAMPLE_ID}_L{z}"
        with atomic_path(out_dir / "images" / f"L{z}.jpg") as tmp:
            Image.fromarray(_render(rng, block, z, to_aligned, image_px, um_per_px)).save(
                tmp, format="JPEG", quality=90
            )
        xy = (np.c_[grid_px, np.ones(len(grid_px))] @ to_aligned.T)[:, :2]
        under = block.tissue(xy, z)
        ids = [f"{gi.ravel()[k]}x{gj.ravel()[k]}" for k in np.flatnonzero(under)]
        a, b = block.cellularity(xy[under], z), block.stroma(xy[under], z)
        mu = np.exp(
            base + 2 * (a[:, None] - 0.5) * load[:, 0] + 2 * (b[:, None] - 0.5) * load[:, 1]
        )
        mu *= rng.lognormal(0.0, 0.2, (len(ids), 1))
        counts = rng.poisson(rng.gamma(dispersion, mu / dispersion)).astype(np.int64)
        _write_csv(
            pd.DataFrame(
                {
                    "spot_id": ids,
                    "array_x": gi.ravel()[under],
                    "array_y": gj.ravel()[under],
                    "px": grid_px[under, 0],
                    "py": grid_px[under, 1],
                }
            ),
            out_dir / "spots" / f"L{z}.csv",
        )
        _write_csv(
            pd.DataFrame(counts, columns=genes).assign(spot_id=ids)[["spot_id", *genes]],
            out_dir / "counts" / f"L{z}.csv",
        )
        truth_rows.append(
            pd.DataFrame(
                {
                    "section": name,
                    "spot_id": [f"{name}/{i}" for i in ids],
                    "x_um": xy[under, 0],
                    "y_um": xy[under, 1],
                    "cellularity": a,
                    "stroma": b,
                }
            )
        )
        layers.append(
            {
                "section": name,
                "z": z,
                "rotation_deg": theta,
                "shift_um": shift.tolist(),
                "image_to_aligned": to_aligned.tolist(),
            }
        )
        entries.append(
            f'[[sections]]\nsample = "{SAMPLE_ID}"\nsection = "{name}"\nz = {z}\n'
            f'image = "images/L{z}.jpg"\ncounts = "counts/L{z}.csv"\nspots = "spots/L{z}.csv"\n'
        )

    header = (
        "# Synthetic demo sample written by asign.commands.synthetic.make_demo_sample\n"
        f"[defaults]\num_per_px = {um_per_px}\nspot_diameter_um = {SPOT_DIAMETER_UM}\n"
        f"spot_pitch_um = {SPOT_PITCH_UM}\n\n"
    )
    write_bytes(out_dir / "manifest.toml", (header + "\n".join(entries)).encode())
    truth = {
        "note": "ground truth for tests; never read by asign",
        "seed": seed,
        "um_per_px": um_per_px,
        "image_px": image_px,
        "genes": genes,
        "gene_loadings": load.tolist(),
        "layers": layers,
    }
    write_bytes(out_dir / "truth.json", json.dumps(truth, indent=1).encode())
    _write_csv(pd.concat(truth_rows, ignore_index=True), out_dir / "truth_spots.csv")
    return out_dir
