"""Embeddings and patches in LMDB. Keys are ``emb/{encoder}/{level}/{id}`` (float16 bytes)
and ``patch/{spot_id}`` (compressed image bytes); ``done/...`` markers record finished
batches, written in the same transaction as the batch so a crash never half-writes one."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from asign.errors import ImageError, StoreError

MAP_SIZE = 1 << 40  # sparse on Linux; LMDB needs an upper bound, not an allocation


def emb_key(encoder: str, level: str, item_id: str) -> bytes:
    return f"emb/{encoder}/{level}/{item_id}".encode()


def patch_key(spot_id: str) -> bytes:
    return f"patch/{spot_id}".encode()


def done_key(*parts: str) -> bytes:
    return ("done/" + "/".join(parts)).encode()


def meta_key(name: str) -> bytes:
    return f"meta/{name}".encode()


def decode_patch(data: bytes) -> np.ndarray:
    """A stored patch (PNG or JPEG bytes, ``ingest.patches.encode_patch``) as (H, W, 3) uint8."""
    import io

    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as im:
            return np.asarray(im.convert("RGB"))
    except (OSError, UnidentifiedImageError, ValueError) as err:
        raise ImageError(
            f"stored patch bytes are not a readable image ({err})",
            fix="re-run `asign ingest --steps patches` to rewrite the patch store",
        ) from err


@dataclass
class Vectors:
    path: Path
    env: Any

    def close(self) -> None:
        self.env.close()

    def __enter__(self) -> Vectors:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def put_many(self, items: Iterable[tuple[bytes, bytes]]) -> None:
        """One transaction: all items land, or none do."""
        import lmdb

        try:
            with self.env.begin(write=True) as txn:
                for key, value in items:
                    txn.put(key, value)
        except lmdb.Error as err:
            from asign.store.atomic import disk_full

            if disk_full(self.path):  # LMDB reports a full disk as an I/O error
                raise StoreError("no space left on device while writing embeddings/patches", path=self.path,
                                 fix="free disk space or point --store at a larger disk, then re-run "
                                     "(committed batches are kept)") from err
            raise StoreError(f"LMDB write failed ({err})", path=self.path,
                             fix="check free disk space and permissions, then re-run") from err

    def get(self, key: bytes) -> bytes | None:
        with self.env.begin() as txn:
            value = txn.get(key)
            return None if value is None else bytes(value)

    def has(self, key: bytes) -> bool:
        with self.env.begin() as txn:
            return txn.get(key) is not None

    def get_vectors(self, keys: Sequence[bytes], dim: int) -> np.ndarray:
        """float16 (len(keys), dim); a missing key is a store inconsistency."""
        out = np.empty((len(keys), dim), dtype=np.float16)
        with self.env.begin() as txn:
            for i, key in enumerate(keys):
                value = txn.get(key)
                if value is None:
                    raise StoreError(f"embedding {key.decode()} missing", path=self.path,
                                     fix="re-run `asign ingest --steps embed` to complete the store")
                out[i] = np.frombuffer(value, dtype=np.float16, count=dim)
        return out

    def get_patches(self, spot_ids: Sequence[str]) -> np.ndarray:
        """The stored spot patches, (len(spot_ids), H, W, 3) uint8, decoded."""
        out = None
        with self.env.begin() as txn:
            for i, spot_id in enumerate(spot_ids):
                value = txn.get(patch_key(spot_id))
                if value is None:
                    raise StoreError(f"patch of spot {spot_id} missing", path=self.path,
                                     fix="re-run `asign ingest --steps patches` for its sample")
                img = decode_patch(bytes(value))
                if out is None:
                    out = np.empty((len(spot_ids), *img.shape), dtype=np.uint8)
                if img.shape != out.shape[1:]:
                    raise StoreError(f"patch of spot {spot_id} is {img.shape}, others "
                                     f"{out.shape[1:]}", path=self.path,
                                     fix="re-run `asign ingest --steps patches` for its sample")
                out[i] = img
        return out if out is not None else np.empty((0, 0, 0, 3), dtype=np.uint8)

    def count(self, prefix: bytes) -> int:
        n = 0
        with self.env.begin() as txn:
            cur = txn.cursor()
            if cur.set_range(prefix):
                for key in cur.iternext(values=False):
                    if not bytes(key).startswith(prefix):
                        break
                    n += 1
        return n

    def delete_prefix(self, prefix: bytes) -> int:
        n = 0
        with self.env.begin(write=True) as txn:
            cur = txn.cursor()
            positioned = cur.set_range(prefix)
            # delete() advances the cursor; at the end key() is b"" and the loop stops.
            while positioned and bytes(cur.key()).startswith(prefix):
                positioned = cur.delete()
                n += 1
        return n

    def put_meta(self, name: str, value: dict[str, Any]) -> None:
        self.put_many([(meta_key(name), json.dumps(value, sort_keys=True).encode())])

    def get_meta(self, name: str) -> dict[str, Any] | None:
        raw = self.get(meta_key(name))
        return None if raw is None else json.loads(raw)


def open_vectors(path: Path, *, readonly: bool = False) -> Vectors:
    import lmdb

    path = Path(path)
    try:
        if readonly:
            if not path.exists():
                raise StoreError("embeddings database missing", path=path,
                                 fix="run `asign ingest --steps patches,embed` for this store")
            # Readers take a reader slot in lock.mdb (never blocking anyone), so a writer in
            # another process (an ingest beside a trainer) cannot reuse pages they still read.
            # Without write access to lock.mdb (read-only media, another user's store) reading
            # lock-free is the only way; it is safe while no ingest writes to this store.
            try:
                env = lmdb.open(str(path), readonly=True, lock=True, subdir=True, map_size=MAP_SIZE)
            except lmdb.Error:
                env = lmdb.open(str(path), readonly=True, lock=False, subdir=True, map_size=MAP_SIZE)
        else:
            env = lmdb.open(str(path), map_size=MAP_SIZE, subdir=True, max_dbs=0)
    except lmdb.Error as err:
        raise StoreError(f"cannot open LMDB ({err})", path=path,
                         fix="check permissions and free space of the store directory") from err
    return Vectors(path=path, env=env)
