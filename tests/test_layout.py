"""The package's layout: lesson modules apart from the course machinery and the teacher tools.

`mmlm_course/*.py` are the lesson modules a learner reads; `mmlm_course/exercises/` and
`mmlm_course/quality/` are the course machinery (exercise checks, benchmark quality tasks);
`mmlm_course/tools/` are the teacher tools (CLI, grading, lesson building, benchmark, slides).
"""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "mmlm_course"
LESSON_MODULES = sorted(p for p in PACKAGE.glob("*.py") if p.name != "__init__.py")
NOT_FOR_LESSONS = ("mmlm_course.exercises", "mmlm_course.quality", "mmlm_course.tools")
MAX_LINES = 600
# The one module still over the limit, and why. Issue #15 replaces the grader's in-process guards
# (about 700 of its lines) with a sandboxed child process; until then it is listed here, not skipped.
OVER_THE_LIMIT: dict[str, str] = {}


def imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


@pytest.mark.parametrize("path", LESSON_MODULES, ids=lambda p: p.name)
def test_lesson_modules_import_no_machinery_or_tools(path):
    bad = sorted(name for name in imported_modules(path)
                 if any(name == root or name.startswith(root + ".") for root in NOT_FOR_LESSONS))
    assert not bad, f"{path.name} imports {bad}: lesson modules must not depend on course machinery or tools"


def test_boundary_check_sees_a_forbidden_import(tmp_path):
    module = tmp_path / "lesson.py"
    module.write_text("from mmlm_course.tools import grading\nimport mmlm_course.exercises.checker\n")
    assert {"mmlm_course.tools.grading", "mmlm_course.exercises.checker"} <= imported_modules(module)


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_module_over_600_lines(path):
    lines = len(path.read_text(encoding="utf-8").splitlines())
    if str(path.relative_to(PACKAGE)) in OVER_THE_LIMIT:
        assert lines > MAX_LINES, f"{path.name} is within the limit now: remove it from OVER_THE_LIMIT"
        return
    assert lines <= MAX_LINES, f"{path.relative_to(PACKAGE)} has {lines} lines (at most {MAX_LINES}): split it"


def test_readme_layout_table_names_every_module():
    readme = (PACKAGE.parent / "README.md").read_text(encoding="utf-8")
    def named(path: Path) -> bool:
        if path.stem.startswith("lesson") and path.parent != PACKAGE:  # one row per folder of lessonNN.py
            path = path.with_name("lesson00.py")
        return f"`{path.relative_to(PACKAGE.parent)}`" in readme

    missing = [str(p.relative_to(PACKAGE.parent)) for p in sorted(PACKAGE.rglob("*.py"))
               if p.name != "__init__.py" and not named(p)]
    assert not missing, f"README's layout table does not name {missing}"
