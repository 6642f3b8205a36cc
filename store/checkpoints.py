"""Training checkpoints: how they are written (atomically) and read (plain tensors and data
only, so a file planted in a shared store cannot run code)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from asign.errors import StoreError
from asign.store.atomic import atomic_path


@dataclass(frozen=True)
class Checkpoint:
    """One run's (or fold's) checkpoint file; ``path`` was checked to stay inside the store."""

    path: Path

    def save(self, payload: dict[str, Any]) -> None:
        import torch

        with atomic_path(self.path) as tmp:
            torch.save(payload, tmp)

    def member(self, k: int) -> Checkpoint:
        """The checkpoint of ensemble member ``k`` ≥ 1 of the same run, beside this one
        (``<name>.member<k>.pt``); refused when it is a symlink, like every store write."""
        import os

        path = self.path.with_name(f"{self.path.stem}.member{k}{self.path.suffix}")
        folder = os.path.realpath(self.path.parent)
        if path.is_symlink() or os.path.dirname(os.path.realpath(path)) != folder:
            raise StoreError("refusing to write through a symlink that leads out of the store",
                             path=path, fix="remove the symlink (checkpoints must be plain files)")
        return Checkpoint(path)

    def load(self) -> dict[str, Any] | None:
        """The payload, or None when no checkpoint was written (``weights_only=True``)."""
        import pickle

        import torch

        if not self.path.exists():
            return None
        try:
            return torch.load(self.path, map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as err:
            first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
            raise StoreError(f"checkpoint refused: not plain tensors and data ({first})",
                             path=self.path,
                             fix="delete the file and re-run without --resume (it is "
                                 "re-created)") from err
