"""Ingest on a local Dask cluster of 2 worker processes: the cut-down real her2st sample
gives a store identical to the serial one (tables by SHA-256, LMDB entry by entry, manifest
without timestamps), and a worker SIGKILLed mid-ingest leaves a store that the re-run
completes to the same identical store."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from her2st_small import make_small_her2st
from store_compare import assert_same_store

pytest.importorskip("distributed")
pytest.importorskip("torch")

# A small encoder keeps the test in seconds; the dispatch is the same for every encoder.
CFG = dict(samples="C", encoder="resnet18-l3-64", weights="random", batch_size=16)


@pytest.fixture(scope="module")
def serial(tmp_path_factory) -> tuple[Path, Path]:
    from asign.ingest import run
    from asign.ingest.config import IngestConfig

    base = tmp_path_factory.mktemp("cluster")
    src = make_small_her2st(base / "her2st", sections=("C2", "C3", "C4"), n_genes=30)
    store = base / "serial"
    run(IngestConfig(sources=(src,), store=store, **CFG))
    return src, store


def test_two_workers_give_the_serial_store(serial, tmp_path):
    from asign.ingest import run
    from asign.ingest.config import IngestConfig

    src, ref = serial
    out = tmp_path / "dask"
    summary = run(IngestConfig(sources=(src,), store=out, workers=2, **CFG))
    assert {"C:align", "C:patches", "C:embed", "C:graph"} <= set(summary["ran"])
    assert_same_store(ref, out)


def _children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        kids = (task / "children").read_text().split()
        out += [int(k) for k in kids]
    return out


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


@pytest.mark.slow  # two ingests in subprocesses: ~3 min on 2 shared cores
@pytest.mark.safety  # so `make test` still runs it, in its second stage
@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs Linux /proc")
def test_worker_killed_mid_ingest_then_rerun_is_identical(serial, tmp_path):
    src, ref = serial
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "asign.cli", "ingest", str(src), "--store", str(out),
           "--samples", "C", "--encoder", CFG["encoder"], "--weights", "random", "--batch-size",
           "16", "--workers", "2"]
    env = dict(os.environ)  # as the serial reference ran (the manifest records torch's threads)
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    killed = None
    deadline = time.monotonic() + 240
    try:
        # wait until the patches step has committed something (LMDB exists and the run is
        # past align), then SIGKILL one worker process: its task dies with it
        while time.monotonic() < deadline and proc.poll() is None:
            if (out / "vectors.lmdb").exists():
                workers = [p for p in _children(proc.pid) if "spawn_main" in _cmdline(p)
                           or "multiprocessing" in _cmdline(p)]
                if workers:
                    os.kill(workers[0], signal.SIGKILL)
                    killed = workers[0]
                    break
            time.sleep(0.2)
        proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert killed is not None, "no worker process was found to kill"
    # Dask may have re-run the lost task on the restarted worker and finished; either way the
    # same command completes the store, and it equals the serial one
    rerun = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert_same_store(ref, out)
    shutil.rmtree(out)


def test_a_failed_section_is_one_line_and_the_others_are_kept(tmp_path):
    from typer.testing import CliRunner

    from asign.cli import app
    from asign.commands.synthetic import make_demo_sample
    from asign.store import open_store

    src = make_demo_sample(tmp_path / "demo", n_layers=3, grid=10)
    store = tmp_path / "store"
    base = ["ingest", str(src), "--store", str(store), "--encoder", "resnet18-l3-64", "--weights",
            "random"]
    runner = CliRunner()
    assert runner.invoke(app, [*base, "--steps", "register,align"]).exit_code == 0
    image = src / "images" / "L2.jpg"
    good = image.read_bytes()
    image.write_bytes(good[:3000])  # truncated after registration: cropping its patches fails
    bad = runner.invoke(app, [*base, "--steps", "patches", "--workers", "2"])
    assert bad.exit_code == 1
    lines = [ln for ln in bad.output.strip().splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "section demo_L2" in lines[0]
    assert "L2.jpg" in lines[0] and "Fix:" in lines[0]
    with open_store(store).vectors() as vec:
        done = [k.decode() for k in vec.entries() if k.startswith(b"done/patches/")]
    assert sorted(d.rsplit("/", 1)[1] for d in done) == ["demo_L1", "demo_L3"]  # their work is kept
    image.write_bytes(good)
    ok = runner.invoke(app, [*base, "--workers", "2", "--json"])
    assert ok.exit_code == 0, ok.output
    assert runner.invoke(app, ["check", "--store", str(store)]).exit_code == 0


@pytest.mark.slow  # two histo-classic embeds of the cut-down sample: ~3 min on 2 shared cores
def test_standardised_encoder_on_two_workers_gives_the_serial_store(tmp_path_factory, tmp_path):
    """The z-score statistics are a unit of their own (on a worker here) and every embed
    unit applies them: the standardised vectors and the manifest's statistics hash equal a
    serial run's."""
    from her2st_small import HER2ST, SMALL_INGEST, small_her2st_store

    from asign.ingest import run
    from asign.ingest.config import IngestConfig
    from asign.store import open_store

    if not HER2ST.exists():
        pytest.skip("needs ../shared/data/her2st")
    src, master = small_her2st_store(tmp_path_factory)
    paths = {}
    for name, workers in (("serial", 0), ("dask", 2)):
        paths[name] = tmp_path / name
        shutil.copytree(master, paths[name])
        summary = run(IngestConfig(sources=(src,), store=paths[name], steps=("embed",),
                                   workers=workers, **{**SMALL_INGEST, "encoder": "histo-classic"}))
        assert summary["ran"] == ["C:embed"]
    assert_same_store(paths["serial"], paths["dask"])
    embed = open_store(paths["dask"]).manifest()["params"]["embed"]
    assert embed["encoder"] == "histo-classic"
    assert embed["standardised"]["C"]["reference_section"] == "C2"
