"""Every lesson in solutions/ has instructor notes that cover each of its exercises.

A lesson added without notes fails here on purpose: write docs/instructor/NN_name.md (the
notes for 00 and 01 show the sections; `mmlm_course.tools.mistakes.common_mistakes_markdown("NN")`
lists the mistakes each check catches).
"""

from pathlib import Path

import nbformat
import pytest

from mmlm_course.tools import notebooks

ROOT = Path(__file__).resolve().parent.parent
SOLUTIONS = sorted((ROOT / "solutions").glob("*.ipynb"))
SECTIONS = ("## Learning objectives", "## Prerequisites", "## Timing", "## Exercises and the mistakes",
            "## Discussion questions", "## Suggested homework")


@pytest.mark.parametrize("solution", SOLUTIONS, ids=[p.stem for p in SOLUTIONS])
def test_lesson_has_instructor_notes(solution):
    notes = ROOT / "docs" / "instructor" / f"{solution.stem}.md"
    assert notes.exists(), f"write {notes.relative_to(ROOT)} (see docs/instructor/01_images_and_text.md)"
    text = notes.read_text(encoding="utf-8")
    missing = [s for s in SECTIONS if s not in text]
    assert not missing, f"{notes.name} lacks the sections {missing}"
    ids = notebooks.exercise_ids(nbformat.read(solution, as_version=4))
    unlisted = [i for i in ids if f"`{i}`" not in text]
    assert not unlisted, f"{notes.name} does not list the exercises {unlisted}"

