"""Byte codecs of the LMDB values: spot patches (PNG/JPEG) and embeddings (float16)."""

from __future__ import annotations

import io

import numpy as np

from asign.errors import ConfigError, ImageError

PATCH_CODECS = ("png", "jpeg")
DEFAULT_PATCH_CODEC = "png"
"""Lossless by default: the stored patch is exactly the crop the frozen encoder saw, so a
fine-tuned encoder starts from the same input, and no codec version can change pixels."""
JPEG_QUALITY = 90
VECTOR_DTYPE = np.float16


def encode_patch(arr: np.ndarray, codec: str = DEFAULT_PATCH_CODEC) -> bytes:
    """Compress an (H, W, 3) uint8 patch for LMDB. PNG is lossless; JPEG uses quality 90
    with fixed encoder settings (deterministic for a given libjpeg)."""
    arr = np.asarray(arr)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
        raise ConfigError(f"a patch must be (H, W, 3) uint8, got {arr.shape} {arr.dtype}")
    if codec not in PATCH_CODECS:
        raise ConfigError(f"unknown patch codec {codec!r}", fix=f"use one of {PATCH_CODECS}")
    return _ENCODERS[codec](arr)


def _encode_png(arr: np.ndarray) -> bytes:
    """Lossless PNG with the cheapest settings that keep it small: the "up" filter alone
    (each row of an H&E patch resembles the one above) and Huffman-only deflate. The encode
    runs beside the encoder on ingest's critical path; on her2st spot patches it costs about
    a third of Pillow's adaptive filters + zlib level 1, for ~18% more bytes
    (``bench/embed.py --ingest``). OpenCV releases the GIL while it encodes."""
    import cv2

    params = [cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_UP, cv2.IMWRITE_PNG_COMPRESSION, 1,
              cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_HUFFMAN_ONLY]
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(arr[..., ::-1]), params)  # RGB → BGR
    if not ok:
        raise ConfigError(f"PNG encoding of a {arr.shape} patch failed")
    return buf.tobytes()


def _encode_jpeg(arr: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=JPEG_QUALITY, subsampling=0,
                              optimize=False)
    return buf.getvalue()


_ENCODERS = {"png": _encode_png, "jpeg": _encode_jpeg}


def decode_patch(data: bytes) -> np.ndarray:
    """A stored patch (PNG or JPEG bytes, ``encode_patch``) as (H, W, 3) uint8."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as im:
            check_image_claims(im.size, MAX_PATCH_PIXELS, "stored patch")
            return np.asarray(im.convert("RGB"))
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as err:
        raise ImageError(
            f"stored patch bytes are not a readable image ({err})",
            fix="re-run `asign ingest --steps patches` to rewrite the patch store",
        ) from err


MAX_PATCH_PIXELS = 1024 * 1024  # patches are 224 px (a few hundred at most) on a side


def check_image_claims(size: tuple[int, int], max_pixels: int, what: str,
                       path: object = None) -> None:
    """Refuse an image whose header claims more pixels than ``max_pixels`` before it is
    decoded (a few bytes of PNG can claim gigapixels)."""
    w, h = size
    if w <= 0 or h <= 0 or w * h > max_pixels:
        raise ImageError(f"{what} claims {w}×{h} px, more than the {max_pixels} px it can be; "
                         "not decoded", path=path,
                         fix="re-run the ingest step that wrote it (`asign check` lists the "
                             "store's problems)")


def encode_vector(vector: np.ndarray) -> bytes:
    """One embedding as stored: ``dim`` float16 values, native byte order."""
    vector = np.asarray(vector)
    if vector.dtype != VECTOR_DTYPE or vector.ndim != 1:
        raise ConfigError(f"an embedding must be a 1-D float16 vector, got {vector.shape} "
                          f"{vector.dtype}")
    return vector.tobytes()


def decode_vector(data: bytes, dim: int) -> np.ndarray:
    return np.frombuffer(data, dtype=VECTOR_DTYPE, count=dim)
