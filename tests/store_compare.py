"""Is a store identical to another one? Every file of the store (Parquet tables, QC
pictures) byte for byte by SHA-256, the same set of files (so a stray temporary file left by
a crash counts as a difference), every LMDB entry byte for byte, and the manifest without
its timestamps. Used by the tests that kill and re-run ingest."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

TIMESTAMP_KEYS = ("created_at", "done_at", "mtime_ns")


def file_hashes(root: Path) -> dict[str, str]:
    """``{relative path: sha256}`` of every file except the manifest and the LMDB files
    (whose pages differ with the history of writes; their entries are compared instead)."""
    root = Path(root)
    out = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_file() and rel != "manifest.json" and not rel.startswith("vectors.lmdb/"):
            out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def lmdb_entries(root: Path) -> dict[bytes, bytes]:
    from asign.store import open_store

    with open_store(root).vectors() as vec:
        return vec.entries()


def manifest_without_timestamps(root: Path) -> dict[str, Any]:
    def strip(obj: Any) -> Any:
        if isinstance(obj, dict):
            return {k: strip(v) for k, v in obj.items() if k not in TIMESTAMP_KEYS}
        return obj

    return strip(json.loads((Path(root) / "manifest.json").read_text()))


def assert_same_store(expected: Path, actual: Path) -> None:
    """Fail with the first difference between two stores (see the module docstring)."""
    from asign.store import open_store
    from asign.store.check import check_store

    fa, fb = file_hashes(expected), file_hashes(actual)
    assert sorted(fb) == sorted(fa), (f"files only in {actual}: {sorted(set(fb) - set(fa))}; "
                                      f"only in {expected}: {sorted(set(fa) - set(fb))}")
    differ = [f for f in fa if fa[f] != fb[f]]
    for rel in differ:
        if rel.endswith(".parquet"):  # show what differs in the data, when it is the data
            import pyarrow.parquet as pq
            from pandas.testing import assert_frame_equal

            assert_frame_equal(pq.read_table(Path(expected) / rel).to_pandas(),
                               pq.read_table(Path(actual) / rel).to_pandas(), rtol=0, atol=0,
                               obj=rel)
    assert not differ, f"files with other bytes: {differ}"

    ea, eb = lmdb_entries(expected), lmdb_entries(actual)
    assert ea, f"no LMDB entries in {expected}"
    assert sorted(eb) == sorted(ea), (
        f"LMDB keys only in {actual}: {sorted(set(eb) - set(ea))[:5]}; "
        f"only in {expected}: {sorted(set(ea) - set(eb))[:5]}")
    bad = [k for k in ea if ea[k] != eb[k]]
    assert not bad, f"{len(bad)} LMDB entries with other bytes, e.g. {bad[:3]}"

    assert manifest_without_timestamps(actual) == manifest_without_timestamps(expected)
    assert check_store(open_store(actual)) == []
