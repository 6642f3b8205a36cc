"""Neighbour-sampled mini-batches with DGL's samplers: how a graph trains when its
whole-graph step does not fit the memory budget (``--memory-gb``, batching.BatchPlan).

Seeds: the spots of one spatial block (batching.spatial_blocks: a column through every
layer, so the seeds' neighbourhoods overlap each other far more than the outside).
DGL's ``MultiLayerFullNeighborSampler`` turns them into one *message-flow graph* (MFG)
per GAT layer (``sample_blocks``): layer l reads the nodes within L − l in-edge hops of
the seeds and outputs only those within L − l − 1, so layer by layer the rows shrink to
the seeds. MSAGNet runs on the MFGs unchanged (model.MSAGNet.forward takes one graph per
layer; gnn.GATLayer takes an MFG; the transformer mixers and the heads are per node and
run on the rows a layer outputs): with full-neighbour sampling its outputs at the seeds
equal the whole-graph ones (tests/train/test_sampling.py), while the halo costs only the
input projections, the fusions and the first layer's messages.

What the mini-batch cannot give exactly is the CLI: its propagation weights come from the
final embeddings, which an MFG computes at the seeds only, and a propagated label travels
``cli_iters`` hops. In a mini-batch step the CLI therefore propagates over the edges among
the seeds (their induced subgraph), from the episode's known seeds; inference runs
MSAGNet batch by batch (exact) and the CLI once on the whole graph (batching.infer).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from asign.train.gnn import EdgeGraph

if TYPE_CHECKING:
    from asign.train.model import GraphInputs


@dataclass(eq=False)
class SampledGraph(EdgeGraph):
    """The CLI's graph of a mini-batch (the edges among its seeds, local ids in seed
    order) and MSAGNet's ``layers``: one MFG per GAT layer, as EdgeGraphs over the
    layer's input rows with ``num_dst`` output rows (model.ASIGNNet.forward reads them)."""

    layers: list[EdgeGraph] = field(default_factory=list)


def sampler(hops: int) -> Any:
    """DGL's full-neighbour sampler over ``hops`` layers."""
    from asign.compat.dgl import import_dgl

    return import_dgl().dataloading.MultiLayerFullNeighborSampler(hops)


def message_flow(graph: EdgeGraph, seeds: np.ndarray, hops: int) -> tuple[np.ndarray,
                                                                           list[EdgeGraph]]:
    """(input nodes, one EdgeGraph per layer) of ``seeds`` on ``graph``: the input nodes
    start with the seeds in their order, and every layer's output rows are a prefix of its
    input rows (DGL's block convention). Edge weights are the whole graph's."""
    import torch

    from asign.compat.dgl import import_dgl

    dgl = import_dgl()
    g = graph.dgl()
    seeds_t = torch.as_tensor(np.asarray(seeds, dtype=np.int64), device=graph.src.device)
    _, output_nodes, blocks = sampler(hops).sample_blocks(g, seeds_t)
    if not torch.equal(output_nodes, seeds_t):  # the rows of the outputs must be the seeds
        raise RuntimeError("DGL's sampler reordered the seeds")
    # DGL numbers a layer's new source nodes, and orders its edges, differently on every
    # call (a concurrent hash map): the sums of a GAT layer then change in the last bits and
    # training is not reproducible. Canonical order: the outputs first, then the layer's
    # new nodes by id; edges by (destination, source, edge id).
    order = np.asarray(seeds, dtype=np.int64)
    dev = graph.src.device
    layers = []
    for block in reversed(blocks):
        src_ids = block.srcdata[dgl.NID].cpu().numpy()
        dst_ids = block.dstdata[dgl.NID].cpu().numpy()
        new = np.setdiff1d(src_ids, order)  # sorted by id
        inputs_ = np.concatenate([order, new])
        u, v = (x.cpu().numpy() for x in block.edges())
        eid = block.edata[dgl.EID].cpu().numpy()
        s_pos, d_pos = _positions(inputs_, src_ids[u]), _positions(order, dst_ids[v])
        keep = np.lexsort((eid, s_pos, d_pos))
        s_pos, d_pos, eid = s_pos[keep], d_pos[keep], eid[keep]
        src_t, dst_t = torch.as_tensor(s_pos, device=dev), torch.as_tensor(d_pos, device=dev)
        layer = EdgeGraph(src_t, dst_t, graph.weight[torch.as_tensor(eid, device=dev)],
                          len(inputs_), num_dst=len(order))
        # GATConv takes the block itself
        layer._cache["dgl"] = dgl.create_block((src_t, dst_t), num_src_nodes=len(inputs_),
                                               num_dst_nodes=len(order), idtype=torch.int64,
                                               device=dev)
        layers.append(layer)
        order = inputs_
    return order, layers[::-1]


def _positions(order: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """The position of each of ``ids`` in ``order`` (every id is in it)."""
    sorter = np.argsort(order, kind="stable")
    return sorter[np.searchsorted(order, ids, sorter=sorter)]


def node_inputs(inputs: GraphInputs, nodes: np.ndarray, xy_rows: np.ndarray,
                cli: EdgeGraph) -> GraphInputs:
    """The model inputs of a mini-batch: spot rows and tile tokens of the input
    ``nodes``; xy of the output rows ``xy_rows`` (the CLI's prior reads them); the edges
    of the CLI's graph (the model is always called with ``graph=``, so no other reads)."""
    import torch

    from asign.train.batching import token_rows
    from asign.train.model import GraphInputs

    dev = inputs.spot.device
    rows = torch.as_tensor(nodes, device=dev)
    xy = None if inputs.xy is None else inputs.xy.index_select(
        0, torch.as_tensor(xy_rows, device=dev))
    return GraphInputs(inputs.spot.index_select(0, rows), token_rows(inputs.region, rows),
                       token_rows(inputs.global_, rows), cli.src, cli.dst, cli.weight,
                       None, xy)


def minibatch(graph: EdgeGraph, inputs: GraphInputs, seeds: np.ndarray,
              hops: int) -> tuple[GraphInputs, SampledGraph]:
    """The inputs and graph of one sampled mini-batch of sorted ``seeds``."""
    from asign.train.batching import block_subgraph

    nodes, layers = message_flow(graph, seeds, hops)
    among = block_subgraph(graph, seeds, 0).graph  # the edges among the seeds
    cli = SampledGraph(among.src, among.dst, among.weight, among.num_nodes, layers=layers)
    return node_inputs(inputs, nodes, seeds, cli), cli
