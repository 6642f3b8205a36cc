"""Crash safety, tested by killing real `asign` processes with SIGKILL (issue 6).

ingest: one store on cut-down real her2st data (C2–C4) is killed eleven times at seeded
random points inside align (3), patches (1), embed (4) and the graph step (3), re-running the
same command after each kill; the run that finally completes must leave a store identical to an
uninterrupted ingest: the same bytes in every table and QC file, no stray file, the same
LMDB entries, the same manifest apart from timestamps.

train: `asign train` is killed between two checkpoints, then run again with --resume; its
metrics and predictions equal those of an uninterrupted run.

How a kill is placed: the child's log lines (plain lines on a pipe) tell which step it is in;
after a seeded random delay the child is frozen with SIGSTOP, the store is read to prove the
kill lands inside the intended step (the manifest does not record it, its output is
incomplete), and SIGKILL goes to the frozen process, so the state read is the state killed.
The graph step takes tens of milliseconds: there the frozen child is advanced in
sub-millisecond slices (SIGCONT, sleep, SIGSTOP) until the store shows the wanted moment:
the edge list half written (its temporary file present), or written but not yet recorded.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from her2st_small import HER2ST, small_her2st_store
from store_compare import assert_same_store

ARGS = ["--samples", "C", "--weights", "random", "--batch-size", "16"]
ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}
SEED = 6  # issue 6


class Child:
    """A real `asign` command in a subprocess; a thread collects its stderr log lines."""

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "asign.cli", *args],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                     env=env or ENV)
        self.lines: list[str] = []
        self._eof = False
        self._new = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self._new:
                self.lines.append(line.rstrip("\n"))
                self._new.notify_all()
        with self._new:
            self._eof = True
            self._new.notify_all()

    def __enter__(self) -> Child:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:  # a failed test must not leave a process behind
            self.proc.kill()
            self.proc.wait(timeout=60)
        self._reader.join(timeout=10)

    def tail(self, n: int = 15) -> str:
        return "\n".join(self.lines[-n:])

    def wait_line(self, pattern: str, accept=lambda m: True, timeout: float = 600) -> re.Match:
        """The first log line (from the start) that matches ``pattern`` and ``accept``."""
        rx, deadline, seen = re.compile(pattern), time.monotonic() + timeout, 0
        with self._new:
            while True:
                for line in self.lines[seen:]:
                    if (m := rx.search(line)) and accept(m):
                        return m
                seen = len(self.lines)
                if self._eof:
                    raise AssertionError(f"process ended (rc {self.proc.wait()}) before a log line "
                                         f"matching {pattern!r}:\n{self.tail()}")
                if not self._new.wait(timeout=max(0.0, deadline - time.monotonic())):
                    raise AssertionError(f"no log line matching {pattern!r} in {timeout} "
                                         f"s:\n{self.tail()}")

    def freeze(self) -> bool:
        """SIGSTOP, and wait until every thread of the child has stopped; False when the
        child had already ended."""
        os.kill(self.proc.pid, signal.SIGSTOP)
        _, status = os.waitpid(self.proc.pid, os.WUNTRACED)
        if os.WIFSTOPPED(status):
            return True
        self.proc.returncode = os.waitstatus_to_exitcode(status)
        return False

    def thaw(self) -> None:
        os.kill(self.proc.pid, signal.SIGCONT)

    def kill9(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        assert self.proc.wait(timeout=60) == -signal.SIGKILL

    def finish(self, timeout: float = 600) -> None:
        assert self.proc.wait(timeout=timeout) == 0, self.tail(40)


# ingest ------------------------------------------------------------------------------------

@dataclass
class Kill:
    """Where one kill landed, as read from the store while the child was frozen."""

    step: str
    moment: str
    delay_s: float
    steps_done: list[str]
    temp_files: list[str] = field(default_factory=list)
    emb_batches: int = 0
    run_s: float = 0.0  # wall time of the killed run


def _steps_done(store: Path) -> list[str]:
    manifest = json.loads((store / "manifest.json").read_text())
    return list(manifest["steps"].get("C", {}))


def _temp_files(store: Path) -> list[str]:
    return sorted(p.relative_to(store).as_posix() for p in store.rglob(".*.tmp"))


def _emb_batches(store: Path) -> int:
    """Embedding batches committed so far (each commits with its ``done/emb/...`` marker)."""
    from asign.store import open_store

    with open_store(store).vectors() as vec:
        return vec.count_done()


def _state(store: Path, step: str, moment: str, delay: float) -> Kill:
    return Kill(step, moment, round(delay, 3), _steps_done(store), _temp_files(store),
                _emb_batches(store) if (store / "vectors.lmdb").exists() else 0)


def _kill_after(cmd: tuple[str, ...], store: Path, step: str, moment: str, pattern: str,
                delay: float, accept=lambda m: True) -> Kill:
    """Run ``cmd``, wait for a log line of ``step`` (``moment`` names it), sleep ``delay``
    and kill -9."""
    t0 = time.monotonic()
    with Child(*cmd) as child:
        child.wait_line(pattern, accept)
        time.sleep(delay)
        assert child.freeze(), (f"ended before the kill (rc {child.proc.returncode}):\n"
                                f"{child.tail()}")
        kill = _state(store, step, moment, delay)
        child.kill9()
    kill.run_s = round(time.monotonic() - t0, 2)
    return kill


GRAPH_MOMENTS = ("reading", "writing", "recording", "done")


def _graph_moment(store: Path, temps_before: set[str], edges_before: tuple | None) -> str:
    """Where the graph step of sample C is, judged from the store alone."""
    if "graph" in _steps_done(store):
        return "done"
    edges = store / "tables" / "edges" / "C.parquet"
    if edges.exists() and (edges.stat().st_ino, edges.stat().st_mtime_ns) != edges_before:
        return "recording"  # the edge list is in place, the manifest does not say so yet
    if any(t.startswith("tables/edges/") for t in set(_temp_files(store)) - temps_before):
        return "writing"  # the edge list's temporary file is being written
    return "reading"


def _kill_in_graph(cmd: tuple[str, ...], store: Path, target: str, rng: random.Random) -> Kill:
    """Kill inside the graph step at ``target`` or, when a slice overshoots it, the first
    moment after it that is still inside the step ("done" means the kill missed)."""
    edges = store / "tables" / "edges" / "C.parquet"
    edges_before = (edges.stat().st_ino, edges.stat().st_mtime_ns) if edges.exists() else None
    temps_before = set(_temp_files(store))
    t0 = time.monotonic()
    with Child(*cmd) as child:
        child.wait_line(r" graph C …$")
        alive = child.freeze()
        while alive and (moment := _graph_moment(store, temps_before, edges_before)) != "done" and \
                GRAPH_MOMENTS.index(moment) < GRAPH_MOMENTS.index(target):
            child.thaw()
            time.sleep(rng.uniform(1e-4, 1e-3))
            alive = child.freeze()
        if not alive:  # the child finished the step and exited inside one slice
            return _state(store, "graph", "done", 0.0)
        kill = _state(store, "graph", moment, 0.0)
        child.kill9()
    kill.run_s = round(time.monotonic() - t0, 2)
    return kill


def _progress(step: str, fraction: float):
    """Accept a progress line ``{step} C k/n`` once k ≥ fraction·n."""
    return rf" {step} C (\d+)/(\d+)", lambda m: int(m[1]) >= fraction * int(m[2])


pytestmark = pytest.mark.skipif(not HER2ST.exists(), reason="needs ../shared/data/her2st")


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[Path, Path]:
    return small_her2st_store(tmp_path_factory)


@pytest.fixture(scope="module")
def killed(reference, tmp_path_factory) -> tuple[Path, list[Kill]]:
    """The kill matrix: (the store after its final, completing run, the kills)."""
    src, _ = reference
    store = tmp_path_factory.mktemp("crash") / "S"
    cmd = ("ingest", str(src), "--store", str(store), *ARGS)
    rng = random.Random(SEED)
    kills = []
    for moment, pattern, longest in (("thumbnails", r" align C …$", 0.05),
                                     # 3 sections read of 9 units
                                     # (3 sections, 2 pairs, 1 finish, 3 fine)
                                     ("first pair", r" align C 3/9", 1.0),
                                     ("second pair", r" aligned \w+->\w+", 0.5)):
        kills.append(_kill_after(cmd, store, "align", moment, pattern, rng.uniform(0, longest)))
    kills.append(_kill_after(cmd, store, "patches", "cropping", r" patches C …$",
                             rng.uniform(0, 0.8)))
    for fraction in (0.15, 0.35, 0.55, 0.75):  # embedding resumes batch by batch
        pattern, accept = _progress("embed", fraction)
        kills.append(_kill_after(cmd, store, "embed", f"after {fraction:.0%}", pattern,
                                 rng.uniform(0, 1.0), accept))
    targets = ["reading", "writing", "recording"]
    snapshot = store.parent / "snapshot"
    for _ in range(8):  # a slice that overshoots "writing" lands in "recording": try again
        if not targets:
            break
        shutil.rmtree(snapshot, ignore_errors=True)
        shutil.copytree(store, snapshot)
        kill = _kill_in_graph(cmd, store, targets[0], rng)
        if kill.moment == "done":  # the step finished inside one slice: undo and retry
            shutil.rmtree(store)
            shutil.copytree(snapshot, store)
            continue
        kills.append(kill)
        if kill.moment in targets:
            targets.remove(kill.moment)
    shutil.rmtree(snapshot, ignore_errors=True)
    final = subprocess.run([sys.executable, "-m", "asign.cli", *cmd, "--json"], capture_output=True,
                           text=True, env=ENV, timeout=600)
    assert final.returncode == 0, final.stderr[-3000:]
    assert json.loads(final.stdout)["ran"] == ["C:graph"]  # nothing finished was redone
    return store, kills


def test_kills_landed_inside_each_step(killed, reference):
    store, kills = killed
    table = "\n".join(map(str, kills))
    print(table)  # shown with -s
    assert len(kills) >= 10, table
    order = ("register", "align", "patches", "embed", "graph")
    for k in kills:
        # the steps before the killed one are recorded, the killed one is not
        assert sorted(k.steps_done) == sorted(order[:order.index(k.step)]), table
    assert [k.step for k in kills].count("align") == 3, table
    assert [k.step for k in kills].count("embed") == 4, table
    graph_moments = {k.moment for k in kills if k.step == "graph"}
    assert graph_moments >= {"reading", "writing", "recording"}, table
    # the write of the edge list was cut: its temporary file was there when the kill landed
    writing = next(k for k in kills if k.moment == "writing")
    assert any(t.startswith("tables/edges/") for t in writing.temp_files)
    # embedding was cut between batches each time and resumed where it stopped
    batches = [k.emb_batches for k in kills if k.step == "embed"]
    total = _emb_batches(reference[1])
    assert 0 < batches[0] and batches == sorted(batches) and batches[-1] < total, (batches, total)


def test_store_after_kills_equals_uninterrupted(killed, reference):
    store, _ = killed
    assert_same_store(reference[1], store)  # includes: no stray temporary file is left


# train -------------------------------------------------------------------------------------

EPOCHS = 20
TRAIN = ("--model", "asign3d", "--epochs", str(EPOCHS), "--hidden", "16", "--heads", "2")
TRAIN_ENV = {**ENV, "OMP_NUM_THREADS": "1"}  # one thread count for every run: same bits


def _run_results(root: Path, name: str) -> tuple[dict, list, dict]:
    """(metrics by (fold, section, metric), predictions in spot order, runs row) of run ``name``."""
    from asign.store import open_store

    store = open_store(root)
    (row,) = store.query(f"SELECT * FROM runs WHERE name = '{name}'").to_pylist()
    metrics = {(r["fold"], r["section_id"], r["metric"]): r["value"] for r in store.query(
        f"SELECT * FROM metrics WHERE run_id = '{row['run_id']}'").to_pylist()}
    preds = store.query("SELECT section_id, spot_id, value FROM predictions WHERE run_id = "
                        f"'{row['run_id']}' ORDER BY section_id, spot_id").to_pylist()
    return metrics, [(p["section_id"], p["spot_id"], p["value"]) for p in preds], row


def test_kill9_train_mid_epoch_then_resume_equals_uninterrupted(toy_store):
    import torch

    store = str(toy_store)
    with Child("train", "--store", store, "--run", "whole", *TRAIN, env=TRAIN_ENV) as child:
        child.finish()

    rng = random.Random(SEED)
    cmd = ("train", "--store", store, "--run", "cut", *TRAIN)
    with Child(*cmd, env=TRAIN_ENV) as child:
        # progress lines come after the epoch's checkpoint is saved: wait for epoch ≥ 4,
        # then kill at a random moment of the next few epochs (~0.1 s each)
        child.wait_line(rf" asign3d fold 0 (\d+)/{EPOCHS}", lambda m: int(m[1]) >= 4)
        time.sleep(rng.uniform(0, 0.4))
        child.freeze()
        (ckpt,) = (toy_store / "checkpoints").glob("cut-*.pt")
        at_kill = torch.load(ckpt, map_location="cpu", weights_only=True)["state"]["epoch"]
        child.kill9()
    assert 4 <= at_kill < EPOCHS
    # it never got to finish: the runs view shows it died
    assert _run_results(toy_store, "cut")[2]["status"] == "interrupted"

    with Child(*cmd, "--resume", env=TRAIN_ENV) as child:
        child.finish()
    whole, cut = _run_results(toy_store, "whole"), _run_results(toy_store, "cut")
    assert cut[2]["status"] == "done"
    # it continued from the checkpoint: only the epochs after it ran again
    assert json.loads(cut[2]["config"])["timings"]["epochs_run"] == EPOCHS - at_kill
    # CPU kernels with a fixed thread count are deterministic and every epoch re-seeds:
    # the resumed run is bit-identical to the uninterrupted one, not merely close
    assert cut[0] == whole[0] and len(cut[0]) > 0
    assert cut[1] == whole[1] and len(cut[1]) > 0
    assert not list(toy_store.rglob(".*.tmp"))


def test_only_temporary_files_of_dead_writers_are_removed(tmp_path):
    from asign.store.atomic import _writer, atomic_path, remove_stale_temps

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    host = _writer().rsplit("-", 1)[0]
    names = {"dead": f".t.parquet.{host}-{dead}.abc.tmp", "live": f".t.parquet.{_writer()}.abc.tmp",
             "other_host": f".t.parquet.elsewhere-{dead}.abc.tmp", "unnamed": ".t.parquet.abc.tmp"}
    for name in names.values():
        (tmp_path / "tables").mkdir(exist_ok=True)
        (tmp_path / "tables" / name).write_bytes(b"half")
    with atomic_path(tmp_path / "tables" / "t.parquet") as tmp:  # a write in progress meanwhile
        tmp.write_bytes(b"whole")
        assert remove_stale_temps(tmp_path) == [tmp_path / "tables" / names["dead"]]
        assert tmp.exists()
    left = sorted(p.name for p in (tmp_path / "tables").iterdir())
    assert left == sorted([names["live"], names["other_host"], names["unnamed"], "t.parquet"])
