"""The fault matrix: every kind of file a store holds (``store.layout.FILE_KINDS``, so a new
kind is covered by adding it there) × {delete, truncate, corrupt bytes, swap for a symlink,
plant a stranger}. Each cell asserts what docs/store.md promises:

- ``asign check`` flags the fault (lock files carry no data: a fault there changes nothing);
- ``asign check --repair`` restores a store identical to the one before the fault
  (tests/store_compare.py), or leaves only problems whose fix it names in one line (the
  results of a run, which only the run's own `asign train` command can recompute; the
  manifest, which nothing can rebuild), and a damaged checkpoint (a resume cache) is deleted;
- the other views are unaffected: the spots, sections and genes views answer as before.

The real parts run (Parquet, LMDB, DuckDB, ingest, a trained run) on the cut-down her2st
store. Cells whose repair recomputes ingest steps take tens of seconds: they are marked
``slow``; one of them per kind of file is also ``safety`` (CI's second stage, see ``_in_ci``);
the fast ones run in the default suite."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from store_compare import file_hashes, lmdb_entries, manifest_without_timestamps

from asign.errors import AsignError
from asign.store import open_store
from asign.store.check import inspect_store
from asign.store.layout import FILE_KINDS, FileKind, StoreLayout

FAULTS = ("delete", "truncate", "corrupt", "symlink", "stranger")
# Cells cheap enough for the default suite (no ingest step is recomputed); ~5 s each.
FAST = {("table:spots", "stranger"), ("table:predictions", "stranger"), ("table:genes", "symlink"),
        ("table:metrics", "corrupt"), ("run-record", "delete"), ("checkpoint", "truncate"),
        ("thumbnail", "stranger"), ("lock", "corrupt")}


# Kinds no view reads. (A damaged table file of any view still stops `asign query` before
# the repair: the skip-with-a-warning of an unreadable results file belongs to query.py.)
UNQUERIED = {"vectors", "vectors-lock", "checkpoint", "thumbnail", "alignment-picture", "lock"}


def _in_ci(i: int, kind: FileKind, fault: str) -> bool:
    """CI's second stage runs one slow cell per kind of file, the faults taken in turn (every
    kind and every fault covered, ~20 min on 2 cores); `make test-all` runs every cell."""
    return FAULTS[i % len(FAULTS)] == fault


def _cells() -> list:
    cells = []
    for i, kind in enumerate(FILE_KINDS):
        for fault in FAULTS:
            if (kind.name, fault) in FAST:
                marks = []
            elif _in_ci(i, kind, fault):
                marks = [pytest.mark.slow, pytest.mark.safety]
            else:
                marks = [pytest.mark.slow]
            cells.append(pytest.param(i, fault, id=f"{kind.name}[{kind.pattern}]-{fault}",
                                      marks=marks))
    return cells


@pytest.fixture(scope="module")
def master(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The cut-down her2st store with a finished baseline run (results, a write record) and
    a one-epoch asign2d run (a checkpoint): one file of every kind."""
    from her2st_small import small_her2st_store

    from asign.train import TrainConfig, run

    root = tmp_path_factory.mktemp("fault_matrix") / "store"
    shutil.copytree(small_her2st_store(tmp_path_factory)[1], root)
    run(TrainConfig(store=root, model="mean", run="r1"))
    run(TrainConfig(store=root, model="asign2d", run="r2", epochs=1, threads=1))
    # what a train killed while reading leaves (store/locks.py): its reader file, unlocked
    dead = root / "locks" / "ingest.lock.readers" / "host-1-1.json"
    dead.parent.mkdir(exist_ok=True)
    dead.write_text('{"pid": 1, "host": "host", "command": "asign train"}')
    return root


# Kinds the fixture cannot hold without a slow option: only a stranger can be planted.
OPTIONAL = {"table:warps": "written by `--syn` only"}


def _target(root: Path, kind: FileKind, fault: str) -> Path:
    found = sorted(p for p in root.glob(kind.pattern) if p.is_file())
    if not found and kind.name in OPTIONAL:
        if fault != "stranger":
            pytest.skip(f"the fixture store has no {kind.pattern} ({OPTIONAL[kind.name]})")
        folder = root / Path(kind.pattern).parent
        folder.mkdir(parents=True, exist_ok=True)
        return folder / "X.parquet"  # _apply plants its stranger beside this name
    assert found, f"the master store holds no file of kind {kind.name} ({kind.pattern}): add one"
    return found[0]


def _apply(fault: str, path: Path, root: Path) -> Path:
    """Damage ``path``; returns the path check should name."""
    if fault == "delete":
        path.unlink()
    elif fault == "truncate":
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif fault == "corrupt":  # 16 bytes flipped at 8 places: data pages, not only free ones
        data = bytearray(path.read_bytes() or b"\0" * 64)
        for k in range(8):
            at = (len(data) * (2 * k + 1)) // 16
            data[at:at + 16] = bytes(b ^ 0xFF for b in data[at:at + 16])
        path.write_bytes(bytes(data))
    elif fault == "symlink":  # the same bytes, held outside the store
        elsewhere = root.parent / "elsewhere" / path.relative_to(root)
        elsewhere.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, elsewhere)
        path.unlink()
        path.symlink_to(elsewhere)
    elif fault == "stranger":
        path = path.with_name("zz-stranger" + "".join(path.suffixes))
        path.write_bytes(b"a file nobody in asign wrote")
    return path


def _views(root: Path) -> dict[str, object]:
    store = open_store(root)
    return {view: store.query(f"select count(*) as n from {view}").column("n")[0].as_py()
            for view in ("spots", "sections", "genes")}


def _same_store(expected: Path, actual: Path, *, without: Path | None = None) -> None:
    fa, fb = file_hashes(expected), file_hashes(actual)
    if without is not None:
        fa.pop(StoreLayout(expected).relative(expected / without.relative_to(actual)), None)
    locks = {k for k in set(fa) | set(fb) if k.startswith("locks/")}  # no data (FileKind)
    fa = {k: v for k, v in fa.items() if k not in locks}
    fb = {k: v for k, v in fb.items() if k not in locks}
    assert sorted(fb) == sorted(fa), f"only in {actual}: {sorted(set(fb) - set(fa))}; " \
                                     f"only in {expected}: {sorted(set(fa) - set(fb))}"
    assert [f for f in fa if fa[f] != fb[f]] == []
    assert lmdb_entries(actual) == lmdb_entries(expected)
    assert manifest_without_timestamps(actual) == manifest_without_timestamps(expected)


@pytest.mark.parametrize(("kind_index", "fault"), _cells())
def test_fault_matrix_cell(master: Path, tmp_path: Path, kind_index: int, fault: str) -> None:
    from asign.commands.repair import repair_store

    kind = FILE_KINDS[kind_index]
    root = Path(shutil.copytree(master, tmp_path / "store", symlinks=True))
    views = _views(master)
    if kind.pattern.startswith("locks/") and not list(root.glob(kind.pattern)):
        pytest.fail(f"no {kind.pattern} in the master store")
    damaged = _apply(fault, _target(root, kind, fault), root)
    if kind.name in UNQUERIED:  # the views never read it: they answer as before, unrepaired
        assert _views(root) == views

    try:
        report = inspect_store(open_store(root))
    except AsignError as err:  # refused in one line (e.g. a manifest that cannot be read)
        assert "\n" not in str(err) and kind.name in ("manifest",), err
        return
    flagged = [p for p in report.problems if str(damaged) in p or str(damaged.parent) in p
               or kind.name == "vectors" and "vectors.lmdb" in p]
    harmless = kind.transient and (fault in ("delete", "truncate", "corrupt") or (
        fault == "stranger" and StoreLayout(root).kind_of(damaged) is not None))
    cache = kind.name == "checkpoint" and fault == "delete"  # a resume cache: nothing lost
    if harmless or cache:
        assert report.problems == [], report.problems
        assert _views(root) == views
        return
    assert flagged, f"check did not flag {damaged} ({fault}): {report.problems}"

    result = repair_store(root)
    left = result["problems"]
    if kind.writer == "train" and kind.name.startswith(("table:", "run-record")) and left:
        # results only the run's command recomputes: named, with that command, in one line;
        # the store's own tables read as before (a query over the views skips a damaged
        # results file only where query.py does so: not asserted here)
        assert all("\n" not in p and "asign train" in p for p in left), left
        store = open_store(root)
        assert {v: store.read(v).num_rows for v in ("spots", "sections", "genes")} == views
        return
    elif kind.name == "checkpoint" and fault in ("truncate", "corrupt"):
        assert left == [] and not damaged.exists()
        _same_store(master, root, without=damaged)
    else:
        assert left == [], left
        _same_store(master, root)
    assert _views(root) == views
