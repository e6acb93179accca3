"""`mlbpipe compare` and `mlbpipe report`: thin wrappers over `mlb.analysis.compare` and `mlb.analysis.report`."""

from __future__ import annotations

from pathlib import Path

import typer

from pipeline.cli.common import (
    EVAL_BATCH_SIZE_OPTION,
    IN_MEMORY_OPTION,
    command_errors,
    merge_pins,
    parse_method_params,
    pins_from_params,
    split_csv,
)


def compare(
    data: str = typer.Option(
        None,
        "--data",
        help="The prepare output folder OUT (shards in OUT/shards/<features>/); with --folds, a path with "
        "{fold} in it, one prepared folder per fold (e.g. data/cremad-p{fold}). Not needed with "
        "--aggregate-only.",
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
        "0,1,2", "--seeds", help="Comma-separated seeds, all on the one --data folder."
    ),
    folds: str = typer.Option(
        None,
        "--folds",
        help="Comma-separated folds (e.g. 1,2,3: CREMA-D VAVL partitions, UCF101 splits), each trained with "
        "seed = fold on --data with {fold} replaced; replaces --seeds.",
    ),
    tuned: Path = typer.Option(
        None,
        "--tuned",
        help="best_params.yaml of `mlbpipe tune`: each method's tuned lr, weight decay and own settings "
        "(--method-param still wins).",
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
        help="METHOD.KEY=VALUE, e.g. mlb.alpha=2, or lr=/weight_decay= for every method (repeatable); unset "
        "keys keep the tuned values or the authors' defaults.",
    ),
    params_file: Path = typer.Option(
        None, "--params", help="A params.yaml whose protocol.pin fixes settings (--method-param wins)."
    ),
    in_memory: bool = IN_MEMORY_OPTION,
    eval_batch_size: int = EVAL_BATCH_SIZE_OPTION,
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N."),
    aggregate_only: bool = typer.Option(
        False,
        "--aggregate-only",
        help="Do not train: only aggregate the runs "
        "already in RUNS (e.g. after DVC's matrix stages trained them).",
    ),
) -> None:
    """Train methods x fusion heads x seeds (or folds) with the same budget; aggregate mean ± std over them,
    and say with paired statistics whether each method differs from Joint and from MLB.

    Finished runs are kept (a rerun only trains what is missing); a method that does not support a fusion
    head (OGM-GE needs Late-Linear) is skipped and listed. Writes RUNS/compare.md, .csv, .json (mean ± std
    per method and fusion) and RUNS/compare_stats.md, .json (paired differences per fold and 95% paired
    bootstrap intervals over the test clips, with a verdict: better, worse or not resolved).
    """
    import sys

    from mlb.common.lock import folder_lock

    with command_errors("mlbpipe compare", out), folder_lock(out, " ".join(sys.argv)):
        from mlb.analysis.compare import aggregate, load_runs, write_tables
        from mlb.common.atomic import atomic_write_json
        from mlb.train import TrainConfig
        from mlb.train.sweep import run_comparison

        if not aggregate_only:
            if data is None:
                raise typer.BadParameter("is required unless --aggregate-only", param_hint="--data")
            fold_list = split_csv(folds, "--folds", int) if folds else None
            if fold_list is not None and "{fold}" not in data:
                raise typer.BadParameter(
                    f"{data!r} has no {{fold}}: with --folds give one folder per fold, e.g. data/cremad-p{{fold}}"
                    " (or use --seeds on one folder)",
                    param_hint="--data",
                )
            fold_data = None
            if fold_list is not None:
                fold_data = {k: Path(data.format(fold=k)) / "shards" / features for k in fold_list}
            shard_dirs = list(fold_data.values()) if fold_data else [Path(data) / "shards" / features]
            for shard_dir in shard_dirs:  # every fold's shards exist before the first run starts
                if not shard_dir.is_dir():
                    raise typer.BadParameter(
                        f"{shard_dir} does not exist: run `mlbpipe prepare` first", param_hint="--data"
                    )
            params = merge_pins(
                pins_from_params(params_file, "--params"), parse_method_params(method_param, "--method-param")
            )
            tuned_tree = None
            if tuned is not None:
                from mlb.train.tune import read_tuned

                tuned_tree = read_tuned(tuned)
            base = TrainConfig(
                data=shard_dirs[0],
                out=out,
                features=features,
                size=size,
                epochs=epochs,
                batch_size=batch_size,
                lr=lr,
                patience=patience,
                device=device,
                in_memory=in_memory,
                eval_batch_size=eval_batch_size,
            )
            base.validate()
            _, skipped = run_comparison(
                base,
                split_csv(methods, "--methods"),
                split_csv(fusions, "--fusions"),
                fold_list or split_csv(seeds, "--seeds", int),
                out,
                params,
                log=typer.echo,
                fold_data=fold_data,
                tuned=tuned_tree,
            )
            atomic_write_json(out / "skipped.json", skipped)
        finished = load_runs(out)
        summaries = aggregate(finished)
        if not summaries:
            typer.echo(f"mlbpipe compare: no finished runs under {out}", err=True)
            raise typer.Exit(1)
        paths = write_tables(summaries, out)
        typer.echo(paths["md"].read_text())
        from mlb.analysis.stats import write_stats

        stats = write_stats(finished, out)
        typer.echo(stats["md"].read_text())
        paths |= {f"stats_{k}": v for k, v in stats.items()}
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
    from mlb.analysis.report import NoRunsError, write_report

    out = out or runs / "figures"
    try:
        made = write_report(runs, out, fusion)
    except NoRunsError as err:
        typer.echo(f"mlbpipe report: {err}", err=True)
        raise typer.Exit(1) from None
    typer.echo("\n".join(str(p) for p in made))
    typer.echo(f"wrote {out / 'report.md'}")
