"""State-dict helpers shared by the encoders: hash the weights in use, read a checkpoint
file safely, and load it with every key and shape checked."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

from asign.errors import WeightsError

log = logging.getLogger(__name__)


def params_sha256(module: Any) -> str:
    """Hash of every tensor in the module's state dict (names, dtypes, shapes, bytes):
    identifies the exact weights in use whatever their source."""
    import torch

    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        t = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def read_state_dict(path: Path) -> dict[str, Any]:
    """Tensors of a checkpoint file (safetensors by its ``.safetensors`` suffix, else a torch
    pickle read with ``weights_only``), unwrapped from ``{"state_dict": ...}``/``{"model":
    ...}`` and stripped of DataParallel's ``module.`` prefix."""
    import torch

    obj = _read_safetensors(path) if path.suffix == ".safetensors" else _read_torch(path)
    for wrapper in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
            obj = obj[wrapper]
    if not isinstance(obj, dict) or not all(torch.is_tensor(v) for v in obj.values()):
        raise WeightsError(
            "the file holds no state dict of tensors",
            path=path,
            fix="pass a file saved with torch.save(model.state_dict(), PATH)",
        )
    return {k.removeprefix("module."): v for k, v in obj.items()}


def _unreadable(path: Path, kind: str, err: BaseException, fix: str) -> WeightsError:
    first = (str(err).splitlines() or [type(err).__name__])[0][:120]
    return WeightsError(f"not a readable {kind} ({first})", path=path, fix=fix)


def _read_torch(path: Path) -> Any:
    import pickle
    import zipfile

    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, pickle.UnpicklingError, zipfile.BadZipFile, EOFError) as err:
        raise _unreadable(path, "torch state dict", err, "pass a file saved with "
                          "torch.save(model.state_dict(), PATH); a truncated download is "
                          "refused: fetch it again") from err


def _read_safetensors(path: Path) -> dict[str, Any]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except (OSError, SafetensorError) as err:
        raise _unreadable(path, "safetensors file", err, "pass a complete .safetensors "
                          "file; a truncated download is refused: fetch it again") from err


def load_checked(
    module: Any,
    state: dict[str, Any],
    path: Path,
    ignorable: tuple[str, ...] = (),
    *,
    strict: bool = False,
    assign: bool = False,
    fix: str = "pass weights saved from the same architecture (torchvision naming), "
    "e.g. torchvision's resnet50-0676ba61.pth",
) -> None:
    """Load ``state`` into ``module``; every parameter/buffer must be present with the
    right shape. Keys starting with ``ignorable`` (layers the encoder drops) may be extra;
    other extra keys are refused when ``strict``, else logged. ``assign`` puts the file's
    tensors into the module as they are (a module built on the meta device)."""
    wanted = {k: v for k, v in module.state_dict().items() if not k.endswith("num_batches_tracked")}
    missing = [k for k in wanted if k not in state]
    wrong = [
        f"{k} {tuple(state[k].shape)}≠{tuple(v.shape)}"
        for k, v in wanted.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    unexpected = [
        k
        for k in state
        if k not in wanted and not k.endswith("num_batches_tracked") and not k.startswith(ignorable)
    ]
    if missing or wrong or (strict and unexpected):
        detail = (
            f"{len(missing)} missing key(s) e.g. {missing[:3]}"
            if missing
            else f"{len(wrong)} shape mismatch(es) e.g. {wrong[:2]}"
            if wrong
            else f"{len(unexpected)} unexpected key(s) e.g. {unexpected[:3]}"
        )
        raise WeightsError(
            f"state dict does not match the encoder architecture: {detail}", path=path, fix=fix
        )
    if unexpected:
        log.warning(
            "%s: ignoring %d unexpected key(s), e.g. %s", path, len(unexpected), unexpected[:3]
        )
    module.load_state_dict({k: state[k] for k in wanted}, strict=False, assign=assign)
    if assign:
        tensors = [*module.named_parameters(), *module.named_buffers()]
        left = [k for k, v in tensors if v.is_meta]
        if left:
            raise WeightsError(f"the encoder kept {len(left)} uninitialised tensor(s), e.g. "
                               f"{left[:3]}", path=path, fix=fix)
