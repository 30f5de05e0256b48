"""The check messages that the instructor notes quote are the messages the checks give now.

Convention (docs/instructor/NN_*.md, section "## Exercises and the mistakes the checks catch"):
under each exercise heading, a line that starts with **`NN.name`**, every check message is
quoted word for word between curly double quotes (U+201C, U+201D); an ellipsis (U+2026) marks
a cut, so a quote may leave out the middle, the start or the end of a message. Curly double
quotes are used for nothing else in that section (other quoting uses straight quotes or
backticks). A line break inside a quote counts as one space.

Each quote must be part of one message that the exercise's check gives for a mistake it
registers (`mmlm_course.tools.mistakes.common_mistakes`), its pieces in order, and every
exercise of the lesson must have at least one quote. When a check's wording changes, this
test names the stale quote: rewrite it from `common_mistakes_markdown("NN")`.
"""

import functools
import re
from pathlib import Path

import pytest

from mmlm_course.tools.mistakes import common_mistakes

ROOT = Path(__file__).resolve().parent.parent
NOTES = sorted((ROOT / "docs" / "instructor").glob("[0-9][0-9]_*.md"))
SECTION = "## Exercises and the mistakes"
OPEN, CLOSE, CUT = "\u201c", "\u201d", "\u2026"
HEADING = re.compile(r"^\*\*`(\d\d\.\w+)`\*\*", re.M)


@functools.lru_cache(maxsize=None)
def _messages(lesson: str) -> dict[str, list[str]]:
    """{exercise id: the messages of its registered mistakes, whitespace collapsed}."""
    return {entry["exercise"]: [" ".join(row["message"].split()) for row in entry["mistakes"]]
            for entry in common_mistakes(lesson)}


def _section(text: str) -> str:
    start = text.index(SECTION)
    end = text.find("\n## ", start + len(SECTION))
    return text[start:] if end < 0 else text[start:end]


def _quotes(block: str) -> list[str]:
    """The quotes of one exercise's block, whitespace collapsed."""
    assert block.count(OPEN) == block.count(CLOSE), f"unbalanced curly quotes in:\n{block}"
    return [" ".join(q.split()) for q in re.findall(f"{OPEN}(.*?){CLOSE}", block, re.S)]


def _pieces(quote: str) -> list[str]:
    return [piece.strip() for piece in quote.split(CUT) if piece.strip()]


def _part_of(pieces: list[str], message: str) -> bool:
    """Whether the pieces occur in the message, in this order."""
    at = 0
    for piece in pieces:
        found = message.find(piece, at)
        if found < 0:
            return False
        at = found + len(piece)
    return True


def _exercise_blocks(section: str) -> tuple[str, dict[str, str]]:
    """The text before the first exercise heading, and {exercise id: its block}."""
    headings = list(HEADING.finditer(section))
    preamble = section[:headings[0].start()] if headings else section
    blocks = {}
    for this, following in zip(headings, headings[1:] + [None]):
        end = following.start() if following else len(section)
        assert this.group(1) not in blocks, f"{this.group(1)} has two headings"
        blocks[this.group(1)] = section[this.start():end]
    return preamble, blocks


@pytest.mark.parametrize("notes", NOTES, ids=[p.stem for p in NOTES])
def test_quoted_messages_are_current(notes):
    lesson = notes.name[:2]
    messages = _messages(lesson)
    assert messages, f"no exercises registered for lesson {lesson}"
    preamble, blocks = _exercise_blocks(_section(notes.read_text(encoding="utf-8")))
    assert not _quotes(preamble), f"{notes.name}: a quote before the first exercise heading"
    unknown = sorted(set(blocks) - set(messages))
    assert not unknown, f"{notes.name}: headings for exercises lesson {lesson} does not register: {unknown}"

    stale, unquoted = [], []
    for exercise, exercise_messages in messages.items():
        quotes = _quotes(blocks.get(exercise, ""))
        if not quotes:
            unquoted.append(exercise)
        for quote in quotes:
            pieces = _pieces(quote)
            if not pieces or not any(_part_of(pieces, m) for m in exercise_messages):
                stale.append(f"{exercise}: {OPEN}{quote}{CLOSE}")
    assert not unquoted, f"{notes.name} quotes no check message for {unquoted}"
    assert not stale, (f"{notes.name} quotes messages the checks no longer give (see "
                       f"common_mistakes_markdown({lesson!r})):\n" + "\n".join(stale))


def test_the_quote_check_can_fail():
    """A changed word, or pieces out of order, make a quote stale."""
    message = "03.masked_mean: row 1 contains NaN. Hint: divide by max(count, 1)"
    assert _part_of(_pieces("row 1 contains NaN. \u2026 max(count, 1)"), message)
    assert not _part_of(_pieces("row 2 contains NaN"), message)
    assert not _part_of(_pieces("max(count, 1) \u2026 row 1 contains NaN"), message)
