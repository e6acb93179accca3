"""The run's logs: `RUN/steps.jsonl` (one line per training step), `RUN/epochs.jsonl` (one per epoch) and
DVCLive (`RUN/dvclive/`, one step per epoch). Under torchrun only rank 0 writes them, with values
averaged over the ranks.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from mlb.common.atomic import atomic_write_text


def summarise(values: list[float]) -> dict[str, float]:
    a = np.asarray(values, dtype=np.float64)
    return {"mean": float(a.mean()), "min": float(a.min()), "max": float(a.max())} if a.size else {}


class StepLog:
    """`RUN/steps.jsonl`: one JSON object per training step. On resume, lines after the checkpoint's
    step are dropped first, so the file equals an uninterrupted run's."""

    def __init__(self, path: Path, keep_until_step: int, enabled: bool = True) -> None:
        self.path = path
        kept, self.records = [], []
        self.file = None
        if not enabled:  # a training process other than rank 0: writes nothing
            return
        for line in path.read_text().splitlines() if path.exists() else []:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:  # the last line of a killed run may be cut short
                continue
            if record["step"] <= keep_until_step:
                kept.append(line)
                self.records.append(record)
        atomic_write_text(path, "".join(line + "\n" for line in kept))
        self.file = path.open("a")

    def series(self, epoch: int) -> dict[str, list[float]]:
        """{name: values} of an epoch's steps already on file (a run resumed mid-epoch), for its summary."""
        series: dict[str, list[float]] = {}
        for record in self.records:
            if record["epoch"] == epoch:
                for name, value in record.items():
                    if name not in ("step", "epoch", "lr"):
                        series.setdefault(name, []).append(value)
        return series

    def write(self, record: dict[str, Any]) -> None:
        if self.file is not None:
            self.file.write(json.dumps(record) + "\n")

    def flush(self) -> None:
        if self.file is not None:
            self.file.flush()

    def close(self) -> None:
        if self.file is not None:
            self.file.close()


class EpochLog:
    """Per-epoch logging to DVCLive (`RUN/dvclive/`), or nowhere when disabled."""

    def __init__(self, run: Path, enabled: bool, resume: bool) -> None:
        self.live = None
        if enabled:
            from dvclive import Live

            # save_dvc_exp=False: never touch git; dvcyaml=None: the project's dvc.yaml declares the
            # plots and metrics of RUN/dvclive itself.
            self.live = Live(
                dir=str(run / "dvclive"), resume=resume, save_dvc_exp=False, dvcyaml=None, report=None
            )

    @staticmethod
    def drop_epochs_from(run: Path, epoch: int) -> None:
        """On resume: remove plot rows of epochs >= `epoch` (logged before the run died, to be redone)."""
        for tsv in (run / "dvclive" / "plots" / "metrics").rglob("*.tsv"):
            header, *rows = tsv.read_text().splitlines()
            column = header.split("\t").index("step")
            kept = [row for row in rows if int(row.split("\t")[column]) < epoch]
            tsv.write_text("\n".join([header, *kept]) + "\n")

    def log(self, epoch: int, values: dict[str, float]) -> None:
        if self.live is None:
            return
        self.live.step = epoch
        for name, value in values.items():
            if value is not None and math.isfinite(value):
                self.live.log_metric(name, value)
        self.live.next_step()

    def close(self, summary: dict[str, float] | None = None) -> None:
        """End the DVCLive run; `summary` values (the selected checkpoint, test metrics) go into
        dvclive/metrics.json only, so `dvc exp show` lists them."""
        if self.live is not None:
            for name, value in (summary or {}).items():  # "test/acc" -> {"test": {"acc": ...}}, as log_metric
                group, _, key = name.rpartition("/")
                self.live.summary.setdefault(group, {})[key] = value
            self.live.end()


def epoch_summary(
    step_logs: dict[str, list[float]],
    val: dict[str, float],
    balancer_logs: dict[str, Any],
    skipped_steps: int,
    lr: float,
) -> dict[str, float]:
    """What DVCLive gets per epoch: train means (loss terms, accuracies), k/r/s mean/min/max, val metrics."""
    values: dict[str, float] = {"lr": lr, "skipped_steps": float(skipped_steps)}
    for name, series in step_logs.items():
        if name[:2] in ("k_", "r_", "s_"):
            for stat, value in summarise(series).items():
                values[f"train/{name}_{stat}"] = value
        else:
            values[f"train/{name}"] = summarise(series).get("mean", float("nan"))
    values |= {f"val/{k}": v for k, v in val.items()}
    values |= {f"balancer/{k}": float(v) for k, v in balancer_logs.items() if isinstance(v, (int, float))}
    return values
