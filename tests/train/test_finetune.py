"""``--finetune-spot-encoder`` on a real (cut-down) her2st store embedded with the small
ResNet18 encoder: the encoder trains, runs are deterministic, resume replays the run, and
the cache / gradient mechanics of train/finetune.py hold."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from her2st_small import HER2ST, make_small_her2st

from asign.ingest import run as ingest_run
from asign.ingest.config import IngestConfig
from asign.store import open_store
from asign.train import TrainConfig, loop, run
from asign.train import finetune as F
from asign.train.data import load_sample

pytestmark = pytest.mark.skipif(not HER2ST.exists(), reason="needs ../shared/data/her2st")

ENCODER = "resnet18-l3-64"
CFG = dict(model="asign3d", run="ft", epochs=2, hidden=16, heads=2, threads=1,
           finetune_spot_encoder=True, finetune_batch=16)


@pytest.fixture(scope="module")
def store_path(tmp_path_factory):
    src = make_small_her2st(tmp_path_factory.mktemp("her2st") / "her2st", sections=("C2", "C3"),
                            n_genes=12)
    path = tmp_path_factory.mktemp("store") / "S"
    ingest_run(IngestConfig(sources=(src,), store=path, samples="C", weights="random",
                            encoder=ENCODER, batch_size=32))
    return path


def _metrics(res) -> dict:
    return {(r["section_id"], r["metric"]): r["value"] for r in res.metrics.to_pylist()}


def test_finetuned_run_is_deterministic_and_differs_from_frozen(store_path):
    a = run(TrainConfig(store=store_path, **CFG))
    b = run(TrainConfig(store=store_path, **CFG))
    frozen = run(TrainConfig(store=store_path, **{**CFG, "finetune_spot_encoder": False}))
    assert a.status == b.status == frozen.status == "done"
    assert _metrics(a) == _metrics(b)
    assert np.isfinite(a.mean("pcc_spot"))
    # same seed and episodes: only the trained encoder can make the predictions differ
    assert _metrics(a) != _metrics(frozen)
    cfg = open_store(store_path).query(
        f"select config from runs where run_id = '{a.run_id}'").column("config")[0].as_py()
    assert '"finetune_spot_encoder": true' in cfg


def test_resume_replays_the_uninterrupted_run(store_path):
    cfg = TrainConfig(store=store_path, **{**CFG, "run": "ft-resume"})
    whole = run(cfg)
    part = run(cfg, max_epochs=1)
    assert part.status == "interrupted"
    resumed = run(cfg.with_(resume=True))
    assert resumed.status == "done"
    for key, value in _metrics(whole).items():
        assert _metrics(resumed)[key] == pytest.approx(value, rel=1e-5, abs=1e-6), key


def test_batch_rows_carry_gradients_and_the_rest_come_from_the_cache(store_path):
    store = open_store(store_path)
    cfg = TrainConfig(store=store_path, **CFG)
    sample = load_sample(store, "C", patches=True)
    assert sample.patches.shape[1:] == (64, 64, 3)
    recipe = F.EncoderRecipe.from_manifest(store.embedding_info(), None,
                                           store.layout.manifest)
    # the default ingest stain-normalised what its encoder saw: so does fine-tuning
    assert recipe.stain is not None and set(recipe.stain["samples"]) == {"C"}
    as_cut = sample.patches
    sample = dataclasses.replace(sample, patches=recipe.encoder_input("C", as_cut))
    assert sample.patches.shape == as_cut.shape and not np.array_equal(sample.patches, as_cut)
    task = loop.make_task(sample, ("C2",), "cpu")
    model = loop.build(cfg, sample.spot_feat.shape[1], len(sample.genes), 0, spot_encoder=recipe)
    model.train()
    assert not model.encoder.training  # BatchNorm statistics stay frozen

    cached = F.refresh(model, task.cache["finetune"]).clone()
    # the starting encoder reproduces the stored embeddings (computed in bfloat16 at ingest,
    # so not bit for bit), and the per-section z-score of live features matches the frozen
    # features the network otherwise sees
    live, stored = cached.numpy().ravel(), task.inputs.spot.numpy().ravel()
    assert np.corrcoef(live, stored)[0, 1] > 0.99
    assert np.abs(live - stored).mean() < 0.05
    # the patches as cut (unnormalised) would not give the stored embeddings
    unnormalised = loop.make_task(dataclasses.replace(sample, patches=as_cut), ("C2",), "cpu")
    off = F.refresh(model, unnormalised.cache["finetune"]).numpy().ravel()
    assert np.abs(off - stored).mean() > 2 * np.abs(live - stored).mean()

    rng = np.random.default_rng(0)
    inputs = F.train_inputs(model, task, rng, batch=16)
    rows = np.sort(np.random.default_rng(0).choice(sample.n_spots, 16, replace=False))
    other = np.setdiff1d(np.arange(sample.n_spots), rows)
    torch.testing.assert_close(inputs.spot[other], cached[other])
    inputs.spot.sum().backward()
    grads = [p.grad for p in model.encoder.parameters() if p.grad is not None]
    assert grads and any(float(g.abs().sum()) > 0 for g in grads)
