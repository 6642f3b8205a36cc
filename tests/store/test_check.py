"""`asign check` on a real cut-down store (her2st C2–C4 at quarter resolution, 30 genes,
random encoder weights: the ingest test_pipeline.py and test_crash.py share, plus one `mean`
run): a clean store passes; each kind of corruption is listed precisely and makes the
command exit 1."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from her2st_small import HER2ST, SMALL_INGEST, small_her2st_store
from typer.testing import CliRunner

from asign.cli import app
from asign.schemas import SCHEMA_VERSION
from asign.store import open_store
from asign.store.check import check_store, inspect_store
from asign.store.vectors import _emb_key, _patch_key  # white-box: these tests damage entries

pytestmark = pytest.mark.skipif(not HER2ST.exists(), reason="needs ../shared/data/her2st")

runner = CliRunner()
REINGEST = "run `asign check --repair` (it redoes every step whose outputs changed)"


@pytest.fixture(scope="module")
def clean_store(tmp_path_factory) -> Path:
    from asign import train
    from asign.train.config import TrainConfig

    store = Path(shutil.copytree(small_her2st_store(tmp_path_factory)[1],
                                 tmp_path_factory.mktemp("check") / "S"))
    train.run(TrainConfig(store=store, model="mean", run="r"))
    return store


def _encoder(root: Path) -> tuple[str, int]:
    embed = open_store(root).manifest()["params"]["embed"]
    return embed["encoder"], int(embed["dim"])


@pytest.fixture
def store(clean_store, tmp_path) -> Path:
    dst = tmp_path / "S"
    shutil.copytree(clean_store, dst)
    return dst


def _check(root: Path) -> list[str]:
    return check_store(open_store(root))


def _cli_check(root: Path) -> tuple[int, list[str]]:
    result = runner.invoke(app, ["check", "--store", str(root)])
    return result.exit_code, [ln for ln in result.output.splitlines() if ln.startswith("problem: ")]


def _rewrite(path: Path, table: pa.Table) -> None:
    """Replace a table file with a well-formed one (right schema and version)."""
    pq.write_table(table, path)


def _rerecord(root: Path) -> None:
    """Record the current tables in the manifest, as a buggy writer would: then only the
    semantic checks can find what was changed."""
    store = open_store(root)
    store.save_manifest(store.manifest())


def test_clean_store_passes(clean_store):
    assert _check(clean_store) == []
    code, problems = _cli_check(clean_store)
    assert code == 0 and problems == []
    result = runner.invoke(app, ["check", "--store", str(clean_store), "--json"])
    assert result.exit_code == 0
    assert json.loads(result.output)["ok"] is True
    manifest = open_store(clean_store).manifest()
    assert "tables/edges/C.parquet" in manifest["tables"]  # hashes recorded by ingest


def test_edited_table_no_longer_matches_its_hash(store):
    path = store / "tables" / "spots" / "C.parquet"
    table = pq.read_table(path)
    px = table.column("px").to_numpy().copy()
    px[0] += 1.0
    _rewrite(path, table.set_column(table.schema.get_field_index("px"), "px", pa.array(px)))
    assert _check(store) == [f"{path}: content does not match the sha256 in the manifest (edited, "
                             f"or written by an interrupted ingest); {REINGEST}"]
    code, problems = _cli_check(store)
    assert code == 1 and len(problems) == 1 and str(path) in problems[0]


def test_newer_schema_version_of_a_table(store):
    path = store / "tables" / "edges" / "C.parquet"
    table = pq.read_table(path)
    meta = {**table.schema.metadata, b"asign.schema_version": str(SCHEMA_VERSION + 1).encode()}
    _rewrite(path, table.replace_schema_metadata(meta))
    problems = _check(store)
    assert (f"{path}: written by schema version {SCHEMA_VERSION + 1}, this asign reads up to "
            f"{SCHEMA_VERSION} Fix: upgrade asign (pip install -U asign) to read this store"
            in problems)
    assert any(p.startswith(f"{path}: content does not match") for p in problems)
    assert len(problems) == 2
    assert _cli_check(store)[0] == 1


def test_newer_schema_version_of_the_store(store):
    manifest = json.loads((store / "manifest.json").read_text())
    manifest["schema_version"] = SCHEMA_VERSION + 1
    (store / "manifest.json").write_text(json.dumps(manifest))
    # the store cannot even be opened: the CLI says so in one line and exits 1
    result = runner.invoke(app, ["check", "--store", str(store)])
    assert result.exit_code == 1
    assert result.output.strip() == (f"error: {store / 'manifest.json'}: store written by schema "
                                     f"version {SCHEMA_VERSION + 1}, this asign reads up to "
                                     f"{SCHEMA_VERSION} Fix: upgrade asign to read this store")


def test_deleted_lmdb_embedding(store):
    encoder, _ = _encoder(store)
    emb = pq.read_table(store / "tables" / "embeddings" / "C.parquet").to_pylist()
    victim = next(r for r in emb if r["level"] == "spot")
    with open_store(store).vectors(readonly=False) as vec, vec._begin(write=True) as txn:
        assert txn.delete(_emb_key(encoder, "spot", victim["id"]))
    problems = _check(store)
    assert problems == [f"{store / 'vectors.lmdb'}: 1 of {len(emb)} embeddings listed in "
                        f"{store / 'tables' / 'embeddings' / 'C.parquet'} are missing "
                        f"(e.g. emb/{encoder}/spot/{victim['id']}); {REINGEST}"]
    assert _cli_check(store)[0] == 1


def test_deleted_lmdb_patch_and_stale_entries(store):
    encoder, dim = _encoder(store)
    spots = pq.read_table(store / "tables" / "spots" / "C.parquet").column("spot_id").to_pylist()
    with open_store(store).vectors(readonly=False) as vec, vec._begin(write=True) as txn:
        assert txn.delete(_patch_key(spots[5]))
        # an embedding no table lists (left by an earlier ingest): a note, not a problem
        txn.put(_emb_key(encoder, "spot", "C2/99x99"), np.zeros(dim, np.float16).tobytes())
    report = inspect_store(open_store(store))
    assert len(report.problems) == 1
    assert report.problems[0].startswith(f"{store / 'vectors.lmdb'}: 1 of {len(spots)} spot "
                                         f"patches of sample C missing (e.g. patch/{spots[5]})")
    assert report.notes == [f"{store / 'vectors.lmdb'}: 1 spot embeddings of section C2 are not "
                            f"listed in {store / 'tables' / 'embeddings' / 'C.parquet'} "
                            "(stale entries of an earlier ingest; harmless)"]


def test_edge_to_a_spot_that_does_not_exist(store):
    path = store / "tables" / "edges" / "C.parquet"
    table = pq.read_table(path)
    extra = table.slice(0, 1).to_pylist()[0] | {"dst_spot_id": "C3/99x99"}
    _rewrite(path, pa.concat_tables([table, pa.Table.from_pylist([extra], schema=table.schema)]))
    problems = _check(store)
    dangling = (f"{path}: 1 edge destination endpoints are not spots of sample C (e.g. C3/99x99); "
                f"{REINGEST}")
    assert dangling in problems and len(problems) == 2  # and the hash no longer matches
    _rerecord(store)
    assert _check(store) == [dangling]
    assert _cli_check(store) == (1, [f"problem: {dangling}"])


def test_deleted_table_is_listed_and_reingest_recreates_it(store, clean_store):
    from asign.ingest import run as ingest_run
    from asign.ingest.config import IngestConfig

    path = store / "tables" / "edges" / "C.parquet"
    path.unlink()
    assert sorted(_check(store)) == sorted([
        f"{path}: missing although step graph of sample C is recorded as finished; {REINGEST}",
        f"{path}: missing, although the manifest records it; {REINGEST}"])
    assert _cli_check(store)[0] == 1
    # the fix the message gives works: ingest redoes the graph step only
    sections = pq.read_table(store / "tables" / "sections.parquet")
    src = Path(sections.column("counts_path")[0].as_py()).parents[1]
    summary = ingest_run(IngestConfig(sources=(src,), store=store, **SMALL_INGEST))
    assert summary["ran"] == ["C:graph"]
    assert _check(store) == []
    assert path.read_bytes() == (clean_store / "tables" / "edges" / "C.parquet").read_bytes()


def test_unrecorded_corrupt_and_leftover_files(store):
    stray = store / "tables" / "edges" / "X.parquet"
    shutil.copy(store / "tables" / "edges" / "C.parquet", stray)
    truncated = store / "tables" / "tiles" / "C.parquet"
    truncated.write_bytes(truncated.read_bytes()[:100])
    leftover = store / "tables" / ".genes.parquet.abc123.tmp"
    leftover.write_bytes(b"partial")
    problems = _check(store)
    assert (f"{stray}: not recorded in the manifest (written by an interrupted ingest?); "
            f"{REINGEST}") in problems
    assert any(p.startswith(f"{truncated}: table is corrupt (") for p in problems)
    assert any(p.startswith(f"{truncated}: content does not match") for p in problems)
    assert (f"{leftover}: leftover temporary file from an interrupted write (safe to delete)"
            in problems)
    assert len(problems) == 4


def test_semantic_problems_in_well_formed_tables(store):
    """Tables that are readable and recorded, but disagree with each other."""
    spots_path = store / "tables" / "spots" / "C.parquet"
    spots = pq.read_table(spots_path)
    ids = spots.column("spot_id").to_pylist()
    ids[1] = ids[0]
    _rewrite(spots_path,
             spots.set_column(spots.schema.get_field_index("spot_id"), "spot_id", pa.array(ids)))
    labels_path = store / "tables" / "labels" / "C.parquet"
    labels = pq.read_table(labels_path)
    values = labels.column("value").to_pylist()
    values[0] = values[0][:-1]
    value_type = labels.schema.field("value").type
    _rewrite(labels_path, labels.set_column(labels.schema.get_field_index("value"), "value",
                                            pa.array(values, type=value_type)))
    _rerecord(store)
    problems = _check(store)
    n_genes = pq.read_table(store / "tables" / "genes.parquet").num_rows
    assert f"{spots_path}: 1 duplicate spot ids (e.g. {ids[0]})" in problems
    assert (f"{labels_path}: 1 label vectors do not have the {n_genes} genes of the panel"
            in problems)
    # the overwritten id is gone from spots: labels, patches map and edges that used it are listed
    ghost = spots.column("spot_id")[1].as_py()
    assert f"{labels_path}: 1 spot ids not in the spots table (e.g. {ghost})" in problems
    assert all(str(store) in p for p in problems)


def test_changed_input_file(store):
    path = store / "tables" / "sections.parquet"
    sections = pq.read_table(path)
    hashes = sections.column("counts_sha256").to_pylist()
    hashes[1] = "0" * 64  # as if C3's counts file had changed since ingest
    column = sections.schema.get_field_index("counts_sha256")
    _rewrite(path, sections.set_column(column, "counts_sha256", pa.array(hashes)))
    _rerecord(store)
    counts = sections.column("counts_path")[1].as_py()
    (run_file,) = (store / "results" / "runs").glob("*.parquet")
    # the run trained on the sections table as it was: its binding no longer holds either
    assert _check(store) == [f"{counts}: counts of section C3 changed since ingest (re-run ingest)",
                             f"{run_file}: run {run_file.stem} no longer matches the store it was "
                             "trained on (the sample's rows of the sections table changed); "
                             "`asign check --repair` marks it stale, then re-run the same "
                             "`asign train` command"]


def test_results_of_a_run_without_a_runs_row(store):
    metrics_dir = store / "results" / "metrics"
    (run_file,) = metrics_dir.glob("*.parquet")
    orphan = metrics_dir / "ghost-mean-00000000.parquet"
    table = pq.read_table(run_file)
    _rewrite(orphan,
             table.set_column(0, "run_id", pa.array(["ghost-mean-00000000"] * table.num_rows)))
    assert _check(store) == [f"{orphan}: metrics of run ghost-mean-00000000, which has no runs "
                             "row; `asign check --repair` deletes it"]
    assert _cli_check(store)[0] == 1
