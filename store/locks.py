"""Operating-system locks on files in the store (``fcntl.flock``).

The kernel drops a flock when its holder exits, however it exits (kill -9, power loss of the
process), so a lock is never left behind and no lock is ever judged by a file's existence or
age. Two uses:

- ``writer_lock``: one ingest at a time writes a store (exclusive, waits up to ``wait`` s);
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
                         fix="check the store's permissions; lock files must be regular files") from err


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
    """Hold the store's single-writer lock; wait up to ``wait`` seconds for another holder,
    then fail with one line naming it."""
    fd = _open(path, create=True)
    assert fd is not None
    try:
        deadline = time.monotonic() + max(0.0, wait)
        told = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                holder = describe(read_holder(path))
                if time.monotonic() >= deadline:
                    raise StoreError(f"another {what} is writing this store: {holder}", path=path.parents[1],
                                     fix=f"wait for it to finish, or pass --wait SECONDS (waited {wait:g} s)"
                                     ) from None
                if not told:
                    log.warning("another %s is writing this store (%s); waiting up to %g s", what, holder, wait)
                    told = True
                time.sleep(min(_POLL_S, max(0.0, deadline - time.monotonic())))
        _say_holder(fd, json.dumps(holder_info()).encode())
        try:
            yield
        finally:
            _say_holder(fd, b"")  # a later reader sees no stale holder
    finally:
        os.close(fd)  # releases the lock


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
