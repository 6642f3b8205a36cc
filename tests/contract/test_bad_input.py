"""Bad inputs end to end through the CLI, on real her2st data cut down (C2 + C3, 8 genes,
quarter-resolution images): each case gives one `error:` line naming the file and the fix,
exits 1, and leaves the store exactly as it was (every file's bytes compared).

The reader-level details of each case are tested in test_readers_*.py; here the whole
command runs against a store that already holds the good sample."""

from __future__ import annotations

import contextlib
import errno
import gzip
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from cli_errors import one_error
from her2st_small import HER2ST, make_small_her2st
from PIL import Image
from typer.testing import CliRunner

from asign.cli import app
from asign.schemas import SCHEMA_VERSION

pytestmark = pytest.mark.skipif(not HER2ST.exists(), reason="needs ../shared/data/her2st")

ARGS = ["--samples", "C", "--weights", "random"]
runner = CliRunner()


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> dict[str, Path]:
    """The cut-down source, a store with it registered, and one with it registered + aligned."""
    from asign.ingest import run as ingest_run
    from asign.ingest.config import IngestConfig

    root = tmp_path_factory.mktemp("bad_input")
    src = make_small_her2st(root / "her2st", sections=("C2", "C3"), n_genes=8)
    registered, aligned = root / "registered", root / "aligned"
    ingest_run(IngestConfig(sources=(src,), store=registered, samples="C", weights="random",
                            steps=("register",)))
    shutil.copytree(registered, aligned)
    ingest_run(IngestConfig(sources=(src,), store=aligned, samples="C", weights="random",
                            steps=("register", "align")))
    return {"src": src, "registered": registered, "aligned": aligned}


@pytest.fixture
def src(good, tmp_path) -> Path:
    return Path(shutil.copytree(good["src"], tmp_path / "her2st"))


@pytest.fixture
def store(good, tmp_path) -> Path:
    """A copy of the store that already holds the good sample (registered and aligned)."""
    return Path(shutil.copytree(good["aligned"], tmp_path / "S"))


def snapshot(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


def cli(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, [str(a) for a in args])
    return result.exit_code, result.stderr


def ingest_fails(src: Path, store: Path, *extra: str) -> str:
    """Run a failing ingest into ``store``; the store must be unchanged. Returns the error."""
    before = snapshot(store)
    line = one_error(*cli("ingest", src, "--store", store, *ARGS, "--steps", "register,align",
                          *extra))
    assert snapshot(store) == before
    return line


def _image(src: Path, section: str) -> Path:
    return next((src / "ST-imgs" / "C" / section).glob("*.jpg"))


def _counts(src: Path, section: str) -> tuple[Path, pd.DataFrame]:
    path = src / "ST-cnts" / f"{section}.tsv.gz"
    return path, pd.read_csv(path, sep="\t", index_col=0)


def _write_counts(path: Path, df: pd.DataFrame) -> None:
    with gzip.open(path, "wt") as fh:
        df.to_csv(fh, sep="\t")


# --- images --------------------------------------------------------------------------------

@pytest.mark.parametrize("damage", ["truncated_jpeg", "zero_bytes", "truncated_tiff"])
def test_broken_image(src, store, damage):
    img = _image(src, "C3")
    if damage == "truncated_tiff":
        with Image.open(img) as im:
            im.save(img.with_suffix(".tif"))
        img.unlink()
        img = img.with_suffix(".tif")
    data = img.read_bytes()
    img.write_bytes(b"" if damage == "zero_bytes" else data[: len(data) // 2])
    line = ingest_fails(src, store)
    assert f"error: {img}: " in line
    assert ("empty (0 bytes)" if damage == "zero_bytes" else "unreadable or truncated") in line
    assert "Fix: re-export or re-download the image" in line


def test_image_much_smaller_than_the_spots_imply(src, store):
    img = _image(src, "C3")
    with Image.open(img) as im:
        im.resize((im.width // 2, im.height // 2)).save(img, quality=90)
        w, h = im.width // 2, im.height // 2
    line = ingest_fails(src, store)
    assert line.startswith(f"error: {img}: ") and f"fall outside the {w}×{h} image" in line
    assert "Fix: check that the image and the spot file belong to the same section" in line


def test_section_without_tissue(src, store):
    """A blank scan of the glass: the real image's background colour, JPEG noise, same size."""
    img = _image(src, "C3")
    with Image.open(img) as im:
        size = im.size
    rng = np.random.default_rng(0)
    glass = np.clip(np.array([234, 218, 233]) + rng.normal(0, 1.5, (size[1], size[0], 3)), 0, 255)
    Image.fromarray(glass.astype(np.uint8)).save(img, quality=90)
    line = ingest_fails(src, store)
    assert line.startswith(f"error: {img}: no tissue found")
    assert "Fix: check that the image shows an H&E section" in line


def test_image_at_another_resolution_is_refused_before_alignment(src, store):
    """C3 exported at 1.5× the resolution its spot file implies: the spots still fit in the
    image, but its tissue is 2.25× larger in µm² than C2's; no rigid transform can align
    that, and asign must not write one silently."""
    img = _image(src, "C3")
    with Image.open(img) as im:
        im.resize((im.width * 3 // 2, im.height * 3 // 2)).save(img, quality=90)
    line = ingest_fails(src, store)
    assert line.startswith(f"error: {_image(src, 'C2')}, {img}: pair C2->C3: the tissue areas")
    assert "imply a scale of 0.67 (allowed 0.8–1.25)" in line
    assert "Fix: check that each image has the µm/px its spot file implies" in line


def test_registration_that_fails_is_rejected_not_written(src, store, good):
    """A real pair forced into a wrong start (C2 turned by 180°): the registration ends with
    less tissue overlap than merely superposing the centres, and is rejected."""
    line = ingest_fails(src, store, "--init", "C2:C3:180")
    assert line.startswith(f"error: {_image(good['src'], 'C2')}, {_image(good['src'], 'C3')}: "
                           "pair C2->C3: registration failed, tissue overlap")
    assert "below the" in line and "of merely superposing the tissue centres" in line
    assert "Fix: check or drop the initial rotation/flip given for the pair C2:C3 (--init)" in line


# --- counts and genes ----------------------------------------------------------------------

@pytest.mark.parametrize(("bad", "expected"), [
    ("duplicate", "duplicate spot id"), ("nan", "NaN"), ("negative", "negative"),
    ("fraction", "non-integer"),
])
def test_bad_counts(src, store, bad, expected):
    path, df = _counts(src, "C3")
    if bad == "duplicate":
        df = pd.concat([df, df.iloc[[3]]])
    else:
        df = df.astype(object)
        df.iloc[4, 2] = {"nan": np.nan, "negative": -3, "fraction": 2.5}[bad]
    _write_counts(path, df)
    line = ingest_fails(src, store)
    assert line.startswith(f"error: {path}: ") and expected in line


def test_absent_gene_in_the_requested_panel(src, store, tmp_path):
    _, df = _counts(src, "C2")
    line = ingest_fails(src, store, "--genes", f"{df.columns[0]},NOPE1")
    assert line == (f"error: {src / 'ST-cnts' / 'C2.tsv.gz'}: requested gene(s) NOPE1 absent from "
                    "section C2 Fix: check the spelling (gene symbols as in the counts header) or "
                    "drop those genes")
    panel = tmp_path / "panel.txt"
    panel.write_text(f"# my panel\n{df.columns[1]}\nNOPE2\n")
    line = ingest_fails(src, store, "--genes", panel)
    assert "requested gene(s) NOPE2 absent from section C2" in line
    missing = tmp_path / "no-such-panel.txt"
    assert ingest_fails(src, store, "--genes", missing) == (
        f"error: {missing}: gene list file not found Fix: give an existing file with one gene per "
        "line, or comma-separated gene names")


def test_gene_panel_from_a_file(src, store, tmp_path):
    _, df = _counts(src, "C2")
    panel = tmp_path / "panel.txt"
    panel.write_text(f"{df.columns[3]}\n{df.columns[1]}, {df.columns[1]}\n")
    code, err = cli("ingest", src, "--store", store, *ARGS, "--steps", "register", "--genes", panel)
    assert code == 0, err
    genes = pq.read_table(store / "tables" / "genes.parquet").column("gene").to_pylist()
    assert genes == [df.columns[3], df.columns[1]]


# --- the store -----------------------------------------------------------------------------

def _bump_version(path: Path) -> None:
    table = pq.read_table(path)
    meta = {**table.schema.metadata, b"asign.schema_version": str(SCHEMA_VERSION + 1).encode()}
    pq.write_table(table.replace_schema_metadata(meta), path)


def _every_command(src: Path, store: Path) -> dict[str, list[str]]:
    return {"ingest": ["ingest", src, "--store", store, *ARGS, "--steps", "register,align"],
            "train": ["train", "--store", store, "--model", "mean", "--run", "r"],
            "query": ["query", "--store", store, "select count(*) from sections"],
            "check": ["check", "--store", store]}


def test_store_of_a_newer_schema_version(src, store):
    manifest = json.loads((store / "manifest.json").read_text())
    manifest["schema_version"] = SCHEMA_VERSION + 1
    (store / "manifest.json").write_text(json.dumps(manifest))
    before = snapshot(store)
    for name, args in _every_command(src, store).items():
        line = one_error(*cli(*args))
        assert line == (f"error: {store / 'manifest.json'}: store written by schema version "
                        f"{SCHEMA_VERSION + 1}, this asign reads up to {SCHEMA_VERSION} "
                        "Fix: upgrade asign to read this store"), name
        assert snapshot(store) == before, name


def test_table_of_a_newer_schema_version(src, store):
    path = store / "tables" / "sections.parquet"
    _bump_version(path)
    before = snapshot(store)
    expected = (f"{path}: written by schema version {SCHEMA_VERSION + 1}, this asign reads up to "
                f"{SCHEMA_VERSION} Fix: upgrade asign (pip install -U asign) to read this store")
    for name, args in _every_command(src, store).items():
        code, err = cli(*args)
        if name == "check":  # lists it among its problems
            assert code == 1 and f"problem: {expected}" in err.splitlines()
        else:
            assert one_error(code, err) == f"error: {expected}", name
        assert snapshot(store) == before, name


def _can_mount() -> bool:
    return os.geteuid() == 0 and shutil.which("mount") is not None


@contextlib.contextmanager
def _mounted(args: list[str], target: Path) -> Iterator[bool]:
    """``mount ARGS TARGET``; yields False when mounting is not permitted here."""
    target.mkdir(parents=True, exist_ok=True)
    if not _can_mount() or subprocess.run(["mount", *args, str(target)],
                                          capture_output=True).returncode:
        yield False
        return
    try:
        yield True
    finally:
        if subprocess.run(["umount", str(target)], capture_output=True).returncode:
            subprocess.run(["umount", "-l", str(target)], capture_output=True)


@contextlib.contextmanager
def read_only_store(store: Path, scratch: Path, how: str) -> Iterator[tuple[Path, list[str]]]:
    """The store made read-only, yielding (store path, command prefix). Tests run as root,
    which ignores permissions, so: ``bind``, a read-only bind mount (EROFS); ``user``, the
    commands run as user nobody over a world-readable copy (EACCES)."""
    if how == "bind":
        view = scratch / "ro"
        with _mounted(["--bind", str(store)], view) as bound:
            if not bound or subprocess.run(["mount", "-o", "remount,ro,bind", str(view)],
                                           capture_output=True).returncode:
                pytest.skip("cannot bind-mount read-only here (needs root and mount permission)")
            yield view, []
        return
    setpriv = shutil.which("setpriv")
    if os.geteuid() != 0 or setpriv is None:
        pytest.skip("cannot run a command as another user (needs root and setpriv)")
    shared = Path(tempfile.mkdtemp(prefix="asign-ro-"))
    try:
        shared.chmod(0o755)
        copy = Path(shutil.copytree(store, shared / "S"))
        yield copy, [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups"]
    finally:
        shutil.rmtree(shared)


def _run(prefix: list[str], *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HOME": tempfile.gettempdir(), "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.run([*prefix, sys.executable, "-m", "asign.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=300, env=env,
                          cwd=tempfile.gettempdir())


@pytest.mark.parametrize("how", ["bind", "user"])
def test_read_only_store(toy_store, good, tmp_path, how):
    """Writers fail in one line before changing anything; readers (query, check) work."""
    with read_only_store(toy_store, tmp_path, how) as (ro, prefix):
        before = snapshot(ro)
        out = _run(prefix, "ingest", good["src"], "--store", ro, *ARGS)
        assert one_error(out.returncode, out.stderr) == (
            f"error: {ro}: store directory is not writable Fix: check permissions (chmod u+w) or "
            "choose another --store directory")
        out = _run(prefix, "train", "--store", ro, "--model", "mean", "--run", "r")
        line = one_error(out.returncode, out.stderr)
        assert line.startswith(f"error: {ro / 'results' / 'runs'}/")
        assert ": store is not writable Fix:" in line
        out = _run(prefix, "query", "--store", ro, "--format", "json",
                   "select count(*) as n from spots")
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout) == [{"n": 5 * 30 + 30}]
        out = _run(prefix, "check", "--store", ro)
        assert out.returncode == 0 and out.stdout.strip() == f"{ro}: ok", out.stderr
        assert snapshot(ro) == before


def _fill(folder: Path, leave: int) -> Path:
    """Fill the file system of ``folder`` up to ``leave`` free bytes."""
    filler = folder / "filler"
    with open(filler, "wb") as fh:
        try:
            while True:
                fh.write(b"\0" * (1 << 16))
                fh.flush()
        except OSError as err:
            assert err.errno == errno.ENOSPC
    size = filler.stat().st_size
    os.truncate(filler, max(0, size - leave))
    return filler


def test_disk_full(good, tmp_path):
    """ENOSPC: one line, nothing half-written that a later run would trust, and the re-run
    after freeing space completes the store."""
    from asign.store import open_store
    from asign.store.check import check_store

    with _mounted(["-t", "tmpfs", "-o", "size=6m", "tmpfs"], tmp_path / "disk") as ok:
        if not ok:
            pytest.skip("cannot mount a small tmpfs here (needs root)")
        disk = tmp_path / "disk"
        store = Path(shutil.copytree(good["registered"], disk / "S"))
        src = good["src"]

        # full: the first write fails, the store is unchanged
        filler = _fill(disk, leave=0)
        before = snapshot(store)
        line = one_error(*cli("ingest", src, "--store", store, *ARGS, "--steps", "register",
                              "--n-genes", "6"))
        assert line.startswith(f"error: {store / 'tables'}/")
        assert ": no space left on device while writing" in line
        assert "Fix: free disk space or point --store at a larger disk" in line
        assert snapshot(store) == before

        # nearly full: align replaces two tables, then its QC pictures no longer fit
        filler.unlink()
        filler = _fill(disk, leave=150_000)
        line = one_error(*cli("ingest", src, "--store", store, *ARGS, "--steps", "register,align"))
        assert ": no space left on device while writing" in line
        assert not list(store.rglob("*.tmp")), "a temporary file was left behind"
        for table in store.rglob("*.parquet"):
            pq.read_table(table)  # every file there is complete
        manifest = open_store(store).manifest()
        assert "align" not in manifest["steps"]["C"]  # so the next run redoes align
        problems = check_store(open_store(store))
        assert sorted(p.split(":")[0] for p in problems) == [
            str(store / "tables" / "spots" / "C.parquet"),
            str(store / "tables" / "transforms" / "C.parquet")]

        # space again: the same command completes the store
        filler.unlink()
        code, err = cli("ingest", src, "--store", store, *ARGS, "--steps", "register,align")
        assert code == 0, err
        assert check_store(open_store(store)) == []
