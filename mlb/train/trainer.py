"""The trainer: shards in, a selected checkpoint and `RUN/metrics.json` out.

One loop in sections (data, model, optimiser, resume, train, validate/select, test). The protocol:
- Adam with the paper's lr / weight decay per encoder type (ResNet 1e-3 / 1e-4, Conformer 5e-5 / 5e-6);
  the lr is held constant for a warm-up, then follows cosine annealing with warm restarts (`lr_at`).
- Every epoch ends with a validation pass; the checkpoint with the best VALIDATION fused accuracy is
  kept (`RUN/checkpoints/best.pt`), and training stops after `patience` epochs without improvement.
- The test split is evaluated exactly once, at the end, with the selected checkpoint.
- The method's hyper-parameters: the user's `method_params`, over the corpus's defaults that the shards'
  meta.json gives (`mlb.method_defaults`), over the balancer class's own; run.json and metrics.json record
  the first two merged.

Resume is exact on CPU. The data order of an epoch is a pure function of (seed, epoch)
(`mlb.data.ShardLoader`); a checkpoint (`RUN/checkpoints/last.pt`, written atomically at every epoch
end and every `checkpoint_every` steps) holds the model, the optimiser, the GradScaler, the balancer,
the torch/numpy/python RNG states and the position (epoch, batch within the epoch). Resuming replays
that epoch's order and skips the batches already trained on, so an interrupted and resumed run ends
with the same weights as an uninterrupted one. Checkpoints load with `torch.load(weights_only=True)`.

Non-finite loss or gradients: the step is skipped (no optimiser update) and counted; after
`max_bad_steps` such steps in a row the run stops with an error that says so.

Logs: `RUN/dvclive/` (DVCLive, one step per epoch: loss terms, accuracies per head, k/r/s summaries),
`RUN/steps.jsonl` (one line per training step: lr, loss terms, k_i, r_i, s_i), `RUN/metrics.json`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from mlb.common.atomic import atomic_write_json
from mlb.common.device import resolve_device
from mlb.common.lock import folder_lock
from mlb.common.stopping import Stopped, stop_on_signals
from mlb.data import MODALITY_FIELDS, SPLITS, ShardFolder, ShardLoader, check_split, open_shard_folder
from mlb.method_defaults import method_defaults
from mlb.metrics import evaluate
from mlb.train.checkpoint import (
    BEST_KEYS,
    LAST_KEYS,
    check_resumable,
    load_checkpoint,
    rng_states,
    save_checkpoint,
    set_rng_states,
)
from mlb.train.config import TrainConfig, TrainConfigError, TrainError
from mlb.train.distributed import (
    init_world,
    sum_gradients_,
    sync_batchnorm,
    world_from_env,
)
from mlb.train.logs import EpochLog, StepLog, epoch_summary
from mlb.world import LOCAL, World


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


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


def grads_finite(parameters: list[torch.nn.Parameter]) -> bool:
    """True when every gradient is finite; one host sync for all parameters."""
    flags = [torch.isfinite(p.grad).all() for p in parameters if p.grad is not None]
    return bool(torch.stack(flags).all()) if flags else True


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


def flat_val_metrics(metrics: dict[str, Any], loss: float) -> dict[str, float]:
    """The flat dict balancers get in `on_epoch_end`: acc, f1, loss, acc_<modality>, f1_<modality>."""
    flat = {
        "acc": metrics["fused"]["accuracy"],
        "f1": metrics["fused"]["macro_f1"],
        "ece": metrics["fused"]["ece"],
        "loss": loss,
    }
    for m, head in metrics["unimodal"].items():
        flat |= {f"acc_{m}": head["accuracy"], f"f1_{m}": head["macro_f1"]}
    return flat


@torch.no_grad()
def evaluate_split(
    model,
    loader: ShardLoader,
    device: torch.device,
    amp_dtype,
    num_classes: int,
    predictions: dict[str, Any] | None = None,
) -> tuple[dict[str, Any], float]:
    """Metrics of one split (mlb.metrics.evaluate) and its mean fused cross-entropy.

    `predictions`, when given, is filled with the per-clip predicted classes in loader order:
    {"ids", "label", "fused", "unimodal": {modality: [...]}} (what `RUN/test_predictions.json` holds; the
    paired statistics of `mlb.analysis.stats` match two runs clip by clip)."""
    model.eval()
    ids, labels, fused, unimodal = [], [], [], {}
    for batch in loader.iterate(0):
        batch = to_device(batch, device)
        with autocast(device, amp_dtype):
            out = model(batch)
        ids += list(batch["id"])
        labels.append(batch["label"].cpu())
        fused.append(out.fused.float().cpu())  # [B, C]
        for m, logits in out.unimodal.items():
            unimodal.setdefault(m, []).append(logits.float().cpu())  # [B, C]
    label = torch.cat(labels)  # [N]
    fused_logits = torch.cat(fused)  # [N, C]
    loss = float(F.cross_entropy(fused_logits, label))
    metrics = evaluate(
        label.numpy(),
        fused_logits.numpy(),
        {m: torch.cat(v).numpy() for m, v in unimodal.items()},
        num_classes,
    )
    metrics["loss"] = loss
    if predictions is not None:
        predictions |= {
            "ids": ids,
            "label": label.tolist(),
            "fused": fused_logits.argmax(dim=1).tolist(),
            "unimodal": {m: torch.cat(v).argmax(dim=1).tolist() for m, v in unimodal.items()},
        }
    return metrics, loss


def autocast(device: torch.device, amp_dtype):
    if amp_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=amp_dtype)


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

    The run holds RUN for its whole life (mlb.common.lock: a second run on the same folder is refused, naming this
    one's `command`). SIGINT or SIGTERM stops it after the step in progress, with a checkpoint, and raises
    mlb.common.stopping.Stopped: `--resume` continues exactly. `on_step(state)` is called after every training
    step (after any checkpoint of that step): tests use it to interrupt a run. `on_epoch(epoch, value)` is
    called after each epoch's validation and checkpoint with the validation accuracy that selects the
    checkpoint (fused, or the trained head's for a "-only" method): a tuner reports it and may raise to prune
    the run. `test=False` never reads the test split (a
    tuning trial): metrics.json then has no `test` entry and no test_predictions.json is written.
    """
    config.validate()
    world = world_from_env()  # torchrun's RANK / WORLD_SIZE; a single process outside it
    lock = (
        folder_lock(config.out, command or " ".join(sys.argv)) if world.is_main else contextlib.nullcontext()
    )
    with lock:
        return _train(config, on_step, on_epoch, test)


def _train(
    config: TrainConfig,
    on_step: Callable[[TrainState], None] | None,
    on_epoch: Callable[[int, float], None] | None,
    test: bool,
) -> dict[str, Any]:
    from mlb.balancing import build_balancer
    from mlb.models import build_model

    run = Path(config.out)
    ckpt_dir = run / "checkpoints"
    last_path, best_path = ckpt_dir / "last.pt", ckpt_dir / "best.pt"
    resuming = config.resume and last_path.exists()
    if last_path.exists() and not config.resume:
        raise TrainConfigError(
            f"train config out={str(run)!r}: it already holds a checkpoint ({last_path}); "
            "pass resume=True (--resume) or choose another folder"
        )
    world, device = init_world(resolve_device(config.device))  # one source of rank and world size
    main = world.is_main  # rank 0 alone writes files

    def say(message: str) -> None:
        if main:
            print(message)

    amp_dtype = resolve_precision(config.precision, device)

    # --- data: refuse shards of the wrong kind before reading a sample -------------------------------
    folder = open_shard_folder(config.data, {"input_path": config.features, **config.expected_meta})
    for split in SPLITS:  # an empty or missing split fails now, not after hours of training
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
    val_loader = ShardLoader(folder, "validation", **eval_kw)
    steps_per_epoch = train_loader.num_batches(0)  # equal for every epoch on one process

    # --- model, balancer, optimiser ------------------------------------------------------------------
    seed_everything(config.seed)
    # The corpus's defaults for this setting (from the shards' meta.json), under the user's explicit ones.
    defaults = method_defaults(
        folder.meta, config.method, config.features, config.fusion, where=f"{folder.path}/meta.json"
    )
    params = defaults | dict(config.method_params)
    balancer = build_balancer(config.method, **params)
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
    model = sync_batchnorm(build_model(**model_kw).to(device), world, device)  # global-batch BatchNorm
    balancer.check_model(model)
    balancer.world = world  # the balancer reduces its statistics over the ranks
    if hasattr(balancer, "sync_logs"):
        balancer.sync_logs = False  # step logs become floats once, after optimizer.step()
    parameters = [p for p in model.parameters() if p.requires_grad]
    base_lr = config.resolved_lr
    optimizer = torch.optim.Adam(parameters, lr=base_lr, weight_decay=config.resolved_weight_decay)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    schedule = {
        "warmup_steps": round(config.warmup_epochs * steps_per_epoch),
        "cycle_steps": max(1, round(config.restart_epochs * steps_per_epoch)),
        "cycle_mult": config.restart_mult,
        "min_ratio": config.min_lr_ratio,
    }
    state = TrainState()
    run_info = {
        "config": config.to_json(),
        "method_params": params,
        "shard_meta": folder.meta,
        "num_parameters": sum(p.numel() for p in parameters),
        "device": str(device),
        "precision": str(amp_dtype).removeprefix("torch.") if amp_dtype else "fp32",
        "steps_per_epoch": steps_per_epoch,
        "world_size": world.size,
        "batch_size_per_process": batch_size,
        "scheduler": {"name": "constant-warmup+cosine-restarts", **schedule},
    }

    def checkpoint() -> dict[str, Any]:
        return {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scaler": scaler.state_dict(),
            "scheduler": dict(run_info["scheduler"], step=state.step),
            "balancer": balancer.state_dict(),
            "rng": rng_states(),
            "state": dataclasses.asdict(state),
            "config": config.to_json(),
            "method_params": params,
            "shard_meta": folder.meta,
        }

    def save_last() -> None:
        if main:
            save_checkpoint(checkpoint(), last_path)

    # --- resume ----------------------------------------------------------------------------------------
    if resuming:
        saved = load_checkpoint(last_path, LAST_KEYS)
        check_resumable(saved, config, params, folder.meta)
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        scaler.load_state_dict(saved["scaler"])
        balancer.load_state_dict(saved["balancer"])
        state = TrainState(**saved["state"])
        set_rng_states(saved["rng"])
        say(
            f"mlbpipe train: resuming {last_path} at epoch {state.epoch}, batch {state.batch_in_epoch}, "
            f"step {state.step}"
        )
    elif config.resume:
        say(f"mlbpipe train: --resume given but {last_path} does not exist: starting from scratch")
    if resuming and (state.epoch >= config.epochs or state.stopped_early) and (run / "metrics.json").exists():
        say(f"mlbpipe train: {run} is already finished; not evaluating the test split again")
        return json.loads((run / "metrics.json").read_text())
    run_info["start"] = {"epoch": state.epoch, "batch_in_epoch": state.batch_in_epoch, "step": state.step}
    if main:
        atomic_write_json(run / "run.json", run_info)
    step_log = StepLog(run / "steps.jsonl", keep_until_step=state.step, enabled=main)
    # the per-epoch summaries, too
    epochs_file = StepLog(run / "epochs.jsonl", keep_until_step=state.step, enabled=main)
    # Selection metric: validation fused accuracy, or one head's for a method that trains only that head.
    selection_head = getattr(balancer, "selection_head", None)
    selection_key = f"acc_{selection_head}" if selection_head else "acc"
    if resuming and config.dvclive and main:
        EpochLog.drop_epochs_from(run, state.epoch)
    epoch_log = EpochLog(run, config.dvclive and main, resume=resuming)
    started = time.perf_counter()

    # --- train: one epoch per iteration; validation and selection at each epoch end --------------------
    # SIGINT / SIGTERM set stop.requested: the run ends after the step in progress, with a checkpoint.
    with contextlib.ExitStack() as cleanup:
        stop = cleanup.enter_context(stop_on_signals())
        cleanup.callback(epochs_file.close)
        cleanup.callback(step_log.close)
        while state.epoch < config.epochs and not state.stopped_early:
            if config.max_steps is not None and state.step >= config.max_steps:
                break  # resumed after the step budget was spent
            model.train()
            epoch_logs = step_log.series(state.epoch)  # {name: [values]}; non-empty after a mid-epoch resume
            out_of_steps = False
            epoch_batches = train_loader.num_batches(state.epoch)
            batches = tqdm(
                train_loader.iterate(state.epoch, skip_batches=state.batch_in_epoch),
                total=max(epoch_batches - state.batch_in_epoch, 0),
                desc=f"epoch {state.epoch}",
                leave=False,
                disable=None if main else True,
            )  # disable=None: no bar when not a terminal
            for batch in batches:
                batch = to_device(batch, device)
                lr = base_lr * lr_at(state.step, **schedule)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                logs = train_step(
                    model, batch, balancer, optimizer, scaler, parameters, amp_dtype, device, world
                )
                state.step += 1
                state.batch_in_epoch += 1
                if logs is None:  # non-finite: no update
                    state.skipped_steps += 1
                    state.bad_in_a_row += 1
                    if state.bad_in_a_row >= config.max_bad_steps:
                        raise TrainError(
                            f"mlbpipe train: {state.bad_in_a_row} steps in a row had a non-finite loss or "
                            f"gradient (step {state.step}, epoch {state.epoch}); stopping. Lower the lr "
                            f"(now {lr:g}), use --precision fp32, or check the shards for NaN/Inf values."
                        )
                else:
                    state.bad_in_a_row = 0
                    step_log.write({"step": state.step, "epoch": state.epoch, "lr": lr, **logs})
                    for name, value in logs.items():
                        epoch_logs.setdefault(name, []).append(value)
                if config.checkpoint_every and state.step % config.checkpoint_every == 0:
                    step_log.flush()
                    save_last()
                if on_step is not None:
                    on_step(state)
                if world.any_true(
                    stop.requested
                ):  # mid-epoch, no validation: the resumed run validates it once
                    step_log.flush()
                    save_last()
                    raise Stopped(
                        f"mlbpipe train: {stop.reason or 'another training process was stopped'} after step {state.step} (epoch {state.epoch}, batch "
                        f"{state.batch_in_epoch}); checkpoint {last_path}: rerun the same command with --resume "
                        "to continue"
                    )
                if config.max_steps is not None and state.step >= config.max_steps:
                    out_of_steps = True
                    break

            # --- validate, select, stop early --------------------------------------------------------
            val_metrics, val_loss = evaluate_split(model, val_loader, device, amp_dtype, folder.num_classes)
            flat = world.broadcast_floats(flat_val_metrics(val_metrics, val_loss))
            balancer_logs = balancer.on_epoch_end(state.epoch, flat) or {}
            improved = flat[selection_key] > state.best_val_accuracy
            if improved:
                state.best_val_accuracy, state.best_epoch = flat[selection_key], state.epoch
                state.best_step = state.step
                state.epochs_without_improvement = 0
                best = {
                    "model": model.state_dict(),
                    "epoch": state.epoch,
                    "step": state.step,
                    "val_accuracy": flat[selection_key],
                    "config": config.to_json(),
                }
                if main:
                    save_checkpoint(best, best_path)
            else:
                state.epochs_without_improvement += 1
                state.stopped_early = state.epochs_without_improvement >= config.patience
            summary = epoch_summary(epoch_logs, flat, balancer_logs, state.skipped_steps, lr_now(optimizer))
            epoch_log.log(state.epoch, summary)
            epochs_file.write({"epoch": state.epoch, "step": state.step, **summary})
            say(
                f"epoch {state.epoch}: step {state.step}, val acc {flat['acc']:.4f} "
                + " ".join(f"{m} {flat[f'acc_{m}']:.4f}" for m in model.modalities)
                + (" (best)" if improved else "")
            )
            if out_of_steps and state.batch_in_epoch < epoch_batches:
                save_last()  # mid-epoch: a resume with more steps continues here
                break
            state.epoch += 1
            state.batch_in_epoch = 0
            save_last()
            if on_epoch is not None:
                on_epoch(state.epoch - 1, flat[selection_key])
            if out_of_steps:
                break

    # --- test once, at the checkpoint selected on validation (rank 0; the other ranks are done) ------
    check_skipped(state, config)
    if not main:
        epoch_log.close()
        return {}
    selected = load_checkpoint(best_path, BEST_KEYS)
    model.load_state_dict(selected["model"])
    val_metrics, _ = evaluate_split(model, val_loader, device, amp_dtype, folder.num_classes)
    result = {
        "method": config.method,
        "fusion": config.fusion,
        "features": config.features,
        "seed": config.seed,
        "fold": config.seed if config.fold is None else config.fold,
        "method_params": params,
        "selected": {
            "epoch": selected["epoch"],
            "step": selected["step"],
            "val_accuracy": selected["val_accuracy"],
            "criterion": f"validation {selection_head + ' head' if selection_head else 'fused'} accuracy",
        },
        "training": {
            "epochs_run": state.epoch + (1 if state.batch_in_epoch else 0),
            "steps": state.step,
            "skipped_nonfinite_steps": state.skipped_steps,
            "stopped_early": state.stopped_early,
            "seconds_this_process": round(time.perf_counter() - started, 3),
            "world_size": world.size,
        },
        "validation": val_metrics,
    }
    summary = {"selected/val_acc": selected["val_accuracy"], "selected/epoch": selected["epoch"]}
    if test:
        predictions: dict[str, Any] = {}
        test_loader = ShardLoader(folder, "test", **eval_kw)
        test_metrics, _ = evaluate_split(
            model, test_loader, device, amp_dtype, folder.num_classes, predictions=predictions
        )
        result["test"] = test_metrics
        atomic_write_json(run / "test_predictions.json", predictions, indent=None)
        summary |= {
            "test/acc": test_metrics["fused"]["accuracy"],
            "test/f1": test_metrics["fused"]["macro_f1"],
            **{f"test/acc_{m}": h["accuracy"] for m, h in test_metrics["unimodal"].items()},
        }
    atomic_write_json(run / "metrics.json", result)
    epoch_log.close(summary)
    return result


def train_step(
    model, batch, balancer, optimizer, scaler, parameters, amp_dtype, device, world: World = LOCAL
) -> dict[str, float] | None:
    """One batch: `balancer.updates_per_batch(model)` optimiser updates (one for every method but the alternating ones),
    each with the balancer's hooks; None when a loss or a gradient is not finite (the batch's remaining
    updates are skipped; updates already made stay).

    Under torchrun (`world`): each rank back-propagates its loss times n_r / N (its clips' share of the
    global batch), the gradients are summed over the ranks before `before_step`, and a non-finite loss on
    any rank skips the update on all; the returned logs are averaged over the ranks."""
    from mlb.balancing import floats_for_log

    # A skipped step must leave no trace: the forward pass also updates buffers (BatchNorm running
    # statistics), which a NaN input would poison. They are small: keep a copy to put back.
    buffers = [b.detach().clone() for b in model.buffers()]
    logs: dict[str, Any] = {}
    label = batch["label"]
    for substep in range(balancer.updates_per_batch(model)):
        balancer.substep = substep
        with autocast(device, amp_dtype):
            out = balancer.forward(model, batch)  # fused [B, C], unimodal {m: [B, C]}
            loss, step_logs = balancer.loss(model, batch, out)
        optimizer.zero_grad(set_to_none=True)
        rows = out.fused.shape[0]  # the clips this update's loss averages over
        finite = bool(torch.isfinite(loss.detach()))
        if world.distributed:  # one collective: the global batch's size, and whether every rank is finite
            total_rows, bad = world.sum(
                torch.tensor([rows, 0 if finite else 1], dtype=torch.float64)
            ).tolist()
            finite = bad == 0
            loss = loss * (rows / total_rows)  # the sum over ranks is then the global batch's mean loss
        if not finite:
            _restore(model, buffers)
            return None
        scaler.scale(loss).backward()
        sum_gradients_(parameters, world)  # the global batch's gradients, before the balancer reads them
        scaler.unscale_(optimizer)  # real gradient values for the balancer (no-op when disabled)
        logs |= {**step_logs, **(balancer.before_step(model, batch, out) or {})}
        if not grads_finite(parameters):
            optimizer.zero_grad(set_to_none=True)
            _restore(model, buffers)
            scaler.update()  # an fp16 scaler lowers its scale after an overflow
            return None
        scaler.step(optimizer)
        scaler.update()
        with torch.no_grad():  # training accuracy per head, from this update's outputs
            if out.fused.shape[0] == label.shape[0]:  # G-Blending trains on part of the batch: no figure
                logs["train_acc"] = (out.fused.argmax(1) == label).float().mean()
                for m, logits in out.unimodal.items():
                    logs[f"train_acc_{m}"] = (logits.argmax(1) == label).float().mean()
    return world.mean_logs(floats_for_log(logs), int(label.shape[0]))


def _restore(model, buffers: list[torch.Tensor]) -> None:
    with torch.no_grad():
        for buffer, saved in zip(model.buffers(), buffers):
            buffer.copy_(saved)


def lr_now(optimizer) -> float:
    return float(optimizer.param_groups[0]["lr"])


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
