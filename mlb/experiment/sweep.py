"""Many training runs with one budget: methods x fusion heads x seeds (or folds), what `mlbpipe compare`
trains before `mlb.analysis` aggregates the finished runs."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from mlb.balancing import METHODS
from mlb.experiment.tune import tuned_settings
from mlb.train.trainer import train


def run_dir_for(root: Path, features: str, method: str, fusion: str, seed: int, kind: str = "seed") -> Path:
    """RUNS/<features>/<method>/<fusion>/seed<k> (seeds on one data folder) or fold<k> (one data folder per
    fold)."""
    return Path(root) / features / method / fusion / f"{kind}{seed}"


def run_comparison(
    base,
    methods: list[str],
    fusions: list[str],
    seeds: list[int],
    root: Path,
    method_params: dict[str, dict] | None = None,
    log=print,
    *,
    fold_data: dict[int, Path] | None = None,
    tuned: dict | None = None,
) -> tuple[list[dict], list[dict]]:
    """Train every (method, fusion, seed or fold) with the same budget as `base` (an `mlb.train.TrainConfig`).

    Every run gets the same epochs, batch size and early stopping; only the method, its own hyper-parameters,
    the fusion head and the seed (or fold) change. Settings per run, later ones winning: the paper's lr and
    weight decay (or `base`'s), the tuned ones of `tuned` (`mlb.experiment.tune.read_tuned`: lr, weight_decay and the
    method's parameters for this input path, method and fusion), then `method_params[method]` and
    `method_params["shared"]` (lr, weight_decay) given by hand.

    Folds: with `fold_data` ({fold: shard folder}), each k of `seeds` is a fold trained with seed k on its own
    data, into RUNS/.../fold<k>; otherwise every seed trains on `base.data`, into RUNS/.../seed<k>.
    A run whose metrics.json exists is not redone; an interrupted one resumes from its last checkpoint. A
    method that refuses a fusion head (OGM-GE needs Late-Linear) is recorded as skipped with its reason.
    Returns (finished runs, skipped combinations).
    """
    method_params = method_params or {}
    runs, skipped = [], []
    combos = [(m, f, s) for m in methods for f in fusions for s in seeds]
    kind = "fold" if fold_data is not None else "seed"
    for i, (method, fusion, seed) in enumerate(combos, 1):
        where = f"[{i}/{len(combos)}] {method} / {fusion} / {kind} {seed}"
        run_dir = run_dir_for(root, base.features, method, fusion, seed, kind)
        done = run_dir / "metrics.json"
        if done.is_file():
            log(f"{where}: done before, kept")
            runs.append({**json.loads(done.read_text()), "path": str(run_dir)})
            continue
        if method not in METHODS:
            raise ValueError(f"compare methods: unknown method {method!r}; choose from {sorted(METHODS)}")
        supported = METHODS[method].supported_fusions
        if supported is not None and fusion not in supported:  # e.g. OGM-GE needs Late-Linear's halves
            reason = f"{method} supports only {sorted(supported)}"
            skipped.append({"method": method, "fusion": fusion, "seed": seed, "reason": reason})
            log(f"{where}: skipped ({reason})")
            continue
        settings = {"lr": base.lr, "weight_decay": base.weight_decay, "method_params": {}}
        if tuned is not None:
            found = tuned_settings(tuned, base.features, method, fusion)
            if found is None:
                log(f"{where}: no tuned settings for it, using the defaults")
            else:
                settings |= {k: found[k] for k in ("lr", "weight_decay") if k in found}
                settings["method_params"] = dict(found.get("method_params") or {})
        by_hand = dict(method_params.get("shared", {})) | dict(method_params.get(method, {}))
        settings |= {k: by_hand.pop(k) for k in ("lr", "weight_decay") if k in by_hand}
        config = dataclasses.replace(
            base,
            method=method,
            fusion=fusion,
            seed=seed,
            fold=seed if fold_data is not None else None,
            data=fold_data[seed] if fold_data is not None else base.data,
            out=run_dir,
            # an interrupted run continues; a fresh one is not asked to resume (the trainer would warn)
            resume=(run_dir / "checkpoints" / "last.pt").exists(),
            lr=settings["lr"],
            weight_decay=settings["weight_decay"],
            method_params=settings["method_params"] | by_hand,
        )
        log(f"{where} -> {run_dir}")
        runs.append({**train(config), "path": str(run_dir)})
    return runs, skipped
