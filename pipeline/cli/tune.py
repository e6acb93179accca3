"""`mlbpipe tune`: a thin wrapper over `mlb.experiment.tune.run_tune`."""

from __future__ import annotations

from pathlib import Path

import typer

from mlb.experiment.tune import TuneConfig
from pipeline.cli.common import command_errors, context, field_default, keyword, split_csv, with_signature
from pipeline.cli.training import methods_and_fusions, resolve, training_parameters


def _tune(
    ctx: typer.Context,
    data: Path,
    out: Path,
    methods: str,
    fusions: str,
    trials: int,
    sampler_seed: int,
    prune: bool,
    best_params: Path | None,
    params: Path | None,
    section: str,
    param: list[str] | None,
    **options,
) -> None:
    import sys

    from mlb.common.lock import folder_lock

    with command_errors("mlbpipe tune", out):
        from mlb.experiment.tune import BEST_NAME, check_tune, run_tune
        from mlb.train import TrainConfig
        from mlb.train.config import check_fusions, check_methods

        method_list, fusion_list = split_csv(methods, "--methods"), split_csv(fusions, "--fusions")
        check_methods(method_list, "--methods")
        check_fusions(fusion_list, "--fusions")
        values, method_params = resolve(
            ctx, options, params, section, param, "this tune searches", method_list
        )
        shard_dir = data / "shards" / values["features"]
        if not shard_dir.is_dir():
            raise typer.BadParameter(
                f"{shard_dir} does not exist: run `mlbpipe prepare` first", param_hint="--data"
            )
        config = TuneConfig(trials=trials, seed=sampler_seed, prune=prune)
        config.validate()
        base = TrainConfig(data=shard_dir, out=out, **values)
        base.validate()
        # lr and weight decay given (options or file) are fixed, as --param settings are
        shared = {k: values[k] for k in ("lr", "weight_decay") if values.get(k) is not None}
        check_tune(base, method_list, out, config, best_params or out / BEST_NAME)  # the budgets too
        with folder_lock(out, " ".join(sys.argv)):  # every setting checked: only now take the folder
            run_tune(
                base,
                method_list,
                fusion_list,
                out,
                config,
                method_params | ({"shared": shared} if shared else {}),
                log=typer.echo,
                best_path=best_params,
            )
        best = best_params or out / BEST_NAME
        typer.echo(best.read_text())
        typer.echo(f"wrote {best}")


_PARAMETERS = [
    context(),
    keyword(
        "data",
        Path,
        typer.Option(..., "--data", help="The prepare output folder OUT (shards in OUT/shards/<features>/)."),
    ),
    keyword(
        "out",
        Path,
        typer.Option(
            ...,
            "--out",
            help="Tune folder TUNE: optuna.sqlite3 (the studies), best_params.yaml (what compare reads), "
            "TUNE/<features>/<method>/<fusion>/trialNNN/ (each trial's logs).",
        ),
    ),
    *methods_and_fusions(),
    keyword(
        "trials",
        int,
        typer.Option(
            field_default(TuneConfig, "trials"),
            "--trials",
            min=1,
            help="Trials per (method, fusion), the same for all.",
        ),
    ),
    keyword(
        "sampler_seed",
        int,
        typer.Option(field_default(TuneConfig, "seed"), "--sampler-seed", help="TPE's seed."),
    ),
    keyword(
        "prune",
        bool,
        typer.Option(
            field_default(TuneConfig, "prune"),
            "--prune/--no-prune",
            help="Median pruning on per-epoch validation accuracy.",
        ),
    ),
    keyword(
        "best_params",
        Path | None,
        typer.Option(
            None,
            "--best-params",
            metavar="FILE",
            help="Where to write the best settings.",
            show_default="TUNE/best_params.yaml",
        ),
    ),
    *training_parameters(
        "Fixed: left out of the search. Wins over --params.",
        exclude=("method", "fusion", "fold", "resume", "dvclive"),
    ),
]

_DOC = """Search each method's hyper-parameters on VALIDATION accuracy with the same trial budget for every
method (Optuna TPE, median pruning), as the paper's protocol does; the test split is never read.

Every trial trains what `mlbpipe train` would with the same options (TrainConfig's defaults, under --params
FILE's section, under the options given), with the searched settings: lr and weight decay (a decade either
way of the paper's) and the method's own search space. A setting given (--lr, --weight-decay, --param, here
or in --params) is fixed and left out of the search.

Resumable: rerun the same command after a kill and it finishes the budget (an interrupted trial is not
counted and is tried again). Watch it with `optuna-dashboard sqlite:///TUNE/optuna.sqlite3`. The best
settings go to TUNE/best_params.yaml, for `mlbpipe compare --tuned TUNE/best_params.yaml`.
"""

cli = with_signature(_tune, _PARAMETERS, _DOC)
