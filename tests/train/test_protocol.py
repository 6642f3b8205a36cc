"""protocol: known-layer choice, fold plans, the label door and the training episodes."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from asign.errors import ConfigError
from asign.store import open_store
from asign.train import protocol
from asign.train.protocol import SectionInfo


def _sections(sample: str, zs: list[int], counts: list[bool] | None = None) -> list[SectionInfo]:
    counts = counts or [True] * len(zs)
    return [
        SectionInfo(sample, f"{sample}{z}", z, c, True) for z, c in zip(zs, counts, strict=True)
    ]


def test_resolve_known_first_middle_and_z():
    secs = _sections("C", [2, 3, 4, 5, 6]) + [SectionInfo("C", "C1", 1, True, False)]
    assert protocol.resolve_known(secs, "first") == "C2"  # C1 has no image: not a candidate
    assert protocol.resolve_known(secs, "middle") == "C4"
    assert protocol.resolve_known(_sections("C", [1, 2, 3, 4]), "middle") == "C2"
    assert protocol.resolve_known(secs, "5") == "C5"
    with pytest.raises(ConfigError, match="z=9"):
        protocol.resolve_known(secs, "9")


def test_within_sample_plan():
    secs = _sections("C", [1, 2, 3, 4, 5], [True, True, True, True, False]) + _sections("B", [4])
    (fold,) = protocol.plan_folds(secs, known="first", folds=1)
    assert fold.setting == "within_sample"
    plans = {p.sample_id: p for p in fold.samples}
    c = plans["C"]
    assert c.role == "test" and c.known == "C1" and c.visible == ("C1",)
    assert c.scored == ("C2", "C3", "C4")  # C5 has no counts: predicted, not scored
    assert c.predicted == ("C2", "C3", "C4", "C5")
    assert plans["B"].role == "train_2d" and plans["B"].scored == ()


def test_extra_2d_sample_is_trained_never_scored():
    secs = _sections("C", [1, 2, 3]) + _sections("D", [1, 2])
    (fold,) = protocol.plan_folds(secs, folds=1, extra_2d=("D",))
    roles = [(p.sample_id, p.role, p.sections) for p in fold.samples]
    assert ("D", "train_2d", ("D1",)) in roles and ("D", "train_2d", ("D2",)) in roles
    assert [p.sample_id for p in fold.test] == ["C"]


def test_cross_sample_folds_from_duckdb(toy_store_factory):
    root = toy_store_factory("multi", samples=("P1", "P2", "P3", "P4"), n_layers=2, grid=(3, 3))
    con = open_store(root).duckdb()
    samples = ["P1", "P2", "P3", "P4"]
    a = protocol.fold_assignment(con, samples, 2, seed=0)
    assert a == protocol.fold_assignment(con, samples, 2, seed=0)  # deterministic
    assert sorted(a.values()) == [0, 0, 1, 1]
    assert any(protocol.fold_assignment(con, samples, 2, seed=s) != a for s in range(1, 8))
    secs = (
        _sections("P1", [1, 2])
        + _sections("P2", [1, 2])
        + _sections("P3", [1, 2])
        + _sections("P4", [1, 2])
    )
    folds = protocol.plan_folds(secs, folds=2, fold_of=a)
    tested = sorted(p.sample_id for f in folds for p in f.test)
    assert tested == samples  # every sample is tested exactly once
    for f in folds:
        assert f.setting == "cross_sample"
        for p in f.samples:
            if p.role == "train":  # training samples show every labelled layer
                assert p.visible == p.sections and p.scored == ()
            else:
                assert p.visible == (p.known,) and p.known not in p.scored
    with pytest.raises(ConfigError, match="--folds 5"):
        protocol.fold_assignment(con, samples, 5, seed=0)
    con.close()


def test_visible_labels_zero_everything_else():
    labels = np.arange(12, dtype=np.float32).reshape(4, 3) + 1
    has = np.array([True, True, True, False])
    section = np.array([0, 1, 0, 0], dtype=np.int32)
    out, mask = protocol.visible_labels(labels, has, section, [0])
    assert mask.tolist() == [True, False, True, False]
    assert (out[~mask] == 0).all() and (out[mask] == labels[mask]).all()


def test_episodes_hide_whole_layers_or_a_fraction():
    section = np.repeat([0, 1, 2], 10).astype(np.int32)
    visible = np.ones(30, dtype=bool)
    ep = protocol.episode(visible, section, protocol.episode_rng(0, 0, 0), 0.2)
    known_layers = np.unique(section[ep.known])
    assert known_layers.size == 1 and ep.known.sum() == 10
    assert not (ep.known & ep.hidden).any() and (ep.known | ep.hidden).all()

    one = section == 1
    ep1 = protocol.episode(one, section, protocol.episode_rng(0, 0, 0), 0.2)
    assert ep1.known.sum() == 2 and ep1.hidden.sum() == 8
    assert not (ep1.known | ep1.hidden)[~one].any()
    # reproducible from (seed, epoch, graph)
    again = protocol.episode(one, section, protocol.episode_rng(0, 0, 0), 0.2)
    assert (again.known == ep1.known).all()


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 80), n_tiles=st.integers(1, 9), g=st.integers(1, 4),
       seed=st.integers(0, 2**16))
def test_tile_targets_held_per_tile_are_each_spots_visible_tile_mean(n, n_tiles, g, seed):
    """Region/global targets are held once per tile (an (N, G) copy per spot was GBs at
    Visium HD scale): spot i's target is the mean visible label of its own tile, a block
    of spots reads the same rows, and the mask marks tiles with a visible spot."""
    import torch

    from asign.train.loss import TileTarget

    rng = np.random.default_rng(seed)
    own = rng.integers(0, n_tiles, n)
    y = rng.normal(size=(n, g))
    visible = rng.random(n) < 0.5
    table, tile, mask = protocol.tile_targets(own, y, visible)
    target = TileTarget(torch.as_tensor(table), torch.as_tensor(tile))
    dense = target.dense().numpy()
    for i in range(n):
        same = visible & (own == own[i])
        assert mask[i] == same.any()
        if same.any():
            np.testing.assert_allclose(dense[i], y[same].mean(axis=0), rtol=1e-5, atol=1e-6)
    rows = torch.as_tensor(rng.permutation(n)[: max(1, n // 2)])
    np.testing.assert_array_equal(target.index_select(0, rows).dense().numpy(),
                                  dense[rows.numpy()])
