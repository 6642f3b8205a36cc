"""MSAGNet (DESIGN §4) and the full ASIGN model (MSAGNet + cross-layer imputation).

One forward pass sees one whole sample: every spot of every section is a node of one graph.

Data flow, with h = ``hidden_dim``:

1. Project the spot embedding (N, D) and the region/global tile embeddings (T, D) to h once
   (tiles are shared between spots, so they are projected per tile, not per spot).
2. Cross-attention fusion, per level: the spot token is the query, the keys/values are the
   spot's *token set* — its own tile (token 0, marked by a learned embedding) and its
   neighbouring tiles, padding masked out — with a residual to the spot token. Then
   [spot, fused-region, fused-global] → Linear → the node feature.
3. Spatial-aware GAT block, ``n_gat_layers`` times: a weighted multi-head GAT over the 3D
   spot graph (see :mod:`asign.train.gnn`), then a transformer encoder layer over each node's
   own 3-token sequence [GAT output, region, global], shaped (N, 3, h) by ``stack(dim=1)``
   so no token ever mixes with another node's.
4. Heads: spot, region and global regression heads, each (N, G).

:class:`ASIGNNet` adds :class:`~asign.train.cli_block.CLIBlock` on top and implements the
``asign3d`` / ``asign2d`` variants from one :class:`ModelConfig` (see :data:`MODEL_VARIANTS`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

import torch
from torch import Tensor, nn

from asign.errors import AsignError, ConfigError
from asign.schemas.vocabulary import EDGE_KINDS as EDGE_VOCABULARY
from asign.train.cli_block import CLIBlock, spatial_prior
from asign.train.config import MODELS
from asign.train.gnn import EdgeGraph, make_gat, resolve_engine

#: Integer codes of the ``kind`` column of the store's edge table.
#: edge kind → the code stored in ``GraphInputs.edge_kind``
EDGE_KINDS: dict[str, int] = {kind: code for code, kind in enumerate(EDGE_VOCABULARY)}


@dataclass
class TokenSet:
    """Per-spot sets of tile tokens, stored once per tile.

    ``emb`` (T, D) holds one embedding per tile; ``index`` (N, R) lists, for each spot, the
    rows of ``emb`` in its set, the spot's own tile first, ``-1`` for padding. Every spot
    needs at least one token.
    """

    emb: Tensor
    index: Tensor

    @classmethod
    def from_dense(cls, tokens: Tensor, mask: Tensor) -> TokenSet:
        """From per-spot tokens (N, R, D) and a validity mask (N, R), True = real token."""
        n, r, d = tokens.shape
        index = torch.arange(n * r, device=tokens.device).view(n, r)
        return cls(tokens.reshape(n * r, d), torch.where(mask.bool(), index, -1))

    @property
    def mask(self) -> Tensor:
        """(N, R) bool, True where a real token is present."""
        return self.index >= 0

    def to(self, device: torch.device | str) -> TokenSet:
        return TokenSet(self.emb.to(device), self.index.to(device))


@dataclass(eq=False)
class GraphInputs:
    """Everything the model reads for one sample (one graph). Edges flow src → dst.

    ``edge_kind`` holds :data:`EDGE_KINDS` codes; it is required by ``asign2d`` (which drops
    cross-layer edges) and by per-kind edge weight scaling.
    """

    spot: Tensor                 # (N, D) spot embeddings
    region: TokenSet             # region tile token sets
    global_: TokenSet            # global tile token sets
    src: Tensor                  # (E,) int64
    dst: Tensor                  # (E,) int64
    edge_weight: Tensor          # (E,) float32, ≥ 0
    edge_kind: Tensor | None = None  # (E,) int64
    xy: Tensor | None = None     # (N, 2) aligned µm; needed by the CLI's spatial prior
    _cache: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def num_nodes(self) -> int:
        return int(self.spot.shape[0])

    def to(self, device: torch.device | str) -> GraphInputs:
        kind = None if self.edge_kind is None else self.edge_kind.to(device)
        xy = None if self.xy is None else self.xy.to(device)
        return GraphInputs(self.spot.to(device), self.region.to(device),
                           self.global_.to(device), self.src.to(device), self.dst.to(device),
                           self.edge_weight.to(device), kind, xy)

    def validate(self) -> None:
        """Raise :class:`AsignError` listing what is inconsistent (cheap: O(N·R + E))."""
        n = self.num_nodes
        problems = []
        for name, tokens in (("region", self.region), ("global", self.global_)):
            if tokens.index.dim() != 2 or tokens.index.shape[0] != n:
                problems.append(f"{name} index {tuple(tokens.index.shape)} is not (N={n}, R)")
                continue
            if tokens.emb.shape[-1] != self.spot.shape[-1]:
                problems.append(f"{name} tokens have dim {tokens.emb.shape[-1]}, "
                                f"spots {self.spot.shape[-1]}")
            if n and not bool(tokens.mask.any(1).all()):
                problems.append(f"{int((~tokens.mask.any(1)).sum())} spots have no {name} token")
            if n and int(tokens.index.max()) >= tokens.emb.shape[0]:
                problems.append(f"{name} index points past its {tokens.emb.shape[0]} tokens")
        e = self.src.shape[0]
        if not (self.dst.shape == (e,) and self.edge_weight.shape == (e,)):
            problems.append("src, dst and edge_weight differ in length")
        elif e and (int(self.src.min()) < 0 or int(torch.maximum(self.src, self.dst).max()) >= n
                    or int(self.dst.min()) < 0):
            problems.append(f"edge endpoints outside 0..{n - 1}")
        if e and not bool(torch.isfinite(self.edge_weight).all() & (self.edge_weight >= 0).all()):
            problems.append("edge weights must be finite and ≥ 0")
        if self.edge_kind is not None and self.edge_kind.shape != (e,):
            problems.append("edge_kind differs in length from the edges")
        if self.xy is not None and self.xy.shape != (n, 2):
            problems.append(f"xy {tuple(self.xy.shape)} is not (N={n}, 2)")
        if problems:
            raise AsignError("model inputs: " + "; ".join(problems),
                             fix="rebuild the sample's tensors from the store (train/data.py)")


def drop_edges(inputs: GraphInputs, kind: str) -> GraphInputs:
    """A copy of ``inputs`` without the edges of ``kind`` (e.g. ``"cross_layer"`` for 2D)."""
    if kind not in EDGE_KINDS:
        raise ConfigError(f"unknown edge kind {kind!r}", fix=f"use one of {list(EDGE_KINDS)}")
    if inputs.edge_kind is None:
        raise AsignError("cannot drop edges by kind: edge_kind is missing",
                         fix="pass GraphInputs.edge_kind (the store's edges.kind column)")
    keep = inputs.edge_kind != EDGE_KINDS[kind]
    return replace(inputs, src=inputs.src[keep], dst=inputs.dst[keep],
                   edge_weight=inputs.edge_weight[keep], edge_kind=inputs.edge_kind[keep],
                   _cache={})


def scale_edge_weights(weight: Tensor, kind: Tensor | None) -> Tensor:
    """Divide each kind's weights by that kind's maximum, so every kind spans (0, 1].

    Same-layer weights are 1/distance (≈ 0.005 per µm at a 200 µm pitch) and cross-layer
    weights IoU × cosine (≤ 1): unscaled, the GAT would all but ignore same-layer edges and
    the propagation would follow cross-layer edges almost only.
    """
    out = weight.clone()
    groups = [torch.ones_like(weight, dtype=torch.bool)] if kind is None else [
        kind == code for code in torch.unique(kind).tolist()]
    for sel in groups:
        if bool(sel.any()):
            top = out[sel].max()
            if top > 0:
                out[sel] = out[sel] / top
    return out


@dataclass(frozen=True)
class ModelConfig:
    """Architecture and variant switches. ``hidden_dim`` must be divisible by ``n_heads``."""

    in_dim: int = 1024
    n_genes: int = 250
    hidden_dim: int = 128
    n_heads: int = 4
    n_gat_layers: int = 3
    dropout: float = 0.1
    attn_dropout: float = 0.0
    engine: str = "auto"                     # GAT engine: auto | dgl | pyg (see gnn.py)
    edge_weight_scaling: str = "kind_max"    # kind_max | none (see scale_edge_weights)
    cross_layer_edges: bool = True           # False: asign2d (same-layer edges only)
    use_cli: bool = True                     # cross-layer imputation block
    cross_attention: bool = True             # False (ablation): attend to the own tile only
    cli_iters: int = 10
    cli_per_node_gate: bool = False
    cli_spatial_prior: bool = False          # blend an IDW prior too (cli_block.py); needs xy
    cli_prior_k: int = 8
    cli_prior_power: float = 1.0

    def __post_init__(self) -> None:
        if self.hidden_dim % self.n_heads:
            raise ConfigError(f"hidden_dim {self.hidden_dim} is not divisible by "
                              f"n_heads {self.n_heads}", fix="pick e.g. 128 and 4")
        if not 0.0 <= self.dropout < 1.0 or not 0.0 <= self.attn_dropout < 1.0:
            raise ConfigError("dropout must be in [0, 1)", fix="e.g. --dropout 0.1")
        if self.edge_weight_scaling not in ("kind_max", "none"):
            raise ConfigError(f"unknown edge_weight_scaling {self.edge_weight_scaling!r}",
                              fix="use kind_max or none")
        resolve_engine(self.engine)


#: Variant name → the config fields it fixes (the networks of the model registry,
#: ``ModelSpec.network``); everything else comes from defaults/overrides.
MODEL_VARIANTS: dict[str, Mapping[str, Any]] = {
    name: spec.network for name, spec in MODELS.items() if spec.network is not None}


def model_config(variant: str, **overrides: Any) -> ModelConfig:
    """The :class:`ModelConfig` of a named variant, with ``overrides`` for the free fields."""
    if variant not in MODEL_VARIANTS:
        raise ConfigError(f"unknown model variant {variant!r}",
                          fix=f"choose one of {', '.join(MODEL_VARIANTS)}")
    names = {f.name for f in fields(ModelConfig)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise ConfigError(f"unknown model options {unknown}", fix=f"valid: {sorted(names)}")
    fixed = dict(MODEL_VARIANTS[variant])
    if overrides.get("use_cli") is False:  # an ablation may remove the CLI of asign3d
        fixed.pop("use_cli", None)
    clash = {k for k in overrides if k in fixed and overrides[k] != fixed[k]}
    if clash:
        raise ConfigError(f"{variant} fixes {sorted(clash)}",
                          fix="pick the variant that has the setting you want")
    return ModelConfig(**{**overrides, **fixed})


@dataclass
class ModelOutput:
    """Per-node outputs, each (N, G) unless noted."""

    spot: Tensor                  # final spot prediction (after CLI when enabled)
    # region / global-level prediction of the spot's own region / global tile; 0 rows
    # from block-by-block inference (batching.infer: only the training loss reads them)
    region: Tensor
    global_: Tensor
    spot_model: Tensor            # spot prediction of MSAGNet alone (before CLI)
    embedding: Tensor             # (N, h) final node embedding
    reached: Tensor | None = None  # (N,) bool, CLI only: known or reached by propagation
    gate: Tensor | None = None     # CLI only, see CLIOutput.gate
    y_prop: Tensor | None = None   # CLI only: propagated labels
    prior: Tensor | None = None    # CLI with spatial prior only: the IDW prior


def _mlp_head(h: int, g: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(nn.Linear(h, h), nn.GELU(), nn.Dropout(dropout), nn.Linear(h, g))


def _projection(d: int, h: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d, h), nn.LayerNorm(h), nn.GELU(), nn.Dropout(dropout))


class CrossAttentionFusion(nn.Module):
    """Multi-head attention of the spot token (query) over its tile token set, with a residual.

    Keys and values are projected once per *tile* and then gathered per spot: the same
    result as projecting the gathered (N, R, h) tokens, at a fraction of the cost, since a
    tile is shared by many spots. Token 0 (the spot's own tile) gets learned key/value
    offsets so attention can tell it from the neighbours. Padding (index −1) is masked out.
    """

    def __init__(self, h: int, heads: int, dropout: float):
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v, self.out = (nn.Linear(h, h) for _ in range(4))
        self.own_k = nn.Parameter(torch.zeros(h))
        self.own_v = nn.Parameter(torch.zeros(h))
        self.attn_drop = nn.Dropout(dropout)
        self.drop = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(h)

    def _per_head(self, table: Tensor, index: Tensor) -> Tensor:
        """Tile rows (T, h) → per-spot tokens (H·N, R, dh), gathered straight into bmm layout."""
        (t, h), (n, r) = table.shape, index.shape
        by_head = table.view(t, self.heads, h // self.heads).transpose(0, 1).contiguous()
        rows = by_head.index_select(1, index.clamp(min=0).flatten())         # (H, N·R, dh)
        return rows.view(self.heads * n, r, -1)

    def forward(self, query: Tensor, tile_h: Tensor, index: Tensor) -> Tensor:
        n, h = query.shape
        r, heads = index.shape[1], self.heads
        dh = h // heads
        q = self.q(query).view(n, heads, dh).transpose(0, 1)                  # (H, N, dh)
        k = self._per_head(self.k(tile_h), index)
        v = self._per_head(self.v(tile_h), index)
        scores = torch.bmm(k, q.reshape(heads * n, dh, 1)).view(heads, n, r)
        # own-tile key offset: <q, k_0 + own_k> = <q, k_0> + <q, own_k>
        own = (q * self.own_k.view(heads, 1, dh)).sum(-1)                      # (H, N)
        scores = torch.cat([scores[..., :1] + own.unsqueeze(-1), scores[..., 1:]], dim=-1)
        scores = scores.masked_fill((index < 0).unsqueeze(0), float("-inf")) / math.sqrt(dh)
        attn = self.attn_drop(torch.softmax(scores, dim=-1))                   # (H, N, R)
        fused = torch.bmm(attn.view(heads * n, 1, r), v).view(heads, n, dh)
        fused = fused + attn[..., :1] * self.own_v.view(heads, 1, dh)          # own value offset
        fused = fused.transpose(0, 1).reshape(n, h)
        return self.norm(query + self.drop(self.out(fused)))


class MSAGNet(nn.Module):
    """Multi-level fusion + spatial-aware GAT block + three regression heads.

    ``checkpoint_activations``: recompute the cross-attention fusions and the transformer
    layers during the backward pass instead of keeping their activations (about 70 % of a
    training step's memory; the same values and gradients, ~10 % more time). Off by
    default; train/batching.py switches it on while it trains on blocks.
    """

    checkpoint_activations: bool = False

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        h, d, p = cfg.hidden_dim, cfg.in_dim, cfg.dropout
        self.proj_spot = _projection(d, h, p)
        self.proj_region = _projection(d, h, p)
        self.proj_global = _projection(d, h, p)
        self.fuse_region = CrossAttentionFusion(h, cfg.n_heads, cfg.attn_dropout)
        self.fuse_global = CrossAttentionFusion(h, cfg.n_heads, cfg.attn_dropout)
        self.fuse = nn.Sequential(nn.Linear(3 * h, h), nn.GELU(), nn.Dropout(p))
        engine = resolve_engine(cfg.engine)
        self.gats = nn.ModuleList(
            make_gat(engine, h, h // cfg.n_heads, cfg.n_heads, feat_drop=p,
                     attn_drop=cfg.attn_dropout, activation=nn.ELU())
            for _ in range(cfg.n_gat_layers))
        self.mixers = nn.ModuleList(
            nn.TransformerEncoderLayer(h, cfg.n_heads, dim_feedforward=2 * h, dropout=p,
                                       batch_first=True)
            for _ in range(cfg.n_gat_layers))
        self.head_spot = _mlp_head(h, cfg.n_genes, p)
        self.head_region = _mlp_head(h, cfg.n_genes, p)
        self.head_global = _mlp_head(h, cfg.n_genes, p)

    def forward(self, inputs: GraphInputs, graph: EdgeGraph | list[EdgeGraph]) -> ModelOutput:
        """Predict all three levels for every node; ``graph`` is the (filtered) edge graph,
        or one message-flow graph per GAT layer (train/sampling.py): layer l then outputs
        the first ``graph[l].num_dst`` rows, and the heads predict the last layer's rows."""
        layers = graph if isinstance(graph, list) else [graph] * len(self.gats)
        spot = self.proj_spot(inputs.spot)
        # Ablation (cross_attention=False): attend over the spot's own tile alone (token 0),
        # so softmax ≡ 1, as in the reference code; everything else stays.
        r_index = inputs.region.index if self.cfg.cross_attention else inputs.region.index[:, :1]
        g_index = inputs.global_.index if self.cfg.cross_attention else inputs.global_.index[:, :1]
        region = self._run(self.fuse_region, spot, self.proj_region(inputs.region.emb), r_index)
        glob = self._run(self.fuse_global, spot, self.proj_global(inputs.global_.emb), g_index)
        x = self.fuse(torch.cat([spot, region, glob], dim=-1))
        for gat, mixer, layer in zip(self.gats, self.mixers, layers, strict=True):
            h = gat(x, layer)
            n = h.shape[0]  # a message-flow graph's destination rows come first
            seq = self._run(mixer, torch.stack([h, region[:n], glob[:n]], dim=1))  # (N, 3, h)
            # split, not unbind: one cat in backward instead of three zero-filled copies
            x, region, glob = (t.squeeze(1) for t in seq.split(1, dim=1))
        y = self.head_spot(x)
        return ModelOutput(spot=y, region=self.head_region(region),
                           global_=self.head_global(glob), spot_model=y, embedding=x)

    def _run(self, module: nn.Module, *args: Tensor) -> Tensor:
        if self.checkpoint_activations and torch.is_grad_enabled():
            from torch.utils.checkpoint import checkpoint

            return checkpoint(module, *args, use_reentrant=False)
        return module(*args)


class ASIGNNet(nn.Module):
    """The trainable model of ``asign3d`` / ``asign2d``: MSAGNet, optionally + CLI.

    ``forward(inputs, y_known, known_mask)``: ``known_mask`` (N,) marks spots whose labels
    are given to the CLI (during training: the training-known layers, never the spots the
    loss is taken on); ``y_known`` (N, G) is read on those rows only. Without them, or with
    ``use_cli=False``, the output is MSAGNet's.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.net = MSAGNet(cfg)
        self.cli = (CLIBlock(cfg.hidden_dim, cfg.n_genes, n_iter=cfg.cli_iters,
                             per_node_gate=cfg.cli_per_node_gate,
                             spatial_prior=cfg.cli_spatial_prior) if cfg.use_cli else None)

    def edge_graph(self, inputs: GraphInputs) -> EdgeGraph:
        """The graph this variant runs on (cached on ``inputs``; validates them once)."""
        key = f"graph:{self.cfg.cross_layer_edges}:{self.cfg.edge_weight_scaling}"
        if key not in inputs._cache:
            inputs.validate()
            used = inputs if self.cfg.cross_layer_edges else drop_edges(inputs, "cross_layer")
            weight = used.edge_weight.float()
            if self.cfg.edge_weight_scaling == "kind_max":
                weight = scale_edge_weights(weight, used.edge_kind)
            inputs._cache[key] = EdgeGraph(used.src, used.dst, weight, inputs.num_nodes)
        return inputs._cache[key]

    def forward(self, inputs: GraphInputs, y_known: Tensor | None = None,
                known_mask: Tensor | None = None, *, graph: EdgeGraph | None = None,
                net_out: ModelOutput | None = None) -> ModelOutput:
        """``graph``: run on this edge graph instead of ``edge_graph(inputs)`` (a block's
        subgraph, train/batching.py); ``net_out``: MSAGNet's output, already computed
        (block by block), so only the CLI runs."""
        graph = self.edge_graph(inputs) if graph is None else graph
        # a sampled mini-batch (train/sampling.py) carries MSAGNet's per-layer graphs
        layers = getattr(graph, "layers", None)
        out = self.net(inputs, layers or graph) if net_out is None else net_out
        if self.cli is None or known_mask is None or y_known is None:
            return out
        prior = None
        if self.cfg.cli_spatial_prior:
            if inputs.xy is None:
                raise AsignError("the CLI spatial prior needs spot positions (GraphInputs.xy)",
                                 fix="build the inputs with xy, or set cli_spatial_prior=False")
            prior = spatial_prior(inputs.xy, y_known, known_mask, self.cfg.cli_prior_k,
                                  self.cfg.cli_prior_power)
        cli = self.cli(out.embedding, out.spot_model, y_known, known_mask, graph, prior)
        return replace(out, spot=cli.spot, reached=cli.reached, gate=cli.gate,
                       y_prop=cli.y_prop, prior=prior)


def build_model(variant: str, **overrides: Any) -> ASIGNNet:
    """``ASIGNNet(model_config(variant, **overrides))``; seed torch first for determinism."""
    return ASIGNNet(model_config(variant, **overrides))
