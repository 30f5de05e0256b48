"""`mmlm-course grade` on submissions that attack it: every row is what the submission deserves.

Submissions are built from lessons/01 and solutions/01 by tests/grading_submissions.py: broken
notebooks (invalid JSON, an infinite loop, os._exit, a segfault), forged results (patched
checks, frame and gc walks, lying objects, a forged report channel), the checks' own
reference answers (also behind magics, attribute chains and names built at run time, which are
flagged for review), attacks on the grader through its report channel (junk, a flood, a child
that never ends), hostile notebook JSON, honest work written differently, and a notebook that
tries to harm the learners graded after it and the grader's files. One grading run covers
them all; names, paths and outputs are tested on the grader's functions directly.
"""

import csv
import json
import os
import site
import subprocess
import sys
import time
from pathlib import Path

import pytest

import grading_submissions as subs
from mmlm_course.tools import grading, mistakes, sandbox

ROOT = Path(__file__).resolve().parent.parent
SHORT = {"pass": "P", "fail": "F", "not attempted": "N", "error": "E"}
SANDBOXED = sandbox.isolation() != "none"
NEEDS_SANDBOX = pytest.mark.skipif(not SANDBOXED and os.environ.get("MMLM_COURSE_REQUIRE_SANDBOX") != "1",
                                   reason="Bubblewrap is not usable here (apt-get install bubblewrap); "
                                          "these guarantees hold only in the sandbox")
ISOLATED_KINDS = {"deletes_files", "vandal"}          # harmless only where the file system is read-only


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    """One grading run over a folder per learner (alice/01_images_and_text.ipynb, ...)."""
    base = tmp_path_factory.mktemp("grading")
    course = base / "course"                          # stands in for course files no submission may touch
    course.mkdir()
    sentinel = course / "precious.txt"
    sentinel.write_text("keep me")
    kinds = {f"{kind}-learner": kind for kind in subs.EXPECTED if SANDBOXED or kind not in ISOLATED_KINDS}
    for learner, kind in kinds.items():
        (base / "submissions" / learner).mkdir(parents=True)
        (base / "submissions" / learner / "01_images_and_text.ipynb").write_bytes(subs.build(kind, sentinel))
    bad = base / "submissions" / "bad"
    bad.mkdir()
    (bad / "dangling_01_images_and_text.ipynb").symlink_to(base / "nowhere.ipynb")
    os.mkfifo(bad / "fifo_01_images_and_text.ipynb")
    (bad / "folder_01_images_and_text.ipynb").mkdir()
    keras_json = Path.home() / ".keras" / "keras.json"
    before = keras_json.read_bytes() if keras_json.exists() else None
    start = time.perf_counter()
    grades = grading.grade([base / "submissions"], base / "out", timeout=10, jobs=2, watch=[course], progress=None)
    seconds = time.perf_counter() - start
    rows = {row["learner"]: row for row in csv.DictReader(open(base / "out" / "grades.csv", encoding="utf-8"))}
    time.sleep(5)                                     # a detached process of `vandal` would have struck by now
    return {"kinds": kinds, "rows": rows, "grades": grades, "out": base / "out", "sentinel": sentinel,
            "keras_json": (before, keras_json.read_bytes() if keras_json.exists() else None), "seconds": seconds,
            "csv_after": (base / "out" / "grades.csv").read_text(encoding="utf-8")}


def test_every_row_is_what_the_submission_deserves(graded):
    wrong = {}
    for learner, kind in graded["kinds"].items():
        row = graded["rows"][learner]
        got = "".join(SHORT[row[i]] for i in subs.IDS)
        if got != subs.EXPECTED[kind] or row["total"] != str(subs.EXPECTED[kind].count("P")):
            grade = next(g for g in graded["grades"] if g.learner == learner)
            wrong[kind] = (got, subs.EXPECTED[kind], {i: r.message[:150] for i, r in grade.results.items()},
                           grade.notes)
    assert not wrong, wrong


def test_a_path_that_cannot_be_read_is_one_error_row(graded):
    for name in ("dangling", "fifo", "folder"):
        row = graded["rows"][name]
        assert [row[i] for i in subs.IDS] == ["error"] * 4 and row["total"] == "0"


def test_a_fault_of_the_grader_is_that_row_only_and_says_so(tmp_path, monkeypatch):
    """Where the grader itself fails on a submission (here: its sandbox cannot start), that
    learner's row says so and asks for a new run; the other learners are graded."""
    for learner in ("amy", "ben"):
        (tmp_path / "in" / learner).mkdir(parents=True)
        (tmp_path / "in" / learner / "01_images_and_text.ipynb").write_bytes(subs.build("blank"))
    real, calls = sandbox.start, []

    def start(job, hide):                               # the second child cannot start
        calls.append(job)
        if len(calls) == 2:
            raise RuntimeError("could not start the sandboxed child")
        return real(job, hide)

    monkeypatch.setattr(sandbox, "start", start)
    grades = grading.grade([tmp_path / "in"], tmp_path / "out", timeout=10, jobs=1)
    status = {g.learner: {r.status for r in g.results.values()} for g in grades}
    failed = [learner for learner, seen in status.items() if seen == {"error"}]
    assert len(failed) == 1 and list(status.values()).count({"not attempted"}) == 1, status
    message = next(g for g in grades if g.learner == failed[0]).results["01.encode"].message
    assert "grader failed" in message and "could not start" in message and "grade it again" in message
    feedback = (tmp_path / "out" / "feedback" / f"{failed[0]}.md").read_text(encoding="utf-8")
    assert "grade it again" in feedback


def test_grades_csv_has_one_column_per_exercise_and_a_total(graded):
    header = graded["csv_after"].splitlines()[0].split(",")
    assert header == ["learner", "lesson", *subs.IDS, "total", "review"]


def test_rows_the_grader_cannot_vouch_for_are_flagged_for_review(graded):
    """A pass made by code built at run time (the checks reached through assembled names, a forged
    record of the right outputs) cannot be told from honest work: grades.csv says so."""
    for kind, reason in subs.REVIEWED.items():
        assert reason in graded["rows"][f"{kind}-learner"]["review"], (kind, graded["rows"][f"{kind}-learner"])
    for kind in ("correct", "constants", "honest_styles", "partial", "thread", "string_sources"):
        assert graded["rows"][f"{kind}-learner"]["review"] == "", kind


def test_learner_controlled_text_stays_on_one_line(graded):
    feedback = (graded["out"] / "feedback" / "feedback_injection-learner.md").read_text(encoding="utf-8")
    assert "Feedback for someone else" in feedback            # quoted, on the line of the cell's error
    lines = feedback.splitlines()
    assert not any(line.startswith(("# Feedback for someone", "| `01.encode` | pass")) for line in lines)
    assert "\u202e" not in feedback
    assert "format 4" in " ".join(next(g for g in graded["grades"] if g.learner == "nbformat3-learner").notes)


def test_feedback_says_what_happened(graded):
    feedback = graded["out"] / "feedback"
    partial = (feedback / "partial-learner.md").read_text()
    assert "01.hflip_with_caption: fail" in partial and "Hint:" in partial
    assert "01.pad_with_mask: not attempted" in partial
    assert "more than 10 s" in (feedback / "infinite_loop-learner.md").read_text()
    assert "stopped" in (feedback / "kernel_exit-learner.md").read_text()
    assert "reference answers" in (feedback / "reference_call-learner.md").read_text()
    assert "to_float_image" in (feedback / "course_impl-learner.md").read_text()
    report = json.loads((graded["out"] / "report.json").read_text())
    assert report["isolation"] == sandbox.isolation()
    assert {r["learner"] for r in report["learners"]} == set(graded["rows"])


@NEEDS_SANDBOX
def test_no_submission_touches_the_course_another_learner_or_the_grader(graded):
    assert graded["sentinel"].read_text() == "keep me"
    assert graded["keras_json"][0] == graded["keras_json"][1], "a submission wrote ~/.keras/keras.json"
    assert not any(Path(p, "zz_evil.pth").exists() for p in site.getsitepackages())
    assert "forged" not in graded["csv_after"] and "forged" not in (graded["out"] / "grades.csv").read_text()
    assert not list(Path("/tmp").glob("mmlm-grade-4*")), "a submission left folders in the grader's /tmp"


def _threads_of(uid: int) -> int:
    total = 0
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            fields = dict(line.split(":", 1) for line in status.read_text().splitlines() if ":" in line)
        except OSError:
            continue
        if fields.get("Uid", "").split()[:1] == [str(uid)]:
            total += int(fields.get("Threads", "0"))
    return total


def _wait_for_threads(uid: int, count: int) -> None:
    deadline = time.monotonic() + 60
    while _threads_of(uid) < count and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _threads_of(uid) >= count, f"the process holding {count} threads as user {uid} did not start"


HOG = ("import threading, time\n"
       "[threading.Thread(target=time.sleep, args=(120,)).start() for _ in range(40)]\ntime.sleep(120)")
OWN_USERS = pytest.mark.skipif(sandbox.isolation() != "bubblewrap (nobody)", reason="children have users of their "
                               "own only where the grader runs as root and the Python installation is readable by "
                               "others")


def _start(cells: list, timeout: int) -> sandbox.Child:
    return sandbox.start(json.dumps({"timeout": timeout, "cells": cells}).encode(), [])


@OWN_USERS
def test_a_child_at_its_process_limit_does_not_hold_back_its_neighbour(monkeypatch):
    """Linux counts the process limit per user, and each child graded at the same time has a
    user of its own: a notebook that starts many threads uses up its own limit, not the
    limit of the learner graded beside it (with one user for all, the start below failed)."""
    hog = _start([{"index": 0, "source": HOG, "record": []}], 120)
    try:
        _wait_for_threads(hog.uid, 40)
        monkeypatch.setattr(sandbox, "PROCESSES", 30)           # the neighbour holds more than this
        monkeypatch.setattr(sandbox, "START_TRIES", 1)          # and the start below may not wait
        child = _start([], 10)
        try:
            assert child.uid != hog.uid
            child.process.wait(timeout=120)
            assert child.process.stdout.read().strip(), "the child started but reported nothing"
        finally:
            child.stop()
    finally:
        hog.stop()


@OWN_USERS
def test_a_child_waits_while_its_user_is_at_its_process_limit(monkeypatch):
    """A child whose user is still at its limit (the child before it still ending) waits and
    tries again; after its tries it says why it gave up."""
    import threading

    uid = sandbox.CHILD_UIDS[-1]                      # one user only, held by a process outside the grader
    monkeypatch.setattr(sandbox, "CHILD_UIDS", range(uid, uid + 1))

    def as_child_user():
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)
    hog = subprocess.Popen([sys.executable, "-c", HOG], preexec_fn=as_child_user)
    try:
        _wait_for_threads(uid, 40)
        monkeypatch.setattr(sandbox, "PROCESSES", 30)
        monkeypatch.setattr(sandbox, "START_TRIES", 2)
        with pytest.raises(RuntimeError, match=f"user {uid}"):
            _start([], 10)
        monkeypatch.setattr(sandbox, "START_TRIES", 30)
        threading.Timer(2, hog.kill).start()
        start = time.perf_counter()
        child = _start([], 10)
        waited = time.perf_counter() - start
        try:
            assert child.uid == uid
            child.process.wait(timeout=120)
            assert child.process.stdout.read().strip(), "the child started but reported nothing"
        finally:
            child.stop()
        assert waited >= 1.5, f"a child started beside 40 threads of its user with a limit of 30 ({waited:.1f} s)"
    finally:
        hog.kill()
        hog.wait()


@pytest.mark.skipif(os.environ.get("MMLM_COURSE_REQUIRE_SANDBOX") != "1", reason="only where CI requires the sandbox")
def test_the_sandbox_is_used_where_it_is_required():
    """CI sets MMLM_COURSE_REQUIRE_SANDBOX=1 where Bubblewrap works: the grader must then use it,
    wherever the course and its virtual environment live (a clone under /tmp too)."""
    assert sandbox.isolation() != "none"


def _lineage(pid: int) -> list[int]:
    chain = [pid]
    while pid > 1:
        pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        chain.append(pid)
    return chain


@NEEDS_SANDBOX
def test_grading_children_keep_small_thread_pools():
    """A thread per core per TensorFlow pool would use up a child's process limit on a many-core machine:
    the learner's Python sees small pools in its environment."""
    job = {"timeout": 10, "cells": [{"index": 0, "source": "import time; time.sleep(30)", "record": []}]}
    child = sandbox.start(json.dumps(job).encode(), [])
    try:
        found, deadline = {}, time.monotonic() + 60
        while not found and time.monotonic() < deadline:
            time.sleep(0.5)
            for proc in Path("/proc").iterdir():
                try:
                    command = (proc / "cmdline").read_bytes()
                    if proc.name.isdigit() and command.startswith(sys.executable.encode()) \
                            and b"grading_child" in command and child.process.pid in _lineage(int(proc.name)):
                        found = dict(item.split(b"=", 1) for item in (proc / "environ").read_bytes().split(b"\0")
                                     if b"=" in item)
                except (OSError, ValueError):
                    continue
        assert found, "no grading child was found running"
        for name in (b"TF_NUM_INTEROP_THREADS", b"TF_NUM_INTRAOP_THREADS", b"OMP_NUM_THREADS"):
            assert found.get(name) == sandbox.THREADS.encode(), (name, found.get(name))
    finally:
        child.stop()


def test_learner_ids_keep_unicode_and_collisions_are_named(tmp_path):
    lessons = ["00_welcome", "01_images_and_text"]
    paths = [tmp_path / "alice" / "01_images_and_text.ipynb", tmp_path / "x" / "carol_01_images_and_text.ipynb",
             tmp_path / "y" / "dave.ipynb", tmp_path / "al ice.ipynb", tmp_path / "al_ice.ipynb",
             tmp_path / "张伟_01_images_and_text.ipynb", tmp_path / "p" / "bob.ipynb", tmp_path / "q" / "Bob.ipynb"]
    submissions = [grading.Submission(p, lesson="01_images_and_text") for p in paths]
    notes = grading.name_learners(submissions, lessons)
    assert [s.learner for s in submissions] == ["alice", "carol", "dave", "al ice", "al_ice", "张伟", "bob", "Bob-2"]
    odd = [grading.Submission(tmp_path / "eve\nmallory\u202e\u2066_01_images_and_text.ipynb",
                              lesson="01_images_and_text")]
    grading.name_learners(odd, lessons)
    assert odd[0].learner == "eve mallory"                 # one line, no bidi override
    assert len(notes) == 1 and "'Bob'" in notes[0]                   # ids differing only in case collide
    twins = [grading.Submission(tmp_path / group / "alice" / "01_images_and_text.ipynb", lesson="01_images_and_text")
             for group in ("monday", "tuesday")]
    notes = grading.name_learners(twins, lessons)
    assert [s.learner for s in twins] == ["alice", "alice-2"] and "alice-2" in notes[0]
    assert grading.lesson_from_name(paths[1], lessons) == "01_images_and_text"
    assert grading.lesson_from_name(tmp_path / "lesson-00" / "mine.ipynb", lessons) == "00_welcome"
    assert grading.lesson_from_name(paths[2], lessons) is None
    assert grading.resolve_lesson("1", lessons) == grading.resolve_lesson("01_images_and_text.ipynb", lessons)
    with pytest.raises(ValueError, match="Unknown lesson"):
        grading.resolve_lesson("07", lessons)


def test_outputs_escape_formulas_and_keep_every_learner_apart(tmp_path):
    plans = grading.load_plans(ROOT / "solutions")
    names = ["=HYPERLINK(\"http://x\",\"y\")", "al ice", "al_ice", "张伟", "Ann", "ann", "../../etc/passwd", "CON",
             "eve\nmallory\u202e"]
    grades = [grading.LearnerGrade(n, f"{i}.ipynb", "01_images_and_text",
                                   {e: grading.ExerciseResult("fail", "m") for e in subs.IDS}) for i, n in enumerate(names)]
    grading.write_outputs(grades, plans, tmp_path)
    rows = list(csv.reader(open(tmp_path / "grades.csv", encoding="utf-8")))
    assert rows[1][0].startswith("'=") and [r[0] for r in rows[2:]] == names[1:7] + ["CON", "eve mallory"]
    files = sorted(p.name for p in (tmp_path / "feedback").iterdir())
    assert len(files) == len(names) and "张伟.md" in files and "_CON.md" in files and "CON.md" not in files
    assert all((tmp_path / "feedback" / f).parent == tmp_path / "feedback" for f in files)


def test_outputs_refuse_links_and_fifos(tmp_path):
    target = tmp_path / "elsewhere.txt"
    target.write_text("precious")
    out = tmp_path / "out"
    out.mkdir()
    (out / "report.json").symlink_to(target)
    notebook = tmp_path / "subs" / "zoe_01_images_and_text.ipynb"
    notebook.parent.mkdir()
    notebook.write_bytes(subs.build("invalid_json"))
    with pytest.raises(ValueError, match="not a regular"):
        grading.grade([notebook.parent], out, progress=None)
    (out / "report.json").unlink()
    os.mkfifo(out / "grades.csv")
    with pytest.raises(ValueError, match="not a regular"):
        grading.grade([notebook.parent], out, progress=None)
    assert target.read_text() == "precious"


def test_reading_the_source_flags_the_checks_internals_not_honest_words():
    import ast

    from mmlm_course.tools.grading_source import uses_internals

    for hostile in ("from mmlm_course.exercises import registry", "x = registry()['01.encode'].reference",
                    "f = m.exercises.checker._lookup('01.encode').reference", "f = check.__globals__['checker']"):
        assert uses_internals(ast.parse(hostile)), hostile
    for honest in ("from mmlm_course.exercises import check", "best = row['reference']",
                   "score = bleu(candidate, self.reference)", "check('01.encode', encode)"):
        assert not uses_internals(ast.parse(honest)), honest


def test_common_mistakes_come_from_the_registry():
    entries = mistakes.common_mistakes("01")
    assert [e["exercise"] for e in entries] == subs.IDS
    for entry in entries:
        assert len(entry["mistakes"]) >= 2
        assert all(row["message"].startswith(entry["exercise"]) for row in entry["mistakes"])
    markdown = mistakes.common_mistakes_markdown("01_images_and_text")
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


def test_cli_grade_writes_grades_and_feedback(tmp_path):
    (tmp_path / "zoe_01_images_and_text.ipynb").write_bytes(subs.build("invalid_json"))
    result = subprocess.run([sys.executable, "-m", "mmlm_course.tools.cli", "grade", str(tmp_path), "--out",
                             str(tmp_path / "out")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    rows = list(csv.DictReader(open(tmp_path / "out" / "grades.csv", encoding="utf-8")))
    assert [(r["learner"], r["01.encode"], r["total"]) for r in rows] == [("zoe", "error", "0")]
    assert "not a readable Jupyter notebook" in (tmp_path / "out" / "feedback" / "zoe.md").read_text()
