"""One store, one meaning: every run is bound to the store state it was trained on.

A run's *binding* (``runs.config['binding']``, written when the run starts) names what the
run read: the normalisation, the gene panel, the sha256 of each table file of its
samples that it read (spots and labels; edges when the model uses the graph; tiles, spot
tiles and embeddings when it reads image features), the fingerprints of the ingest steps
behind them and a fingerprint of its samples' rows of the sections table. The hashes come
from the manifest's table record, which ingest saves when a step finishes (manifest.py).

The binding is checked in three places, all through this module:

- ``asign ingest`` refuses a change (a step redone under another fingerprint) to a sample
  that a current run is bound to, unless ``--invalidate-runs`` is given; then those runs are
  marked ``stale`` (their runs row's status) before anything is written (:func:`guard`);
- ``asign export`` / ``asign report`` refuse a stale run, by name (:func:`require_current`);
- ``asign check`` lists every run whose binding no longer holds (:func:`stale_reasons`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from asign.errors import StoreError
from asign.hashing import fingerprint
from asign.store.layout import VECTOR_STEPS, StoreLayout
from asign.store.manifest_records import labels_info, step_record

log = logging.getLogger(__name__)

STALE = "stale"
BINDING_VERSION = 1
_ALWAYS = ("spots", "labels")
_GRAPH = ("edges",)
_FEATURES = ("tiles", "spot_tiles", "embeddings")
_STEPS_ALWAYS = ("register", "align")


@dataclass(frozen=True)
class StoreState:
    """What bindings are computed from: the manifest, the sections rows, the gene panel."""

    layout: StoreLayout
    manifest: dict[str, Any]
    sections: list[dict[str, Any]]
    panel: list[str]


def state_of(store: Any) -> StoreState:
    sections = store.read("sections").to_pylist() if store.has("sections") else []
    panel: list[str] = []
    if store.has("genes"):
        genes = sorted(store.read("genes", columns=["gene", "rank"]).to_pylist(),
                       key=lambda r: r["rank"])
        panel = [g["gene"] for g in genes]
    return StoreState(store.layout, store.manifest(), sections, panel)


def binding_of(state: StoreState, sample_ids: Iterable[str], *, features: bool,
               graph: bool) -> dict[str, Any]:
    """The store state a run reading ``sample_ids`` depends on (see the module docstring)."""
    layout, manifest = state.layout, state.manifest
    samples = sorted(set(sample_ids))
    recorded = manifest.get("tables") or {}
    names = _ALWAYS + (_GRAPH if graph else ()) + (_FEATURES if features else ())
    steps = (_STEPS_ALWAYS + (("graph",) if graph else ())
             + (VECTOR_STEPS if features else ()))
    tables = {}
    for s in samples:
        for name in names:
            rel = layout.relative(layout.table(name, s))
            tables[rel] = (recorded.get(rel) or {}).get("sha256")
    rows = sorted((r for r in state.sections if r.get("sample_id") in samples),
                  key=lambda r: str(r.get("section_id")))
    labels = labels_info(manifest)
    return {
        "version": BINDING_VERSION,
        "reads": {"features": features, "graph": graph},
        "samples": samples,
        "normalisation": None if labels is None else labels.normalisation,
        # the panel itself, not the genes table's bytes: its mean counts change when
        # another sample of the same panel is registered, which changes nothing a run read
        "panel": fingerprint(state.panel),
        "tables": tables,
        "steps": {s: {k: _fingerprint_of(manifest, s, k) for k in steps} for s in samples},
        "sections": fingerprint(rows),
    }


def _fingerprint_of(manifest: dict[str, Any], sample_id: str, step: str) -> str | None:
    record = step_record(manifest, sample_id, step)
    return None if record is None else record.fingerprint


def current_binding(state: StoreState, bound: dict[str, Any]) -> dict[str, Any]:
    """The binding a run that read what ``bound`` names would have now."""
    reads = bound.get("reads") or {}
    return binding_of(state, bound.get("samples") or [],
                      features=bool(reads.get("features")), graph=bool(reads.get("graph")))


def differences(bound: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """What changed between a run's binding and the store's state, in words."""
    out = []
    if bound.get("normalisation") != now.get("normalisation"):
        out.append(f"normalisation {bound.get('normalisation')} → {now.get('normalisation')}")
    if bound.get("panel") != now.get("panel"):
        out.append("the gene panel changed")
    for rel, digest in (bound.get("tables") or {}).items():
        have = (now.get("tables") or {}).get(rel)
        if have != digest:
            out.append(f"{rel} {'is gone' if have is None else 'was rewritten'}")
    for sample, steps in (bound.get("steps") or {}).items():
        for step, fp in steps.items():
            have = (now.get("steps") or {}).get(sample, {}).get(step)
            if have != fp:
                out.append(f"step {step} of sample {sample} "
                           f"{'is not done' if have is None else 'was redone with other inputs'}")
    if bound.get("sections") != now.get("sections"):
        out.append("the sample's rows of the sections table changed")
    return out


# --- runs ----------------------------------------------------------------------------------

def run_config(row: dict[str, Any]) -> dict[str, Any]:
    try:
        value = json.loads(row.get("config") or "{}")
    except (TypeError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def stale_reasons(state: StoreState, row: dict[str, Any]) -> list[str] | None:
    """Why a run no longer matches the store (empty: it does; None: it records no binding,
    written by an older asign)."""
    config = run_config(row)
    bound = config.get("binding")
    if not isinstance(bound, dict):
        return None
    reasons = differences(bound, current_binding(state, bound))
    if row.get("status") == STALE and not reasons:
        reasons = [str(config.get("stale") or "marked stale by a re-ingest")]
    return reasons


def readable_runs(store: Any, columns: list[str]) -> list[dict[str, Any]]:
    """Rows of every runs file that can be read; a damaged one is check's to report (and
    must not stop an ingest or a repair)."""
    import pyarrow as pa

    rows = []
    for path in sorted(store.layout.results.joinpath("runs").glob("*.parquet")):
        try:
            rows += store.read("runs", key=path.stem, columns=columns).to_pylist()
        except (StoreError, pa.ArrowException, OSError):
            continue
    return rows


def runs_bound_to(store: Any, manifest: dict[str, Any], sample_id: str,
                  steps: Iterable[str]) -> list[dict[str, Any]]:
    """Runs rows (not already stale) whose binding covers ``sample_id`` at any of ``steps``."""
    if not store.layout.results.joinpath("runs").is_dir():
        return []
    wanted = set(steps)
    out = []
    for row in readable_runs(store, ["run_id", "name", "status", "config"]):
        if row["status"] == STALE:
            continue
        bound = run_config(row).get("binding")
        if not isinstance(bound, dict):
            continue
        if wanted & set((bound.get("steps") or {}).get(sample_id, {})):
            out.append(row)
    return out


def guard(store: Any, manifest: dict[str, Any], sample_id: str, step: str, new_fp: str, *,
          invalidate: bool, why: str = "") -> None:
    """Before ingest redoes ``step`` of ``sample_id`` under ``new_fp``: a change to a state
    that current runs are bound to is refused (one line), or, with ``invalidate``, those
    runs are marked stale first. Redoing a step under its recorded fingerprint (a repair,
    which restores the same content) and a first run change nothing a run read."""
    old = _fingerprint_of(manifest, sample_id, step)
    if old is None or old == new_fp:
        return
    bound = runs_bound_to(store, manifest, sample_id, [step])
    if not bound:
        return
    names = ", ".join(r["run_id"] for r in bound[:3]) + (f" and {len(bound) - 3} more"
                                                         if len(bound) > 3 else "")
    change = f"step {step} of sample {sample_id} with other inputs{f' ({why})' if why else ''}"
    if not invalidate:
        raise StoreError(f"refusing to redo {change}: run(s) {names} were trained on the "
                         "current state", path=store.root,
                         fix="use a new --store, pass the options the store was made with, "
                             "or pass --invalidate-runs to mark those runs stale (export and "
                             "report then refuse them)")
    reason = f"re-ingest redid {change}"
    for row in bound:
        mark_stale(store, row["run_id"], reason)
    log.warning("run(s) %s marked stale: %s", names, reason)


def mark_stale(store: Any, run_id: str, reason: str) -> None:
    """Set a run's status to ``stale`` and record why (runs.config['stale'])."""
    table = store.read("runs", key=run_id)
    rows = table.to_pylist()
    for row in rows:
        config = run_config(row)
        config["stale"] = reason
        row["status"] = STALE
        row["config"] = json.dumps(config, sort_keys=True)
    store.write("runs", {k: [r[k] for r in rows] for k in table.column_names}, key=run_id)


def require_current(store: Any, runs: Iterable[Any]) -> None:
    """Refuse runs (objects with ``run_id``) that are stale or whose binding no longer holds,
    naming each: their predictions are on another scale or another set of spots."""
    state = state_of(store)
    bad = []
    for run in runs:
        for row in store.read("runs", key=run.run_id).to_pylist():
            reasons = stale_reasons(state, row)
            if reasons or row.get("status") == STALE:
                bad.append(f"{row['run_id']} ({'; '.join((reasons or ['stale'])[:2])})")
    if bad:
        raise StoreError(f"run(s) {', '.join(bad)} no longer match the store they were trained "
                         "on", path=store.root,
                         fix="re-run the same `asign train` command on the current store, then "
                             "export/report the new run")
