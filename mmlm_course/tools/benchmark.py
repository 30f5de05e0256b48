"""`mmlm-course benchmark`: time every solution notebook and measure model quality.

Notebook rows come from executing ``solutions/*.ipynb`` in fresh kernels. Quality rows
come from `mmlm_course.quality`: each lesson that trains a model adds a task that trains /
evaluates it and returns its figures, so the one command reports everything.

Seconds depend on the machine (two machines of one kind differ by 2x, a laptop with a
browser open more), so the run also times a fixed **calibration notebook** (a fresh
kernel, the TensorFlow import, a small Keras model trained for a fixed number of steps,
some NumPy) before and after the notebooks, and reports every notebook as a *ratio* to it.
A budget is a ratio too: the budget in seconds divided by the calibration time on the
course's reference machine (the 2-core CPU, `REFERENCE_CALIBRATION_S`). A notebook is
within budget when its ratio is, so the verdict carries from one machine to the next.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import nbformat

from mmlm_course.tools import notebooks

NOTEBOOK_BUDGET_S = 90.0
BUDGET_OVERRIDES_S = {"10_capstone.ipynb": 180.0}
# The calibration notebook's time on the reference machine (the 2-core CPU, idle): the mean of
# three runs of `calibrate()` on 2026-12-06 (10.07, 9.01, 10.06 s). Budgets in ratio units are
# budget_s / this: 90 s is 9.3 calibrations, the capstone's 180 s 18.6.
REFERENCE_CALIBRATION_S = 9.7

CALIBRATION_CELLS = [
    "import mmlm_course\nmmlm_course.setup_notebook(seed=0)\n"
    "import keras\nimport numpy as np\nfrom mmlm_course import attention",
    # a small Transformer classifier trained for a fixed number of steps: what the lessons do most
    "rng = np.random.default_rng(0)\n"
    "x = rng.normal(size=(1024, 24, 64)).astype('float32')\n"
    "y = rng.integers(0, 8, size=1024)\n"
    "model = keras.Sequential([keras.Input((24, 64)), attention.TransformerBlock(64, 4, 128),\n"
    "                          keras.layers.GlobalAveragePooling1D(), keras.layers.Dense(8)])\n"
    "model.compile(keras.optimizers.Adam(1e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True))\n"
    "model.fit(x, y, batch_size=32, epochs=6, verbose=0)",
    # NumPy work: the data preparation and metrics of every lesson
    "a = rng.normal(size=(300, 300))\nfor _ in range(200):\n    a = np.tanh(a @ a.T / 300)",
]


def calibrate() -> float:
    """Seconds to execute the calibration notebook in a fresh kernel, as a lesson is run."""
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(source) for source in CALIBRATION_CELLS]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "calibration.ipynb"
        nbformat.write(nb, path)
        execution = notebooks.execute_notebook(path)
    if execution.errors:
        error = execution.errors[0]
        raise RuntimeError(f"the calibration notebook failed in cell {error.index}: {error.ename}: {error.evalue}")
    return execution.seconds


def time_notebooks(paths: list[Path]) -> tuple[list[dict], dict]:
    """Execute each notebook once, between two runs of the calibration notebook.

    Returns one row per notebook (seconds, ratio to the calibration, budget in seconds and
    as a ratio, within budget, errors) and the calibration figures.
    """
    before = calibrate()
    print(f"  calibration: {before:.1f} s", flush=True)
    timed = []
    for path in paths:
        execution = notebooks.execute_notebook(path)
        timed.append((path, execution))
        print(f"  {path.name}: {execution.seconds:.1f} s", flush=True)
    after = calibrate()
    print(f"  calibration: {after:.1f} s", flush=True)
    unit = (before + after) / 2
    rows = []
    for path, execution in timed:
        budget = BUDGET_OVERRIDES_S.get(path.name, NOTEBOOK_BUDGET_S)
        ratio, budget_ratio = execution.seconds / unit, budget / REFERENCE_CALIBRATION_S
        rows.append({"notebook": path.name, "seconds": round(execution.seconds, 1), "ratio": round(ratio, 2),
                     "budget_s": budget, "budget_ratio": round(budget_ratio, 2), "within": ratio <= budget_ratio,
                     "errors": len(execution.errors)})
    calibration = {"before_s": round(before, 1), "after_s": round(after, 1), "unit_s": round(unit, 2),
                   "reference_s": REFERENCE_CALIBRATION_S}
    return rows, calibration


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
