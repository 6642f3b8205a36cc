"""Atomic file writes: write to a temporary file beside the target, fsync, os.replace.
A file that exists is therefore always complete, even after kill -9."""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from asign.errors import StoreError


@contextlib.contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """Yield a temporary path in the target's directory; on success it replaces ``target``."""
    target = Path(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    except OSError as err:
        raise _store_error(err, target) from err
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except OSError as err:
        raise _store_error(err, target) from err
    finally:
        if tmp.exists():
            tmp.unlink()


def write_bytes(target: Path, data: bytes) -> None:
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)


def _store_error(err: OSError, target: Path) -> StoreError:
    if err.errno == errno.ENOSPC:
        return StoreError("no space left on device while writing", path=target,
                          fix="free disk space or point --store at a larger disk, then re-run (finished work is kept)")
    if err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return StoreError("store is not writable", path=target,
                          fix="check permissions (chmod u+w) or choose another --store directory")
    return StoreError(f"cannot write ({err.strerror})", path=target, fix="check the store directory and re-run")
