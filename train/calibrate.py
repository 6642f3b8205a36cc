"""Calibrating the CLI gate on held-out spots, after training.

The gate blends propagation, the spatial prior (when on) and the network's own prediction
(cli_block.py). Trained by SGD its logits hardly move: on her2st C, after 200 epochs every
weight was still 1/3 ± 0.002, since each logit's gradient is one gene's share of a loss
averaged over all genes. And the spots training episodes take their loss on are spots
the network has fitted in earlier episodes, so a gate fitted there would trust the
network's output more than unseen spots warrant.

So once training ends (best epoch loaded), the blend weights are chosen on the validation
spots — set aside from training by loop.py, and never test spots — with the CLI
propagating from the other training spots, exactly as the validation score is computed:
a grid search over the simplex of source weights (step :data:`GRID_STEP`, every weight at
least one step), one weight vector shared by all genes (a few dozen held-out spots cannot
fit one per gene), minimising that validation score. The trained gate is kept when the grid
does not beat it. Deterministic, and cheap: the sources are computed once.
"""

from __future__ import annotations

import itertools
import logging
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

GRID_STEP = 0.05


def simplex_grid(n_sources: int, step: float = GRID_STEP) -> np.ndarray:
    """(K, n_sources) weight vectors on the simplex, each weight a multiple of ``step``
    and at least ``step`` (the model's weight must stay > 0 to express it as a logit)."""
    m = int(round(1 / step))
    rows = [c for c in itertools.product(range(1, m), repeat=n_sources - 1) if sum(c) < m]
    grid = np.array([[*c, m - sum(c)] for c in rows], dtype=np.float64) / m
    return grid


def calibrate_gate(cfg: Any, model: Any, tasks: list[Any]) -> dict[str, Any] | None:
    """Set the gate of ``model``'s CLI block to the weights that minimise the validation
    score of ``tasks`` (see the module docstring); returns what was chosen, or None when
    there is no CLI or no validation spot."""
    import torch

    from asign.train.cli_block import blend
    from asign.train.loop import spot_score, validation_output
    from asign.train.loss import LossWeights

    cli = getattr(model, "cli", None)
    chosen = [t for t in tasks if t.val.any()]
    if cli is None or not chosen:
        return None
    weights = LossWeights.preset(cfg.loss)
    parts = []
    for task in chosen:
        out = validation_output(cfg, model, task)
        val = torch.as_tensor(task.val, device=task.y.device)
        offset = None
        if cli.gate_mlp is not None:
            with torch.no_grad():
                offset = cli.gate_mlp(out.embedding[val]).T[:, :, None]  # (S, V, 1)
        parts.append(dict(
            y_prop=out.y_prop[val], prior=None if out.prior is None else out.prior[val],
            y_model=out.spot_model[val], reached=out.reached[val], true=task.y[val],
            offset=offset, trained=spot_score(out.spot[val], task.y[val], weights)))
    model.train()

    def score(logit: Any) -> float:
        scores = []
        for p in parts:
            lg = logit if p["offset"] is None else logit[:, None, :] + p["offset"]
            pred, _ = blend(lg, p["y_prop"], p["prior"], p["y_model"], p["reached"],
                            torch.zeros_like(p["reached"]))
            scores.append(spot_score(pred, p["true"], weights))
        return float(np.mean(scores))

    grid = simplex_grid(cli.gate_logit.shape[0] + 1)
    logits = torch.as_tensor(np.log(grid[:, :-1] / grid[:, -1:]),
                             dtype=cli.gate_logit.dtype, device=cli.gate_logit.device)
    g = cli.gate_logit.shape[1]
    scores = [score(row[:, None].expand(-1, g)) for row in logits]
    best = int(np.argmin(scores))
    trained = float(np.mean([p["trained"] for p in parts]))
    names = ["propagation", "prior", "model"] if len(grid[0]) == 3 else ["propagation", "model"]
    result = {"weights": dict(zip(names, grid[best].round(3).tolist(), strict=True)),
              "val_score": round(scores[best], 6), "val_score_trained_gate": round(trained, 6),
              "applied": scores[best] < trained}
    if result["applied"]:
        with torch.no_grad():
            cli.gate_logit.copy_(logits[best][:, None].expand(-1, g))
    log.info("CLI gate calibrated on %d validation spots: %s (validation score %.4f, "
             "trained gate %.4f)%s", sum(int(t.val.sum()) for t in chosen), result["weights"],
             scores[best], trained, "" if result["applied"] else " — kept the trained gate")
    return result
