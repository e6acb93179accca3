"""`mlbpipe compare` and `mlbpipe report`: thin wrappers over `mlb.compare` and `mlb.report`."""

from __future__ import annotations

from pathlib import Path

import typer

from pipeline.cli.common import command_errors, parse_params_json, split_csv


def compare(
    data: Path = typer.Option(
        None,
        "--data",
        help="The prepare output folder OUT (shards in OUT/shards/<features>/); "
        "not needed with --aggregate-only.",
    ),
    out: Path = typer.Option(
        ...,
        "--out",
        help="Runs folder: RUNS/<features>/<method>/<fusion>/seed<k>/, and the "
        "tables RUNS/compare.{md,csv,json}.",
    ),
    features: str = typer.Option("raw", "--features", help="raw (ResNet-18) or cached (Conformer)."),
    methods: str = typer.Option(
        "joint,multi-loss,mlb", "--methods", help="Comma-separated balancing methods."
    ),
    fusions: str = typer.Option("late-linear", "--fusions", help="Comma-separated fusion heads."),
    seeds: str = typer.Option(
        "0,1,2", "--seeds", help="Comma-separated seeds (or folds prepared separately)."
    ),
    epochs: int = typer.Option(20, "--epochs", min=1, help="The same epoch budget for every method."),
    size: str = typer.Option("small", "--size", help="Model size: tiny, small, paper."),
    batch_size: int = typer.Option(None, "--batch-size", min=1, help="[default: 32 raw, 8 cached]"),
    lr: float = typer.Option(None, "--lr", help="[default: the paper's per encoder type]"),
    patience: int = typer.Option(
        10, "--patience", min=1, help="Early stopping patience in epochs (all methods)."
    ),
    method_param: list[str] = typer.Option(
        [],
        "--method-param",
        help="METHOD.KEY=VALUE, e.g. mlb.alpha=2 (repeatable); unset keys keep the authors' defaults.",
    ),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N."),
    aggregate_only: bool = typer.Option(
        False,
        "--aggregate-only",
        help="Do not train: only aggregate the runs "
        "already in RUNS (e.g. after DVC's matrix stages trained them).",
    ),
) -> None:
    """Train methods x fusion heads x seeds with the same budget and aggregate mean ± std into one table.

    Finished runs are kept (a rerun only trains what is missing); a method that does not support a fusion
    head (OGM-GE needs Late-Linear) is skipped and listed. Writes RUNS/compare.md, .csv and .json.
    """
    import sys

    from mlb.lock import folder_lock

    with command_errors("mlbpipe compare", out), folder_lock(out, " ".join(sys.argv)):
        from mlb.atomic import atomic_write_json
        from mlb.compare import aggregate, load_runs, run_comparison, write_tables
        from mlb.train import TrainConfig

        if not aggregate_only:
            if data is None:
                raise typer.BadParameter("is required unless --aggregate-only", param_hint="--data")
            shard_dir = data / "shards" / features
            if not shard_dir.is_dir():
                raise typer.BadParameter(
                    f"{shard_dir} does not exist: run `mlbpipe prepare` first", param_hint="--data"
                )
            params: dict[str, dict] = {}
            for key, value in parse_params_json(method_param, "--method-param").items():
                method, sep, name = key.partition(".")
                if not sep:
                    raise typer.BadParameter(f"{key!r} must be METHOD.KEY", param_hint="--method-param")
                params.setdefault(method.replace("_", "-"), {})[name] = value
            base = TrainConfig(
                data=shard_dir,
                out=out,
                features=features,
                size=size,
                epochs=epochs,
                batch_size=batch_size,
                lr=lr,
                patience=patience,
                device=device,
            )
            base.validate()
            _, skipped = run_comparison(
                base,
                split_csv(methods, "--methods"),
                split_csv(fusions, "--fusions"),
                split_csv(seeds, "--seeds", int),
                out,
                params,
                log=typer.echo,
            )
            atomic_write_json(out / "skipped.json", skipped)
        summaries = aggregate(load_runs(out))
        if not summaries:
            typer.echo(f"mlbpipe compare: no finished runs under {out}", err=True)
            raise typer.Exit(1)
        paths = write_tables(summaries, out)
        typer.echo(paths["md"].read_text())
        typer.echo("wrote " + ", ".join(str(p) for p in paths.values()))


def report(
    runs: Path = typer.Option(..., "--runs", help="The runs folder of `mlbpipe compare` (RUNS)."),
    out: Path = typer.Option(None, "--out", help="Figures folder [default: RUNS/figures]."),
    fusion: str = typer.Option(
        "late-linear", "--fusion", help="Fusion head of the agreement and ECE figures."
    ),
) -> None:
    """Draw the paper's figures (PNG + SVG): k against r (Fig. 2) and, per input path, accuracy by method and
    fusion (Fig. 3), agreement groups (Fig. 4), ECE and reliability (Fig. 5), the unimodal heads beside the
    encoders trained alone, and training curves of k_i and unimodal accuracies for the first seed of each
    method. Writes FIGURES/report.md linking them."""
    from mlb.report import NoRunsError, write_report

    out = out or runs / "figures"
    try:
        made = write_report(runs, out, fusion)
    except NoRunsError as err:
        typer.echo(f"mlbpipe report: {err}", err=True)
        raise typer.Exit(1) from None
    typer.echo("\n".join(str(p) for p in made))
    typer.echo(f"wrote {out / 'report.md'}")
