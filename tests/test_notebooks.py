"""The exercise machinery: lessons/ is generated from solutions/, untouched lessons fail only
at their checks, and a completed lesson passes every check."""

import json
import shutil
from pathlib import Path

import nbformat
import pytest

from mmlm_course.tools import cli, notebooks

ROOT = Path(__file__).resolve().parent.parent
SOLUTIONS = sorted((ROOT / "solutions").glob("*.ipynb"))
LESSONS = sorted((ROOT / "lessons").glob("*.ipynb"))


def test_every_solution_has_a_lesson_and_they_are_in_sync():
    assert [p.name for p in SOLUTIONS] == [p.name for p in LESSONS]
    assert notebooks.build_lessons(ROOT / "solutions", ROOT / "lessons", check_only=True) == []


@pytest.mark.parametrize("path", SOLUTIONS, ids=lambda p: p.stem)
def test_lessons_hide_every_solution_and_keep_checks(path):
    solution = nbformat.read(path, 4)
    lesson = nbformat.read(ROOT / "lessons" / path.name, 4)
    text = json.dumps([c.source for c in lesson.cells])
    assert notebooks.BEGIN not in text and notebooks.END not in text
    assert all(not c.get("outputs") for c in lesson.cells if c.cell_type == "code")
    assert notebooks.exercise_ids(lesson) == notebooks.exercise_ids(solution)


def _code_notebook(*sources):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(s) for s in sources]
    return nb


def test_strip_solutions_keeps_indentation_and_code_around():
    source = "def f(x):\n    y = 1\n    ### BEGIN SOLUTION\n    return x + y\n    ### END SOLUTION\n# after"
    assert notebooks.strip_solutions(source) == (
        "def f(x):\n    y = 1\n    # YOUR CODE HERE\n    raise NotImplementedError()\n# after")


@pytest.mark.parametrize("source,message", [
    ("### BEGIN SOLUTION\nx = 1", "never closed"),
    ("x = 1\n### END SOLUTION", "without a"),
    ("### BEGIN SOLUTION\n### BEGIN SOLUTION\n### END SOLUTION", "inside another"),
])
def test_unbalanced_markers_name_notebook_and_cell(tmp_path, source, message, capsys):
    (tmp_path / "solutions").mkdir()
    nbformat.write(_code_notebook("x = 0", source), tmp_path / "solutions" / "99_bad.ipynb")
    code = cli.main(["build-lessons", "--solutions", str(tmp_path / "solutions"), "--lessons", str(tmp_path / "lessons")])
    err = capsys.readouterr().err
    assert code == 2 and "99_bad.ipynb, cell 1" in err and message in err
    assert not (tmp_path / "lessons" / "99_bad.ipynb").exists()


def test_build_lessons_check_names_stale_and_orphaned_notebooks(tmp_path, capsys):
    shutil.copytree(ROOT / "solutions", tmp_path / "solutions")
    shutil.copytree(ROOT / "lessons", tmp_path / "lessons")
    args = ["build-lessons", "--solutions", str(tmp_path / "solutions"), "--lessons", str(tmp_path / "lessons")]
    assert cli.main(args + ["--check"]) == 0
    edited = tmp_path / "solutions" / "01_images_and_text.ipynb"
    nb = nbformat.read(edited, 4)
    nb.cells[0].source += "\nA new sentence."
    nbformat.write(nb, edited)
    (tmp_path / "lessons" / "98_orphan.ipynb").write_text((ROOT / "lessons" / "00_welcome.ipynb").read_text())
    capsys.readouterr()
    assert cli.main(args + ["--check"]) == 1
    out = capsys.readouterr().out
    assert "01_images_and_text.ipynb" in out and "98_orphan.ipynb" in out and "00_welcome" not in out
    assert cli.main(args) == 0 and cli.main(args + ["--check"]) == 1  # the orphan is reported, never deleted


@pytest.mark.parametrize("path", LESSONS, ids=lambda p: p.stem)
def test_untouched_lesson_fails_only_with_not_implemented_at_its_checks(path):
    execution = notebooks.execute_notebook(path)
    ids = notebooks.exercise_ids(execution.notebook)
    assert ids, "every lesson has exercises"
    for error in execution.errors:
        assert error.ename in ("ExerciseNotAttempted", "NotImplementedError"), (error.index, error.ename, error.evalue)
        assert notebooks.CHECK_CALL.search(error.source), f"cell {error.index} is not a check cell"
    report = notebooks.exercise_report(execution)
    assert [status for _, status, _ in report] == ["not attempted"] * len(ids)
    assert len(execution.errors) == len(ids)
