"""The trainer: shards in, a selected checkpoint and `RUN/metrics.json` out.

`train(config)` reads top to bottom in sections:
1. set-up      `_set_up`: the shards (checked before a sample is read), the method and its settings, the
               model, the optimiser and the lr schedule, all held by one `Run`;
2. resume      `_resume`: the state of `RUN/checkpoints/last.pt`, exactly;
3. train       `_fit`: epochs of `_train_epoch` (every batch through `mlb.train.step.train_step`), each
               ended by `_validate_and_select` and `_log_epoch`;
4. test        `_test_selected`: the checkpoint selected on validation, tested once.

The protocol:
- Adam with the paper's lr / weight decay per encoder type (ResNet 1e-3 / 1e-4, Conformer 5e-5 / 5e-6);
  the lr is held constant for a warm-up, then follows cosine annealing with warm restarts (`lr_at`).
- Every epoch ends with a validation pass; the checkpoint with the best VALIDATION accuracy (fused, or the
  trained head's for a "-only" method: `Balancer.selection_head`) is kept (`RUN/checkpoints/best.pt`; on a
  tie the first epoch stays), and training stops after `patience` epochs without improvement.
- The test split is evaluated exactly once, at the end, with the selected checkpoint.
- The method's hyper-parameters: the user's `method_params`, over the corpus's defaults that the shards'
  meta.json gives (`mlb.method_defaults`), over the balancer class's own; run.json and metrics.json record
  the first two merged.
- Gradient clipping (`mlb.train.step`): the global gradient norm clipped to the user's `grad_clip_norm`
  (0: none), else to the method's authors' (`Balancer.grad_clip_norm`: DGL 40, the others none); run.json's
  `grad_clip_norm` records the value used.
- Encoders from the runs alone (`init_encoders`, `mlb.train.pretrained`; Uni-Pre and Ensemble need them, and
  Uni-Pre frozen and Ensemble keep them fixed); a method that trains nothing (`Balancer.trains`: Ensemble) is
  validated once, as epoch 0, and tested.

Resume is exact on CPU. The data order of an epoch is a pure function of (seed, epoch)
(`mlb.data.ShardLoader`); a checkpoint (`RUN/checkpoints/last.pt`, written atomically at every epoch
end and every `checkpoint_every` steps) holds the model, the optimiser, the GradScaler, the balancer,
the torch/numpy/python RNG states and the position (epoch, batch within the epoch). Resuming replays
that epoch's order and skips the batches already trained on, so an interrupted and resumed run ends
with the same weights as an uninterrupted one. Checkpoints load with `torch.load(weights_only=True)`.

Non-finite loss or gradients: the step is skipped (no optimiser update) and counted; after
`max_bad_steps` such steps in a row the run stops with an error that says so.

Logs: `RUN/dvclive/` (DVCLive, one step per epoch: loss terms, accuracies per head, k/r/s summaries),
`RUN/steps.jsonl` (one line per training step: lr, loss terms, k_i, r_i, s_i), `RUN/epochs.jsonl` (with
each epoch's wall time), `RUN/run.json` (the settings, resolved, and where this process started),
`RUN/metrics.json`. On the terminal: a banner of run.json's settings before the first step (`_announce`),
then one line per epoch with its time and at most how long the rest of the budget takes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import json
import math
import random
import sys
import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from mlb.balancing import Balancer, build_balancer
from mlb.common.atomic import atomic_write_json
from mlb.common.device import resolve_device
from mlb.common.lock import folder_lock
from mlb.common.stopping import Stopped, StopRequest, stop_on_signals
from mlb.data import MODALITY_FIELDS, SPLITS, ShardFolder, ShardLoader, check_split, open_shard_folder
from mlb.method_defaults import method_defaults
from mlb.models import build_model
from mlb.train.checkpoint import (
    BEST_KEYS,
    LAST_KEYS,
    check_resumable,
    load_checkpoint,
    rng_states,
    save_checkpoint,
    set_rng_states,
)
from mlb.train.config import TrainConfig, TrainConfigError, TrainError, init_encoder_sources
from mlb.train.distributed import init_world, sync_batchnorm, world_from_env
from mlb.train.evaluate import evaluate_split, flat_val_metrics
from mlb.train.logs import EpochLog, StepLog, epoch_summary
from mlb.train.pretrained import freeze_encoders, load_encoders
from mlb.train.step import StepContext, to_device, train_step
from mlb.world import World


@dataclass
class TrainState:
    """Where the run is. Saved in every checkpoint; plain ints/floats so it loads with weights_only."""

    epoch: int = 0  # the epoch in progress (0-based)
    batch_in_epoch: int = 0  # batches of this epoch already trained on
    step: int = 0  # training batches processed in all (skipped non-finite steps included)
    skipped_steps: int = 0  # non-finite loss or gradient: no update
    bad_in_a_row: int = 0
    best_val_accuracy: float = -1.0
    best_epoch: int = -1
    best_step: int = -1
    epochs_without_improvement: int = 0
    stopped_early: bool = False


@dataclass
class Run:
    """One run while it trains: what `_set_up` built, read and advanced by the loop's sections."""

    config: TrainConfig
    world: World
    folder: ShardFolder
    train_loader: ShardLoader
    val_loader: ShardLoader
    eval_loader_kw: dict[str, Any]  # the evaluation loaders' settings (validation, test)
    method_params: dict[str, Any]  # the corpus's defaults under the user's (what run.json records)
    step: StepContext  # model, balancer, optimiser, scaler, ...
    base_lr: float
    schedule: dict[str, Any]  # keyword arguments of `lr_at`
    info: dict[str, Any]  # run.json
    state: TrainState = field(default_factory=TrainState)
    resumed: bool = False  # this process continues an earlier one's last.pt
    started: float = 0.0  # time.perf_counter() when the loop started

    @property
    def dir(self) -> Path:
        return Path(self.config.out)

    @property
    def last_path(self) -> Path:
        return self.dir / "checkpoints" / "last.pt"

    @property
    def best_path(self) -> Path:
        return self.dir / "checkpoints" / "best.pt"

    @property
    def selection_key(self) -> str:
        """The validation metric that selects the checkpoint: fused accuracy, or one head's."""
        head = self.step.balancer.selection_head
        return f"acc_{head}" if head else "acc"

    def say(self, message: str) -> None:
        if self.world.is_main:  # rank 0 alone prints and writes files
            print(message)

    def save_last(self) -> None:
        if self.world.is_main:
            save_checkpoint(self._last_checkpoint(), self.last_path)

    def _last_checkpoint(self) -> dict[str, Any]:
        ctx = self.step
        return {
            "model": ctx.model.state_dict(),
            "optimizer": ctx.optimizer.state_dict(),
            "scaler": ctx.scaler.state_dict(),
            "scheduler": dict(self.info["scheduler"], step=self.state.step),
            "balancer": ctx.balancer.state_dict(),
            "rng": rng_states(),
            "state": dataclasses.asdict(self.state),
            "config": self.config.to_json(),
            "method_params": self.method_params,
            "shard_meta": self.folder.meta,
        }


@dataclass
class RunLogs:
    steps: StepLog  # RUN/steps.jsonl
    epochs: StepLog  # RUN/epochs.jsonl, the per-epoch summaries
    dvclive: EpochLog


# --- the trainer -------------------------------------------------------------------------------------


def train(
    config: TrainConfig,
    *,
    on_step: Callable[[TrainState], None] | None = None,
    on_epoch: Callable[[int, float], None] | None = None,
    test: bool = True,
    command: str | None = None,
) -> dict[str, Any]:
    """Train, select on validation, test once; write RUN/metrics.json and return its content.

    The run holds RUN for its whole life (mlb.common.lock: a second run on the same folder is refused,
    naming this one's `command`). SIGINT or SIGTERM stops it after the step in progress, with a checkpoint,
    and raises mlb.common.stopping.Stopped: `--resume` continues exactly. `on_step(state)` is called after
    every training step (after any checkpoint of that step): tests use it to interrupt a run.
    `on_epoch(epoch, value)` is called after each epoch's validation and checkpoint with the validation
    accuracy that selects the checkpoint (fused, or the trained head's for a "-only" method): a tuner
    reports it and may raise to prune the run. `test=False` never reads the test split (a tuning trial):
    metrics.json then has no `test` entry and no test_predictions.json is written.
    """
    config.validate()
    world = world_from_env()  # torchrun's RANK / WORLD_SIZE; a single process outside it
    lock = (
        folder_lock(config.out, command or " ".join(sys.argv)) if world.is_main else contextlib.nullcontext()
    )
    with lock:
        run = _set_up(config)
        if _check_resume(run):
            return json.loads((run.dir / "metrics.json").read_text())  # finished before: not tested again
        _announce(run)
        logs = _open_logs(run)
        run.started = time.perf_counter()
        if run.step.balancer.trains:
            _fit(run, logs, on_step, on_epoch)
        else:  # Ensemble: the model as built (from the runs alone) is validated once, selected, and tested
            _validate_and_select(run)
            logs.steps.close()
            logs.epochs.close()
        check_skipped(run.state, config)
        if not run.world.is_main:  # rank 0 tests and writes; the other ranks are done
            logs.dvclive.close()
            return {}
        return _test_selected(run, logs, test)


# --- 1. set-up ---------------------------------------------------------------------------------------


def _set_up(config: TrainConfig) -> Run:
    """Everything the loop needs, in an order that keeps runs reproducible (the seed is set after the
    loaders and before the first random draw of the model)."""
    last_path = Path(config.out) / "checkpoints" / "last.pt"
    if last_path.exists() and not config.resume:
        raise TrainConfigError(
            f"train config out={str(config.out)!r}: it already holds a checkpoint ({last_path}); "
            "pass resume=True (--resume) or choose another folder"
        )
    world, device = init_world(resolve_device(config.device))  # one source of rank and world size
    amp_dtype = resolve_precision(config.precision, device)
    folder, train_loader, val_loader, eval_loader_kw = _set_up_data(config, world, device)
    seed_everything(config.seed)
    balancer, method_params = _set_up_method(config, folder)
    model = _set_up_model(config, folder, balancer, world, device)
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(parameters, lr=config.resolved_lr, weight_decay=config.resolved_weight_decay)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    grad_clip_norm = config.resolved_grad_clip_norm(balancer.grad_clip_norm)  # the user's, else the method's
    steps_per_epoch = train_loader.num_batches(0)  # equal for every epoch on one process
    schedule = {
        "warmup_steps": round(config.warmup_epochs * steps_per_epoch),
        "cycle_steps": max(1, round(config.restart_epochs * steps_per_epoch)),
        "cycle_mult": config.restart_mult,
        "min_ratio": config.min_lr_ratio,
    }
    info = {
        "config": config.to_json(),
        "method_params": method_params,
        "shard_meta": folder.meta,
        "num_parameters": sum(p.numel() for p in parameters),
        "device": str(device),
        "precision": str(amp_dtype).removeprefix("torch.") if amp_dtype else "fp32",
        "steps_per_epoch": steps_per_epoch,
        "world_size": world.size,
        "batch_size_per_process": train_loader.batch_size,
        "scheduler": {"name": "constant-warmup+cosine-restarts", **schedule},
        # what the banner prints, resolved: the method's every setting, the paper's lr / batch where unset
        "method_settings": method_settings(balancer, method_params),
        "lr": config.resolved_lr,
        "weight_decay": config.resolved_weight_decay,
        "batch_size": config.resolved_batch_size,
        "grad_clip_norm": grad_clip_norm,  # None: no clipping
        "clips": {split: folder.num_samples(split) for split in SPLITS},
    }
    step = StepContext(
        model, balancer, optimizer, scaler, parameters, device, amp_dtype, world, grad_clip_norm
    )
    return Run(
        config, world, folder, train_loader, val_loader, eval_loader_kw, method_params, step,
        config.resolved_lr, schedule, info,
    )  # fmt: skip


def _set_up_data(
    config: TrainConfig, world: World, device: torch.device
) -> tuple[ShardFolder, ShardLoader, ShardLoader, dict[str, Any]]:
    """The shard folder (shards of the wrong kind, or an empty split, fail now, not after hours of
    training), the training and validation loaders, and the evaluation loaders' settings (test's too)."""
    folder = open_shard_folder(config.data, {"input_path": config.features, **config.expected_meta})
    for split in SPLITS:
        check_split(folder, split)
    batch_size = local_batch_size(config.resolved_batch_size, world)
    check_world_shards(folder, world)
    loader_kw = {
        "seed": config.seed,
        "num_workers": config.num_workers,
        "pin_memory": device.type == "cuda",
        "in_memory": config.in_memory,
    }
    # Training shards are split by rank, then by loader worker; every rank takes the smallest rank's
    # number of batches, so no rank waits in a collective for one that ran out of data.
    train_loader = ShardLoader(
        folder, "train", batch_size, shuffle=True, shuffle_buffer=config.shuffle_buffer,
        rank=world.rank, world_size=world.size, **loader_kw,
    )  # fmt: skip
    # Every rank evaluates the whole split (rank 0's figures decide; the others only keep pace).
    eval_kw = dict(
        batch_size=config.eval_batch_size or config.resolved_batch_size, shuffle=False, rank=0, world_size=1,
        **loader_kw,
    )  # fmt: skip
    return folder, train_loader, ShardLoader(folder, "validation", **eval_kw), eval_kw


def _set_up_method(config: TrainConfig, folder: ShardFolder) -> tuple[Balancer, dict[str, Any]]:
    """The balancer, with the corpus's defaults for this setting (the shards' meta.json) under the user's
    explicit settings; returns it and the merged settings."""
    defaults = method_defaults(
        folder.meta, config.method, config.features, config.fusion, where=f"{folder.path}/meta.json"
    )
    params = defaults | dict(config.method_params)
    return build_balancer(config.method, **params), params


def _set_up_model(
    config: TrainConfig, folder: ShardFolder, balancer: Balancer, world: World, device: torch.device
) -> torch.nn.Module:
    """The model the method needs (its `model_options()`), with global-batch BatchNorm on several processes;
    the balancer refuses a model it cannot balance, and learns the training processes it reduces over."""
    model_kw = dict(
        features=config.features,
        fusion=config.fusion,
        num_classes=folder.num_classes,
        size=config.size,
        dropout=config.dropout,
        **balancer.model_options(),
    )
    if config.features == "cached":
        model_kw["input_dims"] = input_dims(folder)
    model = sync_batchnorm(build_model(**model_kw).to(device), world, device)
    if config.init_encoders:  # Uni-Pre: encoders and unimodal heads from unimodal runs, the fusion head new
        sources = init_encoder_sources(config.init_encoders)
        load_encoders(model, sources, features=config.features, size=config.size)
    elif balancer.needs_pretrained_encoders:
        raise TrainConfigError(
            f"train config method={config.method!r}: it starts from each encoder trained alone; give "
            "init_encoders (--init-encoders audio=RUN,video=RUN: runs of --method audio-only and video-only), "
            "or let `mlbpipe compare` train them first and pass them"
        )
    if balancer.frozen_encoders:
        freeze_encoders(model)
    balancer.check_model(model)
    balancer.world = world
    balancer.sync_logs = False  # step logs become floats once, after optimizer.step()
    return model


# --- 2. resume ---------------------------------------------------------------------------------------


def _check_resume(run: Run) -> bool:
    """Restore `last.pt` when resuming, then record in run.json where this process starts. True when the
    resumed run had already finished (its metrics.json stands: the test split is not read again)."""
    config = run.config
    run.resumed = config.resume and run.last_path.exists()
    if run.resumed:
        _resume(run)
    elif config.resume:
        run.say(f"mlbpipe train: --resume given but {run.last_path} does not exist: starting from scratch")
    state = run.state
    finished = state.epoch >= config.epochs or state.stopped_early
    if run.resumed and finished and (run.dir / "metrics.json").exists():
        run.say(f"mlbpipe train: {run.dir} is already finished; not evaluating the test split again")
        return True
    run.info["start"] = {"epoch": state.epoch, "batch_in_epoch": state.batch_in_epoch, "step": state.step}
    if run.world.is_main:
        atomic_write_json(run.dir / "run.json", run.info)
    return False


def _resume(run: Run) -> None:
    """Model, optimiser, scaler, balancer, position and RNG states of `last.pt`, after checking that it is
    the same run (mlb.train.checkpoint.check_resumable)."""
    saved = load_checkpoint(run.last_path, LAST_KEYS)
    check_resumable(saved, run.config, run.method_params, run.folder.meta)
    ctx = run.step
    ctx.model.load_state_dict(saved["model"])
    ctx.optimizer.load_state_dict(saved["optimizer"])
    ctx.scaler.load_state_dict(saved["scaler"])
    ctx.balancer.load_state_dict(saved["balancer"])
    run.state = TrainState(**saved["state"])
    set_rng_states(saved["rng"])
    run.say(
        f"mlbpipe train: resuming {run.last_path} at epoch {run.state.epoch}, batch {run.state.batch_in_epoch}, "
        f"step {run.state.step}"
    )


def _open_logs(run: Run) -> RunLogs:
    """steps.jsonl and epochs.jsonl keep what came before the resumed step; DVCLive drops the epochs that
    will be run again."""
    main, step = run.world.is_main, run.state.step
    if run.resumed and run.config.dvclive and main:
        EpochLog.drop_epochs_from(run.dir, run.state.epoch)
    return RunLogs(
        steps=StepLog(run.dir / "steps.jsonl", keep_until_step=step, enabled=main),
        epochs=StepLog(run.dir / "epochs.jsonl", keep_until_step=step, enabled=main),
        dvclive=EpochLog(run.dir, run.config.dvclive and main, resume=run.resumed),
    )


# --- what the run is about to do ----------------------------------------------------------------------


def _announce(run: Run) -> None:
    """Once per run, before its first step (rank 0): the banner, and a warning when the shards' features
    come from extractors with random weights (the demo's)."""
    if not run.world.is_main:
        return
    print("\n".join(banner_lines(run)))
    extractors = run.folder.meta.get("extractors", {})  # cached shards only
    random_init = [m for m, about in extractors.items() if about.get("random_init")]
    if random_init:
        warning = (
            f"mlbpipe train: WARNING: the shards' {' and '.join(random_init)} extractors have random weights "
            "(meta.json: random_init): this run's numbers only show that the cached path works"
        )
        print(textwrap.fill(warning, 80, subsequent_indent="  "), file=sys.stderr)


def banner_lines(run: Run) -> list[str]:
    """What the run trains, with every setting resolved, in aligned lines for an 80-column terminal; each
    value is the one run.json records."""
    info, config, meta = run.info, run.config, run.folder.meta
    state, world_size = run.state, info["world_size"]
    processes = f"{world_size} process" + ("es" if world_size > 1 else "")
    protocol = meta.get("config", {}).get("protocol")
    budget = f"at most {config.epochs} epochs" + (f" or {config.max_steps} steps" if config.max_steps else "")
    rows = {
        "method": f"{config.method}: "
        + (" ".join(f"{k}={v}" for k, v in info["method_settings"].items()) or "no settings"),
        "model": f"{config.size}, {info['num_parameters']:,} trainable parameters",
        "data": f"{config.data} ({meta['corpus']}" + (f", protocol {protocol})" if protocol else ")"),
        "clips": ", ".join(f"{split} {n}" for split, n in info["clips"].items()),
        "budget": f"{budget}, patience {config.patience}; {info['steps_per_epoch']} steps per epoch",
        "batch": f"{info['batch_size']} = {info['batch_size_per_process']} per process x {processes}",
        "optimiser": f"Adam, lr {info['lr']}, weight decay {info['weight_decay']}"
        + (f", gradient norm clipped at {info['grad_clip_norm']:g}" if info["grad_clip_norm"] else ""),
        "device": f"{info['device']}, {info['precision']}",
        "start": f"resumed at epoch {state.epoch}, batch {state.batch_in_epoch}, step {state.step} "
        "(checkpoints/last.pt)"
        if run.resumed
        else "from scratch",
        "out": str(run.dir),
    }
    lines = [f"mlbpipe train: {config.method} on the {config.features} path, {config.fusion} fusion"]
    for label, text in rows.items():  # long values wrap under their first word; paths are never cut
        lines += textwrap.wrap(
            text, 80, initial_indent=f"  {label:<10} ", subsequent_indent=" " * 13,
            break_long_words=False, break_on_hyphens=False,
        )  # fmt: skip
    return lines


# --- 3. train ----------------------------------------------------------------------------------------


def _fit(
    run: Run,
    logs: RunLogs,
    on_step: Callable[[TrainState], None] | None,
    on_epoch: Callable[[int, float], None] | None,
) -> None:
    """Epochs until the budget, early stopping or the step limit; validation and selection at each epoch's
    end. SIGINT / SIGTERM set `stop.requested`: the run ends after the step in progress, with a checkpoint."""
    config, state = run.config, run.state
    with contextlib.ExitStack() as cleanup:
        stop = cleanup.enter_context(stop_on_signals())
        cleanup.callback(logs.epochs.close)
        cleanup.callback(logs.steps.close)
        while state.epoch < config.epochs and not state.stopped_early:
            if config.max_steps is not None and state.step >= config.max_steps:
                break  # resumed after the step budget was spent
            began = time.perf_counter()
            epoch_logs, out_of_steps = _train_epoch(run, logs.steps, stop, on_step)
            flat, balancer_logs, improved = _validate_and_select(run)
            _log_epoch(run, logs, epoch_logs, flat, balancer_logs, improved, time.perf_counter() - began)
            if out_of_steps and state.batch_in_epoch < run.train_loader.num_batches(state.epoch):
                run.save_last()  # mid-epoch: a resume with more steps continues here
                break
            state.epoch += 1
            state.batch_in_epoch = 0
            run.save_last()
            if on_epoch is not None:
                on_epoch(state.epoch - 1, flat[run.selection_key])
            if out_of_steps:
                break


def _train_epoch(
    run: Run, step_log: StepLog, stop: StopRequest, on_step: Callable[[TrainState], None] | None
) -> tuple[dict[str, list[float]], bool]:
    """The epoch's remaining batches (all of them unless resumed mid-epoch). Returns the epoch's step logs
    by name (with those before a mid-epoch resume) and whether the step limit ended it."""
    config, state, ctx = run.config, run.state, run.step
    ctx.model.train()
    epoch_logs = step_log.series(state.epoch)  # {name: [values]}
    batches = tqdm(
        run.train_loader.iterate(state.epoch, skip_batches=state.batch_in_epoch),
        total=max(run.train_loader.num_batches(state.epoch) - state.batch_in_epoch, 0),
        desc=f"epoch {state.epoch}",
        leave=False,
        disable=None if run.world.is_main else True,
    )  # disable=None: no bar when not a terminal
    for batch in batches:
        lr = run.base_lr * lr_at(state.step, **run.schedule)
        for group in ctx.optimizer.param_groups:
            group["lr"] = lr
        logs = train_step(ctx, to_device(batch, ctx.device))
        _count_step(run, logs, lr)
        if logs is not None:
            step_log.write({"step": state.step, "epoch": state.epoch, "lr": lr, **logs})
            for name, value in logs.items():
                epoch_logs.setdefault(name, []).append(value)
        if config.checkpoint_every and state.step % config.checkpoint_every == 0:
            step_log.flush()
            run.save_last()
        if on_step is not None:
            on_step(state)
        if run.world.any_true(stop.requested):  # mid-epoch, no validation: the resumed run validates it once
            step_log.flush()
            run.save_last()
            raise Stopped(
                f"mlbpipe train: {stop.reason or 'another training process was stopped'} after step "
                f"{state.step} (epoch {state.epoch}, batch {state.batch_in_epoch}); checkpoint "
                f"{run.last_path}: rerun the same command with --resume to continue"
            )
        if config.max_steps is not None and state.step >= config.max_steps:
            return epoch_logs, True
    return epoch_logs, False


def _count_step(run: Run, logs: dict[str, float] | None, lr: float) -> None:
    """Advance the position; a skipped (non-finite) step is counted, and too many in a row stop the run."""
    state = run.state
    state.step += 1
    state.batch_in_epoch += 1
    if logs is not None:
        state.bad_in_a_row = 0
        return
    state.skipped_steps += 1
    state.bad_in_a_row += 1
    if state.bad_in_a_row >= run.config.max_bad_steps:
        raise TrainError(
            f"mlbpipe train: {state.bad_in_a_row} steps in a row had a non-finite loss or "
            f"gradient (step {state.step}, epoch {state.epoch}); stopping. Lower the lr "
            f"(now {lr:g}), use --precision fp32, or check the shards for NaN/Inf values."
        )


def _validate_and_select(run: Run) -> tuple[dict[str, float], dict[str, float], bool]:
    """Validation at an epoch's end (every batch also to the balancer's `observe_validation`); the balancer's
    per-epoch hook; best.pt when the selection metric improves (strictly: on a tie the earlier epoch stays),
    else one more epoch towards early stopping. Returns (the flat validation metrics, the balancer's logs,
    whether it improved)."""
    state, ctx, key = run.state, run.step, run.selection_key
    val_metrics, val_loss = evaluate_split(
        ctx.model, run.val_loader, ctx.device, ctx.amp_dtype, run.folder.num_classes,
        observe=ctx.balancer.observe_validation,
    )  # fmt: skip
    flat = run.world.broadcast_floats(flat_val_metrics(val_metrics, val_loss))  # rank 0's values decide
    balancer_logs = ctx.balancer.on_epoch_end(state.epoch, flat) or {}
    improved = flat[key] > state.best_val_accuracy
    if improved:
        state.best_val_accuracy, state.best_epoch = flat[key], state.epoch
        state.best_step = state.step
        state.epochs_without_improvement = 0
        if run.world.is_main:
            best = {
                "model": ctx.model.state_dict(),
                "epoch": state.epoch,
                "step": state.step,
                "val_accuracy": flat[key],
                "config": run.config.to_json(),
            }
            save_checkpoint(best, run.best_path)
    else:
        state.epochs_without_improvement += 1
        state.stopped_early = state.epochs_without_improvement >= run.config.patience
    return flat, balancer_logs, improved


def _log_epoch(
    run: Run,
    logs: RunLogs,
    epoch_logs: dict[str, list[float]],
    flat: dict[str, float],
    balancer_logs: dict[str, float],
    improved: bool,
    seconds: float,
) -> None:
    """The epoch's summary to DVCLive and epochs.jsonl (with its wall time), and one line on the terminal
    that ends with the epoch's time and how long the rest of the budget takes at most."""
    state = run.state
    lr = float(run.step.optimizer.param_groups[0]["lr"])
    summary = epoch_summary(epoch_logs, flat, balancer_logs, state.skipped_steps, lr)
    logs.dvclive.log(state.epoch, summary)  # no wall time: DVCLive's files stay equal for a resumed run
    logs.epochs.write({"epoch": state.epoch, "step": state.step, "seconds": round(seconds, 3), **summary})
    left = _steps_left(run)
    done_here = state.step - run.info["start"]["step"]  # this process's steps, validation time included
    eta = (
        f", at most {duration(left * (time.perf_counter() - run.started) / done_here)} left"
        if left and done_here
        else ""
    )
    run.say(
        f"epoch {state.epoch}: step {state.step}, val acc {flat['acc']:.4f} "
        + " ".join(f"{m} {flat[f'acc_{m}']:.4f}" for m in run.step.model.modalities)
        + (" (best)" if improved else "")
        + f"; {duration(seconds)}{eta}"
    )


def _steps_left(run: Run) -> int:
    """Training steps the budget still allows after this epoch: the epochs left, or `max_steps` if sooner;
    none once early stopping has ended the run."""
    config, state = run.config, run.state
    if state.stopped_early:
        return 0
    left = (config.epochs - state.epoch - 1) * run.info["steps_per_epoch"]
    if config.max_steps is not None:
        left = min(left, config.max_steps - state.step)
    return max(left, 0)


# --- 4. test once, at the checkpoint selected on validation ------------------------------------------


def _test_selected(run: Run, logs: RunLogs, test: bool) -> dict[str, Any]:
    """Load best.pt, evaluate validation (and test, once, unless `test` is False); write metrics.json and
    test_predictions.json; return the metrics."""
    config, state, ctx = run.config, run.state, run.step
    selected = load_checkpoint(run.best_path, BEST_KEYS)
    ctx.model.load_state_dict(selected["model"])
    val_metrics, _ = evaluate_split(
        ctx.model, run.val_loader, ctx.device, ctx.amp_dtype, run.folder.num_classes
    )
    head = ctx.balancer.selection_head
    result = {
        "method": config.method,
        "fusion": config.fusion,
        "features": config.features,
        "seed": config.seed,
        "fold": config.seed if config.fold is None else config.fold,
        "method_params": run.method_params,
        "selected": {
            "epoch": selected["epoch"],
            "step": selected["step"],
            "val_accuracy": selected["val_accuracy"],
            "criterion": f"validation {head + ' head' if head else 'fused'} accuracy",
        },
        "training": {
            "epochs_run": state.epoch + (1 if state.batch_in_epoch else 0),
            "steps": state.step,
            "skipped_nonfinite_steps": state.skipped_steps,
            "stopped_early": state.stopped_early,
            "seconds_this_process": round(time.perf_counter() - run.started, 3),
            "world_size": run.world.size,
        },
        "validation": val_metrics,
    }
    summary = {"selected/val_acc": selected["val_accuracy"], "selected/epoch": selected["epoch"]}
    if test:
        predictions: dict[str, Any] = {}
        test_loader = ShardLoader(run.folder, "test", **run.eval_loader_kw)
        test_metrics, _ = evaluate_split(
            ctx.model, test_loader, ctx.device, ctx.amp_dtype, run.folder.num_classes, predictions=predictions
        )
        result["test"] = test_metrics
        atomic_write_json(run.dir / "test_predictions.json", predictions, indent=None)
        summary |= {
            "test/acc": test_metrics["fused"]["accuracy"],
            "test/f1": test_metrics["fused"]["macro_f1"],
            **{f"test/acc_{m}": h["accuracy"] for m, h in test_metrics["unimodal"].items()},
        }
    atomic_write_json(run.dir / "metrics.json", result)
    logs.dvclive.close(summary)
    return result


# --- small helpers -----------------------------------------------------------------------------------


def lr_at(step: int, *, warmup_steps: int, cycle_steps: int, cycle_mult: int, min_ratio: float) -> float:
    """The lr factor (times the base lr) at a step: constant 1 during warm-up, then cosine annealing from
    1 to `min_ratio` with warm restarts (SGDR), cycles of `cycle_steps`, each `cycle_mult` times longer."""
    if step < warmup_steps:
        return 1.0
    t, length = step - warmup_steps, max(cycle_steps, 1)
    while t >= length:  # find the position inside the current cycle
        t -= length
        length *= cycle_mult
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * t / length))


def method_settings(balancer: Balancer, params: dict[str, Any]) -> dict[str, Any]:
    """Every keyword setting the method runs with: its class's defaults under `params` (the corpus's and
    the user's)."""
    keywords = inspect.signature(type(balancer).__init__).parameters.values()
    return {p.name: p.default for p in keywords if p.default is not p.empty} | params


def duration(seconds: float) -> str:
    """A wall time for people: 0.4s, 42.0s, 3m05s, 2h05m."""
    if seconds < 59.5:
        return f"{seconds:.1f}s"
    minutes = round(seconds) // 60
    if minutes < 60:
        return f"{minutes}m{round(seconds) % 60:02d}s"
    return f"{minutes // 60}h{minutes % 60:02d}m"


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for plain fp32. CPU runs fp32 (deterministic and exact resume)."""
    if device.type != "cuda" or precision == "fp32":
        return None
    if precision == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def local_batch_size(global_batch: int, world: World) -> int:
    """Each rank's share of the global batch (`batch_size` is the global batch, whatever the world size, so
    the lr and the schedule need no change); TrainConfigError when it does not divide evenly."""
    if global_batch % world.size:
        raise TrainConfigError(
            f"train config batch_size={global_batch} does not divide among {world.size} training processes; "
            f"use a multiple of {world.size}"
        )
    return global_batch // world.size


def check_world_shards(folder: ShardFolder, world: World) -> None:
    """Every rank needs a training shard of its own; TrainError naming the counts and the fixes."""
    shards = folder.shards("train")
    if len(shards) < world.size:
        raise TrainError(
            f"{folder.path}: {len(shards)} training shard(s) for {world.size} training processes; each needs at "
            "least one. Rewrite the shards smaller (prepare's shard size) or start fewer processes"
        )


def input_dims(folder: ShardFolder) -> dict[str, int]:
    """Feature size per modality of the cached path, from meta.json (`[T, D]` fields)."""
    return {m: int(folder.field_shape(f)[-1]) for m, f in MODALITY_FIELDS["cached"].items()}


def check_skipped(state: TrainState, config: TrainConfig) -> None:
    """A run that skipped more than `max_skipped_fraction` of its steps as non-finite learnt from too little
    of its data to report on: TrainError with the count and the likely causes."""
    if state.step and state.skipped_steps > config.max_skipped_fraction * state.step:
        raise TrainError(
            f"mlbpipe train: {state.skipped_steps} of {state.step} steps were skipped (a non-finite loss or "
            f"gradient), more than max_skipped_fraction={config.max_skipped_fraction}; no result is written. Likely "
            "causes: NaN/Inf in the inputs, a learning rate too high for this model, fp16 overflow (try "
            "--precision fp32 or bf16)"
        )
