"""What each table file held when asign wrote it: sha256, bytes and row count.

Kept beside the tables (``records/``, see StoreLayout.record_of) so that

- a reader compares a file's claimed row count (Parquet footer) with the recorded one
  *before* decoding it: a small forged file that claims billions of rows is refused instead
  of exhausting memory;
- ``asign check`` re-hashes every results file (runs, metrics, predictions), so a rewritten
  or forged metrics file is caught (ingest tables are also covered by the manifest).

An entry is added *before* the file is replaced and the older one dropped after, so a
process killed between the two leaves both states valid (``entries`` holds ≤ 2 per file).
Records are written by asign under a per-record flock; they detect accidents and misuse
through asign, not a hostile user with write access to the store's files."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from asign.errors import StoreError
from asign.hashing import file_sha256
from asign.store.atomic import write_bytes
from asign.store.layout import StoreLayout
from asign.store.locks import exclusive


def load(path: Path) -> dict[str, list[dict[str, Any]]]:
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as err:
        raise StoreError(f"write record is corrupt ({err})", path=path,
                         fix="run `asign check`; re-run the command that wrote the tables it "
                             "lists") from err
    return data if isinstance(data, dict) else {}


def entry(path: Path) -> dict[str, Any]:
    st = Path(path).stat()
    return {"sha256": file_sha256(path), "bytes": st.st_size,
            "rows": pq.read_metadata(path).num_rows}


class _Recorder:
    def __init__(self, record: Path, rel: str) -> None:
        self.record, self.rel, self.new = record, rel, None

    def add(self, tmp: Path) -> None:
        """Called with the finished temporary file just before it replaces the target."""
        self.new = entry(tmp)
        data = load(self.record)
        data[self.rel] = [*data.get(self.rel, [])[-1:], self.new]
        write_bytes(self.record, json.dumps(data, indent=1, sort_keys=True).encode())

    def settle(self, replaced: bool) -> None:
        """Keep only the entry of the file now in place (none when it was deleted)."""
        data = load(self.record)
        if self.rel not in data:
            return
        if self.new is None:  # deleted
            kept = []
        elif replaced:
            kept = [self.new]
        else:
            kept = [e for e in data[self.rel] if e != self.new]
        if kept:
            data[self.rel] = kept
        else:
            data.pop(self.rel, None)
        write_bytes(self.record, json.dumps(data, indent=1, sort_keys=True).encode())


@contextlib.contextmanager
def recording(layout: StoreLayout, name: str, key: str | None, target: Path) -> Iterator[_Recorder]:
    """Around the write of ``target``; pass ``.add`` as the writer's ``before_replace``.
    Afterwards the record holds exactly the new file's entry (or, when the write failed,
    the old one). Two writers of one record serialise here."""
    record = layout.writable(layout.record_of(name, key))
    rec = _Recorder(record, layout.relative(target))
    with exclusive(layout.writable(layout.record_lock(record))):
        try:
            yield rec
        except BaseException:
            if rec.new is not None:
                rec.settle(False)
            raise
        if rec.new is not None:
            rec.settle(True)
        elif not Path(target).exists():  # deleted
            rec.settle(False)


def sync_ingest(layout: StoreLayout, accepted: dict[str, dict[str, Any]]) -> None:
    """Make the ingest tables' record match the manifest's table hashes (``accepted``,
    saved when a step finishes): what the manifest accepts, readers accept."""
    record = layout.writable(layout.record_of("sections"))
    with exclusive(layout.writable(layout.record_lock(record))):
        data = load(record)
        out: dict[str, list[dict[str, Any]]] = {}
        for rel, info in accepted.items():
            if not rel.endswith(".parquet"):  # QC pictures: the manifest's hash covers them
                continue
            known = [e for e in data.get(rel, []) if e.get("sha256") == info.get("sha256")]
            if known:
                out[rel] = known[-1:]
                continue
            try:
                rows = pq.read_metadata(layout.root / rel).num_rows
            except (OSError, ValueError):  # unreadable: check reports it; readers refuse it
                continue
            out[rel] = [{"sha256": info.get("sha256"), "bytes": info.get("bytes"), "rows": rows}]
        if out != data:
            write_bytes(record, json.dumps(out, indent=1, sort_keys=True).encode())


def recorded_rows(layout: StoreLayout, name: str, key: str | None, path: Path,
                  cache: dict[Path, dict] | None = None) -> set[int] | None:
    """Row counts the record allows for ``path`` (None: not recorded, e.g. an older store)."""
    record = layout.record_of(name, key)
    if cache is not None and record in cache:
        data = cache[record]
    else:
        data = load(record)
        if cache is not None:
            cache[record] = data
    entries = data.get(layout.relative(path))
    return None if entries is None else {int(e["rows"]) for e in entries}


# Not strict: a claim this much above the record is refused (memory), smaller edits pass.
LENIENT_FACTOR, LENIENT_SLACK = 4, 100_000


def check_rows(layout: StoreLayout, name: str, key: str | None, path: Path, claimed: int,
               cache: dict[Path, dict] | None = None, *, strict: bool = True) -> bool:
    """Refuse a file whose footer claims another row count than was recorded at write;
    whether its write was recorded (an unrecorded file's claims are judged by its size)."""
    allowed = recorded_rows(layout, name, key, path, cache)
    if allowed is None:
        return False
    if not strict and claimed <= LENIENT_FACTOR * max(allowed) + LENIENT_SLACK:
        return True
    if claimed not in allowed:
        raise StoreError(f"table claims {claimed} rows, {'/'.join(map(str, sorted(allowed)))} were "
                         "recorded when asign wrote it (replaced or forged); not read", path=path,
                         fix="run `asign check`; delete the file and re-run the command that wrote "
                             "it")
    return True


def problems(layout: StoreLayout, name: str, key: str | None, path: Path) -> str | None:
    """Why a file does not match its record (re-hashed), None when it does."""
    entries = load(layout.record_of(name, key)).get(layout.relative(path))
    if entries is None:
        return None
    if not Path(path).exists():
        return "missing, although its write is recorded"
    digest = file_sha256(path)
    if all(e.get("sha256") != digest for e in entries):
        return ("content does not match the sha256 recorded when asign wrote it (rewritten or "
                "forged outside asign)")
    return None


def rerecord_run(layout: StoreLayout, run_id: str) -> list[Path]:
    """Record a run's results files as they are now (its write record was lost)."""
    from asign.store.layout import RUN_TABLES

    record = layout.writable(layout.record_of(RUN_TABLES[0], run_id))
    with exclusive(layout.writable(layout.record_lock(record))):
        files = [layout.table(n, run_id) for n in RUN_TABLES if layout.table(n, run_id).exists()]
        data = {layout.relative(p): [entry(p)] for p in files}
        write_bytes(record, json.dumps(data, indent=1, sort_keys=True).encode())
    return files
