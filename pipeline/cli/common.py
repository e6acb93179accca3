"""What every command shares: errors as one line `mlbpipe <command>: error: ...` and exit 2 (usage errors
included), KEY=VALUE options, typer options made from a config dataclass (so a default, its help text and its
choices exist once, beside the field).

What an option's value looks like in --help (its metavar), one convention for every command: typer's own
`<int>`, `<float>`, `<path>`, `<str>` for a plain value and `<a|b>` for a choice among a few words (`choice`
writes the same for a choice the command checks itself); otherwise placeholders in capitals, with the
punctuation to type: FILE, URL, PATH|URL, METHOD, KEY=VALUE, METHOD,... for a comma-separated list."""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import inspect
import json
import typing
from collections.abc import Callable, Iterator
from typing import Any

import typer
from typer.core import TyperGroup


@contextlib.contextmanager
def exit_on(*errors: type[BaseException], command: str = "mlbpipe") -> Iterator[None]:
    """One of `errors` raised inside (a bad option, a missing input) prints `<command>: error: <message>` and
    exits with code 2 instead of a traceback."""
    try:
        yield
    except errors as err:
        typer.echo(f"{command}: error: {err}", err=True)
        raise typer.Exit(code=2) from err


@contextlib.contextmanager
def command_errors(prefix: str, out=None) -> Iterator[None]:
    """Every fault a long command can meet, reported as `<prefix>: error: <message>` with exit 2, never a
    traceback: bad settings and inputs (ValueError), runs that cannot go on (RuntimeError: another run holds
    the folder, a shard or checkpoint that cannot be read, an input that vanished) and failed reads or writes
    (OSError: a full disk, a read-only folder), the file and the fix in the message. A stop on SIGINT or
    SIGTERM exits with mlb.common.stopping.STOPPED_EXIT. MLBPIPE_DEBUG=1 lets the exception through, traceback and
    all."""
    import os

    from mlb.common.stopping import STOPPED_EXIT, Stopped

    try:
        yield
    except typer.Exit:  # a deliberate exit code (click's Exit is a RuntimeError): keep it
        raise
    except Stopped as err:
        typer.echo(f"{prefix}: {err}", err=True)
        raise typer.Exit(code=STOPPED_EXIT) from None
    except (ValueError, RuntimeError, OSError) as err:
        if os.environ.get("MLBPIPE_DEBUG") == "1":
            raise
        typer.echo(f"{prefix}: error: {describe_error(err, out)}", err=True)
        raise typer.Exit(code=2) from None


def describe_error(err: BaseException, out=None) -> str:
    """The message of an error; for a failed read or write, the file (or the output folder) and the fix."""
    if not isinstance(err, OSError) or isinstance(err, FileNotFoundError) and err.filename is None:
        return str(err)
    where = err.filename or out or "a file"
    what = err.strerror or str(err).strip().splitlines()[0]
    return (
        f"reading or writing {where} failed ({what}): the disk may be full or the folder read-only; free space "
        "or fix its permissions (or choose another output folder) and rerun: finished work is kept"
    )


def _command_path(ctx) -> str:
    """`mlbpipe train` for a context of the train command, whatever the program was called (`python -m ...`)."""
    names = []
    while ctx is not None:
        names.append(ctx.info_name or "")
        ctx = ctx.parent
    return " ".join(["mlbpipe", *reversed(names[:-1])])


@contextlib.contextmanager
def _one_line_usage_errors(ctx=None) -> Iterator[None]:
    from typer._click.exceptions import ClickException, NoArgsIsHelpError  # typer vendors its own click

    try:
        yield
    except NoArgsIsHelpError:  # `mlbpipe synth` alone: the help, as asked
        raise
    except ClickException as err:
        where = _command_path(getattr(err, "ctx", None) or ctx)
        if getattr(err, "ctx", None) is None and ctx is not None and ctx.invoked_subcommand:
            where += f" {ctx.invoked_subcommand}"
        typer.echo(f"{where}: error: {' '.join(err.format_message().split())}", err=True)
        raise typer.Exit(code=err.exit_code) from None


class OneLineErrors(TyperGroup):
    """A command group whose usage errors (a bad integer, an unknown option, a missing one, a BadParameter a
    command raises) print one line, `mlbpipe <command>: error: <message>`, and exit with 2, like every other
    error: no box, no Usage block."""

    def make_context(self, info_name, args, parent=None, **extra):
        with _one_line_usage_errors(parent):
            return super().make_context(info_name, args, parent=parent, **extra)

    def invoke(self, ctx):
        with _one_line_usage_errors(ctx):
            return super().invoke(ctx)


def parse_key_values(items: list[str] | None, option: str) -> dict[str, Any]:
    """`KEY=VALUE` pairs; VALUE is read as YAML when it parses (numbers, true/false, null, lists), else it
    stays a string. Dashes in KEY become underscores."""
    import yaml

    values = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"{item!r} is not KEY=VALUE", param_hint=option)
        try:
            values[key.replace("-", "_")] = yaml.safe_load(value) if value else ""
        except yaml.YAMLError:
            values[key.replace("-", "_")] = value
    return values


def parse_params_json(items: list[str] | None, option: str) -> dict[str, Any]:
    """`KEY=VALUE` pairs with VALUE read as JSON when it parses, else a string (the trainer's --param)."""
    params = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"{item!r} is not KEY=VALUE", param_hint=option)
        try:
            params[key.replace("-", "_")] = json.loads(value)
        except json.JSONDecodeError:
            params[key.replace("-", "_")] = value
    return params


def split_csv(value: str, option: str, cast=str) -> list:
    items = [v.strip() for v in value.split(",") if v.strip()]
    if not items:
        raise typer.BadParameter(f"needs at least one value, got {value!r}", param_hint=option)
    try:
        return [cast(v) for v in items]
    except ValueError:
        raise typer.BadParameter(
            f"{value!r} is not a comma-separated list of {cast.__name__}", param_hint=option
        ) from None


def choice(values) -> str:
    """The metavar of a value among `values` that the command checks itself, as typer shows a choice:
    `<local|ray>`."""
    return f"<{'|'.join(values)}>"


def field_default(cls, name: str):
    """The default of a dataclass field (for help texts: the value lives in the dataclass only)."""
    f = cls.__dataclass_fields__[name]
    return f.default_factory() if f.default is dataclasses.MISSING else f.default


_CLI_TYPES = (int, float, str, bool)


def plain_type(annotation) -> type | None:
    """The plain type of a field typer can take (`int`, `int | None`, ...), else None."""
    if annotation in _CLI_TYPES:
        return annotation
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    return args[0] if len(args) == 1 and args[0] in _CLI_TYPES else None


def dataclass_options(cls, exclude: tuple[str, ...] = ()) -> list[inspect.Parameter]:
    """One keyword parameter per field of `cls` that the command line can set (plain types; a field with
    metadata `{"cli": False}` or named in `exclude` is left out), all taken from the field: its default, and
    from its metadata the help (`help`), the values allowed (`choices`), what a None default means
    (`default_text`), the option's spelling (`option`, e.g. "--in-memory/--streaming") and what its value
    looks like (`metavar`, e.g. "audio=RUN,video=RUN")."""
    hints = typing.get_type_hints(cls)
    parameters = []
    for f in dataclasses.fields(cls):
        kind = plain_type(hints[f.name])
        if kind is None or not f.init or f.metadata.get("cli", True) is False or f.name in exclude:
            continue
        default = field_default(cls, f.name)
        spelling = f.metadata.get("option", f"--{f.name.replace('_', '-')}")
        shown = {"show_default": f.metadata["default_text"]} if "default_text" in f.metadata else {}
        shown |= {"metavar": f.metadata["metavar"]} if "metavar" in f.metadata else {}
        option = typer.Option(default, spelling, help=f.metadata.get("help", ""), **shown)
        if "choices" in f.metadata:  # typer makes an Enum a choice; the command gets its plain value back
            kind = enum.StrEnum(f"{cls.__name__}_{f.name}", {c: c for c in f.metadata["choices"]})
        parameters.append(keyword(f.name, kind if default is not None else kind | None, option))
    return parameters


def keyword(name: str, annotation, option) -> inspect.Parameter:
    """A keyword parameter for `with_signature`: `name` with its type and its typer option."""
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=annotation)


def context() -> inspect.Parameter:
    """typer's context, the first parameter of a command that asks which options were given."""
    return inspect.Parameter("ctx", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=typer.Context)


def with_signature(fn: Callable, parameters: list[inspect.Parameter], doc: str) -> Callable:
    """`fn(**kwargs)` presented to typer with `parameters` and `doc` as its --help; a choice reaches `fn` as
    its plain value."""

    def command(**kwargs):
        return fn(**{k: v.value if isinstance(v, enum.Enum) else v for k, v in kwargs.items()})

    command.__signature__ = inspect.Signature(parameters)
    command.__annotations__ = {p.name: p.annotation for p in parameters}
    command.__doc__ = doc
    command.__module__ = fn.__module__  # where the command lives (tests map a command to its module)
    return command
