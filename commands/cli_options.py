"""The typer options of a command, generated from its config class's declared fields.

Each field's :class:`~asign.options.Option` gives the flag, help, default, panel and
parsing; :func:`config_command` turns a function ``fn(parsed, **own_options)`` into a typer
command whose options are the config's plus the function's own, and :func:`build` turns
the parsed values back into the exact config (tested in tests/contract/test_options.py)."""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable, Iterable
from dataclasses import MISSING, dataclass, field, fields, is_dataclass
from typing import Annotated, Any

import typer

from asign.options import Declared, Option, declared, option_of

CHOICES = "{choices}"  # filled from the owning registry when the command shows --help
OPTIONS_ATTR = "__asign_options__"  # param name → Option, on every generated command


def choice_parser(load: Callable[[], Iterable[str]]) -> Callable[[str], str]:
    """A parser that accepts one of a registry's names, read when first needed (so
    ``asign --help`` does not import the registries); anything else is a usage error."""
    def parse(value: str) -> str:
        allowed = tuple(load())
        if value not in allowed:
            raise typer.BadParameter(f"{value!r} is not one of {', '.join(allowed)}")
        return value

    return parse


def typer_option(o: Option, name: str = "", *, hidden: bool = False,
                 flag: str | None = None, **overrides: Any) -> Any:
    """A typer Option (or Argument) for ``o``; ``overrides`` pass through to typer."""
    help_ = o.help + (f" Choices: {CHOICES}." if o.choices is not None else "")
    if o.argument:
        info = typer.Argument(help=help_, **overrides)
        info.asign_option = o  # type: ignore[attr-defined]  # read by the CLI's tests
        return info
    flag = flag or o.flag_for(name)
    decls = [f"{flag}/--no-{flag[2:]}" if o.negatable else flag]
    if o.short and not hidden:
        decls.append(o.short)
    kw: dict[str, Any] = {"help": help_, "rich_help_panel": o.group, "hidden": hidden}
    if o.envvar and not hidden:
        kw["envvar"] = o.envvar
    if o.metavar:
        kw["metavar"] = o.metavar
    if o.strict and o.choices is not None:
        kw["parser"] = choice_parser(o.choices)
    info = typer.Option(*decls, **{**kw, **overrides})
    info.asign_option = o  # type: ignore[attr-defined]  # read by the CLI's tests
    return info


def _shown(default: Any) -> str | bool:
    if isinstance(default, tuple):
        return ",".join(map(str, default)) or False
    return str(default)


def _parameter(d: Declared, hint: Any, *, alias: str | None = None) -> inspect.Parameter:
    """The typer parameter of one declared field (or of an old spelling of it)."""
    o, name = d.option, d.name if alias is None else f"old__{d.name}"
    overrides: dict[str, Any] = {}
    if o.argument:
        annotation: Any = list[typing.get_args(hint)[0]]
        default: Any = inspect.Parameter.empty
    elif o.listed or o.each:
        annotation, default = str | None, None
        overrides["show_default"] = False if alias else _shown(d.default)
    elif o.repeat:
        annotation, default = list[str] | None, None
    else:
        annotation, default = hint, None if alias else d.default
        if alias:
            annotation = hint | None
    if default is MISSING:
        default = inspect.Parameter.empty
    info = typer_option(o, d.path[-1], hidden=alias is not None, flag=alias, **overrides)
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default,
                             annotation=Annotated[annotation, info])


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def parameters(cls: type) -> tuple[list[inspect.Parameter], dict[str, Declared]]:
    """The typer parameters of every CLI option of ``cls`` (old spellings hidden), and the
    declared field behind each parameter name."""
    params, by_name = [], {}
    live = {d.flag for d in declared(cls) if d.option.cli}
    for d in declared(cls):
        if not d.option.cli:
            continue
        hint = _hints(d.owner)[d.path[-1]]
        params.append(_parameter(d, hint))
        by_name[d.name] = d
        for old in d.option.deprecated:
            if old not in live:  # a free old spelling: a hidden option of its own
                params.append(_parameter(d, hint, alias=old))
                by_name[f"old__{d.name}"] = d
    return params, by_name


@dataclass
class Parsed:
    """What a generated command received: the config, and the values of ``each`` options
    (one run per value; the config holds the first)."""

    config: Any
    each: dict[str, tuple[Any, ...]] = field(default_factory=dict)


def _warn(old: str, new: str, why: str = "") -> None:
    typer.echo(f"warning: {old} is deprecated, use {new}{why}", err=True)


def _items(d: Declared, raw: str, hint: Any) -> tuple[Any, ...]:
    from asign.errors import ConfigError

    items = tuple(v.strip() for v in raw.split(",") if v.strip())
    if not d.option.each:
        return items
    kind = hint if hint in (int, float) else str
    try:
        return tuple(kind(v) for v in items) if items else (d.default,)
    except ValueError:
        raise ConfigError(f"{d.flag} {raw!r} is not {'an' if kind is int else 'a'} "
                          f"{kind.__name__} or a comma-separated list of them",
                          fix=f"e.g. {d.flag} {d.default}") from None


def _moved(cls: type, values: dict[str, Any], by_flag: dict[str, Declared]) -> None:
    """An old spelling that is now another option's flag: a value that only the old
    meaning accepts (one of its choices) is read as the old option, with a warning."""
    for d in declared(cls):
        for old in d.option.deprecated:
            other = by_flag.get(old)
            value = values.get(other.name) if other else None
            if other is not None and value is not None and d.option.choices is not None \
                    and value in tuple(d.option.choices()):
                _warn(f"{old} {value}", f"{d.flag} {value}", f" ({old} is {other.option.sense})")
                values[d.name], values[other.name] = value, other.default


def build(cls: type, values: dict[str, Any]) -> Parsed:
    """The config the parsed CLI values describe (a value left out keeps its default)."""
    values = dict(values)
    by_flag = {d.flag: d for d in declared(cls) if d.option.cli}
    _moved(cls, values, by_flag)
    tree: dict[str, Any] = {}
    each: dict[str, tuple[Any, ...]] = {}
    for d in declared(cls):
        if not d.option.cli:
            continue
        raw, o = values.get(d.name), d.option
        old = values.get(f"old__{d.name}")
        if old is not None and old != []:
            _warn(o.deprecated[0], d.flag)
            raw = old if raw in (None, d.default) else raw
        if raw is None or (o.repeat and not raw):
            value = d.default
        elif o.argument:
            value = tuple(raw)
        elif o.listed or o.each:
            items = _items(d, raw, _hints(d.owner)[d.path[-1]])
            value = items[0] if o.each else items
            if o.each:
                each[d.name] = items
        elif o.parse is not None:
            value = o.parse(raw)
        else:
            value = raw
        if o.each and d.name not in each:
            each[d.name] = (value,)
        if value is not MISSING:
            _put(tree, d.path, value)
    return Parsed(_construct(cls, tree), each)


def _put(tree: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    for part in path[:-1]:
        tree = tree.setdefault(part, {})
    tree[path[-1]] = value


def _construct(cls: type, tree: dict[str, Any]) -> Any:
    kwargs = {}
    for f in fields(cls):
        if f.name not in tree:
            continue
        if option_of(f) is None and f.default_factory is not MISSING \
                and is_dataclass(inner := f.default_factory()):
            kwargs[f.name] = _construct(type(inner), tree[f.name])
        else:
            kwargs[f.name] = tree[f.name]
    return cls(**kwargs)


def config_command(cls: type) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """``fn(parsed: Parsed, **own)`` → a typer callback taking every CLI option of ``cls``
    (in field order) followed by ``fn``'s own options (``--json``, …)."""
    def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
        own = list(inspect.signature(fn, eval_str=True).parameters.values())[1:]
        generated, by_name = parameters(cls)

        def command(**kw: Any) -> Any:
            values = {k: kw.pop(k) for k in list(kw) if k in by_name}
            return fn(build(cls, values), **kw)

        params = generated + [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own]
        command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
        command.__annotations__ = {p.name: p.annotation for p in params}
        command.__name__, command.__doc__ = fn.__name__, fn.__doc__
        setattr(command, OPTIONS_ATTR, {n: d.option for n, d in by_name.items()})
        return command

    return wrap


def fill_choices(params: list[Any], options: dict[str, Option]) -> None:
    """Put each registry's names into its option's help (once: the placeholder goes)."""
    for p in params:
        o = options.get(p.name)
        help_ = getattr(p, "help", None) or ""
        if o is not None and o.choices is not None and CHOICES in help_:
            p.help = help_.replace(CHOICES, " | ".join(o.choices()))


def shared_option(flag: str, **changes: Any) -> Any:
    """A hand-written command's typer option for a shared word (asign/options.py SHARED)."""
    from asign.options import SHARED

    o = SHARED[flag].with_(**changes)
    return typer_option(o)


__all__ = ["Parsed", "build", "config_command", "fill_choices", "shared_option",
           "typer_option"]
