"""Checkpoints of a training run: what `RUN/checkpoints/last.pt` and `best.pt` hold, how they are written
(atomically) and read (never unpickling code), and the check that a resume continues the same run.

`last.pt` holds the model, the optimiser, the GradScaler, the balancer, the torch/numpy/python RNG states
and the position (`mlb.train.TrainState`); `best.pt` the model selected on validation. A checkpoint
written by W training processes resumes on any number (rank 0 writes it; every process reads it).
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mlb.common.atomic import atomic_output
from mlb.train.config import RESUMABLE_CHANGES, TrainConfig, TrainConfigError, TrainError


def rng_states() -> dict[str, Any]:
    """torch / numpy / python RNG states as tensors and plain lists (loadable with weights_only)."""
    _kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss = random.getstate()
    states = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "python": {"version": version, "internal": list(internal), "gauss": gauss},
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    n = states["numpy"]
    np.random.set_state(
        ("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )
    p = states["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss"]))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


LAST_KEYS = (
    "model",
    "optimizer",
    "scaler",
    "scheduler",
    "balancer",
    "rng",
    "state",
    "config",
    "method_params",
)


BEST_KEYS = ("model", "epoch", "step", "val_accuracy", "config")


def load_checkpoint(path: Path, keys: tuple[str, ...] = ()) -> dict[str, Any]:
    """A checkpoint, never unpickling code (weights_only=True accepts tensors, numbers, strings, lists and
    dicts). TrainError naming the file and the fix when it cannot be read or lacks one of `keys`."""
    fix = "delete it to train from scratch, or put back a good copy"
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise TrainError(f"{path} does not exist") from None
    except Exception as err:  # noqa: BLE001 (a cut file, random bytes, a foreign pickle: all mean "unreadable")
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise TrainError(
            f"{path} cannot be read as a checkpoint ({type(err).__name__}: {first[:200]}); it may have been cut "
            f"short (a full disk, a failed copy) or not be one: {fix}"
        ) from None
    missing = [key for key in keys if not isinstance(saved, dict) or key not in saved]
    if missing:
        raise TrainError(
            f"{path} is not a checkpoint of mlbpipe train (it has no {', '.join(missing)}): {fix}"
        )
    return saved


def save_checkpoint(obj: dict[str, Any], path: Path) -> None:
    """torch.save through a temp file and a rename; TrainError naming the file when the write fails."""
    try:
        with atomic_output(path) as tmp:  # a resume never reads half a checkpoint
            torch.save(obj, tmp)
    except (OSError, RuntimeError) as err:  # torch reports a failed write as a RuntimeError, without errno
        import shutil

        free = shutil.disk_usage(path.parent).free / 2**20 if path.parent.exists() else 0.0
        reason = (
            err.strerror if isinstance(err, OSError) and err.strerror else str(err).strip().splitlines()[0]
        )
        raise TrainError(
            f"writing {path} failed ({reason[:200]}; {free:.0f} MiB free there): the disk may be full or the folder "
            "read-only; free space (or fix its permissions) and rerun with --resume"
        ) from None


def check_resumable(
    saved: dict[str, Any], config: TrainConfig, params: dict[str, Any], meta: dict[str, Any]
) -> None:
    """A resume must continue the same run: same data, model and optimisation settings."""
    now = config.to_json()
    for key, value in saved["config"].items():
        if key not in RESUMABLE_CHANGES and now.get(key) != value:
            raise TrainConfigError(
                f"train config {key}={now.get(key)!r} differs from the checkpoint's {value!r}; "
                "a resumed run must use the same settings"
            )
    if saved["method_params"] != params:
        raise TrainConfigError(
            f"method parameters {params!r} differ from the checkpoint's {saved['method_params']!r}"
        )
    if saved["shard_meta"] != meta:
        raise TrainConfigError("the shards' meta.json differs from the one the checkpoint was trained on")
