"""Blocked validation, ridge baselines, shrinkage and the paired comparison."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from asign import numeric
from asign.train import blocks, paired, ridge, shrink


def _lattice(n: int = 20, pitch: float = 200.0) -> np.ndarray:
    g = np.arange(n) * pitch
    return np.array([(x, y) for x in g for y in g], dtype=np.float64)


def test_blocked_validation_holds_out_whole_squares():
    xy = _lattice()
    visible = np.ones(len(xy), dtype=bool)
    section = np.zeros(len(xy), dtype=np.int64)
    val = blocks.validation_split(visible, xy, section, 0.2, seed=3)
    assert 0.15 <= val.mean() <= 0.3
    from scipy.spatial import cKDTree

    # a random split leaves almost every validation spot with a training spot one pitch away;
    # whole 3 × 3 blocks leave far fewer
    def adjacent(v: np.ndarray) -> float:
        d, _ = cKDTree(xy[~v]).query(xy[v])
        return float((d <= 200.0 + 1e-6).mean())

    rand = blocks.random_split(visible, 0.2, seed=3)
    assert adjacent(val) < 0.8 * adjacent(rand)
    assert np.array_equal(val, blocks.validation_split(visible, xy, section, 0.2, seed=3))
    assert not blocks.validation_split(visible[:5], xy[:5], section[:5], 0.2, 0).any()


@settings(max_examples=25, deadline=None)
@given(pitch=st.floats(6.0, 250.0), jitter=st.floats(0.0, 0.2),
       fraction=st.floats(0.1, 0.3), seed=st.integers(0, 2**16))
def test_validation_blocks_are_as_wide_in_tissue_on_any_array(pitch, jitter, fraction, seed):
    """Held-out spots lie tens of µm from the training spots on a 6 µm grid as on ST's
    200 µm one: blocks of three pitches only would leave a Visium HD bin's neighbours, a
    pitch away, in training (the leak blocks exist to remove)."""
    from scipy.spatial import cKDTree

    k = int(max(1500.0, 12 * pitch) / pitch)  # ≥ 25 blocks a side of 1.5 mm
    xy = _lattice(k, pitch)
    xy += np.random.default_rng(seed).normal(scale=jitter * pitch, size=xy.shape)
    visible = np.ones(len(xy), dtype=bool)
    val = blocks.validation_split(visible, xy, np.zeros(len(xy), np.int64), fraction, seed)
    assert blocks.block_side(xy) >= max(blocks.VAL_BLOCK_MIN_UM, 2 * pitch)
    assert 0 < val.sum() < len(xy)
    d, _ = cKDTree(xy[~val]).query(xy[val])
    assert np.median(d) >= 35.0  # µm, a few cell diameters, whatever the pitch


def test_validation_split_takes_whole_blocks_until_the_share():
    """The split is every spot of the first blocks, in a seeded order, that reach the share."""
    rng = np.random.default_rng(5)
    xy = rng.uniform(0, 4000, size=(3000, 2))
    section = rng.integers(0, 3, size=len(xy))
    visible = rng.random(len(xy)) < 0.9
    val = blocks.validation_split(visible, xy, section, 0.2, seed=7)
    block, n = blocks.section_blocks(xy, section, visible)
    assert not val[~visible].any() and (block[~visible] == -1).all()
    taken = np.unique(block[val])
    assert np.array_equal(val[visible], np.isin(block[visible], taken))  # whole blocks
    order = np.random.default_rng(7).permutation(n)
    k = len(taken)
    assert set(order[:k]) == set(taken)  # the first k of the seeded order ...
    size = np.bincount(block[visible], minlength=n)
    target = round(0.2 * visible.sum())
    assert size[order[:k]].sum() >= target > size[order[:k - 1]].sum()  # ... and no more


def test_cv_folds_partition_the_known_spots():
    xy = _lattice(12)
    folds = blocks.cv_folds(xy)
    assert len(folds) == 16
    assert np.array_equal(np.sum(folds, axis=0), np.ones(len(xy)))


@settings(max_examples=60, deadline=None)
@given(n=st.integers(2, 60), d=st.integers(1, 60), g=st.integers(1, 4),
       alpha=st.floats(1e-3, 1e3), seed=st.integers(0, 2**16))
def test_ridge_path_is_the_closed_form_fit_on_both_sides_of_n_equals_d(n, d, g, alpha, seed):
    """Primal (more spots than features) or dual (fewer): the same ridge fit."""
    rng = np.random.default_rng(seed)
    x, y = rng.normal(size=(n, d)), rng.normal(size=(n, g))
    fit = ridge.RidgePath(x, y)
    assert fit.primal == (n > d)
    xc, yc = x - x.mean(0), y - y.mean(0)
    beta = np.linalg.solve(xc.T @ xc + alpha * np.eye(d), xc.T @ yc)
    x_new = rng.normal(size=(5, d))
    expected = (x_new - x.mean(0)) @ beta + y.mean(0)
    assert np.allclose(fit.predict(x_new, alpha), expected, atol=1e-7, rtol=1e-7)


@pytest.mark.parametrize("n", [40, 3])  # primal and dual
def test_ridge_predicts_in_row_chunks_as_in_one_pass(monkeypatch, n):
    rng = np.random.default_rng(n)
    x, y = rng.normal(size=(n, 6)), rng.normal(size=(n, 2))
    fit, x_new = ridge.RidgePath(x, y), rng.normal(size=(50, 6))
    whole = fit.predict(x_new, 0.5)
    monkeypatch.setattr(numeric, "CHUNK_BYTES", 8 * 7 * (6 + 2 + (0 if n > 6 else n)))  # 7 rows
    np.testing.assert_allclose(fit.predict(x_new, 0.5), whole, rtol=1e-12, atol=1e-12)
    part32 = fit.predict(x_new, 0.5, np.float32)
    assert part32.dtype == np.float32
    np.testing.assert_array_equal(part32, whole.astype(np.float32))


def test_ridge_prediction_of_many_spots_holds_one_chunk_in_float64():
    """A Visium HD stack's (N, D) centred copy and (N, G) fit in float64 were GBs at 800k
    bins: the prediction is stored as asked, a chunk of rows at a time."""
    import tracemalloc

    rng = np.random.default_rng(0)
    fit = ridge.RidgePath(rng.normal(size=(500, 64)), rng.normal(size=(500, 8)))
    x_new = rng.normal(size=(300_000, 64)).astype(np.float32)
    tracemalloc.start()
    out = fit.predict(x_new, 1.0, np.float32)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert out.shape == (300_000, 8)
    # one row step's centred float64 rows and fit (≈ 35 MB) and the float32 output (10 MB);
    # the whole centred copy alone was 154 MB
    assert peak < 60 * 2**20, f"{peak / 2**20:.0f} MiB"


def test_ridge_at_visium_hd_scale_holds_no_spots_by_spots_matrix():
    """20,000 known bins (a Visium HD layer has 10⁴–10⁵): blocked CV and the fit stay
    O(n · d) in memory; the dual's n × n Gram matrix alone would be 3.2 GB."""
    import tracemalloc

    rng = np.random.default_rng(3)
    side = 142
    xy = _lattice(side, pitch=16.0)[: 20_000]
    x = rng.normal(size=(len(xy), 64)).astype(np.float32)
    y = (x[:, :3] @ rng.normal(size=(3, 8)) + 0.1 * rng.normal(size=(len(xy), 8)))
    known = np.arange(len(xy)) < 15_000
    tracemalloc.start()
    pred, alpha, oob = ridge.fit_predict(x, y, known, xy)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 200 * 2**20, f"{peak / 2**20:.0f} MiB"
    assert np.isfinite(pred).all() and np.isfinite(oob[np.isfinite(oob).all(axis=1)]).all()
    hidden = ~known
    assert np.corrcoef(pred[hidden, 0], y[hidden, 0])[0, 1] > 0.9  # the signal is linear


def test_blocked_cv_picks_a_large_penalty_for_features_without_signal_and_blends_to_idw():
    rng = np.random.default_rng(1)
    xy = _lattice(14)
    smooth = np.sin(xy[:, :1] / 900.0) + np.cos(xy[:, 1:] / 700.0)  # spatial signal only
    y = np.hstack([smooth, -smooth]) + 0.05 * rng.normal(size=(len(xy), 2))
    x = rng.normal(size=(len(xy), 50))  # features carry nothing
    alpha, oob = ridge.choose_alpha(x, y, xy)
    assert alpha >= ridge.ALPHAS[len(ridge.ALPHAS) // 2] * x.shape[1]

    from asign.train.baselines import idw

    w = ridge.choose_blend(y, oob, ridge.idw_out_of_block(xy, y, idw))
    assert w <= 0.3


def test_shrinkage_reaches_zero_for_a_useless_model_and_one_for_a_perfect_one():
    rng = np.random.default_rng(2)
    truth = rng.normal(size=(200, 6))
    prior = np.zeros_like(truth)
    assert np.allclose(shrink.weights(rng.normal(size=truth.shape), prior, truth, 0.5), 0.0,
                       atol=0.1)
    assert np.allclose(shrink.weights(truth, prior, truth, 0.5), 1.0)
    w = shrink.weights(-truth, prior, truth, 0.5)  # anti-correlated: clipped at zero
    assert np.all(w == 0.0)


def test_shrunk_prediction_is_never_worse_than_the_prior_on_the_fitting_spots():
    rng = np.random.default_rng(3)
    truth = rng.normal(size=(300, 10))
    prior = truth + rng.normal(scale=1.0, size=truth.shape)
    model = truth + rng.normal(scale=1.5, size=truth.shape)
    w = shrink.weights(model, prior, truth, pool=0.0)
    out = shrink.blend(model, prior, w)
    assert ((out - truth) ** 2).mean() <= ((prior - truth) ** 2).mean()


def test_paired_bootstrap_interval_and_words():
    rng = np.random.default_rng(4)
    truth = rng.normal(size=(400, 30))
    better = truth + rng.normal(scale=0.8, size=truth.shape)
    worse = truth + rng.normal(scale=1.6, size=truth.shape)
    rows = [np.arange(400) < 200, np.arange(400) >= 200]
    r = paired.bootstrap(paired.differences(better, worse, truth, rows), n_boot=300)
    assert r["lo"] > 0 and r["lo"] <= r["diff"] <= r["hi"]
    assert paired.in_words("a", "b", r).startswith("a beats b by +")
    flip = paired.bootstrap(paired.differences(worse, better, truth, rows), n_boot=300)
    assert "is below b" in paired.in_words("a", "b", flip)


@pytest.mark.parametrize("model", ["ridge", "ridge+idw"])
def test_ridge_baselines_run_through_the_registry(toy_store, model):
    from asign.train import TrainConfig, run

    res = run(TrainConfig(store=toy_store, model=model, run="t", coverage=0.0))
    assert res.status == "done"
    vals = res.metrics.to_pandas()
    assert np.isfinite(vals[vals.metric == "mse"].value).all()


def test_networks_shrink_toward_a_chosen_prior_and_ensembles_average(toy_store):
    """A run records the chosen prior, its weights and the unshrunk metrics of the same
    networks, and the paired comparison; --ensemble 2 trains a second member."""
    from asign.train import TrainConfig, run

    cfg = TrainConfig(store=toy_store, model="asign3d", run="t", epochs=2, hidden=16, heads=2,
                      threads=1)
    res = run(cfg.with_(ensemble=2))
    sel = res.timings["selection"]["0"]
    assert sel["shrink"]["prior"] in shrink.PRIORS[True]
    assert 0.0 <= sel["shrink"]["min"] <= sel["shrink"]["max"] <= 1.0
    assert set(sel["shrink"]["unshrunk"]) == {"S1_L2", "S1_L3", "S1_L4"}
    assert set(sel["paired"]) == set(paired.COMPARED) and "member1" in sel
    off = run(cfg.with_(shrink=False, run="off"))
    assert "prior" not in off.timings["selection"]["0"].get("shrink", {})
    assert not off.metrics.to_pandas().equals(res.metrics.to_pandas())


def test_a_network_that_keeps_its_prior_alone_has_the_prior_runs_intervals(toy_store,
                                                                            monkeypatch):
    """When the prior alone is chosen, the prediction is the prior baseline's from every
    known spot, and so are its intervals (calibrated on blocks of every known spot)."""
    from asign.store import open_store
    from asign.train import TrainConfig, run

    monkeypatch.setattr(shrink, "POOLS", ())  # no blend to choose: the prior alone
    cfg = TrainConfig(store=toy_store, model="asign3d", run="net", epochs=2, hidden=16,
                      heads=2, threads=1, shrink_prior="idw")
    net = run(cfg)
    assert net.timings["selection"]["0"]["shrink"]["pool"] is None
    base = run(TrainConfig(store=toy_store, model="idw", run="idw", threads=1))
    store = open_store(toy_store)
    a, b = (store.read("predictions", key=r.run_id).to_pandas()
            .sort_values(["spot_id", "gene"]).reset_index(drop=True) for r in (net, base))
    assert len(a) == len(b) and (a.spot_id == b.spot_id).all()
    for col in ("value", "lower", "upper"):
        np.testing.assert_allclose(a[col], b[col], rtol=1e-5, atol=1e-5)


def test_ridge_fit_sums_its_moments_in_row_chunks(monkeypatch):
    """The primal fit's XᵀX and XᵀY are summed a chunk of rows at a time: the same fit."""
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(50, 6)).astype(np.float32), rng.normal(size=(50, 3))
    x_new = rng.normal(size=(9, 6))
    whole = ridge.RidgePath(x, y).predict(x_new, 0.7)
    monkeypatch.setattr(numeric, "CHUNK_BYTES", 8 * 7 * (6 + 3))  # 7 rows a step
    np.testing.assert_allclose(ridge.RidgePath(x, y).predict(x_new, 0.7), whole,
                               rtol=1e-12, atol=1e-12)


@settings(max_examples=60, deadline=None)
@given(n=st.integers(0, 30), d=st.integers(1, 6), g=st.integers(0, 4),
       step=st.integers(1, 31), seed=st.integers(0, 2**16))
def test_centred_products_in_row_steps_are_the_whole_products(n, d, g, step, seed):
    """The row steps cover every row once, in order, and the chunked centred AᵀA and AᵀB
    (float32 rows, float64 sums) equal the products of the whole centred float64 arrays."""
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(n, d)).astype(np.float32)
    b = rng.normal(size=(n, g)) if g else None
    old = numeric.CHUNK_BYTES
    try:
        numeric.CHUNK_BYTES = 8 * step * (d + g)
        steps = list(numeric.row_steps(n, d + g))
        ma, mb = rng.normal(size=d), rng.normal(size=g)
        ata, atb = numeric.centred_products(a, ma, b, mb if g else None)
    finally:
        numeric.CHUNK_BYTES = old
    assert np.array_equal(np.concatenate([np.arange(n)[r] for r in steps] or [[]]),
                          np.arange(n))
    assert all(r.stop - r.start <= step for r in steps)
    ac = a.astype(np.float64) - ma
    np.testing.assert_allclose(ata, ac.T @ ac, rtol=1e-10, atol=1e-10)
    if g:
        np.testing.assert_allclose(atb, ac.T @ (b - mb), rtol=1e-10, atol=1e-10)
    else:
        assert atb is None


def test_ridge_fit_of_many_spots_holds_one_chunk_in_float64():
    """A Visium HD layer's centred float64 copies of X and Y were GBs in each of the 16
    fold fits at 800k bins: the fit holds one chunk of rows in float64."""
    import tracemalloc

    rng = np.random.default_rng(0)
    x = rng.normal(size=(300_000, 64)).astype(np.float32)
    y = rng.normal(size=(300_000, 8)).astype(np.float32)
    tracemalloc.start()
    fit = ridge.RidgePath(x, y)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert fit.primal
    # one row step (numeric.CHUNK_BYTES) of centred rows and its temporaries, ≈ 32 MiB; the
    # whole float64 X alone was 154 MB
    assert peak < 60 * 2**20, f"{peak / 2**20:.0f} MiB"


@settings(max_examples=40, deadline=None)
@given(k=st.integers(1, 5), n=st.integers(1, 30), g=st.integers(1, 6),
       seed=st.integers(0, 2**16))
def test_member_mean_is_the_mean_of_the_stack(k, n, g, seed):
    """The ensemble's mean summed member by member: exactly ``np.mean`` of their stack."""
    from asign.train.final import member_mean

    rng = np.random.default_rng(seed)
    preds = [(rng.normal(size=(n, g)) * 10).astype(np.float32) for _ in range(k)]
    expected = np.mean(preds, axis=0)
    got = member_mean(p.copy() for p in preds)
    assert got.dtype == expected.dtype
    np.testing.assert_array_equal(got, expected)


def test_shrinkage_blend_in_row_chunks_is_the_whole_blend(monkeypatch):
    rng = np.random.default_rng(4)
    model, prior = rng.normal(size=(20, 5)).astype(np.float32), rng.normal(size=(20, 5))
    w = rng.uniform(size=5)
    monkeypatch.setattr(numeric, "CHUNK_BYTES", 8 * 3 * 3 * 5)  # 3 rows a step
    out = shrink.blend(model, prior, w)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, (w * model + (1 - w) * prior).astype(np.float32))


@settings(max_examples=60, deadline=None)
@given(n=st.integers(0, 40), g=st.integers(1, 12), chunk=st.integers(1, 13),
       constant=st.lists(st.integers(0, 11), max_size=3), seed=st.integers(0, 2**16))
def test_pcc_per_gene_in_gene_chunks_is_the_whole_computation(n, g, chunk, constant, seed):
    """Per-gene PCC (the metric, and the paired comparison's) in chunks of genes: exactly
    the whole float64 computation, NaN for constant genes; float32 input copied per chunk."""
    from asign.numeric import pearson_rows
    from asign.train import metrics

    rng = np.random.default_rng(seed)
    pred, truth = rng.normal(size=(n, g)).astype(np.float32), rng.normal(size=(n, g))
    for j in constant:
        if j < g:
            truth[:, j] = 2.0
    whole = pearson_rows(*(np.ascontiguousarray(a.T, np.float64) for a in (pred, truth)))
    old = metrics.PCC_GENES
    try:
        metrics.PCC_GENES = chunk
        got = metrics.pcc_per_gene(pred, truth)
    finally:
        metrics.PCC_GENES = old
    np.testing.assert_array_equal(got, whole)
    if n >= 2:
        assert all(np.isnan(got[j]) for j in constant if j < g)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(2, 40), g=st.integers(1, 5), groups=st.integers(1, 6),
       seed=st.integers(0, 2**16))
def test_cross_fitted_blend_of_a_group_never_reads_its_own_labels(n, g, groups, seed):
    """The intervals calibrate on validation residuals: a group's blended prediction must
    not depend on that group's labels (weights fitted on the spots scored would shrink
    their residuals). With one group there is nothing else to fit on."""
    rng = np.random.default_rng(seed)
    model, prior = rng.normal(size=(n, g)), rng.normal(size=(n, g))
    truth = rng.normal(size=(n, g))
    group = rng.integers(0, groups, size=n)
    out = shrink.cross_fitted(model, prior, truth, group, 0.5)
    assert out.dtype == np.float32 and out.shape == (n, g)
    for k in np.unique(group):
        m = group == k
        if m.all():
            w = shrink.weights(model, prior, truth, 0.5)
            np.testing.assert_array_equal(out, shrink.blend(model, prior, w))
            continue
        moved = truth.copy()
        moved[m] += rng.normal(scale=5.0, size=(int(m.sum()), g))
        np.testing.assert_array_equal(shrink.cross_fitted(model, prior, moved, group, 0.5)[m],
                                      out[m])
        w = shrink.weights(model[~m], prior[~m], truth[~m], 0.5)
        np.testing.assert_allclose(out[m], shrink.blend(model[m], prior[m], w), rtol=1e-5,
                                   atol=1e-6)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(2, 40), g=st.integers(1, 5), groups=st.integers(1, 6),
       priors=st.integers(1, 2), seed=st.integers(0, 2**16))
def test_shrinkage_choice_is_the_lowest_cross_fitted_error(n, g, groups, priors, seed):
    """Every candidate is scored out of sample, the lowest wins, and what is returned is
    that candidate: its held-out blend, and weights refitted on every validation spot (all
    zero for the prior alone)."""
    rng = np.random.default_rng(seed)
    model, truth = rng.normal(size=(n, g)), rng.normal(size=(n, g))
    pv = {f"p{k}": rng.normal(size=(n, g)) for k in range(priors)}
    group = rng.integers(0, groups, size=n)
    c = shrink.choose(model, pv, truth, group)
    assert len(c.scores) == priors * (1 + len(shrink.POOLS))
    assert c.scores == {k: round(v, 5) for k, v in c.scores.items()}
    best = min(c.scores.values())
    label = c.prior if c.pool is None else f"{c.prior}, pool {c.pool:g}"
    assert c.scores[label] == best
    if c.pool is None:
        assert np.all(c.weights == 0)
        np.testing.assert_array_equal(c.held_out, pv[c.prior].astype(np.float32))
    else:
        np.testing.assert_allclose(c.weights, shrink.weights(model, pv[c.prior], truth,
                                                             c.pool), atol=1e-12)
        held = shrink.cross_fitted(model, pv[c.prior], truth, group, c.pool)
        np.testing.assert_array_equal(c.held_out, held)
        # the score is the blend's MSE, from sums (shrink.Moments) or from the blend itself
        assert c.scores[label] == pytest.approx(float(((held - truth) ** 2).mean()),
                                                rel=1e-4, abs=1e-5)
    # the prior alone is always a candidate: the choice never scores above it
    assert best <= min(c.scores[k] for k in pv)


def test_shrinkage_moments_are_summed_in_row_steps(monkeypatch):
    """The per-group sums are the same in one step and in steps of a few rows (the
    validation spots of a Visium HD stack would be GBs of float64 in one)."""
    from asign import numeric

    rng = np.random.default_rng(6)
    model, prior, truth = (rng.normal(size=(300, 7)).astype(np.float32) for _ in range(3))
    group = rng.integers(0, 4, size=300)
    whole = shrink.moments(model, prior, truth, group)
    monkeypatch.setattr(numeric, "CHUNK_BYTES", 8 * 5 * 7 * 13)  # 13 rows a step
    steps = shrink.moments(model, prior, truth, group)
    for a, b in ((whole.de, steps.de), (whole.dd, steps.dd), (whole.ee, steps.ee)):
        np.testing.assert_allclose(a, b, rtol=1e-12)
    for j, label in enumerate(whole.groups):
        m = group == label
        d = model[m].astype(np.float64) - prior[m]
        np.testing.assert_allclose(whole.dd[j], (d * d).sum(axis=0), rtol=1e-12)


def test_shrinkage_keeps_the_prior_alone_when_the_network_adds_nothing():
    """Fitted on the spots it is scored on, a least-squares blend always beats the prior;
    out of sample, a network of pure noise loses to it, and a useful one is blended in."""
    rng = np.random.default_rng(5)
    truth = rng.normal(size=(240, 30))
    prior = truth + rng.normal(scale=1.0, size=truth.shape)
    group = np.repeat(np.arange(6), 40)
    useless = prior + rng.normal(size=truth.shape)  # the prior plus noise
    in_sample = shrink.weights(useless, prior, truth, 0.5)
    assert (in_sample > 0).any()  # what an in-sample fit would blend in
    noise = shrink.choose(useless, {"p": prior}, truth, group)
    assert noise.pool is None and np.all(noise.weights == 0)
    useful = truth + rng.normal(scale=1.0, size=truth.shape)
    c = shrink.choose(useful, {"p": prior}, truth, group)
    assert c.pool is not None and 0.3 < c.weights.mean() < 0.7
