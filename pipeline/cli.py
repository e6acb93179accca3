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

synth_app = typer.Typer(help="Generate a synthetic corpus in the exact layout of a real one.", no_args_is_help=True)
prepare_app = typer.Typer(help="Prepare a raw corpus: index, validate, split, features, shards.", no_args_is_help=True)
app.add_typer(synth_app, name="synth")
app.add_typer(prepare_app, name="prepare")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"mlbpipe {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
) -> None:
    """mlbpipe: balanced audio-visual learning."""


def _not_yet(issue: int, what: str) -> None:
    typer.echo(f"mlbpipe: {what} is not implemented yet (tracked in issue {issue}).", err=True)
    raise typer.Exit(code=1)


# --- commands registered by their own modules -------------------------------------------------------
# synth cremad   -> pipeline.synth.cremad.cli
# prepare cremad -> pipeline.prepare.cli
# train          -> pipeline.train_cli (mlb.train)
from pipeline.synth import cremad as _synth_cremad  # noqa: E402

synth_app.command("cremad")(_synth_cremad.cli)
from pipeline import prepare as _prepare  # noqa: E402

prepare_app.command("cremad")(_prepare.cli)
from pipeline import compare_cli as _compare  # noqa: E402
from pipeline import doctor as _doctor  # noqa: E402

app.command("compare")(_compare.compare)
app.command("report")(_compare.report)

app.command("doctor")(_doctor.cli)
from pipeline import train_cli as _train_cli  # noqa: E402

app.command("train")(_train_cli.cli)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
