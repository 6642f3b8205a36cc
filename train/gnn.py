"""Weighted multi-head graph attention (GAT) with two interchangeable engines.

Edge convention (used everywhere in ``asign.train``): a graph is given as ``src``, ``dst``
int64 tensors of shape (E,) and ``weight`` float32 (E,); messages flow ``src → dst``, so node
i aggregates over its *in*-edges j → i.

The math of one layer, for head k (``fc`` has no bias; ``attn_l``/``attn_r`` are (1, H, F)):

    z_j   = fc(h_j) viewed as (H, F)
    e_ji  = LeakyReLU_0.2(<z_j, attn_l> + <z_i, attn_r>)        for each edge j → i
    α_ji  = softmax over the in-edges of i of e_ji                (then attention dropout)
    out_i = Σ_j α_ji · weight_ji · z_j  (+ residual(h_i)) (+ bias)

i.e. the edge weight scales the *softmaxed* attention, as DGL's ``GATConv(edge_weight=…)``
does. Nodes without in-edges get only residual + bias.

Engines, chosen in one place (:data:`GAT_ENGINES` / :func:`make_gat`):

- ``"dgl"``: DGL's ``GATConv`` (default on CPU: faster and leaner there; PyPI's DGL is
  CPU-only);
- ``"pyg"``: a torch-geometric ``MessagePassing`` with the same math and the *same state dict
  layout* (``conv.fc.weight``, ``conv.attn_l``, ``conv.attn_r``, ``conv.bias`` or
  ``conv.res_fc.*``) — a checkpoint from one engine loads into the other unchanged; use it
  on CUDA.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor, nn

from asign.errors import ConfigError

Engine = Literal["dgl", "pyg"]


@dataclass(eq=False)
class EdgeGraph:
    """A directed weighted graph over ``num_nodes`` nodes; messages flow src → dst.

    Engine-specific structures (a ``DGLGraph``, a PyG ``edge_index``) are built on first use
    and cached on the instance, so build one EdgeGraph per sample and reuse it.
    """

    src: Tensor
    dst: Tensor
    weight: Tensor
    num_nodes: int
    #: a message-flow graph (one layer of a sampled mini-batch, train/sampling.py): only
    #: nodes 0..num_dst-1 receive messages and a layer outputs those rows; None: all nodes
    num_dst: int | None = None
    _cache: dict[str, Any] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.src.shape != self.dst.shape or self.src.shape != self.weight.shape:
            raise ConfigError(
                f"edge arrays differ in shape: src {tuple(self.src.shape)}, "
                f"dst {tuple(self.dst.shape)}, weight {tuple(self.weight.shape)}",
                fix="pass src, dst and weight as 1-D tensors of the same length",
            )

    @property
    def num_edges(self) -> int:
        return int(self.src.shape[0])

    def dgl(self) -> Any:
        if "dgl" not in self._cache:
            from asign.compat.dgl import import_dgl

            dgl = import_dgl()
            self._cache["dgl"] = dgl.graph(
                (self.src, self.dst), num_nodes=self.num_nodes, idtype=torch.int64,
                device=self.src.device,
            )
        return self._cache["dgl"]

    def edge_index(self) -> Tensor:
        if "edge_index" not in self._cache:
            self._cache["edge_index"] = torch.stack([self.src, self.dst])
        return self._cache["edge_index"]


def _init_like_dgl(fc: nn.Linear, attn_l: Tensor, attn_r: Tensor, bias: Tensor | None,
                   res_fc: nn.Module | None) -> None:
    """DGL's GATConv.reset_parameters, in its RNG order, so equal seeds give equal weights."""
    gain = nn.init.calculate_gain("relu")
    nn.init.xavier_normal_(fc.weight, gain=gain)
    nn.init.xavier_normal_(attn_l, gain=gain)
    nn.init.xavier_normal_(attn_r, gain=gain)
    if bias is not None:
        nn.init.constant_(bias, 0)
    if isinstance(res_fc, nn.Linear):
        nn.init.xavier_normal_(res_fc.weight, gain=gain)
        if res_fc.bias is not None:
            nn.init.constant_(res_fc.bias, 0)


@functools.cache
def _pyg_conv_class() -> type[nn.Module]:
    """Build the PyG layer class on first use: torch_geometric takes seconds to import."""
    from torch_geometric.nn import MessagePassing
    from torch_geometric.utils import softmax

    class WeightedGATConv(MessagePassing):
        """DGL GATConv's math and parameter names on PyG (see the module docstring)."""

        def __init__(self, in_dim: int, out_dim: int, heads: int, *, feat_drop: float,
                     attn_drop: float, residual: bool, bias: bool, negative_slope: float):
            super().__init__(aggr="add", flow="source_to_target", node_dim=0)
            self.heads, self.out_dim = heads, out_dim
            # Same construction order as DGL GATConv: fc, attn_l, attn_r, res_fc, bias.
            self.fc = nn.Linear(in_dim, out_dim * heads, bias=False)
            self.attn_l = nn.Parameter(torch.empty(1, heads, out_dim))
            self.attn_r = nn.Parameter(torch.empty(1, heads, out_dim))
            self.feat_drop = nn.Dropout(feat_drop)
            self.attn_drop = nn.Dropout(attn_drop)
            self.leaky_relu = nn.LeakyReLU(negative_slope)
            linear_res = residual and in_dim != out_dim * heads
            self.res_fc: nn.Module | None
            if linear_res:
                self.res_fc = nn.Linear(in_dim, heads * out_dim, bias=bias)
            elif residual:
                self.res_fc = nn.Identity()
            else:
                self.register_buffer("res_fc", None)
            self.bias: Tensor | None
            if bias and not linear_res:
                self.bias = nn.Parameter(torch.empty(heads * out_dim))
            else:
                self.register_buffer("bias", None)
            _init_like_dgl(self.fc, self.attn_l, self.attn_r, self.bias, self.res_fc)

        def forward(self, h: Tensor, edge_index: Tensor, edge_weight: Tensor) -> Tensor:
            n = h.shape[0]
            h = self.feat_drop(h)
            z = self.fc(h).view(n, self.heads, self.out_dim)
            el = (z * self.attn_l).sum(-1)  # (N, H): source term
            er = (z * self.attn_r).sum(-1)  # (N, H): destination term
            out = self.propagate(edge_index, z=z, el=el, er=er, edge_weight=edge_weight,
                                 size=(n, n))
            if self.res_fc is not None:
                out = out + self.res_fc(h).view(n, -1, self.out_dim)
            if self.bias is not None:
                out = out + self.bias.view(1, self.heads, self.out_dim)
            return out

        def message(self, z_j: Tensor, el_j: Tensor, er_i: Tensor, edge_weight: Tensor,
                    index: Tensor, ptr: Tensor | None, size_i: int | None) -> Tensor:
            alpha = softmax(self.leaky_relu(el_j + er_i), index, ptr, size_i)  # per dst
            alpha = self.attn_drop(alpha) * edge_weight.unsqueeze(-1)
            return z_j * alpha.unsqueeze(-1)

    return WeightedGATConv


class GATLayer(nn.Module):
    """One weighted multi-head GAT layer: (N, in_dim) → (N, heads·out_dim), heads concatenated.

    ``engine`` picks the implementation; parameters live under ``conv.`` with DGL's names in
    both engines. ``activation`` is applied after concatenating the heads.
    """

    def __init__(self, engine: Engine, in_dim: int, out_dim: int, heads: int, *,
                 feat_drop: float = 0.0, attn_drop: float = 0.0, residual: bool = True,
                 bias: bool = True, negative_slope: float = 0.2,
                 activation: nn.Module | None = None):
        super().__init__()
        self.engine = engine
        kwargs = dict(feat_drop=feat_drop, attn_drop=attn_drop, residual=residual, bias=bias,
                      negative_slope=negative_slope)
        if engine == "dgl":
            from asign.compat.dgl import import_dgl

            import_dgl()
            from dgl.nn.pytorch import GATConv

            self.conv = GATConv(in_dim, out_dim, heads, allow_zero_in_degree=True, **kwargs)
        else:
            self.conv = _pyg_conv_class()(in_dim, out_dim, heads, **kwargs)
        self.activation = activation if activation is not None else nn.Identity()

    def forward(self, h: Tensor, graph: EdgeGraph) -> Tensor:
        # Always float32, also under autocast: DGL's sparse kernels need node and edge
        # features of one dtype, and both engines should stay numerically identical.
        with torch.autocast(h.device.type, enabled=False):
            h, weight = h.float(), graph.weight.float()
            if self.engine == "dgl":
                if h.device.type != "cpu":
                    raise ConfigError(f"the DGL GAT engine cannot run on {h.device.type}",
                                      fix="use --gnn pyg (same math and weights) off the CPU")
                out = self.conv(graph.dgl(), h, edge_weight=weight)
            else:
                out = self.conv(h, graph.edge_index(), weight)
            if graph.num_dst is not None:  # DGL returns these rows of a block already
                out = out[:graph.num_dst]
            return self.activation(out.flatten(1))


GAT_ENGINES: dict[str, str] = {
    "dgl": "DGL GATConv with edge_weight (CPU; PyPI's DGL has no CUDA build for new torch)",
    "pyg": "torch-geometric MessagePassing, same math and state dict (CPU or CUDA)",
}


def resolve_engine(engine: str, device: torch.device | str | None = None) -> Engine:
    """Map ``"auto"`` to DGL on CPU and PyG on an accelerator; reject unknown names.

    Without ``device``, ``"auto"`` means PyG when CUDA is available (PyPI's DGL cannot run
    there), else DGL. A model built with DGL runs on CPU only.
    """
    if engine == "auto":
        if device is None:
            return "pyg" if torch.cuda.is_available() else "dgl"
        return "dgl" if torch.device(device).type == "cpu" else "pyg"
    if engine not in GAT_ENGINES:
        raise ConfigError(
            f"unknown GAT engine {engine!r}",
            fix=f"choose one of: auto, {', '.join(GAT_ENGINES)}",
        )
    return engine  # type: ignore[return-value]


def make_gat(engine: str, in_dim: int, out_dim: int, heads: int, **kwargs: Any) -> GATLayer:
    """The single place where a GAT engine is chosen; ``kwargs`` go to :class:`GATLayer`."""
    return GATLayer(resolve_engine(engine), in_dim, out_dim, heads, **kwargs)
