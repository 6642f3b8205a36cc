"""gnn: DGL and PyG GAT engines compute the same weighted attention with one state dict."""

from __future__ import annotations

import pytest
import torch

from asign.errors import ConfigError
from asign.train.gnn import EdgeGraph, make_gat, resolve_engine


def _random_graph(n: int = 40, e: int = 200, seed: int = 0) -> EdgeGraph:
    gen = torch.Generator().manual_seed(seed)
    src = torch.randint(0, n, (e,), generator=gen)
    dst = torch.randint(0, n - 3, (e,), generator=gen)  # last 3 nodes: no in-edges
    weight = torch.rand(e, generator=gen) * 2
    return EdgeGraph(src, dst, weight, n)


@pytest.mark.parametrize(
    ("in_dim", "residual", "bias"),
    [(16, True, True), (24, True, True), (16, False, True), (24, True, False), (16, False, False)],
)
def test_engines_agree_with_shared_weights(in_dim, residual, bias):
    graph = _random_graph()
    torch.manual_seed(1)
    dgl_layer = make_gat("dgl", in_dim, 4, 4, residual=residual, bias=bias)
    pyg_layer = make_gat("pyg", in_dim, 4, 4, residual=residual, bias=bias)
    # Same names and shapes: a state dict moves between engines unchanged.
    pyg_layer.load_state_dict(dgl_layer.state_dict(), strict=True)
    with torch.no_grad():  # non-trivial attention vectors and bias
        for p in dgl_layer.parameters():
            p.add_(0.3 * torch.randn_like(p))
    pyg_layer.load_state_dict(dgl_layer.state_dict(), strict=True)

    h = torch.randn(graph.num_nodes, in_dim)
    out_dgl, out_pyg = dgl_layer(h, graph), pyg_layer(h, graph)
    assert out_dgl.shape == (graph.num_nodes, 16)
    torch.testing.assert_close(out_pyg, out_dgl, atol=1e-5, rtol=1e-5)

    # Edge weights matter, and matter identically in both engines.
    scaled = EdgeGraph(graph.src, graph.dst, graph.weight * torch.rand(graph.num_edges), 40)
    assert not torch.allclose(dgl_layer(h, scaled), out_dgl, atol=1e-4)
    torch.testing.assert_close(pyg_layer(h, scaled), dgl_layer(h, scaled), atol=1e-5, rtol=1e-5)

    # Gradients agree too.
    for layer in (dgl_layer, pyg_layer):
        layer.zero_grad()
        layer(h, graph).square().sum().backward()
    for (name, p_d), (_, p_p) in zip(
        dgl_layer.named_parameters(), pyg_layer.named_parameters(), strict=True
    ):
        torch.testing.assert_close(p_p.grad, p_d.grad, atol=1e-4, rtol=1e-4, msg=name)


def test_same_seed_same_initial_weights_across_engines():
    torch.manual_seed(7)
    dgl_sd = make_gat("dgl", 24, 4, 4).state_dict()
    torch.manual_seed(7)
    pyg_sd = make_gat("pyg", 24, 4, 4).state_dict()
    assert dgl_sd.keys() == pyg_sd.keys()
    for key in dgl_sd:
        torch.testing.assert_close(pyg_sd[key], dgl_sd[key])


@pytest.mark.parametrize("engine", ["dgl", "pyg"])
def test_messages_flow_src_to_dst(engine):
    graph = EdgeGraph(torch.tensor([0]), torch.tensor([1]), torch.tensor([1.0]), 2)
    torch.manual_seed(0)
    layer = make_gat(engine, 8, 4, 2).eval()
    h = torch.randn(2, 8)
    base = layer(h, graph)
    h2 = h.clone()
    h2[0] += 1.0
    moved = layer(h2, graph)
    assert not torch.allclose(moved[1], base[1])  # dst sees src
    h3 = h.clone()
    h3[1] += 1.0
    moved = layer(h3, graph)
    torch.testing.assert_close(moved[0], base[0])  # src does not see dst


def test_engine_choice():
    assert resolve_engine("auto", "cpu") == "dgl"
    assert resolve_engine("auto", "cuda") == "pyg"
    with pytest.raises(ConfigError, match="unknown GAT engine"):
        resolve_engine("cugraph")
    with pytest.raises(ConfigError, match="differ in shape"):
        EdgeGraph(torch.tensor([0, 1]), torch.tensor([1]), torch.tensor([1.0]), 2)
