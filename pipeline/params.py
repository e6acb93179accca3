"""Configs from `params.yaml` (or any mapping): each section goes into its stage's config dataclass, which
holds every default once. An unknown key, or a value of the wrong kind, fails at once with the file, the key
and the fix; a section may leave out any key (the dataclass default then applies).

    sections = stage_sections(load_params("params.yaml"), "cremad")
    config = from_mapping(PrepareConfig, merge(sections, dotted({"frames.size": 96})), "params.yaml")

(pipeline.prepare.prepare_config does this for a corpus, with its own defaults under params.yaml.)
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any

PREPARE_SECTIONS = ("index", "frames", "spectrograms", "shards_raw", "faces", "features", "shards_cached")


class ParamsError(ValueError):
    """A parameter file or override that cannot be used; the message names the key and the fix."""


def load_params(path: str | Path) -> dict:
    """The mapping in a YAML file (an empty file is an empty mapping)."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"{path} does not exist: pass --params with the path of a params.yaml")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ParamsError(f"{path} is not valid YAML: {err}") from err
    if not isinstance(data, dict):
        raise ParamsError(f"{path} must hold a mapping of sections, not a {type(data).__name__}")
    return data


def _field_types(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _nested_dataclass(annotation) -> type | None:
    """The dataclass an annotation names, if any (`X`, `X | None`)."""
    if dataclasses.is_dataclass(annotation):
        return annotation
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        inner = [a for a in typing.get_args(annotation) if dataclasses.is_dataclass(a)]
        return inner[0] if inner else None
    return None


def check_keys(data: dict, keys, where: str) -> None:
    """Every key of `data` is one of `keys`; else the first unknown one fails, with what `where` takes."""
    unknown = sorted(set(data) - set(keys))
    if unknown:
        raise ParamsError(f"{where}.{unknown[0]}: unknown key; {where} takes {', '.join(keys)}")


def section(params: dict, name: str, where: str) -> dict:
    """The mapping at a dotted section name (`protocol.train`) of a loaded params file."""
    node: Any = params
    for part in name.split("."):
        node = node.get(part) if isinstance(node, dict) else None
        if node is None:
            raise ParamsError(f"{where} has no section {name!r} (no key {part!r})")
    if not isinstance(node, dict):
        raise ParamsError(f"{where}: {name} must be a mapping of settings, got {node!r}")
    return node


def from_mapping(cls, data: dict | None, where: str):
    """`cls(**data)`, recursing into fields that are dataclasses themselves; `where` (e.g. `params.yaml:
    frames`) prefixes every error."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ParamsError(f"{where}: expected a mapping of {cls.__name__} keys, got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    check_keys(data, fields, where)
    types_ = _field_types(cls)
    values = {}
    for name, value in data.items():
        nested = _nested_dataclass(types_[name])
        values[name] = (
            from_mapping(nested, value, f"{where}.{name}") if nested and isinstance(value, dict) else value
        )
    try:
        return cls(**values)
    except (TypeError, ValueError) as err:
        raise ParamsError(f"{where}: {err}") from err


def merge(base: dict, override: dict) -> dict:
    """`base` with `override` laid over it, section by section (nested mappings merge, values replace)."""
    out = dict(base)
    for key, value in override.items():
        out[key] = (
            merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
        )
    return out


def dotted(overrides: dict[str, Any]) -> dict:
    """{"frames.size": 96} -> {"frames": {"size": 96}}."""
    tree: dict = {}
    for key, value in overrides.items():
        node = tree
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return tree


def as_mapping(config) -> dict:
    """A config dataclass back to a plain mapping (the inverse of from_mapping)."""
    return dataclasses.asdict(config)


def stage_sections(params: dict, corpus: str, where: str = "params.yaml") -> dict:
    """The preparation sections that apply to `corpus`: each global section (`frames: ...`) with the
    corpus's own (`corpora.<corpus>.frames: ...`) laid over it. Keys outside these sections are not read
    here (`corpora.<corpus>.root`, `synth`, `train`, ...)."""
    corpora = params.get("corpora") or {}
    mine = corpora.get(corpus) or {}
    if not isinstance(mine, dict):
        raise ParamsError(f"{where}: corpora.{corpus} must be a mapping, got {mine!r}")
    sections = {}
    for name in PREPARE_SECTIONS:
        section = merge(params.get(name) or {}, mine.get(name) or {})
        if section:
            sections[name] = section
    return sections
