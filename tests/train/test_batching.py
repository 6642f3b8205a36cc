"""batching: spatial blocks, halo subgraphs, mini-batch training and block-wise inference
(exact against the whole graph where batching.py says so)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from asign.train import TrainConfig, loop, run
from asign.train.batching import BatchPlan, block_subgraph, spatial_blocks
from asign.train.data import SampleData

SMALL = dict(hidden=16, heads=2, epochs=1, threads=1)
WHOLE = dict(minibatch_above=10**9)  # never blocks
BLOCKS = dict(minibatch_above=0, block_spots=40)  # always blocks, several per graph


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread, as the run-level tests use (threads=1): on a loaded 2-core
    machine, two spinning threads make these millisecond steps take seconds."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _sample(layers: int = 3, side: int = 9, dim: int = 12, n_genes: int = 5,
            seed: int = 0) -> SampleData:
    """A small 3D sample: side×side grid per layer, 6 same-layer + 4 cross-layer in-edges
    per spot, 4 region and 2 global tokens per spot, labels on every layer."""
    from scipy.spatial import cKDTree

    rng = np.random.default_rng(seed)
    g = np.stack(np.meshgrid(np.arange(side), np.arange(side)), -1).reshape(-1, 2) * 100.0
    per = len(g)
    n = per * layers
    xy = np.concatenate([g + rng.normal(scale=8, size=g.shape) for _ in range(layers)])
    section = np.repeat(np.arange(layers, dtype=np.int32), per)
    src, dst, cross = [], [], []
    for z in range(layers):
        idx = np.flatnonzero(section == z)
        _, nb = cKDTree(xy[idx]).query(xy[idx], k=7)
        src.append(idx[nb[:, 1:]].ravel())
        dst.append(np.repeat(idx, 6))
        cross.append(np.zeros(idx.size * 6, bool))
        for o in (z - 1, z + 1):
            if 0 <= o < layers:
                oidx = np.flatnonzero(section == o)
                _, nb = cKDTree(xy[oidx]).query(xy[idx], k=2)
                src.append(oidx[nb].ravel())
                dst.append(np.repeat(idx, 2))
                cross.append(np.ones(idx.size * 2, bool))
    src_a, dst_a, cross_a = np.concatenate(src), np.concatenate(dst), np.concatenate(cross)
    weight = np.where(cross_a, rng.uniform(0.1, 1.0, src_a.size),
                      1.0 / np.linalg.norm(xy[src_a] - xy[dst_a], axis=1)).astype(np.float32)
    tokens = {"region": rng.integers(0, 30, (n, 4)), "global": rng.integers(0, 8, (n, 2))}
    tokens["region"][rng.random((n, 4)) < 0.3] = -1
    tokens["region"][:, 0] = (np.arange(n) // 9) % 30
    tile_feat = {"region": rng.normal(size=(30, dim)).astype(np.float16),
                 "global": rng.normal(size=(8, dim)).astype(np.float16)}
    latent = np.sin(xy[:, :1] / 300.0 + np.arange(n_genes)) + 0.1 * section[:, None]
    return SampleData(
        sample_id="S", genes=tuple(f"G{i}" for i in range(n_genes)),
        sections=tuple(f"S_L{z}" for z in range(layers)), section_z=np.arange(layers),
        spot_ids=np.array([f"s{i}" for i in range(n)], object), section=section, xy=xy,
        is_virtual=np.zeros(n, bool), has_label=np.ones(n, bool),
        labels=latent.astype(np.float32),
        spot_feat=(rng.normal(size=(n, dim)) + latent[:, :1]).astype(np.float16),
        tokens=tokens, tile_feat=tile_feat, src=src_a, dst=dst_a, weight=weight, cross=cross_a)


def _setup(model: str = "asign3d", **kw):
    sample = _sample()
    cfg = TrainConfig(store=".", model=model, **{**SMALL, **kw})
    task = loop.make_task(sample, (sample.sections[0],), "cpu", val_fraction=0.2)
    net = loop.build(cfg, sample.spot_feat.shape[1], len(sample.genes), 0)
    return sample, cfg, task, net


def test_spatial_blocks_partition_every_spot_once():
    xy = np.random.default_rng(1).uniform(0, 1000, (1000, 2))
    blocks = spatial_blocks(xy, 70)
    assert all(0 < len(b) <= 70 for b in blocks)
    assert np.array_equal(np.sort(np.concatenate(blocks)), np.arange(1000))
    assert all(np.array_equal(a, b) for a, b in zip(blocks, spatial_blocks(xy, 70), strict=True))
    assert len(spatial_blocks(xy, 1000)) == 1


def test_subgraph_of_every_node_is_the_whole_graph_and_halo_grows():
    _, _, task, net = _setup()
    graph = net.edge_graph(task.inputs)
    whole = block_subgraph(graph, np.arange(graph.num_nodes), hops=3)
    assert np.array_equal(whole.edges, np.arange(graph.num_edges))
    assert torch.equal(whole.graph.src, graph.src) and torch.equal(whole.graph.dst, graph.dst)
    seeds = spatial_blocks(task.inputs.xy.numpy(), 40)[0]
    sizes = [block_subgraph(graph, seeds, hops=h).nodes.size for h in range(4)]
    assert sizes[0] == seeds.size and sizes == sorted(sizes) and sizes[3] > sizes[0]
    sub = block_subgraph(graph, seeds, hops=1)  # every in-neighbour of a seed is inside
    src, dst = graph.src.numpy(), graph.dst.numpy()
    assert set(src[np.isin(dst, seeds)]) <= set(sub.nodes)


@pytest.mark.parametrize("model", ["asign3d", "asign2d"])
def test_block_inference_equals_whole_graph_inference(model):
    _, cfg, task, net = _setup(model)
    net.eval()
    whole = loop.predict(cfg.with_(**WHOLE), net, task)
    blocked = loop.predict(cfg.with_(**BLOCKS), net, task)
    assert BatchPlan.of(cfg.with_(**BLOCKS)).active(len(task.train))
    np.testing.assert_allclose(blocked, whole, rtol=1e-5, atol=1e-5)


def test_msagnet_is_exact_on_seeds_only_with_a_full_halo():
    _, _, task, net = _setup()
    net.eval()
    from asign.train.batching import subset_inputs

    graph = net.edge_graph(task.inputs)
    with torch.no_grad():
        ref = net.net(task.inputs, graph).spot_model
        seeds = spatial_blocks(task.inputs.xy.numpy(), 40)[1]
        errors = []
        for hops in (0, 3):
            sub = block_subgraph(graph, seeds, hops)
            out = net.net(subset_inputs(task.inputs, sub), sub.graph).spot_model[sub.seed]
            errors.append(float((out - ref[seeds]).abs().max()))
    assert errors[1] < 1e-5 < errors[0]


def test_one_block_training_equals_whole_graph_training():
    sample, cfg, task, net = _setup()
    one_block = dict(minibatch_above=0, block_spots=sample.n_spots)
    states = []
    for extra in (WHOLE, one_block):
        c = cfg.with_(epochs=2, **extra)
        model = loop.build(c, sample.spot_feat.shape[1], len(sample.genes), 0)
        t = loop.make_task(sample, (sample.sections[0],), "cpu", val_fraction=0.2)
        state = loop.fit(c, model, [t], 0)
        states.append((state.history, model.state_dict()))
    np.testing.assert_allclose(states[0][0], states[1][0], rtol=1e-5)
    for k, v in states[0][1].items():
        torch.testing.assert_close(states[1][1][k], v, rtol=1e-4, atol=1e-5)


def test_minibatch_training_learns_and_counts_each_seed_once():
    sample, cfg, task, net = _setup()
    c = cfg.with_(epochs=3, **BLOCKS)
    state = loop.fit(c, net, [task], 0)
    stats = task.cache["batching"]
    assert stats.blocks > 2 and stats.seeds == int(sum(task.train[b].any() * len(b) for b in
                                                      spatial_blocks(sample.xy, 40)))
    assert stats.max_block_nodes <= sample.n_spots and np.isfinite(state.history).all()
    assert state.history[-1] < state.history[0]


def test_run_records_the_minibatch_plan(toy_store):
    from asign.store import open_store

    res = run(TrainConfig(store=toy_store, model="asign3d", run="mb", **{**SMALL, **BLOCKS}))
    assert res.status == "done"
    assert res.timings["batching"]["S1"]["blocks"] >= 2
    config = json.loads(open_store(toy_store).query(
        "SELECT config FROM runs WHERE name = 'mb'").column("config")[0].as_py())
    assert config["minibatch_above"] == 0 and config["block_spots"] == 40
