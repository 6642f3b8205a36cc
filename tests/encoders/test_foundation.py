"""Pathology foundation models: each registry entry's published architecture, its weights
found in the Hugging Face cache or at a PATH without any network access, a strict key-for-key
load of a checkpoint in the published file format, and one real her2st patch embedded.

The default suite builds each architecture at its published width, input, tokens and pooling
but with 1 transformer block (``_reduced``): every key name, the pooling and the file format
are exercised and the whole file runs in seconds. The full-depth models (0.3–1.1 billion
parameters, 1.2–4.5 GB each in fp32; a ViT-L takes ~25 s to initialise, save and load on one
core, a ViT-g over a minute and ~9 GB) run under ``-m slow``; their architecture is checked in
the default suite by building them on the meta device (no memory) against the published
parameter counts and output widths."""

from __future__ import annotations

import hashlib
import socket
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from asign import encoders as E
from asign.encoders.builders import _create_vit
from asign.encoders.foundation import FOUNDATION_MODELS, FoundationModel
from asign.encoders.registry import foundation_spec
from asign.errors import WeightsError
from asign.ingest.embed import embed_batches
from asign.ingest.patches import crop
from asign.nets.vit_tokens import PooledViT

HER2ST = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "her2st"
NAMES = sorted(FOUNDATION_MODELS)


def _reduced(model: FoundationModel, depth: int = 1) -> FoundationModel:
    return replace(model, timm_kwargs={**model.timm_kwargs, "depth": depth})


def _published_keys(model: FoundationModel, state: dict[str, torch.Tensor]) -> dict:
    """The checkpoint as its authors publish it. timm naming for all but Phikon-v2, which is
    a transformers ``Dinov2Model``: its names written out here from that layout, so the
    loader's renaming is checked against an independent statement of it."""
    if model.key_map == "timm":
        return state
    out = {"embeddings.cls_token": state["cls_token"],
           "embeddings.mask_token": torch.zeros(1, state["cls_token"].shape[-1]),
           "embeddings.position_embeddings": state["pos_embed"],
           "embeddings.patch_embeddings.projection.weight": state["patch_embed.proj.weight"],
           "embeddings.patch_embeddings.projection.bias": state["patch_embed.proj.bias"],
           "layernorm.weight": state["norm.weight"], "layernorm.bias": state["norm.bias"]}
    depth = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("blocks."))
    for i in range(depth):
        b, h = f"blocks.{i}.", f"encoder.layer.{i}."
        for kind in ("weight", "bias"):
            q, k, v = state[f"{b}attn.qkv.{kind}"].chunk(3, dim=0)
            out |= {f"{h}attention.attention.query.{kind}": q,
                    f"{h}attention.attention.key.{kind}": k,
                    f"{h}attention.attention.value.{kind}": v,
                    f"{h}attention.output.dense.{kind}": state[f"{b}attn.proj.{kind}"],
                    f"{h}norm1.{kind}": state[f"{b}norm1.{kind}"],
                    f"{h}norm2.{kind}": state[f"{b}norm2.{kind}"],
                    f"{h}mlp.fc1.{kind}": state[f"{b}mlp.fc1.{kind}"],
                    f"{h}mlp.fc2.{kind}": state[f"{b}mlp.fc2.{kind}"]}
        out[f"{h}layer_scale1.lambda1"] = state[f"{b}ls1.gamma"]
        out[f"{h}layer_scale2.lambda1"] = state[f"{b}ls2.gamma"]
    return {k: v.clone().contiguous() for k, v in out.items()}


def _save(state: dict[str, torch.Tensor], path: Path) -> Path:
    """In the published format its file name says: safetensors or a torch pickle."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save(state, path)
    return path


def _into_hf_cache(cache: Path, repo: str, file: Path) -> Path:
    """Place ``file`` as huggingface_hub lays a download out: a blob named by its hash, a
    snapshot symlink to it under a commit, and refs/main naming that commit."""
    root = cache / f"models--{repo.replace('/', '--')}"
    digest = hashlib.sha256(file.read_bytes()).hexdigest()
    commit = hashlib.sha1(repo.encode()).hexdigest()
    (root / "blobs").mkdir(parents=True, exist_ok=True)
    (root / "refs").mkdir(exist_ok=True)
    (root / "snapshots" / commit).mkdir(parents=True, exist_ok=True)
    blob = root / "blobs" / digest
    if not blob.exists():
        blob.write_bytes(file.read_bytes())
    link = root / "snapshots" / commit / file.name
    link.unlink(missing_ok=True)
    link.symlink_to(Path("..") / ".." / "blobs" / digest)
    (root / "refs" / "main").write_text(commit)
    return link


@pytest.fixture(scope="session")
def her2st_patch() -> np.ndarray:
    """A real 224-px H&E patch at one her2st C3 spot."""
    spots = pd.read_csv(HER2ST / "ST-spotfiles" / "C3_selection.tsv", sep="\t")
    image = next((HER2ST / "ST-imgs" / "C" / "C3").glob("*.jpg"))
    x, y = int(spots.pixel_x.iloc[0]), int(spots.pixel_y.iloc[0])
    return crop(image, x - 112, y - 112, 224, 224)


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory) -> dict[str, tuple[FoundationModel, Path, str]]:
    """Each reduced architecture once per session: (model, checkpoint in its published file
    format, params hash of the randomly initialised encoder it was saved from)."""
    E.ensure_torchvision()
    root = tmp_path_factory.mktemp("foundation")
    out = {}
    for seed, name in enumerate(NAMES):
        model = _reduced(FOUNDATION_MODELS[name])
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            ref = PooledViT(_create_vit(model), model.pooling).eval()
        path = _save(_published_keys(model, ref.vit.state_dict()),
                     root / name / model.hf_files[0])
        out[name] = (model, path, _hash(ref))
    return out


def _hash(module: torch.nn.Module) -> str:
    from asign.nets.state_dict import params_sha256

    return params_sha256(module)


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a connection fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.fixture
def hf_cache(tmp_path, monkeypatch) -> Path:
    cache = tmp_path / "hf" / "hub"
    cache.mkdir(parents=True)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    return cache


def test_published_architectures_parameter_counts_and_output_widths():
    """Full-depth models on the meta device: no memory, no initialisation."""
    E.ensure_torchvision()
    assert {"uni", "uni2-h", "virchow2", "h-optimus-0", "prov-gigapath", "phikon-v2"} <= set(NAMES)
    for name in NAMES:
        model = FOUNDATION_MODELS[name]
        with torch.device("meta"):
            net = PooledViT(_create_vit(model), model.pooling)
            out = net(torch.empty(2, 3, model.input_px, model.input_px))
        params = sum(p.numel() for p in net.parameters()) / 1e6
        assert abs(params - model.params_m) / model.params_m < 0.005, (name, params)
        spec = E.get_encoder_spec(name)
        assert tuple(out.shape) == (2, spec.dim), name
        assert spec.hf_repo and spec.hf_files and spec.runtime == "eager"
    assert E.get_encoder_spec("virchow2").dim == 2560
    assert E.get_encoder_spec("h-optimus-0").mean != E.IMAGENET_MEAN


@pytest.mark.parametrize("name", NAMES)
def test_checkpoint_from_hf_cache_and_path_loads_strictly_and_embeds(
    name, checkpoints, hf_cache, her2st_patch, no_network, monkeypatch
):
    model, path, ref_hash = checkpoints[name]
    monkeypatch.setitem(E.ENCODERS, name, foundation_spec(model))
    cached = _into_hf_cache(hf_cache, model.hf_repo, path)

    enc = E.load_encoder(name, "imagenet", allow_download=False)
    assert enc.info["weights_path"] == str(cached)
    assert enc.info["weights_source"].startswith("Hugging Face cache")
    assert enc.info["params_sha256"] == ref_hash  # every tensor arrived, renamed or not
    assert E.load_encoder(name, path).info["params_sha256"] == ref_hash

    (batch,) = embed_batches(enc, [("C3", lambda: her2st_patch)], batch_size=1)
    assert batch.features.shape == (1, model.dim)
    assert np.isfinite(batch.features).all() and batch.features.std() > 0


def test_truncated_and_other_models_checkpoints_are_refused_naming_the_file(
    checkpoints, tmp_path, monkeypatch
):
    for i, name in enumerate(NAMES):
        model, path, _ = checkpoints[name]
        monkeypatch.setitem(E.ENCODERS, name, foundation_spec(model))
        cut = tmp_path / f"{name}-{path.name}"
        cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
        with pytest.raises(WeightsError, match="not a readable") as err:
            E.load_encoder(name, cut)
        assert str(cut) in str(err.value) and "\n" not in str(err.value)

        other = checkpoints[NAMES[(i + 1) % len(NAMES)]][1]
        with pytest.raises(WeightsError, match="does not match") as err:
            E.load_encoder(name, other)
        assert str(other) in str(err.value) and model.hf_repo in str(err.value)


def test_extra_keys_are_refused_not_ignored(checkpoints, tmp_path, monkeypatch):
    model, path, _ = checkpoints["uni"]
    monkeypatch.setitem(E.ENCODERS, "uni", foundation_spec(model))
    state = torch.load(path, weights_only=True)
    state["head.weight"] = torch.zeros(3, 1024)
    with pytest.raises(WeightsError, match="unexpected key"):
        E.load_encoder("uni", _save(state, tmp_path / "extra.bin"))


def test_without_download_nothing_reaches_the_network_and_the_fix_says_how(
    hf_cache, no_network, monkeypatch
):
    for name in NAMES:
        repo = FOUNDATION_MODELS[name].hf_repo
        for check, label in ((E.resolve_weights, "imagenet"), (E.check_weights, "pretrained")):
            with pytest.raises(WeightsError) as err:
                check(label, name, allow_download=False)
            msg = str(err.value)
            assert f"https://huggingface.co/{repo}" in msg and "--download" in msg
            assert "--weights PATH" in msg and "\n" not in msg
    # The download route, offline: huggingface_hub refuses, asign says how to get the file.
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(WeightsError, match="cannot download uni weights"):
        E.resolve_weights("imagenet", "uni", allow_download=True)


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_full_depth_checkpoint_loads_strictly_and_embeds(name, tmp_path, hf_cache, her2st_patch):
    model = FOUNDATION_MODELS[name]
    ref = E.load_encoder(name, "random", seed=3)
    path = _save(_published_keys(model, ref.module.vit.state_dict()), tmp_path / model.hf_files[0])
    _into_hf_cache(hf_cache, model.hf_repo, path)
    del ref
    enc = E.load_encoder(name, "imagenet", allow_download=False)
    (batch,) = embed_batches(enc, [("C3", lambda: her2st_patch)], batch_size=1)
    assert batch.features.shape == (1, model.dim) and np.isfinite(batch.features).all()
