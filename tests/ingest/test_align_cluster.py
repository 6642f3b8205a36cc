"""Align on a local Dask cluster of 2 worker processes: its units are one per section
(read and check), one per adjacent pair (ANTs) and one per sample (chain, spots, referee);
with --syn the store equals the serial --syn store; one progress bar counts every task of
the run; a section that fails is one line naming it and its fix, and the other sample's
alignment is kept."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
from store_compare import assert_same_store

pytest.importorskip("distributed")
pytest.importorskip("torch")

SMALL = dict(encoder="resnet18-l3-64", weights="random", batch_size=16, n_genes=8)


class Recorder:
    """A Reporter that remembers its bars: description → [total, done, labels seen]."""

    def __init__(self) -> None:
        self.bars: dict[int, list[Any]] = {}
        self.names: dict[int, str] = {}

    def task(self, description: str, total: float | None) -> int:
        i = len(self.names)
        self.names[i], self.bars[i] = description, [total or 0, 0, []]
        return i

    def grow(self, task: int, n: float) -> None:
        self.bars[task][0] += n

    def advance(self, task: int, n: float = 1, **fields: Any) -> None:
        self.bars[task][1] += n
        self.bars[task][2].append(fields.get("last"))

    def done(self, task: int) -> None:
        pass


def _demo(base: Path, name: str = "demo") -> Path:
    from asign.commands.synthetic import make_demo_sample

    src = make_demo_sample(base / name, n_layers=3, grid=6, image_px=320, um_per_px=4.0, n_genes=8)
    toml = src / "manifest.toml"
    text = toml.read_text()
    # the last layer becomes image-only, so a virtual lattice is laid (and warped) too
    text = text.replace('counts = "counts/L3.csv"\nspots = "spots/L3.csv"\n', "")
    toml.write_text(text.replace('"demo', f'"{name}'))
    return src


def test_align_units_on_two_workers_give_the_serial_syn_store_under_one_bar(tmp_path):
    """register + align --syn (its units alone: seconds): the same files and manifest as
    serially, every unit counted by the one bar of the cluster."""
    from store_compare import file_hashes, manifest_without_timestamps

    from asign.ingest.config import AlignOptions, IngestConfig
    from asign.ingest.pipeline import run_pipeline
    from asign.progress import silent
    from asign.store import open_store

    src = _demo(tmp_path)
    stores = {}
    rec = Recorder()
    for name, workers, rep in (("serial", 0, silent()), ("dask", 2, rec)):
        stores[name] = tmp_path / name
        summary = run_pipeline(IngestConfig(sources=(src,), store=stores[name],
                                            steps=("register", "align"),
                                            align=AlignOptions(syn=True), workers=workers, **SMALL),
                               rep)
        assert summary["samples"]["demo"]["align"]["qc"]["demo_L1"]["pair"] == "demo_L1->demo_L2"
    assert file_hashes(stores["dask"]) == file_hashes(stores["serial"])
    assert (manifest_without_timestamps(stores["dask"])
            == manifest_without_timestamps(stores["serial"]))
    warps = open_store(stores["dask"]).read("warps", key="demo").to_pandas()
    assert sorted(warps.section_id) == ["demo_L1", "demo_L3"]  # --syn stored a field per pair

    (bar,) = [i for i, n in rec.names.items() if n == "Dask tasks"]  # one bar over the cluster
    total, done, labels = rec.bars[bar]
    # align's units: 3 sections read, 2 pairs registered, 1 finish, 3 fine thumbnails
    assert total == done == 9
    assert {"pair demo_L1->demo_L2", "pair demo_L3->demo_L2", "sample demo"} <= set(labels)
    assert labels.count("section demo_L1") == 2


@pytest.mark.slow  # two whole ingests, one on a fresh cluster: ~1-4 min on 2 shared cores
def test_syn_ingest_on_two_workers_gives_the_serial_syn_store(tmp_path):
    from asign.ingest.config import AlignOptions, IngestConfig
    from asign.ingest.pipeline import run_pipeline
    from asign.progress import silent

    src = _demo(tmp_path)
    stores = {}
    for name, workers in (("serial", 0), ("dask", 2)):
        stores[name] = tmp_path / name
        run_pipeline(IngestConfig(sources=(src,), store=stores[name], align=AlignOptions(syn=True),
                                  workers=workers, **SMALL), silent())
    assert_same_store(stores["serial"], stores["dask"])


def test_a_failed_align_section_is_one_line_and_the_other_sample_is_kept(tmp_path):
    from typer.testing import CliRunner

    from asign.cli import app
    from asign.store import open_store

    good, bad = _demo(tmp_path, "good"), _demo(tmp_path, "bad")
    store = tmp_path / "store"
    base = ["ingest", str(good), str(bad), "--store", str(store), "--encoder", "resnet18-l3-64",
            "--weights", "random", "--n-genes", "8"]
    runner = CliRunner()
    assert runner.invoke(app, [*base, "--steps", "register"]).exit_code == 0
    image = bad / "images" / "L2.jpg"
    intact = image.read_bytes()
    image.write_bytes(intact[:2000])  # truncated after registration: reading it fails in align
    res = runner.invoke(app, [*base, "--steps", "align", "--workers", "2"])
    assert res.exit_code == 1
    lines = [ln for ln in res.output.strip().splitlines() if ln.startswith("error:")]
    # one line: the pairs and the finish that needed the section fail with it, unrepeated
    assert len(lines) == 1 and lines[0].count("L2.jpg") == 1, res.output
    assert "section bad_L2" in lines[0] and "Fix:" in lines[0]
    steps = open_store(store).manifest()["steps"]
    # the other sample's work is kept
    assert "align" in steps["good"] and "align" not in steps["bad"]
    image.write_bytes(intact)
    again = runner.invoke(app, [*base, "--steps", "align", "--workers", "2", "--json"])
    assert again.exit_code == 0, again.output
    shutil.rmtree(store)
