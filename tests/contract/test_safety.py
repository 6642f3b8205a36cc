"""A shared store that nobody can break by accident or on purpose (issue 13): read-only
`asign query`, recorded hashes and row counts of every results file, safe checkpoints, no
writes through symlinks out of the store, one ingest writer at a time (an OS lock), runs
whose process died shown as interrupted, non-finite numbers stopped, image headers checked
before decoding. Each case through the CLI: exit code, one `error:` line, no traceback, and
a store that is unchanged or `asign check`-clean. Toy store (conftest) and a tiny synthetic
sample: seconds each."""

from __future__ import annotations

import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from cli_errors import one_error
from typer.testing import CliRunner

from asign.cli import app
from asign.store import open_store

runner = CliRunner()
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def cli(*args: object) -> tuple[int, str, str]:
    result = runner.invoke(app, [str(a) for a in args])
    return result.exit_code, result.stdout, result.stderr


def snapshot(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


def check_clean(store: Path) -> None:
    code, out, err = cli("check", "--store", store)
    assert code == 0 and "problem:" not in err, err


def _cli_proc(*args: object) -> list[str]:
    return [sys.executable, "-m", "asign.cli", *map(str, args)]


@pytest.fixture
def with_run(toy_store: Path) -> tuple[Path, str]:
    """The toy store with one finished `mean` run; (store, run_id)."""
    code, _, err = cli("train", "--store", toy_store, "--model", "mean", "--run", "m")
    assert code == 0, err
    rid = open_store(toy_store).query("select run_id from runs").column(0)[0].as_py()
    return toy_store, rid


# --- read-only query -----------------------------------------------------------------------

def _refused_sql(store: Path, rid: str, outside: Path) -> list[str]:
    s = str(store)
    metrics = f"{s}/results/metrics/{rid}.parquet"
    meta = "KV_METADATA {'asign.schema_version': '1', 'asign.table': 'metrics'}"
    return [
        # the cases: results wiped, metrics forged, tables/manifest/LMDB overwritten
        f"COPY (SELECT 1 AS x) TO '{s}/results' (FORMAT parquet, OVERWRITE)",
        "COPY (SELECT run_id, fold, sample_id, section_id, setting, metric, 0.99::DOUBLE AS value "
        f"FROM metrics) TO '{metrics}' (FORMAT parquet, {meta})",
        f"COPY (SELECT * FROM metrics) TO '{metrics}' (FORMAT parquet, USE_TMP_FILE false)",
        f"COPY spots TO '{s}/tables/spots/S1.parquet' (FORMAT parquet)",
        f"COPY (SELECT 1) TO '{s}/manifest.json' (FORMAT csv)",
        f"COPY (SELECT 1) TO '{s}/vectors.lmdb/data.mdb' (FORMAT csv)",
        f"COPY (SELECT 1) TO '{outside}/leak.csv'",
        "SELECT count(*) FROM runs; COPY runs TO '/tmp/asign-safety-leak.csv'",
        # the host's files
        "SELECT * FROM read_csv('/etc/passwd')",
        "SELECT * FROM read_text('/etc/hostname')",
        "SELECT * FROM read_blob('/etc/hostname')",
        "SELECT * FROM glob('/*')",
        "SELECT * FROM sniff_csv('/etc/passwd')",
        f"SELECT * FROM read_parquet('{outside}/other.parquet')",
        f"SELECT * FROM read_parquet('{s}/results/metrics/*.parquet')",
        "SELECT * FROM 'https://example.com/x.parquet'",
        f"EXPORT DATABASE '{outside}/export'",
        f"ATTACH '{outside}/x.duckdb' AS x",
        f"ATTACH '{s}/manifest.json' AS m",
        # extensions, settings, secrets
        "INSTALL httpfs",
        "LOAD httpfs",
        "SET enable_external_access = true",
        "SET lock_configuration = false",
        "RESET enable_external_access",
        "PRAGMA threads = 1",
        "SET memory_limit = '1TB'",
        "CALL pragma_version()",
        "CREATE SECRET s (TYPE s3, KEY_ID 'k', SECRET 'v')",
        # the session's catalogue
        "CREATE TABLE t AS SELECT 1",
        "CREATE OR REPLACE VIEW runs AS SELECT 1 AS run_id",
        "CREATE MACRO m(x) AS x",
        "INSERT INTO runs VALUES (1)",
        "UPDATE runs SET status = 'done'",
        "DELETE FROM runs",
        "DROP VIEW runs",
        "ALTER VIEW runs RENAME TO r",
        "PREPARE p AS SELECT 1",
        "CHECKPOINT",
        "VACUUM",
        "DETACH memory",
        "USE memory",
    ]


def test_query_refuses_every_write_and_host_access(with_run, tmp_path):
    store, rid = with_run
    outside = tmp_path / "outside"
    outside.mkdir()
    pq.write_table(pa.table({"x": [1]}), outside / "other.parquet")
    before = snapshot(store)
    seen = {}
    for sql in _refused_sql(store, rid, outside):
        code, out, err = cli("query", "--store", store, sql)
        line = one_error(code, err)
        assert "refused" in line, (sql, line)
        assert out == "", sql
        seen[sql] = line
    assert snapshot(store) == before  # not one byte of the store changed
    assert sorted(p.name for p in outside.iterdir()) == ["other.parquet"]
    assert not Path("/tmp/asign-safety-leak.csv").exists()
    check_clean(store)
    # what reading still does
    code, out, err = cli("query", "--store", store, "--format", "json",
                         "SELECT r.status, count(*) AS n FROM runs r JOIN metrics m USING (run_id) "
                         "GROUP BY 1")
    assert code == 0, err
    assert json.loads(out)[0]["status"] == "done"
    for sql in ("EXPLAIN SELECT * FROM spots", "WITH a AS (SELECT 1 AS x) SELECT * FROM a",
                "FROM genes", "DESCRIBE runs", "SELECT * FROM query('SELECT 1 AS one')"):
        code, out, err = cli("query", "--store", store, sql)
        assert code == 0, (sql, err)


def test_query_out_writes_a_result_file_outside_the_store_only(with_run, tmp_path):
    store, _ = with_run
    sql = ("SELECT metric, value, CASE WHEN metric = 'mse' THEN 'nan'::DOUBLE ELSE value END AS v "
           "FROM metrics ORDER BY 1")
    for ext in ("csv", "json", "parquet"):
        out = tmp_path / f"r.{ext}"
        code, stdout, err = cli("query", "--store", store, "--out", out, sql)
        assert code == 0, err
        assert stdout == "" and "row(s) written to" in err
        assert not list(tmp_path.glob(".*.tmp"))
    rows = json.loads((tmp_path / "r.json").read_text())  # strict JSON: NaN is null
    assert any(r["v"] is None for r in rows) and "NaN" not in (tmp_path / "r.json").read_text()
    assert b"\r\n" not in (tmp_path / "r.csv").read_bytes()
    assert pq.read_table(tmp_path / "r.parquet").num_rows == len(rows)

    before = snapshot(store)
    for target in (store / "tables" / "genes.parquet", store / "results" / "x.csv",
                   store / "manifest.json"):
        line = one_error(*cli("query", "--store", store, "--out", target,
                              "SELECT * FROM genes")[::2])
        assert "inside the store" in line or "unknown result file type" in line, line
    link = tmp_path / "link"
    link.symlink_to(store / "results")
    line = one_error(*cli("query", "--store", store, "--out", link / "m.parquet",
                          "SELECT * FROM metrics")[::2])
    assert "inside the store" in line
    assert snapshot(store) == before


def test_forged_or_swollen_results_are_caught(with_run):
    store, rid = with_run
    path = store / "results" / "metrics" / f"{rid}.parquet"
    original = path.read_bytes()
    table = pq.read_table(path)  # same schema and asign metadata, same rows, better numbers
    forged = table.set_column(table.schema.get_field_index("value"), "value",
                              pa.array(np.full(table.num_rows, 0.99)))
    pq.write_table(forged, path)
    code, _, err = cli("check", "--store", store)
    assert code == 1 and f"problem: {path}: content does not match the sha256 recorded" in err, err

    # a small file whose footer claims far more rows than were written: refused before decoding
    rows = 5_000_000
    first = {c: table.column(c).to_numpy(zero_copy_only=False)[:1] for c in table.column_names}
    swollen = pa.table({c: pa.array(np.repeat(v, rows)) for c, v in first.items()},
                       schema=table.schema)
    pq.write_table(swollen, path, compression="zstd")
    assert path.stat().st_size < 200_000  # a few kB claiming 5M rows
    t0 = time.perf_counter()
    # one run's damaged results file is left out of its view with a warning naming it; it
    # does not take the store's queries down
    code, out, err = cli("query", "--store", store, "SELECT count(*) AS n FROM metrics",
                         "-f", "csv")
    assert code == 0 and out.splitlines() == ["n", "0"], err
    assert f"{path}: table claims {rows} rows" in err and f"{table.num_rows} were recorded" in err
    assert "left out of the metrics view" in err
    assert time.perf_counter() - t0 < 30
    code, _, err = cli("check", "--store", store)
    assert code == 1 and str(path) in err
    path.write_bytes(original)
    check_clean(store)

    # the same for a table train reads (ingest's tables carry records too)
    spots = store / "tables" / "spots" / "S1.parquet"
    original = spots.read_bytes()
    table = pq.read_table(spots)
    first = {c: table.column(c).to_numpy(zero_copy_only=False)[:1] for c in table.column_names}
    pq.write_table(pa.table({c: pa.array(np.repeat(v, rows)) for c, v in first.items()},
                            schema=table.schema), spots, compression="zstd")
    line = one_error(*cli("train", "--store", store, "--model", "mean", "--run", "again")[::2])
    assert f"{spots}: table claims {rows} rows, {table.num_rows} were recorded" in line
    spots.write_bytes(original)
    check_clean(store)


# --- checkpoints and symlinks --------------------------------------------------------------

class _Planted:
    """Pickled, this runs ``touch`` when unpickled with weights_only=False."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_planted_checkpoint_is_refused_not_run(toy_store, tmp_path):
    import torch

    from asign.train import TrainConfig, run

    cfg = TrainConfig(store=toy_store, model="asign3d", run="ck", epochs=3, hidden=16, heads=1)
    part = run(cfg, max_epochs=1)
    ckpt = open_store(toy_store).checkpoint(part.run_id)
    assert ckpt.load()["state"]["epoch"] == 1  # real checkpoints load as plain data
    marker = tmp_path / "pwned"
    torch.save({"run_id": part.run_id, "fold": 0, "state": _Planted(marker), "finished": {}},
               ckpt.path)
    line = one_error(*cli("train", "--store", toy_store, "--model", "asign3d", "--run", "ck",
                          "--epochs", "3", "--hidden", "16", "--heads", "1", "--resume")[::2])
    assert "checkpoint refused" in line and str(ckpt.path) in line
    assert not marker.exists()


def test_no_write_follows_a_symlink_out_of_the_store(toy_store, tmp_path):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (toy_store / "checkpoints").symlink_to(outside, target_is_directory=True)
    line = one_error(*cli("train", "--store", toy_store, "--model", "asign3d", "--run", "s",
                          "--epochs", "1", "--hidden", "16", "--heads", "1")[::2])
    assert "refusing to write through a symlink" in line
    (toy_store / "checkpoints").unlink()
    shutil.rmtree(toy_store / "results" / "metrics", ignore_errors=True)
    (toy_store / "results").mkdir(exist_ok=True)
    (toy_store / "results" / "metrics").symlink_to(outside, target_is_directory=True)
    line = one_error(*cli("train", "--store", toy_store, "--model", "mean", "--run", "s")[::2])
    assert "refusing to write through a symlink" in line
    store = open_store(toy_store)
    (toy_store / "qc").symlink_to(outside, target_is_directory=True)
    from asign.errors import StoreError

    with pytest.raises(StoreError, match="symlink"):
        store.write_thumbnail("S1_L1", np.zeros((2, 2, 3), np.uint8))
    (toy_store / "tables" / "genes.parquet").unlink()
    (toy_store / "tables" / "genes.parquet").symlink_to(outside / "genes.parquet")
    with pytest.raises(StoreError, match="symlink"):
        store.write("genes", {"gene": ["a"], "rank": [0], "mean_count": [1.0]})
    assert list(outside.iterdir()) == []


# --- one writer, interrupted runs ----------------------------------------------------------

def _tiny_samples(root: Path) -> tuple[Path, Path]:
    from asign.commands.synthetic import make_demo_sample

    a = make_demo_sample(root / "a", n_layers=2, grid=6, image_px=320, n_genes=10)
    b = Path(shutil.copytree(a, root / "b"))
    text = (b / "manifest.toml").read_text()
    (b / "manifest.toml").write_text(text.replace('sample = "demo"', 'sample = "other"')
                                     .replace('section = "demo_L', 'section = "other_L'))
    return a, b


INGEST = ("--weights", "random", "--n-genes", "10", "--steps", "register,align")


def test_second_ingest_waits_then_names_the_holder(tmp_path):
    """A holder (another process, with the real lock) keeps the store: the ingest waits
    --wait seconds with a message and fails naming it; once the holder is killed (-9),
    the kernel has released the lock and the same ingest runs."""
    a, _ = _tiny_samples(tmp_path)
    store = tmp_path / "store"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from pathlib import Path; from asign.store.locks import writer_lock\n"
        f"with writer_lock(Path({str(store / 'locks' / 'ingest.lock')!r}), wait=0):\n"
        "    print('held', flush=True); time.sleep(300)")],
                              stdout=subprocess.PIPE, text=True, env=ENV)
    try:
        assert holder.stdout.readline().strip() == "held"
        t0 = time.perf_counter()
        out = subprocess.run(_cli_proc("ingest", a, "--store", store, *INGEST, "--wait", "1.5"),
                             capture_output=True, text=True, env=ENV, timeout=120)
        waited = time.perf_counter() - t0
        line = one_error(out.returncode, out.stderr)
        assert f"another ingest is writing this store: pid {holder.pid} on " in line
        assert "waiting up to 1.5 s" in out.stderr and waited >= 1.5
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert not (store / "tables").exists()  # nothing was written while it waited
    code, _, err = cli("ingest", a, "--store", store, *INGEST, "--wait", "0")
    assert code == 0, err
    check_clean(store)


def test_two_real_ingests_into_one_store_both_land(tmp_path):
    a, b = _tiny_samples(tmp_path)
    store = tmp_path / "store"
    procs = [subprocess.Popen(_cli_proc("ingest", src, "--store", store, *INGEST, "--wait", "300"),
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=ENV)
             for src in (a, b)]
    errs = [p.communicate(timeout=600)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errs
    assert all("Traceback" not in e for e in errs)
    assert sum("another ingest is writing this store" in e for e in errs) == 1, errs  # one waited
    rows = open_store(store).query(
        "SELECT sample_id, count(*) AS n FROM sections GROUP BY 1 ORDER BY 1").to_pylist()
    assert rows == [{"sample_id": "demo", "n": 2}, {"sample_id": "other", "n": 2}]
    check_clean(store)


def _status(store, name: str) -> list[str]:
    return store.query(f"SELECT status FROM runs WHERE name = '{name}'").column(0).to_pylist()


def test_killed_run_reads_as_interrupted(toy_store):
    proc = subprocess.Popen(_cli_proc("train", "--store", toy_store, "--model", "asign3d", "--run",
                                      "long", "--epochs", "5000", "--hidden", "16", "--heads", "1"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
    store = open_store(toy_store)
    try:
        deadline = time.monotonic() + 120
        status = []
        while not status:
            assert time.monotonic() < deadline and proc.poll() is None
            status = _status(store, "long")
            time.sleep(0.2)
        assert status == ["running"]  # alive: its process holds the run's lock
        time.sleep(0.5)
        assert _status(store, "long") == ["running"]
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert _status(store, "long") == ["interrupted"]
    code, _, err = cli("check", "--store", toy_store)
    assert code == 0 and "is interrupted (its process died while running" in err, err


# --- non-finite numbers --------------------------------------------------------------------

def test_non_finite_embedding_stops_the_run_and_check_finds_it(toy_store):
    from conftest import TOY_ENCODER

    from asign.store import EmbeddingRows

    store = open_store(toy_store)
    manifest = store.manifest()
    # as ingest records it: check reads the LMDB
    manifest["steps"]["S1"]["embed"] = {"fingerprint": "toy"}
    store.save_manifest(manifest)
    with store.vectors(readonly=False) as vec:
        vec.put(embeddings=[EmbeddingRows(TOY_ENCODER, "spot", ["S1_L2/3"],
                                          np.full((1, 16), np.nan, np.float16))])
    # similarity reads the spot embeddings (mean/idw/cli read none since placed-by-coordinates)
    line = one_error(*cli("train", "--store", toy_store, "--model", "similarity", "--run",
                          "nan")[::2])
    assert "section S1_L2: 1 spots have non-finite (NaN/inf) spot embeddings" in line
    assert _status(store, "nan") == ["failed"]
    assert store.query("SELECT count(*) FROM metrics m JOIN runs r USING (run_id) "
                       "WHERE r.name = 'nan'").column(0)[0].as_py() == 0
    code, _, err = cli("check", "--store", toy_store)
    assert code == 1 and "embeddings of sample S1 hold NaN/inf (first in section S1_L2" in err, err


def test_non_finite_label_stops_the_run_and_check_finds_it(toy_store):
    store = open_store(toy_store)
    labels = store.read("labels", key="S1").to_pylist()
    labels[40]["value"][2] = float("inf")
    store.write("labels", {k: [r[k] for r in labels] for k in labels[0]}, key="S1")
    store.save_manifest(store.manifest())  # recorded: only the value check can tell
    line = one_error(*cli("train", "--store", toy_store, "--model", "mean", "--run", "nan")[::2])
    sid = labels[40]["section_id"]
    assert f"section {sid}: 1 label vectors of sample S1 contain NaN/inf" in line
    code, _, err = cli("check", "--store", toy_store)
    assert code == 1 and "1 label vectors hold NaN/inf" in err, err


def test_non_finite_predictions_stop_the_run(toy_store, monkeypatch):
    from asign.errors import NumericError
    from asign.train import TrainConfig, baselines, run

    def broken(yk, n):
        out = np.tile(yk.mean(axis=0), (n, 1))
        out[n // 2] = np.nan
        return out

    monkeypatch.setattr(baselines, "mean_profile", broken)
    with pytest.raises(NumericError, match=r"section S1_L\d: mean predicted NaN/inf for 1 spots"):
        run(TrainConfig(store=toy_store, model="mean", run="nanpred"))
    store = open_store(toy_store)
    assert _status(store, "nanpred") == ["failed"]
    check_clean(toy_store)


# --- images --------------------------------------------------------------------------------

def _png_header_only(path: Path, width: int, height: int) -> None:
    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
                     + chunk(b"IDAT", zlib.compress(b"\0" * 16))
                     + chunk(b"IEND", b""))


def _with_image(sample: Path, make) -> Path:
    """The sample with its first section's image replaced by ``make(path)``'s file."""
    old = "images/L1.jpg"
    new = sample / "images" / "L1.png"
    make(new)
    text = (sample / "manifest.toml").read_text()
    (sample / "manifest.toml").write_text(text.replace(old, "images/L1.png"))
    return sample


def test_image_headers_are_checked_before_decoding(tmp_path):
    import resource

    from PIL import Image

    from asign.commands.synthetic import make_demo_sample

    limit = Image.MAX_IMAGE_PIXELS
    base = make_demo_sample(tmp_path / "base", n_layers=2, grid=6, image_px=320, n_genes=10)
    cases = {
        "bomb": (lambda p: _png_header_only(p, 100_000, 100_000),
                 "image claims 10,000,000,000 pixels, above asign's limit"),
        "gray8": (lambda p: Image.fromarray(np.full((320, 320), 120, np.uint8)).save(p),
                  "single-channel (grayscale, mode L) image refused"),
        "gray16": (lambda p: Image.fromarray(np.full((320, 320), 30000, np.uint16)).save(p),
                   "single-channel 16-bit (grayscale, mode I;16) image refused"),
        "small": (lambda p: Image.fromarray(np.full((100, 100, 3), 200, np.uint8)).save(p),
                  "spot centre(s) of L1.csv fall outside the 100×100 image"),
    }
    for name, (make, expected) in cases.items():
        sample = _with_image(Path(shutil.copytree(base, tmp_path / name)), make)
        store = tmp_path / f"store-{name}"
        rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        t0 = time.perf_counter()
        line = one_error(*cli("ingest", sample, "--store", store, *INGEST)[::2])
        assert expected in line and str(sample / "images" / "L1.png") in line, line
        assert time.perf_counter() - t0 < 20
        # < 200 MB more (kB)
        assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0 < 200_000
        assert not (store / "tables").exists()  # refused before anything was written
    assert Image.MAX_IMAGE_PIXELS == limit  # PIL's own guard is left as it was


def test_sixteen_bit_rgb_is_converted(tmp_path):
    import tifffile
    from PIL import Image

    from asign.ingest.images import image_header, read_thumbnail

    rgb8 = np.asarray(Image.open(_first_image(tmp_path)).convert("RGB"))
    path = tmp_path / "rgb16.tif"
    tifffile.imwrite(path, rgb8.astype(np.uint16) * 257)
    head = image_header(path)
    assert head.sixteen_bit and head.mode == "RGB"
    thumb = read_thumbnail(path, 1.0)
    assert thumb.dtype == np.uint8 and np.abs(thumb.astype(int) - rgb8).max() <= 1


def _first_image(tmp_path: Path) -> Path:
    from asign.commands.synthetic import make_demo_sample

    return make_demo_sample(tmp_path / "s", n_layers=2, grid=6, image_px=320,
                            n_genes=10) / "images" / "L1.jpg"


def test_report_pictures_are_replaced_atomically(tmp_path):
    """A failing picture write leaves the previous file whole (temporary file + os.replace)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from asign.report import plots

    out = tmp_path / "map.png"
    fig = plt.figure()
    plots._save(fig, out)
    good = out.read_bytes()

    def fail(*args, **kwargs):
        Path(args[0]).write_bytes(b"half")
        raise OSError("disk went away")

    fig.savefig = fail
    with pytest.raises(Exception, match="disk went away|cannot write"):
        plots._save(fig, out)
    plt.close(fig)
    assert out.read_bytes() == good and not list(tmp_path.glob(".*.tmp"))


def test_report_and_export_outputs_never_land_in_the_store(with_run):
    store, _ = with_run
    before = snapshot(store)
    line = one_error(*cli("report", "--store", store, "--run", "m", "--out", store / "tables")[::2])
    assert "refusing to write the report inside the store" in line
    line = one_error(*cli("export", "--store", store, "--run", "m", "--h5ad",
                          store / "tables" / "genes.parquet")[::2])
    assert "refusing to write the .h5ad export inside the store" in line
    assert snapshot(store) == before
