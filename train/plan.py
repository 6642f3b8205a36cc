"""`asign plan`: which section(s) to send for ST, from what exists before any is measured.

Uses only images (spot embeddings), the alignment (aligned x, y) and the section order —
no label enters a score, so it can be run before any section is measured. For a candidate known set
K, every spot i of the other placed sections of the sample scores

    support_i · match_i · DECAY ** (layers_i − 1)

- ``support_i``: how close the nearest spot of K lies in the aligned frame,
  ``max(0, 1 − d / (2 · pitch))`` — whether propagation has anything beneath it;
- ``match_i``: how alike the tissue looks there, ``(1 + cos) / 2`` between the spot's
  embedding and that nearest known spot's (embeddings z-scored per section, as train does);
- ``layers_i``: sections between i's and the nearest section of K (1 = adjacent); each
  further layer crossed halves what propagation carries (``DECAY``, fixed a priori, not
  fitted to any measured result).

With several known layers a spot takes its best. A candidate's score is the mean over those
spots (its expected reach); candidates are ranked by it. With ``DECAY`` the score favours
central sections, so it is reported beside the plain "pick the middle" rule.
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np

DECAY = 0.5


def spot_scores(feat: np.ndarray, xy: np.ndarray, section: np.ndarray, known_sec: int,
                pitch: float) -> np.ndarray:
    """(N,) each spot's score against one known section (0 on that section itself)."""
    from scipy.spatial import cKDTree

    src = section == known_sec
    d, j = cKDTree(xy[src]).query(xy)
    support = np.clip(1.0 - d / (2 * pitch), 0.0, 1.0)
    f = feat / np.maximum(np.linalg.norm(feat, axis=1, keepdims=True), 1e-9)
    match = (1.0 + np.sum(f * f[src][j], axis=1)) / 2
    layers = np.abs(section - known_sec)
    out = support * match * DECAY ** np.maximum(layers - 1, 0)
    out[src] = 0.0
    return out


def rank_sets(feat: np.ndarray, xy: np.ndarray, section: np.ndarray, names: tuple[str, ...],
              pitch: float, budget: int) -> list[dict[str, Any]]:
    """Every candidate set of ``budget`` sections, best first, with its score."""
    per = {k: spot_scores(feat, xy, section, k, pitch) for k in range(len(names))}
    mid = (len(names) - 1) / 2
    rows = []
    for combo in itertools.combinations(range(len(names)), budget):
        others = ~np.isin(section, combo)
        best = np.max([per[k] for k in combo], axis=0)
        rows.append({"known": [names[k] for k in combo],
                     "score": round(float(best[others].mean()), 6) if others.any() else 0.0,
                     "middle_distance": float(sum(abs(k - mid) for k in combo))})
    rows.sort(key=lambda r: (-r["score"], r["middle_distance"]))
    for i, r in enumerate(rows, 1):
        r["rank"] = i
    return rows


def plan(store_path: Any, *, budget: int = 1, sample: str | None = None,
         encoder: str | None = None) -> dict[str, Any]:
    """Rankings of candidate known sets, per sample with ≥ budget + 1 imaged sections."""
    from asign.errors import ConfigError
    from asign.store import open_store
    from asign.train.data import load_sample, standardised_features

    store = open_store(store_path)
    sections = store.read("sections").to_pandas()
    imaged = sections[sections["has_image"].astype(bool)]
    samples = [sample] if sample else sorted(imaged["sample_id"].unique())
    out: dict[str, Any] = {"budget": budget, "decay": DECAY, "samples": {}}
    for sid in samples:
        s = load_sample(store, sid, encoder=encoder, graph=False)
        keep = np.isin(np.asarray(s.sections)[s.section], imaged["section_id"].to_numpy())
        names = tuple(n for n in s.sections if n in set(imaged["section_id"]))
        if len(names) <= budget:
            continue
        feat, _ = standardised_features(s)
        remap = {s.sections.index(n): i for i, n in enumerate(names)}
        sec = np.array([remap[int(v)] for v in s.section[keep]])
        pitch = float(sections.loc[sections["sample_id"] == sid, "spot_pitch_um"].iloc[0])
        out["samples"][sid] = rank_sets(feat[keep], s.xy[keep], sec, names, pitch, budget)
    if not out["samples"]:
        raise ConfigError(f"no sample has more than {budget} imaged sections to choose from",
                          fix="lower --budget, or check --sample")
    return out
