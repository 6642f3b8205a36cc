"""CLI contract: the exact config each command builds, --help everywhere, output formats,
and one-line errors with exit code 1."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from asign.cli import app
from asign.ingest.config import STEPS, AlignOptions, IngestConfig
from asign.store import open_store

runner = CliRunner()


@pytest.mark.parametrize("cmd", [[], ["ingest"], ["train"], ["query"], ["plan"], ["report"],
                                 ["export"], ["check"], ["demo"], ["doctor"]])
def test_help_everywhere(cmd):
    result = runner.invoke(app, [*cmd, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output


def test_ingest_builds_exact_config(tmp_path, monkeypatch):
    seen = {}

    def fake_run(cfg):
        seen["cfg"] = cfg
        return {"ok": True}

    monkeypatch.setattr("asign.ingest.run", fake_run)
    result = runner.invoke(
        app,
        [
            "ingest",
            str(tmp_path),
            "--store",
            str(tmp_path / "S"),
            "--samples",
            "C",
            "--steps",
            "register,align",
            "--init",
            "C4:C3:-12:flip",
            "--weights",
            "random",
            "--n-genes",
            "100",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    assert seen["cfg"] == IngestConfig(
        sources=(tmp_path,),
        store=tmp_path / "S",
        samples="C",
        steps=("register", "align"),
        n_genes=100,
        weights="random",
        align=AlignOptions(init={"C4:C3": (-12.0, True)}),
    )
    assert json.loads(result.output) == {"ok": True}


def test_ingest_rejects_unknown_step_in_one_line(tmp_path):
    result = runner.invoke(
        app, ["ingest", str(tmp_path), "--store", str(tmp_path / "S"), "--steps", "register,paint"]
    )
    assert result.exit_code == 1
    line = result.output.strip()
    assert "\n" not in line and "paint" in line and ",".join(STEPS) in line


def test_bad_init_hint_is_a_config_error(tmp_path):
    result = runner.invoke(
        app, ["ingest", str(tmp_path), "--store", str(tmp_path / "S"), "--init", "C4-C3"]
    )
    assert result.exit_code == 1
    assert "MOVING:FIXED:DEGREES" in result.output


def test_every_bad_ingest_option_is_reported_at_once_before_any_work(tmp_path):
    # three typos in one command: all three named in one line, and no store was created
    result = runner.invoke(app, ["ingest", str(tmp_path), "--store", str(tmp_path / "S"),
                                 "--cross-weight", "prodcut", "--transform", "rigd",
                                 "--encoder", "resnet5O-l3"])
    assert result.exit_code == 1
    line = result.output.strip()
    assert "\n" not in line and "3 problem(s)" in line
    assert "--cross-weight 'prodcut'" in line and "--transform 'rigd'" in line
    assert "resnet5O-l3" in line
    assert not (tmp_path / "S").exists()


def test_ingest_threads_reach_the_config_and_are_checked(tmp_path, monkeypatch):
    seen = {}
    monkeypatch.setattr("asign.ingest.run", lambda cfg: seen.setdefault("cfg", cfg) and {})
    store = ["--store", str(tmp_path / "S")]
    ok = runner.invoke(app, ["ingest", str(tmp_path), *store, "--threads", "1"])
    assert ok.exit_code == 0, ok.output
    assert seen["cfg"].threads == 1
    monkeypatch.undo()
    bad = runner.invoke(app, ["ingest", str(tmp_path), *store, "--threads", "0"])
    assert bad.exit_code == 1 and "--threads must be ≥ 1" in bad.output


def test_format_is_a_real_choice(tmp_path):
    # a value outside the registry is a usage error (exit 2), not a failed run
    ingest = runner.invoke(app, ["ingest", str(tmp_path), "--store", str(tmp_path / "S"),
                                 "--format", "her2"])
    assert ingest.exit_code == 2 and "her2st" in ingest.output
    query = runner.invoke(app, ["query", "--store", str(tmp_path), "select 1", "--format", "xml"])
    assert query.exit_code == 2 and "table, json, csv" in query.output


def _tiny_store(root: Path) -> Path:
    store = open_store(root, create=True)
    store.write("genes", {"gene": ["ERBB2", "MDK"], "rank": [0, 1], "mean_count": [3.0, 2.0]})
    return root


def test_query_table_json_csv(tmp_path):
    root = _tiny_store(tmp_path / "S")
    sql = "select gene, rank from genes order by rank"
    table = runner.invoke(app, ["query", "--store", str(root), sql])
    assert table.exit_code == 0 and "ERBB2" in table.output
    js = runner.invoke(app, ["query", "--store", str(root), sql, "--format", "json"])
    assert json.loads(js.output) == [{"gene": "ERBB2", "rank": 0}, {"gene": "MDK", "rank": 1}]
    csv = runner.invoke(app, ["query", "--store", str(root), sql, "--format", "csv"])
    assert csv.output.splitlines() == ["gene,rank", "ERBB2,0", "MDK,1"]


def test_query_errors_are_one_line(tmp_path):
    root = _tiny_store(tmp_path / "S")
    bad = runner.invoke(app, ["query", "--store", str(root), "select nope from genes"])
    assert bad.exit_code == 1
    assert len(bad.output.strip().splitlines()) == 1 and "Fix:" in bad.output
    missing = runner.invoke(app, ["query", "--store", str(tmp_path / "none"), "select 1"])
    assert missing.exit_code == 1 and "asign ingest" in missing.output


def test_train_builds_exact_config(tmp_path, monkeypatch):
    from asign.train.config import TrainConfig

    seen = {}

    class Result:
        def summary(self):
            return {"run_id": "x"}

    def fake_run(cfg):
        seen["cfg"] = cfg
        return Result()

    monkeypatch.setattr("asign.train.run", fake_run)
    result = runner.invoke(
        app,
        [
            "train",
            "--store",
            str(tmp_path),
            "--model",
            "idw",
            "--run",
            "r1",
            "--known",
            "middle",
            "--extra-2d",
            "B",
            "--epochs",
            "3",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    assert seen["cfg"] == TrainConfig(
        store=tmp_path, model="idw", run="r1", known="middle", extra_2d=("B",), epochs=3
    )
    assert json.loads(result.output) == {"run_id": "x"}


def test_train_defaults_are_the_config_defaults(tmp_path, monkeypatch):
    from asign.train.config import TrainConfig

    seen = {}
    monkeypatch.setattr("asign.train.run", lambda cfg: seen.setdefault("cfg", cfg))
    result = runner.invoke(app, ["train", "--store", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert seen["cfg"] == TrainConfig(store=tmp_path)


def test_train_minibatch_options_reach_the_config(tmp_path, monkeypatch):
    from asign.train.config import TrainConfig

    seen = {}
    monkeypatch.setattr("asign.train.run", lambda cfg: seen.setdefault("cfg", cfg))
    result = runner.invoke(app, ["train", "--store", str(tmp_path), "--minibatch-above", "0",
                                 "--block-spots", "512"])
    assert result.exit_code == 0, result.output
    assert seen["cfg"] == TrainConfig(store=tmp_path, minibatch_above=0, block_spots=512)


def test_demo_with_one_layer_is_a_usage_error_not_a_traceback(tmp_path):
    result = runner.invoke(app, ["demo", "--layers", "1", "--out", str(tmp_path / "d")])
    assert result.exit_code == 2
    assert "Traceback" not in result.output
    assert not (tmp_path / "d").exists()
