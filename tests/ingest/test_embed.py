"""Batched embedding: order, float16 output, determinism, pluggable encoders, real crops."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from her2st_small import HER2ST as DATA

from asign import encoders as E
from asign.errors import ConfigError
from asign.ingest import embed as M
from asign.ingest import patches as P
from asign.store.codecs import decode_patch

FAST = "bf16" if M.cpu_has_bf16() else "fp32"  # what precision="auto" picks here


@pytest.fixture(scope="module")
def encoder():
    return E.load_encoder("resnet50-l3", "random", seed=0)


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    # Blocky images so activations are not pure noise.
    base = rng.integers(0, 256, (4, 28, 28, 3), dtype=np.uint8)
    return np.repeat(np.repeat(base, 8, axis=1), 8, axis=2)


def _items(images):
    return [(f"k{i}", (lambda a=a: a)) for i, a in enumerate(images)]


def test_batches_keep_order_and_are_float16(encoder, images):
    batches = list(
        M.embed_batches(encoder, _items(images), batch_size=3, precision="fp32", runtime="eager")
    )
    assert [len(b.keys) for b in batches] == [3, 1]
    assert [k for b in batches for k in b.keys] == [f"k{i}" for i in range(4)]
    feats = np.concatenate([b.features for b in batches])
    assert feats.dtype == np.float16 and feats.shape == (4, 1024)
    assert np.isfinite(feats).all() and feats.astype(np.float32).std() > 0
    assert all(b.patches is None for b in batches)
    # The generator and the array entry point agree bit for bit.
    same = M.embed_arrays(encoder, images, batch_size=3, precision="fp32", runtime="eager")
    assert np.array_equal(feats, same)


def test_default_runtime_is_bit_identical_across_runs_and_batch_compositions(encoder, images):
    fresh = E.load_encoder("resnet50-l3", "random", seed=0)
    a = M.embed_arrays(encoder, images, batch_size=4)
    b = M.embed_arrays(fresh, images, batch_size=4)
    assert np.array_equal(a.view(np.uint16), b.view(np.uint16))
    # An image's vector does not depend on its batch-mates or its position.
    c = M.embed_arrays(fresh, images[[2, 0]], batch_size=4)
    assert np.array_equal(c.view(np.uint16), a[[2, 0]].view(np.uint16))


def test_fused_runtime_matches_eager_and_fp32(encoder, images):
    fused = M.embed_arrays(encoder, images, batch_size=4).astype(np.float32)
    eager = M.embed_arrays(encoder, images, batch_size=4, precision=FAST, runtime="eager")
    exact = M.embed_arrays(encoder, images, batch_size=4, precision="fp32", runtime="eager")
    assert np.corrcoef(fused.ravel(), eager.astype(np.float32).ravel())[0, 1] > 0.9999
    assert np.corrcoef(fused.ravel(), exact.astype(np.float32).ravel())[0, 1] > 0.999
    config = M.embedding_config(encoder, 4)
    assert config["precision"] == FAST and config["runtime"] == "jit"
    assert config["weights_sha256"] == "random:seed=0" and config["output_dtype"] == "float16"


def test_patch_codec_returns_the_pixels_that_were_embedded(encoder, images):
    small = images[:, ::2, ::2]  # 112 px: resized to the encoder's 224 on load
    (batch,) = M.embed_batches(
        encoder, _items(small), batch_size=4, patch_codec="png", runtime="eager"
    )
    assert len(batch.patches) == 4
    decoded = np.stack([decode_patch(b) for b in batch.patches])
    assert decoded.shape == (4, 224, 224, 3)
    assert np.array_equal(batch.features, M.embed_arrays(encoder, decoded, 4, runtime="eager"))


def test_bad_arguments_are_config_errors(encoder, images):
    with pytest.raises(ConfigError):
        next(M.embed_batches(encoder, _items(images), batch_size=0))
    with pytest.raises(ConfigError):
        next(M.embed_batches(encoder, _items(images), precision="int4"))
    with pytest.raises(ConfigError):
        next(M.embed_batches(encoder, _items(images), runtime="tensorrt"))
    bad = [("x", lambda: np.zeros((8, 8), np.uint8))]
    with pytest.raises(ConfigError, match="uint8"):
        next(M.embed_batches(encoder, bad, runtime="eager"))


def test_a_second_encoder_plugs_in_through_the_registry(monkeypatch, images):
    def build(weights, seed):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(weights.seed)
            return torch.nn.Sequential(
                torch.nn.Conv2d(3, 8, 3, stride=4),
                torch.nn.BatchNorm2d(8),
                torch.nn.ReLU(),
                torch.nn.AdaptiveAvgPool2d(1),
                torch.nn.Flatten(1),
            )

    spec = E.EncoderSpec("tiny-test", 8, 64, E.IMAGENET_MEAN, E.IMAGENET_STD, build)
    monkeypatch.setitem(E.ENCODERS, "tiny-test", spec)
    tiny = E.load_encoder("tiny-test", "random", seed=3)
    for runtime in ("jit", "eager"):
        out = list(M.embed_batches(tiny, _items(images), batch_size=3, runtime=runtime))
        assert np.concatenate([b.features for b in out]).shape == (4, 8)
    assert tiny.info["encoder"] == "tiny-test" and tiny.info["weights_sha256"] == "random:seed=3"


def test_groups_share_one_pipeline_but_never_one_batch(encoder, images):
    """embed_groups: each group is batched as embed_batches would batch it alone (same
    keys per batch, same bits), labels come back with their batches, empty groups vanish."""
    items = _items(images)
    groups = [("a", items[:3]), ("b", []), ("c", items[3:]), ("a", items[:2])]
    out = list(M.embed_groups(encoder, groups, batch_size=2, precision="fp32"))
    assert [(label, b.keys) for label, b in out] == [
        ("a", ["k0", "k1"]), ("a", ["k2"]), ("c", ["k3"]), ("a", ["k0", "k1"])]
    alone = list(M.embed_batches(encoder, items[:3], batch_size=2, precision="fp32"))
    for (_, got), want in zip(out[:2], alone, strict=True):
        assert np.array_equal(got.features, want.features)
    assert np.array_equal(out[3][1].features, out[0][1].features)


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
    batches = list(M.embed_batches(encoder, items, batch_size=4, workers=2, patch_codec="png"))
    assert [k for b in batches for k in b.keys] == keys
    feats = np.concatenate([b.features for b in batches])
    assert feats.shape == (3, 1024) and np.isfinite(feats).all()
    assert not np.array_equal(feats[0], feats[1])  # different tissue, different vectors
    # The stored patch re-embeds to the same bits (PNG is lossless).
    decoded = np.stack([decode_patch(b) for b in batches[0].patches])
    assert np.array_equal(M.embed_arrays(encoder, decoded, batch_size=4), feats)
