"""`mlbpipe synth CORPUS OUT`: a synthetic stand-in of a corpus, in its exact layout. One command per corpus
that has a stand-in; its options are the fields of the corpus's synth config (defaults and help from there).
`mlbpipe synth features OUT`: a synthetic corpus written straight into cached-feature shards
(`pipeline.synth_features`), options from `FeatureSynthConfig` the same way."""

from __future__ import annotations

import inspect
from pathlib import Path

import typer

from pipeline.cli.common import OneLineErrors, dataclass_options, exit_on, with_signature
from pipeline.corpora import corpus_names, get_corpus
from pipeline.params import ParamsError, from_mapping, load_params

app = typer.Typer(
    help="Generate a synthetic corpus in the exact layout of a real one.",
    no_args_is_help=True,
    cls=OneLineErrors,
    rich_markup_mode=None,
)


def _synth(corpus_name: str, ctx: typer.Context, out: Path, params: Path | None, **options) -> None:
    corpus = get_corpus(corpus_name)
    where = f"mlbpipe synth {corpus_name}"
    with exit_on(ParamsError, ValueError, command=where):
        section = {}
        if params is not None:
            section = (load_params(params).get("synth") or {}).get(corpus_name) or {}
        given = {k: v for k, v in options.items() if ctx.get_parameter_source(k).name != "DEFAULT"}
        config = from_mapping(corpus.synth_config, {**section, **given}, f"synth.{corpus_name}")
        corpus.check_synth(config)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".mlbpipe-write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        typer.echo(f"{where}: error: cannot write to OUT {out}: {err}", err=True)
        raise typer.Exit(2) from err
    summary = corpus.synthesize(out, config)
    typer.echo(summary.describe())


def _ctx_and_out(out_help: str) -> list[inspect.Parameter]:
    """The first two parameters of every synth command: typer's context and the OUT folder."""
    return [
        inspect.Parameter("ctx", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=typer.Context),
        inspect.Parameter(
            "out",
            inspect.Parameter.POSITIONAL_OR_KEYWORD,
            default=typer.Argument(..., help=out_help, show_default=False),
            annotation=Path,
        ),
    ]


def _command(corpus_name: str):
    corpus = get_corpus(corpus_name)
    parameters = [
        *_ctx_and_out("Folder to write the corpus into (created if needed)."),
        inspect.Parameter(
            "params",
            inspect.Parameter.KEYWORD_ONLY,
            default=typer.Option(
                None,
                "--params",
                help=f"A params.yaml whose section synth.{corpus_name} gives the options "
                "(options on the command line win).",
                show_default="none: the defaults below",
            ),
            annotation=Path | None,
        ),
        *dataclass_options(corpus.synth_config),
    ]
    doc = f"Generate a synthetic {corpus_name} corpus in OUT, in the exact layout of a real copy.\n\n"
    doc += inspect.getdoc(corpus.synth_config) or ""

    def run(ctx, out, params, **options):
        _synth(corpus_name, ctx, out, params, **options)

    return with_signature(run, parameters, doc)


for _name in corpus_names():
    if get_corpus(_name).synth_config is not None:
        app.command(_name)(_command(_name))


def _features(ctx: typer.Context, out: Path, **options) -> None:
    from pipeline.synth_features import FeatureSynthConfig, synthesize_features

    with exit_on(ParamsError, ValueError, command="mlbpipe synth features"):
        given = {k: v for k, v in options.items() if ctx.get_parameter_source(k).name != "DEFAULT"}
        config = from_mapping(FeatureSynthConfig, given, "synth.features")
    try:
        summary = synthesize_features(out, config)
    except OSError as err:
        typer.echo(f"mlbpipe synth features: error: cannot write to OUT {out}: {err}", err=True)
        raise typer.Exit(2) from err
    typer.echo(summary.describe())


def _features_command():
    from pipeline.synth_features import FeatureSynthConfig

    parameters = [
        *_ctx_and_out("Folder OUT: the shards go to OUT/shards/cached/ (replaced as a whole)."),
        *dataclass_options(FeatureSynthConfig),
    ]
    doc = "Write a synthetic corpus straight into cached-feature shards OUT/shards/cached/.\n\n"
    doc += inspect.getdoc(FeatureSynthConfig) or ""
    return with_signature(_features, parameters, doc)


app.command("features")(_features_command())
