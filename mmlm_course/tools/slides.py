"""Slides from a lesson notebook: reveal.js through nbconvert's SlidesExporter.

``jupyter nbconvert --to slides`` turns a notebook into a deck, one slide per cell marked
``"slideshow": {"slide_type": "slide"}`` in its metadata (``subslide`` goes below it,
``fragment`` appears on the next click, ``skip`` is left out, ``-`` continues the current
slide). An untagged notebook becomes a single slide. `auto_slide_types` fills in a type for
every cell that has none, from the headings:

- a markdown cell starting with ``#`` or ``##`` (the title, a numbered section, Recap) -> slide;
- a markdown cell starting with ``###`` (an exercise, a sub-topic) -> subslide;
- every other cell -> ``-`` (stays on the slide of the heading above it).

Cells that already carry ``slideshow`` metadata keep it, so a teacher can override the rule
cell by cell (``make_lesson`` copies the metadata to the student notebooks).

    python -m mmlm_course.tools.slides solutions/01_images_and_text.ipynb [--out deck.slides.html]
"""

from __future__ import annotations

import argparse
import copy
import re
import sys
from pathlib import Path

import nbformat

_HEADING = re.compile(r"^\s*(#{1,6})\s")


def slide_type_for(cell) -> str:
    """The slide type the heading rule gives ``cell`` (see the module docstring)."""
    if cell.get("cell_type") == "markdown":
        match = _HEADING.match(cell.get("source", ""))
        if match:
            return "slide" if len(match.group(1)) <= 2 else "subslide"
    return "-"


def auto_slide_types(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """A copy of ``nb`` where every cell without ``slideshow`` metadata gets the heading rule's type."""
    nb = copy.deepcopy(nb)
    for cell in nb.cells:
        if not cell.get("metadata", {}).get("slideshow", {}).get("slide_type"):
            cell.setdefault("metadata", {})["slideshow"] = {"slide_type": slide_type_for(cell)}
    return nb


def to_slides(notebook, auto: bool = True) -> str:
    """reveal.js HTML for a notebook (a path or a NotebookNode); ``auto`` applies `auto_slide_types`."""
    from nbconvert import SlidesExporter

    nb = notebook if isinstance(notebook, nbformat.NotebookNode) else nbformat.read(Path(notebook), as_version=4)
    if auto:
        nb = auto_slide_types(nb)
    body, _ = SlidesExporter(reveal_scroll=True).from_notebook_node(nb)
    return body


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mmlm_course.tools.slides",
                                     description="Write a reveal.js deck from a lesson notebook.")
    parser.add_argument("notebook", type=Path, help="e.g. solutions/01_images_and_text.ipynb")
    parser.add_argument("--out", type=Path, help="HTML file (default: NOTEBOOK name + .slides.html, here)")
    parser.add_argument("--no-auto", action="store_true", help="use only the notebook's own slideshow metadata")
    args = parser.parse_args(argv)
    out = args.out or Path(args.notebook.stem + ".slides.html")
    out.write_text(to_slides(args.notebook, auto=not args.no_auto), encoding="utf-8")
    print(f"Wrote {out}: open it in a browser (reveal.js is loaded from a CDN).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
