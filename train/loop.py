"""Training and inference of the neural models (asign3d, asign2d) on whole-sample graphs.

One optimiser step per training graph per epoch (graphs in a seeded random order); every
step draws a fresh episode (protocol.episode): the CLI propagates from the episode's known
spots and the spot loss is taken on its hidden spots. Randomness is keyed by
(seed, fold, epoch, graph), and torch is re-seeded at the start of every epoch, so a run
resumed from its per-epoch checkpoint replays exactly the uninterrupted run.

Model selection without test labels: a seeded fraction (``val_fraction``) of every training
graph's visible spots is set aside. Those spots never enter training — not as loss targets,
not as CLI inputs, not in region/global targets. After each epoch the CLI propagates from
all other visible spots and the spot loss on the set-aside spots (of the test samples'
graphs, when they have any: their known layer is the closest thing to what is scored) is
the validation score; the weights of the best epoch are the run's model. (With a few hundred
labelled spots the network otherwise memorises the training spots' embeddings, and the last
epoch is rarely the best.) At test time the set-aside spots are ordinary known spots again.
"""

from __future__ import annotations

import logging
import math
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from asign.train import batching, blocks
from asign.train.config import TrainConfig
from asign.train.data import SampleData
from asign.train.protocol import episode, episode_rng, tile_targets, visible_labels

if TYPE_CHECKING:
    from torch import Tensor

    from asign.train.loss import TileTarget
    from asign.train.model import GraphInputs, ModelOutput
    from asign.train.network import Network

log = logging.getLogger(__name__)


@dataclass(eq=False)
class GraphTask:
    """One graph as the loop sees it: model inputs and the labels training may use."""

    name: str
    inputs: GraphInputs
    section: np.ndarray  # (N,) section index
    visible: np.ndarray  # (N,) bool: labels training may use (CLI inputs at test time)
    train: np.ndarray  # (N,) bool: visible and not set aside for validation
    val: np.ndarray  # (N,) bool: set aside for model selection
    y: Tensor  # (N, G): visible labels minus ``offset``, zeros elsewhere
    offset: np.ndarray  # (G,) subtracted from the labels (centring), added back by predict
    region_target: TileTarget
    region_mask: Tensor
    global_target: TileTarget
    global_mask: Tensor
    cache: dict[str, Any] = field(default_factory=dict)


def make_task(sample: SampleData, visible_sections: tuple[str, ...], device: str,
              name: str | None = None, *, val_fraction: float = 0.0, seed: int = 0,
              feature_norm: str = "section", center_labels: bool = True,
              val_by_layer: bool = False, validation: str = "blocked") -> GraphTask:
    """Tensors for one graph. Labels pass through ``visible_labels`` here and nowhere else.

    ``feature_norm``: ``section`` (per-section z-score, data.standardised_features) or
    ``none`` (embeddings as stored). ``center_labels``: subtract the mean profile of the
    graph's training spots, so the network learns deviations from a sample's own known
    mean rather than each patient's absolute level from images (which does not transfer
    between patients); propagation, MSE and the per-gene PCC terms are unchanged by a
    per-gene shift, and ``predict`` adds the offset back. At test time the offset is the
    known layer's mean: information the method has anyway."""
    import torch

    from asign.train.data import standardised_features
    from asign.train.loss import TileTarget
    from asign.train.model import EDGE_KINDS, GraphInputs, TokenSet

    if feature_norm == "section":
        spot_feat, tile_feat = standardised_features(sample)
    else:
        spot_feat, tile_feat = sample.spot_feat, sample.tile_feat

    name = name or sample.sample_id
    y, visible = visible_labels(sample.labels, sample.has_label, sample.section,
                                sample.section_index(visible_sections))
    val_seed = _mix(seed, zlib.crc32(name.encode()))
    if val_by_layer and val_fraction > 0:
        val = split_validation_layer(visible, sample.section, val_seed)
    elif validation == "blocked":  # whole squares of spots (blocks.py): random spots leak
        val = blocks.validation_split(visible, sample.xy, sample.section, val_fraction, val_seed)
    else:
        val = split_validation(visible, val_fraction, val_seed)
    train = visible & ~val
    offset = np.zeros(y.shape[1], dtype=np.float32)
    if center_labels and train.any():
        offset = y[train].mean(axis=0).astype(np.float32)
        y = np.where(visible[:, None], y - offset, 0.0).astype(np.float32)

    def tokens(level: str) -> TokenSet:
        return TokenSet(torch.as_tensor(tile_feat[level], dtype=torch.float32),
                        torch.as_tensor(sample.tokens[level]))

    kind = np.where(sample.cross, EDGE_KINDS["cross_layer"], EDGE_KINDS["same_layer"])
    inputs = GraphInputs(
        spot=torch.as_tensor(spot_feat, dtype=torch.float32),
        region=tokens("region"), global_=tokens("global"),
        src=torch.as_tensor(sample.src), dst=torch.as_tensor(sample.dst),
        edge_weight=torch.as_tensor(sample.weight), edge_kind=torch.as_tensor(kind),
        xy=torch.as_tensor(sample.xy, dtype=torch.float32))
    t = torch.as_tensor

    def target(level: str) -> tuple[TileTarget, Tensor]:
        table, tile, mask = tile_targets(sample.tokens[level][:, 0], y, train)
        return TileTarget(t(table), t(tile)).to(device), t(mask).to(device)

    (rt, rm), (gt, gm) = target("region"), target("global")
    cache: dict[str, Any] = {}
    if sample.patches is not None:
        from asign.train.finetune import SpotPatches

        cache["finetune"] = SpotPatches.of(sample.patches, sample.spot_feat, sample.section,
                                           feature_norm, device)
    return GraphTask(
        name=name, inputs=inputs.to(device), section=sample.section, visible=visible,
        train=train, val=val, y=t(y).to(device), offset=offset,
        region_target=rt, region_mask=rm, global_target=gt, global_mask=gm, cache=cache)


def split_validation(visible: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """A seeded random ``fraction`` of the visible spots (none when fewer than 10): the
    ``--validation random`` ablation; the default holds out blocks (blocks.py)."""
    return blocks.random_split(visible, fraction, seed)


def split_validation_layer(visible: np.ndarray, section: np.ndarray, seed: int) -> np.ndarray:
    """One seeded whole visible layer set aside (a test sample with ≥ 2 known layers): best
    epoch and CLI gate are then chosen on a cross-layer task, as at test time, rather than
    on in-layer spots whose neighbours are all known (the B4 run showed that proxy misleads)."""
    layers = np.unique(section[visible])
    if layers.size < 2:
        return split_validation(visible, 0.0, seed)
    held = np.random.default_rng(seed).choice(layers)
    return visible & (section == held)


def model_overrides(cfg: TrainConfig, in_dim: int, n_genes: int) -> dict[str, Any]:
    return dict(in_dim=in_dim, n_genes=n_genes, hidden_dim=cfg.hidden, n_heads=cfg.heads,
                dropout=cfg.dropout, engine=cfg.gnn, cli_iters=cfg.cli_iters,
                **({"cli_per_node_gate": cfg.cli_per_node_gate,
                    "cli_spatial_prior": cfg.cli_spatial_prior, "cli_prior_k": cfg.idw_k,
                    "cli_prior_power": cfg.idw_power} if cfg.spec.cli else {}),
                **({"use_cli": False} if "cli" in cfg.ablate else {}),
                **({"n_gat_layers": 0} if "gat" in cfg.ablate else {}),
                **({"cross_attention": False} if "cross-attention" in cfg.ablate else {}))


def build(cfg: TrainConfig, in_dim: int, n_genes: int, fold: int,
          spot_encoder: Any = None) -> Network:
    """A freshly initialised model, seeded by (seed, fold); with ``spot_encoder`` (a
    finetune.EncoderRecipe) wrapped with its trainable spot encoder."""
    import torch

    torch.manual_seed(_mix(cfg.seed, fold, 0xB11D))
    model = cfg.spec.build_network(**model_overrides(cfg, in_dim, n_genes)).to(cfg.device)
    if spot_encoder is None:
        return model
    from asign.train.finetune import FinetuneModel, load_spot_encoder

    return FinetuneModel(model, load_spot_encoder(spot_encoder, cfg.device)).to(cfg.device)


def init_output_bias(model: Network, tasks: list[GraphTask]) -> None:
    """Start every regression head at the training spots' mean profile, so the network
    learns deviations from it instead of first travelling from 0 to ~ −5 (log-ratio scale)."""
    import torch

    ys = [task.y[_mask(task.train, task)] for task in tasks if task.train.any()]
    if not ys:
        return
    mean = torch.cat(ys).mean(dim=0)
    with torch.no_grad():
        for name in ("head_spot", "head_region", "head_global"):
            head = getattr(model.net, name, None)
            last = head[-1] if isinstance(head, torch.nn.Sequential) else None
            if last is not None and getattr(last, "bias", None) is not None:
                last.bias.copy_(mean.to(last.bias))


def make_optimizer(cfg: TrainConfig, model: Network) -> tuple[Any, Any]:
    import torch

    # The CLI has a handful of parameters, one gate logit per gene among them, whose
    # gradients the mean over genes divides by G: they learn at cli_lr_scale × the rate.
    cli = getattr(model, "cli", None)
    cli_ids = {id(p) for p in cli.parameters()} if cli is not None else set()
    body = [p for p in model.parameters() if p.requires_grad and id(p) not in cli_ids]
    encoder = getattr(model, "encoder", None)  # fine-tuned spot encoder: a gentler rate
    enc_ids = {id(p) for p in encoder.parameters()} if encoder is not None else set()
    body = [p for p in body if id(p) not in enc_ids]
    groups = [{"params": body, "lr": cfg.lr}]
    if encoder is not None:
        groups.append({"params": [p for p in encoder.parameters() if p.requires_grad],
                       "lr": cfg.lr * cfg.finetune_lr_scale})
    if cli is not None:
        groups.append({"params": [p for p in cli.parameters() if p.requires_grad],
                       "lr": cfg.lr * cfg.cli_lr_scale})
    if cfg.optimizer == "sgd":
        opt = torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum,
                              weight_decay=cfg.weight_decay)
    else:
        opt = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.scheduler == "cosine":
        # cosine decay of every group to lr_min_ratio × its initial rate (the paper: 1 %)
        floor = cfg.lr_min_ratio
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt,
            lambda e: floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * e / max(cfg.epochs, 1))))
    else:
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    return opt, sched


@dataclass
class FitState:
    """What a checkpoint holds for the fold in progress."""

    epoch: int
    model: dict[str, Any]
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    history: list[float]
    val_history: list[float] = field(default_factory=list)
    best_epoch: int = -1
    best_score: float = float("inf")
    best_model: dict[str, Any] | None = None


EpochHook = Callable[[int, float, float], None]  # (epoch, mean loss, seconds)
SaveHook = Callable[[FitState], None]


def fit(
    cfg: TrainConfig,
    model: Network,
    tasks: list[GraphTask],
    fold: int,
    *,
    resume_from: FitState | None = None,
    on_epoch: EpochHook | None = None,
    save: SaveHook | None = None,
    stop_after: int | None = None,
    select: list[GraphTask] | None = None,
) -> FitState:
    """Train ``model`` in place and leave the best epoch's weights in it (the last epoch's
    when no graph has validation spots). ``stop_after`` ends the call after that many
    epochs of this call; the returned state's ``epoch`` then tells how far it got.
    ``select``: the graphs whose set-aside spots choose the epoch (default: all; ``run``
    passes the test samples' graphs, whose known layer is closest to what is scored)."""
    import torch

    from asign.train.loss import LossWeights

    weights = LossWeights.preset(cfg.loss)
    opt, sched = make_optimizer(cfg, model)
    state = FitState(0, {}, {}, {}, [])
    if resume_from is not None:
        model.load_state_dict(resume_from.model)
        opt.load_state_dict(resume_from.optimizer)
        sched.load_state_dict(resume_from.scheduler)
        state = resume_from
    use_cli = cfg.uses_cli
    plan = batching.BatchPlan.of(cfg)
    done_here = 0
    for epoch in range(state.epoch, cfg.epochs):
        if stop_after is not None and done_here >= stop_after:
            return state
        t0 = time.perf_counter()
        torch.manual_seed(_mix(cfg.seed, fold, epoch))
        order = episode_rng(cfg.seed, epoch, _mix(fold, 0x0DE)).permutation(len(tasks))
        model.train()
        if cfg.finetune_spot_encoder:
            from asign.train.finetune import start_epoch

            start_epoch(model, tasks)
        losses = []
        for gi in order:
            task = tasks[gi]
            if task.train.sum() < 2:
                continue
            rng = episode_rng(_mix(cfg.seed, fold), epoch, int(gi))
            ep = episode(task.train, task.section, rng, cfg.episode_known_fraction)
            inputs = task.inputs
            if cfg.finetune_spot_encoder:
                from asign.train.finetune import train_inputs

                inputs = train_inputs(model, task, rng, cfg.finetune_batch)
            # One part (the whole graph) unless the graph is above cfg.minibatch_above
            # spots: then one part per spatial block (batching.py).
            for part in batching.training_parts(
                    plan, model, task, inputs, ep.known, ep.hidden,
                    episode_rng(_mix(cfg.seed, fold, 0xB10C), epoch, int(gi))):
                if use_cli:
                    out = model(part.inputs, part.task.y, part.known, graph=part.graph)
                    target = part.hidden
                else:
                    # Without CLI no label is an input, so every training label is a target.
                    out = model(part.inputs, graph=part.graph)
                    target = part.train
                loss = compute_loss(out, part.task, target, weights, rows=part.rows)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                opt.step()
                losses.append(float(loss.detach()))
        sched.step()
        done_here += 1
        chosen = [t for t in (select or []) if t.val.any()] or tasks
        score = validation_score(cfg, model, chosen, weights)
        state.epoch = epoch + 1
        state.history.append(float(np.mean(losses)) if losses else float("nan"))
        state.val_history.append(score)
        if np.isfinite(score) and score < state.best_score:
            state.best_score, state.best_epoch = score, epoch + 1
            state.best_model = _cpu_state(model)
        state.model, state.optimizer, state.scheduler = (_cpu_state(model), opt.state_dict(),
                                                         sched.state_dict())
        if save is not None:
            save(state)
        if on_epoch is not None:
            on_epoch(epoch, state.history[-1], time.perf_counter() - t0)
    if state.best_model is not None:
        model.load_state_dict(state.best_model)
    return state


def validation_score(cfg: TrainConfig, model: Network, tasks: list[GraphTask],
                     weights: Any) -> float:
    """Spot loss (the training loss's MSE and PCC terms) on the set-aside spots, the CLI
    propagating from every other training spot; mean over graphs that have such spots."""
    scores = []
    for task in tasks:
        if not task.val.any():
            continue
        out = validation_output(cfg, model, task)
        val = _mask(task.val, task)
        scores.append(spot_score(out.spot[val], task.y[val], weights))
    model.train()
    return float(np.mean(scores)) if scores else float("nan")


def validation_output(cfg: TrainConfig, model: Network, task: GraphTask) -> ModelOutput:
    """The model's output (eval mode, no autograd) with the CLI propagating from the
    training spots: what the set-aside spots are scored on."""
    model.eval()
    inputs = _eval_inputs(cfg, model, task)
    known = _mask(task.train, task) if cfg.uses_cli else None
    return batching.infer(batching.BatchPlan.of(cfg), model, task, inputs, known)


def spot_score(pred: Any, true: Any, weights: Any) -> float:
    """The spot terms of the training loss (MSE and PCC), as one validation number."""
    from asign.train.loss import pcc_loss

    return float(weights.mse * (pred - true).square().mean()
                 + weights.spot_pcc * pcc_loss(pred, true))


def _mask(mask: np.ndarray, task: GraphTask) -> Any:
    import torch

    return torch.as_tensor(mask, device=task.y.device)


def compute_loss(out: ModelOutput, task: GraphTask, spot_mask: Tensor, weights: Any,
                 rows: Any = None) -> Tensor:
    """The hybrid loss of one graph: spot terms on ``spot_mask``, region/global terms where
    the spot's own tile has visible labels, consistency on every spot (on ``rows`` only,
    when given: a block's seeds, batching.py)."""
    from asign.train.loss import LossTargets, hybrid_loss

    targets = LossTargets(spot=task.y, spot_mask=spot_mask, region=task.region_target.dense(),
                          region_mask=task.region_mask, global_=task.global_target.dense(),
                          global_mask=task.global_mask)
    total, _ = hybrid_loss(out, targets, weights, consistency_mask=rows)
    return total


def predict(cfg: TrainConfig, model: Network, task: GraphTask) -> np.ndarray:
    """(N, G) predictions on the whole graph; CLI propagates from the task's visible spots
    (at test time: the known layer)."""
    import torch

    model.eval()
    with torch.no_grad():
        inputs = _eval_inputs(cfg, model, task)
        known = torch.as_tensor(task.visible, device=task.y.device) if cfg.uses_cli else None
        out = batching.infer(batching.BatchPlan.of(cfg), model, task, inputs, known)
    spot = out.spot.float().cpu().numpy()
    del out  # the other (N, ·) outputs, before the offset is added: in place, the same sums
    spot += task.offset
    return spot


def _eval_inputs(cfg: TrainConfig, model: Network, task: GraphTask) -> GraphInputs:
    if not cfg.finetune_spot_encoder:
        return task.inputs
    from asign.train.finetune import eval_inputs

    return eval_inputs(model, task)



def _cpu_state(model: Network) -> dict[str, Any]:
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def _mix(*parts: int) -> int:
    """A stable 63-bit seed from integers (independent of Python's hash randomisation)."""
    return int(np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts])
               .generate_state(2, dtype=np.uint32).view(np.uint64)[0] >> np.uint64(1))
