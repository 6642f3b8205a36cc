"""The store manifest: format version, parameters, input hashes and which step finished
for which sample under which fingerprint. Written atomically after every finished unit."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from asign import __version__
from asign.errors import SchemaVersionError, StoreError
from asign.hashing import file_sha256
from asign.schemas import SCHEMA_VERSION, STORE_FORMAT
from asign.store.atomic import write_bytes
from asign.store.layout import StoreLayout


def new_manifest() -> dict[str, Any]:
    return {
        "format": STORE_FORMAT,
        "schema_version": SCHEMA_VERSION,
        "asign_version": __version__,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "params": {},
        "inputs": {},
        "steps": {},
    }


def load_manifest(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise StoreError("no store here (manifest.json missing)", path=path,
                         fix="run `asign ingest SRC --store DIR` first, or check --store") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise StoreError(f"manifest is corrupt ({err})", path=path,
                         fix="restore it or re-create the store with `asign ingest`") from err
    if data.get("format") != STORE_FORMAT:
        raise StoreError("not an asign store", path=path,
                         fix="point --store at a directory made by `asign ingest`")
    version = int(data.get("schema_version", -1))
    if version > SCHEMA_VERSION:
        raise SchemaVersionError(
            f"store written by schema version {version}, this asign reads up to {SCHEMA_VERSION}",
            path=path, fix="upgrade asign to read this store")
    return data


def save_manifest(path: Path, manifest: dict[str, Any]) -> None:
    write_bytes(path, json.dumps(manifest, indent=1, sort_keys=True, default=str).encode())


def table_record(layout: StoreLayout,
                 previous: dict[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    """``{relative path: {sha256, bytes, mtime_ns}}`` of every ingest table, saved in the
    manifest with each finished step. A table that does not match it was written after the
    last finished step (an interrupted ingest) or edited. The hash of a file whose size and
    mtime are those of ``previous`` is reused, so saving stays cheap on large stores."""
    previous = previous or {}
    out: dict[str, dict[str, Any]] = {}
    for path in layout.ingest_files():
        rel = layout.relative(path)
        try:
            st = path.stat()
            old = previous.get(rel) or {}
            same = old.get("bytes") == st.st_size and old.get("mtime_ns") == st.st_mtime_ns
            digest = old["sha256"] if same and "sha256" in old else file_sha256(path)
        except FileNotFoundError:
            continue
        out[rel] = {"sha256": digest, "bytes": st.st_size, "mtime_ns": st.st_mtime_ns}
    return out


def table_problem(layout: StoreLayout, rel: str, entry: dict[str, Any] | None, *,
                  full: bool = True) -> str | None:
    """Why a table file does not match its manifest entry (None when it does). ``full``
    re-hashes the file; otherwise an unchanged size and mtime count as a match."""
    path = layout.root / rel
    if entry is None:
        return ("not recorded in the manifest (written by an interrupted ingest?)"
                if path.exists() else None)
    try:
        st = path.stat()
    except FileNotFoundError:
        return "missing, although the manifest records it"
    if not full and st.st_size == entry.get("bytes") and st.st_mtime_ns == entry.get("mtime_ns"):
        return None
    if file_sha256(path) != entry.get("sha256"):
        return ("content does not match the sha256 in the manifest (edited, or written by an "
                "interrupted ingest)")
    return None
