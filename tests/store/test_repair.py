"""Whatever check finds, one documented command repairs in place: the deleted-`vectors.lmdb`
case on the cut-down real her2st store. `asign check` flags it (it used to say ok), and both
`asign check --repair` and the original `asign ingest` command (which used to skip every
step) restore a store identical to the one before."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from her2st_small import HER2ST, SMALL_INGEST, small_her2st_store
from store_compare import assert_same_store
from typer.testing import CliRunner

from asign.cli import app

pytestmark = [pytest.mark.skipif(not HER2ST.exists(), reason="needs ../shared/data/her2st"),
              pytest.mark.slow, pytest.mark.safety]
runner = CliRunner()


@pytest.fixture
def stores(tmp_path_factory: pytest.TempPathFactory, tmp_path: Path) -> tuple[Path, Path, Path]:
    src, built = small_her2st_store(tmp_path_factory)
    damaged = Path(shutil.copytree(built, tmp_path / "S"))
    shutil.rmtree(damaged / "vectors.lmdb")
    check = runner.invoke(app, ["check", "--store", str(damaged)])
    assert check.exit_code == 1
    assert f"problem: {damaged / 'vectors.lmdb'}: missing" in check.output
    assert "asign check --repair" in check.output
    return src, built, damaged


def test_check_repair_restores_deleted_vectors(stores):
    _, built, damaged = stores
    result = runner.invoke(app, ["check", "--store", str(damaged), "--repair"])
    assert result.exit_code == 0, result.output
    assert "ingest redid C:patches" in result.output
    assert "ingest redid C:register" not in result.output
    assert_same_store(built, damaged)


def test_ingest_itself_redoes_what_check_flags(stores):
    src, built, damaged = stores
    result = runner.invoke(app, ["ingest", str(src), "--store", str(damaged), "--samples",
                                 SMALL_INGEST["samples"], "--weights", SMALL_INGEST["weights"],
                                 "--batch-size", str(SMALL_INGEST["batch_size"]), "--json"])
    assert result.exit_code == 0, result.output
    assert_same_store(built, damaged)
