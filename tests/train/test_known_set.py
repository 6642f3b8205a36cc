"""Several known layers: ``--known`` as a set, plans, episodes and a run on the toy store."""

from __future__ import annotations

import numpy as np
import pytest

from asign.errors import ConfigError
from asign.store import open_store
from asign.train import TrainConfig, protocol, run
from asign.train.config import validate
from asign.train.loop import split_validation_layer
from asign.train.protocol import SectionInfo


def _secs(zs: list[int]) -> list[SectionInfo]:
    return [SectionInfo("C", f"C{z}", z, True, True) for z in zs]


def test_resolve_knowns_forms():
    secs = _secs([1, 2, 3, 4, 5, 6])
    assert protocol.resolve_knowns(secs, "2,5") == ("C2", "C5")
    assert protocol.resolve_knowns(secs, "first,last") == ("C1", "C6")
    assert protocol.resolve_knowns(secs, "C5,C2") == ("C2", "C5")  # z order
    assert protocol.resolve_knowns(secs, "middle") == ("C3",)
    assert protocol.resolve_known(secs, "last") == "C6"
    with pytest.raises(ConfigError, match="z=9"):
        protocol.resolve_knowns(secs, "2,9")
    with pytest.raises(ConfigError, match="names no labelled"):
        protocol.resolve_knowns(secs, "D2")


def test_config_rejects_bad_sets(tmp_path):
    validate(TrainConfig(store=tmp_path, known="C2,C5"))
    validate(TrainConfig(store=tmp_path, known="first,last"))
    for bad in ("2,2", "", "a b", "2;5"):
        with pytest.raises(ConfigError, match="--known"):
            validate(TrainConfig(store=tmp_path, known=bad))


def test_plan_with_two_known_layers():
    (fold,) = protocol.plan_folds(_secs([1, 2, 3, 4, 5]), known="2,4")
    (c,) = fold.test
    assert c.knowns == ("C2", "C4") and c.known == "C2" and c.visible == ("C2", "C4")
    assert c.scored == ("C1", "C3", "C5") and c.predicted == ("C1", "C3", "C5")


def test_episodes_hide_whole_known_layers_and_validation_is_a_layer():
    section = np.repeat([0, 1, 2], 10)
    visible = section != 1  # known layers 0 and 2
    for e in range(6):
        ep = protocol.episode(visible, section, protocol.episode_rng(0, e, 0), 0.2)
        assert np.unique(section[ep.known]).size == 1 and np.unique(section[ep.hidden]).size == 1
        assert not (ep.known | ep.hidden)[section == 1].any()
    val = split_validation_layer(visible, section, 3)
    assert val.sum() == 10 and np.unique(section[val]).size == 1 and not val[section == 1].any()


@pytest.mark.parametrize("model", ["idw", "asign3d"])
def test_run_with_two_known_layers(toy_store, model):
    kw = dict(epochs=2, hidden=16, heads=2, threads=1) if model == "asign3d" else {}
    res = run(TrainConfig(store=toy_store, model=model, run="k2", known="1,3", **kw))
    assert res.status == "done"
    assert {r["section_id"] for r in res.metrics.to_pylist()} == {"S1_L2", "S1_L4"}
    cov = [r["value"] for r in res.metrics.to_pylist() if r["metric"] == "coverage"]
    assert len(cov) == 2 and all(0.0 <= c <= 1.0 for c in cov)  # intervals for networks too
    preds = open_store(toy_store).query(
        f"SELECT DISTINCT section_id FROM predictions WHERE run_id = '{res.run_id}'")
    assert set(preds.column("section_id").to_pylist()) == {"S1_L2", "S1_L4", "S1_L5"}


def test_cli_known_set(toy_store):
    from typer.testing import CliRunner

    from asign.cli import app

    out = CliRunner().invoke(app, ["train", "--store", str(toy_store), "--model", "idw",
                                   "--known", "S1_L1,S1_L4", "--json"])
    assert out.exit_code == 0, out.output
    bad = CliRunner().invoke(app, ["train", "--store", str(toy_store), "--model", "idw",
                                   "--known", "1,1"])
    assert bad.exit_code != 0 and "--known" in bad.output
