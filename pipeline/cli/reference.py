"""The command-line reference page (docs/reference/cli.md), generated from the command line itself so that it
cannot drift: `mlbpipe --help` and every command's and sub-command's `--help`, at 80 columns, no colour.
tests/test_cli_reference.py fails when the committed page differs from what this produces; regenerate with

    .venv/bin/python -m pipeline.cli.reference > docs/reference/cli.md
"""

from __future__ import annotations

import typer

WIDTH = 80
REGENERATE = ".venv/bin/python -m pipeline.cli.reference > docs/reference/cli.md"


def _help(command, path: list[str], parent):
    """The --help text of `command` as `mlbpipe <path>` prints it at WIDTH columns, and its context (typer
    vendors its own click: the command's own context class, never the click package's)."""
    context = command.context_class(
        command,
        info_name=path[-1],
        parent=parent,
        terminal_width=WIDTH,
        max_content_width=WIDTH,
        color=False,
    )
    return command.get_help(context).rstrip() + "\n", context


def _walk(command, path: list[str], parent):
    """(path, help text) of `command` and, for a group, of each sub-command in the order `--help` lists them."""
    text, context = _help(command, path, parent)
    yield path, text
    if hasattr(command, "list_commands"):  # a group
        for name in command.list_commands(context):
            yield from _walk(command.get_command(context, name), [*path, name], context)


def reference() -> str:
    """The whole page, in Markdown."""
    from pipeline.cli import app

    lines = [
        "# Command-line reference",
        "",
        "<!-- Generated from the command line: do not edit by hand. Regenerate with",
        f"     {REGENERATE}",
        "     (tests/test_cli_reference.py fails while this page is stale.) -->",
        "",
        "Every `mlbpipe` command's `--help`, as printed at 80 columns. The commands live in `.venv`:",
        "`source .venv/bin/activate` once per shell, or call `.venv/bin/mlbpipe`.",
        "",
    ]
    for path, text in _walk(typer.main.get_command(app), ["mlbpipe"], None):
        lines += [f"## {' '.join(path)}", "", "```text", text.rstrip(), "```", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    print(reference(), end="")
