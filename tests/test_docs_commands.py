"""Every `mlbpipe` command in a fenced block of the README and docs/ parses with today's command line: the
command exists, every option is one it takes, every value converts, nothing required is missing. Commands
that need real data or a GPU are not run here; the ones the tests run are run in their own tests
(test_reproduce, test_real_data_path, test_dvc)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import click
import pytest
import typer

from pipeline.cli import app

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def documented_commands() -> list[tuple[str, str]]:
    """(page, command line) of every `mlbpipe ...` line in a fenced code block, continuations joined."""
    found = []
    for page in PAGES:
        for block in re.findall(r"```[a-z]*\n(.*?)```", page.read_text(), flags=re.DOTALL):
            for line in block.replace("\\\n", " ").splitlines():
                line = re.sub(r"^\$ |^\.venv/bin/", "", line.strip())
                if line.startswith("mlbpipe "):
                    found.append((str(page.relative_to(ROOT)), re.sub(r"\s+#.*$", "", line)))
    return found


def test_the_docs_have_commands_to_check():
    pages = {page for page, _ in documented_commands()}
    assert {"README.md", "docs/reproduce.md"} <= pages


@pytest.mark.parametrize(("page", "line"), documented_commands())
def test_a_documented_command_parses(page, line):
    group = typer.main.get_command(app)
    name, *args = shlex.split(line)[1:]
    context = group.make_context("mlbpipe", [name, *args])
    command = group.get_command(context, name)
    assert command is not None, f"{page}: {line}: no command {name!r}"
    try:
        command.make_context(name, args, parent=context)
    except click.exceptions.Exit:  # --help
        pass
    except click.ClickException as err:
        pytest.fail(f"{page}: `{line}` does not parse: {err.format_message()}")
