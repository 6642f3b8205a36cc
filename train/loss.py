"""The hybrid loss of ASIGN (DESIGN §4 "Loss"), on one sample's :class:`ModelOutput`.

Terms (each unweighted value is reported under its name):

- ``mse``            spot MSE, final spot prediction vs labels, on ``spot_mask`` rows;
- ``spot_pcc``       1 − PCC, same prediction and rows;
- ``region_pcc``     1 − PCC, region prediction vs region target, on ``region_mask`` rows;
- ``global_pcc``     1 − PCC, global prediction vs global target, on ``global_mask`` rows;
- ``consist_region`` 1 − PCC between MSAGNet's spot prediction (before CLI: consistency
  constrains the model's own levels, not the propagated labels) and its region prediction;
- ``consist_global`` the same with the global prediction.

PCC axis (``pcc_axis``): ``"gene"`` (default) correlates each gene across the rows and
averages over genes — the field's standard metric, and the one that is not satisfied by
predicting the mean profile everywhere (per-spot PCC is: DESIGN §5). ``"spot"`` correlates
each row across genes and averages over rows (the paper's metric). Items whose target is
constant (zero variance) carry no signal and are left out of the mean; a PCC term with no
usable item (e.g. fewer than 2 rows on the gene axis) contributes 0.

Weight presets (:data:`LOSS_PRESETS`):

- ``paper``: the paper lists five values, 0.25, 0.25, 0.75, 0.5, 0.5, for the
  hyperparameters of its equations (7)–(8) in order: spot MSE, spot PCC, the one λ that
  balances the region- and global-level PCC terms, and the two consistency terms. So
  mse 0.25, spot_pcc 0.25, region_pcc = global_pcc = 0.75, consist_region 0.5,
  consist_global 0.5 (the outer weights of eq. (9) are 1 in the paper).
- ``reference``: the public code: 0.75·MSE + 0.25·PCC and 0.125 for each level term.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

import torch
from torch import Tensor

from asign.errors import ConfigError
from asign.train.model import ModelOutput

PccAxis = Literal["gene", "spot"]


@dataclass(frozen=True)
class LossWeights:
    """Weights of the six loss terms (see the module docstring for the mapping)."""

    mse: float = 0.25
    spot_pcc: float = 0.25
    region_pcc: float = 0.75
    global_pcc: float = 0.75
    consist_region: float = 0.5
    consist_global: float = 0.5

    @classmethod
    def preset(cls, name: str) -> LossWeights:
        if name not in LOSS_PRESETS:
            raise ConfigError(f"unknown loss preset {name!r}",
                              fix=f"choose one of {', '.join(LOSS_PRESETS)}")
        return LOSS_PRESETS[name]


LOSS_PRESETS: dict[str, LossWeights] = {
    "paper": LossWeights(),
    "reference": LossWeights(mse=0.75, spot_pcc=0.25, region_pcc=0.125, global_pcc=0.125,
                             consist_region=0.125, consist_global=0.125),
}


@dataclass(frozen=True)
class TileTarget:
    """Region or global targets of N spots, held once per tile: spot i's target is
    ``table[tile[i]]`` (protocol.tile_targets). A block of spots shares the table."""

    table: Tensor  # (T, G)
    tile: Tensor  # (N,) int64

    def index_select(self, dim: int, rows: Tensor) -> TileTarget:
        """The targets of spots ``rows`` (``dim`` 0, as Tensor.index_select)."""
        return TileTarget(self.table, self.tile.index_select(dim, rows))

    def dense(self) -> Tensor:
        """(N, G), one row per spot."""
        return self.table.index_select(0, self.tile)

    def to(self, device: str | torch.device) -> TileTarget:
        return TileTarget(self.table.to(device), self.tile.to(device))


@dataclass
class LossTargets:
    """Labels and the rows each term may use; all per node of the sample graph.

    ``spot_mask`` marks the spots the spot loss is taken on: hidden spots only, never the
    labels given to the CLI. ``region``/``global_`` are the targets of each spot's own region
    and global tile (mean label of the tile's *known* spots); None skips the term.
    """

    spot: Tensor                       # (N, G)
    spot_mask: Tensor                  # (N,) bool
    region: Tensor | None = None       # (N, G)
    region_mask: Tensor | None = None  # (N,) bool; None = all rows
    global_: Tensor | None = None      # (N, G)
    global_mask: Tensor | None = None  # (N,) bool; None = all rows


def pearson(pred: Tensor, target: Tensor, axis: PccAxis = "gene",
            eps: float = 1e-8) -> tuple[Tensor, Tensor]:
    """Per-item Pearson correlation of two (N, G) tensors.

    Returns ``(r, valid)``: r per gene ((G,), across rows) for ``axis="gene"`` or per row
    ((N,), across genes) for ``"spot"``; ``valid`` marks items whose target varies.
    """
    dim = 0 if axis == "gene" else 1
    pc = pred - pred.mean(dim, keepdim=True)
    tc = target - target.mean(dim, keepdim=True)
    t_ss = tc.square().sum(dim)
    r = (pc * tc).sum(dim) / (torch.sqrt(pc.square().sum(dim) * t_ss) + eps)
    valid = t_ss > eps * max(target.shape[dim], 1)
    return r, valid


def pcc_loss(pred: Tensor, target: Tensor, axis: PccAxis = "gene") -> Tensor:
    """1 − mean PCC over valid items; 0 (still attached to ``pred``) if none is valid."""
    if axis not in ("gene", "spot"):
        raise ConfigError(f"unknown PCC axis {axis!r}", fix="use 'gene' or 'spot'")
    if pred.shape[0] < (2 if axis == "gene" else 1):
        return pred.sum() * 0.0
    r, valid = pearson(pred, target, axis)
    if not bool(valid.any()):
        return pred.sum() * 0.0
    return 1.0 - r[valid].mean()


def _rows(t: Tensor, mask: Tensor | None) -> Tensor:
    t = t.float()  # predictions may be bfloat16 under autocast; correlations need float32
    return t if mask is None else t[mask.to(torch.bool)]


def hybrid_loss(out: ModelOutput, targets: LossTargets, weights: LossWeights, *,
                pcc_axis: PccAxis = "gene",
                consistency_mask: Tensor | None = None) -> tuple[Tensor, dict[str, float]]:
    """Weighted sum of the six terms, and each unweighted term (plus ``total``) as floats.

    ``consistency_mask`` picks the rows of the consistency terms (default: all nodes; they
    need no labels).
    """
    spot_pred = _rows(out.spot, targets.spot_mask)
    spot_true = _rows(targets.spot, targets.spot_mask)
    terms: dict[str, Tensor] = {}
    terms["mse"] = ((spot_pred - spot_true).square().mean() if spot_pred.numel()
                    else out.spot.sum() * 0.0)
    terms["spot_pcc"] = pcc_loss(spot_pred, spot_true, pcc_axis)
    if targets.region is not None:
        terms["region_pcc"] = pcc_loss(_rows(out.region, targets.region_mask),
                                       _rows(targets.region, targets.region_mask), pcc_axis)
    if targets.global_ is not None:
        terms["global_pcc"] = pcc_loss(_rows(out.global_, targets.global_mask),
                                       _rows(targets.global_, targets.global_mask), pcc_axis)
    model_spot = _rows(out.spot_model, consistency_mask)
    terms["consist_region"] = pcc_loss(model_spot, _rows(out.region, consistency_mask),
                                       pcc_axis)
    terms["consist_global"] = pcc_loss(model_spot, _rows(out.global_, consistency_mask),
                                       pcc_axis)
    w = asdict(weights)
    total = sum((w[name] * value for name, value in terms.items() if w[name]),
                start=out.spot.sum() * 0.0)
    report = {name: float(value.detach()) for name, value in terms.items()}
    report["total"] = float(total.detach())
    return total, report
