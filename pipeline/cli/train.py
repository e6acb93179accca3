"""`mlbpipe train`: resolves paths and options, then calls `mlb.train.train`. Every default is
`mlb.train.config.TrainConfig`'s (an option left out is not passed, and the help shows the dataclass's
value)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from mlb.common.storage import is_url, join
from mlb.train.config import INPUT_PATHS, SIZES, TrainConfig
from pipeline.cli.common import command_errors, field_default, float_or_auto, parse_params_json


def _why_no_shards(data: Path, features: str) -> str:
    """The corpus's reason when it has no such input path (from OUT/corpus.json), else the usual fix."""
    import json

    from pipeline.corpora import get_corpus

    try:
        corpus = get_corpus(json.loads((data / "corpus.json").read_text())["corpus"])
    except (OSError, ValueError, KeyError, TypeError):
        corpus = None
    if corpus is not None and features not in corpus.input_paths:
        return (
            f"{corpus.name} has no {features} path ({corpus.input_paths_note}); train with --features "
            + ", ".join(corpus.input_paths)
        )
    return "run `mlbpipe prepare` first (or check --data)"


def _default(key: str) -> str:
    return f"[default: {field_default(TrainConfig, key)}]"


def cli(
    features: Annotated[
        str,
        typer.Option(
            "--features",
            help="Input path: 'cached' (Conformer on frozen features) or 'raw' (ResNet-18 on log-Mel "
            "spectrograms + 1 fps frames).",
        ),
    ],
    data: Annotated[
        str,  # not Path: pathlib folds the `//` of a URL
        typer.Option(
            "--data",
            help="The prepare output folder OUT, a path or a URL (s3://bucket/prefix); shards are read from "
            "OUT/shards/<features>/.",
        ),
    ],
    out: Annotated[
        Path,
        typer.Option(
            "--out", help="The run folder RUN: metrics.json, checkpoints/, dvclive/, steps.jsonl, run.json."
        ),
    ],
    method: str = typer.Option(
        None,
        "--method",
        help="Balancing method: mlb, multi-loss, joint, ogm-ge, ogm, mslr, agm, pmr, mmcosine, mmpareto, "
        "reconboost, mla, gblending, dgl, audio-only, video-only; its own settings with --param "
        f"{_default('method')}.",
    ),
    fusion: str = typer.Option(
        None, "--fusion", help=f"Fusion head: late-linear, mid-mlp, film, gated, tf {_default('fusion')}."
    ),
    epochs: int = typer.Option(
        None,
        "--epochs",
        help=f"Maximum number of epochs (early stopping may end sooner) {_default('epochs')}.",
    ),
    seed: int = typer.Option(
        None, "--seed", help=f"Seed of the model initialisation and the data order {_default('seed')}."
    ),
    batch_size: int = typer.Option(
        None, "--batch-size", help="Training batch size [default: 32 raw, 8 cached]."
    ),
    lr: float = typer.Option(
        None, "--lr", help="Adam learning rate [default: 1e-3 raw/ResNet, 5e-5 cached/Conformer]."
    ),
    weight_decay: float = typer.Option(
        None, "--weight-decay", help="Adam weight decay [default: 1e-4 raw, 5e-6 cached]."
    ),
    alpha: str = typer.Option(
        None,
        "--alpha",
        metavar="FLOAT|auto",
        help="The method's alpha (MLB: tanh slope); auto (the default): the authors' setting for this corpus, "
        "input path and fusion, from the shards' meta.json.",
    ),
    beta_max: str = typer.Option(
        None,
        "--beta-max",
        metavar="FLOAT|auto",
        help="MLB's largest acceleration beta_max; auto (the default): the authors' setting, as --alpha.",
    ),
    param: Annotated[
        list[str] | None,
        typer.Option(
            "--param",
            metavar="KEY=VALUE",
            help="Any other method hyper-parameter as KEY=VALUE (repeatable), passed to the method as a keyword "
            "argument.",
        ),
    ] = None,
    size: str = typer.Option(
        None, "--size", help=f"Model size: tiny (tests), small (CPU), paper {_default('size')}."
    ),
    device: str = typer.Option(None, "--device", help=f"auto, cpu, cuda or cuda:N {_default('device')}."),
    precision: str = typer.Option(
        None,
        "--precision",
        help=f"auto (bf16/fp16 autocast on CUDA, fp32 on CPU), fp32, bf16 or fp16 {_default('precision')}.",
    ),
    workers: int = typer.Option(
        None,
        "--workers",
        help="Data loader worker processes (the data order depends on this number: keep it when resuming) "
        f"{_default('num_workers')}.",
    ),
    patience: int = typer.Option(
        None,
        "--patience",
        help=f"Early stopping: epochs without a better validation accuracy {_default('patience')}.",
    ),
    in_memory: bool = typer.Option(
        None,
        "--in-memory/--streaming",
        help="Decode every split once and keep it in memory: the same batches, faster on a small corpus "
        f"(needs --workers 0) {_default('in_memory')}.",
        show_default=False,
    ),
    eval_batch_size: int = typer.Option(
        None,
        "--eval-batch-size",
        min=1,
        help="Batch size of validation and test [default: the training one].",
    ),
    warmup_epochs: float = typer.Option(
        None, "--warmup-epochs", help=f"Constant-lr warm-up length in epochs {_default('warmup_epochs')}."
    ),
    restart_epochs: float = typer.Option(
        None,
        "--restart-epochs",
        help=f"Length of a cosine cycle (warm restarts) {_default('restart_epochs')}.",
    ),
    max_steps: int = typer.Option(None, "--max-steps", help="Stop training after this many steps in all."),
    checkpoint_every: int = typer.Option(
        None,
        "--checkpoint-every",
        help=f"Also save checkpoints/last.pt every N steps (0: at epoch ends only) {_default('checkpoint_every')}.",
    ),
    resume: bool = typer.Option(
        False,
        "--resume",
        help="Continue from RUN/checkpoints/last.pt (exactly where it stopped); starts from scratch if there is none.",
    ),
    expect_meta: Annotated[
        list[str] | None,
        typer.Option(
            "--expect-meta",
            metavar="KEY=VALUE",
            help="Require a meta.json value, KEY=VALUE with dotted keys (e.g. extractors.audio.layer=12); "
            "repeatable.",
        ),
    ] = None,
    dvclive: bool = typer.Option(
        True, "--dvclive/--no-dvclive", help="Log every epoch with DVCLive to RUN/dvclive."
    ),
    s3_endpoint: str = typer.Option(
        None,
        "--s3-endpoint",
        metavar="URL",
        help="S3-compatible server for s3:// --data, e.g. http://127.0.0.1:9000 (sets AWS_ENDPOINT_URL_S3 for "
        "this run; credentials from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY) [default: $AWS_ENDPOINT_URL, "
        "else AWS].",
    ),
) -> None:
    """Train one model on prepared shards, select the checkpoint on validation accuracy, test it once.

    SIGINT or SIGTERM stops the run after the step in progress, with a checkpoint, and exits with 75:
    rerun the same command with --resume to continue exactly. Another run on the same RUN is refused.

    Writes RUN/metrics.json (validation metrics at the selected checkpoint and the test metrics: accuracy,
    macro-F1 and ECE of the fused output and of each unimodal head, the agreement table, confusion
    matrices), RUN/checkpoints/{last,best}.pt, RUN/dvclive/ and RUN/steps.jsonl (k_i, r_i, s_i per step).

    Several processes: `torchrun --nproc_per_node N -m pipeline.cli train ...` (or `--no-python mlbpipe
    train ...`) trains data-parallel, with gloo on CPU and NCCL on GPUs; --batch-size is the global batch,
    split evenly among the processes, and rank 0 alone writes RUN. A checkpoint resumes with any number of
    processes.
    """
    from mlb.train import train

    if features not in INPUT_PATHS:
        raise typer.BadParameter(f"must be one of {INPUT_PATHS}, got {features!r}", param_hint="--features")
    if size is not None and size not in SIZES:
        raise typer.BadParameter(f"must be one of {SIZES}, got {size!r}", param_hint="--size")
    if s3_endpoint:  # the variable botocore and mlb.common.storage read; loader workers inherit it
        os.environ["AWS_ENDPOINT_URL_S3"] = s3_endpoint
    if is_url(data):  # probed when the run opens it: a missing bucket or prefix fails there, naming the fix
        shard_dir: Path | str = join(data, f"shards/{features}")
    else:
        shard_dir = Path(data) / "shards" / features
        if not shard_dir.is_dir():
            raise typer.BadParameter(
                f"{shard_dir} does not exist: {_why_no_shards(Path(data), features)}", param_hint="--data"
            )
    method_params = parse_params_json(param, "--param")
    alpha, beta_max = float_or_auto(alpha, "--alpha"), float_or_auto(beta_max, "--beta-max")
    if alpha is not None:
        method_params["alpha"] = alpha
    if beta_max is not None:
        method_params["beta_max"] = beta_max
    expected: dict = {}
    for key, value in parse_params_json(expect_meta, "--expect-meta").items():
        node = expected
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    given = {
        "method": method, "fusion": fusion, "size": size, "epochs": epochs, "max_steps": max_steps,
        "batch_size": batch_size, "lr": lr, "weight_decay": weight_decay, "warmup_epochs": warmup_epochs,
        "restart_epochs": restart_epochs, "patience": patience, "seed": seed, "device": device,
        "precision": precision, "num_workers": workers, "checkpoint_every": checkpoint_every,
        "in_memory": in_memory, "eval_batch_size": eval_batch_size,
    }  # fmt: skip
    config = TrainConfig(
        data=shard_dir,
        out=out,
        features=features,
        method_params=method_params,
        resume=resume,
        expected_meta=expected,
        dvclive=dvclive,
        **{key: value for key, value in given.items() if value is not None},
    )
    with command_errors("mlbpipe train", out):
        result = train(config)
    if not result:  # a training process other than rank 0 under torchrun: rank 0 reports
        return
    test = result["test"]
    heads = " ".join(f"{m} {h['accuracy']:.4f}" for m, h in test["unimodal"].items())
    typer.echo(
        f"selected epoch {result['selected']['epoch']} (val acc {result['selected']['val_accuracy']:.4f}); "
        f"test acc {test['fused']['accuracy']:.4f} ({heads}); wrote {out / 'metrics.json'}"
    )
