"""Spatial blocks of the known layer(s): the one way asign holds out known spots.

Neighbouring spots share expression, so a validation spot drawn at random has measured
neighbours on every side in the training set: any smoother looks excellent on it, and the
choices made there (best epoch, CLI gate, conformal quantiles, ridge penalty, blend
weights) favour copying neighbours more than a hidden layer warrants. Holding out whole
squares removes most of that leak. How far expression stays alike is a property of the
tissue, not of the array, so a block is ``VAL_BLOCK_PITCHES`` spot pitches wide but never
narrower than ``VAL_BLOCK_MIN_UM``: 600 µm on ST (200 µm pitch) and 300 µm on Visium, and
300 µm, not 24–48 µm, on Visium HD bins or Xenium cells, where three pitches would leave
every held-out spot beside training spots of the same cells (:func:`block_side`). Every
held-out choice in ``asign train`` goes through :func:`grid_blocks`:

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
VAL_BLOCK_MIN_UM = 300.0  # ... and at least this (µm): Visium's three pitches, on any array
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


def block_side(xy: np.ndarray, pitches: float = VAL_BLOCK_PITCHES) -> float:
    """Side (µm) of the validation blocks over one section's spots ``xy``: ``pitches``
    spot pitches, at least ``VAL_BLOCK_MIN_UM``."""
    return max(pitches * spot_pitch(xy), VAL_BLOCK_MIN_UM)


def grid_blocks(xy: np.ndarray, side: float) -> np.ndarray:
    """(n,) int block id of each point on a square grid of cell ``side`` µm anchored at the
    points' minimum corner; ids are dense (0..B-1)."""
    xy = np.asarray(xy, dtype=np.float64)
    if len(xy) == 0:
        return np.zeros(0, dtype=np.int64)
    cell = np.floor((xy - xy.min(axis=0)) / max(side, 1e-9)).astype(np.int64)
    _, ids = np.unique(cell, axis=0, return_inverse=True)
    return ids.reshape(-1)


def section_blocks(xy: np.ndarray, section: np.ndarray, mask: np.ndarray,
                   pitches: float = VAL_BLOCK_PITCHES) -> tuple[np.ndarray, int]:
    """(N,) block id of each ``mask`` spot (-1 elsewhere) on each section's own grid of side
    :func:`block_side`, ids unique across sections; and the number of blocks."""
    block = np.full(len(mask), -1, dtype=np.int64)
    base = 0
    for sec in np.unique(section[mask]):
        rows = np.flatnonzero(mask & (section == sec))
        ids = grid_blocks(xy[rows], block_side(xy[rows], pitches))
        block[rows] = ids + base
        base += int(ids.max()) + 1
    return block, base


def validation_split(visible: np.ndarray, xy: np.ndarray, section: np.ndarray,
                     fraction: float, seed: int,
                     pitches: float = VAL_BLOCK_PITCHES) -> np.ndarray:
    """About ``fraction`` of the visible spots, as whole blocks of :func:`section_blocks`
    drawn in a seeded order until the share is reached; none when fewer than 10 visible
    spots or ``fraction`` is 0."""
    val = np.zeros_like(visible, dtype=bool)
    idx = np.flatnonzero(visible)
    target = int(round(fraction * idx.size))
    if fraction <= 0 or idx.size < 10 or target < 1:
        return val
    block, n_blocks = section_blocks(xy, section, visible, pitches)
    order = np.random.default_rng(seed).permutation(n_blocks)
    # whole blocks in that order until the target is reached (one pass: thousands of blocks
    # on Visium HD)
    taken = np.cumsum(np.bincount(block[idx], minlength=n_blocks)[order])
    chosen = np.zeros(n_blocks, dtype=bool)
    chosen[order[:int(np.searchsorted(taken, target)) + 1]] = True
    val[idx] = chosen[block[idx]]
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
