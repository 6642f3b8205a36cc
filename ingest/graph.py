"""The 3D spot graph of one sample (DESIGN §3.6): same-layer kNN edges and cross-layer
edges weighted by disc overlap and feature similarity.

Pure computation: arrays in, arrays out. Nodes are the spots (real or virtual) of one
sample, indexed 0..N-1; ``layer`` holds each spot's integer z and ``xy_um`` its aligned
in-plane centre. Candidate pairs come from KD-trees, so the cost is O(N log N) plus the
number of candidate pairs; no N×N or per-layer-pair dense matrix is ever built.

Direction: an edge ``src → dst`` carries a message from ``src`` to ``dst``. Every spot is
the ``dst`` of its own neighbour lists (its k nearest same-layer spots and its top-k
cross-layer spots), so in-degrees are bounded and the graph is not symmetric in general.

Order: same-layer edges first, then cross-layer edges, each block sorted by (dst, src).
The pair (dst, src) is unique within the graph, so the order is fully deterministic.
"""

from __future__ import annotations

import logging
import mmap
from dataclasses import dataclass, fields
from typing import Literal

import numpy as np
from scipy.spatial import cKDTree

from asign.errors import ConfigError, InputError
from asign.ingest.overlap import SHAPES, circumradius, square_iou

log = logging.getLogger(__name__)

SAME_LAYER = np.uint8(0)
CROSS_LAYER = np.uint8(1)

#: Same-layer weight is 1/d; distances below this floor (µm) count as the floor, so
#: duplicated or near-duplicated spot centres get a large finite weight instead of inf.
MIN_DISTANCE_UM = 1.0

Combine = Literal["product", "sum"]


@dataclass(frozen=True)
class Edges:
    """A directed edge list; all arrays have one entry per edge."""

    src: np.ndarray  # int64 node index (message sender)
    dst: np.ndarray  # int64 node index (message receiver)
    kind: np.ndarray  # uint8: 0 = same_layer, 1 = cross_layer
    weight: np.ndarray  # float32
    distance_um: np.ndarray  # float32, in-plane aligned distance
    iou: np.ndarray  # float32, disc IoU (0 for same-layer)
    cosine: np.ndarray  # float32, feature cosine (nan for same-layer)

    def __len__(self) -> int:
        return int(self.src.shape[0])


def disc_iou(d: np.ndarray, r: float) -> np.ndarray:
    """IoU of two discs of radius ``r`` whose centres are ``d`` apart (float64).

    A(d) = 2r²·acos(d/2r) − (d/2)·√(4r² − d²) for d < 2r, else 0; IoU = A / (2πr² − A).
    With x = d/2r this is f/(π − f), f = acos(x) − x√(1 − x²): r only sets the scale.
    """
    if not np.isfinite(r) or r <= 0:
        raise ConfigError(f"disc radius must be a positive number of µm, got {r}")
    x = np.clip(np.abs(np.asarray(d, dtype=np.float64)) / (2.0 * r), 0.0, 1.0)
    lens = np.arccos(x) - x * np.sqrt(1.0 - x * x)  # A(d) / (2r²)
    return lens / (np.pi - lens)


def same_layer_edges(
    xy_um: np.ndarray, layer: np.ndarray, k: int = 12, chunk: int = 65536
) -> Edges:
    """Each spot receives edges from its ``k`` nearest other spots of its own layer
    (fewer when its layer has ≤ k spots); weight = 1 / max(d, ``MIN_DISTANCE_UM``)."""
    xy, lay = _check_points(xy_um, layer)
    if k < 1:
        raise ConfigError(f"same-layer k must be at least 1, got {k}", fix="use k >= 1")
    chunk = _check_chunk(chunk)
    n = xy.shape[0]
    layers, lay_index, lay_count = np.unique(lay, return_inverse=True, return_counts=True)
    per_layer_k = np.clip(lay_count - 1, 0, k)  # a layer of m spots gives m-1 at most
    per_node = per_layer_k[lay_index].astype(np.int64)
    offsets = np.concatenate(([0], np.cumsum(per_node)))  # dst-major edge positions
    n_edges = int(offsets[-1])
    src_out = np.empty(n_edges, dtype=np.int64)
    dist_out = np.empty(n_edges, dtype=np.float32)
    for li, kk in enumerate(per_layer_k.tolist()):
        if kk < 1:
            continue
        members = np.flatnonzero(lay_index == li)
        tree = cKDTree(xy[members])
        for start in range(0, members.size, chunk):
            local = np.arange(start, min(start + chunk, members.size))
            dist, nb = tree.query(xy[members[local]], k=kk + 1)
            # Drop the query spot itself. Usually it is column 0, but exact duplicates tie
            # at d = 0 and may push it anywhere, or out of the kk+1 columns altogether.
            is_self = nb == local[:, None]
            is_self[~is_self.any(axis=1), -1] = True
            keep = ~is_self
            src = members[nb[keep].reshape(-1, kk)]
            dist = dist[keep].reshape(-1, kk)
            order = np.argsort(src, axis=1, kind="stable")  # (dst, src) order
            pos = offsets[members[local]][:, None] + np.arange(kk)
            src_out[pos] = np.take_along_axis(src, order, axis=1)
            dist_out[pos] = np.take_along_axis(dist, order, axis=1)
    log.debug("same-layer: %d edges over %d layers", n_edges, layers.size)
    dst_out = np.repeat(np.arange(n, dtype=np.int64), per_node)
    weight = (1.0 / np.maximum(dist_out, np.float32(MIN_DISTANCE_UM))).astype(np.float32)
    return Edges(
        src=src_out,
        dst=dst_out,
        kind=np.full(n_edges, SAME_LAYER, dtype=np.uint8),
        weight=weight,
        distance_um=dist_out,
        iou=np.zeros(n_edges, dtype=np.float32),
        cosine=np.full(n_edges, np.nan, dtype=np.float32),
    )


def default_search_radius(
    xy_um: np.ndarray, layer: np.ndarray, radius_um: float, combine: Combine
) -> float:
    """Cross-layer candidate radius when none is given.

    product: 2r — beyond it the IoU, hence the weight, is exactly 0, so nothing is lost.
    sum: 2r + the lattice pitch (median same-layer nearest-neighbour distance). A pair
    that does not overlap still scores its cosine, so some horizon is a modelling choice;
    this one reaches the overlapping spot of every other layer and that spot's first ring
    of lattice neighbours (pitch ≈ 4r on Visium and legacy ST, so about 6r).
    """
    if combine == "product":
        return 2.0 * radius_um
    return 2.0 * radius_um + lattice_pitch(xy_um, layer)


def lattice_pitch(xy_um: np.ndarray, layer: np.ndarray) -> float:
    """Median distance from a spot to its nearest same-layer spot (0 if no layer has two)."""
    xy, lay = _check_points(xy_um, layer)
    nearest = []
    for z in np.unique(lay):
        members = np.flatnonzero(lay == z)
        if members.size >= 2:
            d, _ = cKDTree(xy[members]).query(xy[members], k=2)
            nearest.append(d[:, 1])
    return float(np.median(np.concatenate(nearest))) if nearest else 0.0


def cross_layer_edges(
    xy_um: np.ndarray,
    layer: np.ndarray,
    features: np.ndarray,
    radius_um: float,
    top_k: int = 8,
    combine: Combine = "product",
    search_radius_um: float | None = None,
    chunk: int = 16384,
    has_features: np.ndarray | None = None,
    shape: str = "disc",
    angle_rad: np.ndarray | None = None,
) -> Edges:
    """Each spot receives edges from its ``top_k`` best spots on *other* layers.

    ``shape``: ``"disc"`` (radius ``radius_um``) or ``"square"`` (side 2·``radius_um``,
    each spot turned by ``angle_rad`` (N,) in the aligned frame, default 0); IoU from
    :mod:`asign.ingest.overlap`.

    ``has_features`` (N,) bool, optional: spots whose feature row is meaningful. An edge
    with an endpoint without features (a section placed by given coordinates, no image)
    weighs IoU(d) alone in both modes, and records cosine NaN.

    Candidates are spots of other layers within ``search_radius_um`` in the aligned plane
    (see ``default_search_radius``); weight = IoU(d) × cosine (``"product"``, the paper) or
    IoU(d) + cosine (``"sum"``, the public reference code). Non-positive weights are dropped
    in both modes: they carry no affinity and label propagation needs a_ij ≥ 0. Ties in
    weight go to the lower src index.

    ``features`` is (N, D) of any float dtype and may be an ``np.memmap``. Queries run in
    spatially compact blocks of ``chunk`` spots (a Z-order walk over all layers), so each
    feature row is read and cast to float32 about once; a read-only memmap's pages are
    released after every few MiB read. Extra memory is O(chunk·D + N·top_k), not O(N·D):
    the default block is 16384 × D float32 (64 MiB at D = 1024).
    """
    xy, lay = _check_points(xy_um, layer)
    n = xy.shape[0]
    if not np.isfinite(radius_um) or radius_um <= 0:
        raise ConfigError(f"spot radius must be a positive number of µm, got {radius_um}")
    if top_k < 1:
        raise ConfigError(f"cross-layer top_k must be at least 1, got {top_k}")
    if combine not in ("product", "sum"):
        raise ConfigError(f"unknown cross-layer combine {combine!r}", fix="use product or sum")
    chunk = _check_chunk(chunk)
    if has_features is not None:
        has_features = np.asarray(has_features, dtype=bool)
        if has_features.shape != (n,):
            raise InputError(f"has_features must have one entry per spot ({n}), got "
                             f"{has_features.shape}")
    if not isinstance(features, np.ndarray):
        features = np.asarray(features)
    if features.ndim != 2 or features.shape[0] != n:
        raise InputError(
            f"features must be an (N, D) array with N = {n} spots, got shape {features.shape}",
            fix="pass one feature row per spot, in spot order",
        )
    if shape not in SHAPES:
        raise ConfigError(f"unknown spot shape {shape!r}", fix=f"use one of {SHAPES}")
    angle = np.zeros(n) if angle_rad is None else np.asarray(angle_rad, dtype=np.float64)
    reach = circumradius(shape, 2 * radius_um)  # square: half the diagonal
    radius_search = (
        default_search_radius(xy, lay, reach, combine)
        if search_radius_um is None
        else float(search_radius_um)
    )
    if not np.isfinite(radius_search) or radius_search < 0:
        raise ConfigError(f"search radius must be a non-negative µm value, got {radius_search}")

    tree = cKDTree(xy)
    parts: list[dict[str, np.ndarray]] = []
    order = _spatial_order(xy)
    for start in range(0, n, chunk):
        query = order[start : start + chunk]
        pairs = cKDTree(xy[query]).sparse_distance_matrix(
            tree, radius_search, output_type="ndarray"
        )
        dst = query[pairs["i"]]
        src = pairs["j"].astype(np.int64, copy=False)
        dist = pairs["v"]
        del pairs
        keep = lay[dst] != lay[src]
        dst, src, dist = dst[keep], src[keep], dist[keep]
        iou = (disc_iou(dist, radius_um) if shape == "disc" else
               square_iou(xy[src] - xy[dst], 2 * radius_um, angle[dst], angle[src]))
        if combine == "product":  # IoU 0 means weight 0: skip its cosine
            overlap = iou > 0
            dst, src, dist, iou = dst[overlap], src[overlap], dist[overlap], iou[overlap]
        cos = _pair_cosine(features, dst, src)
        if has_features is None:
            weight = iou * cos if combine == "product" else iou + cos
        else:  # a spot without features (a section placed by coordinates): IoU alone
            both = has_features[dst] & has_features[src]
            cos = np.where(both, cos, np.float32(np.nan))
            weight = np.where(both, iou * cos if combine == "product" else iou + cos, iou)
        best = _top_k_per_dst(dst, src, weight, top_k)
        parts.append(
            {
                "src": src[best],
                "dst": dst[best],
                "weight": weight[best].astype(np.float32),
                "distance_um": dist[best].astype(np.float32),
                "iou": iou[best].astype(np.float32),
                "cosine": cos[best],
            }
        )
    names = list(parts[0])
    final = np.argsort(
        np.concatenate([p["dst"] for p in parts]) * np.int64(n)
        + np.concatenate([p["src"] for p in parts])
    )
    cols = {}
    for name in names:  # one field at a time, freeing the parts as they are copied
        cols[name] = np.concatenate([p.pop(name) for p in parts])[final]
    log.debug("cross-layer: %d edges for %d spots (radius %.1f µm)", final.size, n, radius_search)
    return Edges(kind=np.full(final.size, CROSS_LAYER, dtype=np.uint8), **cols)


def build_graph(
    xy_um: np.ndarray,
    layer: np.ndarray,
    features: np.ndarray,
    radius_um: float,
    k_same: int = 12,
    top_k_cross: int = 8,
    combine: Combine = "product",
    search_radius_um: float | None = None,
    has_features: np.ndarray | None = None,
    shape: str = "disc",
    angle_rad: np.ndarray | None = None,
) -> Edges:
    """The whole 3D graph: same-layer kNN edges followed by cross-layer edges
    (``has_features``, ``shape``, ``angle_rad``: see ``cross_layer_edges``)."""
    # No local names for the parts: concat_edges frees each input field once copied.
    return concat_edges(
        [
            same_layer_edges(xy_um, layer, k=k_same),
            cross_layer_edges(
                xy_um, layer, features, radius_um, top_k_cross, combine, search_radius_um,
                has_features=has_features, shape=shape, angle_rad=angle_rad,
            ),
        ]
    )


def concat_edges(parts: list[Edges]) -> Edges:
    """Concatenate edge lists field by field; ``parts`` is emptied so that each input
    array can be freed as soon as it has been copied (peak ≈ inputs + one field)."""
    columns = [{f.name: getattr(p, f.name) for f in fields(Edges)} for p in parts]
    parts.clear()
    out = {}
    for f in fields(Edges):
        out[f.name] = np.concatenate([c.pop(f.name) for c in columns])
    return Edges(**out)


def _pair_cosine(features: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """cosine(features[a], features[b]) per pair (float32), reading each row once."""
    if a.size == 0:
        return np.zeros(0, dtype=np.float32)
    rows, inverse = np.unique(np.concatenate((a, b)), return_inverse=True)
    block = np.empty((rows.size, features.shape[1]), dtype=np.float32)
    # Read in small runs of sorted rows and release mapped pages after each: the kernel
    # maps whole page-cache folios (up to MiBs) per touched row, so one big gather from a
    # memmap would map many times the bytes it needs.
    step = max(1, (1 << 22) // (features.shape[1] * features.dtype.itemsize))
    for s in range(0, rows.size, step):
        block[s : s + step] = features[rows[s : s + step]]
        _release_mapped_pages(features)
    if not np.isfinite(block).all():
        bad = int(rows[np.flatnonzero(~np.isfinite(block).all(axis=1))[0]])
        raise InputError(
            f"feature row of spot index {bad} contains NaN or inf",
            fix="re-run the embed step for that section",
        )
    norm = np.sqrt(np.einsum("ij,ij->i", block, block))
    # A zero vector has no direction: its cosine with anything is 0.
    block *= (1.0 / np.maximum(norm, np.finfo(np.float32).tiny))[:, None]
    ia, ib = inverse[: a.size], inverse[a.size :]
    out = np.empty(a.size, dtype=np.float32)
    step = max(1, (1 << 22) // block.shape[1])  # about 16 MiB of rows per side
    for s in range(0, a.size, step):
        e = s + step
        out[s:e] = np.einsum(
            "ij,ij->i", np.take(block, ia[s:e], axis=0), np.take(block, ib[s:e], axis=0)
        )
    return np.clip(out, -1.0, 1.0, out=out)


def _top_k_per_dst(dst: np.ndarray, src: np.ndarray, weight: np.ndarray, top_k: int) -> np.ndarray:
    """Indices of the ``top_k`` highest positive weights per dst (ties: lower src)."""
    positive = np.flatnonzero(weight > 0)
    order = positive[np.lexsort((src[positive], -weight[positive], dst[positive]))]
    sorted_dst = dst[order]
    first = np.flatnonzero(np.r_[True, sorted_dst[1:] != sorted_dst[:-1]])
    rank = np.arange(order.size) - np.repeat(first, np.diff(np.r_[first, order.size]))
    return order[rank < top_k]


def _spatial_order(xy: np.ndarray) -> np.ndarray:
    """A permutation along a Z-order (Morton) curve over all layers together: any run of
    consecutive spots covers a compact patch of the plane, so a block of queries and its
    candidates (on every layer) are mostly the same spots and each feature row is read
    about once. Ties keep the input order, so the permutation is deterministic."""
    lo = xy.min(axis=0)
    span = max(float((xy.max(axis=0) - lo).max()), 1e-9)
    cells = np.minimum((xy - lo) / span * 65536, 65535).astype(np.uint64)
    code = _spread_bits(cells[:, 0]) | (_spread_bits(cells[:, 1]) << np.uint64(1))
    return np.argsort(code, kind="stable")


def _spread_bits(v: np.ndarray) -> np.ndarray:
    """Insert a zero bit between the low 16 bits of ``v`` (for Morton interleaving)."""
    v = v & np.uint64(0xFFFF)
    for shift, mask in ((8, 0x00FF00FF), (4, 0x0F0F0F0F), (2, 0x33333333), (1, 0x55555555)):
        v = (v | (v << np.uint64(shift))) & np.uint64(mask)
    return v


def _release_mapped_pages(features: np.ndarray) -> None:
    """Drop this process's resident pages of a read-only memmap. The OS page cache keeps
    them, so re-reading is cheap, but the process's RSS stays at one block instead of
    growing to the whole file. Copy-on-write or writable maps are left alone."""
    if getattr(features, "mode", None) != "r" or not hasattr(mmap, "MADV_DONTNEED"):
        return
    base = getattr(features, "base", None)
    while base is not None and not isinstance(base, mmap.mmap):
        base = getattr(base, "base", None)
    if isinstance(base, mmap.mmap):
        base.madvise(mmap.MADV_DONTNEED)


def _check_points(xy_um: np.ndarray, layer: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    xy = np.asarray(xy_um, dtype=np.float64)
    lay = np.asarray(layer)
    if xy.ndim != 2 or xy.shape[1] != 2:
        raise InputError(f"spot coordinates must be an (N, 2) array of µm, got {xy.shape}")
    if lay.shape != (xy.shape[0],):
        raise InputError(
            f"layer must hold one z per spot: {lay.shape} for {xy.shape[0]} spots",
            fix="pass the section z of every spot",
        )
    if not np.issubdtype(lay.dtype, np.integer):
        raise InputError(f"layer must be integer z values, got dtype {lay.dtype}")
    if xy.shape[0] == 0:
        raise InputError("no spots to build a graph on", fix="check the sample has spots")
    if not np.isfinite(xy).all():
        raise InputError(
            "spot coordinates contain NaN or inf", fix="re-run the align step for the sample"
        )
    return xy, lay


def _check_chunk(chunk: int) -> int:
    if chunk < 1:
        raise ConfigError(f"chunk must be a positive number of spots, got {chunk}")
    return int(chunk)
