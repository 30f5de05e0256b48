"""Model-quality tasks for `mmlm-course benchmark`, one module per lesson.

Each ``lessonNN.py`` module defines ``TASKS``: a dict mapping a task name to a function
that trains / evaluates a model and returns a flat dict of figures (numbers, booleans,
strings), for example ``{"test_accuracy": 0.98, "target": 0.97, "reached": True,
"seconds": 212.0}``.
"""

import importlib
import pkgutil


def all_tasks() -> dict:
    """Every lesson's quality tasks, in lesson order."""
    tasks = {}
    for name in sorted(m.name for m in pkgutil.iter_modules(__path__) if m.name.startswith("lesson")):
        tasks.update(importlib.import_module(f"{__name__}.{name}").TASKS)
    return tasks
