"""`mmlm-course grade`: every fabricated submission gets exactly the row it deserves.

Submissions are built from lessons/01 and solutions/01 by tests/grading_submissions.py.
One run with kernels covers broken notebooks (invalid JSON, an infinite loop, os._exit, a
segfault, a cell that deletes files) and a notebook that fakes its checks; the tampering that
happens inside exercise cells is tested on the grading process alone (no kernel: faster).
"""

import csv
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

import grading_submissions as subs
from mmlm_course.tools import grading

ROOT = Path(__file__).resolve().parent.parent
SHORT = {"pass": "P", "fail": "F", "not attempted": "N", "error": "E"}


def _digest(folder: Path) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob("01_*.ipynb"))}


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    """One grading run over a folder per learner (alice/01_images_and_text.ipynb, ...)."""
    base = tmp_path_factory.mktemp("grading")
    course = base / "course"  # stands in for course files a submission must not touch
    course.mkdir()
    sentinel = course / "precious.txt"
    sentinel.write_text("keep me")
    kinds = {"alice": "correct", "bob": "partial", "carol": "invalid_json", "dan": "infinite_loop",
             "erin": "kernel_exit", "frank": "segfault", "grace": "deletes_files", "heidi": "fake_checks"}
    for learner, kind in kinds.items():
        (base / "submissions" / learner).mkdir(parents=True)
        (base / "submissions" / learner / "01_images_and_text.ipynb").write_bytes(subs.build(kind, sentinel))
    before = (_digest(ROOT / "solutions"), _digest(ROOT / "lessons"))
    grades = grading.grade([base / "submissions"], base / "out", timeout=10, jobs=2, watch=[course], progress=None)
    after = (_digest(ROOT / "solutions"), _digest(ROOT / "lessons"))
    rows = {row["learner"]: row for row in csv.DictReader(open(base / "out" / "grades.csv", encoding="utf-8"))}
    return {"kinds": kinds, "rows": rows, "grades": grades, "out": base / "out", "sentinel": sentinel,
            "course_files_unchanged": before == after}


def test_every_row_is_what_the_submission_deserves(graded):
    assert set(graded["rows"]) == set(graded["kinds"]), "learners are named after their folders"
    for learner, kind in graded["kinds"].items():
        row = graded["rows"][learner]
        got = "".join(SHORT[row[i]] for i in subs.IDS)
        assert got == subs.EXPECTED[kind], f"{learner} ({kind}): got {got}, expected {subs.EXPECTED[kind]}"
        assert row["total"] == str(subs.EXPECTED[kind].count("P"))
        assert row["lesson"] == "01_images_and_text"


def test_grades_csv_has_one_column_per_exercise_and_a_total(graded):
    header = next(csv.reader(open(graded["out"] / "grades.csv", encoding="utf-8")))
    assert header == ["learner", "lesson", *subs.IDS, "total"]


def test_feedback_gives_each_failing_checks_message(graded):
    feedback = graded["out"] / "feedback"
    assert sorted(p.stem for p in feedback.glob("*.md")) == sorted(graded["kinds"])
    bob = (feedback / "bob.md").read_text()
    assert "01.hflip_with_caption: fail" in bob and "Hint:" in bob
    assert "01.pad_with_mask: not attempted" in bob
    dan = (feedback / "dan.md").read_text()
    assert "more than 10 s" in dan
    erin = (feedback / "erin.md").read_text()
    assert "kernel died" in erin and "stopped at cell" in erin
    report = json.loads((graded["out"] / "report.json").read_text())
    assert {r["learner"] for r in report} == set(graded["kinds"])


def test_broken_submissions_never_touch_the_course(graded):
    assert graded["sentinel"].read_text() == "keep me", "a deleting cell removed a protected file"
    assert graded["course_files_unchanged"]
    grace = (graded["out"] / "feedback" / "grace.md").read_text()
    assert "refused" in grace


@pytest.mark.parametrize("kind", subs.TAMPER_KINDS)
def test_tampering_in_an_exercise_cell_cannot_pass(kind, tmp_path):
    snapshot = grading.CourseSnapshot.capture(ROOT / "solutions")
    plan = snapshot.plans["01_images_and_text"]
    results = grading.check_functions(snapshot, plan, subs.notebook_dict(kind), timeout=4,
                                      protected=[str(ROOT), str(tmp_path)], scratch=tmp_path)
    got = "".join(SHORT[results[i].status] for i in subs.IDS)
    assert got == subs.EXPECTED[kind], {i: (r.status, r.message, r.notes) for i, r in results.items()}


def test_learner_names_and_lessons_from_file_names(tmp_path):
    lessons = ["00_welcome", "01_images_and_text"]
    paths = [tmp_path / "alice" / "01_images_and_text.ipynb", tmp_path / "bob" / "01_images_and_text.ipynb",
             tmp_path / "x" / "carol_01_images_and_text.ipynb", tmp_path / "y" / "dave.ipynb"]
    submissions = [grading.Submission(p, b"", lesson="01_images_and_text") for p in paths]
    grading.name_learners(submissions, lessons)
    assert [s.learner for s in submissions] == ["alice", "bob", "carol", "dave"]
    assert grading.lesson_from_name(paths[2], lessons) == "01_images_and_text"
    assert grading.lesson_from_name(tmp_path / "lesson-00" / "mine.ipynb", lessons) == "00_welcome"
    assert grading.lesson_from_name(paths[3], lessons) is None
    assert grading.resolve_lesson("1", lessons) == grading.resolve_lesson("01_images_and_text.ipynb", lessons)
    with pytest.raises(ValueError, match="Unknown lesson"):
        grading.resolve_lesson("07", lessons)


def test_exercise_cells_follow_the_learners_notebook():
    plan = grading.CourseSnapshot.capture(ROOT / "solutions").plans["01_images_and_text"]
    nb = subs.notebook_dict("correct")
    helper = {"cell_type": "code", "id": "mine", "metadata": {}, "outputs": [], "execution_count": None,
              "source": "def helper():\n    return 1\nprint('top-level code is never run')\n"}
    nb["cells"].insert(3, helper)
    items, gates = grading.exercise_cells(plan, nb)
    by_id = {item["id"]: item for item in items}
    assert [item["id"] for item in items] == subs.IDS
    first = by_id["01.to_float_image"]
    assert [c["index"] for c in first["cells"]][-1] == gates["01.to_float_image"] - 1
    assert any("def helper" in c["source"] for c in first["cells"])
    assert "".join(nb["cells"][gates["01.encode"]]["source"]).startswith('check("01.encode"')


def test_common_mistakes_come_from_the_registry():
    entries = grading.common_mistakes("01")
    assert [e["exercise"] for e in entries] == subs.IDS
    for entry in entries:
        assert len(entry["mistakes"]) >= 2
        assert all(row["message"].startswith(entry["exercise"]) for row in entry["mistakes"])
    markdown = grading.common_mistakes_markdown("01_images_and_text")
    assert "integer division" in markdown and "Hint" in markdown


def test_cli_grade_help_and_bad_arguments(tmp_path):
    cli = [sys.executable, "-m", "mmlm_course.tools.cli", "grade"]
    help_text = subprocess.run(cli + ["--help"], capture_output=True, text=True).stdout
    for option in ("--out", "--timeout", "--lesson", "--jobs", "--solutions"):
        assert option in help_text
    notebook = tmp_path / "mine.ipynb"
    notebook.write_bytes(subs.build("blank"))
    result = subprocess.run(cli + [str(notebook), "--out", str(tmp_path / "out"), "--lesson", "42"],
                            capture_output=True, text=True)
    assert result.returncode == 2 and "Unknown lesson" in result.stderr
    (tmp_path / "empty").mkdir()
    result = subprocess.run(cli + [str(tmp_path / "empty"), "--out", str(tmp_path / "out")],
                            capture_output=True, text=True)
    assert result.returncode == 2 and "No submissions" in result.stderr


SOLUTIONS = sorted((ROOT / "solutions").glob("*.ipynb"))


@pytest.mark.parametrize("solution", SOLUTIONS, ids=[p.stem for p in SOLUTIONS])
def test_every_solution_notebook_passes_in_the_grading_process(solution, tmp_path):
    """The guard must never fail a correct learner (Keras and TensorFlow checks included)."""
    snapshot = grading.CourseSnapshot.capture(ROOT / "solutions")
    plan = snapshot.plans[solution.stem]
    results = grading.check_functions(snapshot, plan, json.loads(solution.read_text()), timeout=300,
                                      protected=[str(ROOT), str(tmp_path)], scratch=tmp_path)
    assert results and {r.status for r in results.values()} == {"pass"}, \
        {i: (r.status, r.message, r.notes) for i, r in results.items()}
    assert not any(r.notes for r in results.values()), {i: r.notes for i, r in results.items()}


def test_cli_grade_writes_grades_and_feedback(tmp_path):
    (tmp_path / "zoe_01_images_and_text.ipynb").write_bytes(subs.build("invalid_json"))
    result = subprocess.run([sys.executable, "-m", "mmlm_course.tools.cli", "grade", str(tmp_path), "--out",
                             str(tmp_path / "out")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    rows = list(csv.DictReader(open(tmp_path / "out" / "grades.csv", encoding="utf-8")))
    assert [(r["learner"], r["01.encode"], r["total"]) for r in rows] == [("zoe", "error", "0")]
    assert "not a readable Jupyter notebook" in (tmp_path / "out" / "feedback" / "zoe.md").read_text()
