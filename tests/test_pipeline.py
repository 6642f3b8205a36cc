"""End-to-end ingest on real her2st data, cut down (3 sections, 30 genes, images at 1/4
resolution): every step, resumability, and a real kill -9 in the middle of embedding."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from her2st_small import HER2ST, make_small_her2st

from asign.ingest import run as ingest_run
from asign.ingest.config import IngestConfig
from asign.store import open_store
from asign.store.check import check_store

pytestmark = pytest.mark.skipif(not HER2ST.exists(), reason="needs ../shared/data/her2st")

SECTIONS = ("C2", "C3", "C4")
ARGS = ["--samples", "C", "--weights", "random", "--batch-size", "16"]


@pytest.fixture(scope="module")
def small_src(tmp_path_factory) -> Path:
    return make_small_her2st(tmp_path_factory.mktemp("her2st") / "her2st", sections=SECTIONS, n_genes=30)


@pytest.fixture(scope="module")
def store_path(small_src, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("store") / "S"
    ingest_run(IngestConfig(sources=(small_src,), store=path, samples="C", weights="random", batch_size=16))
    return path


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "asign.cli", *args]


def test_every_step_fills_the_store(store_path):
    store = open_store(store_path)
    per_section = store.query(
        "select s.section_id, count(*) n_spots,"
        " (select count(*) from embeddings e where e.section_id = s.section_id and level = 'spot') n_spot_emb,"
        " (select count(*) from tiles t where t.section_id = s.section_id) n_tiles,"
        " (select count(*) from embeddings e where e.section_id = s.section_id and level <> 'spot') n_tile_emb"
        " from spots s group by 1 order by 1").to_pylist()
    assert [r["section_id"] for r in per_section] == list(SECTIONS)
    assert [r["n_spots"] for r in per_section] == [187, 180, 184]  # README of the data
    for r in per_section:
        assert r["n_spot_emb"] == r["n_spots"] and r["n_tile_emb"] == r["n_tiles"] > 0
    edges = store.query("select kind, count(*) n, min(weight) w from edges group by 1 order by 1").to_pylist()
    assert [e["kind"] for e in edges] == ["cross_layer", "same_layer"]
    assert edges[1]["n"] == 12 * sum(r["n_spots"] for r in per_section)
    assert all(e["w"] > 0 for e in edges)
    assert store.query("select count(*) n from spots where x_um is null").column("n")[0].as_py() == 0
    assert store.query("select count(*) n from genes").column("n")[0].as_py() == 30
    assert store.layout.alignment_png("C").exists()
    assert check_store(store) == []


def test_rerun_skips_finished_work(store_path, small_src):
    summary = ingest_run(IngestConfig(sources=(small_src,), store=store_path, samples="C", weights="random",
                                      batch_size=16))
    assert summary["ran"] == []
    assert len(summary["skipped"]) == 5


def test_changed_parameter_reruns_only_downstream(store_path, small_src, tmp_path):
    import shutil

    copy = tmp_path / "S"
    shutil.copytree(store_path, copy)
    summary = ingest_run(IngestConfig(sources=(small_src,), store=copy, samples="C", weights="random",
                                      batch_size=16, top_k_cross=4, steps=("register", "align", "patches",
                                                                           "embed", "graph")))
    assert summary["ran"] == ["C:graph"]


def test_kill9_during_embedding_then_rerun_gives_identical_store(store_path, small_src, tmp_path):
    killed = tmp_path / "S"
    cmd = _cli("ingest", str(small_src), "--store", str(killed), *ARGS)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env)
    saw = False
    for line in proc.stderr:
        # progress lines "embed C k/N" appear after committed batches: kill mid-way
        if " embed C " in line and "/" in line:
            proc.send_signal(signal.SIGKILL)
            saw = True
            break
    proc.wait(timeout=120)
    assert saw and proc.returncode == -signal.SIGKILL
    manifest = open_store(killed).manifest()
    assert "embed" not in manifest["steps"]["C"]  # it really died before finishing

    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    a, b = open_store(store_path), open_store(killed)
    from pandas.testing import assert_frame_equal

    for table in ("sections", "genes"):
        assert_frame_equal(a.read(table).to_pandas(), b.read(table).to_pandas())
    for table in ("spots", "labels", "transforms", "tiles", "spot_tiles", "embeddings", "edges"):
        # exact: rtol=0 (NaN cosines of same-layer edges compare equal in pandas)
        assert_frame_equal(a.read(table, "C").to_pandas(), b.read(table, "C").to_pandas(), rtol=0, atol=0,
                           obj=table)
    with a.vectors() as va, b.vectors() as vb, va.env.begin() as ta, vb.env.begin() as tb:
        keys_a = [k for k, _ in ta.cursor() if k.startswith(b"emb/") or k.startswith(b"patch/")]
        keys_b = [k for k, _ in tb.cursor() if k.startswith(b"emb/") or k.startswith(b"patch/")]
        assert keys_a == keys_b and len(keys_a) > 0
        assert all(ta.get(k) == tb.get(k) for k in keys_a)
    assert check_store(b) == []


def test_corrupt_jpeg_is_one_line_error_and_store_unchanged(small_src, tmp_path):
    import shutil

    src = tmp_path / "her2st"
    shutil.copytree(small_src, src)
    jpg = next((src / "ST-imgs" / "C" / "C3").glob("*.jpg"))
    data = jpg.read_bytes()
    jpg.write_bytes(data[: len(data) // 2])
    out = subprocess.run(_cli("ingest", str(src), "--store", str(tmp_path / "S"), *ARGS, "--steps", "register"),
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
    assert json.loads(out.stdout) == [{"section_id": "C2", "n": 187}, {"section_id": "C3", "n": 180},
                                      {"section_id": "C4", "n": 184}]
