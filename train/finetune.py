"""Fine-tuning the spot encoder on the stored spot patches (``--finetune-spot-encoder``).

By default the network trains on the frozen spot embeddings in the store. With fine-tuning,
the store's spot encoder — rebuilt from the encoder name and weights the manifest records,
and checked against the recorded weights hash — trains jointly with MSAGNet on the spot
patches the store keeps at the encoder's input size. Region and global tokens stay frozen.

Back-propagating through a ResNet50 for every spot of a sample at every step would need
tens of GB of activations. So every spot is re-encoded without gradients at the start of
each epoch (the epoch's cache), and each training step re-encodes a seeded random batch of
``finetune_batch`` spots with gradients, the other spots taking their cached embedding
(historical embeddings, as in GNNAutoScale). Before validation and prediction every spot is
re-encoded again, so what is scored is the encoder as trained. Because the cache is a
function of the weights at the epoch start, a run resumed from a checkpoint replays the
uninterrupted one. BatchNorm statistics stay frozen (eval mode): batches of a few dozen
patches estimate them badly.

With ``feature_norm=section`` the live embeddings are z-scored with each section's mean and
std of the stored embeddings (the starting encoder's), exactly as the frozen features are.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from asign.errors import ConfigError, StoreError, WeightsError
from asign.store import EmbeddingInfo

log = logging.getLogger(__name__)

ENCODE_CHUNK = 64  # patches per no-grad forward when refreshing the cache


@dataclass(frozen=True)
class EncoderRecipe:
    """How to rebuild the store's spot encoder: what ingest recorded in params.embed."""

    name: str
    weights_kind: str  # "random" | "file"
    weights_path: str | None
    weights_sha256: str
    seed: int
    stain: dict[str, Any] | None = None  # the manifest's per-sample stain references

    @classmethod
    def from_manifest(cls, info: EmbeddingInfo | None, encoder: str | None,
                      manifest: Any) -> EncoderRecipe:
        """From what ingest recorded (``Store.embedding_info``); ``encoder`` (``--encoder``)
        must name it. ``manifest``: the manifest's path, for the error."""
        if info is None:
            raise StoreError("the store has no embeddings to fine-tune from", path=manifest,
                             fix="run `asign ingest --steps patches,embed,graph` first")
        name = info.encoder
        if encoder and encoder != name:
            raise ConfigError(f"--finetune-spot-encoder rebuilds the store's encoder {name!r}, "
                              f"not {encoder!r}", fix=f"drop --encoder or pass {name}")
        if not info.is_network:
            raise ConfigError("--finetune-spot-encoder needs a single network encoder; the "
                              f"store's {name!r} is weight-free or z-scored at ingest",
                              fix="ingest with --encoder effnet-lite0 or resnet50-l3 to fine-tune")
        if "tta" in info.extra:  # an average over views: one patch's gradient is not it
            raise ConfigError("--finetune-spot-encoder re-encodes each stored patch once, but "
                              "the store's vectors average --tta views",
                              fix="fine-tune on a store ingested with --tta 1")
        stain = info.extra.get("stain_norm")
        if stain is not None and "samples" not in stain:
            raise ConfigError("--finetune-spot-encoder stain-normalises the stored patches with "
                              "each sample's recorded reference, and this store predates them",
                              fix="ingest the samples again into a new --store (its "
                                  "embed step is done, so a re-run here would not redo it)")
        return cls(name, str(info.weights_kind or ""), info.weights_path,
                   str(info.weights_sha256 or ""), int(info.seed), stain)

    def encoder_input(self, sample_id: str, patches: np.ndarray | None) -> np.ndarray | None:
        """The stored spot patches as ingest's encoder saw them: stain-normalised with the
        sample's recorded reference when the store was ingested with ``--stain-norm``."""
        if self.stain is None or patches is None or len(patches) == 0:
            return patches
        from asign.encoders.stain import recorded_reference

        reference = recorded_reference(self.stain, sample_id)
        if reference is None:
            raise StoreError(f"the store records no stain reference for sample {sample_id}",
                             fix=f"re-run `asign ingest --steps embed --samples {sample_id}`")
        out = np.stack([reference.normalise(p) for p in patches])
        reference.log_kept(sample_id)
        return out


def load_spot_encoder(recipe: EncoderRecipe, device: str) -> Any:
    """The encoder exactly as ingest ran it (same weights, checked by hash), trainable."""
    from asign.encoders import WeightsSource, load_encoder, resolve_weights

    if recipe.weights_kind == "random":
        source = WeightsSource("random", "random", seed=recipe.seed, sha256=recipe.weights_sha256)
    else:
        source = resolve_weights(recipe.weights_path or "", recipe.name, seed=recipe.seed,
                                 allow_download=False)
        if source.sha256 != recipe.weights_sha256:
            raise WeightsError("the encoder weights file changed since ingest "
                               f"(sha256 {source.sha256[:12]}…, store "
                               f"{recipe.weights_sha256[:12]}…)",
                               path=recipe.weights_path,
                               fix="restore the file the store was embedded with, or re-run "
                                   "`asign ingest --steps embed` with the new weights")
    return load_encoder(recipe.name, source, device=device, seed=recipe.seed)


class FinetuneModel(nn.Module):
    """``ASIGNNet`` plus its trainable spot encoder; calls go to the ASIGNNet, whose spot
    features the loop replaces with live embeddings (``train_inputs``/``eval_inputs``)."""

    def __init__(self, model: nn.Module, encoder: Any):
        super().__init__()
        self.model = model
        self.encoder = encoder.module.requires_grad_(True)
        spec = encoder.spec
        self.input_px = spec.input_px
        self.register_buffer("scale", 1.0 / (255.0 * torch.tensor(spec.std).view(1, 3, 1, 1)))
        self.register_buffer("shift", -torch.tensor(spec.mean).view(1, 3, 1, 1)
                             / torch.tensor(spec.std).view(1, 3, 1, 1))

    @property
    def cfg(self) -> Any:
        return self.model.cfg

    @property
    def net(self) -> nn.Module:
        return self.model.net

    @property
    def cli(self) -> nn.Module | None:
        return self.model.cli

    def train(self, mode: bool = True) -> FinetuneModel:
        super().train(mode)
        self.encoder.eval()  # frozen BatchNorm statistics (module docstring)
        return self

    def encode(self, patches: Tensor) -> Tensor:
        """(B, H, W, 3) uint8 → (B, D) float32 embeddings."""
        x = patches.permute(0, 3, 1, 2).float() * self.scale + self.shift
        return self.encoder(x.contiguous(memory_format=torch.channels_last)).float()

    def edge_graph(self, inputs: Any) -> Any:
        return self.model.edge_graph(inputs)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.model(*args, **kwargs)


@dataclass(eq=False)
class SpotPatches:
    """One graph's patches and feature normalisation, plus the epoch's embedding cache."""

    patches: Tensor         # (N, H, W, 3) uint8
    section: Tensor         # (N,) int64 section index
    mean: Tensor            # (S, D) per-section shift of the stored embeddings
    std: Tensor             # (S, D) per-section scale
    cache: Tensor | None = None  # (N, D) normalised embeddings at the last refresh

    @classmethod
    def of(cls, patches: np.ndarray, spot_feat: np.ndarray, section: np.ndarray,
           feature_norm: str, device: str) -> SpotPatches:
        n_sec = int(section.max()) + 1 if len(section) else 0
        d = spot_feat.shape[1]
        mean, std = np.zeros((n_sec, d), np.float32), np.ones((n_sec, d), np.float32)
        if feature_norm == "section":
            feat = spot_feat.astype(np.float32)
            for s in range(n_sec):
                rows = feat[section == s]
                if len(rows):
                    mean[s] = rows.mean(axis=0)
                if len(rows) >= 2:  # as data._zscore
                    std[s] = rows.std(axis=0) + 1e-6
        t = torch.as_tensor
        return cls(t(patches).to(device), t(section.astype(np.int64)).to(device),
                   t(mean).to(device), t(std).to(device))

    def normalise(self, emb: Tensor, rows: Tensor) -> Tensor:
        sec = self.section[rows]
        return (emb - self.mean[sec]) / self.std[sec]


def refresh(model: FinetuneModel, sp: SpotPatches) -> Tensor:
    """Re-encode every spot without gradients; the result is the new cache."""
    n, px = sp.patches.shape[0], sp.patches.shape[1]
    if n and px != model.input_px:
        raise StoreError(f"stored spot patches are {px} px, the encoder takes {model.input_px}",
                         fix="re-run `asign ingest --steps patches,embed` with this encoder")
    chunks = []
    with torch.no_grad():
        for i in range(0, n, ENCODE_CHUNK):
            rows = torch.arange(i, min(i + ENCODE_CHUNK, n), device=sp.patches.device)
            chunks.append(sp.normalise(model.encode(sp.patches[rows]), rows))
    sp.cache = torch.cat(chunks) if chunks else sp.patches.new_zeros((0, 0), dtype=torch.float32)
    return sp.cache


def train_inputs(model: FinetuneModel, task: Any, rng: np.random.Generator, batch: int) -> Any:
    """The task's inputs with live spot features: ``batch`` random spots encoded with
    gradients, the rest from the epoch's cache."""
    sp: SpotPatches = task.cache["finetune"]
    if sp.cache is None:
        refresh(model, sp)
    n = sp.patches.shape[0]
    rows = torch.as_tensor(np.sort(rng.choice(n, size=min(batch, n), replace=False)),
                           device=sp.patches.device)
    live = sp.normalise(model.encode(sp.patches[rows]), rows)
    spot = sp.cache.index_put((rows,), live)  # out of place: gradients reach the rows
    return replace(task.inputs, spot=spot, _cache=task.inputs._cache)


def eval_inputs(model: FinetuneModel, task: Any) -> Any:
    """The task's inputs with every spot re-encoded by the current encoder."""
    spot = refresh(model, task.cache["finetune"])
    return replace(task.inputs, spot=spot, _cache=task.inputs._cache)


def start_epoch(model: FinetuneModel, tasks: list[Any]) -> None:
    """Refresh every graph's cache at the epoch start (see the module docstring)."""
    for task in tasks:
        refresh(model, task.cache["finetune"])
