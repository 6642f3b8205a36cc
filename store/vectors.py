"""Embeddings and patches in LMDB. Keys are ``emb/{encoder}/{level}/{id}`` (float16 bytes)
and ``patch/{spot_id}`` (compressed image bytes); ``done/...`` markers record finished
batches, written in the same transaction as the batch so a crash never half-writes one.

Only this package composes keys and handles raw values (the helpers and the raw methods
below are private); everyone else reads and writes through the typed methods of
:class:`Vectors` (``put``, ``embeddings``, ``patch``, ``is_done`` with a :class:`Done`
marker) and the codecs in ``store/codecs.py``."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from asign.errors import StoreError
from asign.store.codecs import decode_patch, decode_vector, encode_vector

# The map is reserved address space, not memory, but a host's address-space limit
# (ulimit -v) counts it: a writer starts small and doubles the map when a transaction finds
# it full (``_grow``); a reader maps what the file holds and follows a writer's growth.
START_MAP = 64 << 20
MAX_MAP = 1 << 40
_MAX_GROWS = 2 * (MAX_MAP // START_MAP).bit_length()


def _emb_key(encoder: str, level: str, item_id: str) -> bytes:
    return f"emb/{encoder}/{level}/{item_id}".encode()


def _patch_key(spot_id: str) -> bytes:
    return f"patch/{spot_id}".encode()


def _done_key(done: Done) -> bytes:
    return ("done/" + "/".join(done.parts)).encode()


# The kinds of resume marker, the first part of a marker's key after ``done/``.
_PATCHES, _EMBEDDINGS = "patches", "emb"


@dataclass(frozen=True)
class Done:
    """The resume marker of one finished unit of an LMDB step, committed in the transaction
    of the unit's data (``Vectors.put``); made only by the constructors below, so its key
    (``done/patches/FP/SECTION``, ``done/emb/FP/SECTION/LEVEL/BATCH``) is composed here."""

    parts: tuple[str, ...]

    @classmethod
    def patches(cls, fingerprint: str, section_id: str) -> Done:
        """Every spot patch of a section is cut and stored."""
        return cls((_PATCHES, fingerprint, section_id))

    @classmethod
    def embeddings(cls, fingerprint: str, section_id: str, level: str, batch: int) -> Done:
        """Batch ``batch`` (a fixed chunk of the section's items at ``level``) is embedded."""
        return cls((_EMBEDDINGS, fingerprint, section_id, level, str(batch)))


@dataclass(frozen=True)
class EmbeddingRows:
    """Vectors of one encoder and level: ``vectors[i]`` (float16) belongs to ``ids[i]``."""

    encoder: str
    level: str
    ids: Sequence[str]
    vectors: np.ndarray  # (len(ids), dim) float16


class _ResizeGuard:
    """Many transactions at once, or one map resize alone (a readers-writer lock)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._open = 0
        self._resizing = False

    @contextlib.contextmanager
    def shared(self) -> Iterator[None]:
        with self._cond:
            self._cond.wait_for(lambda: not self._resizing)
            self._open += 1
        try:
            yield
        finally:
            with self._cond:
                self._open -= 1
                self._cond.notify_all()

    @contextlib.contextmanager
    def alone(self) -> Iterator[None]:
        with self._cond:
            self._cond.wait_for(lambda: not self._resizing)
            self._resizing = True
            self._cond.wait_for(lambda: self._open == 0)
        try:
            yield
        finally:
            with self._cond:
                self._resizing = False
                self._cond.notify_all()


@dataclass
class Vectors:
    path: Path
    _env: Any
    guard: _ResizeGuard = field(default_factory=_ResizeGuard)

    def close(self) -> None:
        self._env.close()

    def __enter__(self) -> Vectors:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def _begin(self, write: bool = False) -> Iterator[Any]:
        """A transaction, never while this process resizes the map (LMDB requires that no
        transaction of the process be open then: loader threads read while a background
        thread writes). When another process grew the map since this one opened it, the
        new size is adopted first (LMDB refuses the transaction until then)."""
        import lmdb

        for attempt in range(2):
            with self.guard.shared():
                try:
                    txn = self._env.begin(write=write)
                except lmdb.MapResizedError:
                    if attempt:
                        raise
                else:
                    with txn:
                        yield txn
                    return
            with self.guard.alone():
                held = self._env.info()["map_size"]
                self._env.set_mapsize(0)  # 0: the size the writer recorded
                if self._env.info()["map_size"] < held:
                    # never shrink below what a writer of this process grew it to before its
                    # commit recorded that size: the writer would find it full again, forever
                    self._env.set_mapsize(held)

    def _write(self, body: Any) -> Any:
        """Run ``body(txn)`` in one write transaction; a full map is doubled and the whole
        transaction retried (nothing of the failed attempt was committed)."""
        import lmdb

        for _ in range(_MAX_GROWS):
            try:
                with self._begin(write=True) as txn:
                    return body(txn)
            except lmdb.MapFullError:
                with self.guard.alone():
                    _grow(self._env, self.path)
        # doubling from START_MAP reaches MAX_MAP in far fewer steps: the growth was undone
        raise StoreError(f"the embeddings map stayed full after {_MAX_GROWS} growths "
                         f"(now {self._env.info()['map_size'] >> 20} MiB)", path=self.path,
                         fix="make sure one process writes this store at a time, then re-run")

    def _put_many(self, items: Iterable[tuple[bytes, bytes]]) -> None:
        """One transaction: all items land, or none do."""
        import lmdb

        items = list(items)

        def body(txn: Any) -> None:
            for key, value in items:
                txn.put(key, value)

        try:
            self._write(body)
        except StoreError:
            raise
        except lmdb.Error as err:
            from asign.store.atomic import disk_full

            if disk_full(self.path):  # LMDB reports a full disk as an I/O error
                raise StoreError("no space left on device while writing embeddings/patches",
                                 path=self.path,
                                 fix="free disk space or point --store at a larger disk, then "
                                     "re-run (committed batches are kept)") from err
            raise StoreError(f"LMDB write failed ({err})", path=self.path,
                             fix="check free disk space and permissions, then re-run") from err

    def _get(self, key: bytes) -> bytes | None:
        with self._begin() as txn:
            value = txn.get(key)
            return None if value is None else bytes(value)

    def _has(self, key: bytes) -> bool:
        with self._begin() as txn:
            return txn.get(key) is not None

    # typed access ---------------------------------------------------------
    def put(self, *, patches: Iterable[tuple[str, bytes]] = (),
            embeddings: Iterable[EmbeddingRows] = (), done: Iterable[Done] = ()) -> None:
        """One transaction: spot patches (``(spot_id, encoded bytes)``, ``codecs.encode_patch``),
        embeddings, and the done markers of the work they finish: all land, or none do."""
        items = [(_patch_key(spot_id), bytes(blob)) for spot_id, blob in patches]
        for rows in embeddings:
            if len(rows.ids) != len(rows.vectors):
                raise StoreError(f"{len(rows.ids)} ids for {len(rows.vectors)} {rows.level} "
                                 "embeddings", path=self.path)
            items += [(_emb_key(rows.encoder, rows.level, i), encode_vector(v))
                      for i, v in zip(rows.ids, rows.vectors, strict=True)]
        items += [(_done_key(marker), b"1") for marker in done]
        self._put_many(items)

    def is_done(self, marker: Done) -> bool:
        """Whether the resume marker was committed (with the data of its unit)."""
        return self._has(_done_key(marker))

    def forget_done(self, section_ids: Iterable[str], *, patches: bool,
                    keep: str | None = None) -> int:
        """Drop the embedding markers of the sections (and, with ``patches``, their patches
        markers too), so the units they mark are recomputed, not resumed; ``keep``: except
        those of this fingerprint. Returns how many."""
        kinds = (_PATCHES, _EMBEDDINGS) if patches else (_EMBEDDINGS,)
        sections = set(section_ids)

        def body(txn: Any) -> int:
            cur = txn.cursor()
            stale = []
            if cur.set_range(b"done/"):
                for key in cur.iternext(values=False):
                    parts = bytes(key).decode(errors="replace").split("/")
                    if parts[0] != "done":
                        break
                    if (len(parts) > 3 and parts[1] in kinds and parts[3] in sections
                            and parts[2] != keep):
                        stale.append(bytes(key))
            for key in stale:
                txn.delete(key)
            return len(stale)

        return self._write(body)

    def embeddings(self, encoder: str, level: str, ids: Sequence[str], dim: int) -> np.ndarray:
        """float16 (len(ids), dim); a missing vector is a store inconsistency."""
        out = np.empty((len(ids), dim), dtype=np.float16)
        with self._begin() as txn:
            for i, item_id in enumerate(ids):
                value = txn.get(_emb_key(encoder, level, item_id))
                if value is None:
                    raise StoreError(f"embedding emb/{encoder}/{level}/{item_id} missing",
                                     path=self.path,
                                     fix="re-run `asign ingest --steps embed` to complete the "
                                         "store")
                out[i] = decode_vector(value, dim)
        return out

    def patch(self, spot_id: str) -> np.ndarray:
        """One stored spot patch, decoded to (H, W, 3) uint8."""
        raw = self._get(_patch_key(spot_id))
        if raw is None:
            raise StoreError(f"patch {spot_id} missing", path=self.path,
                             fix="re-run `asign ingest --steps patches,embed`")
        return decode_patch(raw)

    def has_patch(self, spot_id: str) -> bool:
        return self._has(_patch_key(spot_id))

    def count_embeddings(self, encoder: str, level: str, id_prefix: str = "") -> int:
        return self._count(_emb_key(encoder, level, id_prefix))

    def count_patches(self, id_prefix: str = "") -> int:
        return self._count(_patch_key(id_prefix))

    def count_done(self, *, patches: bool = False) -> int:
        """How many embedding batches (with ``patches``: sections cut) are marked done."""
        return self._count(f"done/{_PATCHES if patches else _EMBEDDINGS}/".encode())

    def delete_embeddings(self, encoder: str, level: str, id_prefix: str = "") -> int:
        """Delete the vectors of ``encoder`` at ``level`` whose id starts with ``id_prefix``."""
        return self._delete_prefix(_emb_key(encoder, level, id_prefix))

    def entries(self) -> dict[bytes, bytes]:
        """Every entry, key to value: to compare two stores byte for byte."""
        with self._begin() as txn:
            return {bytes(k): bytes(v) for k, v in txn.cursor()}

    def get_patches(self, spot_ids: Sequence[str]) -> np.ndarray:
        """The stored spot patches, (len(spot_ids), H, W, 3) uint8, decoded."""
        out = None
        with self._begin() as txn:
            for i, spot_id in enumerate(spot_ids):
                value = txn.get(_patch_key(spot_id))
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

    def _count(self, prefix: bytes) -> int:
        n = 0
        with self._begin() as txn:
            cur = txn.cursor()
            if cur.set_range(prefix):
                for key in cur.iternext(values=False):
                    if not bytes(key).startswith(prefix):
                        break
                    n += 1
        return n

    def _delete_prefix(self, prefix: bytes) -> int:
        def body(txn: Any) -> int:
            n = 0
            cur = txn.cursor()
            positioned = cur.set_range(prefix)
            # delete() advances the cursor; at the end key() is b"" and the loop stops.
            while positioned and bytes(cur.key()).startswith(prefix):
                positioned = cur.delete()
                n += 1
            return n

        return self._write(body)


def _grow(env: Any, path: Path) -> None:
    import lmdb

    # from what the file already holds too: a map adopted from an older meta can be smaller
    held = (Path(path) / "data.mdb").stat().st_size if (Path(path) / "data.mdb").exists() else 0
    size = max(env.info()["map_size"], held)
    if size >= MAX_MAP:
        raise StoreError(f"embeddings database reached its {MAX_MAP >> 30} GiB limit", path=path,
                         fix="split the samples over several stores")
    try:
        env.set_mapsize(min(MAX_MAP, size * 2))
    except lmdb.Error as err:  # fails as mmap does (ENOMEM under ulimit -v)
        raise _map_error(err, path, size * 2) from err


def _map_error(err: Exception, path: Path, size: int) -> StoreError:
    """The real reason an LMDB map failed: the address-space limit, or else what LMDB says."""
    import resource

    limit = resource.getrlimit(resource.RLIMIT_AS)[0]
    text = str(err)
    if limit != resource.RLIM_INFINITY and ("allocate memory" in text or "ENOMEM" in text):
        return StoreError(f"cannot map the embeddings database ({size >> 20} MiB): the process's "
                          f"address-space limit (ulimit -v) is {limit >> 20} MiB", path=path,
                          fix="raise the limit (ulimit -v) or run on a host with more memory")
    return StoreError(f"cannot open LMDB ({text})", path=path,
                      fix="check permissions and free space of the store directory")


def _initial_map(path: Path) -> int:
    """What the data file holds now, with room to grow, at least START_MAP."""
    try:
        held = (Path(path) / "data.mdb").stat().st_size
    except OSError:
        held = 0
    return max(START_MAP, held + held // 2)


def open_vectors(path: Path, *, readonly: bool = False) -> Vectors:
    import lmdb

    path = Path(path)
    size = _initial_map(path)
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
                env = lmdb.open(str(path), readonly=True, lock=True, subdir=True, map_size=size)
            except lmdb.Error as err:
                if "allocate memory" in str(err):
                    raise
                env = lmdb.open(str(path), readonly=True, lock=False, subdir=True, map_size=size)
        else:
            env = lmdb.open(str(path), map_size=size, subdir=True, max_dbs=0)
    except lmdb.Error as err:
        raise _map_error(err, path, size) from err
    return Vectors(path, env)
