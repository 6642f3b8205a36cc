"""Generic manifests written from plain descriptions, for property and concurrency tests:
each section has a spot table (pixel and aligned coordinates), a counts table and
optionally a tiny synthetic H&E-like PNG. Small on purpose: an ingest of one takes well
under a second."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd


@dataclass
class SectionSpec:
    sample: str
    section: str
    z: int
    coords: list[tuple[float, float]]  # pixel = aligned µm (um_per_px 1)
    counts: list[list[float]]  # spots × genes
    genes: list[str]
    image_px: int | None = None  # a square PNG of this size, or no image
    spot_ids: list[str] | None = None

    def ids(self) -> list[str]:
        return self.spot_ids or [f"s{i}" for i in range(len(self.coords))]


@dataclass
class ManifestSpec:
    sections: list[SectionSpec] = field(default_factory=list)


def _toml_str(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)  # a JSON string is a TOML basic string


def tiny_image(path: Path, px: int, seed: int = 0) -> None:
    """Pink tissue disc on white with some texture: enough for a tissue mask."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:px, :px]
    disc = (xx - px / 2) ** 2 + (yy - px / 2) ** 2 < (0.4 * px) ** 2
    img = np.full((px, px, 3), 245, np.uint8)
    tissue = np.array([200, 120, 170]) + rng.integers(-25, 25, (px, px, 3))
    img[disc] = np.clip(tissue[disc], 0, 255).astype(np.uint8)
    Image.fromarray(img).save(path)


def write_manifest(root: Path, spec: ManifestSpec) -> Path:
    """Write ``spec`` under ``root``; returns the manifest.toml path."""
    root.mkdir(parents=True, exist_ok=True)
    entries = []
    for i, sec in enumerate(spec.sections):
        stem = f"sec{i}"
        ids = sec.ids()
        xy = np.asarray(sec.coords, dtype=float).reshape(-1, 2)
        spots = pd.DataFrame({"spot_id": ids, "px": xy[:, 0], "py": xy[:, 1]})
        if sec.image_px is None:
            spots["x_um"], spots["y_um"] = xy[:, 0], xy[:, 1]
        spots.to_csv(root / f"{stem}_spots.csv", index=False)
        counts = pd.DataFrame(np.asarray(sec.counts, dtype=float).reshape(len(ids), len(sec.genes)),
                              columns=sec.genes)
        counts.insert(0, "spot_id", ids)
        counts.to_csv(root / f"{stem}_counts.csv", index=False)
        lines = [f"sample = {_toml_str(sec.sample)}", f"section = {_toml_str(sec.section)}",
                 f"z = {sec.z}", f'spots = "{stem}_spots.csv"', f'counts = "{stem}_counts.csv"',
                 "spot_diameter_um = 55", "spot_pitch_um = 100", "section_um = 15"]
        if sec.image_px is not None:
            tiny_image(root / f"{stem}.png", sec.image_px, seed=i)
            lines += [f'image = "{stem}.png"', "um_per_px = 1.0"]
        entries.append("[[sections]]\n" + "\n".join(lines) + "\n")
    path = root / "manifest.toml"
    path.write_text("\n".join(entries), encoding="utf-8")
    return path


def grid(n: int, pitch: float = 100.0, origin: float = 100.0) -> list[tuple[float, float]]:
    side = int(np.ceil(np.sqrt(n)))
    return [(origin + pitch * (i % side), origin + pitch * (i // side)) for i in range(n)]


def simple(sample: str, *, layers: int = 2, n_spots: int = 12, genes: int = 6, seed: int = 0,
           image_px: int | None = None) -> ManifestSpec:
    """One well-formed sample (counts-only, placed by coordinates unless ``image_px``)."""
    rng = np.random.default_rng(seed)
    names = [f"G{g}" for g in range(genes)]
    return ManifestSpec([SectionSpec(sample, f"{sample}_L{z}", z, grid(n_spots),
                                     rng.poisson(5, (n_spots, genes)).tolist(), names, image_px)
                         for z in range(1, layers + 1)])
