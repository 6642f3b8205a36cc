"""Output files of the report and the export, written atomically and readable by others."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from asign.store.atomic import atomic_path


@contextmanager
def output_path(target: Path) -> Iterator[Path]:
    """A temporary path that replaces ``target`` on success. The atomic temp file is
    created 0600; a report or an .h5ad is meant for sharing, so the umask decides instead."""
    target = Path(target)
    with atomic_path(target) as tmp:
        yield tmp
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
