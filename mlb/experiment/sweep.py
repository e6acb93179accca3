"""Many training runs with one budget: methods x fusion heads x seeds (or folds), what `mlbpipe compare`
trains before `mlb.analysis` aggregates the finished runs."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

from mlb.balancing import METHODS
from mlb.balancing.unipre import RUNS_ALONE
from mlb.data import open_shard_folder
from mlb.experiment.tune import tuned_settings
from mlb.train.trainer import train


def run_dir_for(root: Path, features: str, method: str, fusion: str, seed: int, kind: str = "seed") -> Path:
    """RUNS/<features>/<method>/<fusion>/seed<k> (seeds on one data folder) or fold<k> (one data folder per
    fold)."""
    return Path(root) / features / method / fusion / f"{kind}{seed}"


def protocol_fold(protocol: str) -> int | None:
    """The fold a split protocol's name (meta.json `config.protocol`) is: its first number, the partition
    (CREMA-D `vavl-2`, UCF101 `official-2-seed-0`) or a random protocol's seed (`speaker-random-2`); None
    when it has none (AVE's `official`: one split)."""
    match = re.search(r"\d+", protocol)
    return int(match.group()) if match else None


def check_fold_data(fold_data: dict[int, Path]) -> None:
    """Each fold's shard folder must be that fold's partition (its meta.json's protocol names the fold), and
    all of them one corpus, input path and protocol family; else ValueError naming the folder, what its
    meta.json says and what was expected, before any run starts."""
    first = None
    for fold, folder in fold_data.items():
        meta = open_shard_folder(folder).meta
        protocol = str((meta.get("config") or {}).get("protocol") or "")
        where = f"{Path(folder) / 'meta.json'}"
        fix = (
            "make the folds of a prepared folder (`mlbpipe prepare CORPUS --from DIR --folds 1,2,3 --out "
            "DIR/folds`, then --data 'DIR/folds/{fold}'), or fix --data"
        )
        if not protocol:
            raise ValueError(
                f"{where} records no split protocol (config.protocol), fold {fold} needs one: {fix}"
            )
        if protocol_fold(protocol) is None:
            raise ValueError(
                f"{where} says protocol {protocol!r}: one split, no numbered partitions to use as folds; compare "
                "its seeds on one folder (--seeds) instead of --folds"
            )
        expected = re.sub(r"\d+", str(fold), protocol, count=1)
        if protocol != expected:
            raise ValueError(f"{where} says protocol {protocol!r}, fold {fold} expects {expected!r}: {fix}")
        kind = {
            "corpus": meta.get("corpus"),
            "input_path": meta.get("input_path"),
            "protocol": re.sub(r"\d+", "{fold}", protocol, count=1),
        }
        if first is None:
            first = (where, kind)
        elif kind != first[1]:
            raise ValueError(
                f"{where} says {kind}, {first[0]} says {first[1]}: the folds of one comparison are one corpus, "
                "input path and protocol; fix --data"
            )


def _supported(method: str, fusion: str) -> bool:
    supported = METHODS[method].supported_fusions
    return supported is None or fusion in supported


def with_unimodal_runs(methods: list[str], log=print) -> tuple[list[str], list[str]]:
    """(`methods` with each encoder's run alone first, the ones added): when a method starts from the runs
    alone (Uni-Pre, Ensemble), the missing ones are added (and said), and every `-only` method moves to the
    front, so its runs are finished before a run that reads them starts."""
    needs = [m for m in methods if m in METHODS and METHODS[m].needs_pretrained_encoders]
    added = [m for m in RUNS_ALONE if needs and m not in methods]
    if added:
        log(f"{', '.join(needs)} start(s) from each encoder trained alone: {', '.join(added)} added")
    alone = [m for m in [*added, *methods] if m.endswith("-only")]
    return alone + [m for m in methods if not m.endswith("-only")], added


def _alone_run(root: Path, features: str, method: str, fusion: str, seed: int, kind: str) -> Path | None:
    """The finished run of `method` (a run alone) for this seed (fold): the same fusion head's, else any
    other's (an encoder trained alone does not depend on the fusion head it was built with)."""
    same = run_dir_for(root, features, method, fusion, seed, kind)
    if (same / "metrics.json").is_file():
        return same
    others = sorted(Path(root, features, method).glob(f"*/{kind}{seed}/metrics.json"))
    return others[0].parent if others else None


def unimodal_sources(root: Path, features: str, fusion: str, seed: int, kind: str) -> str:
    """`init_encoders` for a run that starts from the runs alone: the same seed's (fold's) audio-only and
    video-only run folders (`_alone_run`). ValueError naming the folder when one has not finished."""
    sources = []
    for method in RUNS_ALONE:
        run_dir = _alone_run(root, features, method, fusion, seed, kind)
        if run_dir is None:
            missing = run_dir_for(root, features, method, fusion, seed, kind)
            raise ValueError(
                f"{missing} has not finished (no metrics.json): a Uni-Pre or Ensemble run starts from it; train "
                f"{method} for {kind} {seed} first (compare trains it when it is in the same comparison)"
            )
        sources.append(f"{method.removesuffix('-only')}={run_dir}")
    return ",".join(sources)


def check_tuned(
    tuned: dict | None,
    features: str,
    methods: list[str],
    fusions: list[str],
    *,
    source: str = "the tuned settings",
    allow_untuned: bool = False,
) -> dict[tuple[str, str], dict]:
    """The settings record of every (method, fusion) the comparison trains (those a method refuses left out):
    {"tuned": True, "file": source, "trials", "trial"} from `tuned` (`mlb.experiment.tune.read_tuned` of the file
    `source`), else {"tuned": False} (the defaults).

    With `tuned` given, every pair must be in it for `features` (the equal-budget premise), unless
    `allow_untuned`, and the pairs found must share one trial count; otherwise ValueError naming what is
    missing (or the counts) and the fix, before any run starts."""
    for method in methods:
        if method not in METHODS:
            raise ValueError(f"compare methods: unknown method {method!r}; choose from {sorted(METHODS)}")
    pairs = [(m, f) for m in methods for f in fusions if _supported(m, f)]
    if tuned is None:
        return {pair: {"tuned": False} for pair in pairs}
    found = {pair: tuned_settings(tuned, features, *pair) for pair in pairs}
    # a method that trains nothing (Ensemble) has nothing to tune: untuned in every comparison
    missing = [pair for pair, entry in found.items() if entry is None and METHODS[pair[0]].trains]
    if missing and not allow_untuned:
        named = ", ".join(f"{features}/{m}/{f}" for m, f in missing)
        have = [f"{features}/{m}/{f}" for m, fs in (tuned.get(features) or {}).items() for f in fs]
        lacking = ",".join(dict.fromkeys(m for m, _ in missing))
        heads = ",".join(dict.fromkeys(f for _, f in missing))
        raise ValueError(
            f"{source} has no tuned settings for {named} (it has {', '.join(have) or 'none'}): every method of a "
            f"comparison is tuned with the same budget. Tune them into the same tune folder (`mlbpipe tune "
            f"--methods {lacking} --fusions {heads} --out TUNE` with the same --trials), or pass --allow-untuned "
            "to train them with their defaults"
        )
    budgets = {pair: entry.get("trials") for pair, entry in found.items() if entry is not None}
    if len(set(budgets.values()) - {None}) > 1:
        shown = ", ".join(f"{features}/{m}/{f}: {n}" for (m, f), n in budgets.items())
        raise ValueError(
            f"{source}: the compared methods were tuned with different trial counts ({shown}): tune them all "
            "with one --trials into one tune folder"
        )
    return {
        pair: {"tuned": True, "file": source, "trials": entry.get("trials"), "trial": entry.get("trial")}
        if entry is not None
        else {"tuned": False}
        for pair, entry in found.items()
    }


def describe_tuning(record: dict) -> str:
    """`tuned (20 trials, FILE)`, `untuned (defaults)`, or `not recorded` for a run that has no record."""
    if not record:
        return "not recorded"
    if not record.get("tuned"):
        return "untuned (defaults)"
    return f"tuned ({record.get('trials')} trials, {record.get('file')})"


def _check_kept_runs(records: dict, combos: list, root: Path, features: str, kind: str) -> None:
    """A finished run is kept only when its settings came from the same source (tuned with the same trial
    count, or untuned) as this comparison's: else its tables would mix them silently."""
    for method, fusion, seed in combos:
        run_dir = run_dir_for(root, features, method, fusion, seed, kind)
        if (method, fusion) not in records or not (run_dir / "metrics.json").is_file():
            continue
        run_json = run_dir / "run.json"
        had = json.loads(run_json.read_text())["config"].get("tuning") if run_json.is_file() else None
        wanted = records[method, fusion]
        if had and any(had.get(k) != wanted.get(k) for k in ("tuned", "trials")):
            raise ValueError(
                f"{run_dir} was trained with {describe_tuning(had)} settings, this comparison asks for "
                f"{describe_tuning(wanted)}: the tables would mix them. Compare into another --out, or delete "
                "that run folder to train it again"
            )


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
    tuned_file: str | None = None,
    allow_untuned: bool = False,
) -> tuple[list[dict], list[dict]]:
    """Train every (method, fusion, seed or fold) with the same budget as `base` (an `mlb.train.TrainConfig`).

    Every run gets the same epochs, batch size and early stopping; only the method, its own hyper-parameters,
    the fusion head and the seed (or fold) change. Settings per run, later ones winning: the paper's lr and
    weight decay (or `base`'s), the tuned ones of `tuned` (`mlb.experiment.tune.read_tuned` of `tuned_file`: lr,
    weight_decay and the method's parameters for this input path, method and fusion), then
    `method_params[method]` and `method_params["shared"]` (lr, weight_decay) given by hand. `tuned` must hold
    every (method, fusion) trained, with one trial count (`check_tuned`; with `allow_untuned` the missing ones
    train with the defaults); each run records in run.json (`config.tuning`) whether its settings were tuned.

    Folds: with `fold_data` ({fold: shard folder}), each k of `seeds` is a fold trained with seed k on its own
    data, into RUNS/.../fold<k>; otherwise every seed trains on `base.data`, into RUNS/.../seed<k>.
    A run whose metrics.json exists is not redone (refused when its settings came from another source); an
    interrupted one resumes from its last checkpoint. A method that starts from each encoder trained alone
    (Uni-Pre) gets the same seed's (fold's) audio-only and video-only runs, trained first (and added when
    `methods` lacks them). A method that refuses a fusion head (OGM-GE needs
    Late-Linear) is recorded as skipped with its reason.
    Returns (finished runs, skipped combinations).
    """
    method_params = method_params or {}
    runs, skipped = [], []
    methods, added = with_unimodal_runs(methods, log)  # runs alone first: Uni-Pre and Ensemble read them
    kind = "fold" if fold_data is not None else "seed"
    combos = [
        (m, f, s)
        for m in methods
        for f in fusions
        for s in seeds
        # a run alone that was only added for them: once per seed, unless one of any fusion head is there
        if m not in added or (f == fusions[0] and _alone_run(root, base.features, m, f, s, kind) is None)
    ]
    # every setting checked before the first run: a wrong one fails now, not hours later
    if fold_data is not None:
        check_fold_data({k: fold_data[k] for k in seeds})
    source = tuned_file or "the tuned settings"
    wanted = [m for m in methods if m not in added]  # the runs alone added for Uni-Pre need no tuned settings
    records = check_tuned(tuned, base.features, wanted, fusions, source=source, allow_untuned=allow_untuned)
    records |= {(m, f): {"tuned": False} for m in added for f in fusions}
    _check_kept_runs(records, combos, root, base.features, kind)
    for i, (method, fusion, seed) in enumerate(combos, 1):
        where = f"[{i}/{len(combos)}] {method} / {fusion} / {kind} {seed}"
        run_dir = run_dir_for(root, base.features, method, fusion, seed, kind)
        done = run_dir / "metrics.json"
        if done.is_file():
            log(f"{where}: done before, kept")
            runs.append({**json.loads(done.read_text()), "path": str(run_dir)})
            continue
        if not _supported(method, fusion):  # e.g. OGM-GE needs Late-Linear's halves
            reason = f"{method} supports only {sorted(METHODS[method].supported_fusions)}"
            skipped.append({"method": method, "fusion": fusion, "seed": seed, "reason": reason})
            log(f"{where}: skipped ({reason})")
            continue
        settings = {"lr": base.lr, "weight_decay": base.weight_decay, "method_params": {}}
        found = tuned_settings(tuned, base.features, method, fusion) if tuned is not None else None
        if found is not None:
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
            tuning=records[method, fusion],
            init_encoders=unimodal_sources(root, base.features, fusion, seed, kind)
            if METHODS[method].needs_pretrained_encoders
            else base.init_encoders,
        )
        log(f"{where}, {describe_tuning(records[method, fusion])} -> {run_dir}")
        runs.append({**train(config), "path": str(run_dir)})
    return runs, skipped
