"""Typed configuration of one `asign train` invocation, and the registry of models.

The CLI builds a :class:`TrainConfig` and calls ``asign.train.run(cfg)``; CLI choices,
docs and ``asign doctor`` read :data:`MODELS`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from asign.cluster import DEVICES
from asign.errors import ConfigErrors, not_one_of
from asign.store.manifest import jsonable

SETTINGS = ("within_sample", "cross_sample")
OPTIMIZERS = ("sgd", "adamw")
SCHEDULERS = ("cosine", "none")
FEATURE_NORMS = ("section", "none")
# Parts of asign3d that --ablate removes (the paper's Table II/III ablations):
# cross-attention: each spot attends to its own region/global tile only (softmax ≡ 1, as in
# the reference code), not to the neighbouring tiles; gat: no GAT/transformer block (fused features straight to the heads);
# cli: no cross-layer imputation (MSAGNet alone, on the 3D graph).
ABLATIONS = ("cross-attention", "gat", "cli")


@dataclass(frozen=True, kw_only=True)
class ModelSpec:
    """Everything asign knows about one model: how it is built or predicted, which graph and
    inputs it reads, and how it is displayed. Every model list (CLI help, demo, report order
    and colours, doctor) is derived from :data:`MODELS`, so a new baseline is one entry here
    and one function in train/baselines.py."""

    name: str
    help: str
    # a network: the ModelConfig fields the variant fixes (train/model.py builds it); a
    # baseline: None, and ``baseline`` names its predictor in train/baselines.py, with the
    # signature (cfg, sample, y, known) -> (N, G)
    network: Mapping[str, bool] | None = None
    baseline: str | None = None
    cross_layer: bool = False  # uses cross-layer edges of the 3D graph
    cli: bool = False  # label propagation from the known layer
    images: bool = True  # reads image features: every section in its graph needs an image
    torch: bool = False  # a baseline that runs torch kernels: thread budget, determinism, --device
    rank: int = 50  # display order (maps, tables, demo): the full method first, the mean last
    colour: str = "#8c564b"  # bar colour in the report

    @property
    def neural(self) -> bool:
        return self.network is not None

    @property
    def uses_torch(self) -> bool:
        return self.neural or self.torch


def _models(*specs: ModelSpec) -> dict[str, ModelSpec]:
    return {s.name: s for s in sorted(specs, key=lambda s: s.rank)}


MODELS: dict[str, ModelSpec] = _models(
    ModelSpec(name="asign3d", help="MSAGNet on the 3D graph + cross-layer imputation (the full method)",
              network={"cross_layer_edges": True, "use_cli": True}, cross_layer=True, cli=True,
              rank=0, colour="#1f77b4"),
    ModelSpec(name="asign2d", help="MSAGNet on same-layer edges only, no CLI (the 2D model)",
              network={"cross_layer_edges": False, "use_cli": False}, rank=1, colour="#17becf"),
    ModelSpec(name="cli", help="label propagation alone over the 3D graph (unit node weights)",
              baseline="predict_cli", cross_layer=True, cli=True, images=False, torch=True,
              rank=2, colour="#2ca02c"),
    ModelSpec(name="similarity", help="cosine kNN (k=20) on spot embeddings against the known layer",
              baseline="predict_similarity", rank=3, colour="#9467bd"),
    ModelSpec(name="idw", help="inverse-distance weighting of the 8 nearest known spots (aligned x, y)",
              baseline="predict_idw", images=False, rank=4, colour="#ff7f0e"),
    ModelSpec(name="mean", help="known layer's mean profile for every hidden spot",
              baseline="predict_mean", images=False, rank=99, colour="#9e9e9e"),
)
BASELINE_MODELS = tuple(name for name, spec in MODELS.items() if not spec.neural)
MEAN_MODEL = "mean"  # the reference every figure is reported beside (DESIGN.md §5)


def models_help() -> str:
    return " | ".join(MODELS)


@dataclass(frozen=True)
class TrainConfig:
    store: Path
    model: str = "asign3d"
    run: str = "run"
    known: str = "first"  # first | middle | last | Z | section id, or a comma-separated set
    folds: int = 1  # 1 = within-sample imputation; K >= 2 = sample-level k-fold
    samples: tuple[str, ...] = ()  # restrict to these sample ids (empty = all)
    extra_2d: tuple[str, ...] = ()  # samples/sections trained as 2D sections, never scored
    # optimisation (paper: SGD, momentum 0.9, cosine decay to 1% of the initial rate)
    epochs: int = 200  # her2st C: validation loss flattens after ~150 (SGD, lr 0.05)
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 1e-4
    optimizer: str = "sgd"
    scheduler: str = "cosine"
    lr_min_ratio: float = 0.01
    cli_lr_scale: float = 10.0  # learning-rate multiplier of the CLI block (see loop.py)
    grad_clip: float = 5.0
    loss: str = "paper"
    # model
    hidden: int = 256
    heads: int = 4
    dropout: float = 0.1
    gnn: str = "dgl"
    cli_iters: int = 10
    feature_norm: str = "section"  # section (per-section z-score of embeddings) | none
    center_labels: bool = True  # learn deviations from each graph's training mean (loop.py)
    cli_per_node_gate: bool = False  # CLI gate per gene (False) or per gene and node
    cli_spatial_prior: bool = True  # CLI also blends the IDW prior (cli_block.py); paper: False
    calibrate_gate: bool = True  # set the CLI gate on the validation spots after training
    ablate: tuple[str, ...] = ()  # parts of asign3d removed for an ablation (ABLATIONS)
    # training episodes (see protocol.py) and model selection (see loop.py)
    episode_known_fraction: float = 0.2
    val_fraction: float = 0.2
    # large graphs (batching.py): above minibatch_above spots a graph trains one step per
    # spatial block of ≤ block_spots spots (+ a halo of block_halo in-edge hops; None: one
    # hop per GAT layer, which makes MSAGNet exact on the block) and infers block by block
    minibatch_above: int = 20_000
    block_spots: int = 4096
    block_halo: int | None = None
    # memory budget of a training step in GB: when given, it decides whole graph vs blocks
    # and the block size instead of minibatch_above / block_spots (batching.BatchPlan.of)
    memory_gb: float | None = None
    # baselines
    idw_k: int = 8
    idw_power: float = 1.0
    similarity_k: int = 20
    # runtime
    device: str = "cpu"
    threads: int | None = None  # torch intra-op threads during the run (None: idle cores at start, asign.cluster.idle_cores)
    seed: int = 0
    resume: bool = False
    finetune_spot_encoder: bool = False  # train the spot encoder on stored patches (finetune.py)
    finetune_batch: int = 64  # spots re-encoded with gradients per step
    finetune_lr_scale: float = 0.1  # the encoder's learning rate relative to --lr
    save_predictions: bool = True
    coverage: float = 0.9  # per-spot intervals at this coverage (train/intervals.py); 0 = none
    encoder: str | None = None  # embedding encoder in the store; default: the manifest's
    extra: dict[str, Any] = field(default_factory=dict)  # free-form, recorded in runs.config

    @property
    def spec(self) -> ModelSpec:
        return MODELS[self.model]

    @property
    def uses_cli(self) -> bool:
        """The model propagates labels (its spec has a CLI and no ablation removed it)."""
        return self.spec.cli and "cli" not in self.ablate

    @property
    def setting(self) -> str:
        return "within_sample" if self.folds == 1 else "cross_sample"

    def to_json(self) -> dict[str, Any]:
        return jsonable(asdict(self))

    def identity(self) -> dict[str, Any]:
        """The fields that decide the result: everything but how the run is executed."""
        out = self.to_json()
        for key in ("resume", "store", "save_predictions", "threads"):
            out.pop(key, None)
        if not self.ablate:  # identities of runs from before --ablate existed stay valid
            out.pop("ablate", None)
        if self.coverage == 0.9:  # nor did --coverage; its default keeps those ids
            out.pop("coverage", None)
        if self.memory_gb is None:  # nor did --memory-gb
            out.pop("memory_gb", None)
        if not self.spec.neural:  # optimiser settings cannot change a baseline
            for key in ("epochs", "lr", "momentum", "weight_decay", "optimizer", "scheduler",
                        "lr_min_ratio", "cli_lr_scale", "grad_clip", "loss", "hidden", "heads", "dropout",
                        "gnn", "episode_known_fraction", "val_fraction", "device", "feature_norm",
                        "center_labels", "cli_per_node_gate", "cli_spatial_prior", "calibrate_gate",
                        "finetune_spot_encoder", "finetune_batch", "finetune_lr_scale",
                        "minibatch_above", "block_spots", "block_halo", "memory_gb"):
                out.pop(key, None)
        return out

    def with_(self, **changes: Any) -> TrainConfig:
        return replace(self, **changes)


def validate(cfg: TrainConfig) -> None:
    """Collect every invalid option into one ConfigErrors."""
    from asign.train.gnn import GAT_ENGINES
    from asign.train.loss import LOSS_PRESETS

    problems: list[str] = []
    problems += not_one_of(cfg.model, MODELS, "--model")
    problems += not_one_of(cfg.optimizer, OPTIMIZERS, "--optimizer")
    problems += not_one_of(cfg.scheduler, SCHEDULERS, "--scheduler")
    problems += not_one_of(cfg.loss, LOSS_PRESETS, "--loss")
    problems += not_one_of(cfg.gnn, GAT_ENGINES, "--gnn")
    problems += not_one_of(cfg.device, DEVICES, "--device")
    problems += not_one_of(cfg.feature_norm, FEATURE_NORMS, "--feature-norm")
    for part in cfg.ablate:
        problems += not_one_of(part, ABLATIONS, "--ablate")
    if cfg.ablate and cfg.model != "asign3d":
        problems.append(f"--ablate applies to asign3d, not {cfg.model}")
    from asign.train.protocol import known_tokens

    parts = known_tokens(cfg.known)
    if not parts or any(not p.replace("_", "").replace("-", "").replace(".", "").isalnum()
                        for p in parts) or len(set(parts)) != len(parts):
        problems.append(f"--known {cfg.known!r} must be first, middle, last, a layer number z "
                        "or a section id, or a comma-separated set of them without repeats")
    if not 0.0 <= cfg.coverage < 1.0:
        problems.append(f"--coverage must lie in [0, 1) (0 = no intervals), got {cfg.coverage}")
    if cfg.folds < 1:
        problems.append(f"--folds must be ≥ 1, got {cfg.folds}")
    if cfg.epochs < 0:
        problems.append(f"--epochs must be ≥ 0, got {cfg.epochs}")
    if cfg.lr <= 0:
        problems.append(f"--lr must be > 0, got {cfg.lr}")
    if not 0.0 < cfg.episode_known_fraction < 1.0:
        problems.append("episode_known_fraction must lie in (0, 1)")
    if not 0.0 <= cfg.val_fraction < 1.0:
        problems.append("val_fraction must lie in [0, 1)")
    if cfg.threads is not None and cfg.threads < 1:
        problems.append(f"--threads must be ≥ 1, got {cfg.threads}")
    if cfg.idw_k < 1 or cfg.similarity_k < 1:
        problems.append("idw_k and similarity_k must be ≥ 1")
    if not cfg.run or any(c in cfg.run for c in "/\\"):
        problems.append(f"--run {cfg.run!r} must be a non-empty name without slashes")
    if cfg.finetune_spot_encoder and not cfg.spec.neural:
        problems.append(f"--finetune-spot-encoder trains a network; {cfg.model} has none")
    if cfg.finetune_batch < 1 or cfg.finetune_lr_scale < 0:
        problems.append("finetune_batch must be ≥ 1 and finetune_lr_scale ≥ 0")
    if cfg.memory_gb is not None and not (cfg.memory_gb > 0 and cfg.memory_gb < float("inf")):
        problems.append(f"--memory-gb must be a positive number of GB, got {cfg.memory_gb}")
    if cfg.minibatch_above < 0 or cfg.block_spots < 1 or (cfg.block_halo or 0) < 0:
        problems.append("minibatch_above and block_halo must be ≥ 0, block_spots ≥ 1")
    if cfg.device == "cuda" and cfg.gnn == "dgl" and cfg.spec.neural:
        problems.append("the PyPI DGL wheel is CPU-only: use --gnn pyg with --device cuda")
    if problems:
        raise ConfigErrors(problems, what="asign train options", fix="see `asign train --help`")

