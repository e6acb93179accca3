"""Per-corpus default hyper-parameters of the balancing methods, as the shard folder's `meta.json` gives them.

The pipeline writes them from each corpus's plug-in under the key `method_defaults`, so the library
holds no table keyed by corpus name:

    "method_defaults": {
      "mlb": {
        "raw": {"late-linear": {"alpha": 0.5, "beta_max": 10.0}, "mid-mlp": {"alpha": 0.5, "beta_max": 5.0}},
        "cached": {"*": {"alpha": 5.0, "beta_max": 2.0}}
      }
    }

i.e. method name -> input path -> fusion name (or "*": any fusion) -> {parameter: value}.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mlb.data import INPUT_PATHS, ShardMetaError

KEY = "method_defaults"
ANY_FUSION = "*"


def method_defaults(
    meta: Mapping[str, Any], method: str, features: str, fusion: str, *, where: str = "shard meta.json"
) -> dict[str, Any]:
    """The default hyper-parameters of `method` for one input path (`features`) and fusion head.

    The exact fusion entry wins over the "*" entry, key by key; parameters neither gives are left to the
    balancer class's own defaults, and so is everything when `meta` has no `method_defaults` (shards
    written before the key existed). The caller lays the user's explicit parameters over the result.

    The whole `method_defaults` tree is checked, not only the entry asked for, so that a broken plug-in
    fails every run alike: anything but objects nested method -> input path -> fusion -> {param: value}
    raises ShardMetaError naming `where`, the key path and the value.
    """
    if KEY not in meta:
        return {}
    tree = meta[KEY]
    _check(tree, where)
    by_fusion = tree.get(method, {}).get(features, {})
    return {**by_fusion.get(ANY_FUSION, {}), **by_fusion.get(fusion, {})}


def _check(tree: Any, where: str) -> None:
    """Four levels of objects: method -> input path -> fusion -> params."""
    levels = ("method name", "input path", "fusion name or '*'", "parameter name")

    def bad(path: list[str], value: Any, want: str) -> ShardMetaError:
        return ShardMetaError(f"{where} {'.'.join([KEY, *path])!r} is {value!r}: {want}")

    def walk(node: Any, path: list[str], depth: int) -> None:
        if not isinstance(node, Mapping):
            raise bad(path, node, f"must be an object {{{levels[depth]}: ...}}")
        for key, child in node.items():
            if depth == 1 and key not in INPUT_PATHS:
                raise bad([*path, str(key)], child, f"the input path must be one of {INPUT_PATHS}")
            if depth < len(levels) - 1:
                walk(child, [*path, str(key)], depth + 1)

    walk(tree, [], 0)
