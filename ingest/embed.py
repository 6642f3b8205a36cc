"""Batched, frozen-encoder embedding as a generator, so the caller commits per batch.

Loading (decode + crop + resize, and optionally patch compression) runs in a small thread
pool ahead of inference: PIL and zlib release the GIL and so does torch, so on a CPU the
loaders overlap with the encoder's matmuls. Inference runs in channels-last layout, under
bf16 autocast where the CPU has native bf16 (``precision="auto"``), and every vector leaves
as float16. The output is deterministic: the same inputs, weights and batch composition
give bit-identical vectors across runs.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from asign.errors import ConfigError
from asign.ingest import patches
from asign.ingest.encoders import LoadedEncoder

log = logging.getLogger(__name__)

PRECISIONS = ("auto", "bf16", "fp16", "fp32")
DEFAULT_BATCH_SIZE = 32
FLOAT16_MAX = 65504.0

Loader = Callable[[], np.ndarray]


@dataclass
class EmbeddedBatch:
    """One batch of results, in input order. ``patches`` holds the compressed crops when
    ``embed_batches`` was asked for a codec (spot patches for the store), else None."""

    keys: list[str]
    features: np.ndarray  # (B, dim) float16
    patches: list[bytes] | None = None


def cpu_has_bf16() -> bool:
    """Native bf16 matmul on this CPU (AVX512-BF16 / AMX), as oneDNN sees it."""
    import torch

    return bool(
        torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    )


def resolve_precision(precision: str, device: str) -> str:
    """``auto`` → bf16 where the hardware runs it natively, else fp32."""
    import torch

    if precision not in PRECISIONS:
        raise ConfigError(f"unknown precision {precision!r}", fix=f"use one of {PRECISIONS}")
    if precision != "auto":
        return precision
    if device.startswith("cuda"):
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if cpu_has_bf16() else "fp32"


def crop_loader(path: Path, x0: int, y0: int, size_px: int, out_px: int) -> Loader:
    """A deferred crop (runs in a loader thread)."""
    return partial(patches.crop, Path(path), int(x0), int(y0), int(size_px), int(out_px))


def crop_items(
    path: Path, keys: list[str], corners: np.ndarray, size_px: int, out_px: int
) -> list[tuple[str, Loader]]:
    """(key, loader) pairs for squares of ``size_px`` level-0 px at ``corners`` (N, 2),
    each resized to ``out_px`` — spot patches or region/global tiles of one image."""
    corners = np.asarray(corners)
    if corners.shape != (len(keys), 2):
        raise ConfigError(f"corners have shape {corners.shape}, expected ({len(keys)}, 2)")
    return [
        (key, crop_loader(path, x, y, size_px, out_px))
        for key, (x, y) in zip(keys, corners.tolist(), strict=True)
    ]


class _Forward:
    """uint8 NHWC batch → float16 features, with the encoder's normalisation."""

    def __init__(self, encoder: LoadedEncoder, precision: str):
        import torch

        self.encoder = encoder
        self.device = torch.device(encoder.device)
        self.precision = resolve_precision(precision, encoder.device)
        spec = encoder.spec
        shape = (1, 3, 1, 1)
        # Fold /255 into the normalisation: x * scale + shift.
        std = torch.tensor(spec.std, dtype=torch.float32).view(shape)
        mean = torch.tensor(spec.mean, dtype=torch.float32).view(shape)
        self.scale = (1.0 / (255.0 * std)).to(self.device)
        self.shift = (-mean / std).to(self.device)

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        import torch

        x = torch.from_numpy(batch).to(self.device, non_blocking=True)
        # NHWC memory viewed as NCHW is exactly the channels-last layout: no copy.
        x = x.permute(0, 3, 1, 2).float().mul_(self.scale).add_(self.shift)
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision)
        with torch.inference_mode():
            if dtype is None:
                out = self.encoder.module(x)
            else:
                with torch.autocast(self.device.type, dtype=dtype):
                    out = self.encoder.module(x)
        out = out.float()
        if not bool(torch.isfinite(out).all()) or float(out.abs().max()) > FLOAT16_MAX:
            raise ConfigError(
                f"encoder {self.encoder.spec.name} produced values that do not fit float16",
                fix="check the weights (a corrupt or unnormalised checkpoint?)",
            )
        return out.to(torch.float16).cpu().numpy()


def _load(loader: Loader, input_px: int, codec: str | None) -> tuple[np.ndarray, bytes | None]:
    arr = np.asarray(loader())
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
        raise ConfigError(f"a loader returned {arr.shape} {arr.dtype}, expected (H, W, 3) uint8")
    if arr.shape[:2] != (input_px, input_px):
        from PIL import Image

        arr = np.asarray(
            Image.fromarray(arr).resize((input_px, input_px), Image.Resampling.BILINEAR)
        )
    return arr, (patches.encode_patch(arr, codec) if codec else None)


def _prefetch(
    items: Iterable[tuple[str, Loader]],
    work: Callable[[Loader], Any],
    workers: int,
    depth: int,
) -> Iterator[tuple[str, Any]]:
    """Run ``work(loader)`` in a thread pool up to ``depth`` items ahead; yield in order."""
    pending: deque[tuple[str, Future]] = deque()
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="asign-load")
    try:
        for key, loader in items:
            pending.append((key, pool.submit(work, loader)))
            if len(pending) > depth:
                key0, fut = pending.popleft()
                yield key0, fut.result()
        while pending:
            key0, fut = pending.popleft()
            yield key0, fut.result()
    finally:
        for _, fut in pending:
            fut.cancel()
        pool.shutdown(wait=True)


def embed_batches(
    encoder: LoadedEncoder,
    items: Iterable[tuple[str, Loader]],
    batch_size: int = DEFAULT_BATCH_SIZE,
    precision: str = "auto",
    workers: int = 1,
    prefetch_batches: int = 2,
    patch_codec: str | None = None,
) -> Iterator[EmbeddedBatch]:
    """Embed ``(key, loader)`` items, ``batch_size`` at a time, yielding each batch as soon
    as it is done. A loader returns an (H, W, 3) uint8 image, resized here to the encoder's
    input if needed. With ``patch_codec`` the loader threads also compress each image
    (``patches.encode_patch``) so the caller can store spot patches next to their vectors.

    One loader thread is enough on a CPU (a crop costs ~1 ms, an encode ~30 ms); more help
    with slow storage or on a GPU."""
    if batch_size < 1 or workers < 1 or prefetch_batches < 0:
        raise ConfigError(
            f"batch_size ({batch_size}) and workers ({workers}) must be ≥ 1, "
            f"prefetch_batches ({prefetch_batches}) ≥ 0"
        )
    if patch_codec is not None and patch_codec not in patches.PATCH_CODECS:
        raise ConfigError(
            f"unknown patch codec {patch_codec!r}", fix=f"use one of {patches.PATCH_CODECS}"
        )
    forward = _Forward(encoder, precision)
    work = partial(_load, input_px=encoder.spec.input_px, codec=patch_codec)
    depth = max(batch_size * (prefetch_batches + 1), workers)
    keys: list[str] = []
    images: list[np.ndarray] = []
    blobs: list[bytes] = []
    for key, (arr, blob) in _prefetch(items, work, workers, depth):
        keys.append(key)
        images.append(arr)
        if blob is not None:
            blobs.append(blob)
        if len(keys) == batch_size:
            yield EmbeddedBatch(keys, forward(np.stack(images)), blobs if patch_codec else None)
            keys, images, blobs = [], [], []
    if keys:
        yield EmbeddedBatch(keys, forward(np.stack(images)), blobs if patch_codec else None)


def embed_arrays(
    encoder: LoadedEncoder,
    images: np.ndarray,
    batch_size: int = DEFAULT_BATCH_SIZE,
    precision: str = "auto",
) -> np.ndarray:
    """(N, H, W, 3) uint8 already at the encoder's input size → (N, dim) float16."""
    images = np.asarray(images)
    px = encoder.spec.input_px
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (px, px, 3):
        raise ConfigError(
            f"images must be (N, {px}, {px}, 3) uint8, got {images.shape} {images.dtype}"
        )
    forward = _Forward(encoder, precision)
    out = [forward(images[i : i + batch_size]) for i in range(0, len(images), batch_size)]
    return np.concatenate(out) if out else np.zeros((0, encoder.spec.dim), np.float16)
