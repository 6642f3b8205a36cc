"""Encoder registry, weights resolution and the frozen ResNet50-layer3 encoder."""

from __future__ import annotations

import importlib.util
import urllib.error

import pytest
import torch

from asign import encoders as E
from asign.errors import ConfigError, WeightsError
from asign.hashing import file_sha256


@pytest.fixture(scope="module")
def random_encoder():
    return E.load_encoder("resnet50-l3", "random", seed=0)


@pytest.fixture
def empty_hub(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return tmp_path / "torch" / "hub" / "checkpoints"


def test_registry_has_resnet50_l3_and_rejects_unknown_names():
    spec = E.get_encoder_spec("resnet50-l3")
    assert (spec.dim, spec.input_px) == (1024, 224)
    assert spec.preprocessing()["mean"] == list(E.IMAGENET_MEAN)
    with pytest.raises(ConfigError, match="resnet50-l3"):
        E.get_encoder_spec("vgg-nope")


@pytest.mark.skipif(importlib.util.find_spec("timm") is not None, reason="timm installed")
def test_timm_family_without_timm_says_how_to_install():
    with pytest.raises(ConfigError, match="pip install timm"):
        E.get_encoder_spec("timm:resnet18")


def test_encoder_is_frozen_eval_channels_last_1024d(random_encoder):
    module = random_encoder.module
    assert not module.training
    assert not any(p.requires_grad for p in module.parameters())
    assert module.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    assert "layer4" not in dict(module.named_children())
    with torch.inference_mode():
        out = module(torch.zeros(2, 3, 224, 224))
    assert out.shape == (2, 1024)
    info = random_encoder.info
    assert info["weights_kind"] == "random" and info["weights_sha256"] == "random:seed=0"
    assert len(info["params_sha256"]) == 64


def test_random_weights_are_seeded(random_encoder):
    again = E.load_encoder("resnet50-l3", "random", seed=0)
    other = E.load_encoder("resnet50-l3", "random", seed=1)
    assert again.info["params_sha256"] == random_encoder.info["params_sha256"]
    assert other.info["params_sha256"] != random_encoder.info["params_sha256"]


def test_imagenet_offline_without_cache_raises_with_fix(empty_hub, monkeypatch):
    with pytest.raises(WeightsError, match="--weights") as err:
        E.resolve_weights("imagenet", allow_download=False)
    assert "resnet50-0676ba61.pth" in str(err.value) and str(empty_hub) in str(err.value)

    def offline(*args, **kwargs):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(WeightsError, match="--weights PATH"):
        E.load_encoder("resnet50-l3", "imagenet")


def test_imagenet_found_in_hub_cache_and_path_weights_load(random_encoder, empty_hub):
    # A full-ResNet50-shaped checkpoint: the trunk plus layers the encoder drops.
    state = dict(random_encoder.module.state_dict())
    state["fc.weight"] = torch.zeros(1000, 2048)
    state["layer4.0.conv1.weight"] = torch.zeros(512, 1024, 1, 1)
    empty_hub.mkdir(parents=True)
    torch.save(state, empty_hub / "resnet50-0676ba61.pth")
    source = E.resolve_weights("imagenet")
    assert source.kind == "file" and source.label == "imagenet"
    assert source.sha256 == file_sha256(empty_hub / "resnet50-0676ba61.pth")
    loaded = E.load_encoder("resnet50-l3", source, seed=7)  # the seed must not matter
    assert loaded.info["params_sha256"] == random_encoder.info["params_sha256"]
    assert loaded.info["weights_sha256"] == source.sha256


def test_state_dict_with_wrong_keys_or_shapes_raises(random_encoder, tmp_path):
    wrong_keys = tmp_path / "wrong_keys.pth"
    torch.save({"encoder.weight": torch.zeros(3)}, wrong_keys)
    with pytest.raises(WeightsError, match="missing key"):
        E.load_encoder("resnet50-l3", wrong_keys)

    state = dict(random_encoder.module.state_dict())
    state["conv1.weight"] = torch.zeros(32, 3, 7, 7)
    wrong_shape = tmp_path / "wrong_shape.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, wrong_shape)
    with pytest.raises(WeightsError, match="shape mismatch"):
        E.load_encoder("resnet50-l3", wrong_shape)

    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"\x00not a checkpoint")
    with pytest.raises(WeightsError, match="state dict"):
        E.load_encoder("resnet50-l3", garbage)
    with pytest.raises(WeightsError, match="not found"):
        E.resolve_weights(tmp_path / "absent.pth")


def test_torchvision_imports_after_the_shim():
    E.ensure_torchvision()
    import torchvision.models

    assert hasattr(torchvision.models, "resnet50")


def test_scale_test_encoder_is_registered_small_and_embeds_at_64px():
    import numpy as np

    from asign.ingest.embed import embed_arrays

    spec = E.get_encoder_spec("resnet18-l3-64")
    assert (spec.dim, spec.input_px) == (256, 64) and "scale tests" in spec.description
    enc = E.load_encoder("resnet18-l3-64", "random", seed=0)
    assert "layer4" not in dict(enc.module.named_children())
    images = np.random.default_rng(0).integers(0, 256, (5, 64, 64, 3), dtype=np.uint8)
    out = embed_arrays(enc, images, batch_size=4)
    assert out.shape == (5, 256) and out.dtype == np.float16 and np.isfinite(out).all()
    assert np.array_equal(out[:2], embed_arrays(enc, images[:2], batch_size=4))


def test_weights_that_cannot_be_had_fail_before_any_work(tmp_path, empty_hub):
    """A mistyped --weights path, or hub weights absent without --download, stop ingest
    before the store exists (registration and alignment take hours on a real stack)."""
    from typer.testing import CliRunner

    from asign.cli import app

    # --encoder auto with a path means resnet50-l3 with that file; the file must exist.
    for extra, message in ((["--weights", str(tmp_path / "nope.pth")], "weights file not found"),
                           (["--encoder", "resnet50-l3"], "--download")):
        result = CliRunner().invoke(app, ["ingest", str(tmp_path), "--store", str(tmp_path / "S"),
                                          *extra])
        assert result.exit_code == 1 and message in result.output, result.output
        assert not (tmp_path / "S").exists()
    E.check_weights("random", "resnet50-l3", allow_download=False)  # nothing to check
    E.check_weights("imagenet", "resnet50-l3", allow_download=True)  # a download may fetch them
    assert not empty_hub.exists()  # and the check itself fetched nothing
