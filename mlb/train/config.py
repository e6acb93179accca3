"""What a training run depends on: `TrainConfig`, every default of the trainer once, checked early (the key
and the value in every error). No torch at import, so the command line can show these defaults cheaply."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlb.common.contract import INPUT_PATHS
from mlb.common.storage import is_url

SIZES = ("tiny", "small", "paper")  # model sizes (mlb.models.encoders)
# Paper defaults per input path: (lr, weight decay, batch size). ResNet-18 on raw, Conformer on cached.
PAPER_OPTIM = {"raw": (1e-3, 1e-4, 32), "cached": (5e-5, 5e-6, 8)}
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
# Config keys that may change between an interrupted run and its resume (they do not change the math).
RESUMABLE_CHANGES = {
    "resume", "epochs", "max_steps", "device", "dvclive", "max_bad_steps", "max_skipped_fraction", "patience",
    "in_memory",
}  # fmt: skip


class TrainConfigError(ValueError):
    """A bad training setting; the message names the key and the value."""


class TrainError(RuntimeError):
    """A run that cannot go on (a checkpoint that cannot be read or written, too many non-finite steps); the
    message names the file or the count, and the fix."""


@dataclass
class TrainConfig:
    """Everything a run depends on. `validate()` fails early, naming the key and the value."""

    data: Path | str  # the shard folder of one input path: OUT/shards/<features>/, or a URL (s3://bucket/...)
    out: Path  # the run folder RUN/
    features: str = "cached"  # "raw" (ResNet-18) or "cached" (Conformer)
    method: str = "mlb"
    fusion: str = "late-linear"
    method_params: dict[str, Any] = field(default_factory=dict)  # e.g. {"alpha": 0.5, "beta_max": 10}
    size: str = "paper"  # model size: tiny | small | paper
    epochs: int = 100
    max_steps: int | None = None  # stop after this many training steps in all (None: no limit)
    batch_size: int | None = None  # None: 32 raw, 8 cached
    eval_batch_size: int | None = None  # None: the training batch size
    lr: float | None = None  # None: the paper's per encoder type
    weight_decay: float | None = None
    warmup_epochs: float = 1.0  # constant lr for this long
    restart_epochs: float = 10.0  # first cosine cycle; later cycles are restart_mult times longer
    restart_mult: int = 1
    min_lr_ratio: float = 0.01  # the cosine floor, as a fraction of lr
    patience: int = 10  # early stopping: epochs without a better validation accuracy
    seed: int = 0
    fold: int | None = (
        None  # which fold (data partition) this run belongs to, for the statistics; None: the seed
    )
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: str = "auto"  # auto (bf16 on CUDA if supported, else fp16; fp32 on CPU) | fp32 | bf16 | fp16
    num_workers: int = 0
    in_memory: bool = False  # decode every split once and keep it in memory (same batches; for small corpora)
    shuffle_buffer: int = 512
    checkpoint_every: int = 0  # also save last.pt every N steps (0: at epoch ends only)
    resume: bool = False
    max_bad_steps: int = 20  # consecutive non-finite steps before the run stops
    max_skipped_fraction: float = 0.5  # a run that skipped more of its steps (non-finite) fails
    dropout: float | None = None
    expected_meta: dict[str, Any] = field(default_factory=dict)  # extra meta.json keys to require
    dvclive: bool = True

    def validate(self) -> None:
        def bad(key: str, why: str) -> TrainConfigError:
            return TrainConfigError(f"train config {key}={getattr(self, key)!r}: {why}")

        if self.features not in INPUT_PATHS:
            raise bad("features", f"must be one of {INPUT_PATHS}")
        # A URL is probed when the run opens it (mlb.data.open_shard_folder): no network access here.
        if not is_url(self.data) and not Path(self.data).is_dir():
            raise bad("data", "is not a folder (expected OUT/shards/<features>/ with meta.json, sizes.json)")
        if self.size not in SIZES:
            raise bad("size", f"must be one of {SIZES}")
        for key in ("epochs", "restart_mult", "patience", "max_bad_steps"):
            if not isinstance(getattr(self, key), int) or getattr(self, key) < 1:
                raise bad(key, "must be an integer >= 1")
        for key in ("max_steps", "batch_size", "eval_batch_size"):
            value = getattr(self, key)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise bad(key, "must be an integer >= 1 (or unset)")
        if self.fold is not None and (not isinstance(self.fold, int) or self.fold < 0):
            raise bad("fold", "must be an integer >= 0 (or unset)")
        for key in ("num_workers", "checkpoint_every", "seed"):
            if not isinstance(getattr(self, key), int) or getattr(self, key) < 0:
                raise bad(key, "must be an integer >= 0")
        if self.in_memory and self.num_workers:
            raise bad("in_memory", "needs num_workers=0 (the decoded clips live in the training process)")
        if self.shuffle_buffer < 1:
            raise bad("shuffle_buffer", "must be >= 1")
        for key in ("lr", "weight_decay"):
            value = getattr(self, key)
            if value is not None and not (
                math.isfinite(value) and value >= (0 if key == "weight_decay" else 1e-12)
            ):
                raise bad(
                    key, "must be a finite number > 0" if key == "lr" else "must be a finite number >= 0"
                )
        if not (self.warmup_epochs >= 0 and math.isfinite(self.warmup_epochs)):
            raise bad("warmup_epochs", "must be >= 0")
        if not (self.restart_epochs > 0 and math.isfinite(self.restart_epochs)):
            raise bad("restart_epochs", "must be > 0")
        if not 0 <= self.min_lr_ratio <= 1:
            raise bad("min_lr_ratio", "must be in [0, 1]")
        if self.precision not in PRECISIONS:
            raise bad("precision", f"must be one of {PRECISIONS}")
        if not (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")):
            raise bad("device", "must be auto, cpu, cuda or cuda:N")
        if self.device.startswith("cuda") and not _cuda_available():
            raise bad("device", "CUDA is not available on this machine")
        if not 0 < self.max_skipped_fraction <= 1:
            raise bad("max_skipped_fraction", "must be in (0, 1]")
        if self.dropout is not None and not 0 <= self.dropout < 1:
            raise bad("dropout", "must be in [0, 1)")

    # Resolved values (the paper's defaults where unset)
    @property
    def resolved_lr(self) -> float:
        return self.lr if self.lr is not None else PAPER_OPTIM[self.features][0]

    @property
    def resolved_weight_decay(self) -> float:
        return self.weight_decay if self.weight_decay is not None else PAPER_OPTIM[self.features][1]

    @property
    def resolved_batch_size(self) -> int:
        return self.batch_size if self.batch_size is not None else PAPER_OPTIM[self.features][2]

    def to_json(self) -> dict[str, Any]:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(self).items()}


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()
