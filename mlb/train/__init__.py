"""The training harness: one run from shards to a selected, tested checkpoint (`mlbpipe train`). Read it in
this order:

- `config.py`      `TrainConfig`: every setting of a run and its default, checked early;
- `trainer.py`     `train(config)`: set-up, the epoch loop, selection on validation, the single test;
- `step.py`        `train_step`: one batch through the balancer's hooks and the optimiser;
- `checkpoint.py`  what a checkpoint holds, and the resume check;
- `logs.py`        steps.jsonl, epochs.jsonl, DVCLive;
- `evaluate.py`    the metrics of one split (validation selects, test reports);
- `distributed.py` torchrun: the process group, gradient sums, global-batch BatchNorm.
Many runs (tuning, comparisons over seeds and folds) are `mlb.experiment`'s.
"""

from mlb.train.config import TrainConfig, TrainConfigError, TrainError


def __getattr__(name: str):
    # `train` and `train_step` import torch: load them on first use, so that reading the config (the command
    # line's --help) stays fast.
    if name == "train":
        from mlb.train.trainer import train

        return train
    if name == "train_step":
        from mlb.train.trainer import train_step

        return train_step
    raise AttributeError(f"module 'mlb.train' has no attribute {name!r}")


__all__ = ["TrainConfig", "TrainConfigError", "TrainError", "train", "train_step"]
