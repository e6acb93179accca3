"""`mlbpipe train`: a thin wrapper that resolves paths and options, then calls `mlb.train.train`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

FEATURES = ("cached", "raw")
SIZES = ("tiny", "small", "paper")


def _parse_params(items: list[str]) -> dict:
    """`KEY=VALUE` pairs; VALUE is read as JSON when it parses (numbers, true/false, lists), else a string."""
    params = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"{item!r} is not KEY=VALUE", param_hint="--param")
        try:
            params[key.replace("-", "_")] = json.loads(value)
        except json.JSONDecodeError:
            params[key.replace("-", "_")] = value
    return params


def cli(
    features: Annotated[
        str,
        typer.Option(
            "--features",
            help="Input path: 'cached' (Conformer on frozen "
            "features) or 'raw' (ResNet-18 on log-Mel spectrograms + 1 fps "
            "frames).",
        ),
    ],
    data: Annotated[
        Path,
        typer.Option(
            "--data", help="The prepare output folder OUT; shards are read from OUT/shards/<features>/."
        ),
    ],
    out: Annotated[
        Path,
        typer.Option(
            "--out", help="The run folder RUN: metrics.json, checkpoints/, dvclive/, steps.jsonl, run.json."
        ),
    ],
    method: str = typer.Option(
        "mlb",
        "--method",
        help="Balancing method: mlb, multi-loss, joint, ogm-ge, mslr, agm, pmr, mmcosine (those installed).",
    ),
    fusion: str = typer.Option(
        "late-linear", "--fusion", help="Fusion head: late-linear, mid-mlp, film, gated, tf."
    ),
    epochs: int = typer.Option(
        100, "--epochs", help="Maximum number of epochs (early stopping may end sooner)."
    ),
    seed: int = typer.Option(0, "--seed", help="Seed of the model initialisation and the data order."),
    batch_size: int = typer.Option(
        None, "--batch-size", help="Training batch size [default: 32 raw, 8 cached]."
    ),
    lr: float = typer.Option(
        None, "--lr", help="Adam learning rate [default: 1e-3 raw/ResNet, 5e-5 cached/Conformer]."
    ),
    weight_decay: float = typer.Option(
        None, "--weight-decay", help="Adam weight decay [default: 1e-4 raw, 5e-6 cached]."
    ),
    alpha: float = typer.Option(
        None,
        "--alpha",
        help="The method's alpha (MLB: tanh slope) [default: the "
        "authors' setting for this input path and fusion].",
    ),
    beta_max: float = typer.Option(
        None, "--beta-max", help="MLB's largest acceleration beta_max [default: the authors' setting]."
    ),
    param: Annotated[
        list[str] | None,
        typer.Option(
            "--param",
            metavar="KEY=VALUE",
            help="Any other method hyper-parameter as "
            "KEY=VALUE (repeatable), passed to the method as a keyword "
            "argument.",
        ),
    ] = None,
    size: str = typer.Option("paper", "--size", help="Model size: tiny (tests), small (CPU), paper."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N."),
    precision: str = typer.Option(
        "auto", "--precision", help="auto (bf16/fp16 autocast on CUDA, fp32 on CPU), fp32, bf16 or fp16."
    ),
    workers: int = typer.Option(
        0,
        "--workers",
        help="Data loader worker processes (the data order depends on this number: keep it when resuming).",
    ),
    patience: int = typer.Option(
        10, "--patience", help="Early stopping: epochs without a better validation accuracy."
    ),
    warmup_epochs: float = typer.Option(1.0, "--warmup-epochs", help="Constant-lr warm-up length in epochs."),
    restart_epochs: float = typer.Option(
        10.0, "--restart-epochs", help="Length of a cosine cycle (warm restarts)."
    ),
    max_steps: int = typer.Option(None, "--max-steps", help="Stop training after this many steps in all."),
    checkpoint_every: int = typer.Option(
        0, "--checkpoint-every", help="Also save checkpoints/last.pt every N steps (0: at epoch ends only)."
    ),
    resume: bool = typer.Option(
        False,
        "--resume",
        help="Continue from RUN/checkpoints/last.pt (exactly where it "
        "stopped); starts from scratch if there is none.",
    ),
    expect_meta: Annotated[
        list[str] | None,
        typer.Option(
            "--expect-meta",
            metavar="KEY=VALUE",
            help="Require a meta.json value, "
            "KEY=VALUE with dotted keys (e.g. "
            "extractors.audio.layer=12); repeatable.",
        ),
    ] = None,
    dvclive: bool = typer.Option(
        True, "--dvclive/--no-dvclive", help="Log every epoch with DVCLive to RUN/dvclive."
    ),
) -> None:
    """Train one model on prepared shards, select the checkpoint on validation accuracy, test it once.

    Writes RUN/metrics.json (validation metrics at the selected checkpoint and the test metrics: accuracy,
    macro-F1 and ECE of the fused output and of each unimodal head, the agreement table, confusion
    matrices), RUN/checkpoints/{last,best}.pt, RUN/dvclive/ and RUN/steps.jsonl (k_i, r_i, s_i per step).
    """
    from mlb.data import ShardError
    from mlb.train import TrainConfig, TrainConfigError, train

    if features not in FEATURES:
        raise typer.BadParameter(f"must be one of {FEATURES}, got {features!r}", param_hint="--features")
    if size not in SIZES:
        raise typer.BadParameter(f"must be one of {SIZES}, got {size!r}", param_hint="--size")
    shard_dir = data / "shards" / features
    if not shard_dir.is_dir():
        raise typer.BadParameter(
            f"{shard_dir} does not exist: run `mlbpipe prepare` first (or check --data)", param_hint="--data"
        )
    method_params = _parse_params(param or [])
    if alpha is not None:
        method_params["alpha"] = alpha
    if beta_max is not None:
        method_params["beta_max"] = beta_max
    expected: dict = {}
    for key, value in _parse_params(expect_meta or []).items():
        node = expected
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    config = TrainConfig(
        data=shard_dir,
        out=out,
        features=features,
        method=method,
        fusion=fusion,
        method_params=method_params,
        size=size,
        epochs=epochs,
        max_steps=max_steps,
        batch_size=batch_size,
        lr=lr,
        weight_decay=weight_decay,
        warmup_epochs=warmup_epochs,
        restart_epochs=restart_epochs,
        patience=patience,
        seed=seed,
        device=device,
        precision=precision,
        num_workers=workers,
        checkpoint_every=checkpoint_every,
        resume=resume,
        expected_meta=expected,
        dvclive=dvclive,
    )
    try:
        result = train(config)
    except (TrainConfigError, ShardError, ValueError) as err:
        typer.echo(f"mlbpipe train: error: {err}", err=True)
        raise typer.Exit(code=2) from None
    test = result["test"]
    heads = " ".join(f"{m} {h['accuracy']:.4f}" for m, h in test["unimodal"].items())
    typer.echo(
        f"selected epoch {result['selected']['epoch']} (val acc {result['selected']['val_accuracy']:.4f}); "
        f"test acc {test['fused']['accuracy']:.4f} ({heads}); wrote {out / 'metrics.json'}"
    )
