"""Spatial blocks of the known layer(s): the one way asign holds out known spots.

Neighbouring spots share expression, so a validation spot drawn at random has measured
neighbours on every side in the training set: any smoother looks excellent on it, and the
choices made there (best epoch, CLI gate, conformal quantiles, ridge penalty, blend
weights) favour copying neighbours more than a hidden layer warrants. Holding out whole
squares a few spot pitches wide removes most of that leak. Every held-out choice in
``asign train`` goes through :func:`grid_blocks`:

- :func:`validation_split`: the spots set aside for epoch selection, the CLI gate, the
  shrinkage weight and the networks' conformal calibration (loop.py);
- :func:`cv_folds`: leave-one-block-out folds for the ridge penalty and blend weights
  (ridge.py).

Deterministic for a given seed; reads coordinates only, never labels.
"""

from __future__ import annotations

from typing import Any

import numpy as np

VAL_BLOCK_PITCHES = 3.0  # side of a validation block, in spot pitches (3 × 200 µm on ST)
CV_GRID = 4  # cross-validation: a CV_GRID × CV_GRID grid over the known spots


def spot_pitch(xy: np.ndarray, tree: Any = None) -> float:
    """Median nearest-neighbour distance of the spots (µm): the array's pitch; ``tree``: a
    cKDTree over ``xy`` already built."""
    from scipy.spatial import cKDTree

    xy = np.asarray(xy, dtype=np.float64)
    if len(xy) < 2:
        return 1.0
    dist, _ = (tree if tree is not None else cKDTree(xy)).query(xy, k=2)
    return float(max(np.median(dist[:, 1]), 1e-6))


def grid_blocks(xy: np.ndarray, side: float) -> np.ndarray:
    """(n,) int block id of each point on a square grid of cell ``side`` µm anchored at the
    points' minimum corner; ids are dense (0..B-1)."""
    xy = np.asarray(xy, dtype=np.float64)
    if len(xy) == 0:
        return np.zeros(0, dtype=np.int64)
    cell = np.floor((xy - xy.min(axis=0)) / max(side, 1e-9)).astype(np.int64)
    _, ids = np.unique(cell, axis=0, return_inverse=True)
    return ids.reshape(-1)


def validation_split(visible: np.ndarray, xy: np.ndarray, section: np.ndarray,
                     fraction: float, seed: int,
                     pitches: float = VAL_BLOCK_PITCHES) -> np.ndarray:
    """About ``fraction`` of the visible spots, as whole square blocks ``pitches`` spot
    pitches wide (per visible section), drawn in a seeded order until the share is reached;
    none when fewer than 10 visible spots or ``fraction`` is 0."""
    val = np.zeros_like(visible, dtype=bool)
    idx = np.flatnonzero(visible)
    target = int(round(fraction * idx.size))
    if fraction <= 0 or idx.size < 10 or target < 1:
        return val
    # block ids over every visible section, made unique across sections
    block = np.full(len(visible), -1, dtype=np.int64)
    base = 0
    for sec in np.unique(section[idx]):
        rows = idx[section[idx] == sec]
        ids = grid_blocks(xy[rows], pitches * spot_pitch(xy[rows]))
        block[rows] = ids + base
        base += int(ids.max()) + 1
    order = np.random.default_rng(seed).permutation(base)
    taken = 0
    for b in order:
        if taken >= target:
            break
        members = block == b
        val |= members
        taken += int(members.sum())
    if (visible & ~val).sum() < 2:  # never hold out (almost) everything
        return np.zeros_like(val)
    return val


def random_split(visible: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """A seeded random ``fraction`` of the visible spots (the unblocked ablation)."""
    idx = np.flatnonzero(visible)
    n_val = int(round(fraction * idx.size))
    val = np.zeros_like(visible, dtype=bool)
    if fraction <= 0 or idx.size < 10 or n_val < 1:
        return val
    val[np.random.default_rng(seed).choice(idx, size=n_val, replace=False)] = True
    return val


def cv_folds(xy: np.ndarray, grid: int = CV_GRID) -> list[np.ndarray]:
    """Leave-one-block-out masks over ``xy`` (the known spots): a ``grid`` × ``grid``
    partition of their bounding box, empty cells dropped."""
    xy = np.asarray(xy, dtype=np.float64)
    if len(xy) < 2 * grid:
        return []
    lo, hi = xy.min(axis=0), xy.max(axis=0)
    cell = np.minimum(((xy - lo) / np.maximum(hi - lo, 1e-9) * grid).astype(np.int64), grid - 1)
    ids = cell[:, 0] * grid + cell[:, 1]
    return [ids == b for b in np.unique(ids) if 0 < (ids == b).sum() < len(xy)]
