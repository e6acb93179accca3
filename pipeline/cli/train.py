"""`mlbpipe train`: resolves paths and options, then calls `mlb.train.train`. Its training options are
generated from `mlb.train.config.TrainConfig` (pipeline/cli/training.py), so every default, help text and
choice is the dataclass's, shared with `compare` and `tune`."""

from __future__ import annotations

import os
from pathlib import Path

import typer

from mlb.common.storage import is_url, join
from pipeline.cli.common import command_errors, context, keyword, parse_params_json, with_signature
from pipeline.cli.training import resolve, training_parameters


def _why_no_shards(data: Path, features: str) -> str:
    """The corpus's reason when it has no such input path (OUT/corpus.json lists the ones it has), else the
    usual fix. Read from the file, not the corpus plug-in, so training never imports preparation code."""
    import json

    try:
        corpus = json.loads((data / "corpus.json").read_text())
        paths, name, note = corpus["input_paths"], corpus["corpus"], corpus["input_paths_note"]
    except (OSError, ValueError, KeyError, TypeError):
        return "run `mlbpipe prepare` first (or check --data)"
    if features not in paths:
        return f"{name} has no {features} path ({note}); train with --features " + ", ".join(paths)
    return "run `mlbpipe prepare` first (or check --data)"


def _train(
    ctx: typer.Context,
    data: str,
    out: Path,
    expect_meta: list[str] | None,
    s3_endpoint: str | None,
    params: Path | None,
    section: str,
    param: list[str] | None,
    **options,
) -> None:
    from mlb.train import TrainConfig, train
    from mlb.train.config import check_methods

    with command_errors("mlbpipe train", out):
        values, method_params = resolve(ctx, options, params, section, param, "this run trains")
        method = values.get("method", TrainConfig.method)
        check_methods([method], "--method")
        features = values["features"]
        if s3_endpoint:  # the variable botocore and mlb.common.storage read; loader workers inherit it
            os.environ["AWS_ENDPOINT_URL_S3"] = s3_endpoint
        # a URL is probed when the run opens it: a missing bucket or prefix fails there, naming the fix
        if is_url(data):
            shard_dir: Path | str = join(data, f"shards/{features}")
        else:
            shard_dir = Path(data) / "shards" / features
            if not shard_dir.is_dir():
                raise typer.BadParameter(
                    f"{shard_dir} does not exist: {_why_no_shards(Path(data), features)}", param_hint="--data"
                )
        expected: dict = dict(values.pop("expected_meta", None) or {})
        for key, value in parse_params_json(expect_meta, "--expect-meta").items():
            node = expected
            *parents, leaf = key.split(".")
            for part in parents:
                node = node.setdefault(part, {})
            node[leaf] = value
        config = TrainConfig(
            data=shard_dir,
            out=out,
            method_params=method_params.get(method, {}),
            expected_meta=expected,
            **values,
        )
        result = train(config)
    if not result:  # a training process other than rank 0 under torchrun: rank 0 reports
        return
    test = result["test"]
    heads = " ".join(f"{m} {h['accuracy']:.4f}" for m, h in test["unimodal"].items())
    typer.echo(
        f"selected epoch {result['selected']['epoch']} (val acc {result['selected']['val_accuracy']:.4f}); "
        f"test acc {test['fused']['accuracy']:.4f} ({heads}); wrote {out / 'metrics.json'}"
    )


_PARAMETERS = [
    context(),
    keyword(
        "data",
        str,  # not Path: pathlib folds the `//` of a URL
        typer.Option(
            ...,
            "--data",
            metavar="PATH|URL",
            help="The prepare output folder OUT, a path or a URL (s3://bucket/prefix); shards are read from "
            "OUT/shards/<features>/.",
        ),
    ),
    keyword(
        "out",
        Path,
        typer.Option(
            ...,
            "--out",
            help="The run folder RUN: metrics.json, checkpoints/, dvclive/, steps.jsonl, run.json.",
        ),
    ),
    keyword(
        "expect_meta",
        list[str] | None,
        typer.Option(
            None,
            "--expect-meta",
            metavar="KEY=VALUE",
            help="Require a meta.json value, KEY=VALUE with dotted keys (e.g. extractors.audio.layer=12); "
            "repeatable.",
            show_default="only the input path",
        ),
    ),
    keyword(
        "s3_endpoint",
        str | None,
        typer.Option(
            None,
            "--s3-endpoint",
            metavar="URL",
            help="S3-compatible server for s3:// --data, e.g. http://127.0.0.1:9000 (sets AWS_ENDPOINT_URL_S3; "
            "credentials from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY).",
            show_default="$AWS_ENDPOINT_URL, else AWS",
        ),
    ),
    *training_parameters("METHOD must be the trained method. Wins over --params.", exclude=("fold",)),
]

_DOC = """Train one model on prepared shards, select the checkpoint on validation accuracy, test it once.

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

cli = with_signature(_train, _PARAMETERS, _DOC)
