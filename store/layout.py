"""Where every artefact of a store lives. The only module that knows file names."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

# Tables written once per store (rewritten whole) vs. partitioned one file per sample
# (ingest) or per run (train). Partitioning is what lets samples be re-ingested and runs be
# written concurrently without a single-writer lock.
GLOBAL_TABLES = ("sections", "genes")
SAMPLE_TABLES = ("spots", "labels", "transforms", "tiles", "spot_tiles", "embeddings", "edges")
RUN_TABLES = ("runs", "metrics", "predictions")
# The per-sample tables each ingest step writes (register also writes sections and genes).
# align writes no transforms for samples with precomputed aligned coordinates.
STEP_TABLES = {"register": ("spots", "labels"), "align": ("spots", "transforms"),
               "patches": ("tiles", "spot_tiles"), "embed": ("embeddings",), "graph": ("edges",)}
OPTIONAL_STEP_TABLES = {("align", "transforms")}


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

    def relative(self, path: Path) -> str:
        """A store file's name in the manifest: its path below the store root."""
        return Path(path).relative_to(self.root).as_posix()

    def checkpoint(self, run_id: str) -> Path:
        return self.checkpoints / f"{_safe(run_id)}.pt"

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
    """File-system-safe partition key (sample ids like 'C' or globs never contain '/')."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in key)
