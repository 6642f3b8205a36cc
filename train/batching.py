"""Mini-batch training on spatial blocks and exact block-wise inference, for samples whose
whole graph does not fit one training step in memory.

Why: a whole-graph step keeps every activation for autograd — three GAT + transformer
layers, the cross-attention over token sets and ten propagation steps — about 490 KB
per spot at ``hidden=256``: ~7 GB for 14k spots, ~100 GB for 200k. Above
``TrainConfig.minibatch_above`` spots a graph is therefore cut into *blocks*; below it
nothing here is used and training is the whole-graph step, unchanged.

Blocks (:func:`spatial_blocks`): recursive median bisection of the aligned (x, y) plane,
always across the longer side, until a block holds at most ``block_spots`` spots. A block
is a column through every layer, so cross-layer edges mostly stay inside it.

A block's *subgraph* (:func:`block_subgraph`) is its spots (the *seeds*) plus every spot
within ``halo`` in-edge hops of them, with all edges among those nodes, taken from the
model's whole-graph :class:`EdgeGraph` (so edge weights keep their whole-graph scaling).
GAT layers are the only operations that mix nodes, each over one hop of in-edges; with
``halo`` ≥ the number of GAT layers the MSAGNet outputs of the seeds are therefore
*exactly* their whole-graph values.

Two plans use these blocks (:class:`BatchPlan`, ``kind``): ``blocks`` (``--minibatch-above``
/ ``--block-spots``) steps on each block's halo subgraph as described here; ``sampled``
(what ``--memory-gb`` chooses when the whole graph does not fit) steps on DGL-sampled
message-flow graphs of the block's seeds (sampling.py): the same exact MSAGNet outputs at
the seeds for less work (the halo only feeds the first layers), without recomputation.

Training (:func:`training_parts`): one optimiser step per block, blocks in a seeded
random order; the epoch's episode (known layer / known spots) is drawn on the whole graph
as before and restricted to each subgraph. Loss terms are taken on seeds only (each spot
counts once per epoch); halo spots feed the GAT and the CLI. During a block's step MSAGNet
recomputes its fusions and transformer layers in the backward pass
(``MSAGNet.checkpoint_activations``: same gradients, ~3x less activation memory). What
differs from a whole-graph step, and is therefore an approximation:

- the CLI propagates inside the subgraph only, so a seed's propagated label ignores known
  spots more than ``halo`` hops outside its block (whole-graph: ``cli_iters`` hops);
- PCC loss terms correlate over the block's spots rather than the whole graph's;
- there are more, smaller optimiser steps per epoch (as in any mini-batch SGD).

Inference (:func:`infer`): MSAGNet block by block on the same subgraphs (exact, see
above), no autograd, then the CLI once on the whole graph: equal to whole-graph inference
up to float summation order, at O(block) activation memory instead of O(N).
"""

from __future__ import annotations

import ctypes
import functools
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from asign.errors import ConfigError

if TYPE_CHECKING:
    from asign.train.config import TrainConfig
    from asign.train.loop import GraphTask
    from asign.train.model import GraphInputs, ModelOutput, TokenSet
    from asign.train.network import Network

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- plan


#: Memory of a whole-graph training step per spot at hidden = 256, beyond the data: about
#: 490 KB (bench/train.py, 8,000 synthetic spots, 256-d features: peak 4.19 GB − data
#: 0.39 GB; docs/platforms.md "Scale"). It scales with the hidden size.
STEP_BYTES_PER_SPOT_256 = 490e3
MIN_BLOCK_SPOTS = 32


def step_bytes_per_spot(hidden: int) -> float:
    return STEP_BYTES_PER_SPOT_256 * hidden / 256


#: Plans for a graph above the threshold: a training step per spatial block's halo
#: subgraph (this module), or per sampled mini-batch of a block's seeds (sampling.py).
PLAN_KINDS = ("blocks", "sampled")
#: A sampled mini-batch's activations per seed, relative to a whole-graph step per spot:
#: the seeds' outputs plus the halo's projections and first layer (measured at 50k spots,
#: docs/platforms.md "Scale", ≈ 1.5 input nodes per seed for 3-layer halos of 2–8k seeds).
SAMPLED_GROWTH = 2.0


@dataclass(frozen=True)
class BatchPlan:
    """When and how a graph is cut into blocks (from ``TrainConfig``)."""

    above: int  # graphs with more spots than this use blocks
    block_spots: int  # at most this many seed spots per block
    halo: int | None = None  # in-edge hops around a block; None: the number of GAT layers
    kind: str = "blocks"  # PLAN_KINDS: halo subgraphs, or DGL-sampled mini-batches
    checkpoint: bool = True  # recompute fusions and mixers in backward (less memory)

    def __post_init__(self) -> None:
        if self.above < 0 or self.block_spots < 1 or (self.halo is not None and self.halo < 0):
            raise ConfigError(
                f"mini-batch plan needs minibatch_above ≥ 0, block_spots ≥ 1, halo ≥ 0 "
                f"(got {self.above}, {self.block_spots}, {self.halo})",
                fix="e.g. minibatch_above=20000, block_spots=4096")
        if self.kind not in PLAN_KINDS:
            raise ConfigError(f"unknown mini-batch plan {self.kind!r}",
                              fix=f"use one of {', '.join(PLAN_KINDS)}")

    @classmethod
    def of(cls, cfg: TrainConfig) -> BatchPlan:
        """From ``minibatch_above`` / ``block_spots`` (halo subgraphs, checkpointed), or
        from the memory budget ``memory_gb``: whole graph while N × ``step_bytes_per_spot``
        fits it, else DGL-sampled mini-batches (sampling.py) of as many seeds as fit it
        (≈ ``SAMPLED_GROWTH`` × a whole-graph step per seed), without recomputation."""
        if cfg.memory_gb is None:
            return cls(cfg.minibatch_above, cfg.block_spots, cfg.block_halo)
        fit = int(cfg.memory_gb * 1e9 / step_bytes_per_spot(cfg.hidden))
        block = max(MIN_BLOCK_SPOTS, int(fit / SAMPLED_GROWTH))
        return cls(fit, block, cfg.block_halo, kind="sampled", checkpoint=False)

    def active(self, n_spots: int) -> bool:
        return n_spots > self.above

    def hops(self, model: Network) -> int:
        return len(model.net.gats) if self.halo is None else self.halo


# --------------------------------------------------------------------------- geometry


def spatial_blocks(xy: np.ndarray, block_spots: int) -> list[np.ndarray]:
    """Partition spots into blocks of at most ``block_spots`` by recursive median
    bisection of (x, y) across the longer side. Deterministic; sorted indices per block,
    blocks in a fixed spatial order. O(N log N)."""
    xy = np.asarray(xy, dtype=np.float64)
    if block_spots < 1:
        raise ConfigError(f"block_spots must be ≥ 1, got {block_spots}")
    out: list[np.ndarray] = []
    stack = [np.arange(len(xy))]
    while stack:
        idx = stack.pop()
        if len(idx) <= block_spots:
            if len(idx):
                out.append(np.sort(idx))
            continue
        pts = xy[idx]
        axis = int(np.argmax(np.ptp(pts, axis=0)))
        # ties broken by spot index: the same split on every machine
        order = np.lexsort((idx, pts[:, axis]))
        half = len(idx) // 2
        stack += [idx[order[half:]], idx[order[:half]]]
    return out


# --------------------------------------------------------------------------- subgraphs


@dataclass(eq=False)
class InEdges:
    """The in-edges of every node of an :class:`EdgeGraph` in CSR form (by dst)."""

    indptr: np.ndarray  # (N + 1,)
    edge: np.ndarray  # (E,) edge ids, grouped by dst, in edge-list order within a dst
    src: np.ndarray  # (E,) src of those edges

    @classmethod
    def of(cls, graph: Any) -> InEdges:
        if "in_edges" not in graph._cache:
            dst = graph.dst.cpu().numpy()
            src = graph.src.cpu().numpy()
            edge = np.argsort(dst, kind="stable")
            counts = np.bincount(dst, minlength=graph.num_nodes)
            indptr = np.concatenate([[0], np.cumsum(counts)])
            graph._cache["in_edges"] = cls(indptr, edge, src[edge])
        return graph._cache["in_edges"]

    def ranges(self, rows: np.ndarray) -> np.ndarray:
        """Positions (into ``edge``/``src``) of the in-edges of ``rows``."""
        start, stop = self.indptr[rows], self.indptr[rows + 1]
        lengths = stop - start
        total = int(lengths.sum())
        if total == 0:
            return np.zeros(0, dtype=np.int64)
        offsets = np.repeat(start - np.cumsum(lengths) + lengths, lengths)
        return offsets + np.arange(total)


@dataclass
class Subgraph:
    """A block's nodes (sorted global ids), which of them are seeds, and its edges."""

    nodes: np.ndarray  # (n,) int64 global node ids, sorted
    seed: np.ndarray  # (n,) bool
    edges: np.ndarray  # (e,) int64 edge ids of the whole graph, sorted
    graph: Any  # EdgeGraph over local ids 0..n-1


def block_subgraph(graph: Any, seeds: np.ndarray, hops: int) -> Subgraph:
    """Seeds + their ``hops``-hop in-neighbourhood, with every edge among those nodes."""
    import torch

    from asign.train.gnn import EdgeGraph

    ins = InEdges.of(graph)
    n = graph.num_nodes
    mark = np.zeros(n, dtype=bool)
    mark[seeds] = True
    frontier = np.asarray(seeds, dtype=np.int64)
    for _ in range(hops):
        nb = np.unique(ins.src[ins.ranges(frontier)])
        frontier = nb[~mark[nb]]
        if not frontier.size:
            break
        mark[frontier] = True
    nodes = np.flatnonzero(mark)
    pos = ins.ranges(nodes)
    keep = mark[ins.src[pos]]
    edges = np.sort(ins.edge[pos[keep]])  # whole-graph order: same sums as the whole graph
    local = np.full(n, -1, dtype=np.int64)
    local[nodes] = np.arange(nodes.size)
    e = torch.as_tensor(edges, device=graph.src.device)
    sub = EdgeGraph(torch.as_tensor(local[graph.src.cpu().numpy()[edges]], device=graph.src.device),
                    torch.as_tensor(local[graph.dst.cpu().numpy()[edges]], device=graph.src.device),
                    graph.weight[e], int(nodes.size))
    seed = np.zeros(nodes.size, dtype=bool)
    seed[local[seeds]] = True
    return Subgraph(nodes, seed, edges, sub)


def subset_inputs(inputs: GraphInputs, sub: Subgraph) -> GraphInputs:
    """The model inputs of a subgraph: node rows, the tile tokens those rows use, edges."""
    import torch

    from asign.train.model import GraphInputs

    rows = torch.as_tensor(sub.nodes, device=inputs.spot.device)
    e = torch.as_tensor(sub.edges, device=inputs.spot.device)
    kind = None if inputs.edge_kind is None else inputs.edge_kind[e]
    xy = None if inputs.xy is None else inputs.xy.index_select(0, rows)
    return GraphInputs(inputs.spot.index_select(0, rows), token_rows(inputs.region, rows),
                       token_rows(inputs.global_, rows), sub.graph.src, sub.graph.dst,
                       sub.graph.weight, kind, xy)


def token_rows(ts: TokenSet, rows: Any) -> TokenSet:
    """The token sets of ``rows`` (a tensor of node ids), with only the tiles they use."""
    import torch

    from asign.train.model import TokenSet

    index = ts.index.index_select(0, rows)
    used, inverse = torch.unique(index.clamp(min=0), return_inverse=True)
    return TokenSet(ts.emb.index_select(0, used), torch.where(index >= 0, inverse, -1))


# --------------------------------------------------------------------------- training


@functools.cache
def _malloc_trim() -> Any:
    try:
        return ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None


def release_freed_memory() -> None:
    """Give freed heap memory back to the OS (glibc ``malloc_trim``; no-op elsewhere).

    A block step frees about a GB of activations in pieces of a few MB, which glibc keeps
    in its heap and reuses poorly: without this the RSS of a 200k-spot epoch creeps from
    2.7 to over 6 GB while the memory in use stays under 4 GB."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@dataclass
class Part:
    """One optimiser step's worth of a graph: the whole graph, or one block's subgraph.

    ``known``/``hidden``/``train`` are (n,) bool tensors over the part's nodes; ``rows``
    restricts every loss term to the seeds (None: all nodes); ``graph`` is the part's
    EdgeGraph (None: the model builds the whole graph's, as always)."""

    task: GraphTask  # loop.GraphTask over the part's nodes
    inputs: GraphInputs  # the model inputs of those nodes
    known: Any
    hidden: Any
    train: Any
    rows: Any = None
    graph: Any = None


@dataclass
class BlockStats:
    """What mini-batch training did on one graph in its last epoch (run timings)."""

    blocks: int = 0
    seeds: int = 0
    nodes_per_epoch: int = 0
    max_block_nodes: int = 0
    above: int = 0  # the plan: graphs above this many spots train on blocks …
    block_spots: int = 0  # … of at most this many seeds (from --memory-gb when given)
    kind: str = "blocks"  # … as halo subgraphs or as DGL-sampled mini-batches
    checkpoint: bool = True  # … recomputing activations in backward or not


def _asignnet(model: Network) -> Network:
    """The ASIGNNet inside ``model``; blocks need its ``edge_graph`` and ``net``."""
    if hasattr(model, "encoder"):  # finetune.FinetuneModel
        raise ConfigError("fine-tuning the spot encoder works on whole graphs only, and "
                          "this graph is above minibatch_above spots",
                          fix="raise minibatch_above, or drop --finetune-spot-encoder")
    return model


def _blocks(task: GraphTask, plan: BatchPlan) -> list[np.ndarray]:
    key = ("blocks", plan.block_spots)
    if key not in task.cache:
        if task.inputs.xy is None:
            raise ConfigError(f"graph {task.name} has no spot coordinates for spatial blocks",
                              fix="build its inputs with xy (loop.make_task does)")
        task.cache[key] = spatial_blocks(task.inputs.xy.cpu().numpy(), plan.block_spots)
    return task.cache[key]


def training_parts(plan: BatchPlan, model: Network, task: GraphTask, inputs: GraphInputs,
                   known: np.ndarray, hidden: np.ndarray,
                   rng: np.random.Generator) -> Iterator[Part]:
    """The steps of one graph in one epoch: the whole graph (``inputs`` as given) at or
    below the plan's threshold, else one :class:`Part` per block that holds training
    spots, in an order drawn from ``rng``, each built when it is needed (one block's
    tensors in memory at a time). ``known``/``hidden``: the episode's (N,) masks."""
    import torch

    dev = task.y.device

    def mask(m: np.ndarray) -> Any:
        return torch.as_tensor(m, device=dev)

    if not plan.active(len(task.train)):
        yield Part(task, inputs, mask(known), mask(hidden), mask(task.train))
        return
    net = _asignnet(model)
    graph = net.edge_graph(inputs)
    blocks = _blocks(task, plan)
    stats = task.cache["batching"] = BlockStats(above=plan.above, block_spots=plan.block_spots,
                                                kind=plan.kind, checkpoint=plan.checkpoint)
    for b in rng.permutation(len(blocks)):
        if not task.train[blocks[b]].any():
            continue  # no label to learn from in this block
        if plan.kind == "sampled":
            from asign.train.sampling import minibatch

            nodes = blocks[b]
            if not known[nodes].any():
                continue  # the CLI propagates among the seeds: from none here
            part_inputs, part_graph = minibatch(graph, inputs, nodes, plan.hops(net))
            seed_np = np.ones(nodes.size, dtype=bool)
            n_in = part_inputs.num_nodes
        else:
            sub = block_subgraph(graph, blocks[b], plan.hops(net))
            part_inputs, part_graph = subset_inputs(inputs, sub), sub.graph
            nodes, seed_np, n_in = sub.nodes, sub.seed, int(sub.nodes.size)
        stats.blocks += 1
        stats.seeds += int(seed_np.sum())
        stats.nodes_per_epoch += n_in
        stats.max_block_nodes = max(stats.max_block_nodes, n_in)
        seed = mask(seed_np)
        part = subset_task(task, part_inputs, nodes, seed_np)
        net.net.checkpoint_activations = plan.checkpoint  # while the caller steps on it
        try:
            yield Part(part, part.inputs, mask(known[nodes]),
                       mask(hidden[nodes]) & seed, mask(task.train[nodes]) & seed,
                       rows=seed, graph=part_graph)
        finally:
            net.net.checkpoint_activations = False
        del part, part_inputs, part_graph
        release_freed_memory()


def subset_task(task: GraphTask, inputs: GraphInputs, nodes: np.ndarray,
                seed_np: np.ndarray) -> GraphTask:
    """The GraphTask of the output rows ``nodes`` of a part whose model inputs are
    ``inputs``; region/global targets count on the seeds (``seed_np``) only."""
    from dataclasses import replace

    import torch

    rows = torch.as_tensor(nodes, device=task.y.device)
    seed = torch.as_tensor(seed_np, device=task.y.device)
    n = nodes
    return replace(
        task, inputs=inputs, section=task.section[n],
        visible=task.visible[n], train=task.train[n], val=task.val[n],
        y=task.y.index_select(0, rows),
        region_target=task.region_target.index_select(0, rows),
        region_mask=task.region_mask.index_select(0, rows) & seed,
        global_target=task.global_target.index_select(0, rows),
        global_mask=task.global_mask.index_select(0, rows) & seed, cache={})


# --------------------------------------------------------------------------- inference


def infer(plan: BatchPlan, model: Network, task: GraphTask, inputs: GraphInputs,
          known: Any | None) -> ModelOutput:
    """The model's whole-graph output on ``inputs`` (the task's, or live fine-tuned ones)
    without autograd: one forward at or below the plan's threshold, else MSAGNet block by
    block and the CLI on the whole graph. ``known``: (N,) bool tensor of the spots the CLI
    propagates from (None: MSAGNet's output). Block by block, the region and global heads'
    outputs are left empty (0 rows): only the training loss reads them, and two N × G
    buffers are GBs at Visium HD scale."""
    import torch

    with torch.no_grad():
        if not plan.active(len(task.train)):
            return model(inputs) if known is None else model(inputs, task.y, known)
        from asign.train.model import ModelOutput

        net = _asignnet(model)
        graph = net.edge_graph(inputs)
        n = graph.num_nodes
        release_freed_memory()  # what training left in the heap, before N-sized buffers
        fields_: dict[str, Any] = {}
        for seeds in _blocks(task, plan):
            if plan.kind == "sampled":
                from asign.train.sampling import message_flow, node_inputs

                nodes, layers = message_flow(graph, seeds, plan.hops(net))
                out = net.net(node_inputs(inputs, nodes, seeds, layers[-1]), layers)
                seed_at = np.arange(seeds.size)
            else:
                sub = block_subgraph(graph, seeds, plan.hops(net))
                out = net.net(subset_inputs(inputs, sub), sub.graph)
                seed_at = np.flatnonzero(sub.seed)
            rows = torch.as_tensor(seeds, device=task.y.device)
            pick = torch.as_tensor(seed_at, device=task.y.device)
            # MSAGNet returns one tensor as spot and spot_model: then one buffer for both
            shared = out.spot_model is out.spot
            for name in ("spot", "region", "global_", "embedding", *(() if shared else
                                                                     ("spot_model",))):
                value = getattr(out, name)
                rows_kept = 0 if name in ("region", "global_") else n
                if name not in fields_:
                    fields_[name] = value.new_zeros((rows_kept, *value.shape[1:]))
                if rows_kept:
                    fields_[name][rows] = value.index_select(0, pick)
            del out
            release_freed_memory()
        net_out = ModelOutput(**{"spot_model": fields_["spot"], **fields_})
        if known is None:
            return net_out
        return model(inputs, task.y, known, graph=graph, net_out=net_out)
