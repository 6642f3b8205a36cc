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
from pathlib import Path
from typing import Any

from asign.errors import StoreError
from asign.store import Store, open_store
from asign.store import repair as files

log = logging.getLogger(__name__)


def repair_store(root: Path) -> dict[str, Any]:
    """Repair the store at ``root``; returns what was done and what is left (problems)."""
    from asign.store.check import inspect_store
    from asign.store.locks import writer_lock

    store = open_store(root)
    done: list[str] = files.plain_locks(store)  # the lock itself must be a plain file
    with writer_lock(store.layout.writable(store.layout.ingest_lock), wait=10.0):
        done += files.fix_files(store)
        # one inspection (every file re-hashed) decides both: neither fix touches what the
        # other reads (the ingest tables' record; the runs' records)
        found = inspect_store(store).problems
        done += files.rebuild_ingest_record(store, found)
        done += files.rerecord(store, found)
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
    done += files.mark_stale(store)
    left = inspect_store(store).problems
    return {"repaired": done, "problems": left}


def _step_configs(store: Store) -> list[Any] | None:
    """One IngestConfig per distinct recorded config, in step order; None when a finished
    step records none (an older asign)."""
    from dataclasses import fields

    from asign.ingest.config import IngestConfig
    from asign.ingest.steps import STEPS

    order: dict[str, list[str]] = {}
    for steps in store.step_records(store.manifest()).values():
        for step in STEPS:
            if step not in steps:
                continue
            config = steps[step].config
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
