"""`asign check`, the results part: each run's files (runs, metrics, predictions) against
their write records and each other, and each run against the store state it was trained on
(store/binding.py)."""

from __future__ import annotations

import glob
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from asign.errors import AsignError
from asign.store import Store, binding, records
from asign.store.layout import RUN_TABLES
from asign.store.locks import run_alive

if TYPE_CHECKING:
    from asign.store.check import CheckReport

RUN_STATUSES = ("running", "done", "interrupted", "failed", binding.STALE)


def _first(values: set[str]) -> str:
    return sorted(values)[0]


def check_results(store: Store, readable: dict[Path, bool], report: CheckReport) -> None:
    """Each run's files agree: one runs row named like its file, metrics and predictions only
    for runs that have a runs row, and a finished run has its metrics. Predictions for spots
    the store no longer has (it was re-ingested after the run) are a note."""
    problems = report.problems
    layout = store.layout
    files = {
        name: {Path(p).stem: Path(p) for p in glob.glob(layout.table_glob(name))}
        for name in RUN_TABLES
    }
    _check_result_records(store, files, readable, report)
    for key, path in sorted(files["runs"].items()):
        if not readable.get(path):
            continue
        rows = store.read("runs", key, columns=["run_id", "status"]).to_pylist()
        if [r["run_id"] for r in rows] != [key]:
            problems.append(
                f"{path}: holds run(s) {[r['run_id'] for r in rows]}, expected the one run {key!r}"
            )
            continue
        status = rows[0]["status"]
        _check_binding(store, key, path, report)
        if status == "running" and not run_alive(layout.run_lock(key)):
            report.notes.append(
                f"{path}: run {key} is interrupted (its process died while running; no "
                "process holds its lock); finish it with the same `asign train` command "
                "and --resume, or re-run it"
            )
        if status not in RUN_STATUSES:
            problems.append(f"{path}: unknown run status {status!r}")
        if status == "done" and key not in files["metrics"]:
            problems.append(
                f"{layout.table('metrics', key)}: missing although run {key} is done; "
                "re-run the same `asign train` command"
            )
    spot_ids: set[str] | None = None
    for name in ("metrics", "predictions"):
        for key, path in sorted(files[name].items()):
            if key not in files["runs"]:
                recorded = records.recorded_rows(layout, name, key, path) is not None
                problems.append(
                    f"{path}: {name} of run {key}, which has no runs row; "
                    + ("re-run the same `asign train` command (it rewrites the run's files)"
                       if recorded else "`asign check --repair` deletes it")
                )
            if not readable.get(path):
                continue
            if name == "metrics":
                ids = set(store.read(name, key, columns=["run_id"]).column("run_id")
                          .unique().to_pylist())
            else:
                ids, pred, bad = _scan_predictions(store, key, path)
            if ids - {key}:
                problems.append(f"{path}: rows of other runs {sorted(ids - {key})}")
            if name == "predictions":
                problems += bad
                if spot_ids is None:
                    spot_ids = _all_spot_ids(store, readable)
                unknown = pred - spot_ids
                if unknown:
                    report.notes.append(
                        f"{path}: predictions for {len(unknown)} spots not in the store "
                        f"(e.g. {_first(unknown)}); the store was re-ingested after this run"
                    )


def _check_binding(store: Store, key: str, path: Path, report: CheckReport) -> None:
    """The run still matches the store state it was trained on (store/binding.py)."""
    row = store.read("runs", key, columns=["run_id", "status", "config"]).to_pylist()[0]
    try:
        state = binding.state_of(store)
    except (AsignError, OSError, ValueError):  # reported with the tables (Arrow's errors too)
        return
    reasons = binding.stale_reasons(state, row)
    if reasons is None:
        report.notes.append(
            f"{path}: run {key} records no store binding (an older asign "
            "trained it); whether it matches the store was not verified"
        )
    elif row["status"] == binding.STALE:
        report.notes.append(
            f"{path}: run {key} is stale ({'; '.join(reasons[:2])}); export and "
            "report refuse it; re-run the same `asign train` command to replace it"
        )
    elif reasons and row["status"] == "done":
        report.problems.append(
            f"{path}: run {key} no longer matches the store it was trained on "
            f"({'; '.join(reasons[:2])}); `asign check --repair` marks it stale, "
            "then re-run the same `asign train` command"
        )


def _bound(store: Store, key: str) -> bool:
    """Whether a run's runs row records a store binding (so asign recorded its writes)."""
    try:
        rows = store.read("runs", key, columns=["config"]).to_pylist()
    except AsignError:
        return False
    return any("binding" in binding.run_config(r) for r in rows)


def _check_result_records(
    store: Store, files: dict[str, dict[str, Path]], readable: dict[Path, bool], report: CheckReport
) -> None:
    """Every results file against the sha256 recorded when `asign train` wrote it. A file
    no record lists is a stranger when it is unreadable or of no run; for a run whose record
    was lost (the run's row says this asign trained it) the files are re-recorded."""
    layout = store.layout
    unrecorded = []
    lost = set()
    for run_record in sorted(layout.records.joinpath("runs").glob("*.json")):
        try:
            listed = records.load(run_record)
        except AsignError:
            listed = None
        if not listed and not any(run_record.stem in files[n] for n in RUN_TABLES):
            report.problems.append(f"{run_record}: write record of no run in the store; "
                                   "`asign check --repair` deletes it")
            continue
        if listed is None:
            lost.add(run_record.stem)
            report.problems.append(f"{run_record}: write record is corrupt; {RERECORD_FIX}")
            continue
        for rel in listed:
            if not (layout.root / rel).exists():
                report.problems.append(
                    f"{layout.root / rel}: missing, although its write is recorded in "
                    f"{run_record}; re-run the same `asign train` command"
                )
    for name in RUN_TABLES:
        for key, path in sorted(files[name].items()):
            if key in lost:
                readable[path] = False
                continue
            if records.recorded_rows(layout, name, key, path) is None:
                if key not in files["runs"] and readable.get(path):
                    unrecorded.append(path)  # of no run: reported (and deleted) as such below
                elif not readable.get(path):
                    readable[path] = False
                    report.problems.append(
                        f"{path}: not written by asign (no write record, no run); "
                        "`asign check --repair` deletes it"
                    )
                elif _bound(store, key):  # this asign records every write of a run it trains
                    report.problems.append(
                        f"{path}: no entry in {layout.record_of(name, key)}, although "
                        f"asign recorded the writes of run {key}; {RERECORD_FIX}"
                    )
                else:
                    unrecorded.append(path)
                continue
            why = records.problems(layout, name, key, path)
            if why is not None:
                readable[path] = False
                report.problems.append(
                    f"{path}: {why}; delete the run's files and re-run the same "
                    "`asign train` command"
                )
    if unrecorded:
        report.notes.append(
            f"{unrecorded[0]}: {len(unrecorded)} results file(s) with no write record (written "
            "by an older asign); their contents were not verified"
        )


RERECORD_FIX = (
    "`asign check --repair` records the run's files as they are now (their content "
    "cannot be verified)"
)


def _scan_predictions(store: Store, key: str, path: Path
                      ) -> tuple[set[str], set[str], list[str]]:
    """(run ids, spot ids, the problem of non-finite values if any), read in pieces: a
    large run has hundreds of millions of prediction rows."""
    runs: set[str] = set()
    spots: set[str] = set()
    bad, first = 0, None
    cols = ["run_id", "section_id", "spot_id", "value"]
    for piece in store.iter_table("predictions", key, cols, dictionary=cols[:3]):
        for name, seen in (("run_id", runs), ("spot_id", spots)):
            for chunk in piece.column(name).chunks:
                seen.update(chunk.dictionary.take(chunk.indices.unique()).to_pylist())
        values = piece.column("value").to_numpy()
        mask = ~np.isfinite(values.astype(np.float64, copy=False))
        if mask.any():
            bad += int(mask.sum())
            first = first or piece.column("section_id")[int(np.flatnonzero(mask)[0])].as_py()
    if not bad:
        return runs, spots, []
    return runs, spots, [f"{path}: {bad} predicted values of run {key} are NaN/inf (first in "
                         f"section {first}); delete the run's files and re-run it"]


def _all_spot_ids(store: Store, readable: dict[Path, bool]) -> set[str]:
    out: set[str] = set()
    for p in glob.glob(store.layout.table_glob("spots")):
        if readable.get(Path(p)):
            out |= set(
                store.read("spots", Path(p).stem, columns=["spot_id"]).column("spot_id").to_pylist()
            )
    return out
