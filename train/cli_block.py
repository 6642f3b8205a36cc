"""Cross-layer imputation (CLI): label propagation from known spots over the 3D graph.

For an unknown spot i, one step is

    y_i ← Σ_j a_ji w_j y_j / Σ_j a_ji w_j        over in-edges j → i (graph convention:
                                                   messages flow src → dst)

with a = edge weight (≥ 0), w = positive node weights; known spots stay clamped to their
labels. Unknown spots start *unreached*: a step sums only over in-neighbours that are
already reached (known, or reached by an earlier step), and a spot becomes reached when that
sum is positive. So after n steps exactly the spots within n hops of a known spot carry a
propagated value, and early values are not dragged towards the zeros of spots no label has
reached yet. Once every spot of a component is reached this is the plain Jacobi iteration of
the harmonic problem, and converges to its solution.

:class:`CLIBlock` learns w from node features (so it transfers to new samples) and blends the
propagated value with the model's prediction through a gate g ∈ (0, 1):

    ŷ_i = g ⊙ y_LP,i + (1 − g) ⊙ ŷ_model,i   for reached unknown spots,
    ŷ_i = ŷ_model,i                          for unreached spots and for known spots.

Known spots keep the model output because the training loss is taken on hidden spots only:
copying a known label there would only hide the model's error from the metrics.

Spatial prior (asign's addition, off in the paper's setting): propagation over the graph
smooths as it travels through hidden layers, while the plain inverse-distance average of
the nearest known spots in the aligned (x, y) frame (the ``idw`` baseline) does not. With
``spatial_prior`` the block blends three sources per gene — propagation, that IDW prior
and the model — with softmax weights over learned logits (the model's logit fixed at 0):

    ŷ_i = softmax(b_prop, b_prior, 0) · (y_LP,i, y_IDW,i, ŷ_model,i)   reached unknown spots,
    ŷ_i = softmax(b_prior, 0) · (y_IDW,i, ŷ_model,i)                  unreached unknown spots.

The prior reads the known rows only, like propagation, so it leaks nothing a known-layer
method would not see.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from asign.errors import AsignError
from asign.train.gnn import EdgeGraph


class _SpMM(torch.autograd.Function):
    """S @ X for a fixed sparse S; the backward uses a prebuilt Sᵀ (fast CSR both ways)."""

    @staticmethod
    def forward(ctx, s: Tensor, s_t: Tensor, x: Tensor) -> Tensor:  # type: ignore[override]
        ctx.s_t = s_t
        return s @ x

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[None, None, Tensor]:  # type: ignore[override]
        return None, None, ctx.s_t @ grad


def _csr(rows: Tensor, cols: Tensor, values: Tensor, n: int) -> Tensor:
    coo = torch.sparse_coo_tensor(torch.stack([rows, cols]), values, (n, n),
                                  check_invariants=True)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Sparse CSR tensor support is in beta", UserWarning)
        return coo.coalesce().to_sparse_csr()


@dataclass(frozen=True)
class PropagationOperator:
    """The sparse in-edge matrix S (S[i, j] = a_ji) and its transpose, built once per graph.

    Building sorts the edges (O(E log E)); reuse one operator for every step on a graph.
    """

    s: Tensor
    s_t: Tensor

    @classmethod
    def build(cls, src: Tensor, dst: Tensor, a: Tensor, n: int) -> PropagationOperator:
        if a.numel() and bool((a < 0).any()):
            raise AsignError("propagate: negative edge weights",
                             fix="edge weights must be ≥ 0 (IoU × cosine, 1/distance)")
        a = a.detach()
        return cls(_csr(dst, src, a, n), _csr(src, dst, a, n))

    @classmethod
    def of(cls, graph: EdgeGraph) -> PropagationOperator:
        """The operator of ``graph`` (edge weights as a), cached on the graph."""
        if "propagation" not in graph._cache:
            graph._cache["propagation"] = cls.build(graph.src, graph.dst, graph.weight,
                                                    graph.num_nodes)
        return graph._cache["propagation"]


def propagate(src: Tensor, dst: Tensor, a: Tensor, w: Tensor, y: Tensor, known_mask: Tensor,
              n_iter: int = 10, *,
              operator: PropagationOperator | None = None) -> tuple[Tensor, Tensor]:
    """Weighted label propagation from known spots (see the module docstring).

    Args:
        src, dst: (E,) int64 edges j → i.
        a: (E,) edge weights ≥ 0 (treated as constants).
        w: (N,) or (N, 1) positive node weights; gradients flow to it.
        y: (N, G) labels; only rows where ``known_mask`` is True are read.
        known_mask: (N,) bool.
        n_iter: number of propagation steps.
        operator: a prebuilt :class:`PropagationOperator` of (src, dst, a), to skip building
            it; src, dst and a are then not read.

    Returns:
        ``(y_prop, reached)``: (N, G) values — known rows are their labels, unreached rows 0 —
        and the (N,) bool mask of rows that are known or were reached.

    Cost: O(E·G) per step (one sparse-dense product); memory O(N·G) per step for autograd.
    """
    n = y.shape[0]
    if y.dim() != 2 or known_mask.shape != (n,) or w.numel() != n:
        raise AsignError(
            f"propagate: y {tuple(y.shape)}, known_mask {tuple(known_mask.shape)}, "
            f"w {tuple(w.shape)} do not describe the same {n} nodes",
            fix="pass y as (N, G), known_mask as (N,), w as (N,)",
        )
    op = operator if operator is not None else PropagationOperator.build(src, dst, a, n)
    # float32 at least, also under autocast: the sparse kernels have no bfloat16 version
    dtype = y.dtype if y.dtype in (torch.float32, torch.float64) else torch.float32
    with torch.autocast(y.device.type, enabled=False):
        return _iterate(op.s.to(dtype), op.s_t.to(dtype), w.reshape(n, 1).to(dtype),
                        y.to(dtype), known_mask.to(torch.bool), n_iter)


PROPAGATE_GENES = 32  # genes per pass of propagation without autograd


def _iterate(s: Tensor, s_t: Tensor, w: Tensor, y: Tensor, known: Tensor,
             n_iter: int) -> tuple[Tensor, Tensor]:
    if not (torch.is_grad_enabled() and (w.requires_grad or y.requires_grad)):
        return _iterate_no_grad(s, w, y, known, n_iter)
    known_col = known[:, None]
    y_known = torch.where(known_col, y, torch.zeros((), dtype=y.dtype))
    one = torch.ones((), dtype=y.dtype)
    cur, reached = y_known, known
    for _ in range(n_iter):
        ww = w * reached.to(y.dtype)[:, None]            # unreached neighbours carry no mass
        num = _SpMM.apply(s, s_t, ww * cur)
        den = _SpMM.apply(s, s_t, ww)
        got = den > 0
        # num is 0 wherever den is; den is replaced there so that no 0/0 enters the graph
        # (it would poison the gradients even where masked out)
        cur = torch.where(known_col, y_known, num / torch.where(got, den, one))
        reached = known | got[:, 0]
    return cur, reached


def _iterate_no_grad(s: Tensor, w: Tensor, y: Tensor, known: Tensor,
                     n_iter: int) -> tuple[Tensor, Tensor]:
    """The steps of :func:`_iterate` without autograd, ``PROPAGATE_GENES`` genes at a time:
    each gene propagates on its own, and which spots are reached (with the denominators)
    does not depend on the genes, so it is computed once. Memory beyond the (N, G) output
    is O(N · PROPAGATE_GENES): the whole-graph (N, G) temporaries of a Visium HD stack
    were GBs at every validation pass."""
    one = torch.ones((), dtype=y.dtype)
    steps, reached = [], known
    for _ in range(n_iter):
        ww = w * reached.to(y.dtype)[:, None]
        den = s @ ww
        got = den > 0
        steps.append((ww, torch.where(got, den, one)))
        reached = known | got[:, 0]
    rows = torch.nonzero(known).squeeze(1)
    out = torch.empty_like(y)
    for lo in range(0, y.shape[1], PROPAGATE_GENES):
        cols = slice(lo, lo + PROPAGATE_GENES)
        y_known = torch.where(known[:, None], y[:, cols], torch.zeros((), dtype=y.dtype))
        cur = y_known
        for ww, den in steps:
            cur = (s @ (ww * cur)).div_(den)
            cur.index_copy_(0, rows, y_known.index_select(0, rows))
        out[:, cols] = cur
    return out, reached


def spatial_prior(xy: Tensor, y: Tensor, known_mask: Tensor, k: int = 8,
                  power: float = 1.0) -> Tensor:
    """(N, G) inverse-distance average of the k nearest known rows of ``y`` in the aligned
    (x, y) frame, at every node: the ``idw`` baseline's rule (a constant; no gradient).
    O(N log K) with a k-d tree over the K known spots."""
    from asign.train.baselines import idw

    known = known_mask.detach().cpu().numpy().astype(bool)
    if not known.any():
        raise AsignError("spatial prior: no known spot to average from",
                         fix="give the CLI at least one known spot")
    pts = xy.detach().cpu().numpy()
    prior = idw(pts[known], y.detach()[known_mask].float().cpu().numpy(), pts, k=k, power=power)
    return torch.as_tensor(prior, device=y.device)


@dataclass
class CLIOutput:
    """What :class:`CLIBlock` returns; all tensors are per node."""

    spot: Tensor      # (N, G) final prediction (see the module docstring)
    y_prop: Tensor    # (N, G) propagated labels (known rows = labels, unreached rows = 0)
    reached: Tensor   # (N,) bool: known or reached by propagation
    gate: Tensor      # weight of propagation, (G,) or (N, G); with a prior, the weights of
    #                   (propagation, prior, model) where propagation reached: (3, G) or (3, N, G)
    node_weight: Tensor  # (N,) learned w > 0


class CLIBlock(nn.Module):
    """Learned propagation weights and an adaptive gate on top of :func:`propagate`.

    Args:
        node_dim: width of the node features that w (and the per-node gate) are computed from.
        n_genes: G.
        hidden: width of the weight MLP.
        n_iter: propagation steps (the paper uses 10).
        per_node_gate: if True, g_ig = sigmoid(b_g + m(h_i)) with a scalar node MLP m;
            otherwise g_g = sigmoid(b_g). b starts at 0, i.e. g = 0.5. With a prior, m has
            one output per non-model source.
        spatial_prior: blend a third source, passed to ``forward`` as ``prior`` (see the
            module docstring); all three start at weight 1/3.
        eps: floor added to w = softplus(MLP(h)) + eps, keeping every weight positive.
    """

    def __init__(self, node_dim: int, n_genes: int, *, hidden: int = 64, n_iter: int = 10,
                 per_node_gate: bool = False, spatial_prior: bool = False, eps: float = 1e-3):
        super().__init__()
        self.n_iter, self.eps = n_iter, eps
        self.spatial_prior = spatial_prior
        sources = 2 if spatial_prior else 1  # blended with the model: propagation [, prior]
        self.weight_mlp = nn.Sequential(nn.Linear(node_dim, hidden), nn.GELU(),
                                        nn.Linear(hidden, 1))
        self.gate_logit = nn.Parameter(torch.zeros(sources, n_genes))
        self.gate_mlp = (nn.Sequential(nn.Linear(node_dim, hidden), nn.GELU(),
                                       nn.Linear(hidden, sources)) if per_node_gate else None)

    def forward(self, node_features: Tensor, y_model: Tensor, y_known: Tensor,
                known_mask: Tensor, graph: EdgeGraph, prior: Tensor | None = None) -> CLIOutput:
        """Blend propagated labels (and ``prior``, (N, G), when the block has one) into
        ``y_model`` ((N, G)); ``y_known`` is read on known rows.

        ``graph``'s edge weights are the a of the propagation (its operator is cached on it).
        """
        if self.spatial_prior != (prior is not None):
            raise AsignError("CLI block: a prior must be passed exactly when the block was "
                             "built with spatial_prior=True",
                             fix="build the model and its inputs from the same ModelConfig")
        w = F.softplus(self.weight_mlp(node_features)).squeeze(-1) + self.eps
        y_prop, reached = propagate(graph.src, graph.dst, graph.weight, w, y_known, known_mask,
                                    self.n_iter, operator=PropagationOperator.of(graph))
        logit = self.gate_logit  # (S, G)
        if self.gate_mlp is not None:
            logit = logit[:, None, :] + self.gate_mlp(node_features).T[:, :, None]  # (S, N, G)
        spot, gate = blend(logit, y_prop, prior, y_model, reached, known_mask)
        return CLIOutput(spot, y_prop, reached, gate, w)


BLEND_ROWS = 65_536  # rows per step of blend without autograd


def blend(logit: Tensor, y_prop: Tensor, prior: Tensor | None, y_model: Tensor,
          reached: Tensor, known_mask: Tensor) -> tuple[Tensor, Tensor]:
    """The gated output of the module docstring and the gate: ``logit`` (S, G) or (S, N, G)
    holds the logits of propagation [and prior] against the model's fixed 0. Without
    autograd, ``BLEND_ROWS`` rows at a time (the same values; a whole Visium HD stack's
    (N, G) temporaries were GBs)."""
    n = y_model.shape[0]
    if n <= BLEND_ROWS or (torch.is_grad_enabled() and any(
            t is not None and t.requires_grad for t in (logit, y_prop, prior, y_model))):
        return _blend(logit, y_prop, prior, y_model, reached, known_mask)
    per_node = logit.dim() == 3
    out, gates = torch.empty_like(y_model), []
    for lo in range(0, n, BLEND_ROWS):
        r = slice(lo, lo + BLEND_ROWS)
        out[r], gate = _blend(logit[:, r] if per_node else logit, y_prop[r],
                              None if prior is None else prior[r], y_model[r], reached[r],
                              known_mask[r])
        gates.append(gate)
    return out, (torch.cat(gates, dim=-2) if per_node else gates[0])


def _blend(logit: Tensor, y_prop: Tensor, prior: Tensor | None, y_model: Tensor,
           reached: Tensor, known_mask: Tensor) -> tuple[Tensor, Tensor]:
    known = known_mask.to(torch.bool)[:, None]
    use_prop = reached[:, None] & ~known
    if prior is None:
        gate = torch.sigmoid(logit[0])
        mixed = gate * y_prop + (1 - gate) * y_model
        return torch.where(use_prop, mixed, y_model), gate
    zero = torch.zeros_like(logit[0])
    gate = torch.softmax(torch.stack([logit[0], logit[1], zero]), dim=0)
    with_prop = gate[0] * y_prop + gate[1] * prior + gate[2] * y_model
    g_prior = torch.sigmoid(logit[1])  # = softmax(b_prior, 0)[0]
    without = g_prior * prior + (1 - g_prior) * y_model
    return torch.where(known, y_model, torch.where(use_prop, with_prop, without)), gate
