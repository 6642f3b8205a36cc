"""The feature store: Parquet tables, LMDB vectors, a JSON manifest, DuckDB views.

``store/`` is the only package that knows file layouts; ingest writes through it and
train reads through it."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from asign.errors import StoreError
from asign.hashing import fingerprint
from asign.store import manifest as _manifest
from asign.store import manifest_records as _mr
from asign.store import records as _records
from asign.store.atomic import atomic_path
from asign.store.checkpoints import Checkpoint
from asign.store.embedding_info import EmbeddingInfo, embedding_info, record_embedding_info
from asign.store.layout import (
    GLOBAL_TABLES,
    OPTIONAL_STEP_TABLES,
    RUN_TABLES,
    STEP_TABLES,
    StoreLayout,
)
from asign.store.manifest_records import LabelsInfo, StepRecord
from asign.store.parquet import iter_table, read_table, write_table, write_table_parts
from asign.store.query import connect, run_query
from asign.store.thumbnails import Thumbnail, section_thumbnail
from asign.store.vectors import Done, EmbeddingRows, Vectors, open_vectors

__all__ = ["Done", "EmbeddingInfo", "EmbeddingRows", "LabelsInfo", "Store", "StepRecord",
           "StoreLayout", "Vectors", "open_store", "prepare_root"]


@dataclass(frozen=True)
class Store:
    layout: StoreLayout
    # Readers refuse a table whose footer claims other than the recorded row count; `asign
    # check` (which reports such files itself) only refuses absurd claims (records.py).
    strict_rows: bool = True

    @property
    def root(self) -> Path:
        return self.layout.root

    # manifest -------------------------------------------------------------
    def manifest(self) -> dict[str, Any]:
        return _manifest.load_manifest(self.layout.manifest)

    def save_manifest(self, manifest: dict[str, Any]) -> None:
        """Write the manifest with the current hash of every ingest table (``tables``)."""
        manifest["tables"] = _manifest.table_record(self.layout, manifest.get("tables"))
        # the write records of ingest tables follow what the manifest now accepts
        _records.sync_ingest(self.layout, manifest["tables"])
        _manifest.save_manifest(self.layout.writable(self.layout.manifest), manifest)

    def embedding_info(self, manifest: dict[str, Any] | None = None) -> EmbeddingInfo | None:
        """What ingest recorded about the embeddings (``params.embed``), or None."""
        return embedding_info(self.manifest() if manifest is None else manifest)

    @staticmethod
    def record_embedding_info(manifest: dict[str, Any], info: EmbeddingInfo) -> None:
        """Put ``info`` into ``manifest`` as ``params.embed``; ``save_manifest`` writes it."""
        record_embedding_info(manifest, info)

    @staticmethod
    def labels_info(manifest: dict[str, Any]) -> LabelsInfo | None:
        """What register recorded about the labels (``params.labels``), or None."""
        return _mr.labels_info(manifest)

    @staticmethod
    def record_labels_info(manifest: dict[str, Any], info: LabelsInfo) -> None:
        """Put ``info`` into ``manifest`` as ``params.labels``; ``save_manifest`` writes it."""
        _mr.record_labels_info(manifest, info)

    # step done markers (the manifest's ``steps``) -------------------------
    @staticmethod
    def step_record(manifest: dict[str, Any], sample_id: str, step: str) -> StepRecord | None:
        """What ``step`` recorded for the sample when it finished; None when not done."""
        return _mr.step_record(manifest, sample_id, step)

    @staticmethod
    def step_fingerprint(manifest: dict[str, Any], sample_id: str, step: str) -> str | None:
        """The fingerprint ``step`` of the sample finished under; None when not done."""
        record = _mr.step_record(manifest, sample_id, step)
        return None if record is None else record.fingerprint

    @staticmethod
    def step_records(manifest: dict[str, Any]) -> dict[str, dict[str, StepRecord]]:
        """``{sample: {step: record}}`` of every finished step."""
        return _mr.step_records(manifest)

    @staticmethod
    def mark_step_done(manifest: dict[str, Any], sample_id: str, step: str,
                       record: StepRecord) -> None:
        """Record ``step`` of the sample as finished (``StepRecord.now``, or an updated
        record); ``save_manifest`` writes it."""
        _mr.record_step(manifest, sample_id, step, record)

    @staticmethod
    def forget_steps(manifest: dict[str, Any], sample_id: str, steps: Iterable[str]) -> None:
        """Drop the done markers of ``steps`` of the sample: they run again."""
        _mr.forget_steps(manifest, sample_id, steps)

    def step_intact(self, manifest: dict[str, Any], sample_id: str, step: str, *,
                    full: bool = False) -> bool:
        """Whether the tables a finished step wrote for a sample are still what the manifest
        recorded: present, and unchanged since (not deleted, edited, or replaced by a later
        interrupted run). Stores from before table hashes were recorded: present. Also its
        QC pictures (align) and LMDB entries (patches, embed): store/integrity.py. ``full``
        re-hashes every file (``asign check --repair``) instead of trusting size and mtime."""
        names = [(t, sample_id) for t in STEP_TABLES[step]]
        if step == "register":
            names += [(t, None) for t in GLOBAL_TABLES]
        recorded = manifest.get("tables")
        for name, key in names:
            path = self.layout.table(name, key)
            if recorded is None:
                if not path.exists() and (step, name) not in OPTIONAL_STEP_TABLES:
                    return False
                continue
            entry = recorded.get(self.layout.relative(path))
            if entry is None and not path.exists() and (step, name) in OPTIONAL_STEP_TABLES:
                continue
            if entry is None or _manifest.table_problem(self.layout, self.layout.relative(path),
                                                        entry, full=full) is not None:
                return False
        return self._outputs_intact(manifest, sample_id, step, full)

    def _outputs_intact(self, manifest: dict[str, Any], sample_id: str, step: str,
                        full: bool) -> bool:
        from asign.store import integrity

        if step == "align" and self.has("sections"):
            rows = self.read("sections", columns=["sample_id", "section_id"]).to_pylist()
            ids = [r["section_id"] for r in rows if r["sample_id"] == sample_id]
            return integrity.qc_problem(self.layout, manifest, sample_id, ids, full=full) is None
        return integrity.vectors_problem(self, manifest, sample_id, step, full=full) is None

    # tables ---------------------------------------------------------------
    def write(self, name: str, table: pa.Table | dict, key: str | None = None) -> pa.Table:
        """Write a table file atomically and record its hash and row count (records.py)."""
        path = self.layout.writable(self.layout.table(name, key))
        with _records.recording(self.layout, name, key, path) as rec:
            return write_table(path, table, name, before_replace=rec.add)

    def write_parts(self, name: str, parts: Iterable[pa.Table | dict],
                    key: str | None = None) -> int:
        """``write`` for a table too large to hold in memory: given part by part."""
        path = self.layout.writable(self.layout.table(name, key))
        with _records.recording(self.layout, name, key, path) as rec:
            return write_table_parts(path, parts, name, before_replace=rec.add)

    def has(self, name: str, key: str | None = None) -> bool:
        return self.layout.table(name, key).exists()

    def read(self, name: str, key: str | None = None, columns: list[str] | None = None) -> pa.Table:
        """One partition, or (key=None) the whole table across partitions."""
        if name in GLOBAL_TABLES or key is not None:
            return self._read_file(name, key, self.layout.table(name, key), columns)
        parts = sorted(Path(self.layout.table_glob(name)).parent.glob("*.parquet"))
        if not parts:
            from asign.schemas import TABLES

            empty = TABLES[name].empty_table()
            return empty.select(columns) if columns else empty
        return pa.concat_tables([self._read_file(name, p.stem, p, columns) for p in parts])

    def iter_table(self, name: str, key: str, columns: list[str] | None = None, *,
                   batch_rows: int | None = None, dictionary: Iterable[str] = ()
                   ) -> Iterator[pa.Table]:
        """One partition in pieces of ≤ ``batch_rows`` rows (parquet.iter_table): for tables
        that grow with spots × genes, read at any size in bounded memory."""
        path = self.layout.table(name, key)
        return iter_table(path, columns, check_rows=self._row_check(name, key, path),
                          batch_rows=batch_rows, dictionary=dictionary)

    def _read_file(self, name: str, key: str | None, path: Path,
                   columns: list[str] | None) -> pa.Table:
        """Read one table file after checking its footer's row count against the record."""
        return read_table(path, columns, check_rows=self._row_check(name, key, path))

    def _row_check(self, name: str, key: str | None, path: Path) -> Any:
        def check(claimed: int) -> bool:
            return _records.check_rows(self.layout, name, key, path, claimed,
                                       strict=self.strict_rows)

        return check

    def remove(self, name: str, key: str | None = None) -> None:
        """Delete a table file. A run's results file (runs, metrics, predictions) is emptied
        instead: a file that a concurrent query has listed must not vanish before it is read."""
        path = self.layout.writable(self.layout.table(name, key))
        if name in RUN_TABLES:
            if path.exists():
                from asign.schemas import TABLES

                self.write(name, TABLES[name].empty_table(), key)
            return
        with _records.recording(self.layout, name, key, path):
            path.unlink(missing_ok=True)

    def write_thumbnail(self, section_id: str, rgb: Any, *, fine: bool = False) -> Path:
        """A section's registration thumbnail (``fine``: align's ≤ 4 µm/px one)."""
        path = (self.layout.fine_thumbnail if fine else self.layout.thumbnail)(section_id)
        return self._write_qc_png(path, rgb)

    def write_alignment_png(self, sample_id: str, rgb: Any) -> Path:
        """The QC overlay of a sample's aligned sections."""
        return self._write_qc_png(self.layout.alignment_png(sample_id), rgb)

    def has_fine_thumbnail(self, section_id: str) -> bool:
        return self.layout.fine_thumbnail(section_id).exists()

    def thumbnail(self, manifest: dict[str, Any], sample_id: str,
                  section_id: str) -> Thumbnail | None:
        """The finest thumbnail a section has, with its downsample (store/thumbnails.py)."""
        return section_thumbnail(self.layout, self.step_record(manifest, sample_id, "align"),
                                 section_id)

    def ingest_fingerprint(self) -> str:
        """Fingerprint of what ingest produced: parameters and every step's input fingerprint
        (not the timestamps, so re-running a finished ingest keeps it)."""
        m = self.manifest()
        steps = {s: {k: r.fingerprint for k, r in d.items()}
                 for s, d in sorted(self.step_records(m).items())}
        return fingerprint(m.get("params", {}), steps)

    def _write_qc_png(self, path: Path, rgb: Any) -> Path:
        """A QC picture (e.g. the alignment overlay), written atomically."""
        import numpy as np
        from PIL import Image

        with atomic_path(self.layout.writable(path)) as tmp:
            Image.fromarray(np.asarray(rgb, dtype=np.uint8)).save(tmp, format="PNG")
        return path

    def checkpoint(self, name: str) -> Checkpoint:
        """The training checkpoint ``name`` (a run id, or ``<run id>.fold<k>``)."""
        return Checkpoint(self.layout.writable(self.layout.checkpoint(name)))

    # vectors --------------------------------------------------------------
    def vectors(self, *, readonly: bool = True) -> Vectors:
        path = self.layout.vectors if readonly else self.layout.writable(self.layout.vectors)
        return open_vectors(path, readonly=readonly)

    # queries --------------------------------------------------------------
    def query(self, sql: str) -> pa.Table:
        return run_query(self.layout, sql)

    def duckdb(self) -> Any:
        return connect(self.layout)


def open_store(root: Path, *, create: bool = False) -> Store:
    """Open an existing store (version-checked) or create a new one when ``create``."""
    root = Path(root)
    store = Store(StoreLayout(root))
    if store.layout.manifest.exists():
        store.manifest()  # validates format and version
        if create:
            _require_writable(root)
        return store
    if not create:
        raise StoreError("no store here (manifest.json missing)", path=root,
                         fix="run `asign ingest SRC --store DIR` first, or check --store")
    prepare_root(root)
    store.save_manifest(_manifest.new_manifest())
    return store


def prepare_root(root: Path) -> Path:
    """Create the store directory if needed; it must be writable."""
    root = Path(root)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise StoreError(f"cannot create store directory ({err.strerror})", path=root,
                         fix="choose a writable --store directory") from err
    _require_writable(root)
    return root


def _require_writable(root: Path) -> None:
    if not os.access(root, os.W_OK | os.X_OK):
        raise StoreError("store directory is not writable", path=root,
                         fix="check permissions (chmod u+w) or choose another --store directory")
