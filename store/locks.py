"""Operating-system locks on files in the store (``fcntl.flock``).

The kernel drops a flock when its holder exits, however it exits (kill -9, power loss of the
process), so a lock is never left behind and no lock is ever judged by a file's existence or
age. Uses:

- ``writer_lock`` / ``reader_lock``: one ingest at a time writes a store (exclusive), and
  excludes the trains that read it (shared: any number at once); each waits up to ``wait``
  seconds for the other, then fails in one line naming the holder (pid, host, since,
  command);
- ``run_lock`` / ``run_alive``: a live training process holds its run's lock (shared, so
  two identical runs may still proceed side by side); a ``running`` run whose lock nobody
  holds belongs to a process that died: it is shown as ``interrupted``.

Locks are advisory and local to one machine's kernel (and NFS ≥ v4 with working locks);
they guard against accidents and races between asign processes, not against other tools.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from asign.errors import StoreError

log = logging.getLogger(__name__)

_POLL_S = 0.2
_NOT_WRITABLE = (errno.EACCES, errno.EPERM, errno.EROFS)


def _open(path: Path, *, create: bool) -> int | None:
    """A descriptor of the lock file (never through a symlink); None when absent."""
    flags = os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        if create:
            path.parent.mkdir(parents=True, exist_ok=True)
            return os.open(path, flags | os.O_CREAT, 0o666)
        return os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError as err:
        if create:
            raise StoreError("cannot create lock file (folder missing)", path=path,
                             fix="check the store directory") from err
        return None
    except OSError as err:
        raise StoreError(f"cannot open lock file ({err.strerror})", path=path,
                         fix="check the store's permissions; lock files must be regular "
                             "files") from err


def holder_info() -> dict[str, Any]:
    return {"pid": os.getpid(), "host": socket.gethostname(),
            "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])[:300],
            "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def read_holder(path: Path) -> dict[str, Any]:
    """What the holder wrote into its lock file (best effort: it may be mid-write)."""
    try:
        data = json.loads(Path(path).read_text() or "{}")
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def describe(info: dict[str, Any]) -> str:
    if not info:
        return "another process (it has not said which yet)"
    return (f"pid {info.get('pid')} on {info.get('host')} since {info.get('since')} "
            f"(`{info.get('command')}`)")


def _say_holder(fd: int, info: bytes) -> None:
    """Who holds the lock, for the message of a waiting process; best effort (a full disk
    must not stop the holder: the lock itself is the kernel's, not this text)."""
    try:
        os.ftruncate(fd, 0)
        if info:
            os.pwrite(fd, info, 0)
    except OSError as err:
        log.debug("could not record the lock holder: %s", err)


@contextlib.contextmanager
def writer_lock(path: Path, *, wait: float, what: str = "ingest") -> Iterator[None]:
    """Hold the store's single-writer lock (exclusive: no other writer, no reader such as a
    train); wait up to ``wait`` seconds for the holders, then fail with one line naming them."""
    fd = _open(path, create=True)
    assert fd is not None
    try:
        _acquire(fd, path, fcntl.LOCK_EX, wait, what)
        _say_holder(fd, json.dumps(holder_info()).encode())
        try:
            yield
        finally:
            _say_holder(fd, b"")  # a later reader sees no stale holder
    finally:
        os.close(fd)  # releases the lock


@contextlib.contextmanager
def reader_lock(path: Path, *, wait: float, what: str = "train") -> Iterator[None]:
    """Hold the store's lock shared: any number of readers (trains) at once, none beside a
    writer (an ingest). Each reader names itself in a file of its own under
    ``<lock>.readers/`` (locked by it, so a crashed reader's file is known to be dead).
    In a store this process may not write, the lock is taken through a read-only
    descriptor, or not at all when the lock file does not exist (no ingest ever ran)."""
    fd = _open_shared(path)
    if fd is None:
        yield
        return
    try:
        _acquire(fd, path, fcntl.LOCK_SH, wait, what)
        if read_holder(path):  # left by a writer that was killed: no writer holds it now
            _say_holder(fd, b"")
        with _named_reader(path):
            yield
    finally:
        os.close(fd)


def _acquire(fd: int, path: Path, mode: int, wait: float, what: str) -> None:
    """``flock(mode)``, polling up to ``wait`` s; then one StoreError naming the holders."""
    started = time.monotonic()
    deadline = started + max(0.0, wait)
    told = False
    while True:
        try:
            fcntl.flock(fd, mode | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            pass
        blocker = _blocker(path)
        if time.monotonic() >= deadline:
            raise StoreError(blocker, path=path.parents[1],
                             fix="wait for it to finish, or pass --wait SECONDS "
                                 f"(waited {wait:g} s)") from None
        # a holder names itself just after it takes the lock: the warning waits for that
        # (up to _NAME_S), so it says who is in the way rather than "not said which yet"
        named = not blocker.startswith(_UNNAMED)
        if not told and (named or time.monotonic() - started >= _NAME_S):
            log.warning("%s; this %s is waiting up to %g s", blocker, what, wait)
            told = True
        time.sleep(min(_POLL_S, max(0.0, deadline - time.monotonic())))


_UNNAMED = "another process holds this store's lock"
_NAME_S = 2.0  # how long a waiter gives a new holder to name itself before warning


def _blocker(path: Path) -> str:
    """Who holds the lock: the writer (its info is in the lock file) or the readers."""
    info = read_holder(path)
    if info:
        return f"another ingest is writing this store: {describe(info)}"
    readers = live_readers(path)
    if readers:
        more = f" and {len(readers) - 1} more" if len(readers) > 1 else ""
        return f"a train is reading this store: {describe(readers[0])}{more}"
    return f"{_UNNAMED}: {describe({})}"


def _readers_dir(path: Path) -> Path:
    return path.with_name(path.name + ".readers")


@contextlib.contextmanager
def _named_reader(path: Path) -> Iterator[None]:
    """A file naming this reader, flock'ed for as long as it reads (best effort: it only
    serves the message of a blocked writer)."""
    folder = _readers_dir(path)
    mine = folder / f"{socket.gethostname()}-{os.getpid()}-{time.monotonic_ns()}.json"
    try:
        folder.mkdir(exist_ok=True)
        fd = os.open(mine, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)
    except OSError as err:
        log.debug("could not name this reader: %s", err)
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        _say_holder(fd, json.dumps(holder_info()).encode())
        yield
    finally:
        with contextlib.suppress(OSError):
            mine.unlink()
        os.close(fd)


def live_readers(path: Path) -> list[dict[str, Any]]:
    """What the live readers of the lock at ``path`` say about themselves; files of readers
    that died are skipped (and removed once old, so they do not pile up)."""
    out = []
    try:
        names = sorted(_readers_dir(path).glob("*.json"))
    except OSError:
        return out
    for f in names:
        try:
            fd = os.open(f, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            out.append(read_holder(f))
            continue
        finally:
            os.close(fd)
        with contextlib.suppress(OSError):
            if time.time() - f.stat().st_mtime > _STALE_READER_S:
                f.unlink()
    return out


_STALE_READER_S = 60.0  # a file younger than this may belong to a reader about to lock it


def _open_shared(path: Path) -> int | None:
    """A descriptor to take the lock shared: read-write (created when absent), else
    read-only in a store this process may not write; None when it cannot exist."""
    try:
        return _open(path, create=True)
    except StoreError as err:
        cause = err.__cause__
        if not (isinstance(cause, OSError) and cause.errno in _NOT_WRITABLE):
            raise
    return _open(path, create=False)


def _open_writable(path: Path) -> int | None:
    """``_open(create=True)``, or None in a store this process cannot write: then the
    write the lock would guard fails by itself, with the reason (not a lock error)."""
    try:
        return _open(path, create=True)
    except StoreError as err:
        cause = err.__cause__
        if isinstance(cause, OSError) and cause.errno in _NOT_WRITABLE:
            return None
        raise


@contextlib.contextmanager
def _held(path: Path, mode: int) -> Iterator[None]:
    """``flock(mode)`` on ``path`` for the block; no lock where the store is read-only."""
    fd = _open_writable(path)
    try:
        if fd is not None:
            fcntl.flock(fd, mode)
        yield
    finally:
        if fd is not None:
            os.close(fd)


def run_lock(path: Path) -> contextlib.AbstractContextManager[None]:
    """Held (shared) by a training process for as long as it runs."""
    return _held(path, fcntl.LOCK_SH)


def run_alive(path: Path) -> bool:
    """Whether a live process holds the run lock at ``path`` (True when this process may
    not open the lock file: then it cannot tell, and does not call the run dead)."""
    try:
        fd = _open(path, create=False)
    except StoreError:
        return True
    if fd is None:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def exclusive(path: Path) -> contextlib.AbstractContextManager[None]:
    """A short exclusive section (e.g. a read-modify-write of a record file)."""
    return _held(path, fcntl.LOCK_EX)
