"""Every configuration option declared once, on the config field it sets.

A field of ``IngestConfig`` or ``TrainConfig`` carries an :class:`Option` in its dataclass
metadata: its flag, help, choices (read from the registry that owns them), bounds, its
group in ``--help`` and its role in the run identity. The typer options
(``commands/cli_options.py``), the per-field checks of ``validate()`` and ``identity()``
are generated from it, so an option added here is on the CLI, checked and fingerprinted
without touching another file. A word used by several commands is declared once in
:data:`SHARED` and means one thing everywhere."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import MISSING, Field, dataclass, field, fields, is_dataclass
from typing import Any

OPTION = "asign.option"  # the dataclass-metadata key that holds a field's Option

# identity roles: which fields decide a run's result (and therefore its id)
IDENTITY_ROLES = ("run", "network", "model", "never")


@dataclass(frozen=True)
class Option:
    """How one config field is set and checked.

    ``identity``: ``run`` — every run's id depends on it; ``network`` — only a network's
    (a baseline cannot read optimiser settings); ``model`` — only the runs of models whose
    ``ModelSpec.reads`` names it; ``never`` — how a run executes, not what it computes.
    ``legacy_default``: left out of the identity at its default, so ids recorded before the
    option existed stay valid."""

    help: str
    flag: str | None = None  # None: "--" + the field name with "-" for "_"
    short: str | None = None
    group: str | None = None  # the panel of --help
    meaning: str | None = None  # what the word means across commands (SHARED); else help
    choices: Callable[[], Iterable[str]] | None = None  # the owning registry, read lazily
    strict: bool = False  # choices checked while parsing (usage error, exit 2)
    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    identity: str = "run"
    legacy_default: bool = False
    cli: bool = True  # False: internal (set by code, listed in --help nowhere)
    negatable: bool = False  # a bool written --x/--no-x
    listed: bool = False  # comma-separated on the CLI, a tuple in the config
    each: bool = False  # comma-separated on the CLI: one run per value
    repeat: bool = False  # repeatable on the CLI; ``parse`` turns the list into the value
    parse: Callable[[Any], Any] | None = None  # the CLI string (or list) → the config value
    envvar: str | None = None
    argument: bool = False  # a positional argument, not an option
    metavar: str | None = None
    deprecated: tuple[str, ...] = ()  # old spellings, still accepted with a warning

    def __post_init__(self) -> None:
        if self.identity not in IDENTITY_ROLES:
            raise ValueError(f"identity {self.identity!r} is not one of {IDENTITY_ROLES}")

    def with_(self, **changes: Any) -> Option:
        return dataclasses.replace(self, **changes)

    def flag_for(self, name: str) -> str:
        return self.flag or "--" + name.replace("_", "-")

    @property
    def sense(self) -> str:
        return self.meaning or self.help


def opt(default: Any = MISSING, *, factory: Callable[[], Any] | None = None,
        **option: Any) -> Any:
    """A dataclass field with its :class:`Option` (``opt(250, help=...)``)."""
    meta = {OPTION: option.pop("shared") if "shared" in option else Option(**option)}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


def shared(flag: str, default: Any = MISSING, **changes: Any) -> Any:
    """A field set by a word that several commands use: its meaning comes from SHARED."""
    option = SHARED[flag].with_(**changes) if changes else SHARED[flag]
    return opt(default, shared=option)


def option_of(f: Field[Any]) -> Option | None:
    return f.metadata.get(OPTION)


@dataclass(frozen=True)
class Declared:
    """One option of a config class: its dotted path (``align.transform``) and record."""

    path: tuple[str, ...]
    field: Field[Any]
    option: Option
    owner: type

    @property
    def name(self) -> str:  # the CLI parameter's name (a valid identifier)
        return "__".join(self.path)

    @property
    def flag(self) -> str:
        return self.option.flag_for(self.path[-1])

    @property
    def default(self) -> Any:
        if self.field.default is not MISSING:
            return self.field.default
        if self.field.default_factory is not MISSING:
            return self.field.default_factory()
        return MISSING


def declared(cls: type, prefix: tuple[str, ...] = ()) -> Iterator[Declared]:
    """Every option of ``cls``, nested option groups (a dataclass-valued field without an
    Option, such as ``IngestConfig.align``) flattened in field order."""
    for f in fields(cls):
        option = option_of(f)
        if option is not None:
            yield Declared((*prefix, f.name), f, option, cls)
        elif f.default_factory is not MISSING and is_dataclass(inner := f.default_factory()):
            yield from declared(type(inner), (*prefix, f.name))


def undeclared(cls: type) -> list[str]:
    """Fields that carry no Option (and are no nested option group): each is a gap."""
    out = []
    for f in fields(cls):
        if option_of(f) is not None:
            continue
        inner = f.default_factory() if f.default_factory is not MISSING else None
        if is_dataclass(inner):
            out += [f"{f.name}.{n}" for n in undeclared(type(inner))]
        else:
            out.append(f.name)
    return out


def value_at(cfg: Any, path: tuple[str, ...]) -> Any:
    for part in path:
        cfg = getattr(cfg, part)
    return cfg


def _bound_problem(flag: str, value: Any, o: Option) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    low = (o.ge, "[") if o.ge is not None else (o.gt, "(") if o.gt is not None else None
    high = (o.le, "]") if o.le is not None else (o.lt, ")") if o.lt is not None else None
    ok = math.isfinite(value) and all((
        o.ge is None or value >= o.ge, o.gt is None or value > o.gt,
        o.le is None or value <= o.le, o.lt is None or value < o.lt))
    if ok:
        return None
    if low and high:
        return f"{flag} must lie in {low[1]}{_num(low[0])}, {_num(high[0])}{high[1]}, got {value}"
    if low:
        return f"{flag} must be {'≥' if low[1] == '[' else '>'} {_num(low[0])}, got {value}"
    assert high is not None  # ok is False only when some bound exists
    return f"{flag} must be {'≤' if high[1] == ']' else '<'} {_num(high[0])}, got {value}"


def _num(x: float | None) -> str:
    return f"{x:g}" if x is not None else ""


def problems(cfg: Any) -> list[str]:
    """The per-field checks every declared option gets: its choices and its bounds."""
    out: list[str] = []
    for d in declared(type(cfg)):
        value, o = value_at(cfg, d.path), d.option
        if value is None:
            continue
        items = value if isinstance(value, tuple) and o.listed else (value,)
        if o.choices is not None:
            allowed = tuple(o.choices())
            if o.listed and any(v not in allowed for v in items):
                out.append(f"{d.flag} {','.join(items)!r} must be a subset of "
                           f"{','.join(allowed)}")
            elif not o.listed and value not in allowed:
                out.append(f"{d.flag} {value!r} is not one of {', '.join(allowed)}")
        for v in items:
            if (p := _bound_problem(d.flag, v, o)) is not None:
                out.append(p)
    return out


def identity(cfg: Any, keep: Callable[[Declared], bool]) -> dict[str, Any]:
    """The declared fields that decide the result: ``keep`` says which roles apply to
    this run (``never`` fields are always left out)."""
    out: dict[str, Any] = {}
    for f in fields(cfg):
        option = option_of(f)
        if option is None:
            inner = getattr(cfg, f.name)
            if is_dataclass(inner):  # a nested group enters whole (its fields are run-role)
                out[f.name] = dataclasses.asdict(inner)
            continue
        d = Declared((f.name,), f, option, type(cfg))
        value = getattr(cfg, f.name)
        if option.identity == "never" or not keep(d):
            continue
        if option.legacy_default and value == d.default:
            continue
        out[f.name] = value
    return out


# Words more than one command uses: each means one thing (the test of the CLI checks that
# no flag is declared twice with two meanings).
SHARED: dict[str, Option] = {o.flag or "": o for o in (
    Option(flag="--store", short="-s", help="Feature store directory.", envvar="ASIGN_STORE",
           identity="never"),
    Option(flag="--seed", help="Random seed (runs are deterministic).",
           meaning="the random seed"),
    Option(flag="--device", help="Where torch runs.", identity="network",
           meaning="the torch device"),
    Option(flag="--threads", group="Runtime", identity="never", ge=1,
           meaning="torch CPU threads of this process",
           help="Torch CPU threads. Default: the cores idle at start (usable cores − 1-min "
                "load average, ≥ 1), recorded in the config; beside other jobs torch's "
                "all-cores default measured several times slower (bench/threads.py, "
                "bench/scale.py). With --workers N: cores // N."),
    Option(flag="--workers", group="Cluster", identity="never", ge=0,
           help="Run the independent tasks on a local Dask cluster of N worker processes "
                "(cores // N threads each); 0 = serial in this process."),
    Option(flag="--scheduler", group="Cluster", identity="never", envvar="ASIGN_SCHEDULER",
           meaning="the address of a running Dask scheduler",
           help="Address of a running Dask scheduler to run the tasks on, e.g. a "
                "dask-jobqueue SLURMCluster's (see the cluster page of the docs)."),
    Option(flag="--samples", help="Sample ids (or a glob), comma-separated.",
           meaning="the samples this command works on"),
    Option(flag="--extra-2d", listed=True,
           help="Single-section samples used as extra 2D training data, never scored (e.g. B).",
           meaning="samples used as 2D training data only"),
    Option(flag="--encoder", help="Encoder from the registry (see `asign doctor`).",
           meaning="a name from the encoder registry"),
    Option(flag="--genes", listed=True, meaning="gene names, comma-separated",
           help="Genes, comma-separated."),
    Option(flag="--run", short="-r", help="Run name (results are grouped by it).",
           meaning="the run name"),
    Option(flag="--model", short="-m", help="Model from the registry.",
           meaning="a name from the model registry"),
    Option(flag="--out", short="-o", help="Where the output is written.",
           meaning="the path this command writes"),
    Option(flag="--format", help="Data layout, by name.", strict=True,
           meaning="a data layout by name, from this command's registry of layouts "
                   "(ingest: the input readers; query: the printed formats)"),
    Option(flag="--wait", group="Runtime", identity="never", ge=0,
           meaning="seconds to wait for the store's lock",
           help="Seconds to wait while another command holds this store's lock (an ingest "
                "writing it; for ingest also a train reading it), then fail naming the "
                "holder."),
    Option(flag="--json", help="Print a machine-readable JSON summary on stdout.",
           identity="never"),
)}
