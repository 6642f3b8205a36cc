"""One store, one meaning (store/binding.py), on the cut-down real her2st store with a
finished `mean` run:

- a re-ingest that would change what the run read (here: another normalisation) is refused
  in one line, naming the run, and leaves the store as it was;
- with --invalidate-runs it goes ahead, the run is marked stale, `asign export` and
  `asign report` refuse it by name, and `asign check` says why;
- a binding broken behind asign's back (a buggy writer) is a check problem, and
  `asign check --repair` marks the run stale."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from her2st_small import HER2ST, SMALL_INGEST, small_her2st_store
from store_compare import file_hashes
from typer.testing import CliRunner

from asign.cli import app
from asign.store import open_store

pytestmark = pytest.mark.skipif(not HER2ST.exists(), reason="needs ../shared/data/her2st")
runner = CliRunner()


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    from asign import train
    from asign.train.config import TrainConfig

    src, built = small_her2st_store(tmp_path_factory)
    root = Path(shutil.copytree(built, tmp_path_factory.mktemp("binding") / "S"))
    result = train.run(TrainConfig(store=root, model="mean", run="r1"))
    return src, root, result.run_id


@pytest.fixture
def store(trained: tuple[Path, Path, str], tmp_path: Path) -> tuple[Path, Path, str]:
    src, root, run_id = trained
    return src, Path(shutil.copytree(root, tmp_path / "S")), run_id


def _ingest(src: Path, root: Path, *extra: str):
    args = ["ingest", str(src), "--store", str(root), "--samples", SMALL_INGEST["samples"],
            "--weights", SMALL_INGEST["weights"], "--batch-size", str(SMALL_INGEST["batch_size"]),
            "--threads", "1", *extra]
    return runner.invoke(app, args)


def _error_lines(output: str) -> list[str]:
    return [ln for ln in output.splitlines() if ln.startswith("error:")]


def test_run_records_what_it_read(store):
    _, root, run_id = store
    row = open_store(root).read("runs", key=run_id).to_pylist()[0]
    bound = json.loads(row["config"])["binding"]
    assert bound["normalisation"] == "log_ratio" and bound["samples"] == ["C"]
    assert bound["reads"] == {"features": False, "graph": False}  # mean reads neither
    assert "tables/labels/C.parquet" in bound["tables"] and bound["panel"]
    assert "tables/edges/C.parquet" not in bound["tables"]


def test_reingest_that_changes_a_run_is_refused_and_changes_nothing(store):
    src, root, run_id = store
    before = file_hashes(root)
    result = _ingest(src, root, "--normalisation", "log1p_cp10k", "--steps", "register")
    assert result.exit_code == 1
    (line,) = _error_lines(result.output)
    assert run_id in line and "normalisation log_ratio → log1p_cp10k" in line
    assert "--invalidate-runs" in line
    assert {k: v for k, v in file_hashes(root).items() if not k.startswith("locks/")} == \
        {k: v for k, v in before.items() if not k.startswith("locks/")}
    assert runner.invoke(app, ["check", "--store", str(root)]).exit_code == 0


@pytest.fixture(scope="module")
def reads_vectors_and_graph(trained, tmp_path_factory) -> tuple[Path, Path, dict[str, str]]:
    """A copy of the store with a run bound to the embeddings (ridge) and one bound to the
    graph (cli)."""
    from asign import train
    from asign.train.config import TrainConfig

    src, root, _ = trained
    copy = Path(shutil.copytree(root, tmp_path_factory.mktemp("binding-vg") / "S"))
    ids = {m: train.run(TrainConfig(store=copy, model=m, run=m, threads=1)).run_id
           for m in ("ridge", "cli")}
    return src, copy, ids


# every option that decides a bound step, changed from its recorded value (the default
# included): the refusal names that option and both values
@pytest.mark.parametrize(("flags", "says", "bound"), [
    (["--stain-norm", "none"], "--stain-norm macenko → none", "ridge"),
    (["--tta", "2"], "--tta 1 → 2", "ridge"),
    (["--batch-size", "8"], "--batch-size 16 → 8", "ridge"),
    (["--k-same", "6"], "--k-same 12 → 6", "cli"),
])
def test_a_refused_reingest_names_the_option_that_changed(reads_vectors_and_graph, tmp_path,
                                                          flags, says, bound):
    src, root, ids = reads_vectors_and_graph
    root = Path(shutil.copytree(root, tmp_path / "S"))
    args = ["ingest", str(src), "--store", str(root), "--samples", SMALL_INGEST["samples"],
            "--weights", SMALL_INGEST["weights"], "--threads", "1",
            *(["--batch-size", str(SMALL_INGEST["batch_size"])] if "--batch-size" not in flags
              else []), *flags]
    result = runner.invoke(app, args)
    assert result.exit_code == 1, result.output
    (line,) = _error_lines(result.output)
    assert ids[bound] in line and f"({says})" in line, line
    assert "pass the options the store was made with" in line


@pytest.mark.slow
def test_invalidate_runs_marks_them_stale_and_export_refuses_them(store, tmp_path):
    src, root, run_id = store
    result = _ingest(src, root, "--normalisation", "log1p_cp10k", "--steps", "register",
                     "--invalidate-runs")
    assert result.exit_code == 0, result.output
    row = open_store(root).read("runs", key=run_id).to_pylist()[0]
    assert row["status"] == "stale" and "log1p_cp10k" in json.loads(row["config"])["stale"]
    for command in (["export", "--h5ad", str(tmp_path / "r1.h5ad")],
                    ["report", "--out", str(tmp_path / "report")]):
        out = runner.invoke(app, [*command, "--store", str(root), "--run", "r1"])
        assert out.exit_code == 1
        (line,) = _error_lines(out.output)
        assert run_id in line and "normalisation log_ratio → log1p_cp10k" in line
    assert not (tmp_path / "r1.h5ad").exists()
    check = runner.invoke(app, ["check", "--store", str(root)])
    assert check.exit_code == 0  # a stale run is an accepted state: a note, with the fix
    assert any(ln.startswith("note:") and run_id in ln and "stale" in ln
               for ln in check.output.splitlines())


def test_binding_broken_behind_asigns_back_is_found_and_repair_marks_it_stale(store):
    _, root, run_id = store
    s = open_store(root)
    manifest = s.manifest()
    manifest["params"]["labels"]["normalisation"] = "log1p_cp10k"  # a buggy writer
    s.save_manifest(manifest)
    check = runner.invoke(app, ["check", "--store", str(root)])
    assert check.exit_code == 1
    (line,) = [ln for ln in check.output.splitlines() if ln.startswith("problem:")]
    assert run_id in line and "no longer matches the store" in line and "--repair" in line
    repaired = runner.invoke(app, ["check", "--store", str(root), "--repair"])
    assert repaired.exit_code == 0, repaired.output
    assert open_store(root).read("runs", key=run_id).column("status")[0].as_py() == "stale"
