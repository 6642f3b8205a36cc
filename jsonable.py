"""Configs (dataclasses as dicts, tuples, Paths) → plain JSON types."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def jsonable(obj: Any) -> Any:
    """Configs (dataclasses as dicts, tuples, Paths) → plain JSON types for the store."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj
