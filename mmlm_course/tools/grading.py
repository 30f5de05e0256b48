"""Grade learners' notebooks with the course's own checks, so that no submission can forge a mark.

`grade` (the engine behind ``mmlm-course grade``) writes ``grades.csv`` (one row per
submission, one column per exercise: ``pass`` / ``fail`` / ``not attempted`` / ``error``, and a
``total``), ``feedback/<learner>.md`` and ``report.json``.

How a submission is graded
--------------------------
1. **The learner's code runs only in a sandboxed child** (`mmlm_course.tools.sandbox`: Bubblewrap
   where available, a fresh one per submission). The child runs the notebook's code cells in
   order, up to the last exercise's check cell, and after each check cell calls the learner's
   function through the course's check with a *tape*: what the function returned (converted to
   plain data: numbers, strings, arrays, lists...) or raised, call after call
   (`mmlm_course.exercises.run_check`).
2. **The grader decides alone.** It reads the tape (JSON, never pickle: `exercises.plain`) and
   replays the same check on it in its own process, which never runs learner code. The child
   can only report what the learner's function returned; whatever else it prints, fakes or
   writes decides nothing. A tape that ends early (a crash, a timeout) or does not match the
   check is an ``error``.
3. **Only the grader writes outputs** (`mmlm_course.tools.grading_outputs`), each one atomically,
   refusing to replace a symlink or a FIFO, with every learner-controlled text on one line.

Decisions
---------
- An exercise whose notebook uses the checks' internals (``mmlm_course.exercises`` beyond
  ``check``: the registry, a check's ``reference``) is an ``error`` flagged "uses the grader's
  reference answers". An exercise function that calls the course's own implementation of the
  same idea (``encoders.patchify`` for ``03.patchify``) keeps its grade and is flagged in the
  feedback for the teacher. Both are found by reading the source as IPython runs it
  (`mmlm_course.tools.grading_source`); the marks of a notebook that builds code or names at
  run time (``exec``, ``__import__``, ``getattr`` with a computed name...) are flagged too.
- Learner ids come from the file names (``alice.ipynb``, ``alice_01_images_and_text.ipynb``; the
  folder's name when the file carries only the lesson's), Unicode kept. Two submissions with
  the same id get ``-2``, ``-3``... in path order, and the report names the collision.
- A path that cannot be read (missing, a dangling link, a FIFO, a folder named ``*.ipynb``, a
  file over 50 MB) is one ``error`` row; the run goes on.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import os
import re
import select
import stat
import threading
import time
import unicodedata
from pathlib import Path
from typing import Callable, Iterable

from mmlm_course.tools import grading_source, sandbox
from mmlm_course.tools.grading_outputs import check_outputs, shown, write_outputs
from mmlm_course.tools.grading_child import SETUP_TIMEOUT   # the first cell's time (it imports TensorFlow)

DEFAULT_TIMEOUT = 60
MAX_SUBMISSION_BYTES = 50 << 20
MAX_REPORT_BYTES = 512 << 20             # what one child may send in all
MAX_REPORTS = 200_000                    # report lines one child may send (a lesson's checks send a few hundred)
MAX_REPORT_ITEMS = 5_000_000             # commas in them: list items the grader would decode (arrays are base64)
_CHECK_CALL = re.compile(r"""^\s*check\(\s*["']([\w.]+)["']\s*,\s*([A-Za-z_]\w*)""", re.MULTILINE)
_CHECK_ID = re.compile(r"""check\(\s*["']([\w.]+)["']""")
_replay_lock = threading.Lock()          # the checks build Keras layers: one replay at a time
_progress_lock = threading.Lock()


@dataclasses.dataclass
class ExerciseResult:
    status: str
    message: str = ""
    notes: list = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class LearnerGrade:
    learner: str
    submission: str
    lesson: str | None
    results: dict                        # exercise id -> ExerciseResult
    notes: list = dataclasses.field(default_factory=list)
    seconds: float = 0.0
    review: list = dataclasses.field(default_factory=list)   # why the teacher should look (grades.csv)

    @property
    def total(self) -> int:
        return sum(r.status == "pass" for r in self.results.values())


@dataclasses.dataclass
class Submission:
    path: Path
    data: bytes = b""
    lesson: str | None = None
    learner: str = ""
    problem: str | None = None


# --------------------------------------------------------------------------- lessons

@dataclasses.dataclass
class LessonPlan:
    """The exercises of a solution notebook: ``[(id, function name, check cell id)]``."""

    name: str
    exercises: list


def _source(cell) -> str:
    source = cell.get("source", "")
    return "".join(source) if isinstance(source, list) else str(source)


def lesson_plan(name: str, solution: dict) -> LessonPlan:
    exercises = []
    for cell in solution.get("cells", []):
        if cell.get("cell_type") == "code":
            exercises += [(eid, function, cell.get("id")) for eid, function in _CHECK_CALL.findall(_source(cell))]
    return LessonPlan(name, exercises)


def load_plans(solutions_dir: Path) -> dict:
    return {p.stem: lesson_plan(p.stem, json.loads(p.read_text(encoding="utf-8")))
            for p in sorted(Path(solutions_dir).glob("*.ipynb"))}


def resolve_lesson(name: str, lessons: Iterable[str]) -> str:
    """``01``, ``1``, ``01_images_and_text`` or a file name -> the lesson name; ValueError otherwise."""
    lessons = sorted(lessons)
    text = Path(str(name)).stem if str(name).endswith(".ipynb") else str(name)
    if text in lessons:
        return text
    if text.isdigit():
        matches = [lesson for lesson in lessons if lesson.split("_", 1)[0] == f"{int(text):02d}"]
        if len(matches) == 1:
            return matches[0]
    raise ValueError(f"Unknown lesson {name!r}: expected a number such as 01 or one of {', '.join(lessons)}.")


def lesson_from_name(path: Path, lessons: list[str]) -> str | None:
    """The lesson a submission's file or folder name names ("carol_01_images_and_text.ipynb",
    "lesson-00/mine.ipynb"), or None when it names none or several."""
    for text in (path.stem, path.parent.name):
        named = [lesson for lesson in lessons if lesson.lower() in text.lower()]
        if len(named) == 1:
            return named[0]
        numbers = set(re.findall(r"(?<!\d)(\d{2})(?!\d)", text))
        by_number = [lesson for lesson in lessons if lesson.split("_", 1)[0] in numbers]
        if len(by_number) == 1:
            return by_number[0]
    return None


def _lesson_from_content(data: bytes, lessons: list[str]) -> str | None:
    numbers = re.findall(rb"""check\(\s*\\?["'](\d{2})\.""", data)
    if not numbers:
        return None
    common = max(set(numbers), key=numbers.count).decode()
    matches = [lesson for lesson in lessons if lesson.split("_", 1)[0] == common]
    return matches[0] if len(matches) == 1 else None


# --------------------------------------------------------------------------- submissions

def find_submissions(paths: Iterable) -> list[Path]:
    """Notebook paths from files and folders (folders searched recursively, in sorted order).
    A path that does not exist is kept: it becomes an error row."""
    found = []
    for path in map(Path, paths):
        if path.is_dir() and not path.name.endswith(".ipynb"):
            found += sorted(p for p in path.rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts)
        else:
            found.append(path)
    return found


def read_submission(path: Path) -> tuple[bytes, str | None]:
    """The file's bytes, or a problem: never blocks on a FIFO, never follows a link to nothing."""
    try:
        info = os.stat(path)
    except OSError as error:
        return b"", f"cannot read {path.name}: {error.strerror or error}"
    if not stat.S_ISREG(info.st_mode):
        return b"", f"{path.name} is not a regular file"
    if info.st_size > MAX_SUBMISSION_BYTES:
        return b"", f"{path.name} has {info.st_size:,} bytes, more than the {MAX_SUBMISSION_BYTES:,} allowed"
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        with os.fdopen(fd, "rb") as handle:
            return handle.read(MAX_SUBMISSION_BYTES + 1)[:MAX_SUBMISSION_BYTES], None
    except OSError as error:
        return b"", f"cannot read {path.name}: {error.strerror or error}"


def name_learners(submissions: list[Submission], lessons: list[str]) -> list[str]:
    """Learner ids from file names (Unicode kept); returns a note for each collision."""
    def from_file(sub: Submission) -> str:
        stem = sub.path.stem
        for lesson in sorted(lessons, key=len, reverse=True):
            stem = re.sub(re.escape(lesson), "", stem, flags=re.I)
        return shown(unicodedata.normalize("NFC", stem)).strip(" _-.")

    names = [from_file(s) for s in submissions]
    files = [s.path.name for s in submissions]
    for sub, name, file in zip(submissions, names, files):
        folder = shown(unicodedata.normalize("NFC", sub.path.absolute().parent.name))
        sub.learner = (folder if (not name or files.count(file) > 1) else name) or "learner"
    notes, seen = [], {}
    for sub in submissions:
        key = (sub.learner.casefold(), sub.lesson)
        seen[key] = seen.get(key, 0) + 1
        if seen[key] > 1:
            notes.append(f"two submissions are named {sub.learner!r}: {sub.path} is {sub.learner}-{seen[key]}")
            sub.learner = f"{sub.learner}-{seen[key]}"
    return notes


# --------------------------------------------------------------------------- one submission

def _record_points(plan: LessonPlan, cells: list) -> dict:
    """Cell index -> exercises to record after it, each with the name of the function to check.

    The place: the learner's check cell of the exercise (matched by the solution's cell id,
    else by the check's id), else the last cell that defines the function, else the last cell.
    The name: the one the learner's check cell passes (``check("01.x", my_version)``), else the
    solution's."""
    sources = [_source(c) for c in cells]
    points: dict = {}
    for exercise_id, function, check_id in plan.exercises:
        index = next((i for i, c in enumerate(cells) if c.get("id") == check_id
                      and exercise_id in _CHECK_ID.findall(sources[i])), None)
        if index is None:
            index = next((i for i, s in enumerate(sources) if exercise_id in _CHECK_ID.findall(s)), None)
        if index is not None:
            function = dict(_CHECK_CALL.findall(sources[index])).get(exercise_id, function)
        else:
            definers = [i for i, s in enumerate(sources) if re.search(rf"^(def|class)\s+{function}\b", s, re.M)]
            index = definers[-1] if definers else len(cells) - 1
        points.setdefault(index, []).append({"id": exercise_id, "function": function})
    return points


def _flags(plan: LessonPlan, cells: list, points: dict) -> tuple[dict, set]:
    """`grading_source.flags` for this plan: exercise id -> "internals" or a course function; run-time code."""
    from mmlm_course.exercises import registry

    exercises = registry()
    functions = {entry["id"]: entry["function"] for entries in points.values() for entry in entries}
    return grading_source.flags([(i, functions.get(i, function)) for i, function, _ in plan.exercises],
                                [_source(c) for c in cells],
                                {i: getattr(exercises.get(i), "reference", None) for i, _, _ in plan.exercises})


def _read_reports(child: sandbox.Child, timeout: int, job: dict, ids: list) -> tuple[list, str | None]:
    """Every report the child sends, and why reading stopped early (None: it said done).

    The child interrupts a cell or a call after ``timeout`` s itself; it is stopped here when it
    reports no progress (the next cell, an exercise's record) for 20 s longer (the first cell:
    for the setup time), when the whole notebook runs past ``timeout`` s per cell and per
    exercise, or when it sends more than `MAX_REPORT_BYTES`, `MAX_REPORTS` lines or `MAX_REPORT_ITEMS`
    (the grader's memory: a list of numbers takes ten times its text)."""
    fd, buffer, messages, total, lines_read, items = child.process.stdout.fileno(), bytearray(), [], 0, 0, 0
    cells = [cell["index"] for cell in job["cells"]]
    deadline = time.monotonic() + max(timeout, SETUP_TIMEOUT) + timeout * (len(cells) + len(ids)) + 20
    idle = time.monotonic() + max(timeout, SETUP_TIMEOUT) + 20
    while True:
        now = time.monotonic()
        if now >= min(idle, deadline):
            return messages, "timeout"
        ready, _, _ = select.select([fd], [], [], min(idle, deadline) - now)
        if not ready:
            continue
        chunk = os.read(fd, 1 << 20)
        if not chunk:
            return messages, "stopped"
        total += len(chunk)
        if total > MAX_REPORT_BYTES:
            return messages, "flood"
        start = len(buffer)
        buffer += chunk
        end = buffer.rfind(b"\n", start)
        if end < 0:
            continue
        lines, buffer = bytes(buffer[:end]).split(b"\n"), buffer[end + 1:]
        lines_read, items = lines_read + len(lines), items + sum(line.count(b",") for line in lines)
        if lines_read > MAX_REPORTS or items > MAX_REPORT_ITEMS:
            return messages, "flood"
        for line in lines:
            try:
                message = json.loads(line)
            except (ValueError, RecursionError):
                continue                          # not a report: ignored, the replay decides
            if not isinstance(message, dict):
                continue
            if message.get("done") is True:
                return messages, None
            if cells and message.get("cell") == cells[0] and type(message["cell"]) is int:
                cells.pop(0)
            elif not (isinstance(message.get("exercise"), str) and message["exercise"] in ids):
                continue                          # neither the next cell nor an exercise's record
            messages.append(message)
            idle = time.monotonic() + timeout + 20


def _verdict(exercise_id: str, tape: list | None, ended: bool, why: str | None, timeout: int) -> ExerciseResult:
    from mmlm_course.exercises import CheckFailed, ExerciseNotAttempted, TapeError, run_check

    if not ended:
        reason = {"timeout": f"your code ran for more than {timeout} s (an infinite loop?) before this check ended",
                  "flood": "your notebook printed or sent more than the grader reads",
                  }.get(why, "the process running your notebook stopped before this check ended (os._exit, "
                             "a crash, or running out of memory)")
        return ExerciseResult("error", f"{exercise_id}: {reason}.")
    try:
        with _replay_lock:
            passed = run_check(exercise_id, None, replay=tape or [])
    except ExerciseNotAttempted as error:
        return ExerciseResult("not attempted", str(error))
    except CheckFailed as error:
        if "raised CellTimeout" in str(error):
            return ExerciseResult("error", f"{exercise_id}: your function ran for more than {timeout} s "
                                           "(an infinite loop?).")
        return ExerciseResult("fail", str(error))
    except TapeError as error:
        return ExerciseResult("error", f"{error}: the record of what your function returned is incomplete.")
    return ExerciseResult("pass", f"{len(passed)} checks passed")


def grade_submission(sub: Submission, plan: LessonPlan, timeout: int, hide: list[Path]) -> LearnerGrade:
    """Grade one submission: run it in the sandbox, then replay each check. Never raises."""
    from mmlm_course.exercises import plain

    start = time.perf_counter()
    grade = LearnerGrade(sub.learner, str(sub.path), sub.lesson, {})
    ids = [exercise_id for exercise_id, _, _ in plan.exercises]
    try:
        notebook = json.loads(sub.data.decode("utf-8"))
        if not (isinstance(notebook, dict) and isinstance(notebook.get("cells"), list)):
            raise ValueError("expected a Jupyter notebook of format 4 (a list of cells); an older notebook "
                             "opened and saved again in Jupyter becomes one")
        cells = [c for c in notebook["cells"] if isinstance(c, dict) and c.get("cell_type") == "code"]
        if not all(isinstance(_source(c), str) for c in cells):
            raise ValueError("a cell without source text")
    except (ValueError, TypeError, RecursionError) as error:
        message = f"not a readable Jupyter notebook ({type(error).__name__}: {str(error)[:200]})"
        grade.results = {i: ExerciseResult("error", f"{i}: {message}") for i in ids}
        grade.notes.append(message)
        return grade
    if not cells:
        grade.results = {i: ExerciseResult("error", f"{i}: your notebook has no code cells.") for i in ids}
        return grade
    if sum(len(_source(c)) for c in cells) > grading_source.MAX_SOURCE_CHARS:
        grade.results = {i: ExerciseResult("error", f"{i}: your notebook's code cells hold more than "
                                                    f"{grading_source.MAX_SOURCE_CHARS:,} characters: not graded; ask "
                                                    "your teacher.") for i in ids}
        return grade
    points = _record_points(plan, cells)
    last = max(points)
    job = {"timeout": timeout, "cells": [{"index": i, "source": _source(cells[i]), "record": points.get(i, [])}
                                         for i in range(last + 1)]}
    child = sandbox.start(json.dumps(job).encode(), hide)
    try:
        messages, why = _read_reports(child, timeout, job, ids)
    finally:
        child.stop()
    tapes: dict = {i: [] for i in ids}
    ended, missing, damaged = set(), {}, set()
    for message in messages:
        exercise_id = message.get("exercise")
        if "cell" in message:
            if isinstance(message.get("error"), str) and len(grade.notes) < 20:
                grade.notes.append(f"cell {message['cell']} raised {message['error'][:200]}")
        elif exercise_id not in ended:
            if message.get("end") is True:
                ended.add(exercise_id)
            elif isinstance(message.get("missing"), str):
                missing[exercise_id] = message["missing"]
                ended.add(exercise_id)
            else:
                try:
                    tapes[exercise_id].append(plain.loads(message.get("entry", "")))
                except (ValueError, TypeError, RecursionError):
                    damaged.add(exercise_id)
    flags, dynamic = _flags(plan, cells, points)
    for exercise_id, function, _ in plan.exercises:
        if exercise_id in missing:
            result = ExerciseResult("error", f"{exercise_id}: your notebook does not define `{function}` above "
                                             "this exercise's check cell.")
        elif exercise_id in damaged:
            result = ExerciseResult("error", f"{exercise_id}: the record of what your function returned was "
                                             "damaged (something else wrote to the grader's channel).")
        else:
            result = _verdict(exercise_id, tapes[exercise_id], exercise_id in ended, why, timeout)
        if flags.get(exercise_id) == "internals":
            result = ExerciseResult("error", f"{exercise_id}: your notebook uses the grader's checks or reference "
                                             "answers (mmlm_course.exercises beyond `check`): not graded; ask your "
                                             "teacher.", [f"the checks found: {result.status}"])
        elif flags.get(exercise_id):
            result.notes.append(f"your answer uses the course's own `{flags[exercise_id]}`: your teacher will "
                                "look at it")
            grade.review.append(f"{exercise_id} uses the course's own {flags[exercise_id]}")
        if dynamic and result.status == "pass":
            result.notes.append(f"your notebook builds code or names at run time ({', '.join(sorted(dynamic)[:4])}): "
                                "the grader cannot read what that code calls, so your teacher will look at it")
        grade.results[exercise_id] = result
    if "internals" in flags.values():
        grade.review.append("uses the checks' internals")
    if dynamic and grade.total:
        grade.review.append(f"code built at run time ({', '.join(sorted(dynamic)[:4])})")
    if why == "timeout":
        grade.notes.append(f"your notebook was stopped: it ran for more than {timeout} s without finishing a cell "
                           "or a check, or longer than its cells and checks are given in all")
    grade.seconds = time.perf_counter() - start
    return grade


# --------------------------------------------------------------------------- the run

def _hash_files(roots: Iterable[Path]) -> dict:
    import hashlib

    digests = {}
    for root in map(Path, roots):
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file()
                                                     and "__pycache__" not in p.parts) if root.exists() else []
        for path in files:
            try:
                digests[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
            except OSError:
                digests[str(path)] = None
    return digests


def grade(submissions: Iterable, out_dir: Path, *, timeout: int = DEFAULT_TIMEOUT, lesson: str | None = None,
          solutions_dir: Path | None = None, jobs: int = 2, watch: Iterable | None = None,
          progress: Callable[[str], None] | None = print) -> list[LearnerGrade]:
    """Grade learner notebooks; write ``grades.csv``, ``feedback/<learner>.md`` and ``report.json``
    to ``out_dir``; return one `LearnerGrade` per submission.

    ``timeout``: seconds per notebook cell and per exercise (the first cell gets at least 180 s
    for imports). ``lesson`` forces the lesson for every submission. ``watch``: files or folders
    whose changes are reported (default: the package, solutions/ and lessons/). Raises
    ValueError / FileNotFoundError for bad arguments, never for a bad submission."""
    root = Path(__file__).resolve().parents[2]
    solutions_dir = Path(solutions_dir) if solutions_dir else root / "solutions"
    if not solutions_dir.is_dir():
        raise FileNotFoundError(f"No solutions folder at {solutions_dir}: pass --solutions.")
    paths = find_submissions(submissions)
    if not paths:
        raise ValueError("No submissions: pass notebook files or folders that contain .ipynb files.")
    out_dir = Path(out_dir)
    check_outputs(out_dir)
    plans = load_plans(solutions_dir)
    lessons = sorted(plans)
    forced = resolve_lesson(lesson, lessons) if lesson else None
    subs = []
    for path in paths:
        data, problem = read_submission(path)
        sub = Submission(path, data, problem=problem)
        sub.lesson = forced or lesson_from_name(path, lessons) or (_lesson_from_content(data, lessons) if data else None)
        if sub.lesson is None and problem is None:
            sub.problem = "could not tell the lesson from the file name or its check cells: pass --lesson"
        subs.append(sub)
    collisions = name_learners(subs, lessons)
    watch = [Path(w) for w in watch] if watch is not None else [root / "mmlm_course", solutions_dir,
                                                                 solutions_dir.parent / "lessons"]
    hide = sorted({out_dir.resolve(), *(p.absolute().parent for p in paths)}, key=str)
    before = _hash_files(watch)
    if progress:
        isolation = sandbox.isolation()
        progress(f"Grading {len(subs)} submission(s); sandbox: {isolation}" + (
            "" if isolation != "none" else " (WARNING: Bubblewrap is not usable here, so each notebook runs as your "
                                           "user and can read and write your files: see the README's grading section)"))

    def one(sub: Submission) -> LearnerGrade:
        plan = plans.get(sub.lesson)
        if sub.problem or plan is None:
            result = LearnerGrade(sub.learner, str(sub.path), sub.lesson, {}, [sub.problem or "unknown lesson"])
            for exercise_id, _, _ in plan.exercises if plan else []:
                result.results[exercise_id] = ExerciseResult("error", f"{exercise_id}: {sub.problem}")
        else:
            try:
                result = grade_submission(sub, plan, timeout, hide)
            except Exception as error:             # a bug in the grader: that learner's row only
                why = f"{type(error).__name__}: {str(error)[:300]}"
                result = LearnerGrade(sub.learner, str(sub.path), sub.lesson,
                                      {i: ExerciseResult("error", f"{i}: the grader failed on this submission ({why}); "
                                                                  "grade it again, and report it if it fails again")
                                       for i, _, _ in plan.exercises},
                                      [f"the grader failed: {why}"])
        if progress:
            with _progress_lock:
                progress(f"{result.learner} ({result.lesson}): {result.total}/{len(result.results)} passed "
                         f"({result.seconds:.0f} s)")
        return result

    with concurrent.futures.ThreadPoolExecutor(max(1, jobs)) as pool:
        grades = list(pool.map(one, subs))
    after = _hash_files(watch)
    changed = sorted(p for p in set(before) | set(after) if before.get(p) != after.get(p))
    notes = collisions + ([f"course files changed during grading: {', '.join(changed[:5])}"] if changed else [])
    write_outputs(grades, plans, out_dir, notes)
    return grades
