"""docs/reference/cli.md is the command line's own --help output (pipeline.cli.reference): a help text, an
option or a command changed without regenerating the page fails here, with the command that regenerates it."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.cli.reference import REGENERATE, WIDTH, reference

pytestmark = pytest.mark.unit

PAGE = Path(__file__).resolve().parents[1] / "docs" / "reference" / "cli.md"


def test_the_committed_cli_reference_is_what_the_cli_prints_now():
    assert PAGE.read_text() == reference(), (
        f"docs/reference/cli.md is stale: regenerate it with `{REGENERATE}`"
    )


def test_the_cli_reference_covers_every_command_at_a_fixed_width(monkeypatch):
    import typer

    from pipeline.cli import app

    monkeypatch.setenv("COLUMNS", "200")  # the terminal's width never leaks into the page
    text = reference()
    monkeypatch.setenv("COLUMNS", "40")
    assert reference() == text
    group = typer.main.get_command(app)
    for name in group.commands:
        assert f"\n## mlbpipe {name}\n" in text, name
    blocks = text.split("```text\n")[1:]
    assert blocks and all(len(line) <= WIDTH for b in blocks for line in b.split("```")[0].splitlines())
