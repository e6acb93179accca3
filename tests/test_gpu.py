"""The `gpu` tier: the trainer's CUDA path (`device="cuda"`), every mixed precision, the fp16 GradScaler,
and kill-free resume on the device. Tiny models on tiny shards (`helpers.shards`): well under a minute.

Skipped, with the reason, where no CUDA device is visible (`pytest -m gpu` selects the tier).

What is checked
- A few steps in each precision (auto, bf16, fp16, fp32) on raw and cached shards: the run finishes,
  the parameters and batches are on the device, the forward pass runs in the autocast dtype, the
  GradScaler is on exactly for fp16, logged losses, weights and optimiser state are finite, master
  weights stay fp32, and the checkpoint holds the scaler state (fp16; empty otherwise) and the CUDA RNG.
- Kill-free resume with deterministic kernels (`torch.use_deterministic_algorithms`), fp32, bf16 and
  fp16: stopping at step 3 (`max_steps`; fp32 also: an exception from `on_step` after step 4, mid
  epoch) and resuming to step 6 ends bit-identical to an uninterrupted run: the checkpoint (model,
  optimiser, GradScaler, balancer, RNG states, position), best.pt, steps.jsonl, epochs.jsonl, metrics.
- The same resume with the trainer's default kernels (which need not be deterministic on CUDA), fp32,
  bf16 and fp16: positions, scaler and schedule equal; weights and losses within `TOLERANCE`.

Checking the test logic without a GPU: `MLBPIPE_TEST_GPU_DEVICE=cpu` runs these tests on the CPU, and
the skipif then does not skip. It exists ONLY to check this file's logic:

    MLBPIPE_TEST_GPU_DEVICE=cpu .venv/bin/python -m pytest -q tests/test_gpu.py

On the CPU the trainer forces fp32 (no autocast, no GradScaler), so the expectations switch to fp32 and
every resume is exact: a pass there says nothing about the CUDA path. No other value is accepted.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers.shards import write_shard_folder

import mlb.train.trainer as train_module
from mlb.train import TrainConfig, train
from mlb.train.checkpoint import load_checkpoint
from mlb.train.config import PRECISIONS

_OVERRIDE = os.environ.get("MLBPIPE_TEST_GPU_DEVICE", "")
if _OVERRIDE not in ("", "cpu"):
    raise RuntimeError(
        f"MLBPIPE_TEST_GPU_DEVICE={_OVERRIDE!r}: only 'cpu' (to check the test logic) or unset is accepted"
    )
DEVICE = _OVERRIDE or "cuda"
ON_CPU = DEVICE == "cpu"

# Deterministic cuBLAS (needed by torch.use_deterministic_algorithms on CUDA); read when cuBLAS starts,
# so set it before any test runs CUDA work. It does not change results, only the cuBLAS workspace.
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.integration,
    pytest.mark.skipif(
        not ON_CPU and not torch.cuda.is_available(),
        reason="needs a CUDA device (none is visible); MLBPIPE_TEST_GPU_DEVICE=cpu checks only the test logic",
    ),
]

# 24 training clips / batch 8 = 3 steps per epoch; 2 epochs = 6 steps. HALF is an epoch boundary: a
# max_steps stop in mid epoch also validates there (an extra validation the uninterrupted run does
# not have), so only the on_step interruption below stops in mid epoch.
EPOCHS, STEPS_PER_EPOCH = 2, 3
STEPS, HALF, INTERRUPT_AT = EPOCHS * STEPS_PER_EPOCH, STEPS_PER_EPOCH, STEPS_PER_EPOCH + 1
# Dropout > 0 in the encoders and the Mid-MLP head: a resume must restore the (CUDA) RNG exactly.
RESUME_KW = {"fusion": "mid-mlp", "dropout": 0.2, "checkpoint_every": 1}
RUN_PRECISION_NAME = {None: "fp32", torch.bfloat16: "bfloat16", torch.float16: "float16"}
SCALER_KEYS = {"scale", "growth_factor", "backoff_factor", "growth_interval", "_growth_tracker"}

# Tolerances of a resume with the trainer's default (non-deterministic) kernels. The trainer does not
# ask for deterministic algorithms: cuDNN may pick convolution backward algorithms that accumulate with
# atomics (ResNet-18, raw) and the memory-efficient attention backward splits keys (Conformer, cached),
# so two runs of the same steps may differ in the last bits of a reduction, and half precision rounds
# such differences to its own, coarser ulp (fp16 2^-11, bf16 2^-8 relative). Adam then turns noise on
# gradients that are zero in exact arithmetic (attention key biases: softmax ignores a shift; the
# Conformer's depthwise-convolution bias before its BatchNorm) into lr-sized steps of random sign, so
# the weights differ more than the losses do.
# - "weights": |straight - resumed| / |straight - resume point| over the parameters (the movement of
#   the steps after the resume point: a wrong resume changes the weights by about as much);
# - "loss": relative, every logged training loss term; "val_loss": relative, each epoch's validation.
# Sized on the CPU (autocast fp16/bf16) against a worst case, every gradient element perturbed by one
# ulp of the precision at every step (fp32: up to 1e-4 relative): at most weights 0.013 / 0.056 / 0.21,
# loss 5e-7 / 7e-4 / 0.015, val_loss 1e-7 / 5e-5 / 2e-4 (fp32 / fp16 / bf16); a resume that lost the
# RNG state or the Adam state gave weights >= 0.05 / 0.37 / 0.38, loss >= 1.5e-3, val_loss >= 3e-5.
# So in fp32 these bounds catch such a resume (loss, val_loss), in fp16 mostly (weights), and in bf16
# they are a sanity bound; exactness itself is checked with deterministic kernels.
TOLERANCE = {
    "fp32": {"weights": 0.03, "loss": 1e-4, "val_loss": 1e-5},
    "fp16": {"weights": 0.2, "loss": 2e-3, "val_loss": 2e-4},
    "bf16": {"weights": 0.3, "loss": 0.03, "val_loss": 1e-3},
}
BATCHNORM_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("gpu_shards")
    return {
        "raw": write_shard_folder(root / "raw", "raw"),
        "cached": write_shard_folder(root / "cached", "cached", video_dim=32),
    }


def _config(shards: dict[str, Path], run: Path, features: str, **kw) -> TrainConfig:
    base = {
        "data": shards[features],
        "out": run,
        "features": features,
        "size": "tiny",
        "epochs": EPOCHS,
        "batch_size": 8,
        "seed": 5,
        "device": DEVICE,
        "dvclive": False,
    }
    return TrainConfig(**{**base, **kw})


def _expected_amp_dtype(precision: str) -> torch.dtype | None:
    """What the trainer documents: fp32 on the CPU; on CUDA "auto" is bf16 where the GPU supports it
    (natively: emulated bf16 does not count), else fp16."""
    if ON_CPU or precision == "fp32":
        return None
    if precision == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported(including_emulation=False) else torch.float16
    return {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]


@pytest.fixture
def step_spy(monkeypatch) -> dict[str, set]:
    """Wrap `mlb.train.trainer.train_step`: record where the parameters and the batch live, the dtype of the
    unimodal heads' logits in the training forward pass (an nn.Linear: the autocast dtype; the fused
    logits need not be, the Late-Linear head adds an fp32 bias), and whether the GradScaler is on."""
    seen: dict[str, set] = {"params": set(), "batch": set(), "head_dtype": set(), "scaler": set()}
    real = train_module.train_step

    def spy(ctx, batch):
        seen["params"] |= {str(p.device.type) for p in ctx.parameters}
        seen["batch"] |= {str(v.device.type) for v in batch.values() if torch.is_tensor(v)}
        seen["scaler"].add(ctx.scaler.is_enabled())
        handle = ctx.model.register_forward_hook(
            lambda _m, _i, out: seen["head_dtype"].update(v.dtype for v in out.unimodal.values())
        )
        try:
            return real(ctx, batch)
        finally:
            handle.remove()

    monkeypatch.setattr(train_module, "train_step", spy)
    return seen


@pytest.fixture
def deterministic_kernels():
    """Deterministic algorithms (an op without one raises and names itself), cuDNN deterministic, no
    autotuning; the previous settings are put back afterwards."""
    before = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.backends.cudnn.deterministic,
        torch.backends.cudnn.benchmark,
    )
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = before[2], before[3]


def _records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _all_finite(tree: Any) -> bool:
    if torch.is_tensor(tree):
        return not tree.is_floating_point() or bool(torch.isfinite(tree).all())
    if isinstance(tree, dict):
        return all(_all_finite(v) for v in tree.values())
    if isinstance(tree, (list, tuple)):
        return all(_all_finite(v) for v in tree)
    return not isinstance(tree, float) or math.isfinite(tree)


# --- (1) a few steps in each precision ----------------------------------------------------------------


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("features", ["raw", "cached"])
def test_few_steps_in_each_precision(shards, tmp_path, step_spy, features, precision):
    steps = STEPS_PER_EPOCH + 1  # into the second epoch: an epoch-end and a mid-epoch checkpoint
    run = tmp_path / "run"
    result = train(_config(shards, run, features, precision=precision, max_steps=steps))
    amp_dtype = _expected_amp_dtype(precision)

    run_info = json.loads((run / "run.json").read_text())
    assert run_info["device"].startswith(DEVICE)
    assert run_info["precision"] == RUN_PRECISION_NAME[amp_dtype]
    assert step_spy["params"] == {DEVICE} and step_spy["batch"] == {DEVICE}
    assert step_spy["head_dtype"] == {amp_dtype or torch.float32}  # the forward ran under autocast
    assert step_spy["scaler"] == {amp_dtype == torch.float16}

    assert result["training"]["steps"] == steps
    records = _records(run / "steps.jsonl")
    logged = [r["step"] for r in records]
    skipped = sorted(set(range(1, steps + 1)) - set(logged))
    assert result["training"]["skipped_nonfinite_steps"] == len(skipped)
    # The data is clean: only an fp16 GradScaler overflow may skip a step (and not all of them).
    if amp_dtype == torch.float16:
        assert len(skipped) < steps
    else:
        assert skipped == []
    for record in records:
        assert all(math.isfinite(v) for v in record.values() if isinstance(v, float)), record
        assert {"loss", "loss_fused", "k_audio", "k_video"} <= set(record)

    ckpt = load_checkpoint(run / "checkpoints" / "last.pt")
    assert ckpt["state"]["step"] == steps
    weights = {k: v for k, v in ckpt["model"].items() if v.is_floating_point()}
    assert {v.dtype for v in weights.values()} == {torch.float32}  # autocast keeps fp32 master weights
    assert _all_finite(ckpt["model"]) and _all_finite(ckpt["optimizer"])
    assert ("cuda" in ckpt["rng"]) == torch.cuda.is_available()
    if amp_dtype == torch.float16:
        scaler = ckpt["scaler"]
        assert set(scaler) == SCALER_KEYS
        # every skip was an overflow that halved the scale (growth_interval 2000 is never reached), and
        # the growth tracker counts the steps since the last one
        assert scaler["scale"] == 2.0**16 * 0.5 ** len(skipped)
        assert scaler["_growth_tracker"] == steps - max(skipped, default=0)
    else:
        assert ckpt["scaler"] == {}  # no scaler for bf16 / fp32

    best = load_checkpoint(run / "checkpoints" / "best.pt")
    assert best["model"].keys() == ckpt["model"].keys() and _all_finite(best["model"])
    for split in ("validation", "test"):
        metrics = result[split]
        assert metrics["num_samples"] == 12
        assert 0 <= metrics["fused"]["accuracy"] <= 1 and math.isfinite(metrics["loss"])
        assert set(metrics["unimodal"]) == {"audio", "video"}


# --- (2), (3) kill-free resume ------------------------------------------------------------------------


class _Interrupt(Exception):
    pass


def _interrupt_at(step: int):
    def on_step(state):
        if state.step == step:
            raise _Interrupt

    return on_step


def _train_resumed(shards, run: Path, features: str, stop: str, **kw) -> dict[str, Any]:
    """Train to `HALF` (max_steps) or to `INTERRUPT_AT` (on_step raises after that step's checkpoint), then
    resume in the same folder to `STEPS`. Returns the resumed run's metrics."""
    if stop == "max_steps":
        first = train(_config(shards, run, features, max_steps=HALF, **kw))
        assert first["training"]["steps"] == HALF
        stopped_at = HALF
    else:
        with pytest.raises(_Interrupt):
            train(_config(shards, run, features, **kw), on_step=_interrupt_at(INTERRUPT_AT))
        stopped_at = INTERRUPT_AT
    saved = load_checkpoint(run / "checkpoints" / "last.pt")["state"]
    assert (saved["step"], saved["epoch"], saved["batch_in_epoch"]) == (
        stopped_at,
        stopped_at // STEPS_PER_EPOCH,
        stopped_at % STEPS_PER_EPOCH,
    )
    performed = []  # on deterministic kernels a restart from step 0 ends the same: check where it started
    resumed = train(
        _config(shards, run, features, resume=True, **kw), on_step=lambda s: performed.append(s.step)
    )
    assert performed == list(range(stopped_at + 1, STEPS + 1))
    start = json.loads((run / "run.json").read_text())["start"]
    assert start == {key: saved[key] for key in ("epoch", "batch_in_epoch", "step")}
    return resumed


def _assert_tree_equal(a: Any, b: Any, where: str) -> None:
    if torch.is_tensor(a):
        assert torch.is_tensor(b) and a.dtype == b.dtype and a.shape == b.shape, where
        assert torch.equal(a, b), f"{where}: max |diff| {(a.double() - b.double()).abs().max().item():.3g}"
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for key in a:
            _assert_tree_equal(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_tree_equal(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def _without_time(result: dict[str, Any]) -> dict[str, Any]:
    training = {k: v for k, v in result["training"].items() if k != "seconds_this_process"}
    return {**result, "training": training}


@pytest.mark.parametrize(
    ("precision", "stops"),
    [
        pytest.param("fp32", ("max_steps", "interrupt"), id="fp32"),
        pytest.param("bf16", ("max_steps",), id="bf16"),
        pytest.param("fp16", ("max_steps",), id="fp16"),
    ],
)
@pytest.mark.parametrize("features", ["raw", "cached"])
def test_resume_is_bit_exact_with_deterministic_kernels(
    shards, tmp_path, deterministic_kernels, features, precision, stops
):
    """With deterministic kernels the CUDA path is a pure function of its inputs, in every precision
    (autocast and the GradScaler add no randomness), so any difference between the resumed and the
    uninterrupted run is state the checkpoint lost (the CUDA RNG, the scaler, Adam, the position).
    fp32 also stops in mid epoch; the data skipping there does not depend on the precision."""
    kw = {"precision": precision, **RESUME_KW}
    straight = train(_config(shards, tmp_path / "straight", features, **kw))
    a = load_checkpoint(tmp_path / "straight" / "checkpoints" / "last.pt")
    assert a["state"]["step"] == STEPS
    for stop in stops:
        run = tmp_path / stop
        resumed = _train_resumed(shards, run, features, stop, **kw)
        b = load_checkpoint(run / "checkpoints" / "last.pt")
        for key in a:
            if key != "config":  # holds resume / max_steps, which differ by design
                _assert_tree_equal(a[key], b[key], f"{stop}: last.pt {key}")
        best_a = load_checkpoint(tmp_path / "straight" / "checkpoints" / "best.pt")
        best_b = load_checkpoint(run / "checkpoints" / "best.pt")
        _assert_tree_equal(best_a["model"], best_b["model"], f"{stop}: best.pt model")
        assert (best_a["step"], best_a["val_accuracy"]) == (best_b["step"], best_b["val_accuracy"])
        for log in ("steps.jsonl", "epochs.jsonl"):
            assert (tmp_path / "straight" / log).read_text() == (run / log).read_text(), f"{stop}: {log}"
        assert _without_time(resumed) == _without_time(straight), stop


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
@pytest.mark.parametrize("features", ["raw", "cached"])
def test_resume_with_default_kernels_within_tolerance(shards, tmp_path, features, precision):
    """The trainer as it runs (no deterministic-algorithm settings): resumed at an epoch boundary, the run
    ends where the uninterrupted one does, within TOLERANCE (see there why not exactly)."""
    tol = TOLERANCE[precision]
    kw = {"precision": precision, **RESUME_KW}
    straight = train(_config(shards, tmp_path / "straight", features, **kw))
    run = tmp_path / "resumed"
    train(_config(shards, run, features, max_steps=HALF, **kw))
    at_half = load_checkpoint(run / "checkpoints" / "last.pt")
    performed = []  # a restart from step 0 may end within the tolerance: check where it started
    resumed = train(
        _config(shards, run, features, resume=True, **kw), on_step=lambda s: performed.append(s.step)
    )
    assert performed == list(range(HALF + 1, STEPS + 1))
    start = json.loads((run / "run.json").read_text())["start"]
    assert start == {"epoch": 1, "batch_in_epoch": 0, "step": HALF}  # HALF is an epoch boundary
    a = load_checkpoint(tmp_path / "straight" / "checkpoints" / "last.pt")
    b = load_checkpoint(run / "checkpoints" / "last.pt")

    for key in ("epoch", "batch_in_epoch", "step", "skipped_steps"):
        assert a["state"][key] == b["state"][key], key
    assert a["state"]["step"] == STEPS
    assert a["scaler"] == b["scaler"]  # fp16: same scale and growth tracker (a lost scaler state differs)
    assert a["scheduler"] == b["scheduler"]
    assert resumed["training"]["steps"] == straight["training"]["steps"]

    # weights: |straight - resumed| against |straight - the resume point|, parameters and BN statistics
    # apart (the running statistics move far more than the parameters and would hide a difference)
    diff_sq, moved_sq = {"params": 0.0, "buffers": 0.0}, {"params": 0.0, "buffers": 0.0}
    for name, wa in a["model"].items():
        wb, wh = b["model"][name], at_half["model"][name]
        if not wa.is_floating_point():  # BatchNorm's num_batches_tracked
            assert torch.equal(wa, wb), name
            continue
        assert torch.isfinite(wb).all(), name
        group = "buffers" if name.rsplit(".", 1)[-1] in BATCHNORM_BUFFERS else "params"
        diff_sq[group] += float((wa.double() - wb.double()).pow(2).sum())
        moved_sq[group] += float((wa.double() - wh.double()).pow(2).sum())
    for group in ("params", "buffers"):
        diff, moved = math.sqrt(diff_sq[group]), math.sqrt(moved_sq[group])
        assert moved > 0, group  # both models have BatchNorm (ResNet-18; the Conformer's conv module)
        assert diff <= tol["weights"] * moved, (
            f"{precision} {group}: |straight - resumed| {diff:.3g}, moved {moved:.3g}"
        )

    # logged losses, step by step, and each epoch's validation loss
    steps_a, steps_b = _records(tmp_path / "straight" / "steps.jsonl"), _records(run / "steps.jsonl")
    assert [r["step"] for r in steps_a] == [r["step"] for r in steps_b]
    for ra, rb in zip(steps_a, steps_b):
        assert ra.keys() == rb.keys() and ra["lr"] == rb["lr"]
        for key in (k for k in ra if k.startswith("loss")):
            assert math.isclose(ra[key], rb[key], rel_tol=tol["loss"], abs_tol=1e-7), (ra["step"], key)
    epochs_a, epochs_b = _records(tmp_path / "straight" / "epochs.jsonl"), _records(run / "epochs.jsonl")
    assert [(r["epoch"], r["step"]) for r in epochs_a] == [(r["epoch"], r["step"]) for r in epochs_b]
    for ra, rb in zip(epochs_a, epochs_b):
        close = math.isclose(ra["val/loss"], rb["val/loss"], rel_tol=tol["val_loss"], abs_tol=1e-7)
        assert close, (ra["epoch"], ra["val/loss"], rb["val/loss"])
