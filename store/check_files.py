"""`asign check`, the files part: every file below a store's root is a plain file of a kind
the layout names (store/layout.py FILE_KINDS), and a checkpoint or QC picture belongs to a
run or section the store has. Lines that end in "deletes it" are what `asign check
--repair` deletes (store/repair.py)."""

from __future__ import annotations

import glob
import os
from pathlib import Path

import pyarrow as pa

from asign.errors import AsignError
from asign.store import Store

_REPAIR = "`asign check --repair`"
# what reading a damaged file raises: asign's refusal, or Arrow's own decode error
UNREADABLE = (AsignError, pa.ArrowException, OSError)


def check_files(store: Store) -> list[str]:
    """Every file below the root is a plain file of a kind the layout names (no symlink, no
    stranger), and a checkpoint or QC picture belongs to a run or section the store has."""
    layout = store.layout
    problems = []
    runs = {Path(p).stem for p in glob.glob(layout.table_glob("runs"))}
    qc = {layout.alignment_png(s) for s in _names(store, "sections", "sample_id")}
    qc |= {f(s) for s in _names(store, "sections", "section_id")
           for f in (layout.thumbnail, layout.fine_thumbnail)}
    for path in sorted(layout.root.rglob("*")):
        if path.name.startswith(".") and path.name.endswith(".tmp"):
            continue  # reported as a leftover temporary file
        if path.is_symlink():
            problems.append(f"{path}: is a symlink (to {os.path.realpath(path)}); a store holds "
                            f"plain files only; {_REPAIR} replaces it with a copy of its target")
            continue
        if path.is_dir():
            continue
        kind = layout.kind_of(path)
        if kind is None:
            problems.append(f"{path}: not a file asign writes here; {_REPAIR} deletes it")
        elif kind.name == "checkpoint" and path.stem.split(".fold")[0] not in runs:
            problems.append(f"{path}: checkpoint of no run in the store; {_REPAIR} deletes it")
        elif kind.name == "checkpoint" and not _zip_intact(path):
            problems.append(f"{path}: checkpoint is damaged (a resume cache: a --resume would "
                            f"start over); {_REPAIR} deletes it")
        elif kind.name in ("thumbnail", "alignment-picture") and qc and path not in qc:
            problems.append(f"{path}: QC picture of no section or sample in the store; "
                            f"{_REPAIR} deletes it")
    return problems


def _zip_intact(path: Path) -> bool:
    """torch.save writes a zip archive: its CRCs tell a truncated or changed checkpoint."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as z:
            return z.testzip() is None
    except (zipfile.BadZipFile, OSError, EOFError, ValueError):
        return False


def _names(store: Store, table: str, column: str) -> set[str]:
    try:
        if not store.has(table):
            return set()
        return set(store.read(table, columns=[column]).column(column).to_pylist())
    except UNREADABLE:
        return set()
