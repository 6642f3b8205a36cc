"""Atomic file writes: write to a temporary file beside the target, fsync, os.replace.
A file that exists is therefore always complete, even after kill -9 or a full disk."""

from __future__ import annotations

import contextlib
import errno
import functools
import logging
import os
import re
import socket
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from asign.errors import StoreError

log = logging.getLogger(__name__)

_FULL_BYTES = 1 << 20  # less free space than this after a failed write: the disk is full


@contextlib.contextmanager
def atomic_path(target: Path,
                before_replace: Callable[[Path], None] | None = None) -> Iterator[Path]:
    """Yield a temporary path in the target's directory; on success it replaces ``target``.

    Any failure (an OSError, or a writer that reports a full disk its own way, such as
    torch.save's RuntimeError) leaves ``target`` as it was and removes the temporary file.
    ``before_replace(tmp)`` runs on the complete temporary file (e.g. to record its hash)."""
    target = Path(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        # The name says who writes it, so a later run can remove it if that writer died.
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.{_writer()}.", suffix=".tmp",
                                        dir=target.parent)
    except OSError as err:
        raise _store_error(err, target) from err
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        # mkstemp creates 0600; a store file gets the mode any new file would (umask).
        os.chmod(tmp, 0o666 & ~_umask())
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        if before_replace is not None:
            before_replace(tmp)
        os.replace(tmp, target)
    except OSError as err:
        raise _store_error(err, target) from err
    except Exception as err:
        if disk_full(target.parent):
            raise _store_error(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)), target) from err
        raise
    finally:
        if tmp.exists():
            tmp.unlink()


# ``.{target}.{host}-{pid}.{random}.tmp``; mkstemp's random part has no dots.
_TEMP_NAME = re.compile(r"^\..+\.(?P<host>\w*)-(?P<pid>\d+)\.\w+\.tmp$")


def _writer() -> str:
    host = re.sub(r"\W", "_", socket.gethostname())[:32]
    return f"{host}-{os.getpid()}"


def remove_stale_temps(root: Path) -> list[Path]:
    """Delete the temporary files of writers that died mid-write (kill -9 and power loss
    skip ``atomic_path``'s cleanup), so no half-written file stays in the store. Only files
    made on this host by a process that no longer runs are removed: a live writer, such as
    a concurrent train run, or a writer on another host of a shared file system, is safe."""
    host = _writer().rsplit("-", 1)[0]
    removed = []
    for folder, subdirs, files in os.walk(root):
        subdirs[:] = [d for d in subdirs if not d.endswith(".lmdb")]  # LMDB has its own files
        for name in files:
            m = _TEMP_NAME.match(name)
            if m and m["host"] == host and not _running(int(m["pid"])):
                path = Path(folder) / name
                try:
                    path.unlink()
                except FileNotFoundError:  # another run removed it first
                    continue
                removed.append(path)
    if removed:
        log.info("removed %d temporary file(s) left by interrupted writers", len(removed))
    return removed


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


def write_bytes(target: Path, data: bytes) -> None:
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)


@functools.lru_cache(maxsize=1)
def _umask() -> int:
    try:  # Linux ≥ 4.7 reports it without changing it
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def disk_full(folder: Path) -> bool:
    """Whether the file system holding ``folder`` is (about) full."""
    try:
        st = os.statvfs(folder)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < _FULL_BYTES


def _store_error(err: OSError, target: Path) -> StoreError:
    if err.errno == errno.ENOSPC or (err.errno is None and disk_full(target.parent)):
        return StoreError("no space left on device while writing", path=target,
                          fix="free disk space or point --store at a larger disk, then re-run "
                              "(finished work is kept)")
    if err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return StoreError("store is not writable", path=target,
                          fix="check permissions (chmod u+w) or choose another --store directory")
    return StoreError(f"cannot write ({err.strerror or err})", path=target,
                      fix="check the store directory and re-run")
