"""The whole-graph / block choice from a memory budget (--memory-gb)."""

from __future__ import annotations

from pathlib import Path

import pytest

from asign.train.batching import BatchPlan, step_bytes_per_spot
from asign.train.config import TrainConfig


def test_budget_decides_whole_graph_or_blocks():
    small = BatchPlan.of(TrainConfig(store=Path("s"), model="asign3d", memory_gb=1.0))
    big = BatchPlan.of(TrainConfig(store=Path("s"), model="asign3d", memory_gb=16.0))
    assert small.above == int(1e9 / step_bytes_per_spot(256))
    assert big.above == pytest.approx(16 * small.above, abs=16)
    assert not big.active(30_000) and big.active(40_000) and big.active(800_000)
    assert small.block_spots < big.block_spots <= big.above
    wide = BatchPlan.of(TrainConfig(store=Path("s"), model="asign3d", memory_gb=16.0, hidden=512))
    assert wide.above == pytest.approx(big.above / 2, abs=1)


def test_without_budget_the_fixed_threshold_stands_and_identity_is_unchanged():
    cfg = TrainConfig(store=Path("s"), model="asign3d")
    assert BatchPlan.of(cfg) == BatchPlan(cfg.minibatch_above, cfg.block_spots, cfg.block_halo)
    assert "memory_gb" not in cfg.identity()
    assert TrainConfig(store=Path("s"), model="asign3d", memory_gb=8.0).identity()["memory_gb"] == 8
