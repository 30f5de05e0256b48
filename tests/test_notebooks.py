"""The exercise machinery: lessons/ is generated from solutions/, an untouched lesson runs to its
last cell with every check showing ⏳ and every other cell printing what the solution's stored
run printed, the solution's answers pass their checks, and nbval still fails on a lesson."""

import ast
import collections
import configparser
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from mmlm_course.exercises import run_check
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


# What strict nbval compares (nbval's defaults with tests/nbval_sanitize.cfg): the text of
# every output, per kind, after the sanitizing patterns; images and metadata are not compared.
_SANITIZE = configparser.ConfigParser(interpolation=None)
_SANITIZE.read(ROOT / "tests" / "nbval_sanitize.cfg", encoding="utf-8")
_PATTERNS = [(re.compile(section["regex"]), section["replace"]) for section in _SANITIZE.values() if "regex" in section]
_NOT_COMPARED = {"image/png", "image/jpeg", "application/vnd.jupyter.widget-view+json"}


def _sanitize(text):
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def _compared(outputs) -> dict:
    """A cell's outputs as strict nbval compares them: {kind: [sanitized text, ...]}."""
    kinds = collections.defaultdict(list)
    streams = collections.defaultdict(str)
    for out in outputs:
        if out["output_type"] == "stream":
            streams[out["name"]] += out["text"]
        elif out["output_type"] == "error":
            kinds["error"].append(f"{out['ename']}: {out['evalue']}")
        else:
            for kind, value in out.get("data", {}).items():
                if kind not in _NOT_COMPARED:
                    kinds[kind].append(_sanitize(value if isinstance(value, str) else json.dumps(value)))
    for name, text in streams.items():
        kinds[name].append(_sanitize(text))
    return dict(kinds)


def _differences_from_the_stored_solution(lesson_run, solution) -> list[str]:
    """Code cells of an executed lesson whose outputs differ from the solution's stored ones.

    Compared: every code cell the learner does not write and that prints no check result,
    as strict nbval compares them; not compared: the exercise cells (the stub differs from
    the answer), the check cells (⏳ against ✅) and the cells tagged nbval-ignore-output
    (timings, progress). The lesson is generated from the solution, so cell i is cell i.
    """
    differences = []
    for index, (ran, stored) in enumerate(zip(lesson_run.cells, solution.cells)):
        if (stored.cell_type != "code" or ran.source != stored.source or notebooks.CHECK_CALL.search(stored.source)
                or "nbval-ignore-output" in stored.metadata.get("tags", [])):
            continue
        got, want = _compared(ran.get("outputs", [])), _compared(stored.get("outputs", []))
        if got != want:
            kind = next(k for k in sorted(set(got) | set(want)) if got.get(k) != want.get(k))
            differences.append(f"cell {index} ({stored.source.splitlines()[0][:60]!r}), {kind}:\n"
                               f"  stored: {str(want.get(kind))[:300]}\n  lesson: {str(got.get(kind))[:300]}")
    return differences


@pytest.mark.parametrize("path", LESSONS, ids=lambda p: p.stem)
def test_untouched_lesson_runs_to_the_end(path):
    """Run All on an untouched lesson, as in JupyterLab: no cell raises, every check shows ⏳,
    and every other cell prints what the solution's stored run printed.

    This one run per lesson is also the suite's check of the stored solutions (it replaces
    strict nbval of solutions/, which executed every notebook a second time): a solution
    edited without `mmlm-course execute`, or code whose output drifted, fails here.
    """
    execution = notebooks.execute_notebook(path)
    ids = notebooks.exercise_ids(execution.notebook)
    assert ids, "every lesson has exercises"
    assert execution.errors == []
    report = notebooks.exercise_report(execution)
    assert [status for _, status, _ in report] == ["not attempted"] * len(ids)
    shown = [out.get("text", "") for cell in execution.notebook.cells if cell.cell_type == "code"
             and notebooks.CHECK_CALL.search(cell.source) for out in cell.get("outputs", [])]
    assert sum(text.startswith("⏳") for text in shown) == len(ids)
    solution = nbformat.read(ROOT / "solutions" / path.name, 4)
    differences = _differences_from_the_stored_solution(execution.notebook, solution)
    assert not differences, "\n".join(differences)


def test_the_comparison_with_the_stored_solution_finds_what_nbval_would():
    """What the untouched-lesson test relies on: a changed or missing output of a compared cell
    is found; what strict nbval ignores (addresses and timings after sanitizing, images, cells
    tagged nbval-ignore-output, the check cells) is not."""
    stored = nbformat.read(ROOT / "solutions" / "00_welcome.ipynb", 4)
    assert _differences_from_the_stored_solution(stored, stored) == []
    code = [i for i, c in enumerate(stored.cells) if c.cell_type == "code" and c.get("outputs")]
    compared = [i for i in code if not notebooks.CHECK_CALL.search(stored.cells[i].source)
                and "nbval-ignore-output" not in stored.cells[i].metadata.get("tags", [])
                and notebooks.BEGIN not in stored.cells[i].source]
    tagged = [i for i in code if "nbval-ignore-output" in stored.cells[i].metadata.get("tags", [])]
    checks = [i for i in code if notebooks.CHECK_CALL.search(stored.cells[i].source)]
    assert compared and tagged and checks, "lesson 00 has cells of each kind"

    def differences(index, change_ran, change_stored=lambda outputs: None):
        ran, want = (nbformat.from_dict(json.loads(json.dumps(stored))) for _ in range(2))
        change_ran(ran.cells[index].outputs)
        change_stored(want.cells[index].outputs)
        return _differences_from_the_stored_solution(ran, want)

    def add_line(text):
        return lambda outputs: outputs.append(nbformat.v4.new_output("stream", name="stdout", text=text))

    assert len(differences(compared[0], add_line("drifted\n"))) == 1
    assert len(differences(compared[0], lambda outputs: outputs.clear())) == 1
    assert differences(compared[0], add_line("layer at 0x7f3a2c, 12.5 ms/step\n"),
                       add_line("layer at 0x55e0b1, 9.0 ms/step\n")) == []      # sanitized alike
    assert differences(compared[0], lambda outputs: outputs.append(nbformat.v4.new_output(
        "display_data", data={"image/png": "iVBORw0KGgo="}))) == []      # images are not compared
    assert differences(tagged[0], add_line("a timing\n")) == []
    assert differences(checks[0], add_line("⏳ not attempted\n")) == []
    assert _sanitize("at 0x7f3a2c, 12.5 ms/step, /tmp/abc/run") == "at 0xADDRESS, DURATION, TMPPATH"


CHECK_ARGUMENTS = re.compile(r"""check\(\s*["']([\w.]+)["']\s*,\s*(\w+)\s*\)""")


def _imports_of(nb) -> str:
    """Every top-level import statement of a notebook's code cells, as one program."""
    statements = []
    for cell in nb.cells:
        if cell.cell_type == "code":
            tree = ast.parse(cell.source)
            statements += [ast.unparse(node) for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom))]
    return "\n".join(statements)


@pytest.mark.parametrize("path", SOLUTIONS, ids=lambda p: p.stem)
def test_the_answers_of_a_solution_pass_their_checks(path):
    """Each answer cell of the solution, run beside the notebook's imports, passes the check of
    the cell after it. The suite executes the lessons (stubs in place of answers), so this is
    where the answers written in solutions/ run."""
    nb = nbformat.read(path, 4)
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    namespace = {}
    exec(_imports_of(nb), namespace)
    checked = []
    for cell, after in zip(code, code[1:]):
        if notebooks.BEGIN in cell.source:
            exec(compile(cell.source, f"{path.name} answer cell", "exec"), namespace)
            (exercise_id, name), = CHECK_ARGUMENTS.findall(after.source)
            assert run_check(exercise_id, namespace[name]), exercise_id
            checked.append(exercise_id)
    assert checked == notebooks.exercise_ids(nb)


@pytest.mark.parametrize("path", SOLUTIONS, ids=lambda p: p.stem)
def test_every_check_of_a_stored_solution_passed(path):
    """The stored run of a solution shows ✅ at every check: the answers in solutions/ pass."""
    nb = nbformat.read(path, 4)
    for cell in nb.cells:
        if cell.cell_type == "code" and notebooks.CHECK_CALL.search(cell.source):
            text = "".join(out.get("text", "") for out in cell.get("outputs", []))
            for exercise_id in notebooks.CHECK_CALL.findall(cell.source):
                assert f"\N{WHITE HEAVY CHECK MARK} {exercise_id}: passed" in text, (path.name, exercise_id, text[:300])


def _lesson_00_answered(tmp_path, body: str) -> Path:
    """Lesson 00 with every exercise body replaced by ``body``, in a folder of its own."""
    nb = nbformat.read(ROOT / "lessons" / "00_welcome.ipynb", 4)
    stub = "# YOUR CODE HERE\n    raise NotImplementedError()"
    assert sum(stub in c.source for c in nb.cells) == len(notebooks.exercise_ids(nb))
    for cell in nb.cells:
        cell.source = cell.source.replace(stub, body)
    path = tmp_path / "lessons" / "00_welcome.ipynb"
    path.parent.mkdir()
    nbformat.write(nb, path)
    return path


def test_wrong_answers_run_to_the_end_and_show_a_cross(tmp_path):
    execution = notebooks.execute_notebook(_lesson_00_answered(tmp_path, "return None"))
    assert execution.errors == []
    statuses = [status for _, status, _ in notebooks.exercise_report(execution)]
    assert statuses and set(statuses) == {"fail"}


def test_nbval_lax_still_fails_on_a_missing_answer():
    """What a learner runs: `pytest --nbval-lax lessons/00_welcome.ipynb`. The course's conftest.py
    makes the checks raise under nbval, so the untouched lesson fails, naming the exercise."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MMLM_COURSE_", "PYTEST_"))}
    result = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:xdist", "--nbval-lax",
                             "lessons/00_welcome.ipynb"], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 1, result.stdout[-2000:]
    assert "⏳ 00.describe_object is not attempted yet" in result.stdout
    assert "⏳ 00.count_color is not attempted yet" in result.stdout and "2 failed" in result.stdout


DRAWS = re.compile(r"\bplt\.(show|imshow|plot|figure|subplots)\b|\bshow_\w+\(|\bplot_\w+\(|\.imshow\(|\bdisplay\(")


@pytest.mark.parametrize("path", SOLUTIONS, ids=lambda p: p.stem)
def test_every_stored_cell_that_draws_holds_its_figure(path):
    """A figure lost in the stored run (a backend switched to Agg inside the kernel, a plot
    made but never shown) is invisible to nbval: both sides hold no image. Look for it."""
    nb = nbformat.read(path, 4)
    drawing = [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and DRAWS.search(c.source)]
    assert drawing, f"{path.name} draws nothing: every lesson has at least one picture"
    for index in drawing:
        kinds = {kind for out in nb.cells[index].get("outputs", []) for kind in out.get("data", {})}
        assert kinds & {"image/png", "image/svg+xml", "text/html"}, f"{path.name} cell {index} draws but holds no figure"
