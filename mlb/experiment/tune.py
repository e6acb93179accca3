"""Equal-budget hyper-parameter search on VALIDATION accuracy: the paper's protocol ("tuning was conducted
separately for each method, dataset, backbone encoder and fusion strategy on the validation set").

One Optuna study per (input path, method, fusion), all in one SQLite file `TUNE/optuna.sqlite3` (a real
database: `optuna-dashboard sqlite:///TUNE/optuna.sqlite3` reads it). One budget per TUNE folder: the
number of trials and what makes trials comparable (the data, input path, model size, epochs, step limit,
batch size, patience) are recorded in `TUNE/budget.json` by the first tune, and a later tune into the folder
with another budget is refused before any trial, so every method of the folder had the same. A trial is one `mlb.train.train` run with
`test=False`, so the test split is never read; its value is the best validation accuracy over its epochs
(the checkpoint selection metric). The sampler is TPE; a median pruner stops a trial whose validation
accuracy after an epoch is below the median of earlier trials at that epoch.

What is searched: the learning rate and the weight decay for every method (`shared_space`: a decade either
way of the base config's values, the paper's by default), plus the method's own `search_space` (declared in its file under
mlb/balancing/). A pinned key (`pins`) is fixed and left out of the search.

Kills: a trial that was running when the process died stays RUNNING in the database. The next run marks it
FAIL (user attribute `killed`), does not count it, and enqueues its parameters again, so the budget is
finished with no trial counted twice. A trial that fails on its own (e.g. a non-finite loss at a bad lr)
counts: it spent budget like any other.

Results: `TUNE/best_params.yaml`, {features: {method: {fusion: {lr, weight_decay, method_params,
val_accuracy, trial, trials}}}}, which `mlbpipe compare --tuned` reads. It is written once, atomically, when
every requested study has finished its budget: a tune that fails or is stopped leaves the earlier file as it
was. Trial folders keep their logs and
metrics; their checkpoints are deleted once the trial ends (a large sweep would otherwise fill the disk).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from mlb.common.atomic import atomic_write_json, atomic_write_text
from mlb.common.search_space import FloatRange, IntRange
from mlb.common.storage import is_url
from mlb.train.config import PAPER_OPTIM, TrainConfig, TrainError

DB_NAME = "optuna.sqlite3"
BEST_NAME = "best_params.yaml"
BUDGET_NAME = "budget.json"
# The TrainConfig keys that bound what one trial can reach: with the trial count, the budget of a TUNE folder
BUDGET_KEYS = ("data", "features", "size", "epochs", "max_steps", "batch_size", "patience")
SHARED_KEYS = ("lr", "weight_decay")


class TuneError(ValueError):
    """A tuning setting or state that cannot work; the message names the study or key and the fix."""


@dataclass
class TuneConfig:
    """How a search runs; the same for every method of one tune."""

    trials: int = 20  # finished trials per (input path, method, fusion): the equal budget
    seed: int = 0  # the TPE sampler's seed
    startup_trials: int = 5  # random trials before TPE models the space, and before the pruner acts
    prune_after_epochs: int = 2  # the pruner never stops a trial before this many epochs
    prune: bool = True

    def validate(self) -> None:
        for key, low in (("trials", 1), ("seed", 0), ("startup_trials", 0), ("prune_after_epochs", 0)):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise TuneError(f"tune config {key}={value!r}: must be an integer >= {low}")


def shared_space(features: str, lr: float | None = None, weight_decay: float | None = None) -> dict:
    """lr and weight decay: a decade either way (log scale) of the given values, by default the paper's for
    the input path."""
    paper_lr, paper_weight_decay, _batch = PAPER_OPTIM[features]
    lr = paper_lr if lr is None else lr
    weight_decay = paper_weight_decay if weight_decay is None else weight_decay
    return {
        "lr": FloatRange(lr / 10, lr * 10, log=True),
        "weight_decay": FloatRange(weight_decay / 10, weight_decay * 10, log=True),
    }


def search_space(
    method: str, features: str, pins: dict[str, Any] | None = None, *, lr=None, weight_decay=None
) -> dict:
    """The whole space of one method: shared keys first (around `lr` / `weight_decay`, the paper's when None),
    then the method's own, minus the pinned keys."""
    from mlb.balancing import METHODS

    if method not in METHODS:
        raise TuneError(f"tune methods: unknown method {method!r}; choose from {sorted(METHODS)}")
    space = shared_space(features, lr, weight_decay) | dict(METHODS[method].search_space)
    return {k: v for k, v in space.items() if k not in (pins or {})}


def suggest(trial, space: dict) -> dict[str, Any]:
    """One point of `space` from an Optuna trial."""
    values = {}
    for key, dim in space.items():
        if isinstance(dim, FloatRange):
            values[key] = trial.suggest_float(key, dim.low, dim.high, log=dim.log)
        elif isinstance(dim, IntRange):
            values[key] = trial.suggest_int(key, dim.low, dim.high)
        else:
            raise TuneError(f"search space {key}: unknown dimension {dim!r}")
    return values


def split_params(values: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(shared optimiser settings, the method's own keyword arguments)."""
    shared = {k: v for k, v in values.items() if k in SHARED_KEYS}
    return shared, {k: v for k, v in values.items() if k not in SHARED_KEYS}


def study_name(features: str, method: str, fusion: str) -> str:
    return f"{features}/{method}/{fusion}"


def _counted(trial) -> bool:
    """Trials that spent budget: finished, pruned, or failed on their own (not killed)."""
    from optuna.trial import TrialState

    if trial.state in (TrialState.COMPLETE, TrialState.PRUNED):
        return True
    return trial.state == TrialState.FAIL and not trial.user_attrs.get("killed", False)


def _open_study(out: Path, name: str, config: TuneConfig):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = optuna.samplers.TPESampler(seed=config.seed, n_startup_trials=config.startup_trials)
    pruner = (
        optuna.pruners.MedianPruner(
            n_startup_trials=config.startup_trials, n_warmup_steps=config.prune_after_epochs
        )
        if config.prune
        else optuna.pruners.NopPruner()
    )
    study = optuna.create_study(
        storage=f"sqlite:///{out / DB_NAME}",
        study_name=name,
        direction="maximize",
        sampler=sampler,
        pruner=pruner,
        load_if_exists=True,
    )
    budget = study.user_attrs.get("trials")
    if budget is None:
        study.set_user_attr("trials", config.trials)
    elif budget != config.trials:  # the equal budget: a study keeps the count it was created with
        raise TuneError(
            f"study {name!r} in {out / DB_NAME} was created with trials={budget}, not {config.trials}: every "
            f"method gets the same budget; rerun with --trials {budget}, or tune into another folder"
        )
    return study


def folder_budget(base: TrainConfig, config: TuneConfig) -> dict[str, Any]:
    """What every study of one TUNE folder shares: the trial count and the trials' BUDGET_KEYS (the data as an
    absolute path, the batch size resolved: the paper's when None)."""
    budget: dict[str, Any] = {"trials": config.trials}
    for key in BUDGET_KEYS:
        budget[key] = getattr(base, key)
    budget["data"] = str(base.data) if is_url(base.data) else str(Path(base.data).resolve())
    budget["batch_size"] = base.resolved_batch_size
    return budget


def check_budget(out: Path, budget: dict[str, Any]) -> None:
    """Refuse a tune whose budget differs from the one TUNE/budget.json recorded (TuneError naming both and
    the fix); nothing recorded yet passes."""
    path = Path(out) / BUDGET_NAME
    if not path.is_file():
        return
    recorded = json.loads(path.read_text())
    differ = [f"{k} {recorded.get(k)!r} -> {v!r}" for k, v in budget.items() if recorded.get(k) != v]
    if differ:
        shown = ", ".join(f"{k}={v!r}" for k, v in recorded.items())
        raise TuneError(
            f"{path}: the studies in {out} were tuned with {shown}; this tune differs ({'; '.join(differ)}). "
            "Every method of one tune folder gets the same budget, so that they compare fairly: rerun with the "
            f"recorded settings (e.g. --trials {recorded.get('trials')}), or tune into another --out folder"
        )


def _check_best_file(best_path: Path, tree: dict, features: str, trials: int) -> None:
    """The settings already in best_params.yaml (kept beside the new ones) must have this tune's trial count:
    one file, one budget."""
    for method, fusions in (tree.get(features) or {}).items():
        for fusion, entry in (fusions or {}).items():
            had = (entry or {}).get("trials")
            if had != trials:
                raise TuneError(
                    f"{best_path} holds {study_name(features, method, fusion)} tuned with trials={had}, not "
                    f"{trials}: one file holds one budget; rerun with --trials {had}, or write elsewhere "
                    "(--best-params PATH or another --out folder)"
                )


def _recover_killed(study, trial_dir: Callable[[int], Path], log) -> None:
    """Trials left RUNNING by a killed process: FAIL (not counted) and their parameters enqueued again."""
    from optuna.trial import TrialState

    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        study._storage.set_trial_user_attr(trial._trial_id, "killed", True)
        study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
        if trial.params:
            study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})
        shutil.rmtree(trial_dir(trial.number), ignore_errors=True)
        log(f"  trial {trial.number} was interrupted: not counted, its parameters are tried again")


def tune_one(
    base: TrainConfig,
    method: str,
    fusion: str,
    out: Path,
    config: TuneConfig,
    pins: dict[str, Any] | None = None,
    log=print,
) -> dict[str, Any]:
    """Run the study of one (input path, method, fusion) until it holds `config.trials` counted trials;
    return its best trial's settings (see `best_settings`)."""
    import optuna
    from optuna.trial import TrialState

    from mlb.train.trainer import train

    pins = dict(pins or {})
    space = search_space(method, base.features, pins, lr=base.lr, weight_decay=base.weight_decay)
    name = study_name(base.features, method, fusion)
    study = _open_study(out, name, config)

    def trial_dir(number: int) -> Path:
        return out / base.features / method / fusion / f"trial{number:03d}"

    _recover_killed(study, trial_dir, log)
    while (done := sum(_counted(t) for t in study.get_trials(deepcopy=False))) < config.trials:
        trial = study.ask()
        values = pins | suggest(trial, space)
        shared, own = split_params(values)
        run_dir = trial_dir(trial.number)
        shutil.rmtree(run_dir, ignore_errors=True)  # a leftover of an earlier database: start clean
        run_config = dataclasses.replace(
            base,
            method=method,
            fusion=fusion,
            out=run_dir,
            resume=False,
            dvclive=False,
            method_params=own,
            lr=shared.get("lr", base.lr),
            weight_decay=shared.get("weight_decay", base.weight_decay),
        )

        def report(epoch: int, value: float, trial=trial) -> None:
            trial.report(value, epoch)
            if trial.should_prune():
                raise optuna.TrialPruned(f"epoch {epoch}: validation accuracy {value:.4f} below the median")

        shown = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items())
        log(f"[{name}] trial {trial.number} ({done + 1}/{config.trials}): {shown}")
        try:
            result = train(run_config, on_epoch=report, test=False, command=f"mlbpipe tune ({name})")
        except optuna.TrialPruned as pruned:
            study.tell(trial, state=TrialState.PRUNED)
            log(f"  pruned at {pruned}")
        except (TrainError, ValueError, FloatingPointError) as err:  # the trial's settings failed: it counts
            trial.set_user_attr("error", str(err))
            study.tell(trial, state=TrialState.FAIL)
            log(f"  failed: {err}")
        else:
            study.tell(trial, result["selected"]["val_accuracy"])
            log(f"  validation accuracy {result['selected']['val_accuracy']:.4f}")
        shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
    return best_settings(study, pins)


def best_settings(study, pins: dict[str, Any] | None = None) -> dict[str, Any]:
    """{lr, weight_decay, method_params, val_accuracy, trial, trials} of a study's best trial; pinned keys
    included. Keys the search did not cover (lr left to the paper's default) are absent."""
    from optuna.trial import TrialState

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        raise TuneError(
            f"study {study.study_name!r}: no trial completed (all pruned or failed); see the trial folders"
        )
    best = max(complete, key=lambda t: (t.value, -t.number))  # ties: the earliest trial
    shared, own = split_params({**(pins or {}), **best.params})
    return {
        **{k: float(v) for k, v in shared.items()},
        "method_params": own,
        "val_accuracy": float(best.value),
        "trial": best.number,
        "trials": sum(_counted(t) for t in study.get_trials(deepcopy=False)),
    }


def alone_runs(base: TrainConfig, out: Path, log=print) -> str:
    """`init_encoders` for tuning Uni-Pre: each encoder trained alone on the tuning data with the tune's seed
    and budget (the methods' defaults), into TUNE/alone/<method>/, once: a rerun reuses them."""
    from mlb.balancing.unipre import RUNS_ALONE
    from mlb.train.trainer import train

    sources = []
    for method in RUNS_ALONE:
        run_dir = Path(out) / "alone" / method
        if not (run_dir / "metrics.json").is_file():
            log(f"[{method}] trained alone first: Uni-Pre's trials start from it -> {run_dir}")
            config = dataclasses.replace(
                base, method=method, method_params={}, out=run_dir, resume=(run_dir / "checkpoints").exists()
            )
            train(config, test=False)  # the tune never reads the test split
        sources.append(f"{method.removesuffix('-only')}={run_dir}")
    return ",".join(sources)


def check_tune(
    base: TrainConfig, methods: list[str], out: Path, config: TuneConfig, best_path: Path
) -> tuple[dict[str, Any], dict]:
    """What `run_tune` checks before any trial (the command line calls it before it takes the folder):
    the settings, the method names, the folder's budget and that of the best settings' file. Returns (the
    budget, the file's tree so far)."""
    config.validate()
    for method in methods:  # unknown names fail before any trial runs
        search_space(method, base.features)
    budget = folder_budget(base, config)
    check_budget(out, budget)
    tree = read_tuned(best_path) if Path(best_path).exists() else {}
    _check_best_file(best_path, tree, base.features, config.trials)
    return budget, tree


def run_tune(
    base: TrainConfig,
    methods: list[str],
    fusions: list[str],
    out: Path,
    config: TuneConfig,
    pins: dict[str, dict[str, Any]] | None = None,
    log=print,
    best_path: Path | None = None,
) -> dict:
    """Tune every (method, fusion) with the same budget; write and return the best settings' tree
    (`best_path`, TUNE/best_params.yaml by default). The folder's budget (`check_budget`) and the file's are
    checked before any trial; the file is written once every study has finished its budget, so a tune that
    fails leaves the earlier file untouched.

    `pins` is {method: {key: value}}, with "shared" for keys every method gets (lr, weight_decay)."""
    from mlb.balancing import METHODS

    pins = pins or {}
    out = Path(out)
    best_path = Path(best_path or out / BEST_NAME)
    budget, tree = check_tune(base, methods, out, config, best_path)
    out.mkdir(parents=True, exist_ok=True)
    if not (out / BUDGET_NAME).is_file():
        atomic_write_json(out / BUDGET_NAME, budget)
    if (
        any(METHODS[m].needs_pretrained_encoders and METHODS[m].trains for m in methods)
        and not base.init_encoders
    ):
        base = dataclasses.replace(base, init_encoders=alone_runs(base, out, log))
    found = {}
    for method in methods:
        for fusion in fusions:
            supported = METHODS[method].supported_fusions
            if supported is not None and fusion not in supported:
                log(f"[{study_name(base.features, method, fusion)}] skipped: {method} supports only "
                    f"{sorted(supported)}")  # fmt: skip
                continue
            if not METHODS[method].trains:
                log(
                    f"[{study_name(base.features, method, fusion)}] skipped: {method} trains nothing, nothing to tune"
                )
                continue
            method_pins = dict(pins.get("shared", {})) | dict(pins.get(method, {}))
            found[method, fusion] = tune_one(base, method, fusion, out, config, method_pins, log)
    for (method, fusion), best in found.items():  # every study finished its budget: only now the file
        tree.setdefault(base.features, {}).setdefault(method, {})[fusion] = best
    atomic_write_text(best_path, yaml.safe_dump(tree, sort_keys=True))
    return tree


def read_tuned(path: Path) -> dict:
    """TUNE/best_params.yaml as written by `run_tune`; a clear error when it is not that file."""
    try:
        tree = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        raise TuneError(f"{path} does not exist: run `mlbpipe tune` first (it writes {BEST_NAME})") from None
    except yaml.YAMLError as err:
        raise TuneError(f"{path} is not valid YAML: {err}") from None
    if not isinstance(tree, dict):
        raise TuneError(f"{path}: expected {{features: {{method: {{fusion: settings}}}}}}, got {tree!r}")
    return tree


def tuned_settings(tree: dict, features: str, method: str, fusion: str) -> dict[str, Any] | None:
    """The tuned {lr, weight_decay, method_params} of one (input path, method, fusion), or None."""
    return ((tree.get(features) or {}).get(method) or {}).get(fusion)
