"""The `asign` command line. Thin: parse options, build one typed config, call the stage.

Exit codes: 0 success; 1 an AsignError (bad input, store problem, failed registration —
one line on stderr naming the file and the fix); 2 a usage error (typer/click)."""

from __future__ import annotations

import contextvars
import functools
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperCommand, TyperGroup


def _choice(load: Callable[[], tuple[str, ...]]) -> Callable[[str], str]:
    """A parser that accepts one of a registry's names, read when first needed (so
    ``asign --help`` does not import the readers); anything else is a usage error, exit 2."""
    def parse(value: str) -> str:
        allowed = load()
        if value not in allowed:
            raise typer.BadParameter(f"{value!r} is not one of {', '.join(allowed)}")
        return value

    return parse


def _ingest_formats() -> tuple[str, ...]:
    from asign.ingest.readers import READERS

    return ("auto", *READERS)


def _query_formats() -> tuple[str, ...]:
    from asign.commands.query import FORMATS

    return FORMATS


MODELS_HELP = "{models}"  # filled from the model registry when the command is built


def _flags_read_as_flags(params: list[Any]) -> list[Any]:
    """typer labels every option with its type, so a flag such as --json shows ``<bool>``
    as if it took a value; an empty metavar leaves flags (and --help) bare. A help text
    naming the registered models gets them here, when the command runs or shows --help:
    reading the registry at import would load the train package for every command."""
    for p in params:
        if getattr(p, "is_flag", False) and p.metavar is None:
            p.metavar = ""
        if MODELS_HELP in (getattr(p, "help", None) or ""):
            from asign.train.config import models_help

            p.help = p.help.replace(MODELS_HELP, models_help())
    return params


class _Command(TyperCommand):
    def get_params(self, ctx: Any) -> list[Any]:
        return _flags_read_as_flags(super().get_params(ctx))


class _Group(TyperGroup):
    def get_params(self, ctx: Any) -> list[Any]:
        return _flags_read_as_flags(super().get_params(ctx))


app = typer.Typer(
    name="asign",
    cls=_Group,
    help="3D spatial transcriptomics from H&E stacks plus one measured ST section (ASIGN).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

StoreOpt = Annotated[Path, typer.Option("--store", "-s", help="Feature store directory.", envvar="ASIGN_STORE")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print a machine-readable JSON summary on stdout.")]
SeedOpt = Annotated[int, typer.Option("--seed", help="Random seed (runs are deterministic).")]
DeviceOpt = Annotated[str, typer.Option("--device", help="cpu or cuda.")]
WorkersOpt = Annotated[int, typer.Option("--workers", help="Run the independent tasks on a local Dask cluster of N worker processes (cores // N threads each); 0 = serial in this process.", rich_help_panel="Cluster")]
SchedulerOpt = Annotated[str | None, typer.Option("--scheduler", help="Address of a running Dask scheduler to run the tasks on, e.g. a dask-jobqueue SLURMCluster's (see README 'Running on a cluster').", envvar="ASIGN_SCHEDULER", rich_help_panel="Cluster")]

log = logging.getLogger("asign")


@app.callback()
def main(
    verbose: Annotated[int, typer.Option("--verbose", "-v", count=True, help="Debug log output (the default already logs each step).")] = 0,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only errors.")] = False,
) -> None:
    """Logging is configured once, here."""
    level = logging.ERROR if quiet else (logging.INFO if verbose == 0 else logging.DEBUG)
    from rich.logging import RichHandler

    handler: logging.Handler
    if sys.stderr.isatty():
        handler = RichHandler(show_path=False, rich_tracebacks=False)
        fmt = "%(message)s"
    else:
        handler = logging.StreamHandler(sys.stderr)
        fmt = "%(asctime)s %(levelname)s %(message)s"
    handler.setFormatter(logging.Formatter(fmt, datefmt="%H:%M:%S"))
    root = logging.getLogger("asign")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


_AS_JSON: contextvars.ContextVar[bool] = contextvars.ContextVar("asign_as_json", default=False)


def _fail(err: Exception) -> typer.Exit:
    """The one place errors leave the CLI: one line on stderr and, when the command runs
    with ``--json``, ``{"error", "file", "fix"}`` on stdout; the same exit code either way."""
    typer.echo(f"error: {err}", err=True)
    if _AS_JSON.get():
        _emit_json({"error": getattr(err, "message", str(err)), "file": getattr(err, "path", None),
                    "fix": getattr(err, "fix", None)})
    return typer.Exit(getattr(err, "exit_code", 1))


def _command(*args: Any, **kwargs: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """``app.command`` with the CLI's one AsignError handler: it records the command's
    ``--json`` for ``_fail`` and turns any AsignError into one line and exit 1 (typer reads
    the wrapped function's signature, so options and --help are unchanged)."""
    def register(fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def run(*a: Any, **kw: Any) -> Any:
            from asign.errors import AsignError

            token = _AS_JSON.set(bool(kw.get("as_json")))
            try:
                return fn(*a, **kw)
            except AsignError as err:
                raise _fail(err) from None
            finally:
                _AS_JSON.reset(token)

        return app.command(*args, **kwargs)(run)

    return register


def _emit_json(payload: Any) -> None:
    from asign.store.query import strict_json

    typer.echo(strict_json(payload))


def _split(value: str | None) -> tuple[str, ...]:
    return tuple(v.strip() for v in (value or "").split(",") if v.strip())


@_command(cls=_Command)
def ingest(
    src: Annotated[list[Path], typer.Argument(help="Sample folder(s): her2st layout, Visium outs/, or a manifest (.toml/.csv).")],
    store: StoreOpt,
    fmt: Annotated[str, typer.Option("--format", parser=_choice(_ingest_formats), help="Input layout: auto (detected) or a reader listed by `asign doctor`.")] = "auto",
    samples: Annotated[str | None, typer.Option("--samples", help="Sample name(s) or glob, comma-separated (e.g. C or 'C,B').")] = None,
    extra_2d: Annotated[str | None, typer.Option("--extra-2d", help="Single-section samples to keep as extra 2D training data (e.g. B).")] = None,
    steps: Annotated[str, typer.Option("--steps", help="Subset of register,align,patches,embed,graph.")] = "register,align,patches,embed,graph",
    n_genes: Annotated[int, typer.Option("--n-genes", help="Gene panel size (top by mean count on training layers).")] = 250,
    genes: Annotated[str | None, typer.Option("--genes", help="Explicit gene panel: comma-separated names, or a file with one gene per line.")] = None,
    normalisation: Annotated[str, typer.Option("--normalisation", help="log_ratio (reference/paper scale) or log1p_cp10k (TRIPLEX/HEST).")] = "log_ratio",
    panel_from: Annotated[str, typer.Option("--panel-from", help="Layer of each sample counted as training for the panel: first|middle|Z.")] = "first",
    transform: Annotated[str, typer.Option("--transform", help="rigid or affine registration.")] = "rigid",
    syn: Annotated[bool, typer.Option("--syn/--no-syn", help="Refine with ANTs SyN on grayscale.")] = False,
    reference: Annotated[str | None, typer.Option("--reference", help="Reference section id (default: middle).")] = None,
    init: Annotated[list[str] | None, typer.Option("--init", help="Initial guess for a pair: MOVING:FIXED:DEGREES[:flip], repeatable.")] = None,
    encoder: Annotated[str, typer.Option("--encoder", help="Encoder from the registry, 'a+b' to concatenate, or 'auto': resnet50-l3 when its ImageNet weights are local, else effnet-lite0 (bundled weights). See `asign doctor`.")] = "auto",
    weights: Annotated[str, typer.Option("--weights", help="PATH to a state dict, 'imagenet' (bundled, or the torch hub cache) or 'random' (pipeline tests).")] = "imagenet",
    download: Annotated[bool, typer.Option("--download/--no-download", help="Allow downloading missing torch-hub ImageNet weights.")] = False,
    device: DeviceOpt = "cpu",
    batch_size: Annotated[int, typer.Option("--batch-size", help="Patches per forward pass of the encoder.")] = 32,
    cross_weight: Annotated[str, typer.Option("--cross-weight", help="product (IoU×cosine, the paper) or sum (reference code).")] = "product",
    section_um: Annotated[float | None, typer.Option("--section-um", help="Spacing between consecutive sections (z) in µm; overrides the input's section_um (default 10, recorded in the store).")] = None,
    bin_um: Annotated[float | None, typer.Option(
        "--bin-um", help="Binned platforms: Visium HD bin level in µm (2, 8, 16; default 16); "
        "Xenium bin side in µm (default 55; 0 = cells as spots).")] = None,
    patch_um: Annotated[float | None, typer.Option(
        "--patch-um", help="Spot patch field of view in µm; region and global tiles keep "
        "their ratio (default: 112 µm for spots, 2.04 × the bin side for bins).")] = None,
    seed: SeedOpt = 0,
    wait: Annotated[float, typer.Option("--wait", help="Seconds to wait while another ingest writes this store, then fail naming it (one writer at a time).")] = 10.0,
    threads: Annotated[int | None, typer.Option("--threads", help="Torch CPU threads of the encoder in a serial run. Default: the cores idle at start (usable cores − 1-min load average, ≥ 1); beside other jobs torch's all-cores default measured 3.75× slower (bench/scale.py). The store is the same either way.")] = None,
    workers: WorkersOpt = 0,
    scheduler: SchedulerOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Register, align, crop, embed and graph a sample into a feature store.

    With --workers N / --scheduler ADDRESS the units of work (align per sample, patches and
    embeddings per section, graph per sample) run as Dask tasks; this process alone writes
    the store, so resume, fingerprints and `asign check` are as in a serial run."""
    from asign import ingest as ingest_stage
    from asign.ingest.config import AlignOptions, IngestConfig

    cfg = IngestConfig(
        sources=tuple(src), store=store, format=fmt, samples=samples, extra_2d=_split(extra_2d),
        steps=_split(steps), n_genes=n_genes, genes=_split(genes), normalisation=normalisation,
        panel_from=panel_from,
        align=AlignOptions(transform=transform, syn=syn, reference=reference, init=_parse_init(init or [])),
        encoder=encoder, weights=weights, allow_download=download, device=device, batch_size=batch_size,
        cross_weight=cross_weight, section_um=section_um, bin_um=bin_um, patch_um=patch_um,
        seed=seed, wait=wait,
        threads=threads, workers=workers, scheduler=scheduler,
    )
    summary = ingest_stage.run(cfg)  # validates every option before any work
    if as_json:
        _emit_json(summary)


def _parse_init(items: list[str]) -> dict[str, tuple[float, bool]]:
    from asign.errors import ConfigError

    out: dict[str, tuple[float, bool]] = {}
    for item in items:
        parts = item.split(":")
        try:
            if len(parts) not in (3, 4) or (len(parts) == 4 and parts[3] not in ("flip", "noflip")):
                raise ValueError
            out[f"{parts[0]}:{parts[1]}"] = (float(parts[2]), len(parts) == 4 and parts[3] == "flip")
        except ValueError:
            raise ConfigError(f"--init {item!r} is malformed", fix="use MOVING:FIXED:DEGREES or MOVING:FIXED:DEGREES:flip, e.g. C4:C3:-12:flip") from None
    return out


def _train_default(name: str) -> Any:
    from dataclasses import fields

    from asign.train.config import TrainConfig

    return next(f.default for f in fields(TrainConfig) if f.name == name)


_OPT, _MODEL, _PROTO, _RUN = "Optimisation", "Model", "Protocol", "Runtime"


@_command(cls=_Command)
def train(
    store: StoreOpt,
    model: Annotated[str, typer.Option("--model", "-m", help=f"{MODELS_HELP}; a comma-separated list runs each.")] = "asign3d",
    run: Annotated[str, typer.Option("--run", "-r", help="Run name (results are grouped by it).")] = "run",
    known: Annotated[str, typer.Option("--known", help="Known (measured) layer(s): first | middle | last | Z | section id, or a set: 2,5 / first,last / C2,C5.", rich_help_panel=_PROTO)] = "first",
    folds: Annotated[int, typer.Option("--folds", help="1 = within-sample imputation; K>=2 = sample-level k-fold.", rich_help_panel=_PROTO)] = 1,
    samples: Annotated[str | None, typer.Option("--samples", help="Restrict to these sample ids (comma-separated).", rich_help_panel=_PROTO)] = None,
    extra_2d: Annotated[str | None, typer.Option("--extra-2d", help="Samples trained as 2D sections and never scored (e.g. B).", rich_help_panel=_PROTO)] = None,
    episode_known_fraction: Annotated[float, typer.Option("--episode-known-fraction", help="Share of a single known layer's spots given to the CLI in a training episode (the rest are targets).", rich_help_panel=_PROTO)] = _train_default("episode_known_fraction"),
    val_fraction: Annotated[float, typer.Option("--val-fraction", help="Share of training spots set aside to pick the best epoch (0 = last epoch).", rich_help_panel=_PROTO)] = _train_default("val_fraction"),
    epochs: Annotated[int, typer.Option("--epochs", help="Training epochs (the best one on the validation spots is kept).", rich_help_panel=_OPT)] = _train_default("epochs"),
    lr: Annotated[float, typer.Option("--lr", help="Learning rate.", rich_help_panel=_OPT)] = _train_default("lr"),
    optimizer: Annotated[str, typer.Option("--optimizer", help="sgd (paper, momentum 0.9) | adamw", rich_help_panel=_OPT)] = _train_default("optimizer"),
    momentum: Annotated[float, typer.Option("--momentum", help="SGD momentum.", rich_help_panel=_OPT)] = _train_default("momentum"),
    weight_decay: Annotated[float, typer.Option("--weight-decay", help="Weight decay (L2).", rich_help_panel=_OPT)] = _train_default("weight_decay"),
    scheduler: Annotated[str, typer.Option("--scheduler", help="cosine | none", rich_help_panel=_OPT)] = _train_default("scheduler"),
    loss: Annotated[str, typer.Option("--loss", help="Loss weights preset: paper | reference", rich_help_panel=_OPT)] = _train_default("loss"),
    minibatch_above: Annotated[int, typer.Option("--minibatch-above", help="Graphs with more spots train one step per spatial block and infer block by block (train/batching.py); 0 = always.", rich_help_panel=_OPT)] = _train_default("minibatch_above"),
    block_spots: Annotated[int, typer.Option("--block-spots", help="Spots per block in that mode (memory grows with it).", rich_help_panel=_OPT)] = _train_default("block_spots"),
    memory_gb: Annotated[float | None, typer.Option(
        "--memory-gb", help="Memory budget of a training step (GB): chooses whole graph or "
        "spatial blocks and the block size (replaces --minibatch-above/--block-spots).",
        rich_help_panel=_OPT)] = None,
    hidden: Annotated[int, typer.Option("--hidden", help="Hidden width of the fusion, GAT and transformer layers.", rich_help_panel=_MODEL)] = _train_default("hidden"),
    heads: Annotated[int, typer.Option("--heads", help="Attention heads per GAT layer.", rich_help_panel=_MODEL)] = _train_default("heads"),
    dropout: Annotated[float, typer.Option("--dropout", help="Dropout rate.", rich_help_panel=_MODEL)] = _train_default("dropout"),
    gnn: Annotated[str, typer.Option("--gnn", help="GAT engine: dgl (CPU default) | pyg (CUDA)", rich_help_panel=_MODEL)] = _train_default("gnn"),
    cli_iters: Annotated[int, typer.Option("--cli-iters", help="Propagation steps of the CLI block.", rich_help_panel=_MODEL)] = _train_default("cli_iters"),
    spatial_prior: Annotated[bool, typer.Option("--spatial-prior/--no-spatial-prior", help="CLI also blends the IDW prior of the known layer (off = the paper's CLI).", rich_help_panel=_MODEL)] = _train_default("cli_spatial_prior"),
    calibrate_gate: Annotated[bool, typer.Option("--calibrate-gate/--no-calibrate-gate", help="After training, choose the CLI blend weights on the held-out validation spots (train/calibrate.py).", rich_help_panel=_MODEL)] = _train_default("calibrate_gate"),
    ablate: Annotated[str | None, typer.Option("--ablate", help="Remove parts of asign3d for an ablation, comma-separated: cross-attention, gat, cli.", rich_help_panel=_MODEL)] = None,
    per_node_gate: Annotated[bool, typer.Option("--per-node-gate", help="CLI gate per gene and spot instead of per gene.", rich_help_panel=_MODEL)] = _train_default("cli_per_node_gate"),
    feature_norm: Annotated[str, typer.Option("--feature-norm", help="section (z-score embeddings per section) | none", rich_help_panel=_MODEL)] = _train_default("feature_norm"),
    finetune_spot_encoder: Annotated[bool, typer.Option("--finetune-spot-encoder", help="Train the store's spot encoder on its stored patches (meant for a GPU).", rich_help_panel=_MODEL)] = False,
    finetune_batch: Annotated[int, typer.Option("--finetune-batch", help="Spots re-encoded with gradients per step when fine-tuning.", rich_help_panel=_MODEL)] = _train_default("finetune_batch"),
    device: Annotated[str, typer.Option("--device", help="cpu or cuda.", rich_help_panel=_RUN)] = "cpu",
    threads: Annotated[int | None, typer.Option("--threads", help="Torch CPU threads per run. Default on CPU (asign3d, asign2d, cli): the cores idle when the run starts (usable cores − 1-min load average, ≥ 1; a heuristic, not a measurement), recorded in the run's config; beside another job torch's all-cores default measured 6× slower than 1 thread (bench/threads.py). Pass it to fix the count across reruns. With --workers N: cores // N; with --scheduler: the worker's threads.", rich_help_panel=_RUN)] = None,
    seed: Annotated[str, typer.Option("--seed", help="Random seed (runs are deterministic); a comma-separated list (0,1,2) runs each.", rich_help_panel=_RUN)] = "0",
    resume: Annotated[bool, typer.Option("--resume", help="Continue an interrupted run from its checkpoint.", rich_help_panel=_RUN)] = False,
    coverage: Annotated[float, typer.Option("--coverage", help="Per-spot, per-gene intervals at this coverage, calibrated on known spots (0 = none).", rich_help_panel=_PROTO)] = _train_default("coverage"),
    workers: WorkersOpt = 0,
    dask_scheduler: SchedulerOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Train and evaluate a model (or baseline) on a feature store; results go to the store.

    Several models and/or seeds make several independent runs: one after another, or at
    once as Dask tasks with --workers N / --scheduler ADDRESS."""
    from asign.commands.train import parse_seeds, print_metrics, summaries, train_runs
    from asign.train.config import TrainConfig

    models, seeds = _split(model) or ("",), parse_seeds(seed)
    cfg = TrainConfig(
        store=store, model=models[0], run=run, known=known, folds=folds, samples=_split(samples),
        extra_2d=_split(extra_2d), episode_known_fraction=episode_known_fraction,
        val_fraction=val_fraction, epochs=epochs, lr=lr, optimizer=optimizer,
        momentum=momentum, weight_decay=weight_decay, scheduler=scheduler, loss=loss,
        hidden=hidden, heads=heads, dropout=dropout, gnn=gnn, cli_iters=cli_iters,
        cli_spatial_prior=spatial_prior, calibrate_gate=calibrate_gate,
        cli_per_node_gate=per_node_gate, ablate=_split(ablate),
        feature_norm=feature_norm, finetune_spot_encoder=finetune_spot_encoder,
        finetune_batch=finetune_batch, device=device, threads=threads, seed=seeds[0], coverage=coverage,
        resume=resume, minibatch_above=minibatch_above, block_spots=block_spots,
        memory_gb=memory_gb,
    )
    results, dispatched = train_runs(cfg, models, seeds, workers=workers, scheduler=dask_scheduler)
    if as_json:
        _emit_json(summaries(results, dispatched))
    else:
        for r in results:
            print_metrics(store, r)
    if dispatched and any(not hasattr(r, "summary") for r in results):  # a failed run was reported
        raise typer.Exit(1)


@_command(cls=_Command)
def query(
    sql: Annotated[str, typer.Argument(help="SQL over the views sections, spots, genes, labels, transforms, tiles, spot_tiles, embeddings, edges, runs, metrics, predictions.")],
    store: StoreOpt,
    fmt: Annotated[str, typer.Option("--format", "-f", parser=_choice(_query_formats), help="How the result is printed: table, json or csv.")] = "table",
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Save the result to FILE instead of printing it (.csv, .json or .parquet by extension; written atomically, never inside the store).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Run read-only SQL (DuckDB) over the store and its results. Only SELECT/EXPLAIN run;
    the connection sees nothing but the store's views."""
    from asign.commands.query import print_result, run_query

    result = run_query(store, sql, out)
    if out is None:
        print_result(result, "json" if as_json else fmt)
    else:
        typer.echo(f"{result.num_rows} row(s) written to {out}", err=True)


@_command(cls=_Command)
def plan(
    store: StoreOpt,
    budget: Annotated[int, typer.Option("--budget", min=1, max=3, help="How many sections to measure (ST).")] = 1,
    sample: Annotated[str | None, typer.Option("--sample", help="One sample (default: every sample).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Rank which section(s) to send for ST, from images and alignment alone (train/plan.py)."""
    from asign.train.plan import plan as make_plan

    result = make_plan(store, budget=budget, sample=sample)
    if as_json:
        _emit_json(result)
        return
    for sid, rows in result["samples"].items():
        typer.echo(f"sample {sid} (budget {budget}):")
        for r in rows:
            typer.echo(f"  {r['rank']:>2}. {','.join(r['known']):<16} score {r['score']:.4f}")


@_command(cls=_Command)
def check(store: StoreOpt, as_json: JsonOpt = False) -> None:
    """Verify a store: manifest and input hashes, schema versions, LMDB entries against the
    tables, edge endpoints. Exits 1 with the full list of problems."""
    from asign.store import open_store
    from asign.store.check import inspect_store

    report_ = inspect_store(open_store(store))
    problems = report_.problems
    if as_json:
        _emit_json({"store": str(store), "ok": not problems, "problems": problems, "notes": report_.notes})
    else:
        for p in problems:
            typer.echo(f"problem: {p}", err=True)
        for note in report_.notes:
            typer.echo(f"note: {note}", err=True)
        typer.echo(f"{store}: {'ok' if not problems else f'{len(problems)} problem(s)'}")
    if problems:
        raise typer.Exit(1)


@_command(cls=_Command)
def report(
    store: StoreOpt,
    run: Annotated[str, typer.Option("--run", "-r", help="Run name to report on.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder (report.html + PNGs).")],
    genes: Annotated[str | None, typer.Option("--genes", help="Genes to map, comma-separated (default: ERBB2, MDK + best/worst predicted).")] = None,
    model: Annotated[str | None, typer.Option("--model", "-m", help="Run drawn on the maps (default: asign3d if present).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Spatial maps, metrics beside the mean baseline, 3D view: one self-contained report.html."""
    from asign.commands.export import report_command

    summary = report_command(store, run, out, genes=genes, model=model)
    if as_json:
        _emit_json(summary)
    else:
        typer.echo(summary["report"])


@_command(cls=_Command)
def export(
    store: StoreOpt,
    run: Annotated[str, typer.Option("--run", "-r", help="Run name to export.")],
    h5ad: Annotated[Path | None, typer.Option("--h5ad", help="Output .h5ad file (AnnData: X in log1p(CP10k), layers counts/asign/measured).")] = None,
    spatialdata: Annotated[Path | None, typer.Option("--spatialdata", help="Output .zarr folder (SpatialData: aligned H&E stack, spot circles, the AnnData as table).")] = None,
    ome_tiff: Annotated[Path | None, typer.Option("--ome-tiff", help="Output .ome.tif: the aligned H&E stack (Z×Y×X RGB, µm), one file per sample.")] = None,
    z_spacing_um: Annotated[float | None, typer.Option("--z-spacing-um", help="Distance between consecutive sections in µm for the image stack (default: the spacing recorded at ingest, --section-um).")] = None,
    model: Annotated[str | None, typer.Option("--model", "-m", help="Run exported (default: asign3d if present).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Write the imputed volume as AnnData (.h5ad, scanpy/squidpy-ready), SpatialData
    (.zarr, with the aligned H&E stack) and/or the aligned stack as OME-TIFF."""
    from asign.commands.export import export_command

    summary = export_command(store, run, h5ad, model=model, spatialdata=spatialdata,
                             ome_tiff=ome_tiff, z_spacing_um=z_spacing_um)
    if as_json:
        _emit_json(summary)
    else:
        for key in ("h5ad", "spatialdata"):
            if key in summary:
                typer.echo(summary[key])
        for path in summary.get("ome_tiff", []):
            typer.echo(path)


@_command(cls=_Command)
def demo(
    out: Annotated[Path, typer.Option("--out", help="Folder for the synthetic sample and its store.")] = Path("asign-demo"),
    layers: Annotated[int, typer.Option("--layers", min=2, help="Number of synthetic sections (at least 2: one known, one to impute).")] = 4,
    seed: SeedOpt = 0,
    train_too: Annotated[bool, typer.Option("--train/--no-train", help="Also train and evaluate models on the demo store.")] = True,
    as_json: JsonOpt = False,
) -> None:
    """Generate a small synthetic 3D sample and run the pipeline on it (offline, seconds)."""
    from asign.commands.demo import run_demo

    summary = run_demo(out, layers=layers, seed=seed, train=train_too)
    if as_json:
        _emit_json(summary)


@_command(cls=_Command)
def doctor(as_json: JsonOpt = False) -> None:
    """Preflight: check each native piece and the encoder weights; print the fix for each failure."""
    from asign.commands.doctor import print_checks, run_checks

    results = run_checks()
    if as_json:
        _emit_json([r.__dict__ for r in results])
    else:
        print_checks(results)
    if any(not r.ok and not r.optional for r in results):
        raise typer.Exit(1)


if __name__ == "__main__":
    app()
