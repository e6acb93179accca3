"""`mlbpipe compare`: trains the runs (`mlb.experiment.sweep`), then tables and statistics (`mlb.analysis`)."""

from __future__ import annotations

from pathlib import Path

import typer

from pipeline.cli.common import choice, command_errors, context, keyword, split_csv, with_signature
from pipeline.cli.training import methods_and_fusions, resolve, training_parameters


def _compare(
    ctx: typer.Context,
    data: str | None,
    out: Path,
    methods: str,
    fusions: str,
    seeds: str,
    folds: str | None,
    tuned: Path | None,
    allow_untuned: bool,
    aggregate_only: bool,
    resample: str,
    params: Path | None,
    section: str,
    param: list[str] | None,
    **options,
) -> None:
    import sys

    from mlb.analysis.stats import UNITS
    from mlb.common.lock import folder_lock

    if resample not in UNITS:
        raise typer.BadParameter(f"{resample!r}: choose {' or '.join(UNITS)}", param_hint="--resample")

    with command_errors("mlbpipe compare", out):
        from mlb.analysis.compare import aggregate, load_runs, write_tables
        from mlb.common.atomic import atomic_write_json
        from mlb.experiment.sweep import check_fold_data, check_tuned, run_comparison
        from mlb.train import TrainConfig
        from mlb.train.config import check_fusions, check_methods

        base = None  # the runs' shared config; None: only aggregate
        if aggregate_only and not out.is_dir():  # nothing to aggregate: exit 1 and make no folder
            typer.echo(f"mlbpipe compare: {out} does not exist: no runs to aggregate", err=True)
            raise typer.Exit(1)
        if not aggregate_only:
            method_list, fusion_list = split_csv(methods, "--methods"), split_csv(fusions, "--fusions")
            check_methods(method_list, "--methods")
            check_fusions(fusion_list, "--fusions")
            values, method_params = resolve(
                ctx, options, params, section, param, "this comparison runs", method_list
            )
            features = values["features"]
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
            if fold_data is not None:  # each fold folder holds its own partition of one corpus
                check_fold_data(fold_data)
            tuned_tree = None
            if tuned is not None:
                from mlb.experiment.tune import read_tuned

                tuned_tree = read_tuned(tuned)
            elif allow_untuned:
                raise typer.BadParameter(
                    "lets methods missing from --tuned FILE run untuned: give --tuned too",
                    param_hint="--allow-untuned",
                )
            # every (method, fusion) tuned, with one trial count, unless --allow-untuned: checked before any run
            check_tuned(
                tuned_tree, features, method_list, fusion_list, source=str(tuned), allow_untuned=allow_untuned
            )
            # lr and weight decay given (options or file) win over the tuned ones, as --param does
            shared = {k: values[k] for k in ("lr", "weight_decay") if values.get(k) is not None}
            seed_list = fold_list or split_csv(seeds, "--seeds", int)
            base = TrainConfig(data=shard_dirs[0], out=out, **values)
            base.validate()
        with folder_lock(out, " ".join(sys.argv)):  # every setting checked: only now take the folder
            if base is not None:
                _, skipped = run_comparison(
                    base,
                    method_list,
                    fusion_list,
                    seed_list,
                    out,
                    method_params | ({"shared": shared} if shared else {}),
                    log=typer.echo,
                    fold_data=fold_data,
                    tuned=tuned_tree,
                    tuned_file=str(tuned) if tuned is not None else None,
                    allow_untuned=allow_untuned,
                )
                atomic_write_json(out / "skipped.json", skipped)
            finished = load_runs(out)
            summaries = aggregate(finished)
            if not summaries:
                typer.echo(
                    f"mlbpipe compare: no finished runs under {out} (a run is finished once its metrics.json "
                    "has a test entry): nothing to aggregate",
                    err=True,
                )
                raise typer.Exit(1)
            paths = write_tables(summaries, out)
            typer.echo(paths["md"].read_text())
            from mlb.analysis.stats import write_stats

            stats = write_stats(finished, out, unit=resample)
            typer.echo(stats["md"].read_text())
            from mlb.analysis.published import write_published

            typer.echo(write_published(finished, out).read_text())
            paths |= {f"stats_{k}": v for k, v in stats.items()}
            typer.echo("wrote " + ", ".join(str(p) for p in paths.values()))


_COMPARE_PARAMETERS = [
    context(),
    keyword(
        "data",
        str | None,
        typer.Option(
            None,
            "--data",
            metavar="PATH",
            help="The prepare output folder OUT (shards in OUT/shards/<features>/); with --folds, a path with "
            "{fold} in it, one prepared folder per fold (e.g. data/cremad-p{fold}).",
            show_default="required unless --aggregate-only",
        ),
    ),
    keyword(
        "out",
        Path,
        typer.Option(
            ...,
            "--out",
            help="Runs folder: RUNS/<features>/<method>/<fusion>/seed<k>/, and the tables RUNS/compare.{md,csv,json}.",
        ),
    ),
    *methods_and_fusions(),
    keyword(
        "seeds",
        str,
        typer.Option(
            "0,1,2",
            "--seeds",
            metavar="SEED,...",
            help="Seeds, comma-separated, all on the one --data folder.",
        ),
    ),
    keyword(
        "folds",
        str | None,
        typer.Option(
            None,
            "--folds",
            metavar="K,...",
            help="Folds instead of seeds, comma-separated (e.g. 1,2,3: CREMA-D VAVL partitions, UCF101 splits): "
            "fold K trains with seed K on --data with {fold} replaced by K, whose shards' meta.json must say "
            "partition K (checked before any run).",
            show_default="none: --seeds",
        ),
    ),
    keyword(
        "tuned",
        Path | None,
        typer.Option(
            None,
            "--tuned",
            metavar="FILE",
            help="best_params.yaml of `mlbpipe tune`: each method's tuned lr, weight decay and own settings "
            "(--lr, --weight-decay and --param given, here or in --params, win).",
            show_default="none: the defaults",
        ),
    ),
    keyword(
        "allow_untuned",
        bool,
        typer.Option(
            False,
            "--allow-untuned",
            help="With --tuned: train the methods (and fusion heads) the file lacks with their defaults instead "
            "of refusing; the tables mark them untuned.",
        ),
    ),
    keyword(
        "resample",
        str,
        typer.Option(
            "group",
            "--resample",
            metavar=choice(("group", "clip")),  # mlb.analysis.stats.UNITS (it imports scipy: not for --help)
            help="What the statistics' bootstrap resamples: the corpus's groups of test clips (e.g. CREMA-D's "
            "actors, each with all its clips: clips of one group are not independent), or single clips.",
        ),
    ),
    keyword(
        "aggregate_only",
        bool,
        typer.Option(
            False,
            "--aggregate-only",
            help="Do not train: only aggregate the runs already in RUNS (e.g. after DVC's matrix stages trained "
            "them).",
        ),
    ),
    *training_parameters(
        "Wins over --tuned and --params.", exclude=("method", "fusion", "seed", "fold", "resume")
    ),
]

_COMPARE_DOC = """Train methods x fusion heads x seeds (or folds) with the same budget; aggregate mean ± std over them,
and say with paired statistics whether each method differs from Joint and from MLB.

Every run trains what `mlbpipe train` would with the same options: TrainConfig's defaults, under --params
FILE's section, under the options given; only the method, its own settings, the fusion head and the seed (or
fold) change. With --tuned FILE every method and fusion head compared must be in FILE, tuned with one trial
count (else refused before any run; --allow-untuned trains the missing ones with their defaults). Finished
runs are kept (a rerun only trains what is missing; one trained from other settings is refused); a method
that does not support a fusion head (OGM-GE needs Late-Linear) is skipped and listed. Writes RUNS/compare.md, .csv, .json (mean
± std per method and fusion) and RUNS/compare_stats.md, .json (each method against Joint, MLB, Ensemble and Uni-Pre fine-tuned where run: the
paired difference per run, a 95% interval over the test groups alone and one that also covers retraining, its
p-value raw and Holm-adjusted over the table, and a verdict: better, worse or not resolved).
"""

compare = with_signature(_compare, _COMPARE_PARAMETERS, _COMPARE_DOC)
