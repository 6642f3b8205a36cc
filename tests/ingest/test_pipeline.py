"""End-to-end ingest on real her2st data, cut down (3 sections, 30 genes, images at 1/4
resolution): every step and resumability. Killing real ingest processes mid-step is
tests/contract/test_crash.py's job, on the same data."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from her2st_small import HER2ST, SMALL_SECTIONS, small_her2st_store

from asign.ingest import run as ingest_run
from asign.ingest.config import IngestConfig
from asign.store import open_store
from asign.store.check import check_store

pytestmark = pytest.mark.skipif(not HER2ST.exists(), reason="needs ../shared/data/her2st")

SECTIONS = SMALL_SECTIONS
ARGS = ["--samples", "C", "--weights", "random", "--batch-size", "16"]


@pytest.fixture(scope="module")
def small_src(tmp_path_factory) -> Path:
    return small_her2st_store(tmp_path_factory)[0]


@pytest.fixture(scope="module")
def store_path(tmp_path_factory) -> Path:
    """Shared with test_crash.py (built once per session): tests here only read it or copy it."""
    return small_her2st_store(tmp_path_factory)[1]


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "asign.cli", *args]


def test_every_step_fills_the_store(store_path):
    store = open_store(store_path)
    per_section = store.query(
        "select s.section_id, count(*) n_spots,"
        " (select count(*) from embeddings e where e.section_id = s.section_id and level = 'spot') "
        "n_spot_emb, (select count(*) from tiles t where t.section_id = s.section_id) n_tiles,"
        " (select count(*) from embeddings e where e.section_id = s.section_id and level <> "
        "'spot') n_tile_emb from spots s group by 1 order by 1").to_pylist()
    assert [r["section_id"] for r in per_section] == list(SECTIONS)
    assert [r["n_spots"] for r in per_section] == [187, 180, 184]  # README of the data
    for r in per_section:
        assert r["n_spot_emb"] == r["n_spots"] and r["n_tile_emb"] == r["n_tiles"] > 0
    edges = store.query(
        "select kind, count(*) n, min(weight) w from edges group by 1 order by 1").to_pylist()
    assert [e["kind"] for e in edges] == ["cross_layer", "same_layer"]
    assert edges[1]["n"] == 12 * sum(r["n_spots"] for r in per_section)
    assert all(e["w"] > 0 for e in edges)
    unplaced = store.query("select count(*) n from spots where x_um is null")
    assert unplaced.column("n")[0].as_py() == 0
    assert store.query("select count(*) n from genes").column("n")[0].as_py() == 30
    assert store.layout.alignment_png("C").exists()
    assert check_store(store) == []


def test_rerun_skips_finished_work(small_her2st_copy, small_src):
    summary = ingest_run(IngestConfig(sources=(small_src,), store=small_her2st_copy, samples="C",
                                      weights="random", batch_size=16))
    assert summary["ran"] == []
    assert len(summary["skipped"]) == 5


def test_changed_parameter_reruns_only_downstream(small_her2st_copy, small_src):
    summary = ingest_run(IngestConfig(sources=(small_src,), store=small_her2st_copy, samples="C",
                                      weights="random", batch_size=16, top_k_cross=4,
                                      steps=("register", "align", "patches", "embed", "graph")))
    assert summary["ran"] == ["C:graph"]


@pytest.mark.parametrize("redo", [
    dict(precision="fp32"),
    pytest.param(dict(tta=2), marks=[pytest.mark.slow, pytest.mark.safety]),
])
def test_an_interrupted_redo_under_other_parameters_is_not_taken_for_the_old_state(
        small_her2st_copy, small_src, monkeypatch, redo):
    """A redo of embed under other parameters overwrites LMDB vectors in place (same keys).
    Interrupted, it left the manifest vouching for the old step and the old fingerprint's
    resume markers vouching for overwritten batches: the original command then skipped
    embed over a mix of both. The redo unrecords the step and drops other fingerprints'
    markers before it writes, so the original command recomputes: same entries as before."""
    from asign.ingest import step_features
    from asign.store.check import check_store

    store = open_store(small_her2st_copy)
    with store.vectors(readonly=True) as vec:
        before = vec.entries()
    real, seen = step_features._rows, []

    def interrupted(batch, zscore):
        seen.append(1)
        if len(seen) == 4:  # three batches of the redo committed
            raise KeyboardInterrupt
        return real(batch, zscore)

    monkeypatch.setattr(step_features, "_rows", interrupted)
    cfg = dict(sources=(small_src,), store=small_her2st_copy, samples="C", weights="random",
               batch_size=16)
    with pytest.raises(KeyboardInterrupt):
        ingest_run(IngestConfig(**cfg, **redo))
    monkeypatch.setattr(step_features, "_rows", real)
    with store.vectors(readonly=True) as vec:
        assert vec.entries() != before  # the redo did overwrite vectors
    summary = ingest_run(IngestConfig(**cfg))
    assert summary["ran"] == ["C:embed", "C:graph"]
    with store.vectors(readonly=True) as vec:
        after = vec.entries()
    assert after.keys() == before.keys()
    assert [k for k in before if after[k] != before[k]] == []
    assert check_store(store) == []


def test_corrupt_jpeg_is_one_line_error_and_store_unchanged(small_src, tmp_path):
    import shutil

    src = tmp_path / "her2st"
    shutil.copytree(small_src, src)
    jpg = next((src / "ST-imgs" / "C" / "C3").glob("*.jpg"))
    data = jpg.read_bytes()
    jpg.write_bytes(data[: len(data) // 2])
    out = subprocess.run(_cli("ingest", str(src), "--store", str(tmp_path / "S"), *ARGS,
                              "--steps", "register"),
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 1
    err = out.stderr.strip().splitlines()[-1]
    assert jpg.name in err and "Fix:" in err
    assert not (tmp_path / "S" / "tables").exists()


def test_query_cli_json(store_path):
    import json

    out = subprocess.run(_cli("query", "--store", str(store_path), "--format", "json",
                              "select section_id, count(*) as n from spots group by 1 order by 1"),
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == [{"section_id": "C2", "n": 187},
                                      {"section_id": "C3", "n": 180},
                                      {"section_id": "C4", "n": 184}]
