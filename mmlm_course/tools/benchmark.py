"""`mmlm-course benchmark`: time every solution notebook and measure model quality.

Notebook rows come from executing ``solutions/*.ipynb`` in fresh kernels. Quality rows
come from `mmlm_course.quality`: each lesson that trains a model adds a task that trains /
evaluates it and returns its figures, so the one command reports everything.
"""

from __future__ import annotations

from pathlib import Path

from mmlm_course.tools import notebooks

NOTEBOOK_BUDGET_S = 90.0
BUDGET_OVERRIDES_S = {"09_capstone.ipynb": 180.0}


def time_notebooks(paths: list[Path]) -> list[dict]:
    """Execute each notebook once; one row per notebook with its time and errors."""
    rows = []
    for path in paths:
        execution = notebooks.execute_notebook(path)
        budget = BUDGET_OVERRIDES_S.get(path.name, NOTEBOOK_BUDGET_S)
        rows.append({"notebook": path.name, "seconds": round(execution.seconds, 1), "budget_s": budget,
                     "within": execution.seconds <= budget, "errors": len(execution.errors)})
        print(f"  {path.name}: {execution.seconds:.1f} s", flush=True)
    return rows


def format_table(rows: list[dict]) -> str:
    """A Markdown table of dict rows (columns from the first row)."""
    if not rows:
        return "(nothing measured)"
    columns = list(rows[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row.get(c, "")) for c in columns) + " |")
    return "\n".join(lines)


def _cell(value) -> str:
    if isinstance(value, bool):
        return "yes" if value else "NO"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1 else f"{value:.1f}"
    return str(value)
