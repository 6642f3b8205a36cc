"""Batched, frozen-encoder embedding as a generator, so the caller commits per batch.

Loading (decode + crop + resize, and optionally patch compression) runs in a small thread
pool ahead of inference: PIL and zlib release the GIL and so does torch, so on a CPU the
loaders overlap with the encoder's matmuls. Inference runs in channels-last layout, in bf16
where the CPU has native bf16 (``precision="auto"``), through a fused TorchScript/oneDNN
graph on a CPU (see RUNTIMES), and every vector leaves as float16.

Deterministic: batches are padded to a fixed size, so an image's vector depends only on
its pixels, the weights and ``embedding_config`` (precision, runtime, batch size, threads),
not on which images share its batch: re-runs and resumed runs give bit-identical vectors.
"""

from __future__ import annotations

import logging
import warnings
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from asign.encoders import LoadedEncoder
from asign.errors import ConfigError
from asign.ingest import patches
from asign.store.codecs import PATCH_CODECS, encode_patch

log = logging.getLogger(__name__)

PRECISIONS = ("auto", "bf16", "fp16", "fp32")
DEFAULT_BATCH_SIZE = 32
FLOAT16_MAX = 65504.0

Loader = Callable[[], np.ndarray]

RUNTIMES = ("auto", "jit", "inductor", "eager")
"""How the frozen encoder runs. ``jit``: BatchNorm folded into the convolutions, weights
cast to the compute dtype, traced and frozen with oneDNN Graph fusion (conv+bias+add+ReLU
in one kernel) — ~3x eager bf16 autocast on a CPU, ready in seconds. ``inductor``:
torch.compile with freezing — about as fast, but needs a C++ compiler and ~30 s to
compile. ``eager``: the module as is, under autocast. ``auto``: jit on a CPU, eager on CUDA."""


def resolve_runtime(runtime: str, device: str) -> str:
    if runtime not in RUNTIMES:
        raise ConfigError(f"unknown runtime {runtime!r}", fix=f"use one of {RUNTIMES}")
    if runtime != "auto":
        return runtime
    return "eager" if device.startswith("cuda") else "jit"


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


def embedding_config(
    encoder: LoadedEncoder, batch_size: int, precision: str = "auto", runtime: str = "auto"
) -> dict[str, Any]:
    """Everything that decides the bits of a vector, for the store's metadata: the
    encoder's provenance plus the resolved precision, runtime and batch size. Not the torch
    thread count: a 2-worker store (one thread each) equals the serial one byte for byte
    (tests/ingest/test_ingest_cluster.py), so a store does not depend on where it was computed."""
    parts = [
        {"encoder": p.spec.name,
         **{k: v for k, v in embedding_config(p, batch_size, precision, runtime).items()
            if k in ("precision", "runtime", "dim")}}
        for p in _parts(encoder)
    ]
    precision, runtime = _spec_overrides(encoder, precision, runtime)
    return {
        **encoder.info,
        **({"parts": parts} if parts else {}),
        "precision": resolve_precision(precision, encoder.device),
        "runtime": resolve_runtime(runtime, encoder.device),
        "batch_size": batch_size,
        "device": encoder.device,
        "output_dtype": "float16",
    }


def _spec_overrides(encoder: LoadedEncoder, precision: str, runtime: str) -> tuple[str, str]:
    """An encoder that cannot be traced or autocast (numpy inside) fixes its own runtime
    and precision; ``auto`` then means those."""
    spec = encoder.spec
    return (spec.precision if precision == "auto" else precision,
            spec.runtime if runtime == "auto" else runtime)


def _parts(encoder: LoadedEncoder) -> list[LoadedEncoder]:
    """The parts of a concatenated encoder (``a+b``) as encoders of their own, so each runs
    in its own runtime and precision; [] for a single encoder."""
    names = [p["name"] for p in encoder.spec.extra.get("parts", [])]
    if not names:
        return []
    if "parts" not in encoder.compiled:
        from asign.encoders import get_encoder_spec

        encoder.compiled["parts"] = [
            LoadedEncoder(module, get_encoder_spec(name), encoder.weights, encoder.device,
                          {"encoder": name, "dim": get_encoder_spec(name).dim})
            for module, name in zip(encoder.module.parts, names, strict=True)
        ]
    return list(encoder.compiled["parts"])


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


@contextmanager
def _onednn_fusion() -> Iterator[None]:
    """oneDNN Graph fusion for TorchScript, on only while our graph is optimised and run."""
    import torch

    previous = torch.jit.onednn_fusion_enabled()
    torch.jit.enable_onednn_fusion(True)
    try:
        yield
    finally:
        torch.jit.enable_onednn_fusion(previous)


def _fold_batchnorm(module: Any) -> Any:
    """A copy with every eval-mode BatchNorm folded into the preceding convolution, in fp32
    (folding after a cast to bf16 would round the folded weights twice)."""
    import copy

    import torch

    with warnings.catch_warnings():
        # Importing the fx optimisation helpers touches deprecated TorchScript decorators.
        warnings.simplefilter("ignore", DeprecationWarning)
        from torch.fx.experimental.optimization import fuse

    try:
        return fuse(copy.deepcopy(module))
    except (torch.fx.proxy.TraceError, TypeError, RuntimeError, NotImplementedError) as err:
        log.info("BatchNorm folding skipped (module not fx-traceable: %s)", err)
        return copy.deepcopy(module)


def _build_runner(module: Any, runtime: str, dtype: Any, example: Any) -> Callable[[Any], Any]:
    """A function (normalised fp32 NCHW channels-last batch) → features."""
    import torch

    if runtime == "eager" or dtype == torch.float16:
        device_type = example.device.type

        def eager(x: Any) -> Any:
            with torch.inference_mode():
                if dtype == torch.float32:
                    return module(x)
                with torch.autocast(device_type, dtype=dtype):
                    return module(x)

        return eager
    fast = _fold_batchnorm(module).to(dtype=dtype, memory_format=torch.channels_last)
    if runtime == "inductor":
        import torch._inductor.config as inductor_config

        compiled = torch.compile(fast, dynamic=False)

        def inductor(x: Any) -> Any:
            # Freezing lets inductor prepack weights and fuse conv epilogues; scoped so the
            # process-wide inductor config is left as found.
            with torch.no_grad(), inductor_config.patch(freezing=True):
                return compiled(x.to(dtype))

        return inductor
    with warnings.catch_warnings():
        # TorchScript is deprecated in favour of torch.compile, but still the only route
        # to fused oneDNN kernels that is ready in seconds and needs no C++ compiler.
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            with torch.no_grad(), _onednn_fusion():
                traced = torch.jit.freeze(
                    torch.jit.trace(fast, example.to(dtype), check_trace=False)
                )
        except RuntimeError as err:
            log.warning("TorchScript tracing failed (%s); running the encoder eagerly", err)
            return _build_runner(module, "eager", dtype, example)

    def jit(x: Any) -> Any:
        with torch.no_grad(), _onednn_fusion():
            return traced(x.to(dtype))

    return jit


class _Forward:
    """uint8 NHWC batch → float16 features, with the encoder's normalisation.

    Every batch is padded to ``batch_size`` rows: one input shape means one compiled
    graph, and each image's vector never depends on how many others share its batch
    (kernels are chosen by shape; rows are computed independently)."""

    def __init__(self, encoder: LoadedEncoder, precision: str, batch_size: int, runtime: str,
                 tta: int = 1):
        import torch

        self.encoder = encoder
        self.batch_size = batch_size
        self.tta = tta  # dihedral views averaged per image (encoders/stain.py)
        self.device = torch.device(encoder.device)
        self.parts = [_Forward(p, precision, batch_size, runtime, tta) for p in _parts(encoder)]
        precision, runtime = _spec_overrides(encoder, precision, runtime)
        self.precision = resolve_precision(precision, encoder.device)
        self.runtime = resolve_runtime(runtime, encoder.device)
        spec = encoder.spec
        shape = (1, 3, 1, 1)
        # Fold /255 into the normalisation: x * scale + shift.
        std = torch.tensor(spec.std, dtype=torch.float32).view(shape)
        mean = torch.tensor(spec.mean, dtype=torch.float32).view(shape)
        self.scale = (1.0 / (255.0 * std)).to(self.device)
        self.shift = (-mean / std).to(self.device)
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
        key = (self.runtime, self.precision, batch_size)
        if self.parts:  # each part has its own graph; nothing to build for the whole
            return
        if key not in encoder.compiled:
            px = spec.input_px
            example = self._normalise(np.zeros((batch_size, px, px, 3), np.uint8))
            run = _build_runner(encoder.module, self.runtime, dtype[self.precision], example)
            if self.runtime != "eager":
                # Warm-up: TorchScript profiles the first call and optimises on the second,
                # so real batches all see the same fused graph (and the same bits).
                for _ in range(2):
                    run(example)
            encoder.compiled[key] = run
        self.run = encoder.compiled[key]

    def _normalise(self, batch: np.ndarray) -> Any:
        import torch

        x = torch.from_numpy(batch).to(self.device, non_blocking=True)
        # NHWC memory viewed as NCHW is exactly the channels-last layout: no copy.
        return x.permute(0, 3, 1, 2).float().mul_(self.scale).add_(self.shift)

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        import torch

        if self.parts:
            return np.concatenate([part(batch) for part in self.parts], axis=1)
        n = len(batch)
        if n < self.batch_size:
            pad = np.zeros((self.batch_size - n, *batch.shape[1:]), dtype=batch.dtype)
            batch = np.concatenate([batch, pad])
        if self.tta == 1:
            out = self.run(self._normalise(batch))[:n].float()
        else:  # the mean over views, in fp32; each view is one more pass of the encoder
            from asign.encoders.stain import dihedral_views

            out = sum(self.run(self._normalise(view))[:n].float()
                      for view in dihedral_views(batch, self.tta)) / self.tta
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
    return arr, (encode_patch(arr, codec) if codec else None)


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
    runtime: str = "auto",
    tta: int = 1,
) -> Iterator[EmbeddedBatch]:
    """Embed ``(key, loader)`` items, ``batch_size`` at a time, yielding each batch as soon
    as it is done. A loader returns an (H, W, 3) uint8 image, resized here to the encoder's
    input if needed. With ``patch_codec`` the loader threads also compress each image
    (``store.codecs.encode_patch``) so the caller can store spot patches next to their vectors.

    One loader thread is enough on a CPU (a crop costs ~1 ms, an encode ~30 ms); more help
    with slow storage or on a GPU. ``tta``: features averaged over that many dihedral views
    of each image (``encoders/stain.py``)."""
    for _, batch in embed_groups(encoder, [(None, items)], batch_size, precision, workers,
                                 prefetch_batches, patch_codec, runtime, tta):
        yield batch


def embed_groups(
    encoder: LoadedEncoder,
    groups: Iterable[tuple[Any, Iterable[tuple[str, Loader]]]],
    batch_size: int = DEFAULT_BATCH_SIZE,
    precision: str = "auto",
    workers: int = 1,
    prefetch_batches: int = 2,
    patch_codec: str | None = None,
    runtime: str = "auto",
    tta: int = 1,
) -> Iterator[tuple[Any, EmbeddedBatch]]:
    """``embed_batches`` over ``(label, items)`` groups through one loader pipeline, yielding
    ``(label, batch)``. A yielded batch never spans two groups: a group's batches are those
    ``embed_batches`` would give it. Underneath, the loaders run on into the next group while
    the encoder finishes this one (no group waits for its first batch to load), and the
    encoder's own batches pack consecutive groups' items, so only the very last one is padded:
    rows are computed independently of their batch-mates (``_Forward``), so the bits are the
    same as group by group."""
    if batch_size < 1 or workers < 1 or prefetch_batches < 0:
        raise ConfigError(
            f"batch_size ({batch_size}) and workers ({workers}) must be ≥ 1, "
            f"prefetch_batches ({prefetch_batches}) ≥ 0"
        )
    if patch_codec is not None and patch_codec not in PATCH_CODECS:
        raise ConfigError(
            f"unknown patch codec {patch_codec!r}", fix=f"use one of {PATCH_CODECS}"
        )
    # The encoder is built (traced, warmed up: seconds) in a thread of its own while the
    # loaders start on the first items, so the first slide's decode overlaps it rather than
    # waiting for it. Errors surface at the first batch.
    builder = ThreadPoolExecutor(max_workers=1, thread_name_prefix="asign-build")
    building = builder.submit(_Forward, encoder, precision, batch_size, runtime, tta)
    builder.shutdown(wait=False)
    work = partial(_load, input_px=encoder.spec.input_px, codec=patch_codec)
    depth = max(batch_size * (prefetch_batches + 1), workers)
    labels: dict[int, Any] = {}

    def flat() -> Iterator[tuple[tuple[int, str], Loader]]:
        for g, (label, items) in enumerate(groups):
            labels[g] = label
            for key, loader in items:
                yield (g, key), loader

    pending: list[tuple[int, str, np.ndarray, bytes | None]] = []  # loaded, not yet encoded
    computed: deque[tuple[int, str, np.ndarray, bytes | None]] = deque()  # encoded, not yet yielded

    def encode() -> None:
        feats = building.result()(np.stack([row[2] for row in pending]))
        computed.extend((g, key, f, blob)
                        for (g, key, _, blob), f in zip(pending, feats, strict=True))
        pending.clear()

    def ready(loading: float) -> Iterator[tuple[Any, EmbeddedBatch]]:
        """The complete output batches at the head of ``computed``: ``batch_size`` rows of one
        group, or a group's last rows (a later group's row follows, or is loading)."""
        while computed:
            g = computed[0][0]
            n = 0
            while n < len(computed) and n < batch_size and computed[n][0] == g:
                n += 1
            if n < batch_size and n == len(computed) and g >= loading:
                return  # the group may still grow
            rows = [computed.popleft() for _ in range(n)]
            yield labels[g], EmbeddedBatch([r[1] for r in rows], np.stack([r[2] for r in rows]),
                                           [r[3] for r in rows] if patch_codec else None)

    loading = -1
    for (g, key), (arr, blob) in _prefetch(flat(), work, workers, depth):
        loading = g
        pending.append((g, key, arr, blob))
        if len(pending) == batch_size:
            encode()
            yield from ready(loading)
    if pending:
        encode()
    yield from ready(float("inf"))


def embed_arrays(
    encoder: LoadedEncoder,
    images: np.ndarray,
    batch_size: int = DEFAULT_BATCH_SIZE,
    precision: str = "auto",
    runtime: str = "auto",
    tta: int = 1,
) -> np.ndarray:
    """(N, H, W, 3) uint8 already at the encoder's input size → (N, dim) float16."""
    images = np.asarray(images)
    px = encoder.spec.input_px
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (px, px, 3):
        raise ConfigError(
            f"images must be (N, {px}, {px}, 3) uint8, got {images.shape} {images.dtype}"
        )
    forward = _Forward(encoder, precision, batch_size, runtime, tta)
    out = [forward(images[i : i + batch_size]) for i in range(0, len(images), batch_size)]
    return np.concatenate(out) if out else np.zeros((0, encoder.spec.dim), np.float16)
