"""Commands that overlap in time, with real processes and the real kernel locks
(store/locks.py): a train reads a store shared, an ingest writes it alone; whoever comes
second waits --wait seconds, then fails in one line naming the holder (pid, host, command,
since); a holder killed with -9 blocks nobody."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cli_errors import one_error
from manifest_gen import simple, write_manifest
from typer.testing import CliRunner

from asign.cli import app
from asign.errors import StoreError
from asign.store.locks import writer_lock

runner = CliRunner()
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _cli(*args: object, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "asign.cli", *map(str, args)], capture_output=True,
                          text=True, env=ENV, timeout=timeout)


def _holder(store: Path, kind: str) -> subprocess.Popen:
    """Another process holding the store's lock as an ingest (writer) or a train (reader)."""
    lock = "writer_lock" if kind == "writer" else "reader_lock"
    code = ("import time; from pathlib import Path; from asign.store.locks import " + lock + "\n"
            f"with {lock}(Path({str(store / 'locks' / 'ingest.lock')!r}), wait=0):\n"
            "    print('held', flush=True); time.sleep(300)")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                            env=ENV)
    assert proc.stdout.readline().strip() == "held"
    return proc


def _kill(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def test_train_during_an_ingest_is_refused_naming_it_then_runs(toy_store):
    holder = _holder(toy_store, "writer")
    try:
        t0 = time.perf_counter()
        out = _cli("train", "--store", toy_store, "--model", "mean", "--run", "m", "--wait", "1")
        waited = time.perf_counter() - t0
        line = one_error(out.returncode, out.stderr)
        assert f"another ingest is writing this store: pid {holder.pid} on " in line
        assert "since " in line and "--wait SECONDS" in line and waited >= 1
        assert "is waiting up to 1 s" in out.stderr
    finally:
        _kill(holder)  # -9: the kernel frees its lock; nothing is left to clean up
    runs = toy_store / "results" / "runs"
    assert not runs.exists() or not any(runs.iterdir())  # the refused train wrote nothing
    out = runner.invoke(app, ["train", "--store", str(toy_store), "--model", "mean", "--run", "m"])
    assert out.exit_code == 0, out.stderr


def test_ingest_during_a_train_waits_then_names_the_train(tmp_path):
    store = tmp_path / "store"
    manifest = write_manifest(tmp_path / "src", simple("A"))
    readers = [_holder(store, "reader"), _holder(store, "reader")]  # shared: both hold it
    try:
        out = _cli("ingest", manifest, "--store", store, "--wait", "0.5")
        line = one_error(out.returncode, out.stderr)
        assert f"a train is reading this store: pid {readers[0].pid} on " in line
        assert "and 1 more" in line
    finally:
        for r in readers:
            _kill(r)
    assert not (store / "tables").exists()  # nothing was written while refused
    out = runner.invoke(app, ["ingest", str(manifest), "--store", str(store), "--wait", "0"])
    assert out.exit_code == 0, out.stderr


def test_a_real_train_holds_the_store_while_it_runs(toy_store):
    """A live `asign train` (not a stand-in) keeps an ingest out while it runs."""
    proc = subprocess.Popen([sys.executable, "-m", "asign.cli", "train", "--store", str(toy_store),
                             "--model", "asign2d", "--run", "slow", "--epochs", "400",
                             "--hidden", "16", "--heads", "1", "--threads", "1"],
                            stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, env=ENV)
    try:
        readers = toy_store / "locks" / "ingest.lock.readers"
        deadline = time.monotonic() + 120
        while not (readers.exists() and any(readers.iterdir())) and proc.poll() is None:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert proc.poll() is None, proc.stderr.read()
        lock = toy_store / "locks" / "ingest.lock"
        with pytest.raises(StoreError) as err, writer_lock(lock, wait=0):
            pass
        assert f"a train is reading this store: pid {proc.pid} " in str(err.value)
        assert "train --store" in str(err.value)  # the holder's command line
    finally:
        _kill(proc)
    with writer_lock(toy_store / "locks" / "ingest.lock", wait=0):  # the dead train blocks nobody
        pass
