"""What every command shares: errors as `error: ...` and exit 2, KEY=VALUE options, typer options made from
a config dataclass (so a default and its help text exist once, beside the field)."""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import json
import typing
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import typer


@contextlib.contextmanager
def exit_on(*errors: type[BaseException], prefix: str = "error") -> Iterator[None]:
    """One of `errors` raised inside (a bad option, a missing input) prints `<prefix>: <message>` and exits
    with code 2 instead of a traceback."""
    try:
        yield
    except errors as err:
        typer.echo(f"{prefix}: {err}", err=True)
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


# Options that several run-many-runs commands (compare, tune) share, defined once.
IN_MEMORY_OPTION = typer.Option(
    False, "--in-memory/--streaming", help="Keep each run's decoded splits in memory (same batches, faster)."
)
EVAL_BATCH_SIZE_OPTION = typer.Option(
    None, "--eval-batch-size", min=1, help="Batch size of validation and test [default: the training one]."
)


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


def parse_method_params(items: list[str] | None, option: str) -> dict[str, dict[str, Any]]:
    """`METHOD.KEY=VALUE` pairs as {method: {key: value}}; a bare `lr=` or `weight_decay=` goes under
    "shared" (every method). VALUE is read as JSON when it parses."""
    params: dict[str, dict[str, Any]] = {}
    for key, value in parse_params_json(items, option).items():
        method, sep, name = key.partition(".")
        if not sep:
            if key not in ("lr", "weight_decay"):
                raise typer.BadParameter(
                    f"{key!r} must be METHOD.KEY (e.g. mlb.alpha), or lr / weight_decay", param_hint=option
                )
            method, name = "shared", key
        params.setdefault(method.replace("_", "-"), {})[name] = value
    return params


def pins_from_params(path: Path | None, option: str) -> dict[str, dict[str, Any]]:
    """`protocol.pin` of a params.yaml: {method or "shared": {key: value}}, the settings fixed by hand
    (`dvc exp run -S '+protocol.pin.mlb.alpha=1'`); {} without a file."""
    from pipeline.params import load_params

    if path is None:
        return {}
    pins = (load_params(path).get("protocol") or {}).get("pin") or {}
    if not isinstance(pins, dict) or not all(isinstance(v, dict) for v in pins.values()):
        raise typer.BadParameter(
            f"{path}: protocol.pin must map a method (or shared) to {{key: value}}, got {pins!r}",
            param_hint=option,
        )
    return {method.replace("_", "-"): dict(values) for method, values in pins.items()}


def merge_pins(*trees: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """{method: {key: value}} trees merged key by key, later trees winning."""
    merged: dict[str, dict[str, Any]] = {}
    for tree in trees:
        for method, values in tree.items():
            merged.setdefault(method, {}).update(values)
    return merged


def float_or_auto(value: str | None, option: str) -> float | None:
    """A number, or `auto` (and no value): None, i.e. the setting the shards' meta.json gives."""
    if value is None or value.strip().lower() == "auto":
        return None
    try:
        return float(value)
    except ValueError:
        raise typer.BadParameter(f"needs a number or auto, got {value!r}", param_hint=option) from None


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


def field_default(cls, name: str):
    """The default of a dataclass field (for help texts: the value lives in the dataclass only)."""
    f = cls.__dataclass_fields__[name]
    return f.default_factory() if f.default is dataclasses.MISSING else f.default


_CLI_TYPES = (int, float, str, bool)


def _option_type(annotation) -> type | None:
    """The plain type of a field typer can take (`int`, `int | None`, ...), else None."""
    if annotation in _CLI_TYPES:
        return annotation
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    return args[0] if len(args) == 1 and args[0] in _CLI_TYPES else None


def dataclass_options(cls) -> list[inspect.Parameter]:
    """One keyword parameter per field of `cls` that the command line can set (plain types; a field with
    metadata `{"cli": False}` is left out), its default and help taken from the field (`metadata["help"]`)."""
    hints = typing.get_type_hints(cls)
    parameters = []
    for f in dataclasses.fields(cls):
        kind = _option_type(hints[f.name])
        if kind is None or not f.init or f.metadata.get("cli", True) is False:
            continue
        default = field_default(cls, f.name)
        option = typer.Option(default, f"--{f.name.replace('_', '-')}", help=f.metadata.get("help", ""))
        annotation = kind if default is not None else kind | None
        parameters.append(
            inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=annotation)
        )
    return parameters


def with_signature(fn: Callable, parameters: list[inspect.Parameter], doc: str) -> Callable:
    """`fn(**kwargs)` presented to typer with `parameters` and `doc` as its --help."""

    def command(**kwargs):
        return fn(**kwargs)

    command.__signature__ = inspect.Signature(parameters)
    command.__annotations__ = {p.name: p.annotation for p in parameters}
    command.__doc__ = doc
    return command
