"""`asign check --repair`: redo in place exactly what `asign check` flags.

1. Files that are not the store's own are set right: a symlink becomes a plain copy of
   what it points to; a stranger file (no kind the layout names, a checkpoint of no run, a
   QC picture of no section, a table file no ingest recorded, a results file of no run) and
   a temporary file of a dead writer are deleted; an LMDB that cannot be read is deleted.
2. Ingest redoes every step whose outputs are not what its done marker promises (tables,
   QC pictures and LMDB entries, re-hashed in full: ``IngestConfig.verify``), with the
   options that step recorded when it ran (``manifest.steps[sample][step].config``). A
   redone step writes the same bytes, so the runs bound to it stay current.
3. A finished run that no longer matches the store it was trained on is marked stale.

Results of a run whose files were damaged cannot be recomputed here (the run's own command
does that); such problems are left, and named with their fix, in one line."""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from asign.errors import StoreError
from asign.store import Store, open_store

log = logging.getLogger(__name__)


def repair_store(root: Path) -> dict[str, Any]:
    """Repair the store at ``root``; returns what was done and what is left (problems)."""
    from asign.store.check import inspect_store
    from asign.store.locks import writer_lock

    store = open_store(root)
    done: list[str] = []
    with writer_lock(store.layout.writable(store.layout.ingest_lock), wait=10.0):
        done += _fix_files(store)
        done += _rebuild_ingest_record(store)
        done += _rerecord(store)
    configs = _step_configs(store)
    if configs is None:
        left = inspect_store(store).problems
        if left:
            raise StoreError("the store records no ingest options to redo its steps with (an "
                             "older asign made it)", path=store.layout.manifest,
                             fix="re-run the `asign ingest` command that made it (it redoes "
                                 "what changed)")
        return {"repaired": done, "problems": []}
    from asign import ingest

    for cfg in configs:
        summary = ingest.run(cfg)
        done += [f"ingest redid {item}" for item in summary["ran"]]
    done += _mark_stale(store)
    left = inspect_store(store).problems
    return {"repaired": done, "problems": left}


def _fix_files(store: Store) -> list[str]:
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
    if not _vectors_readable(store):
        shutil.rmtree(layout.vectors)
        done.append(f"deleted unreadable {layout.vectors}")
    for path in _strangers(store):
        path.unlink()
        done.append(f"deleted {path}")
    return done


def _rebuild_ingest_record(store: Store) -> list[str]:
    """The ingest tables' write record, re-made from the manifest's table hashes when check
    says it is corrupt or incomplete."""
    from asign.store.check import _REBUILD, inspect_store

    if not any(p.endswith(_REBUILD) for p in inspect_store(store).problems):
        return []
    record = store.layout.record_of("sections")
    record.unlink(missing_ok=True)
    manifest = store.manifest()
    store.save_manifest(manifest)
    return [f"rebuilt {record} from the manifest"]


def _rerecord(store: Store) -> list[str]:
    """Runs whose write record was lost: record their files as they are (check said so)."""
    from asign.store import records
    from asign.store.check import inspect_store
    from asign.store.check_results import _RERECORD

    runs = {Path(p.split(": ", 1)[0]).stem for p in inspect_store(store).problems
            if p.endswith(_RERECORD)}
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
    path = store.layout.vectors
    if not path.exists():
        return True
    try:
        with store.vectors(readonly=True) as vec, vec.env.begin() as txn:
            for _ in txn.cursor().iternext(values=True):
                pass
    except Exception:  # noqa: BLE001 - lmdb.Error, StoreError: damaged either way
        return False
    return True


def _step_configs(store: Store) -> list[Any] | None:
    """One IngestConfig per distinct recorded config, in step order; None when a finished
    step records none (an older asign)."""
    from dataclasses import fields

    from asign.ingest.config import IngestConfig
    from asign.ingest.steps import STEPS

    manifest = store.manifest()
    order: dict[str, list[str]] = {}
    for steps in manifest["steps"].values():
        for step in STEPS:
            if step not in steps:
                continue
            config = steps[step].get("config")
            if config is None:
                return None
            key = json.dumps(config, sort_keys=True)
            if step not in order.setdefault(key, []):
                order[key].append(step)
    out = []
    for key, steps in order.items():
        c = json.loads(key)
        c.update(sources=tuple(Path(p) for p in c["sources"]), store=store.root,
                 align=_align(c.get("align") or {}), verify=True,
                 steps=tuple(s for s in STEPS if s in steps),
                 **{k: tuple(c[k]) for k in ("extra_2d", "genes") if k in c})
        known = {f.name for f in fields(IngestConfig)}
        out.append(IngestConfig(**{k: v for k, v in c.items() if k in known}))
    return out


def _align(c: dict[str, Any]) -> Any:
    from asign.ingest.config import AlignOptions

    init = {k: (float(v[0]), bool(v[1])) for k, v in (c.get("init") or {}).items()}
    return AlignOptions(**{**c, "init": init})


def _mark_stale(store: Store) -> list[str]:
    """Finished runs whose binding no longer holds (store/binding.py) are marked stale."""
    from asign.store import binding

    if not store.layout.results.joinpath("runs").is_dir():
        return []
    manifest = store.manifest()
    sections = store.read("sections").to_pylist() if store.has("sections") else []
    out = []
    for row in store.read("runs", columns=["run_id", "status", "config"]).to_pylist():
        if row["status"] != "done":
            continue
        reasons = binding.stale_reasons(store.layout, manifest, sections, row)
        if reasons:
            binding.mark_stale(store, row["run_id"], "; ".join(reasons[:2]))
            out.append(f"marked run {row['run_id']} stale ({'; '.join(reasons[:2])})")
    return out
