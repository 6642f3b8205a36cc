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

from asign.commands.cli_options import CHOICES, Parsed, config_command, fill_choices, shared_option
from asign.commands.export import ExportConfig
from asign.ingest.config import IngestConfig
from asign.train.config import TrainConfig


def _flags_read_as_flags(params: list[Any], callback: Any) -> list[Any]:
    """typer labels every option with its type, so a flag such as --json shows ``<bool>``
    as if it took a value; an empty metavar leaves flags (and --help) bare. An option with
    choices gets the owning registry's names in its help here, when the command runs or
    shows --help: reading the registries at import would load them for every command."""
    for p in params:
        if getattr(p, "is_flag", False) and p.metavar is None:
            p.metavar = ""
    if callback is not None and any(CHOICES in (getattr(p, "help", None) or "") for p in params):
        from typer.utils import get_params_from_function

        declared = {name: meta.default.asign_option
                    for name, meta in get_params_from_function(callback).items()
                    if hasattr(meta.default, "asign_option")}
        fill_choices(params, declared)
    return params


class _Command(TyperCommand):
    def get_params(self, ctx: Any) -> list[Any]:
        return _flags_read_as_flags(super().get_params(ctx), self.callback)


class _Group(TyperGroup):
    def get_params(self, ctx: Any) -> list[Any]:
        return _flags_read_as_flags(super().get_params(ctx), None)


app = typer.Typer(
    name="asign",
    cls=_Group,
    help="3D spatial transcriptomics from H&E stacks plus one measured ST section (ASIGN).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

StoreOpt = Annotated[Path, shared_option("--store")]
JsonOpt = Annotated[bool, shared_option("--json")]
RunOpt = Annotated[str, shared_option("--run")]

log = logging.getLogger("asign")


@app.callback()
def main(
    verbose: Annotated[int, typer.Option(
        "--verbose", "-v", count=True,
        help="Debug log output (the default already logs each step).")] = 0,
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
            except (MemoryError, RuntimeError) as err:  # the host's limit, named in one line
                from asign.errors import out_of_memory

                if (mem := out_of_memory(err)) is None:
                    raise
                raise _fail(mem) from None
            finally:
                _AS_JSON.reset(token)

        return app.command(*args, **kwargs)(run)

    return register


def _emit_json(payload: Any) -> None:
    from asign.store.query import strict_json

    typer.echo(strict_json(payload))


@_command(cls=_Command)
@config_command(IngestConfig)
def ingest(parsed: Parsed, as_json: JsonOpt = False) -> None:
    """Register, align, crop, embed and graph a sample into a feature store.

    With --workers N / --scheduler ADDRESS the units of work (align per sample, patches and
    embeddings per section, graph per sample) run as Dask tasks; this process alone writes
    the store, so resume, fingerprints and `asign check` are as in a serial run."""
    from asign import ingest as ingest_stage

    summary = ingest_stage.run(parsed.config)  # validates every option before any work
    if as_json:
        _emit_json(summary)


@_command(cls=_Command)
@config_command(TrainConfig)
def train(parsed: Parsed, as_json: JsonOpt = False) -> None:
    """Train and evaluate a model (or baseline) on a feature store; results go to the store.

    Several models and/or seeds make several independent runs: one after another, or at
    once as Dask tasks with --workers N / --scheduler ADDRESS."""
    from asign.commands.train import print_metrics, summaries, train_runs

    cfg = parsed.config
    results, dispatched = train_runs(cfg, parsed.each["model"], list(parsed.each["seed"]),
                                     workers=cfg.workers, scheduler=cfg.dask_scheduler)
    if as_json:
        _emit_json(summaries(results, dispatched))
    else:
        for r in results:
            print_metrics(cfg.store, r)
    if dispatched and any(not hasattr(r, "summary") for r in results):  # a failed run
        raise typer.Exit(1)


def _query_formats() -> tuple[str, ...]:
    from asign.commands.query import FORMATS

    return FORMATS


@_command(cls=_Command)
def query(
    sql: Annotated[str, typer.Argument(help="SQL over the store's views (listed below).")],
    store: StoreOpt,
    fmt: Annotated[str, shared_option("--format", short="-f", choices=_query_formats,
                                      help="How the result is printed.")] = "table",
    out: Annotated[Path | None, shared_option(
        "--out", help="Save the result to FILE instead of printing it (.csv, .json or .parquet "
                      "by extension; written atomically, never inside the store).")] = None,
    max_rows: Annotated[int, typer.Option(
        "--max-rows", min=0,
        help="Rows a table shows (0 = all); --out or --format csv/json give all.")] = 1000,
    memory_limit: Annotated[str | None, typer.Option(
        "--memory-limit",
        help="DuckDB's memory limit, e.g. 2GB (default: a quarter of RAM).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Run read-only SQL (DuckDB) over the store and its results. Only SELECT/EXPLAIN run;
    the connection sees nothing but the store's views."""
    from asign.commands.query import run_query

    n = run_query(store, sql, out, "json" if as_json else fmt, max_rows, memory_limit)
    if out is not None:
        typer.echo(f"{n} row(s) written to {out}", err=True)


@_command(cls=_Command)
def plan(
    store: StoreOpt,
    budget: Annotated[int, typer.Option(
        "--budget", min=1, max=3, help="How many sections to measure (ST).")] = 1,
    sample: Annotated[str | None, typer.Option(
        "--sample", help="One sample (default: every sample).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Rank which section(s) to send for ST, from images and alignment alone (train/plan.py)."""
    from asign.commands.plan import plan_command, print_plan

    result = plan_command(store, budget, sample)
    if as_json:
        _emit_json(result)
    else:
        print_plan(result, budget)


@_command(cls=_Command)
def check(store: StoreOpt,
          repair: Annotated[bool, typer.Option(
              "--repair", help="Redo in place what check flags (see docs/store.md); exits 1 if "
              "anything is left.")] = False,
          as_json: JsonOpt = False) -> None:
    """Verify a store: manifest and input hashes, schema versions, LMDB entries against the
    tables, edge endpoints, runs against the store state they were trained on. Exits 1 with
    the full list of problems; --repair first redoes in place what it can."""
    from asign.commands.check import check_command, print_check

    if repair:
        from asign.commands.repair import repair_store

        for line in repair_store(store)["repaired"]:
            typer.echo(f"repaired: {line}", err=True)
    summary = check_command(store)
    if as_json:
        _emit_json(summary)
    else:
        print_check(summary)
    if not summary["ok"]:
        raise typer.Exit(1)


@_command(cls=_Command)
def report(
    store: StoreOpt,
    run: RunOpt,
    out: Annotated[Path, shared_option("--out", help="Output folder (report.html + PNGs).")],
    genes: Annotated[str | None, shared_option(
        "--genes", help="Genes to map, comma-separated (default: ERBB2, MDK + best/worst "
                        "predicted).")] = None,
    model: Annotated[str | None, shared_option(
        "--model", help="Run drawn on the maps (default: asign3d if present).")] = None,
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
@config_command(ExportConfig)
def export(
    parsed: Parsed,
    store: StoreOpt,
    run: RunOpt,
    model: Annotated[str | None, shared_option(
        "--model", help="Run exported (default: asign3d if present).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Write the imputed volume as AnnData (.h5ad, scanpy/squidpy-ready), SpatialData
    (.zarr, with the aligned H&E stack) and/or the aligned stack as OME-TIFF."""
    from dataclasses import asdict

    from asign.commands.export import export_command

    summary = export_command(store, run, model=model, **asdict(parsed.config))
    if as_json:
        _emit_json(summary)
        return
    for key, written in summary.items():
        if key not in ("z_spacing_um", "stacks"):
            for path in written if isinstance(written, list) else [written]:
                typer.echo(path)


@_command(cls=_Command)
def demo(
    out: Annotated[Path, shared_option(
        "--out", help="Folder for the synthetic sample and its store.")] = Path("asign-demo"),
    layers: Annotated[int, typer.Option(
        "--layers", min=2,
        help="Number of synthetic sections (at least 2: one known, one to impute).")] = 4,
    seed: Annotated[int, shared_option("--seed")] = 0,
    train_too: Annotated[bool, typer.Option(
        "--train/--no-train", help="Also train and evaluate models on the demo store.")] = True,
    as_json: JsonOpt = False,
) -> None:
    """Generate a small synthetic 3D sample and run the pipeline on it (offline, seconds)."""
    from asign.commands.demo import run_demo

    summary = run_demo(out, layers=layers, seed=seed, train=train_too)
    if as_json:
        _emit_json(summary)


@_command(cls=_Command)
def doctor(as_json: JsonOpt = False) -> None:
    """Preflight: check each native piece and the encoder weights; print the fix for each
    failure."""
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
