"""The `mlbpipe` command line: a skin over the pipeline and mlb's trainer. All typer code lives in this
package, one module per command group; each command resolves paths and parameters, calls one library
function and prints what it returns. Heavy libraries (torch, PyAV) are imported inside the commands, so
that `mlbpipe --help` stays fast.
"""

from __future__ import annotations

import typer

from pipeline import __version__
from pipeline.cli import compare, demo, doctor, prepare, report, synth, train, tune, weights
from pipeline.cli.common import OneLineErrors

# Plain help (rich_markup_mode=None): rich markup would eat bracketed texts such as "[default: ...]".
app = typer.Typer(
    name="mlbpipe",
    cls=OneLineErrors,
    rich_markup_mode=None,
    help="Balanced audio-visual learning: prepare corpora into WebDataset shards, train with MLB "
    "gradient modulation and its baselines, compare and report.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"mlbpipe {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """mlbpipe: balanced audio-visual learning."""


app.add_typer(synth.app, name="synth")
app.command("prepare")(prepare.cli)
app.command("train")(train.cli)
app.command("tune")(tune.cli)
app.command("compare")(compare.compare)
app.command("report")(report.cli)
app.command("doctor")(doctor.cli)
app.command("demo")(demo.cli)
app.command("convert-effb2")(weights.cli)


def main() -> None:
    app()
