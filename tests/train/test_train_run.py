"""asign train end to end on the toy store: every model writes its tables, hidden labels
never reach training, runs are deterministic, and --resume continues an interrupted run."""

from __future__ import annotations

import json
import zlib

import numpy as np
import pyarrow.compute as pc
import pytest

from asign.errors import AsignError, ConfigError
from asign.store import open_store
from asign.train import MODELS, TrainConfig, run

pytest.importorskip("torch")

SMALL = dict(epochs=3, hidden=16, heads=2, threads=1)


def _cfg(store, model, **kw) -> TrainConfig:
    return TrainConfig(store=store, model=model, run="t",
                       **({**SMALL, **kw} if MODELS[model].neural else kw))


def _metrics(result) -> dict[tuple, float]:
    t = result.metrics.to_pylist()
    return {(r["fold"], r["section_id"], r["metric"]): r["value"] for r in t}


def test_every_model_writes_runs_metrics_predictions(toy_store):
    store = open_store(toy_store)
    for model in MODELS:
        res = run(_cfg(toy_store, model, epochs=1))
        assert res.status == "done" and res.setting == "within_sample"
        m = _metrics(res)
        # hidden labelled layers are scored; the known layer, the image-only layer and the
        # 2D sample B never are
        assert {k[1] for k in m} == {"S1_L2", "S1_L3", "S1_L4"}
        assert {"mse", "mae", "pcc_spot", "pcc_gene"} <= {k[2] for k in m}
        assert np.isfinite(m[(0, "S1_L3", "mse")])
    runs = store.query("SELECT * FROM runs ORDER BY model").to_pylist()
    assert sorted(r["model"] for r in runs) == sorted(MODELS)
    for r in runs:
        assert r["status"] == "done" and r["setting"] == "within_sample" and r["seed"] == 0
        assert r["asign_version"] and r["store_hash"] and r["seconds"] > 0
        config = json.loads(r["config"])
        assert config["model"] == r["model"] and config["timings"]["total_s"] > 0
        roles = {(p["sample_id"], p["role"]) for p in config["plan"]["0"]}
        assert roles == {("S1", "test"), ("B", "train_2d")}
    preds = store.query("SELECT run_id, section_id, count(*) AS n FROM predictions "
                        "GROUP BY ALL").to_pylist()
    assert {p["section_id"] for p in preds} == {"S1_L2", "S1_L3", "S1_L4", "S1_L5"}
    assert all(p["n"] == 30 * 6 for p in preds)  # 30 spots x 6 genes per section per run
    n_runs = store.query("SELECT count(DISTINCT run_id) AS n FROM metrics").column("n")[0]
    assert n_runs.as_py() == len(MODELS)


def _perturb_hidden_labels(root) -> None:
    store = open_store(root)
    tab = store.read("labels", key="S1")
    hidden = pc.invert(pc.equal(tab.column("section_id"), "S1_L1")).to_numpy(zero_copy_only=False)
    values = np.array(tab.column("value").to_pylist(), dtype=np.float32)
    rng = np.random.default_rng(7)
    values[hidden] = rng.normal(size=values[hidden].shape).astype(np.float32)
    tab = tab.set_column(tab.schema.get_field_index("value"), "value", [values.tolist()])
    store.write("labels", tab, key="S1")


@pytest.mark.parametrize("model", ["asign3d", "idw", "cli"])
def test_hidden_labels_never_reach_training(toy_store, toy_store_factory, model):
    import shutil

    import torch

    other = toy_store.parent / "perturbed"
    shutil.copytree(toy_store, other)
    _perturb_hidden_labels(other)
    a, b = run(_cfg(toy_store, model)), run(_cfg(other, model))
    assert a.run_id == b.run_id  # same config, same store fingerprint
    for col in ("value", "lower", "upper"):  # predictions and their calibrated intervals
        pa_, pb = (open_store(r).read("predictions", key=a.run_id).column(col).to_numpy()
                   for r in (toy_store, other))
        assert np.isfinite(pa_).all()
        np.testing.assert_array_equal(pa_, pb)  # identical predictions ...
    assert _metrics(a) != _metrics(b)  # ... scored against different (perturbed) truth
    if MODELS[model].neural:
        ca, cb = (torch.load(open_store(r).layout.checkpoint(a.run_id), weights_only=False)
                  for r in (toy_store, other))
        for k, v in ca["finished"][0].items():
            assert torch.equal(v, cb["finished"][0][k]), k  # identical trained weights


def test_identical_runs_identical_metrics_and_resume_matches(toy_store):
    cfg = _cfg(toy_store, "asign3d", epochs=4)
    first = run(cfg)
    again = run(cfg)
    assert _metrics(first) == _metrics(again)

    cut = run(cfg.with_(run="cut"), max_epochs=2)
    assert cut.status == "interrupted"
    status = open_store(toy_store).query(
        f"SELECT status FROM runs WHERE run_id = '{cut.run_id}'").column("status")[0].as_py()
    assert status == "interrupted"
    resumed = run(cfg.with_(run="cut", resume=True))
    assert resumed.status == "done" and resumed.timings["epochs_run"] == 2
    assert _metrics(resumed) == _metrics(first)


def test_cross_sample_folds(toy_store_factory):
    root = toy_store_factory("multi", samples=("P1", "P2", "P3"), n_layers=3, grid=(4, 4),
                             extra_2d="B")
    for model, kw in (("idw", {}), ("asign2d", {"epochs": 1})):
        res = run(_cfg(root, model, folds=3, **kw))
        assert res.setting == "cross_sample"
        rows = res.metrics.to_pylist()
        assert {r["setting"] for r in rows} == {"cross_sample"}
        scored = {(r["sample_id"], r["section_id"]): r["fold"] for r in rows}
        # every sample tested in exactly one fold, its known (first) layer never scored
        assert {s for s, _ in scored} == {"P1", "P2", "P3"}
        assert sorted({f for f in scored.values()}) == [0, 1, 2]
        assert not any(sec.endswith("_L1") for _, sec in scored)


def test_bad_options_are_clear_errors(toy_store):
    with pytest.raises(ConfigError, match="mean has none"):
        run(_cfg(toy_store, "mean", finetune_spot_encoder=True))
    # the toy store is written without spot patches: nothing to fine-tune on
    with pytest.raises(AsignError, match="patch of spot .* missing"):
        run(_cfg(toy_store, "asign3d", finetune_spot_encoder=True))
    with pytest.raises(ConfigError, match="--model"):
        run(_cfg(toy_store, "mean").with_(model="nope"))


@pytest.mark.parametrize("validation", ["random", "blocked"])
def test_validation_spots_never_enter_the_gradient(toy_store, validation):
    """Labels of the spots set aside for model selection change the validation curve only."""
    from asign.train import blocks, loop
    from asign.train.data import load_sample

    s = load_sample(open_store(toy_store), "S1")
    cfg = _cfg(toy_store, "asign3d", epochs=3, val_fraction=0.3)
    histories = []
    for shift in (0.0, 5.0):
        task = loop.make_task(s, ("S1_L1",), "cpu", val_fraction=0.3, seed=0,
                              validation=validation)
        # random: exactly 30 % of the 30 known spots; blocked: whole blocks of them
        expected = 9 if validation == "random" else int(blocks.validation_split(
            task.visible, s.xy, s.section, 0.3, loop._mix(0, zlib.crc32(b"S1"))).sum())
        assert task.val.sum() == expected >= 9 and not (task.val & task.train).any()
        task.y[task.val] += shift  # only the set-aside labels change
        model = loop.build(cfg, 16, 6, 0)
        loop.init_output_bias(model, [task])
        histories.append(loop.fit(cfg, model, [task], 0))
    assert histories[0].history == histories[1].history
    assert histories[0].val_history != histories[1].val_history
    assert 1 <= histories[0].best_epoch <= 3


def test_simplex_grid_covers_the_simplex():
    from asign.train.calibrate import simplex_grid

    grid = simplex_grid(3, step=0.25)
    np.testing.assert_allclose(grid.sum(1), 1.0)
    assert (grid >= 0.25 - 1e-12).all()
    assert {tuple(r) for r in grid} == {(0.25, 0.25, 0.5), (0.25, 0.5, 0.25), (0.5, 0.25, 0.25)}
    assert len(simplex_grid(2)) == 19  # 0.05 … 0.95


def test_gate_calibration_never_worsens_the_validation_score(toy_store):
    res = run(_cfg(toy_store, "asign3d", epochs=2))
    gate = res.timings["selection"]["0"]["gate"]
    assert set(gate["weights"]) == {"propagation", "prior", "model"}
    assert sum(gate["weights"].values()) == pytest.approx(1.0)
    # the grid contains (almost) the 1/3-each gate training starts from, so it wins
    assert gate["applied"] and gate["val_score"] < gate["val_score_trained_gate"]
    off = run(_cfg(toy_store, "asign3d", epochs=2, calibrate_gate=False))
    assert "gate" not in off.timings["selection"]["0"]
    assert _metrics(off) != _metrics(res)


def test_every_baseline_is_dispatched_through_the_registry():
    from asign.train import baselines

    for spec in MODELS.values():
        assert spec.neural == (spec.baseline is None), spec.name
        if spec.baseline:
            assert callable(getattr(baselines, spec.baseline)), spec.baseline


def test_a_new_baseline_needs_only_a_registry_entry_and_its_function(toy_store, monkeypatch):
    from asign.train import baselines
    from asign.train.config import ModelSpec

    def predict_known_max(cfg, s, y, known):  # a toy rule: every spot gets the known maximum
        return np.broadcast_to(y[known].max(axis=0), (s.n_spots, y.shape[1])).astype(np.float32)

    monkeypatch.setattr(baselines, "predict_known_max", predict_known_max, raising=False)
    monkeypatch.setitem(MODELS, "known-max", ModelSpec(
        name="known-max", help="toy: the known layer's maximum", images=False,
        baseline="predict_known_max"))
    res = run(_cfg(toy_store, "known-max"))
    assert res.status == "done"
    m = _metrics(res)
    assert {k[1] for k in m} == {"S1_L2", "S1_L3", "S1_L4"} and np.isfinite(m[(0, "S1_L3", "mse")])
    pred = open_store(toy_store).query(
        "SELECT p.value FROM predictions p JOIN runs r USING (run_id) WHERE r.model = 'known-max'"
    ).column("value").to_numpy()
    assert len(pred) and np.isfinite(pred).all()


@pytest.mark.parametrize("step", ["write_metrics", "write_predictions"])
@pytest.mark.parametrize("fault", [OSError(28, "No space left on device"), KeyboardInterrupt])
def test_a_run_whose_results_fail_to_write_is_not_done_and_keeps_none(toy_store_factory,
                                                                     monkeypatch, step, fault):
    """An 800k-bin asign3d run wrote its metrics, then hit a full disk writing its
    predictions, and its row said `done`: a finished run without predictions. Whatever
    write fails, the run is failed (or interrupted) and keeps none of its results."""
    from asign.train import results as res

    root = toy_store_factory("fault")
    real = getattr(res, step)

    def broken(store, rid, *a, **kw):
        real(store, rid, *a, **kw)  # a part of it may have landed
        raise fault

    monkeypatch.setattr(res, step, broken)
    with pytest.raises(type(fault) if isinstance(fault, OSError) else fault):
        run(_cfg(root, "idw"))
    store = open_store(root)
    (status,) = store.query("SELECT status FROM runs").column("status").to_pylist()
    assert status == ("interrupted" if fault is KeyboardInterrupt else "failed")
    for table in ("metrics", "predictions"):
        assert store.query(f"SELECT count(*) AS n FROM {table}").column("n")[0].as_py() == 0
    monkeypatch.setattr(res, step, real)
    assert run(_cfg(root, "idw")).status == "done"  # a re-run completes
