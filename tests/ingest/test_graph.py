"""The 3D spot graph: closed-form IoU against numeric overlap, kNN and cross-layer top-k
against brute force, the product/sum option, determinism, and real her2st geometry."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from her2st_small import HER2ST

from asign.errors import ConfigError, InputError
from asign.ingest.graph import (
    CROSS_LAYER,
    MIN_DISTANCE_UM,
    SAME_LAYER,
    build_graph,
    cross_layer_edges,
    disc_iou,
    lattice_pitch,
    same_layer_edges,
)

UM_PER_PX = 0.69


def numeric_disc_iou(d: float, r: float, samples: int = 400_000) -> float:
    """IoU by integrating chord lengths over x (midpoint rule): discs at (0,0) and (d,0)."""
    lo, hi = -r, d + r
    x = lo + (np.arange(samples) + 0.5) * (hi - lo) / samples
    h1 = np.sqrt(np.clip(r * r - x * x, 0.0, None))
    h2 = np.sqrt(np.clip(r * r - (x - d) ** 2, 0.0, None))
    inter = 2.0 * np.minimum(h1, h2)
    union = 2.0 * h1 + 2.0 * h2 - inter
    return float(inter.sum() / union.sum())


def random_stack(n_per_layer: int, layers: int, side_um: float, dim: int, seed: int):
    rng = np.random.default_rng(seed)
    n = n_per_layer * layers
    xy = rng.random((n, 2)) * side_um
    layer = np.repeat(np.arange(layers), n_per_layer)
    # Mixed-sign features so that some cosines (hence product weights) are negative.
    features = rng.normal(0.3, 1.0, (n, dim)).astype(np.float32)
    return xy, layer, features


def brute_cross(xy, layer, features, r, top_k, combine, search):
    unit = features / np.linalg.norm(features, axis=1, keepdims=True)
    dist = np.linalg.norm(xy[:, None, :] - xy[None, :, :], axis=2)
    cos = unit @ unit.T
    iou = disc_iou(dist, r)
    weight = iou * cos if combine == "product" else iou + cos
    cand = (layer[:, None] != layer[None, :]) & (dist <= search) & (weight > 0)
    if combine == "product":
        cand &= iou > 0
    out = {}
    for i in range(len(xy)):
        js = np.flatnonzero(cand[i])
        js = js[np.lexsort((js, -weight[i, js]))][:top_k]
        out.update({(i, int(j)): weight[i, j] for j in js})
    return out


def edge_dict(edges) -> dict[tuple[int, int], float]:
    return {
        (int(d), int(s)): float(w)
        for d, s, w in zip(edges.dst, edges.src, edges.weight, strict=True)
    }


@pytest.mark.parametrize("frac", [0.0, 0.3, 1.0, 1.9, 2.0, 3.0])
@pytest.mark.parametrize("r", [1.0, 27.5, 50.0])
def test_disc_iou_matches_numeric_overlap(frac, r):
    d = frac * r
    assert disc_iou(np.array([d]), r)[0] == pytest.approx(numeric_disc_iou(d, r), abs=1e-3)


def test_disc_iou_shape_and_limits():
    r = 27.5
    d = np.linspace(0, 3 * r, 301)
    iou = disc_iou(d, r)
    assert iou.dtype == np.float64 and iou.shape == d.shape
    assert iou[0] == pytest.approx(1.0) and (iou[d >= 2 * r] == 0).all()
    assert (np.diff(iou) <= 1e-15).all()  # overlap only shrinks with distance
    assert np.allclose(disc_iou(d * 2, 2 * r), iou)  # depends on d/r only
    with pytest.raises(ConfigError):
        disc_iou(d, 0.0)


def test_same_layer_matches_brute_force_knn():
    xy, layer, _ = random_stack(70, 3, 1000.0, 4, seed=1)
    k = 12
    edges = same_layer_edges(xy, layer, k=k)
    assert (edges.kind == SAME_LAYER).all() and np.isnan(edges.cosine).all()
    assert np.bincount(edges.dst, minlength=len(xy)).tolist() == [k] * len(xy)
    dist = np.linalg.norm(xy[:, None] - xy[None], axis=2)
    expected = set()
    for i in range(len(xy)):
        same = np.flatnonzero((layer == layer[i]) & (np.arange(len(xy)) != i))
        expected |= {(i, int(j)) for j in same[np.argsort(dist[i, same])][:k]}
    assert set(zip(edges.dst.tolist(), edges.src.tolist(), strict=True)) == expected
    assert np.allclose(edges.distance_um, dist[edges.dst, edges.src], rtol=1e-6)
    assert np.allclose(edges.weight, 1.0 / dist[edges.dst, edges.src], rtol=1e-6)


def test_same_layer_small_layers_and_duplicates():
    xy = np.array([[0, 0], [0, 0], [0, 0], [5, 0], [100, 100], [7, 7]], dtype=float)
    layer = np.array([0, 0, 0, 0, 1, 2])  # duplicates in layer 0; layers 1 and 2 alone
    edges = same_layer_edges(xy, layer, k=12)
    assert (edges.src != edges.dst).all()
    assert np.bincount(edges.dst, minlength=6).tolist() == [3, 3, 3, 3, 0, 0]
    assert edges.weight.max() == pytest.approx(1.0 / MIN_DISTANCE_UM)


@pytest.mark.parametrize(
    ("combine", "top_k", "search"),
    [("product", 8, None), ("product", 2, None), ("sum", 8, None), ("sum", 3, 150.0)],
)
def test_cross_layer_matches_brute_force(combine, top_k, search):
    xy, layer, feats = random_stack(60, 4, 600.0, 16, seed=2)
    r = 30.0
    edges = cross_layer_edges(
        xy, layer, feats, r, top_k=top_k, combine=combine, search_radius_um=search, chunk=37
    )
    if search is None:
        search = 2 * r if combine == "product" else 2 * r + lattice_pitch(xy, layer)
    expected = brute_cross(xy, layer, feats, r, top_k, combine, search)
    got = edge_dict(edges)
    assert len(got) == len(edges) > 0
    assert got.keys() == expected.keys()
    assert np.allclose([got[key] for key in expected], list(expected.values()), atol=1e-5)
    assert (edges.kind == CROSS_LAYER).all()
    assert (np.bincount(edges.dst, minlength=len(xy)) <= top_k).all()
    combined = edges.iou * edges.cosine if combine == "product" else edges.iou + edges.cosine
    assert np.allclose(edges.weight, combined, atol=1e-6)
    assert (edges.weight > 0).all()


def test_product_and_sum_differ_as_documented():
    xy, layer, feats = random_stack(60, 4, 600.0, 16, seed=3)
    product = cross_layer_edges(xy, layer, feats, 30.0, combine="product")
    summed = cross_layer_edges(xy, layer, feats, 30.0, combine="sum")
    assert (product.iou > 0).all() and (product.distance_um < 60.0).all()
    # The sum reaches beyond overlapping discs, where the weight is the cosine alone.
    far = summed.iou == 0
    assert far.any() and np.allclose(summed.weight[far], summed.cosine[far])
    assert summed.distance_um.max() > 60.0


def test_graph_kinds_are_disjoint_and_ordered():
    xy, layer, feats = random_stack(80, 3, 800.0, 8, seed=4)
    g = build_graph(xy, layer, feats, radius_um=40.0)
    same = g.kind == SAME_LAYER
    assert (layer[g.src[same]] == layer[g.dst[same]]).all()
    assert (layer[g.src[~same]] != layer[g.dst[~same]]).all()
    assert (g.src != g.dst).all()
    assert len({*zip(g.dst.tolist(), g.src.tolist(), strict=True)}) == len(g)
    assert (np.diff(g.kind.astype(int)) >= 0).all()  # same-layer block, then cross-layer
    for block in (same, ~same):
        key = g.dst[block] * len(xy) + g.src[block]
        assert (np.diff(key) > 0).all()
    assert g.src.dtype == np.int64 and g.weight.dtype == np.float32


def test_deterministic_and_order_invariant(tmp_path):
    xy, layer, feats = random_stack(90, 3, 700.0, 8, seed=5)
    first = build_graph(xy, layer, feats, radius_um=35.0)
    second = build_graph(xy, layer, feats, radius_um=35.0)
    for name in ("src", "dst", "kind", "weight", "distance_um", "iou"):
        assert np.array_equal(getattr(first, name), getattr(second, name))
    # Same graph from a float16 memmap (as features are streamed in the pipeline) and
    # from shuffled spots, up to the renumbering.
    path = tmp_path / "features.npy"
    np.save(path, feats.astype(np.float16))
    perm = np.random.default_rng(0).permutation(len(xy))
    mm = np.load(path, mmap_mode="r")
    shuffled = build_graph(xy[perm], layer[perm], mm[perm], radius_um=35.0)
    from_memmap = build_graph(xy, layer, mm, radius_um=35.0)
    renumbered = {(perm[d], perm[s]): w for (d, s), w in edge_dict(shuffled).items()}
    assert renumbered.keys() == edge_dict(first).keys()
    assert edge_dict(from_memmap).keys() == edge_dict(first).keys()
    assert np.allclose(from_memmap.weight, first.weight, atol=2e-3)  # float16 rounding


def test_single_layer_has_no_cross_edges():
    xy, _, feats = random_stack(40, 1, 300.0, 4, seed=8)
    layer = np.zeros(len(xy), dtype=np.int64)
    g = build_graph(xy, layer, feats, radius_um=50.0, k_same=5)
    assert len(g) == 5 * len(xy) and (g.kind == SAME_LAYER).all()
    assert len(cross_layer_edges(xy, layer, feats, 50.0, combine="sum")) == 0


def test_invalid_inputs_raise_typed_errors():
    xy, layer, feats = random_stack(10, 2, 100.0, 4, seed=6)
    bad = xy.copy()
    bad[3, 0] = np.nan
    with pytest.raises(InputError):
        same_layer_edges(bad, layer)
    with pytest.raises(InputError):
        cross_layer_edges(xy, layer, feats[:-1], 10.0)
    with pytest.raises(InputError):
        same_layer_edges(xy, layer.astype(float))
    with pytest.raises(ConfigError):
        cross_layer_edges(xy, layer, feats, -1.0)
    with pytest.raises(ConfigError):
        cross_layer_edges(xy, layer, feats, 10.0, combine="max")  # type: ignore[arg-type]
    nan_feats = feats.copy()
    nan_feats[:, 0] = np.nan
    with pytest.raises(InputError):
        cross_layer_edges(xy, layer, nan_feats, 100.0)


def load_her2st_spots(section: str) -> np.ndarray:
    table = pd.read_csv(HER2ST / "ST-spotfiles" / f"{section}_selection.tsv", sep="\t")
    table = table[table["selected"] == 1]
    return table[["pixel_x", "pixel_y"]].to_numpy(dtype=np.float64) * UM_PER_PX


@pytest.mark.skipif(not HER2ST.is_dir(), reason="her2st data not found beside the checkout")
def test_graph_on_her2st_spot_geometry():
    # C2 and C3 spot centres, unaligned: only a realistic point set (200 µm pitch, 100 µm
    # spots), not a claim about which spots truly overlap.
    sections = [load_her2st_spots(s) for s in ("C2", "C3")]
    xy = np.concatenate(sections)
    layer = np.repeat([2, 3], [len(s) for s in sections])
    n = len(xy)
    feats = np.abs(np.random.default_rng(7).normal(size=(n, 64))).astype(np.float32)
    g = build_graph(xy, layer, feats, radius_um=50.0)
    same, cross = g.kind == SAME_LAYER, g.kind == CROSS_LAYER
    assert np.bincount(g.dst[same], minlength=n).tolist() == [12] * n
    assert 180.0 < lattice_pitch(xy, layer) < 220.0
    # On a 200 µm square lattice the 12 nearest are 4 at 200, 4 at 283 and 4 at 400 µm
    # (median 283); tissue borders and holes push some further out.
    assert 250.0 < np.median(g.distance_um[same]) < 320.0
    assert g.distance_um[same].min() > 150.0
    # At 200 µm pitch a 100 µm disc overlaps at most one spot of the other layer.
    assert (np.bincount(g.dst[cross], minlength=n) <= 1).all()
    assert (g.distance_um[cross] < 100.0).all() and (g.iou[cross] > 0).all()
    assert 0.1 * n < cross.sum() <= n
