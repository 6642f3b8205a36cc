"""A network is a registered builder: a second network class (not a flag variant of
ASIGNNet) registered as one ModelSpec trains end to end through the normal run."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from asign.store import open_store
from asign.train import run
from asign.train.config import MODELS, ModelSpec, TrainConfig
from asign.train.model import ASIGNNet, EdgeGraph, GraphInputs, ModelOutput
from asign.train.network import Network


class _Body(nn.Module):
    """Two layers on each spot's own embedding: no tiles, no message passing."""

    def __init__(self, in_dim: int, hidden: int, n_genes: int):
        super().__init__()
        self.gats = nn.ModuleList()  # no message-passing layer: a block needs no halo
        self.checkpoint_activations = False
        self.embed = nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU())
        self.head_spot = nn.Sequential(nn.Linear(hidden, n_genes))

    def forward(self, inputs: GraphInputs, graph: EdgeGraph) -> ModelOutput:
        h = self.embed(inputs.spot)
        y = self.head_spot(h)
        return ModelOutput(spot=y, region=y, global_=y, spot_model=y, embedding=h)


class SpotMLP(nn.Module):
    def __init__(self, in_dim: int, hidden: int, n_genes: int):
        super().__init__()
        self.cfg = {"in_dim": in_dim, "hidden": hidden, "n_genes": n_genes}
        self.net = _Body(in_dim, hidden, n_genes)
        self.cli = None

    def edge_graph(self, inputs: GraphInputs) -> EdgeGraph:
        return EdgeGraph(inputs.src, inputs.dst, inputs.edge_weight.float(), inputs.num_nodes)

    def forward(self, inputs, y_known=None, known_mask=None, *, graph=None, net_out=None):
        return self.net(inputs, graph) if net_out is None else net_out


built: list[str] = []


def build_spot_mlp(name: str, *, in_dim: int, n_genes: int, hidden_dim: int, **_: object):
    built.append(name)
    return SpotMLP(in_dim, hidden_dim, n_genes)


def test_both_networks_implement_the_protocol():
    assert isinstance(SpotMLP(4, 8, 3), Network)
    assert isinstance(MODELS["asign3d"].build_network(in_dim=4, n_genes=3), ASIGNNet)


def test_a_second_network_class_trains_end_to_end(toy_store, monkeypatch):
    monkeypatch.setitem(MODELS, "spot-mlp", ModelSpec(
        name="spot-mlp", help="toy: an MLP on each spot's embedding",
        builder=f"{__name__}:build_spot_mlp"))
    built.clear()
    torch.manual_seed(0)
    res = run(TrainConfig(store=toy_store, model="spot-mlp", run="t", epochs=3, hidden=16,
                          threads=1))
    assert res.status == "done" and built == ["spot-mlp"]
    values = {(r["section_id"], r["metric"]): r["value"] for r in res.metrics.to_pylist()}
    assert {s for s, _ in values} == {"S1_L2", "S1_L3", "S1_L4"}
    assert all(np.isfinite(values[(s, "mse")]) for s in ("S1_L2", "S1_L3", "S1_L4"))
    runs = open_store(toy_store).query("SELECT model FROM runs").column("model").to_pylist()
    assert "spot-mlp" in runs
    # its run id depends on the network settings, as any network's does
    assert "epochs" in TrainConfig(store=toy_store, model="spot-mlp").identity()
