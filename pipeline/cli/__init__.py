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


# One line each in `mlbpipe --help` (the command's own --help gives its whole docstring)
SUMMARIES = {
    "prepare": "Prepare a corpus into shards: index, check, split, features.",
    "train": "Train one model, select it on validation, test it once.",
    "tune": "Tune each method's settings on validation, equal budget.",
    "compare": "Train methods x fusions x folds: tables and statistics.",
    "report": "Draw the paper's figures from finished runs.",
    "doctor": "Check a corpus copy, versions, devices and weights.",
    "demo": "Run the whole pipeline on the built-in synthetic corpus.",
    "convert-effb2": "Convert EfficientNet-B2 weights to .safetensors.",
    "synth": "Generate a synthetic corpus in a real corpus's layout.",
}
app.add_typer(synth.app, name="synth", short_help=SUMMARIES["synth"])
for name, function in (
    ("prepare", prepare.cli),
    ("train", train.cli),
    ("tune", tune.cli),
    ("compare", compare.compare),
    ("report", report.cli),
    ("doctor", doctor.cli),
    ("demo", demo.cli),
    ("convert-effb2", weights.cli),
):
    app.command(name, short_help=SUMMARIES[name])(function)


def main() -> None:
    app()
