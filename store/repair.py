"""The file-level half of `asign check --repair` (commands/repair.py redoes ingest steps):
set right the files that are not the store's own, rebuild lost write records, and mark
runs whose binding broke as stale. Every decision is check's: this module acts on what
`inspect_store` reports, so check and repair cannot disagree."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from asign.store import Store


def plain_locks(store: Store) -> list[str]:
    """Lock files swapped for symlinks become empty plain files (they carry no data)."""
    out = []
    for path in sorted(store.layout.locks.rglob("*.lock")):
        if path.is_symlink():
            path.unlink()
            path.touch()
            out.append(f"replaced symlink {path} by a plain lock file")
    return out


def fix_files(store: Store) -> list[str]:
    from asign.store.atomic import remove_stale_temps

    layout = store.layout
    done = [f"deleted {p}" for p in remove_stale_temps(layout.root)]
    for path in sorted(layout.root.rglob("*")):
        if path.is_symlink():
            target = Path(os.path.realpath(path))
            path.unlink()
            if target.is_file():
                shutil.copyfile(target, path)
                done.append(f"replaced symlink {path} by a copy of {target}")
            else:
                done.append(f"deleted symlink {path}")
    done += _drop_damaged(store)
    if not _vectors_readable(store):
        shutil.rmtree(layout.vectors)
        done.append(f"deleted unreadable {layout.vectors}")
    for path in _strangers(store):
        path.unlink()
        done.append(f"deleted {path}")
    return done


def _drop_damaged(store: Store) -> list[str]:
    """Ingest files whose bytes are not what the manifest recorded: the step that wrote them
    rewrites them (and a step that merges, such as register's sections table, must not
    read them first)."""
    from asign.store.manifest import table_problem

    layout = store.layout
    out = []
    for rel, entry in (store.manifest().get("tables") or {}).items():
        path = layout.root / rel
        if path.is_file() and table_problem(layout, rel, entry, full=True) is not None:
            path.unlink()
            out.append(f"deleted damaged {path} (its step rewrites it)")
    return out


def rebuild_ingest_record(store: Store, problems: list[str]) -> list[str]:
    """The ingest tables' write record, re-made from the manifest's table hashes when check
    says it is corrupt or incomplete (``problems``: what check found)."""
    from asign.store.check import REBUILD_FIX

    if not any(p.endswith(REBUILD_FIX) for p in problems):
        return []
    record = store.layout.record_of("sections")
    record.unlink(missing_ok=True)
    manifest = store.manifest()
    store.save_manifest(manifest)
    return [f"rebuilt {record} from the manifest"]


def rerecord(store: Store, problems: list[str]) -> list[str]:
    """Runs whose write record was lost: record their files as they are (``problems``: what
    check found; the ingest record that ``rebuild_ingest_record`` rewrites is not theirs)."""
    from asign.store import records
    from asign.store.check_results import RERECORD_FIX

    runs = {Path(p.split(": ", 1)[0]).stem for p in problems if p.endswith(RERECORD_FIX)}
    return [f"recorded {p} as it is" for run_id in sorted(runs)
            for p in records.rerecord_run(store.layout, run_id)]


def _strangers(store: Store) -> list[Path]:
    """The files check says repair deletes (one definition: check's), and ingest tables no
    finished step recorded (an interrupted write or a stranger)."""
    from asign.store.check import inspect_store

    out = [Path(p.split(": ", 1)[0]) for p in inspect_store(store).problems
           if p.endswith("deletes it")]
    recorded = store.manifest().get("tables") or {}
    out += [p for p in store.layout.ingest_table_files()
            if store.layout.relative(p) not in recorded]
    return [p for p in dict.fromkeys(out) if p.is_file() and not p.is_symlink()]


def _vectors_readable(store: Store) -> bool:
    from asign.store.integrity import lmdb_damage

    path = store.layout.vectors
    if not path.exists():
        return True
    if lmdb_damage(path) is not None:
        return False
    try:
        with store.vectors(readonly=True) as vec, vec._begin() as txn:
            for _ in txn.cursor().iternext(values=True):
                pass
    except Exception:  # noqa: BLE001 - lmdb.Error, StoreError: damaged either way
        return False
    return True


def mark_stale(store: Store) -> list[str]:
    """Finished runs whose binding no longer holds (store/binding.py) are marked stale."""
    from asign.store import binding

    if not store.layout.results.joinpath("runs").is_dir():
        return []
    state = binding.state_of(store)
    out = []
    for row in binding.readable_runs(store, ["run_id", "status", "config"]):
        if row["status"] != "done":
            continue
        reasons = binding.stale_reasons(state, row)
        if reasons:
            binding.mark_stale(store, row["run_id"], "; ".join(reasons[:2]))
            out.append(f"marked run {row['run_id']} stale ({'; '.join(reasons[:2])})")
    return out
