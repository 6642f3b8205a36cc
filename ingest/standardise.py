"""Per-feature z-scoring for encoders whose features live on unrelated scales.

``histo-classic`` mixes stain optical densities (~0.05), GLCM contrast (~10-100) and LBP
fractions; a concatenation such as ``effnet-lite0+histo-classic`` adds CNN activations.
Raw, the largest-scale features would decide every cosine of the graph's cross-layer
weights and every distance of the similarity baseline. So ingest stores these vectors
z-scored per feature: ``(v − mean) / std``, clipped to ±``CLIP``.

Where the statistics come from: per sample and per level (spot / region / global), the
items of one *reference section*: the sample's panel layer (``--panel-from``, default the
first labelled layer, which is the known layer of the default protocol). Images only: no
expression value enters, and the hidden layers' images do not shape the statistics, so
every section is mapped by the same fixed affine map. The statistics are recomputed (the
encoder is deterministic) on a resumed run, and recorded in the manifest by hash.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd

from asign.errors import InputError

CLIP = 50.0
MIN_STD = 1e-6


def reference_section(sections: pd.DataFrame, panel_from: str) -> str:
    """The section of one sample named by first|middle|Z among its labelled imaged
    sections (as the gene panel chooses its training layer); a lone section is its own."""
    placed = sections[sections.has_image].sort_values("z")
    labelled = placed[placed.has_counts] if placed.has_counts.any() else placed
    if labelled.empty:
        raise InputError("no imaged section to standardise features on",
                         fix="every sample needs at least one section with an image")
    ids = labelled.section_id.astype(str).tolist()
    if panel_from == "first":
        return ids[0]
    if panel_from == "middle":
        return ids[len(ids) // 2]
    for row in labelled.itertuples():
        if str(row.z) == panel_from or str(row.section_id) == panel_from:
            return str(row.section_id)
    raise InputError(f"--panel-from {panel_from!r} names no labelled section ({', '.join(ids)})",
                     fix="pass first, middle, a z index or a section id")


def fit(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature mean and std (float64); a constant feature gets std 1 (centred only)."""
    x = np.asarray(features, dtype=np.float64)
    if len(x) == 0:
        raise InputError("the reference section has no items to standardise features on",
                         fix="check that the reference section has spots inside the image")
    mean = x.mean(axis=0)
    std = x.std(axis=0)
    return mean, np.where(std > MIN_STD, std, 1.0)


def apply(features: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """z-scores as float16 (the store's vector dtype)."""
    z = (np.asarray(features, dtype=np.float64) - mean) / std
    return np.clip(z, -CLIP, CLIP).astype(np.float16)


def stats_hash(stats: dict[str, tuple[np.ndarray, np.ndarray]]) -> str:
    digest = hashlib.sha256()
    for level in sorted(stats):
        for arr in stats[level]:
            digest.update(level.encode())
            digest.update(np.ascontiguousarray(arr, dtype=np.float64).tobytes())
    return digest.hexdigest()
