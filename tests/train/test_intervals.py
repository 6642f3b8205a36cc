"""Conformal intervals: near-nominal coverage where the noise is known, no hidden label
read, stored as predictions.lower/upper, and version-1 predictions files still read."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from asign.train import baselines, error_scale, intervals


def _stack(n_layers: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Layers of a 20 × 20 lattice over one smooth field plus noise whose sd grows with x;
    each layer's lattice shifted at random, as consecutive sections' spots never sit on top
    of each other."""
    rng = np.random.default_rng(seed)
    g = np.stack(np.meshgrid(np.arange(20.0), np.arange(20.0)), -1).reshape(-1, 2) * 100
    xy = np.concatenate([g + rng.uniform(-50, 50, size=2) for _ in range(n_layers)])
    section = np.repeat(np.arange(n_layers), len(g))
    field = np.stack([np.sin(xy[:, 0] / 400), np.cos(xy[:, 1] / 500), xy[:, 0] / 2000], 1)
    sd = 0.1 + 0.4 * xy[:, :1] / 2000
    return xy, section, field + sd * rng.normal(size=field.shape)


def _idw(xy: np.ndarray, y: np.ndarray) -> callable:
    return lambda known: baselines.idw(xy[known], y[known], xy, k=8, power=1.0)


@pytest.mark.parametrize("known_layers", [(0,), (0, 3)])
def test_coverage_near_nominal_on_hidden_layers(known_layers):
    covs = []
    for seed in range(5):
        xy, section, y_all = _stack(4, seed)
        known = np.isin(section, known_layers)
        y = np.where(known[:, None], y_all, np.nan)  # hidden rows are unreadable
        pred = _idw(xy, np.nan_to_num(y))(known)
        (lo, hi), _ = intervals.for_baseline(_idw(xy, np.nan_to_num(y)), np.nan_to_num(y), known,
                                        section, xy, pred, 0.9, seed)
        assert np.isfinite(lo).all() and np.isfinite(hi).all() and (hi > lo).all()
        covs.append(intervals.coverage_of(lo[~known], hi[~known], y_all[~known]))
    assert 0.86 <= np.mean(covs) <= 0.95, covs


def test_calibration_never_reads_hidden_rows():
    xy, section, y_all = _stack(3, 0)
    known = section == 1
    outs = []
    for fill in (0.0, 1e6):
        y = np.where(known[:, None], y_all, fill)  # hidden rows: anything at all
        pred = _idw(xy, y)(known)
        outs.append(intervals.for_baseline(_idw(xy, y), y, known, section, xy, pred, 0.9, 0)[0])
    np.testing.assert_array_equal(outs[0][0], outs[1][0])
    np.testing.assert_array_equal(outs[0][1], outs[1][1])


def test_scale_is_spot_adaptive_and_quantile_is_conservative():
    xy, section, y_all = _stack(2, 1)
    known = section == 0
    s = error_scale.local_spread(error_scale.source(xy[known], y_all[known]), xy[~known])
    left, right = xy[~known][:, 0] < 500, xy[~known][:, 0] > 1500
    assert s[right, 2].mean() > 1.5 * s[left, 2].mean()  # noisier where the noise is larger
    assert np.isinf(intervals.conformal_quantile(np.ones((4, 2)), 0.9)).all()  # too few
    pooled = intervals.conformal_quantile(np.arange(10.0).reshape(5, 2), 0.9)  # 5 spots, 2 genes
    assert (pooled == 9.0).all()  # one quantile over the 10 entries: ceil(11 · 0.9) = 10th
    q = intervals.conformal_quantile(np.arange(1.0, 101.0)[:, None], 0.9)
    assert q[0] == 91.0  # ceil(101 · 0.9) = 91st smallest


def test_run_stores_intervals_and_old_files_read(toy_store):
    from asign.store import open_store
    from asign.train import TrainConfig, run

    res = run(TrainConfig(store=toy_store, model="idw", run="ci"))
    store = open_store(toy_store)
    t = store.read("predictions", key=res.run_id).to_pandas()
    assert t.lower.notna().all() and (t.lower <= t.value).all() and (t.value <= t.upper).all()
    names = {r["metric"] for r in res.metrics.to_pylist()}
    assert {"coverage", "width"} <= names
    how = res.timings["selection"]["0"]["intervals"]  # the run records its interval method
    assert how["method"] == intervals.METHOD and set(how["coef"]) == set(error_scale.FEATURES)
    none = run(TrainConfig(store=toy_store, model="idw", run="ci0", coverage=0.0))
    assert store.read("predictions", key=none.run_id).column("lower").null_count > 0
    # a predictions file of schema version 1 (no lower/upper) reads with null bounds
    path = store.layout.table("predictions", res.run_id)
    old = pq.read_table(path).drop_columns(["lower", "upper"])
    meta = {**old.schema.metadata, b"asign.schema_version": b"1"}
    pq.write_table(old.replace_schema_metadata(meta), path)
    back = store.read("predictions", key=res.run_id, columns=["value", "lower"])
    assert back.column("lower").null_count == back.num_rows and back.num_rows == len(t)
    assert pa.types.is_float32(back.schema.field("lower").type)
    both = store.read("predictions")  # version-1 and version-2 files concatenate
    assert both.num_rows == 2 * len(t) and both.column("lower").null_count == 2 * len(t)


def test_learnt_scale_widens_where_errors_are_larger():
    # noise sd grows fivefold from left to right (idw's RMS error ≈ threefold): the fitted σ
    # must carry part of that into the hidden layer's widths, for every gene. Only part: the
    # local spread of 8 neighbours is a noisy proxy of the noise, and a regression on a noisy
    # feature shrinks toward the typical error (here the widths grow 1.1–1.5-fold)
    xy, section, y_all = _stack(2, 3)
    known = section == 0
    y = np.where(known[:, None], y_all, 0.0)
    pred = _idw(xy, y)(known)
    (lo, hi), _ = intervals.for_baseline(_idw(xy, y), y, known, section, xy, pred, 0.9, 0)
    width = (hi - lo)[~known]
    left, right = xy[~known][:, 0] < 500, xy[~known][:, 0] > 1500
    assert (width[right].mean(axis=0) > 1.1 * width[left].mean(axis=0)).all()
    inside = (y_all[~known] >= lo[~known]) & (y_all[~known] <= hi[~known])
    assert 0.88 <= inside.mean() <= 0.96
    assert inside[left].mean() >= 0.8 and inside[right].mean() >= 0.8  # both ends covered


def test_pooled_quantile_between_gene_and_all_genes():
    rng = np.random.default_rng(0)
    scores = np.abs(rng.normal(size=(40, 3))) * np.array([1.0, 1.0, 3.0])
    own = intervals.conformal_quantile(scores, 0.9, pool_n=0.0)
    mixed = intervals.conformal_quantile(scores, 0.9)
    pooled = intervals.conformal_quantile(scores.reshape(-1, 1), 0.9)[0]  # all genes as one
    assert pooled < mixed[2] < own[2]  # the wide gene pulled in, not flattened
    assert (mixed[:2] < own[2]).all() and (mixed[:2] > 0.8 * own[:2]).all()


def test_bounds_in_chunks_match_one_pass_and_index_the_source_once(monkeypatch):
    """Chunks share one indexed source: re-indexing the known spots per chunk cost
    O((N / CHUNK) · S log S), quadratic at Visium HD scale."""
    import scipy.spatial

    builds = []

    class CountingTree(scipy.spatial.cKDTree):
        def __init__(self, data, *a, **kw):
            builds.append(len(data))
            super().__init__(data, *a, **kw)

    monkeypatch.setattr(scipy.spatial, "cKDTree", CountingTree)
    xy, section, y_all = _stack(2, 2)
    known = section == 0
    y = np.where(known[:, None], y_all, 0.0)
    pred = _idw(xy, y)(known)
    builds.clear()
    whole = intervals.for_baseline(_idw(xy, y), y, known, section, xy, pred, 0.9, 0)[0]
    n_whole, builds[:] = len(builds), []
    monkeypatch.setattr(intervals, "CHUNK", 37)  # many uneven chunks
    parts = intervals.for_baseline(_idw(xy, y), y, known, section, xy, pred, 0.9, 0)[0]
    np.testing.assert_allclose(parts[0], whole[0], rtol=1e-6)
    np.testing.assert_allclose(parts[1], whole[1], rtol=1e-6)
    assert len(xy) > 10 * 37 and len(builds) == n_whole  # chunking built no extra tree


def test_network_calibration_holds_out_at_most_n_blocks_groups_sharing_one_source(monkeypatch):
    """At Visium HD scale the validation split has thousands of blocks: cross-fitting one
    block at a time, each with its own copy of the training spots, cost O(N²) time and
    memory (a 100k-bin stack was killed for memory). Held-out groups stay ≤ N_BLOCKS and
    share one source, whatever the number of blocks."""
    import types

    import torch

    from asign.train import blocks

    side = 120  # 14,400 spots over 12 mm (100 µm pitch): hundreds of validation blocks
    g = np.stack(np.meshgrid(np.arange(side), np.arange(side)), -1).reshape(-1, 2) * 100.0
    rng = np.random.default_rng(0)
    y = (np.sin(g[:, :1] / 2000) + 0.1 * rng.normal(size=(len(g), 3))).astype(np.float32)
    section = np.zeros(len(g), dtype=np.int64)
    visible = np.ones(len(g), dtype=bool)
    val = blocks.validation_split(visible, g, section, 0.2, seed=1)
    n_blocks = len(np.unique(intervals.validation_blocks(g, section, visible, val)[val]))
    assert n_blocks > 10 * intervals.N_BLOCKS
    task = types.SimpleNamespace(y=torch.as_tensor(y), offset=np.zeros(3, np.float32),
                                 val=val, train=visible & ~val, visible=visible, section=section)
    seen = []
    real = intervals.calibrate
    monkeypatch.setattr(intervals, "calibrate", lambda held, cov: seen.append(held) or
                        real(held, cov))
    pred = y + 0.1
    (lo, hi), info = intervals.for_predictions(task, g, pred, pred[val], 0.9)
    (held,) = seen
    assert len(held) == intervals.N_BLOCKS
    assert all(h.query.source is held[0].query.source for h in held)
    assert sum(len(h.resid) for h in held) == int(val.sum())
    assert np.isfinite(lo).all() and (lo < hi).all() and info


@settings(max_examples=60, deadline=None)
@given(sizes=st.lists(st.integers(0, 5000), min_size=1, max_size=12),
       cap=st.integers(1, 20000), seed=st.integers(0, 3))
def test_fit_pairs_are_all_pairs_under_the_cap_else_a_proportional_sample(sizes, cap, seed):
    """The σ model's fitting pairs: every pair below the cap (her2st: the fit unchanged),
    else about ``cap`` pairs, each block's share in proportion to its size, seeded."""
    picks = intervals.fit_pairs(sizes, cap, seed)
    assert len(picks) == len(sizes)
    for p, n in zip(picks, sizes, strict=True):
        assert p.size == np.unique(p).size and (np.diff(p) > 0).all()  # sorted, distinct
        assert p.size == 0 or (p[0] >= 0 and p[-1] < n)
    total = sum(sizes)
    if total <= cap:
        assert all((p == np.arange(n)).all() for p, n in zip(picks, sizes, strict=True))
    else:
        assert abs(sum(p.size for p in picks) - cap) <= len(sizes)
        for p, n in zip(picks, sizes, strict=True):
            assert abs(p.size - cap * n / total) <= 1
    again = intervals.fit_pairs(sizes, cap, seed)
    assert all((a == b).all() for a, b in zip(picks, again, strict=True))


def test_calibration_fits_on_at_most_fit_pairs_and_agrees_with_the_full_fit(monkeypatch):
    """At Visium HD scale the σ model's features of every held-out pair were GBs (an
    800k-bin idw run peaked at 20 GB there): the fit reads a seeded sample of
    ``FIT_PAIRS`` pairs, features are computed in chunks, and the intervals stay close."""
    xy, section, y_all = _stack(3, 4)
    known = section < 2
    y = np.where(known[:, None], y_all, 0.0)
    pred = _idw(xy, y)(known)
    full, info = intervals.for_baseline(_idw(xy, y), y, known, section, xy, pred, 0.9, 0)
    fitted = []
    real_fit = error_scale.fit
    monkeypatch.setattr(error_scale, "fit", lambda x, r: fitted.append(x.shape) or
                        real_fit(x, r))
    monkeypatch.setattr(intervals, "FIT_PAIRS", 600)
    monkeypatch.setattr(intervals, "CHUNK", 53)
    part, info_part = intervals.for_baseline(_idw(xy, y), y, known, section, xy, pred, 0.9, 0)
    assert fitted and all(n <= 600 + 2 for n, _ in fitted)  # ≤ cap (+ one per block)
    hidden = ~known
    assert intervals.coverage_of(part[0][hidden], part[1][hidden], y_all[hidden]) >= 0.8
    width_full, width_part = (np.mean(b[1][hidden] - b[0][hidden]) for b in (full, part))
    assert abs(width_part / width_full - 1) < 0.15, (width_full, width_part)


def test_source_of_rows_equals_a_source_of_their_copy():
    """Held-out sources share one label array by reference (``rows``): the features must be
    those of a source built from a copy of those rows."""
    rng = np.random.default_rng(0)
    xy, y = rng.uniform(0, 1000, (300, 2)), rng.normal(size=(300, 4))
    rows = np.flatnonzero(rng.random(300) < 0.6)
    q = error_scale.Query(error_scale.source(xy, y, rows), xy[:50], y[:50] + 0.1)
    c = error_scale.Query(error_scale.source(xy[rows], y[rows]), xy[:50], y[:50] + 0.1)
    assert q.source.y is y  # no copy
    np.testing.assert_array_equal(error_scale.spot_features(q, 0.2),
                                  error_scale.spot_features(c, 0.2))
