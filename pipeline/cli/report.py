"""`mlbpipe report`: a thin wrapper over `mlb.analysis.report` (it reads run folders; it never trains)."""

from __future__ import annotations

from pathlib import Path

import typer


def cli(
    runs: Path = typer.Option(..., "--runs", help="The runs folder of `mlbpipe compare` (RUNS)."),
    out: Path = typer.Option(None, "--out", help="Figures folder.", show_default="RUNS/figures"),
    fusion: str = typer.Option(
        "late-linear",
        "--fusion",
        metavar="FUSION",
        help="Fusion head of the agreement, ECE and unimodal-heads figures.",
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
