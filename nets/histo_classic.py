"""``histo-classic``: weight-free hand-crafted histology features of one RGB patch (64 numbers).

What a pathologist's eye keys on, measured directly, with no network and no weights:

- stain amounts after colour deconvolution (``skimage.color.rgb2hed``, Ruifrok & Johnston):
  haematoxylin (nuclei) and eosin (stroma, cytoplasm) mean, spread, 10/50/90th percentiles;
- RGB means and spreads, and the share of near-white pixels (background, fat, lumen);
- texture of the haematoxylin channel: grey-level co-occurrence (GLCM) contrast,
  dissimilarity, homogeneity, energy and correlation at 1, 2, 4 and 8 px, averaged over
  four directions (nuclear density, size and packing);
- uniform local binary pattern histograms of the grey image at radius 1 (8 neighbours) and
  radius 2 (16 neighbours) (edge, spot and flat micro-patterns).

Deterministic (pure functions of the pixels), ~20 ms per 224-px patch on one CPU core.
Scales differ between features: ingest z-scores them (``EncoderSpec.standardise``).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

GLCM_DISTANCES = (1, 2, 4, 8)
GLCM_ANGLES = (0.0, np.pi / 4, np.pi / 2, 3 * np.pi / 4)
GLCM_PROPS = ("contrast", "dissimilarity", "homogeneity", "energy", "correlation")
GLCM_LEVELS = 32
# Fixed haematoxylin range for quantisation (rgb2hed optical density of uint8 H&E; fixed,
# not per patch, so texture is comparable between patches). Values outside are clipped.
H_RANGE = (0.0, 0.25)
LBP_SETTINGS = ((8, 1.0), (16, 2.0))  # (neighbours, radius); uniform: neighbours + 2 bins
WHITE = 220  # all three channels above this: background


def feature_names() -> list[str]:
    names = [f"{s}_{q}" for s in ("H", "E") for q in ("mean", "std", "p10", "p50", "p90")]
    names += [f"{c}_{q}" for c in "RGB" for q in ("mean", "std")] + ["white_fraction"]
    names += [f"glcm_{p}_d{d}" for d in GLCM_DISTANCES for p in GLCM_PROPS]
    names += [f"lbp{p}_{b}" for p, _ in LBP_SETTINGS for b in range(p + 2)]
    return names


DIM = len(feature_names())


def patch_features(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 → (DIM,) float32."""
    from skimage.color import rgb2gray, rgb2hed
    from skimage.feature import graycomatrix, graycoprops, local_binary_pattern

    hed = rgb2hed(rgb)
    out: list[float] = []
    for c in (0, 1):  # H, E
        ch = hed[..., c]
        out += [ch.mean(), ch.std(), *np.percentile(ch, (10, 50, 90))]
    px = rgb.reshape(-1, 3).astype(np.float64)
    for c in range(3):
        out += [px[:, c].mean() / 255.0, px[:, c].std() / 255.0]
    out.append(float((px > WHITE).all(axis=1).mean()))

    lo, hi = H_RANGE
    levels = np.clip((hed[..., 0] - lo) / (hi - lo) * GLCM_LEVELS, 0,
                     GLCM_LEVELS - 1).astype(np.uint8)
    glcm = graycomatrix(levels, GLCM_DISTANCES, GLCM_ANGLES, levels=GLCM_LEVELS,
                        symmetric=True, normed=True)
    props = np.stack([graycoprops(glcm, p).mean(axis=1) for p in GLCM_PROPS], axis=1)  # (d, p)
    # A flat channel has undefined correlation (skimage returns 1): keep it finite.
    out += np.nan_to_num(props, nan=0.0).reshape(-1).tolist()

    grey = (rgb2gray(rgb) * 255).astype(np.uint8)
    for points, radius in LBP_SETTINGS:
        codes = local_binary_pattern(grey, points, radius, method="uniform")
        hist = np.bincount(codes.astype(np.int64).ravel(), minlength=points + 2)
        out += (hist / hist.sum()).tolist()
    return np.asarray(out, dtype=np.float32)


class HistoClassic(nn.Module):
    """Batch wrapper for the embedding engine: (B, 3, H, W) float pixels in 0..255 (the
    registry's mean 0 / std 1/255 undoes the engine's normalisation) → (B, DIM)."""

    dim = DIM

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u8 = x.detach().float().round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)
        feats = [patch_features(img) for img in u8.cpu().numpy()]
        return torch.from_numpy(np.stack(feats)).to(x.device)


def build(weights: object, seed: int) -> HistoClassic:
    """The registry's builder; weight-free, so ``weights`` and ``seed`` are unused."""
    return HistoClassic()
