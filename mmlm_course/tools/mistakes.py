"""The typical mistakes each exercise registers, with the message its check gives: for instructor notes.

``python -c "from mmlm_course.tools.mistakes import common_mistakes_markdown as m; print(m('01'))"``
prints the section an instructor note pastes (docs/instructor/NN_*.md).
"""

from __future__ import annotations

def common_mistakes(lesson: str) -> list[dict]:
    """The typical mistakes each exercise of ``lesson`` (``01`` or ``01_images_and_text``)
    registers, with the message the check gives for each. For instructor notes.

    Returns ``[{"exercise": id, "mistakes": [{"mistake": text, "message": str, "hint": str}]}]``."""
    from mmlm_course import exercises

    number = lesson.split("_", 1)[0]
    number = f"{int(number):02d}" if number.isdigit() else number
    out = []
    for exercise_id, exercise in exercises.registry().items():
        if exercise.lesson != number:
            continue
        rows = []
        for mistake, function in exercise.mistakes.items():
            try:
                exercises.run_check(exercise_id, function)
                message = "(not caught by the check)"
            except exercises.CheckFailed as error:
                message = str(error)
            hint = message.split("Hint: ", 1)[1] if "Hint: " in message else ""
            rows.append({"mistake": mistake, "message": message, "hint": hint})
        out.append({"exercise": exercise_id, "mistakes": rows})
    return out


def common_mistakes_markdown(lesson: str) -> str:
    """`common_mistakes` as a Markdown section body, ready to paste into an instructor note."""
    lines = []
    for entry in common_mistakes(lesson):
        lines += [f"**`{entry['exercise']}`**", ""]
        for row in entry["mistakes"]:
            shown = row["message"].split(": ", 1)[1] if ": " in row["message"] else row["message"]
            lines.append(f"- *{row['mistake']}*: the check says \u201c{shown}\u201d")
        lines.append("")
    return "\n".join(lines)
