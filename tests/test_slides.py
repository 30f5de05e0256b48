"""A solution notebook converts to a reveal.js deck with several slides (nbconvert, no server)."""

import re
from pathlib import Path

import nbformat

from mmlm_course.tools import slides

ROOT = Path(__file__).resolve().parent.parent
LESSON_01 = ROOT / "solutions" / "01_images_and_text.ipynb"


def _sections(html: str) -> int:
    return len(re.findall(r"<section\b", html))


def test_lesson_01_converts_to_several_slides():
    nb = nbformat.read(LESSON_01, as_version=4)
    html = slides.to_slides(nb)
    headings = sum(slides.slide_type_for(c) in ("slide", "subslide") for c in nb.cells)
    assert headings >= 8
    assert _sections(html) >= headings, "one <section> per slide and subslide"
    assert "reveal" in html.lower() and "Exercise 1" in html and "Recap" in html


def test_heading_rule_and_teacher_metadata():
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_markdown_cell("# 01 · Title"),
        nbformat.v4.new_code_cell("x = 1"),
        nbformat.v4.new_markdown_cell("## 1. A section"),
        nbformat.v4.new_markdown_cell("### Exercise 1: f"),
        nbformat.v4.new_markdown_cell("Plain prose."),
        nbformat.v4.new_markdown_cell("## Not a slide, says the teacher", metadata={"slideshow": {"slide_type": "skip"}}),
    ])
    tagged = slides.auto_slide_types(nb)
    assert [c.metadata["slideshow"]["slide_type"] for c in tagged.cells] == ["slide", "-", "slide", "subslide", "-", "skip"]
    assert "slideshow" not in nb.cells[0].metadata, "the notebook passed in is not modified"
    html = slides.to_slides(nb)
    assert "Not a slide" not in html and "A section" in html


def test_untagged_notebook_is_one_slide_without_the_rule():
    html = slides.to_slides(nbformat.read(LESSON_01, as_version=4), auto=False)
    assert _sections(html) >= 1
