"""One training process of tests/test_distributed.py, started by torchrun: one or more `mlbpipe ARGS...`
command lines (separated by `+++`), one after the other in the same process group, recording what this
rank computed at every step of each into RECORD_DIR/rank<R>.json (a list, one entry per command):
- `k`: the coefficients MLB's `before_step` applied on this rank (its own values, not the averaged logs);
- `weights`: a checksum of every parameter after the step (sum and sum of squares, float64);
- `code`: the command's exit status.

    torchrun --nproc_per_node 2 tests/ddp_worker.py RECORD_DIR train --data ... +++ train --data ...
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

import mlb.train.trainer
from mlb.balancing.mlb import MLB


def main() -> None:
    record_dir, args = Path(sys.argv[1]), sys.argv[2:]
    rank = int(os.environ.get("RANK", "0"))
    commands: list[list[str]] = [[]]
    for arg in args:
        commands.append([]) if arg == "+++" else commands[-1].append(arg)
    records: list[dict] = []

    before_step = MLB.before_step

    def recording_before_step(self, model, batch, out):
        logs = before_step(self, model, batch, out)
        records[-1]["k"].append({name: float(v) for name, v in logs.items() if name.startswith("k_")})
        return logs

    train_step = mlb.train.trainer.train_step

    def recording_train_step(ctx, batch):
        logs = train_step(ctx, batch)
        with torch.no_grad():
            records[-1]["weights"].append(
                [[float(p.double().sum()), float(p.double().pow(2).sum())] for p in ctx.model.parameters()]
            )
        return logs

    MLB.before_step = recording_before_step
    mlb.train.trainer.train_step = recording_train_step
    from pipeline.cli import main as cli_main

    # The first `mlbpipe train` sets the process group up; the later ones run in it.
    for command in commands:
        records.append({"command": command, "k": [], "weights": [], "code": 0})
        sys.argv = ["mlbpipe", *command]
        try:
            cli_main()
        except SystemExit as stop:
            records[-1]["code"] = stop.code or 0
    record_dir.mkdir(parents=True, exist_ok=True)
    (record_dir / f"rank{rank}.json").write_text(json.dumps(records))
    sys.exit(max(r["code"] for r in records))


if __name__ == "__main__":
    main()
