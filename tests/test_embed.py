"""Batched embedding: order, float16 output, determinism, pluggable encoders, real crops."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from asign.errors import ConfigError
from asign.ingest import embed as M
from asign.ingest import encoders as E
from asign.ingest import patches as P

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "her2st"


@pytest.fixture(scope="module")
def encoder():
    return E.load_encoder("resnet50-l3", "random", seed=0)


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    # Smooth-ish images so activations are not pure noise.
    base = rng.integers(0, 256, (4, 28, 28, 3), dtype=np.uint8)
    return np.repeat(np.repeat(base, 8, axis=1), 8, axis=2)


def _items(images):
    return [(f"k{i}", (lambda a=a: a)) for i, a in enumerate(images)]


def test_batches_keep_order_and_are_float16(encoder, images):
    batches = list(M.embed_batches(encoder, _items(images), batch_size=3, precision="fp32"))
    assert [len(b.keys) for b in batches] == [3, 1]
    assert [k for b in batches for k in b.keys] == [f"k{i}" for i in range(4)]
    feats = np.concatenate([b.features for b in batches])
    assert feats.dtype == np.float16 and feats.shape == (4, 1024)
    assert np.isfinite(feats).all() and feats.astype(np.float32).std() > 0
    assert all(b.patches is None for b in batches)
    # The generator and the array entry point agree bit for bit.
    assert np.array_equal(feats, M.embed_arrays(encoder, images, batch_size=3, precision="fp32"))


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_embeddings_are_bit_identical_across_runs(encoder, images, precision):
    if precision == "bf16" and not M.cpu_has_bf16():
        pytest.skip("no native bf16 on this CPU")
    fresh = E.load_encoder("resnet50-l3", "random", seed=0)
    a = M.embed_arrays(encoder, images, batch_size=3, precision=precision)
    b = M.embed_arrays(fresh, images, batch_size=3, precision=precision)
    assert np.array_equal(a.view(np.uint16), b.view(np.uint16))


def test_bf16_stays_close_to_fp32(encoder, images):
    a = M.embed_arrays(encoder, images, precision="fp32").astype(np.float32)
    b = M.embed_arrays(encoder, images, precision="bf16").astype(np.float32)
    assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.999


def test_patch_codec_returns_the_pixels_that_were_embedded(encoder, images):
    small = images[:, ::2, ::2]  # 112 px: resized to the encoder's 224 on load
    (batch,) = M.embed_batches(encoder, _items(small), batch_size=8, patch_codec="png")
    assert len(batch.patches) == 4
    decoded = np.stack([P.decode_patch(b) for b in batch.patches])
    assert decoded.shape == (4, 224, 224, 3)
    assert np.array_equal(batch.features, M.embed_arrays(encoder, decoded))


def test_bad_arguments_are_config_errors(encoder, images):
    with pytest.raises(ConfigError):
        next(M.embed_batches(encoder, _items(images), batch_size=0))
    with pytest.raises(ConfigError):
        next(M.embed_batches(encoder, _items(images), precision="int4"))
    bad = [("x", lambda: np.zeros((8, 8), np.uint8))]
    with pytest.raises(ConfigError, match="uint8"):
        next(M.embed_batches(encoder, bad))


def test_a_second_encoder_plugs_in_through_the_registry(monkeypatch, images):
    def build(weights, seed):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(weights.seed)
            return torch.nn.Sequential(
                torch.nn.Conv2d(3, 8, 3, stride=4),
                torch.nn.AdaptiveAvgPool2d(1),
                torch.nn.Flatten(1),
            )

    spec = E.EncoderSpec("tiny-test", 8, 64, E.IMAGENET_MEAN, E.IMAGENET_STD, build)
    monkeypatch.setitem(E.ENCODERS, "tiny-test", spec)
    tiny = E.load_encoder("tiny-test", "random", seed=3)
    out = list(M.embed_batches(tiny, _items(images), batch_size=3))
    assert np.concatenate([b.features for b in out]).shape == (4, 8)
    assert tiny.info["encoder"] == "tiny-test" and tiny.info["weights_sha256"] == "random:seed=3"


def test_real_c3_spots_end_to_end(encoder):
    image = next((DATA / "ST-imgs" / "C" / "C3").glob("*.jpg"), None)
    if image is None:
        pytest.skip("her2st C3 image not available")
    import pandas as pd

    spots = pd.read_csv(DATA / "ST-spotfiles" / "C3_selection.tsv", sep="\t").head(3)
    size = P.equivalent_px(224, 0.69)
    corners = P.spot_patch_box(spots.pixel_x.values, spots.pixel_y.values, size)
    keys = [f"C3/{x}x{y}" for x, y in zip(spots.x, spots.y, strict=True)]
    items = M.crop_items(image, keys, corners, size, 224)
    batches = list(M.embed_batches(encoder, items, batch_size=2, workers=2, patch_codec="png"))
    assert [k for b in batches for k in b.keys] == keys
    feats = np.concatenate([b.features for b in batches])
    assert feats.shape == (3, 1024) and np.isfinite(feats).all()
    # Different tissue gives different vectors.
    assert not np.array_equal(feats[0], feats[1])
