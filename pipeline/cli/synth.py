"""`mlbpipe synth CORPUS OUT`: a synthetic stand-in of a corpus, in its exact layout. One command per corpus
that has a stand-in (pipeline.standins); its options are the fields of the stand-in's config (defaults and help
from there). An installed plug-in's stand-in gets its command only when its name is asked for.
`mlbpipe synth features OUT`: a synthetic corpus written straight into cached-feature shards
(`pipeline.synth_features`), options from `FeatureSynthConfig` the same way."""

from __future__ import annotations

import inspect
from pathlib import Path

import typer

from pipeline.cli.common import OneLineErrors, dataclass_options, exit_on, with_signature
from pipeline.corpora import CorpusError
from pipeline.params import ParamsError, from_mapping, load_params
from pipeline.standins import BUILTIN, get_standin, standin_names


class StandInCommands(OneLineErrors):
    """The group of synth commands: the built-in stand-ins' are made at import, an installed plug-in's when its
    name is asked for, so that a slow or broken plug-in costs the other commands nothing."""

    def list_commands(self, ctx) -> list[str]:
        made = super().list_commands(ctx)
        return [*made, *(name for name in standin_names() if name not in made)]

    def get_command(self, ctx, name: str):
        if name not in self.commands and name in standin_names():
            try:
                self.add_command(typer.main.get_command(_plugin_app(name)), name)
            except CorpusError:
                return None  # left out of the list; running it says why (resolve_command)
        return super().get_command(ctx, name)

    def resolve_command(self, ctx, args):
        if args and args[0] not in self.commands and args[0] in standin_names():
            with exit_on(CorpusError, command=f"mlbpipe synth {args[0]}"):
                get_standin(args[0])  # a plug-in that does not load: its package and the fix, one line
        return super().resolve_command(ctx, args)


app = typer.Typer(
    help="Generate a synthetic corpus in the exact layout of a real one.",
    no_args_is_help=True,
    cls=StandInCommands,
    rich_markup_mode=None,
)


def _synth(corpus_name: str, ctx: typer.Context, out: Path, params: Path | None, **options) -> None:
    standin = get_standin(corpus_name)
    where = f"mlbpipe synth {corpus_name}"
    with exit_on(ParamsError, ValueError, command=where):
        section = {}
        if params is not None:
            section = (load_params(params).get("synth") or {}).get(corpus_name) or {}
        given = {k: v for k, v in options.items() if ctx.get_parameter_source(k).name != "DEFAULT"}
        config = from_mapping(standin.config, {**section, **given}, f"synth.{corpus_name}")
        standin.check(config)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".mlbpipe-write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        typer.echo(f"{where}: error: cannot write to OUT {out}: {err}", err=True)
        raise typer.Exit(2) from err
    summary = standin.synthesize(out, config)
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
    standin = get_standin(corpus_name)
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
        *dataclass_options(standin.config),
    ]
    doc = f"Generate a synthetic {corpus_name} corpus in OUT, in the exact layout of a real copy.\n\n"
    doc += inspect.getdoc(standin.config) or ""

    def run(ctx, out, params, **options):
        _synth(corpus_name, ctx, out, params, **options)

    return with_signature(run, parameters, doc)


for _name in sorted(BUILTIN):
    app.command(_name)(_command(_name))


def _plugin_app(corpus_name: str) -> typer.Typer:
    """A one-command app for the stand-in of an installed plug-in (its click command is the synth command)."""
    plugin = typer.Typer(rich_markup_mode=None)
    plugin.command(corpus_name)(_command(corpus_name))
    return plugin


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
