"""The command line: every command answers --help, the version prints, doctor reports."""

from __future__ import annotations

import pytest
import typer
from typer.testing import CliRunner

from pipeline import __version__
from pipeline.cli import app

pytestmark = pytest.mark.integration

runner = CliRunner()


def _command_paths(group, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    paths = []
    for name, cmd in group.commands.items():
        paths.append(prefix + (name,))
        if hasattr(cmd, "commands"):  # a group (typer vendors its own click: no isinstance on click.Group)
            paths.extend(_command_paths(cmd, prefix + (name,)))
    return paths


def test_every_command_has_help():
    root = typer.main.get_command(app)
    paths = _command_paths(root)
    assert {("synth",), ("synth", "cremad"), ("prepare",), ("train",), ("doctor",), ("demo",)} <= set(paths)
    for path in paths:
        result = runner.invoke(app, [*path, "--help"])
        assert result.exit_code == 0, (path, result.output)
        assert "Usage" in result.output


def test_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert __version__ in result.output


def test_unknown_command_exits_2():
    result = runner.invoke(app, ["synth", "no-such-corpus", "out"])
    assert result.exit_code == 2


def test_doctor_flags_a_folder_that_is_not_cremad(tmp_path):
    result = runner.invoke(app, ["doctor", "--corpus", "cremad", "--root", str(tmp_path)])
    assert result.exit_code == 1
    assert "AudioWAV" in result.output and "package torch" in result.output


def test_doctor_accepts_a_cremad_layout(tmp_path):
    for folder, name in (("AudioWAV", "1001_DFA_ANG_XX.wav"), ("VideoFlash", "1001_DFA_ANG_XX.flv")):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / name).write_bytes(b"\0" * 2048)
    (tmp_path / "VideoDemographics.csv").write_text("ActorID,Age,Sex,Race,Ethnicity\n")
    result = runner.invoke(app, ["doctor", "--corpus", "cremad", "--root", str(tmp_path)])
    assert "fail" not in result.output, result.output
    assert result.exit_code == 0


def test_doctor_names_lfs_stubs(tmp_path):
    for folder, name in (("AudioWAV", "1001_DFA_ANG_XX.wav"), ("VideoFlash", "1001_DFA_ANG_XX.flv")):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / name).write_bytes(
            b"version https://git-lfs.github.com/spec/v1\noid sha256:00\nsize 9\n"
        )
    result = runner.invoke(app, ["doctor", "--corpus", "cremad", "--root", str(tmp_path)])
    assert result.exit_code == 1
    assert "git lfs pull" in result.output


def test_doctor_root_needs_a_corpus_and_an_unknown_corpus_is_named(tmp_path):
    result = runner.invoke(app, ["doctor", "--root", str(tmp_path)])
    assert result.exit_code == 2 and "--corpus" in result.output
    result = runner.invoke(app, ["doctor", "--corpus", "nope", "--root", str(tmp_path)])
    assert result.exit_code == 2 and "unknown corpus 'nope'" in result.output


def test_only_the_command_line_imports_typer():
    """The library layers hold no typer code (the import-linter contract in CI checks the same)."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "import pipeline.prepare, pipeline.corpora.cremad, pipeline.stages.shards_cached, mlb.train, mlb.analysis.report\n"
        "import pipeline.corpora.cremad.synth\n"
        "assert 'typer' not in sys.modules, [m for m in sys.modules if m.startswith('typer')]\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
