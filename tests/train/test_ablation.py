"""--ablate: asign3d without cross-attention, without the GAT block, without the CLI."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from test_model import SMALL, _inputs

from asign.errors import ConfigError
from asign.train.config import TrainConfig, validate
from asign.train.loop import model_overrides
from asign.train.model import build_model


def _model(**kw):
    torch.manual_seed(0)
    return build_model("asign3d", **{**SMALL, **kw}).eval()


def test_each_ablation_removes_its_part():
    inputs = _inputs()
    known = torch.zeros(30, dtype=torch.bool)
    known[:10] = True
    y = torch.randn(30, SMALL["n_genes"])
    no_gat = _model(n_gat_layers=0)
    assert len(no_gat.net.gats) == 0
    assert no_gat(inputs, y, known).spot.shape == (30, SMALL["n_genes"])
    no_cli = _model(use_cli=False)
    assert no_cli.cli is None and no_cli(inputs, y, known).reached is None
    # Without cross-attention only the own tile (token 0) is read: a neighbour tile of spot
    # 0 no longer changes its output (with attention it does, test_model.py).
    plain = _model(cross_attention=False)
    base = plain(inputs).spot
    changed = _inputs()
    changed.region.emb[1] += 3.0
    torch.testing.assert_close(plain(changed).spot[0], base[0])


def test_ablate_flags_map_to_model_options_and_are_validated():
    cfg = TrainConfig(store=Path("S"), ablate=("cli", "gat", "cross-attention"))
    over = model_overrides(cfg, 8, 4)
    assert over["use_cli"] is False and over["n_gat_layers"] == 0
    assert over["cross_attention"] is False
    assert not cfg.uses_cli and TrainConfig(store=Path("S")).uses_cli
    assert "ablate" not in TrainConfig(store=Path("S")).identity()
    with pytest.raises(ConfigError, match="--ablate"):
        validate(TrainConfig(store=Path("S"), ablate=("heads",)))
    with pytest.raises(ConfigError, match="asign3d"):
        validate(TrainConfig(store=Path("S"), model="mean", ablate=("cli",)))
