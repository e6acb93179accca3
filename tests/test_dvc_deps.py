"""dvc.yaml's deps cover the code each stage runs: the static import closure of the stage's command.

Every stage runs `python -m pipeline.cli COMMAND ...`. Its closure starts at the command's module (and, for
`prepare --stages S`, at the stage module `pipeline.stages.S`) and follows every import of a project module,
at the top of a module or inside a function, plus the packages above each module (their `__init__` runs
first). Three places load more than a stage runs, and the closure does not follow them there:
- `pipeline/cli/__init__.py` imports every command to register it; a stage runs one command;
- `pipeline.prepare` and the prepare command import every stage module for its config; a DVC stage runs the
  one that `--stages` names;
- the corpus and stand-in registries (`pipeline.corpora`, `pipeline.standins`) load every corpus by name; a
  stage prepares (or `synth` writes) the corpus it names.
A package that loads its modules by name otherwise (the balancing methods' registry) counts as importing
all of them. A module of the closure must lie in one of the stage's deps (the file, or a folder above it):
otherwise an edit to it leaves the stage's outputs "up to date". The command line's own files
(`pipeline/cli/`: options, help texts, printed summaries) are followed but need not be deps, so that editing a
help text reruns nothing; everything they call must be.
"""

from __future__ import annotations

import ast
import shlex
from functools import cache
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("pipeline", "mlb")
DISPATCHER = "pipeline.cli"  # imports every command module to register it


def module_file(name: str) -> Path | None:
    base = ROOT.joinpath(*name.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")


@cache
def imports_of(name: str) -> frozenset[str]:
    """The project modules that `name` imports anywhere in its source (`from X import Y` counts X, and X.Y
    when Y is a module). A package whose `__init__` loads modules by name (`import_module`) imports all of
    its modules."""
    path = module_file(name)
    source = path.read_text()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the package, `level - 1` levels up
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            found |= {base} | {f"{base}.{alias.name}" for alias in node.names}
    modules = {m for m in found if m.split(".")[0] in PACKAGES and module_file(m)}
    if path.name == "__init__.py" and "import_module(" in source:
        modules |= {module_name(p) for p in path.parent.rglob("*.py")}
    return frozenset(modules)


def closure(entries: list[str], skip: set[str]) -> set[str]:
    """Every project module that running `entries` loads: their imports, transitively, and the packages above
    each module; `skip`: modules not followed (see the module docstring)."""
    seen: set[str] = set()
    todo = list(entries)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        parts = name.split(".")
        parents = {".".join(parts[:i]) for i in range(1, len(parts))}
        todo += [m for m in parents | imports_of(name) if m not in seen and m not in skip]
    return seen


def modules_under(folder: Path) -> set[str]:
    """Every module of a package folder, or the module of one file."""
    return {module_name(p) for p in folder.rglob("*.py")} if folder.is_dir() else {module_name(folder)}


def command_modules() -> dict[str, str]:
    """`mlbpipe` command name -> the module of the function it runs, from the command line's registry."""

    from pipeline.cli import app

    commands = {info.name: info.callback.__module__ for info in app.registered_commands}
    for group in app.registered_groups:
        commands[group.name] = group.typer_instance.registered_commands[0].callback.__module__
    return commands


def entries_and_skips(cmd: str) -> tuple[list[str], set[str]]:
    """The modules a stage's command runs first, and the modules its closure does not follow."""
    argv = shlex.split(cmd)
    assert argv[:3] == ["python", "-m", "pipeline.cli"], f"a stage runs `python -m pipeline.cli ...`: {cmd}"
    command = argv[3]
    entries, skip = [command_modules()[command]], {DISPATCHER}
    if command in ("prepare", "synth"):  # the registries load every corpus; the stage prepares its own
        corpus = argv[4]
        for registry in ("corpora", "standins"):
            for other in (ROOT / "pipeline" / registry).iterdir():
                if other.is_dir() and other.name not in (corpus, "__pycache__"):
                    skip |= modules_under(other)
        entries.append(f"pipeline.corpora.{corpus}")
        if command == "synth":
            entries.append(f"pipeline.standins.{corpus}")
    if command == "prepare":  # prepare loads every stage's config; the stage runs the one --stages names
        from pipeline.prepare import FOLD_STAGES

        stages = FOLD_STAGES if "--from" in argv else (argv[argv.index("--stages") + 1],)  # folds: theirs
        for other in (ROOT / "pipeline/stages").glob("*.py"):
            if other.stem not in (*stages, "__init__"):
                skip |= modules_under(other)
        entries += [f"pipeline.stages.{stage}" for stage in stages]
    return entries, skip


def dvc_stages():
    from dvc.repo import Repo

    with Repo(str(ROOT)) as repo:
        return [
            (stage.addressing, stage.cmd, [d.def_path for d in stage.deps]) for stage in repo.index.stages
        ]


def _covered(path: str, deps: list[str]) -> bool:
    return any(path == dep or path.startswith(dep.rstrip("/") + "/") for dep in deps)


STAGES = dvc_stages()


@pytest.mark.parametrize("name, cmd, deps", STAGES, ids=[name for name, _, _ in STAGES])
def test_every_module_a_stage_runs_is_among_its_deps(name, cmd, deps):
    entries, skip = entries_and_skips(cmd)
    ran = sorted(str(module_file(m).relative_to(ROOT)) for m in closure(entries, skip))
    missing = [path for path in ran if not _covered(path, deps) and not path.startswith("pipeline/cli/")]
    assert not missing, (
        f"dvc.yaml stage {name} runs {len(missing)} project file(s) it does not list in deps: {missing}"
    )


def test_only_the_synth_stages_run_or_depend_on_a_stand_in():
    """Editing a generator reruns the stand-ins (`synth`), never a stage that prepares a copy of a corpus: no
    other stage's command reaches pipeline.standins, nor do its deps."""
    generator = "pipeline/standins/cremad/generate.py"
    for name, cmd, deps in STAGES:
        entries, skip = entries_and_skips(cmd)
        runs = any(m.startswith("pipeline.standins") for m in closure(entries, skip))
        assert runs == _covered(generator, deps) == name.startswith("synth@"), (name, runs, deps)


def test_the_closure_follows_function_level_imports_and_parent_packages():
    """The reader itself: a lazy import inside a function counts, and so does every package above a module."""
    ran = closure(["pipeline.cli.train"], {DISPATCHER})
    assert "mlb.train.trainer" in ran  # imported inside the command's function
    assert {"mlb", "mlb.train", "pipeline"} <= ran
    assert "mlb.balancing.reconboost" in ran  # loaded by name by the method registry
