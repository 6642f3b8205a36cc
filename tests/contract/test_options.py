"""Options are declared once (options.py): every config field is on the CLI or
listed as internal, one option word means one thing in every command, --help shows the
config's defaults, and the CLI builds exactly the config its options describe."""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Any

import click
import pytest
import typer
from typer.testing import CliRunner
from typer.utils import get_params_from_function

from asign.cli import app
from asign.commands.cli_options import build, config_command
from asign.ingest.config import AlignOptions, IngestConfig
from asign.options import MISSING, Declared, declared, opt, undeclared
from asign.train.config import MODELS, TrainConfig

runner = CliRunner()
CONFIGS = {"ingest": IngestConfig, "train": TrainConfig}


def _commands(group: click.Group) -> dict[str, click.Command]:
    ctx = click.Context(group)
    return {name: group.get_command(ctx, name) for name in group.list_commands(ctx)}


def _senses(cmd: click.Command) -> dict[str, str]:
    """flag → what it means in this command: its declared Option's meaning, else its help."""
    metas = get_params_from_function(cmd.callback)
    out: dict[str, str] = {}
    for p in cmd.params:
        if getattr(p, "param_type_name", "") != "option" or p.hidden:
            continue
        option = getattr(metas[p.name].default, "asign_option", None)
        sense = option.sense if option is not None else (p.help or p.name)
        for flag in [*p.opts, *p.secondary_opts]:
            assert flag not in out, f"{cmd.name}: {flag} declared twice in one command"
            out[flag] = sense
    return out


def _meaning_clashes(commands: dict[str, click.Command]) -> dict[str, set[str]]:
    seen: dict[str, set[str]] = {}
    for cmd in commands.values():
        for flag, sense in _senses(cmd).items():
            seen.setdefault(flag, set()).add(sense)
    return {flag: senses for flag, senses in seen.items() if len(senses) > 1}


def test_every_config_field_is_declared():
    assert undeclared(IngestConfig) == [] and undeclared(TrainConfig) == []


def test_every_declared_option_is_on_its_command():
    commands = _commands(typer.main.get_command(app))
    for name, cls in CONFIGS.items():
        names = {p.name for p in commands[name].params}
        missing = [d.name for d in declared(cls) if d.option.cli and d.name not in names]
        assert missing == [], f"asign {name} lacks {missing}"


def test_an_undeclared_field_is_found():
    @dataclasses.dataclass(frozen=True)
    class Planted:
        a: int = opt(1, help="declared")
        b: int = 2  # no Option, not internal: a gap

    assert undeclared(Planted) == ["b"]


def test_one_option_word_has_one_meaning_across_commands():
    commands = _commands(typer.main.get_command(app))
    assert len(_senses(commands["train"])) > 50 and "--scheduler" in _senses(commands["ingest"])
    assert _meaning_clashes(commands) == {}


def test_a_word_with_two_meanings_is_found():
    # the old `asign train`: the learning-rate schedule on --scheduler, Dask's in ingest
    planted = typer.Typer()

    @planted.command()
    def ingest(scheduler: str = typer.Option(None, "--scheduler", help="Dask address.")):
        """."""

    @planted.command()
    def train(lr: str = typer.Option("cosine", "--scheduler", help="cosine | none")):
        """."""

    assert set(_meaning_clashes(_commands(typer.main.get_command(planted)))) == {"--scheduler"}


def _shown_default(p: click.Parameter) -> Any:
    return p.show_default if isinstance(p.show_default, str) else p.default


def _config_default(d: Declared) -> Any:
    o, default = d.option, d.default
    if o.listed and isinstance(default, tuple):
        return ",".join(map(str, default)) or None
    if o.each:
        return str(default)
    if o.repeat:
        return None
    return default


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_help_defaults_are_the_config_defaults(name):
    cmd = _commands(typer.main.get_command(app))[name]
    params = {p.name: p for p in cmd.params}
    for d in declared(CONFIGS[name]):
        if not d.option.cli or d.option.argument or d.default is MISSING:
            continue
        assert _shown_default(params[d.name]) == _config_default(d), d.name


def _other_value(d: Declared, hint: Any, tmp: Path) -> tuple[list[str], Any]:
    """argv that sets ``d`` to a value other than its default, and that value."""
    o, default, flag = d.option, d.default, d.flag
    if o.repeat:
        return [flag, "C4:C3:-12:flip"], {"C4:C3": (-12.0, True)}
    if o.choices is not None and not o.listed:
        value = next(c for c in reversed(tuple(o.choices())) if c != default)
        return [flag, value], value
    if o.listed:
        items = tuple(o.choices())[-2:] if o.choices is not None else ("A1", "B2")
        return [flag, ",".join(items)], tuple(items)
    base = typing.get_args(hint)[0] if typing.get_args(hint) else hint
    if base is bool:
        return ([f"--no-{flag[2:]}"] if default else [flag]), not default
    if base is int:
        value = (default or 1) + 1
        return [flag, str(value)], value
    if base is float:
        value = 0.5 if default != 0.5 else 0.25
        return [flag, str(value)], value
    if base is Path:
        return [flag, str(tmp / d.name)], tmp / d.name
    value = f"{d.name}x1"
    return [flag, value], value


def _round_trip(cls: type, fixed: dict[str, Any], tmp: Path) -> tuple[list[str], dict]:
    hints = {c: typing.get_type_hints(c) for c in (cls, AlignOptions)}
    argv, expect = [], {}
    for d in declared(cls):
        if not d.option.cli or d.option.argument or d.name in fixed:
            continue
        args, value = _other_value(d, hints[d.owner][d.path[-1]], tmp)
        argv += args
        expect[d.name] = value
    return argv, expect


def test_ingest_cli_builds_exactly_the_config_of_every_option(tmp_path, monkeypatch):
    seen = {}
    monkeypatch.setattr("asign.ingest.run", lambda cfg: seen.setdefault("cfg", cfg) and {})
    argv, expect = _round_trip(IngestConfig, {"scheduler": None}, tmp_path)
    result = runner.invoke(app, ["ingest", str(tmp_path), *argv])
    assert result.exit_code == 0, result.output
    align = {k.split("__")[1]: v for k, v in expect.items() if k.startswith("align__")}
    rest = {k: v for k, v in expect.items() if not k.startswith("align__")}
    assert seen["cfg"] == IngestConfig(sources=(tmp_path,), align=AlignOptions(**align), **rest)
    assert len(expect) >= 30  # every option moved off its default in one command


def test_train_cli_builds_exactly_the_config_of_every_option(tmp_path, monkeypatch):
    seen = {}

    def fake_runs(cfg, models, seeds, *, workers, scheduler):
        seen.update(cfg=cfg, models=models, seeds=seeds, workers=workers, scheduler=scheduler)
        return [], False

    monkeypatch.setattr("asign.commands.train.train_runs", fake_runs)
    argv, expect = _round_trip(TrainConfig, {"model": 0, "seed": 0, "dask_scheduler": 0},
                               tmp_path)
    result = runner.invoke(app, ["train", *argv, "--model", "idw,mean", "--seed", "3,4"])
    assert result.exit_code == 0, result.output
    assert seen["cfg"] == TrainConfig(model="idw", seed=3, **expect)
    assert seen["models"] == ("idw", "mean") and seen["seeds"] == [3, 4]
    assert seen["workers"] == expect["workers"] and seen["scheduler"] is None


@pytest.mark.parametrize("value", ["cosine", "none"])
def test_old_scheduler_spelling_of_the_lr_schedule_warns_and_works(tmp_path, value):
    values = {"store": tmp_path, "dask_scheduler": value}
    parsed = build(TrainConfig, values)
    assert parsed.config.scheduler == value and parsed.config.dask_scheduler is None
    result = runner.invoke(app, ["train", "--store", str(tmp_path), "--scheduler", value,
                                 "--model", "nope"])
    assert "deprecated" in result.output and "--lr-scheduler" in result.output
    assert "Traceback" not in result.output and "port" not in result.output
    assert result.exit_code == 1 and "--model 'nope'" in result.output  # it got to validation


def test_scheduler_address_still_means_dask(tmp_path, monkeypatch):
    seen = {}
    monkeypatch.setattr("asign.commands.train.train_runs",
                        lambda cfg, *a, **kw: seen.update(kw) or ([], False))
    result = runner.invoke(app, ["train", "--store", str(tmp_path),
                                 "--scheduler", "tcp://10.0.0.1:8786"])
    assert result.exit_code == 0, result.output
    assert seen["scheduler"] == "tcp://10.0.0.1:8786" and "deprecated" not in result.output


def test_a_free_old_spelling_is_a_hidden_alias_that_warns(tmp_path):
    @dataclasses.dataclass(frozen=True)
    class Cfg:
        store: Path = opt(help="store")
        width: int = opt(3, help="Width.", flag="--width", deprecated=("--wide",))

    seen = {}

    @config_command(Cfg)
    def cmd(parsed):
        """."""
        seen["cfg"] = parsed.config

    planted = typer.Typer()
    planted.command()(cmd)
    result = runner.invoke(planted, ["--store", str(tmp_path), "--wide", "5"])
    assert result.exit_code == 0, result.output
    assert seen["cfg"] == Cfg(store=tmp_path, width=5) and "use --width" in result.output
    assert "--wide" not in runner.invoke(planted, ["--help"]).output


def test_identity_holds_only_what_the_model_reads():
    base = TrainConfig(store=Path("S"))
    assert "similarity_k" not in base.identity() and "idw_k" in base.identity()
    assert base.identity() == base.with_(similarity_k=5, threads=3, resume=True).identity()
    sim = base.with_(model="similarity")
    assert sim.identity() != sim.with_(similarity_k=5).identity()
    assert "lr" not in sim.identity() and "lr" in base.identity()
    for spec in MODELS.values():  # a model reads only fields that exist
        assert set(spec.reads) <= {f.name for f in dataclasses.fields(TrainConfig)}


def test_bounds_and_choices_come_from_the_declarations():
    from asign.errors import ConfigError
    from asign.train.config import validate

    with pytest.raises(ConfigError) as err:
        validate(TrainConfig(store=Path("S"), lr=0, dropout=1.0, gnn="tf", idw_k=0))
    text = str(err.value)
    assert "4 problem(s)" in text and "--lr must be > 0" in text
    assert "--dropout must lie in [0, 1)" in text and "--gnn 'tf'" in text and "--idw-k" in text


def _fingerprinted_ingest_fields() -> set[str]:
    """The IngestConfig fields the step fingerprints read (recorded by attribute access)."""
    from asign.ingest.step_register import register_fingerprint
    from asign.ingest.steps import PIPELINE

    cfg = IngestConfig(sources=(Path("x"),), store=Path("S"), encoder="effnet-lite0")
    read: set[str] = set()

    class Recorder:
        def __getattr__(self, name: str) -> Any:
            read.add(name)
            return getattr(cfg, name)

    for step in PIPELINE:
        step.params(Recorder())
    register_fingerprint(Recorder(), [], {})
    return read


def test_ingest_identity_roles_are_what_the_fingerprints_read():
    # an option declared to change the store must redo its step when changed, and one
    # declared not to must not: the roles and the fingerprints agree field by field
    read = _fingerprinted_ingest_fields()
    for d in declared(IngestConfig):
        fingerprinted = d.path[0] in read
        assert fingerprinted == (d.option.identity != "never"), d.name


def test_every_model_role_field_is_read_by_a_model():
    model_role = {d.name for d in declared(TrainConfig) if d.option.identity == "model"}
    assert model_role == {f for spec in MODELS.values() for f in spec.reads}
