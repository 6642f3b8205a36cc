"""train.data: a sample read from the store matches the store, and labels enter training
only through the visible-label door."""

from __future__ import annotations

import numpy as np
import pytest

from asign.errors import StoreError
from asign.store import open_store
from asign.train.data import load_sample


def test_load_sample_matches_the_store(toy_store):
    store = open_store(toy_store)
    s = load_sample(store, "S1")
    assert s.sections == ("S1_L1", "S1_L2", "S1_L3", "S1_L4", "S1_L5")
    assert s.n_spots == 150 and (np.diff(s.section) >= 0).all()  # z order
    assert s.spot_feat.shape == (150, 16) and s.labels.shape == (150, 6)
    # labels: the image-only layer has none; a labelled spot carries its stored values
    assert not s.has_label[s.in_sections(["S1_L5"])].any()
    assert s.has_label[s.in_sections(["S1_L1", "S1_L4"])].all()
    row = store.read("labels", key="S1").slice(37, 1).to_pylist()[0]
    i = list(s.spot_ids).index(row["spot_id"])
    np.testing.assert_allclose(s.labels[i], row["value"], rtol=1e-6)
    # vectors come from LMDB under the manifest's encoder
    with store.vectors() as vec:
        np.testing.assert_array_equal(vec.embeddings("toy", "spot", [s.spot_ids[5]], 16)[0],
                                      s.spot_feat[5])
    # graph: every stored edge, src -> dst, kinds kept
    edges = store.read("edges", key="S1").to_pandas()
    assert len(s.src) == len(edges) and s.cross.sum() == (edges["kind"] == "cross_layer").sum()
    first = edges.iloc[0]
    assert s.spot_ids[s.src[0]] == first["src_spot_id"]
    assert s.spot_ids[s.dst[0]] == first["dst_spot_id"]
    # tokens: own tile first, padding -1, indices into the tile features
    assert (s.tokens["region"][:, 0] >= 0).all() and s.tokens["region"].shape[1] == 9
    assert s.tokens["region"].max() < len(s.tile_feat["region"])


def test_subset_drops_cross_layer_edges(toy_store):
    s = load_sample(open_store(toy_store), "S1")
    sub = s.subset(s.in_sections(["S1_L2"]), drop_cross=True)
    assert sub.sections == ("S1_L2",) and sub.n_spots == 30 and not sub.cross.any()
    assert len(sub.src) > 0 and sub.src.max() < 30 and (sub.section == 0).all()
    np.testing.assert_array_equal(sub.labels, s.labels[s.in_sections(["S1_L2"])])


def test_missing_artefacts_are_store_errors(toy_store):
    store = open_store(toy_store)
    store.remove("edges", "S1")
    with pytest.raises(StoreError, match="ingest --steps graph"):
        load_sample(store, "S1")
    with store.vectors(readonly=False) as vec:
        vec.delete_embeddings("toy", "spot", "B_L1/")
    with pytest.raises(StoreError, match="embedding .* missing"):
        load_sample(store, "B")


def test_task_sees_only_visible_labels(toy_store):
    pytest.importorskip("torch")
    from asign.train.loop import make_task

    s = load_sample(open_store(toy_store), "S1")
    task = make_task(s, ("S1_L1",), "cpu")
    known = s.in_sections(["S1_L1"])
    assert (task.visible == known).all()
    y = task.y.numpy()
    assert (y[~known] == 0).all()
    np.testing.assert_allclose(y[known] + task.offset, s.labels[known], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(task.offset, s.labels[known].mean(0), rtol=1e-5)
    # region targets: only tiles of the known layer have one, and it is their known mean
    rmask = task.region_mask.numpy()
    assert rmask[known].all() and not rmask[~known].any()
    own = s.tokens["region"][:, 0]
    i = int(np.flatnonzero(known)[0])
    same = known & (own == own[i])
    np.testing.assert_allclose(task.region_target.dense().numpy()[i] + task.offset,
                               s.labels[same].mean(0), rtol=1e-5)


def test_standardised_features_are_per_section_zscores(toy_store):
    from asign.train.data import standardised_features

    s = load_sample(open_store(toy_store), "S1")
    spot, tiles = standardised_features(s)
    for sec in range(len(s.sections)):
        rows = s.section == sec
        np.testing.assert_allclose(spot[rows].mean(0), 0, atol=1e-4)
        np.testing.assert_allclose(spot[rows].std(0), 1, atol=1e-2)
    assert spot.dtype == np.float32 and tiles["region"].shape == s.tile_feat["region"].shape
