"""`mlbpipe tune`: a thin wrapper over `mlb.train.tune.run_tune`."""

from __future__ import annotations

from pathlib import Path

import typer

from mlb.train.tune import TuneConfig
from pipeline.cli.common import (
    EVAL_BATCH_SIZE_OPTION,
    IN_MEMORY_OPTION,
    command_errors,
    field_default,
    merge_pins,
    parse_method_params,
    pins_from_params,
    split_csv,
)


def _default(key: str) -> str:
    return f"[default: {field_default(TuneConfig, key)}]"


def cli(
    data: Path = typer.Option(
        ..., "--data", help="The prepare output folder OUT (shards in OUT/shards/<features>/)."
    ),
    out: Path = typer.Option(
        ...,
        "--out",
        help="Tune folder TUNE: optuna.sqlite3 (the studies), best_params.yaml (what compare reads), "
        "TUNE/<features>/<method>/<fusion>/trialNNN/ (each trial's logs).",
    ),
    features: str = typer.Option("raw", "--features", help="raw (ResNet-18) or cached (Conformer)."),
    methods: str = typer.Option(
        "joint,multi-loss,mlb", "--methods", help="Comma-separated balancing methods."
    ),
    fusions: str = typer.Option("late-linear", "--fusions", help="Comma-separated fusion heads."),
    trials: int = typer.Option(
        None, "--trials", min=1, help=f"Trials per (method, fusion), the same for all {_default('trials')}."
    ),
    epochs: int = typer.Option(20, "--epochs", min=1, help="Epoch budget of every trial."),
    size: str = typer.Option("small", "--size", help="Model size: tiny, small, paper."),
    batch_size: int = typer.Option(None, "--batch-size", min=1, help="[default: 32 raw, 8 cached]"),
    patience: int = typer.Option(10, "--patience", min=1, help="Early stopping patience in epochs."),
    lr: float = typer.Option(
        None, "--lr", help="Centre of the lr search (a decade either way) [default: the paper's]."
    ),
    weight_decay: float = typer.Option(
        None, "--weight-decay", help="Centre of the weight-decay search [default: the paper's]."
    ),
    seed: int = typer.Option(0, "--seed", help="Seed of every trial's training run."),
    sampler_seed: int = typer.Option(None, "--sampler-seed", help=f"TPE's seed {_default('seed')}."),
    prune: bool = typer.Option(
        True, "--prune/--no-prune", help="Median pruning on per-epoch validation accuracy."
    ),
    pin: list[str] = typer.Option(
        [],
        "--pin",
        help="Fix a setting instead of searching it: METHOD.KEY=VALUE (mlb.alpha=0.5) or lr=/weight_decay= "
        "for every method (repeatable).",
    ),
    params: Path = typer.Option(
        None, "--params", help="A params.yaml whose protocol.pin gives more pins (--pin wins)."
    ),
    best_params: Path = typer.Option(
        None, "--best-params", help="Where to write the best settings [default: TUNE/best_params.yaml]."
    ),
    in_memory: bool = IN_MEMORY_OPTION,
    eval_batch_size: int = EVAL_BATCH_SIZE_OPTION,
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N."),
) -> None:
    """Search each method's hyper-parameters on VALIDATION accuracy with the same trial budget for every
    method (Optuna TPE, median pruning), as the paper's protocol does; the test split is never read.

    Resumable: rerun the same command after a kill and it finishes the budget (an interrupted trial is not
    counted and is tried again). Watch it with `optuna-dashboard sqlite:///TUNE/optuna.sqlite3`. The best
    settings go to TUNE/best_params.yaml, for `mlbpipe compare --tuned TUNE/best_params.yaml`.
    """
    import sys

    from mlb.common.lock import folder_lock

    with command_errors("mlbpipe tune", out), folder_lock(out, " ".join(sys.argv)):
        from mlb.train import TrainConfig
        from mlb.train.tune import BEST_NAME, run_tune

        shard_dir = data / "shards" / features
        if not shard_dir.is_dir():
            raise typer.BadParameter(
                f"{shard_dir} does not exist: run `mlbpipe prepare` first", param_hint="--data"
            )
        given = {"trials": trials, "seed": sampler_seed}
        config = TuneConfig(**{k: v for k, v in given.items() if v is not None}, prune=prune)
        config.validate()
        base = TrainConfig(
            data=shard_dir,
            out=out,
            features=features,
            size=size,
            epochs=epochs,
            batch_size=batch_size,
            patience=patience,
            lr=lr,
            weight_decay=weight_decay,
            seed=seed,
            device=device,
            in_memory=in_memory,
            eval_batch_size=eval_batch_size,
        )
        base.validate()
        run_tune(
            base,
            split_csv(methods, "--methods"),
            split_csv(fusions, "--fusions"),
            out,
            config,
            merge_pins(pins_from_params(params, "--params"), parse_method_params(pin, "--pin")),
            log=typer.echo,
            best_path=best_params,
        )
        best = best_params or out / BEST_NAME
        typer.echo(best.read_text())
        typer.echo(f"wrote {best}")
