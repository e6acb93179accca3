"""The `mlbpipe` command line: a thin front over the pipeline stages and mlb's trainer.

Every command resolves paths and parameters, then calls one pure core function. Heavy libraries (torch,
PyAV) are imported inside those functions so that `mlbpipe --help` stays fast.
"""

from __future__ import annotations

import typer

from pipeline import __version__

app = typer.Typer(
    name="mlbpipe",
    help="Balanced audio-visual learning: prepare corpora into WebDataset shards, train with MLB "
    "gradient modulation and its baselines, compare and report.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

synth_app = typer.Typer(
    help="Generate a synthetic corpus in the exact layout of a real one.", no_args_is_help=True
)
prepare_app = typer.Typer(
    help="Prepare a raw corpus: index, validate, split, features, shards.", no_args_is_help=True
)
app.add_typer(synth_app, name="synth")
app.add_typer(prepare_app, name="prepare")


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


# --- commands: each module holds one command's thin wrapper; the work is in a pure core function -----
from pipeline import compare_cli, doctor, prepare, train_cli
from pipeline.synth import cremad as synth_cremad

synth_app.command("cremad")(synth_cremad.cli)
prepare_app.command("cremad")(prepare.cli)
app.command("train")(train_cli.cli)
app.command("compare")(compare_cli.compare)
app.command("report")(compare_cli.report)
app.command("doctor")(doctor.cli)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
