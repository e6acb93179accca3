"""What `train`, `compare` and `tune` share: their training options, generated from
`mlb.train.config.TrainConfig` (names, defaults, help and choices live beside its fields), `--params FILE
[--section NAME]` and `--param METHOD.KEY=VALUE`; and how these resolve into TrainConfig values and method
settings: the command line over the file, the file over TrainConfig's defaults.

A params file's section holds TrainConfig keys, with `raw:` / `cached:` laid over it for that input path and
`param:` the methods' own settings, {method: {key: value}}, as --param gives them:

    train:
      patience: 20
      raw: {size: small, epochs: 20}
      param: {mlb: {alpha: auto, beta_max: auto}}
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import typing
from pathlib import Path
from typing import Any

import typer

from mlb.train.config import AUTO, INPUT_PATHS, TrainConfig, check_method_params, without_auto
from pipeline.cli.common import dataclass_options, keyword, plain_type
from pipeline.params import ParamsError, check_keys, load_params, merge, section

DEFAULT_SECTION = "train"
# TrainConfig keys a file may not set: the command line gives them (--data, --out, --param, --resume), or
# compare does (tuning: where a run's settings came from).
COMMAND_LINE_ONLY = ("data", "out", "method_params", "resume", "tuning")
FILE_KEYS = tuple(
    f.name for f in dataclasses.fields(TrainConfig) if f.init and f.name not in COMMAND_LINE_ONLY
)


def training_parameters(param_help: str, exclude: tuple[str, ...] = ()) -> list[inspect.Parameter]:
    """The options of a training command: one per TrainConfig field (less `exclude`), then --params,
    --section and --param (`param_help`: what a given setting does in this command)."""
    return [
        *dataclass_options(TrainConfig, exclude),
        keyword(
            "params",
            Path | None,
            typer.Option(
                None,
                "--params",
                metavar="FILE",
                help="A params.yaml: its --section gives TrainConfig keys (its raw / cached subsection over them "
                "for the input path) and, under `param`, the methods' settings as --param does. Options given "
                "win over the file.",
                show_default="none: TrainConfig's defaults",
            ),
        ),
        keyword(
            "section",
            str,
            typer.Option(
                DEFAULT_SECTION,
                "--section",
                metavar="NAME",
                help="The section of --params to read, dotted (protocol.train).",
            ),
        ),
        keyword(
            "param",
            list[str] | None,
            typer.Option(
                None,
                "--param",
                metavar="METHOD.KEY=VALUE",
                help="A method's own setting, e.g. mlb.alpha=1.0 (repeatable; VALUE read as JSON, else a string; "
                f"{AUTO}: the corpus's setting from the shards' meta.json). {param_help}",
                show_default="the corpus's, else the method's",
            ),
        ),
    ]


def methods_and_fusions() -> list[inspect.Parameter]:
    """--methods and --fusions of the commands that train many runs (compare, tune)."""
    return [
        keyword(
            "methods",
            str,
            typer.Option(
                "joint,multi-loss,mlb",
                "--methods",
                metavar="METHOD,...",
                help="Balancing methods, comma-separated: the names train's --method takes.",
            ),
        ),
        keyword(
            "fusions",
            str,
            typer.Option(
                "late-linear",
                "--fusions",
                metavar="FUSION,...",
                help="Fusion heads, comma-separated: the names train's --fusion takes.",
            ),
        ),
    ]


def parse_method_params(items: list[str] | None) -> dict[str, dict[str, Any]]:
    """`METHOD.KEY=VALUE` pairs as {method: {key: value}}; VALUE is read as JSON when it parses, else it stays a
    string. Dashes in KEY become underscores."""
    tree: dict[str, dict[str, Any]] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        method, dot, name = key.partition(".")
        if not (sep and dot and method and name):
            raise typer.BadParameter(
                f"{item!r} is not METHOD.KEY=VALUE (e.g. mlb.alpha=1.0; lr and weight decay have --lr and "
                "--weight-decay)",
                param_hint="--param",
            )
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            parsed = value
        tree.setdefault(method, {})[name.replace("-", "_")] = parsed
    return tree


def _coerce(values: dict[str, Any], where: str) -> dict[str, Any]:
    """Numbers YAML reads as strings (`lr: 5e-5`) made floats for the float fields."""
    hints = typing.get_type_hints(TrainConfig)
    out = dict(values)
    for key, value in values.items():
        if plain_type(hints[key]) is float and isinstance(value, str):
            try:
                out[key] = float(value)
            except ValueError:
                raise ParamsError(f"{where}.{key}={value!r}: must be a number") from None
    return out


def _method_params(tree: Any, where: str) -> dict[str, dict[str, Any]]:
    if tree is None:
        return {}
    if not isinstance(tree, dict) or not all(isinstance(v, dict) for v in tree.values()):
        raise ParamsError(
            f"{where}: must map a method to its settings, {{method: {{key: value}}}}, got {tree!r}"
        )
    check_method_params(tree, where)
    return {method: dict(values) for method, values in tree.items()}


def read_section(path: Path, name: str, features: str | None) -> tuple[dict[str, Any], dict[str, dict]]:
    """(TrainConfig values, method settings) of section `name` of a params file, with its subsection for the
    input path (`features`, else the section's own, else TrainConfig's) laid over it. Unknown keys fail,
    naming the file, the key and the keys taken."""
    where = f"{path}: {name}"
    base = dict(section(load_params(path), name, str(path)))
    check_keys(base, (*FILE_KEYS, "param", *INPUT_PATHS), where)
    overlays = {p: base.pop(p, None) or {} for p in INPUT_PATHS}
    for input_path, overlay in overlays.items():
        if not isinstance(overlay, dict):
            raise ParamsError(f"{where}.{input_path}: must be a mapping of settings, got {overlay!r}")
        check_keys(overlay, (*[k for k in FILE_KEYS if k != "features"], "param"), f"{where}.{input_path}")
        _method_params(overlay.get("param"), f"{where}.{input_path}.param")
    features = features or base.get("features") or TrainConfig.features
    if features not in INPUT_PATHS:
        raise ParamsError(f"{where}.features={features!r}: must be one of {', '.join(INPUT_PATHS)}")
    values = merge(base, overlays[features])
    params = _method_params(values.pop("param", None), f"{where}.param")
    return _coerce(values, where), params


def resolve(
    ctx: typer.Context,
    options: dict[str, Any],
    params_file: Path | None,
    section_name: str,
    param: list[str] | None,
    runs: str,
    methods: list[str] | None = None,
) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """(TrainConfig values, method settings) of a training command that runs `methods` (None: the one method
    of its values, `train`'s).

    Values: the options given on the command line, over the file's section, over nothing (TrainConfig's
    defaults then apply); `features` is always there. Method settings: --param over the file's `param`, with
    `auto` values left out (the corpus's setting then applies). A --param for a method that is not run
    (`runs`: "this run trains") or a key its class does not take fails here, before any run starts."""
    given = {k: v for k, v in options.items() if ctx.get_parameter_source(k).name != "DEFAULT"}
    file_values: dict[str, Any] = {}
    file_params: dict[str, dict] = {}
    if params_file is not None:
        file_values, file_params = read_section(params_file, section_name, given.get("features"))
    elif ctx.get_parameter_source("section").name != "DEFAULT":
        raise typer.BadParameter(
            "names a section of --params FILE: give the file too", param_hint="--section"
        )
    values = {"features": TrainConfig.features, **file_values, **given}
    methods = methods or [values.get("method", TrainConfig.method)]
    cli_params = parse_method_params(param)
    for method, settings in cli_params.items():  # a setting for a method not run would do nothing
        if method not in methods:
            raise ParamsError(
                f"--param {method}.{next(iter(settings))}: {runs} {', '.join(methods)}, not {method}"
            )
    check_method_params(cli_params, "--param")
    return values, without_auto(merge(file_params, cli_params))
