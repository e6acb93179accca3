"""No test module imports another (what several share lives in tests/helpers/), so that each module runs
alone, in any order and on any xdist worker, and editing one test module never breaks another."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

TESTS = Path(__file__).resolve().parent


def imported_test_modules(path: Path, test_modules: set[str]) -> list[str]:
    """The modules of `test_modules` that the Python file at `path` imports, anywhere in it."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        else:
            continue
        found += [name for name in names if name.split(".")[0] in test_modules]
    return found


def _offenders(folder: Path) -> dict[str, list[str]]:
    """{file: the test modules it imports} for every Python file under `folder` that imports one."""
    test_modules = {p.stem for p in folder.glob("test_*.py")} | {"conftest"}
    found = {str(p.relative_to(folder)): imported_test_modules(p, test_modules) for p in folder.rglob("*.py")}
    return {name: modules for name, modules in found.items() if modules}


def test_no_test_module_imports_another():
    assert _offenders(TESTS) == {}, "move what is shared into tests/helpers/"


def test_the_check_sees_every_form_of_import(tmp_path):
    (tmp_path / "helpers").mkdir()
    (tmp_path / "test_a.py").write_text("from test_b import make\n")
    (tmp_path / "test_b.py").write_text("import os\n\ndef test_x():\n    import test_a as a, json\n")
    (tmp_path / "helpers" / "media.py").write_text("from conftest import fixture\nfrom test_b.sub import y\n")
    (tmp_path / "test_c.py").write_text("from helpers.media import make_flv\nimport testing, test_zzz\n")
    assert _offenders(tmp_path) == {
        "test_a.py": ["test_b"],
        "test_b.py": ["test_a"],
        str(Path("helpers", "media.py")): ["conftest", "test_b.sub"],
    }
