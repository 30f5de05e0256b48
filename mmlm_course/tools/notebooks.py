"""Notebook machinery: build student lessons from solutions, execute notebooks, report checks.

``solutions/`` is the single source. In a solution cell the answer sits between
``### BEGIN SOLUTION`` and ``### END SOLUTION``; `make_lesson` replaces each such block with
``# YOUR CODE HERE`` and ``raise NotImplementedError()`` (indented like the block) and
clears every output.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import nbformat

from mmlm_course.exercises import CHECK_LOG_ENV, STRICT_ENV

BEGIN, END = "### BEGIN SOLUTION", "### END SOLUTION"
CHECK_CALL = re.compile(r"""^\s*check\(\s*["']([\w.]+)["']""", re.MULTILINE)
NBFORMAT_VERSION = 4


class MarkerError(ValueError):
    """Unbalanced BEGIN / END SOLUTION markers."""


def strip_solutions(source: str, where: str = "cell") -> str:
    """Replace every marked solution block in ``source`` by a NotImplementedError stub.

    ``where`` names the notebook and cell in error messages. Raises `MarkerError` for an
    END without BEGIN, a BEGIN without END, or a nested BEGIN.
    """
    out, inside, indent = [], False, ""
    for number, line in enumerate(source.split("\n"), start=1):
        stripped = line.strip()
        if stripped.startswith(BEGIN):
            if inside:
                raise MarkerError(f"{where}, line {number}: '{BEGIN}' inside another solution block "
                                  f"(close the first with '{END}').")
            inside, indent = True, line[: len(line) - len(line.lstrip())]
            out += [f"{indent}# YOUR CODE HERE", f"{indent}raise NotImplementedError()"]
        elif stripped.startswith(END):
            if not inside:
                raise MarkerError(f"{where}, line {number}: '{END}' without a '{BEGIN}' before it.")
            inside = False
        elif not inside:
            out.append(line)
    if inside:
        raise MarkerError(f"{where}: '{BEGIN}' is never closed by '{END}'.")
    return "\n".join(out)


def make_lesson(solution: nbformat.NotebookNode, name: str = "notebook") -> nbformat.NotebookNode:
    """The student version of a solution notebook: solutions stubbed, outputs cleared."""
    lesson = nbformat.v4.new_notebook(metadata={k: v for k, v in solution.metadata.items()
                                                if k in ("kernelspec", "language_info", "colab")})
    for index, cell in enumerate(solution.cells):
        source = cell.source
        if cell.cell_type == "code":
            source = strip_solutions(source, f"{name}, cell {index}")
            new = nbformat.v4.new_code_cell(source)
        elif cell.cell_type == "markdown":
            new = nbformat.v4.new_markdown_cell(source)
        else:
            new = nbformat.v4.new_raw_cell(source)
        new.id = cell.get("id", f"cell-{index}")
        tags = cell.get("metadata", {}).get("tags")
        if tags:
            new.metadata["tags"] = list(tags)
        slideshow = cell.get("metadata", {}).get("slideshow")
        if slideshow:
            new.metadata["slideshow"] = dict(slideshow)
        lesson.cells.append(new)
    return lesson


def notebook_text(nb: nbformat.NotebookNode) -> str:
    """Canonical JSON text of a notebook (what `build-lessons` writes)."""
    return nbformat.writes(nb, version=NBFORMAT_VERSION) + "\n"


def build_lessons(solutions_dir: Path, lessons_dir: Path, check_only: bool = False) -> list[str]:
    """Write ``lessons/`` from ``solutions/``. Returns the names of lessons that were
    stale (with ``check_only`` nothing is written). A lesson with no solution counts as
    stale too (it would be orphaned)."""
    solutions_dir, lessons_dir = Path(solutions_dir), Path(lessons_dir)
    if not solutions_dir.is_dir():
        raise FileNotFoundError(f"No solutions folder at {solutions_dir}: run from the course root "
                                "or pass --solutions.")
    stale = []
    expected_names = set()
    for solution_path in sorted(solutions_dir.glob("*.ipynb")):
        expected_names.add(solution_path.name)
        solution = nbformat.read(solution_path, as_version=NBFORMAT_VERSION)
        text = notebook_text(make_lesson(solution, solution_path.name))
        target = lessons_dir / solution_path.name
        if not target.exists() or target.read_text(encoding="utf-8") != text:
            stale.append(solution_path.name)
            if not check_only:
                lessons_dir.mkdir(parents=True, exist_ok=True)
                target.write_text(text, encoding="utf-8")
    if lessons_dir.is_dir():
        stale += sorted(p.name for p in lessons_dir.glob("*.ipynb") if p.name not in expected_names)
    return stale


def exercise_ids(nb: nbformat.NotebookNode) -> list[str]:
    """Exercise ids in the order their check cells appear."""
    return [m for cell in nb.cells if cell.cell_type == "code" for m in CHECK_CALL.findall(cell.source)]


# --------------------------------------------------------------------------- execution


@dataclass
class CellError:
    index: int
    ename: str
    evalue: str
    source: str


@dataclass
class Execution:
    notebook: nbformat.NotebookNode
    seconds: float
    errors: list[CellError]
    check_log: list[dict]


def execute_notebook(path: Path, timeout: int = 600, cwd: Path | None = None, strict: bool = False) -> Execution:
    """Run every cell of a notebook in a fresh kernel, continuing after errors.

    Checks behave as in JupyterLab (they show their result and never raise) unless
    ``strict``, where a failed or unattempted check raises as under nbval. Returns the
    executed notebook, its wall time, every cell error and the exercise check results the
    kernel logged (see `mmlm_course.exercises`).
    """
    from nbclient import NotebookClient

    path = Path(path)
    nb = read_notebook(path)
    with tempfile.TemporaryDirectory() as scratch:
        log_path = Path(scratch) / "checks.jsonl"
        env = {k: v for k, v in os.environ.items() if k not in (CHECK_LOG_ENV, STRICT_ENV)}
        env[CHECK_LOG_ENV] = str(log_path)
        if strict:
            env[STRICT_ENV] = "1"
        client = NotebookClient(nb, timeout=timeout, kernel_name="python3", allow_errors=True,
                                resources={"metadata": {"path": str(cwd or path.parent)}})
        start = time.perf_counter()
        client.execute(env=env)
        seconds = time.perf_counter() - start
        log = [json.loads(line) for line in log_path.read_text().splitlines()] if log_path.exists() else []
    errors = [CellError(i, out.ename, out.evalue, cell.source)
              for i, cell in enumerate(nb.cells) if cell.cell_type == "code"
              for out in cell.get("outputs", []) if out.output_type == "error"]
    return Execution(nb, seconds, errors, log)


def read_notebook(path: Path) -> nbformat.NotebookNode:
    """Read a notebook, with a clear error for a file that is not one."""
    try:
        return nbformat.read(Path(path), as_version=NBFORMAT_VERSION)
    except FileNotFoundError:
        raise FileNotFoundError(f"No notebook at {path}.") from None
    except Exception as error:  # nbformat raises several JSON / validation errors
        raise ValueError(f"{path} is not a readable Jupyter notebook ({type(error).__name__}: {error}).") from None


STATUS_ORDER = ("pass", "fail", "not attempted", "not run")


def exercise_report(execution: Execution) -> list[tuple[str, str, str]]:
    """One ``(exercise id, status, message)`` per check cell of the notebook.

    Status is ``pass``, ``fail``, ``not attempted`` or ``not run`` (the check cell never
    reached the check: an earlier error in that cell or a kernel crash).
    """
    last = {}
    for entry in execution.check_log:
        last[entry["exercise"]] = entry
    rows = []
    for exercise_id in exercise_ids(execution.notebook):
        entry = last.get(exercise_id)
        if entry is None:
            rows.append((exercise_id, "not run", "the check cell did not run the check (see the error above it)"))
        else:
            rows.append((exercise_id, entry["status"], entry["message"]))
    return rows


def save_executed(path: Path, timeout: int = 600) -> Execution:
    """Execute a solution notebook and save it in place with its outputs."""
    execution = execute_notebook(path, timeout)
    nb = execution.notebook
    for cell in nb.cells:
        cell.get("metadata", {}).pop("execution", None)
    nb.metadata.pop("widgets", None)
    Path(path).write_text(notebook_text(nb), encoding="utf-8")
    return execution
