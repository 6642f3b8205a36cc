"""Typed configuration of one `asign train` invocation, and the registry of models.

The CLI builds a :class:`TrainConfig` and calls ``asign.train.run(cfg)``; CLI choices,
docs and ``asign doctor`` read :data:`MODELS`."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from asign.cluster import DEVICES
from asign.errors import ConfigErrors
from asign.options import Declared, identity, opt, shared
from asign.options import problems as declared_problems

SETTINGS = ("within_sample", "cross_sample", "cross_patient")
ASIGN_BUILDER = "asign.train.model:build_model"  # MSAGNet (+ CLI): asign3d, asign2d
OPTIMIZERS = ("sgd", "adamw")
SCHEDULERS = ("cosine", "none")
FEATURE_NORMS = ("section", "none")
SHRINK_PRIORS = ("auto", "mean", "idw", "ridge", "ridge+idw")  # train/shrink.py
VALIDATIONS = ("blocked", "random")  # how known spots are held out (train/blocks.py)
# Parts of asign3d that --ablate removes (the paper's Table II/III ablations):
# cross-attention: each spot attends to its own region/global tile only (softmax ≡ 1, as in
# the reference code), not to the neighbouring tiles; gat: no GAT/transformer block (fused
# features straight to the heads);
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
    # a network's builder, ``(model name, **loop.model_overrides) -> Network``
    # (train/network.py): a callable or "module:function"; default ASIGNNet's
    builder: str | Callable[..., Any] | None = None
    baseline: str | None = None
    cross_layer: bool = False  # uses cross-layer edges of the 3D graph
    cli: bool = False  # label propagation from the known layer
    images: bool = True  # reads image features: every section in its graph needs an image
    torch: bool = False  # a baseline that runs torch kernels: thread budget, determinism, --device
    # config fields with identity role "model" that this model reads (its run id depends
    # on them; another model's does not)
    reads: tuple[str, ...] = ()
    rank: int = 50  # display order (maps, tables, demo): the full method first, the mean last
    colour: str = "#8c564b"  # bar colour in the report

    @property
    def neural(self) -> bool:
        return self.network is not None or self.builder is not None

    def build_network(self, **overrides: Any) -> Any:
        """A freshly initialised network of this model (only for a neural model)."""
        import importlib

        builder = self.builder or ASIGN_BUILDER
        if isinstance(builder, str):
            module, _, name = builder.partition(":")
            builder = getattr(importlib.import_module(module), name)
        return builder(self.name, **overrides)

    @property
    def uses_torch(self) -> bool:
        return self.neural or self.torch


def _models(*specs: ModelSpec) -> dict[str, ModelSpec]:
    return {s.name: s for s in sorted(specs, key=lambda s: s.rank)}


MODELS: dict[str, ModelSpec] = _models(
    ModelSpec(name="asign3d",
              help="MSAGNet on the 3D graph + cross-layer imputation (the full method)",
              network={"cross_layer_edges": True, "use_cli": True}, cross_layer=True, cli=True,
              reads=("cli_iters", "idw_k", "idw_power"), rank=0, colour="#1f77b4"),
    ModelSpec(name="asign2d", help="MSAGNet on same-layer edges only, no CLI (the 2D model)",
              network={"cross_layer_edges": False, "use_cli": False}, rank=1, colour="#17becf"),
    ModelSpec(name="cli", help="label propagation alone over the 3D graph (unit node weights)",
              baseline="predict_cli", cross_layer=True, cli=True, images=False, torch=True,
              reads=("cli_iters",), rank=2, colour="#2ca02c"),
    ModelSpec(name="similarity",
              help="cosine kNN (k=20) on spot embeddings against the known layer",
              baseline="predict_similarity", reads=("similarity_k",), rank=3, colour="#9467bd"),
    ModelSpec(name="idw",
              help="inverse-distance weighting of the 8 nearest known spots (aligned x, y)",
              baseline="predict_idw", images=False, reads=("idw_k", "idw_power"),
              rank=4, colour="#ff7f0e"),
    ModelSpec(name="ridge+idw",
              help="ridge blended with idw, weight by blocked CV on the known layer",
              baseline="predict_ridge_idw", reads=("idw_k", "idw_power"),
              rank=5, colour="#bcbd22"),
    ModelSpec(name="ridge", help="ridge regression from spot embeddings, penalty by blocked CV",
              baseline="predict_ridge", rank=6, colour="#e377c2"),
    ModelSpec(name="mean", help="known layer's mean profile for every hidden spot",
              baseline="predict_mean", images=False, rank=99, colour="#9e9e9e"),
)
BASELINE_MODELS = tuple(name for name, spec in MODELS.items() if not spec.neural)
MEAN_MODEL = "mean"  # the reference every figure is reported beside (DESIGN.md §5)


def models_help() -> str:
    return " | ".join(MODELS)


_OPT, _MODEL, _PROTO, _RUN, _BASE = "Optimisation", "Model", "Protocol", "Runtime", "Baselines"


def _gat_engines() -> tuple[str, ...]:
    from asign.train.gnn import GAT_ENGINES

    return tuple(GAT_ENGINES)


def _loss_presets() -> tuple[str, ...]:
    from asign.train.loss import LOSS_PRESETS

    return tuple(LOSS_PRESETS)


def _net(default: Any, help: str, group: str = _OPT, **kw: Any) -> Any:
    """An option only a network reads (a baseline's run id does not depend on it)."""
    return opt(default, help=help, group=group, identity="network", **kw)


@dataclass(frozen=True)
class TrainConfig:
    store: Path = shared("--store")
    model: str = shared("--model", "asign3d", each=True, choices=lambda: MODELS,
                        help="Model or baseline; a comma-separated list runs each.")
    run: str = shared("--run", "run")
    known: str = opt("first", group=_PROTO,
                     help="Known (measured) layer(s): first | middle | last | Z | section id, "
                          "or a set: 2,5 / first,last / C2,C5.")
    folds: int = opt(1, ge=1, group=_PROTO,
                     help="1 = within-sample imputation; K>=2 = sample-level k-fold.")
    samples: tuple[str, ...] = shared("--samples", (), listed=True, group=_PROTO,
                                      help="Restrict to these sample ids (comma-separated).")
    extra_2d: tuple[str, ...] = shared("--extra-2d", (), group=_PROTO)
    # the cross-patient check (train/transfer.py): no known layer in these samples
    test_samples: tuple[str, ...] = opt(
        (), listed=True, group=_PROTO, legacy_default=True,
        help="Cross-patient check: predict these samples from their images alone (no known "
             "layer), trained on every labelled section of the other samples (--samples); "
             "models that need no known layer only (mean, similarity, ridge, asign2d).")
    # optimisation (paper: SGD, momentum 0.9, cosine decay to 1% of the initial rate)
    # her2st C: validation loss flattens after ~150 epochs (SGD, lr 0.05)
    epochs: int = _net(200, "Training epochs (the best one on the validation spots is kept).",
                       ge=0)
    lr: float = _net(0.05, "Learning rate.", gt=0)
    momentum: float = _net(0.9, "SGD momentum.", ge=0)
    weight_decay: float = _net(1e-4, "Weight decay (L2).", ge=0)
    optimizer: str = _net("sgd", "Optimiser (sgd: the paper's, momentum 0.9).",
                          choices=lambda: OPTIMIZERS)
    # the learning-rate schedule; --scheduler is the Dask scheduler's address (one word, one
    # meaning), so the old spelling `--scheduler cosine` is read as this with a warning
    scheduler: str = _net("cosine", "Learning-rate schedule.", flag="--lr-scheduler",
                          choices=lambda: SCHEDULERS, deprecated=("--scheduler",))
    lr_min_ratio: float = _net(0.01, "Cosine decay floor, as a share of the initial rate.",
                               ge=0, le=1)
    cli_lr_scale: float = _net(10.0, "Learning-rate multiplier of the CLI block.", gt=0)
    grad_clip: float = _net(5.0, "Gradient-norm clip (0 = none).", ge=0)
    loss: str = _net("paper", "Loss weights preset.", choices=_loss_presets)
    # model
    hidden: int = _net(256, "Hidden width of the fusion, GAT and transformer layers.", _MODEL,
                       ge=1)
    heads: int = _net(4, "Attention heads per GAT layer.", _MODEL, ge=1)
    dropout: float = _net(0.1, "Dropout rate.", _MODEL, ge=0, lt=1)
    gnn: str = _net("dgl", "GAT engine (dgl: CPU default; pyg: CUDA).", _MODEL,
                    choices=_gat_engines)
    cli_iters: int = opt(10, ge=1, group=_MODEL, identity="model",
                         help="Propagation steps of the CLI block.")
    feature_norm: str = _net("section", "Embedding normalisation (section: z-score per "
                                        "section).", _MODEL, choices=lambda: FEATURE_NORMS)
    center_labels: bool = _net(True, "Learn deviations from each graph's training mean.",
                               _MODEL, negatable=True)
    cli_per_node_gate: bool = _net(False, "CLI gate per gene and spot instead of per gene.",
                                   _MODEL, flag="--per-node-gate")
    cli_spatial_prior: bool = _net(True, "CLI also blends the IDW prior of the known layer "
                                         "(off = the paper's CLI).", _MODEL,
                                   flag="--spatial-prior", negatable=True)
    calibrate_gate: bool = _net(True, "After training, choose the CLI blend weights on the "
                                      "held-out validation spots.", _MODEL, negatable=True)
    ablate: tuple[str, ...] = opt(
        (), listed=True, choices=lambda: ABLATIONS, group=_MODEL, legacy_default=True,
        help="Remove parts of asign3d for an ablation, comma-separated.")
    # training episodes (see protocol.py) and model selection (see loop.py)
    episode_known_fraction: float = _net(
        0.2, "Share of a single known layer's spots given to the CLI in a training episode "
             "(the rest are targets).", _PROTO, gt=0, lt=1)
    val_fraction: float = _net(0.2, "Share of training spots set aside to pick the best "
                                    "epoch (0 = last epoch).", _PROTO, ge=0, lt=1)
    validation: str = _net("blocked", "Held-out known spots for epoch, gate, shrinkage and "
                                      "intervals: whole squares of spots (blocked) or random "
                                      "spots.", _PROTO, choices=lambda: VALIDATIONS)
    shrink: bool = _net(True, "Blend the network with a baseline prior, weight per gene chosen "
                              "on held-out blocks.", _MODEL, negatable=True)
    shrink_prior: str = _net("auto", "Prior of the shrinkage: auto (chosen on held-out "
                                     "blocks) or a baseline.", _MODEL,
                             choices=lambda: SHRINK_PRIORS)
    ensemble: int = _net(1, "Networks per run (seeds seed..seed+K-1), predictions averaged.",
                         _MODEL, ge=1)
    # large graphs (batching.py): above minibatch_above spots a graph trains one step per
    # spatial block of ≤ block_spots spots (+ a halo of block_halo in-edge hops; None: one
    # hop per GAT layer, which makes MSAGNet exact on the block) and infers block by block
    minibatch_above: int = _net(20_000, "Graphs with more spots train one step per spatial "
                                        "block and infer block by block; 0 = always.", ge=0)
    block_spots: int = _net(4096, "Spots per block in that mode (memory grows with it).",
                            ge=1)
    block_halo: int | None = _net(None, "In-edge hops of halo around a block (default: one "
                                        "per GAT layer, exact).", ge=0)
    # when given, the budget decides whole graph vs DGL-sampled mini-batches and their
    # size instead of minibatch_above / block_spots (batching.BatchPlan.of, sampling.py)
    memory_gb: float | None = _net(None, "Memory budget of a training step (GB): the whole "
                                         "graph where it fits, else neighbour-sampled "
                                         "mini-batches of spatial blocks sized to it "
                                         "(replaces --minibatch-above/--block-spots).",
                                   gt=0, legacy_default=True)
    # baselines
    idw_k: int = opt(8, ge=1, group=_BASE, identity="model",
                     help="Nearest known spots an IDW prediction averages.")
    idw_power: float = opt(1.0, ge=0, group=_BASE, identity="model",
                           help="Distance exponent of inverse-distance weighting.")
    similarity_k: int = opt(20, ge=1, group=_BASE, identity="model",
                            help="Nearest known spots (cosine, embeddings) of a similarity "
                                 "prediction.")
    # runtime
    device: str = shared("--device", "cpu", choices=lambda: DEVICES, group=_RUN)
    threads: int | None = shared("--threads", None)
    seed: int = shared("--seed", 0, each=True, group=_RUN, metavar="INTEGER",
                       help="Random seed (runs are deterministic); a comma-separated list "
                            "(0,1,2) runs each.")
    resume: bool = opt(False, group=_RUN, identity="never",
                       help="Continue an interrupted run from its checkpoint.")
    # seconds to wait while an ingest writes the store (store/locks.py), then fail naming it
    wait: float = shared("--wait", 0.0)
    finetune_spot_encoder: bool = _net(False, "Train the store's spot encoder on its stored "
                                              "patches (meant for a GPU).", _MODEL)
    finetune_batch: int = _net(64, "Spots re-encoded with gradients per step when "
                                   "fine-tuning.", _MODEL, ge=1)
    finetune_lr_scale: float = _net(0.1, "The spot encoder's learning rate relative to --lr.",
                                    _MODEL, ge=0)
    save_predictions: bool = opt(True, negatable=True, group=_RUN, identity="never",
                                 help="Write each hidden spot's prediction to the results.")
    coverage: float = opt(0.9, ge=0, lt=1, group=_PROTO, legacy_default=True,
                          help="Per-spot, per-gene intervals at this coverage, calibrated on "
                               "known spots (0 = none).")
    encoder: str | None = shared("--encoder", None,
                                 help="Embedding encoder in the store (default: the "
                                      "manifest's).")
    workers: int = shared("--workers", 0)
    dask_scheduler: str | None = shared("--scheduler", None)
    # free-form, recorded in runs.config
    extra: dict[str, Any] = opt(factory=dict, cli=False, help="Free-form notes of the caller.")

    @property
    def spec(self) -> ModelSpec:
        return MODELS[self.model]

    @property
    def uses_cli(self) -> bool:
        """The model propagates labels (its spec has a CLI and no ablation removed it)."""
        return self.spec.cli and "cli" not in self.ablate

    @property
    def setting(self) -> str:
        if self.test_samples:
            return "cross_patient"
        return "within_sample" if self.folds == 1 else "cross_sample"

    def to_json(self) -> dict[str, Any]:
        from asign.jsonable import jsonable

        return jsonable(asdict(self))

    def identity(self) -> dict[str, Any]:
        """The fields that decide the result, by their declared role: not how the run is
        executed, a network's settings only for a network, a model-role field only for the
        models that read it (ModelSpec.reads)."""
        from asign.jsonable import jsonable

        spec = self.spec

        def keep(d: Declared) -> bool:
            role = d.option.identity
            return (role == "run" or (role == "network" and spec.neural)
                    or (role == "model" and d.path[-1] in spec.reads))

        return jsonable(identity(self, keep))

    def with_(self, **changes: Any) -> TrainConfig:
        return replace(self, **changes)


def validate(cfg: TrainConfig) -> None:
    """Collect every invalid option into one ConfigErrors."""
    problems = declared_problems(cfg)  # choices and bounds of every declared option
    if not math.isfinite(cfg.wait):
        problems.append(f"--wait must be a finite number of seconds, got {cfg.wait}")
    from asign.store.names import name_problem

    bad_run = name_problem(cfg.run)  # the run name becomes part of the run's file names
    if bad_run:
        problems.append(f"--run {cfg.run!r} {bad_run}")
    if cfg.ablate and cfg.model != "asign3d":
        problems.append(f"--ablate applies to asign3d, not {cfg.model}")
    from asign.train.protocol import known_tokens

    parts = known_tokens(cfg.known)
    if not parts or any(not p.replace("_", "").replace("-", "").replace(".", "").isalnum()
                        for p in parts) or len(set(parts)) != len(parts):
        problems.append(f"--known {cfg.known!r} must be first, middle, last, a layer number z "
                        "or a section id, or a comma-separated set of them without repeats")
    if not cfg.run or any(c in cfg.run for c in "/\\"):
        problems.append(f"--run {cfg.run!r} must be a non-empty name without slashes")
    spec = MODELS.get(cfg.model)
    if cfg.finetune_spot_encoder and spec is not None and not spec.neural:
        problems.append(f"--finetune-spot-encoder trains a network; {cfg.model} has none")
    if cfg.device == "cuda" and cfg.gnn == "dgl" and spec is not None and spec.neural:
        problems.append("the PyPI DGL wheel is CPU-only: use --gnn pyg with --device cuda")
    if cfg.workers and cfg.dask_scheduler:
        problems.append("give --workers (a local cluster) or --scheduler (a running one), not both")
    if cfg.test_samples and spec is not None:
        from asign.train.transfer import transfer_problem

        if (problem := transfer_problem(cfg)) is not None:
            problems.append(problem)
    if problems:
        raise ConfigErrors(problems, what="asign train options", fix="see `asign train --help`")

