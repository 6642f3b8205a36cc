"""Where every artefact of a store lives. The only module that knows file names."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

# Tables written once per store (rewritten whole) vs. partitioned one file per sample
# (ingest) or per run (train). Partitioning is what lets samples be re-ingested and runs be
# written concurrently without a single-writer lock.
GLOBAL_TABLES = ("sections", "genes")
RUN_TABLES = ("runs", "metrics", "predictions")
# The per-sample tables each ingest step writes (register also writes sections and genes).
# align writes no transforms for samples with precomputed aligned coordinates.
STEP_TABLES = {"register": ("spots", "labels"), "align": ("spots", "transforms", "warps"),
               "patches": ("tiles", "spot_tiles"), "embed": ("embeddings",), "graph": ("edges",)}
# every table a step writes is partitioned by sample: a new one is named in STEP_TABLES only
SAMPLE_TABLES = tuple(dict.fromkeys(t for tables in STEP_TABLES.values() for t in tables))
# the steps whose outputs are LMDB entries as well as tables (store/vectors.py)
VECTOR_STEPS = ("patches", "embed")
OPTIONAL_STEP_TABLES = {("align", "transforms"), ("align", "warps")}  # warps: --syn only


@dataclass(frozen=True)
class FileKind:
    """One kind of file a store holds: where (a glob below the root), which command writes
    it, and whether it carries data (``transient``: a lock file, which the kernel's lock is
    on and any command re-creates). ``asign check`` flags any other file; the fault-matrix
    test enumerates this list, so a new kind is covered by adding it here."""

    name: str
    pattern: str
    writer: str  # ingest | train
    transient: bool = False


FILE_KINDS: tuple[FileKind, ...] = (
    FileKind("manifest", "manifest.json", "ingest"),
    FileKind("table-record", "records/tables.json", "ingest"),
    FileKind("run-record", "records/runs/*.json", "train"),
    *(FileKind(f"table:{n}", f"tables/{n}.parquet", "ingest") for n in GLOBAL_TABLES),
    *(FileKind(f"table:{n}", f"tables/{n}/*.parquet", "ingest") for n in SAMPLE_TABLES),
    *(FileKind(f"table:{n}", f"results/{n}/*.parquet", "train") for n in RUN_TABLES),
    FileKind("vectors", "vectors.lmdb/data.mdb", "ingest"),
    FileKind("vectors-lock", "vectors.lmdb/lock.mdb", "ingest", transient=True),
    FileKind("checkpoint", "checkpoints/*.pt", "train"),
    FileKind("thumbnail", "qc/thumbnails/*.png", "ingest"),
    FileKind("alignment-picture", "qc/*_alignment.png", "ingest"),
    FileKind("lock", "locks/*.lock", "ingest", transient=True),
    FileKind("lock", "locks/*/*.lock", "train", transient=True),
    # who reads the store (store/locks.reader_lock): one file per train, each locked by it
    FileKind("reader-lock", "locks/*.lock.readers/*.json", "train", transient=True),
)


@dataclass(frozen=True)
class StoreLayout:
    root: Path

    @property
    def manifest(self) -> Path:
        return self.root / "manifest.json"

    @property
    def tables(self) -> Path:
        return self.root / "tables"

    @property
    def vectors(self) -> Path:
        return self.root / "vectors.lmdb"

    @property
    def results(self) -> Path:
        return self.root / "results"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def qc(self) -> Path:
        return self.root / "qc"

    def table(self, name: str, key: str | None = None) -> Path:
        """File of a table: ``tables/NAME.parquet`` or ``tables/NAME/KEY.parquet``."""
        if name in GLOBAL_TABLES:
            return self.tables / f"{name}.parquet"
        if name in SAMPLE_TABLES:
            if key is None:
                raise ValueError(f"table {name} is partitioned by sample; a key is required")
            return self.tables / name / f"{_safe(key)}.parquet"
        if name in RUN_TABLES:
            if key is None:
                raise ValueError(f"table {name} is partitioned by run; a key is required")
            return self.results / name / f"{_safe(key)}.parquet"
        raise ValueError(f"unknown table {name}")

    def table_glob(self, name: str) -> str:
        if name in GLOBAL_TABLES:
            return str(self.tables / f"{name}.parquet")
        base = self.results if name in RUN_TABLES else self.tables
        return str(base / name / "*.parquet")

    def ingest_table_files(self) -> list[Path]:
        """Every table file ingest wrote (not the results, which trainers write concurrently)."""
        found = [self.table(n) for n in GLOBAL_TABLES if self.table(n).exists()]
        for name in SAMPLE_TABLES:
            found += sorted((self.tables / name).glob("[!.]*.parquet"))
        return found

    def ingest_files(self) -> list[Path]:
        """``ingest_table_files`` and the QC pictures of align: everything ingest writes
        whose sha256 the manifest records (not the LMDB, which check verifies entry-wise)."""
        return self.ingest_table_files() + sorted(self.qc.glob("*_alignment.png")) + sorted(
            self.qc.joinpath("thumbnails").glob("[!.]*.png"))

    def kind_of(self, path: Path) -> FileKind | None:
        """The kind of a file below the root, or None: not a file asign writes here."""
        rel = Path(self.relative(path))
        return next((k for k in FILE_KINDS if rel.match(k.pattern) and
                     len(rel.parts) == len(Path(k.pattern).parts)), None)

    def relative(self, path: Path) -> str:
        """A store file's name in the manifest: its path below the store root."""
        return Path(path).relative_to(self.root).as_posix()

    def checkpoint(self, run_id: str) -> Path:
        return self.checkpoints / f"{_safe(run_id)}.pt"

    # locks (store/locks.py) and write records (store/records.py) -------------------------
    @property
    def locks(self) -> Path:
        return self.root / "locks"

    @property
    def ingest_lock(self) -> Path:
        return self.locks / "ingest.lock"

    def run_lock(self, run_id: str) -> Path:
        """Held by the live process training ``run_id``."""
        return self.locks / "runs" / f"{_safe(run_id)}.lock"

    def record_lock(self, record: Path) -> Path:
        """Serialises the read-modify-write of one record file (and the writes it records)."""
        return self.locks / "records" / f"{record.stem}.lock"

    @property
    def records(self) -> Path:
        return self.root / "records"

    def record_of(self, name: str, key: str | None = None) -> Path:
        """Where the sha256 and row count of a table file are recorded when it is written:
        one file for all ingest tables (one writer at a time), one per run for results."""
        if name in RUN_TABLES:
            if key is None:
                raise ValueError(f"table {name} is partitioned by run; a key is required")
            return self.records / "runs" / f"{_safe(key)}.json"
        return self.records / "tables.json"

    def require_outside(self, path: Path, what: str) -> Path:
        """``path`` if it lies outside the store (after resolving symlinks): a user's output
        file (query result, report, export) must never replace one of the store's files."""
        from asign.errors import StoreError

        root, real = os.path.realpath(self.root), os.path.realpath(path)
        if os.path.commonpath([root, real]) == root:
            raise StoreError(f"refusing to write {what} inside the store", path=path,
                             fix=f"choose a {what} path outside the store directory {self.root}")
        return Path(path)

    def writable(self, path: Path) -> Path:
        """``path`` if writing it stays inside the store: no symlink (of the file or of any
        folder below the store root) may lead a write out of it."""
        from asign.errors import StoreError

        path = Path(path)
        root = os.path.realpath(self.root)
        real = os.path.realpath(path)
        if os.path.commonpath([root, real]) != root or (path.is_symlink()):
            raise StoreError(f"refusing to write through a symlink that leads out of the store "
                             f"(to {real})", path=path,
                             fix="remove the symlink (the store's folders must be plain folders)")
        return path

    def thumbnail(self, section_id: str) -> Path:
        """H&E thumbnail of a section (written by align) so reports never open raw slides."""
        return self.qc / "thumbnails" / f"{_safe(section_id)}.png"

    def fine_thumbnail(self, section_id: str) -> Path:
        """A finer H&E thumbnail (≤ 4 µm/px, written by align) where morphology shows: the
        report's maps and the aligned stacks of the export."""
        return self.qc / "thumbnails" / f"{_safe(section_id)}_fine.png"

    def alignment_png(self, sample_id: str) -> Path:
        return self.qc / f"{_safe(sample_id)}_alignment.png"


def _safe(key: str) -> str:
    """File-system-safe partition key; ids are vetted as a set by names.check_names."""
    from asign.store.names import file_name

    return file_name(key)
