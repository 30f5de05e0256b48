"""The grader's outputs: ``grades.csv``, ``feedback/<learner>.md`` and ``report.json``.

Only the grader writes them, each one atomically (a temporary file, then a rename), refusing to
replace anything that is not a regular file (a symlink, a FIFO). Every learner-controlled text
(names from file names, messages and notes that quote the learner's code) is shown on one line,
without control characters or bidirectional overrides; spreadsheet formulas in names are escaped
in the CSV, and a feedback file never gets a name Windows reserves (``CON.md``).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import re
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from mmlm_course.tools import sandbox

if TYPE_CHECKING:
    from mmlm_course.tools.grading import LearnerGrade

_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")
_BIDI = re.compile("[\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")
_RESERVED = re.compile(r"(con|prn|aux|nul|com\d|lpt\d)(\..*)?", re.I)     # Windows' device names


def check_outputs(out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    for path in (out_dir / "grades.csv", out_dir / "report.json", out_dir / "feedback"):
        if path.is_symlink() or (path.exists() and not (path.is_dir() if path.name == "feedback" else path.is_file())):
            raise ValueError(f"{path} exists and is not a regular {'folder' if path.name == 'feedback' else 'file'} "
                             "(a link, a FIFO...): the grader will not write through it. Remove it or choose "
                             "another --out folder.")


def _write_atomically(path: Path, text: str) -> None:
    """Write ``text`` to a new file beside ``path`` and rename it over ``path``; refuse to
    replace anything that is not a regular file."""
    if path.is_symlink() or (path.exists() and not path.is_file()):
        raise ValueError(f"{path} is not a regular file: the grader will not replace it")
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o644)
    with os.fdopen(fd, "w", encoding="utf-8", newline="") as handle:
        handle.write(text)
    os.replace(temporary, path)


def shown(text: str) -> str:
    """``text`` on one line as anyone sees it: control characters (newlines too) become spaces,
    bidirectional overrides (which make a name or a message read as another) are dropped."""
    return _BIDI.sub("", _CONTROL.sub(" ", str(text)))


def _cell_text(value) -> str:
    """A CSV field a spreadsheet shows as text, never runs as a formula."""
    text = str(value)
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def feedback_name(g: LearnerGrade, one_lesson: bool, taken: set) -> str:
    """A file name for ``g``'s feedback: the learner id with path and control characters
    replaced (Unicode kept), the lesson when several are graded, unique ignoring case."""
    base = re.sub(r'[\x00-\x1f\x7f/\\:*?"<>|]+', "_", g.learner).strip(" .") or "learner"
    base = base[:120] + ("" if one_lesson or not g.lesson else "-" + g.lesson)
    base = "_" + base if _RESERVED.fullmatch(base) else base
    name, n = f"{base}.md", 1
    while name.casefold() in taken:
        n += 1
        name = f"{base}-{n}.md"
    taken.add(name.casefold())
    return name


def write_outputs(grades: list[LearnerGrade], plans: dict, out_dir: Path, notes: list | None = None) -> None:
    """``grades.csv``, ``feedback/<learner>.md`` and ``report.json`` in ``out_dir``."""
    for g in grades:                     # learner-controlled text: one line each, as shown
        g.learner, g.notes = shown(g.learner), [shown(note) for note in g.notes]
        for r in g.results.values():
            r.message, r.notes = shown(r.message), [shown(note) for note in r.notes]
    columns = []
    for lesson in sorted({g.lesson for g in grades if g.lesson in plans}):
        columns += [i for i, _, _ in plans[lesson].exercises if i not in columns]
    table = io.StringIO()
    writer = csv.writer(table)
    writer.writerow(["learner", "lesson", *columns, "total", "review"])
    for g in grades:
        writer.writerow([_cell_text(g.learner), _cell_text(g.lesson or ""),
                         *(g.results[c].status if c in g.results else "" for c in columns), g.total,
                         _cell_text("; ".join(shown(reason) for reason in g.review))])
    check_outputs(out_dir)
    feedback = out_dir / "feedback"
    feedback.mkdir(exist_ok=True)
    one_lesson, taken = len({g.lesson for g in grades}) == 1, set()
    files = {}
    for g in grades:
        files[id(g)] = feedback_name(g, one_lesson, taken)
        _write_atomically(feedback / files[id(g)], feedback_text(g))
    report = {"isolation": sandbox.isolation(), "notes": [shown(note) for note in notes or []],
              "learners": [{"learner": g.learner, "submission": g.submission, "lesson": g.lesson, "total": g.total,
                            "review": g.review, "feedback": f"feedback/{files[id(g)]}",
                            "seconds": round(g.seconds, 1), "notes": g.notes,
                            "exercises": {k: dataclasses.asdict(v) for k, v in g.results.items()}} for g in grades]}
    _write_atomically(out_dir / "report.json", json.dumps(report, indent=2, ensure_ascii=False))
    _write_atomically(out_dir / "grades.csv", table.getvalue())


SYMBOLS = {"pass": "\N{WHITE HEAVY CHECK MARK}", "fail": "\N{CROSS MARK}",
           "not attempted": "\N{HOURGLASS WITH FLOWING SAND}", "error": "\N{WARNING SIGN}"}


def feedback_text(g: LearnerGrade) -> str:
    """The Markdown feedback for one learner."""
    lines = [f"# Feedback for {g.learner}" + (f": {g.lesson}" if g.lesson else ""), "",
             f"Submission: `{shown(Path(g.submission).name)}`. "
             f"Exercises passed: **{g.total} of {len(g.results)}**.", ""]
    if g.results:
        lines += ["| exercise | result |", "|---|---|"]
        lines += [f"| `{k}` | {SYMBOLS[r.status]} {r.status} |" for k, r in g.results.items()]
        lines.append("")
    for exercise_id, result in g.results.items():
        if result.status == "pass" and not result.notes:
            continue
        lines += [f"## {exercise_id}: {result.status}", ""]
        if result.status != "pass" and result.message:
            lines += [result.message, ""]
        lines += [f"- {note}" for note in result.notes] + ([""] if result.notes else [])
    if g.notes:
        lines += ["## Running your notebook", ""] + [f"- {note}" for note in g.notes] + [""]
    lines += ["How this was graded: your notebook's code cells ran from the top in a fresh, isolated process; "
              "after each check cell, the course's check called your function there, and the grader compared "
              "what it returned with the answer. Put any import, constant or helper your function needs in a "
              "cell above its check."]
    return "\n".join(lines) + "\n"
