"""The exercise checks: a registry keyed by exercise id, and the `check` learners call.

A lesson's exercise cell defines a function; the next cell calls
``check("01.to_float_image", to_float_image)``. The check calls the learner's function on
fixed inputs and edge cases and compares it with the reference, then shows one line and
lets the notebook go on (as otter's ``grader.check`` does), so Run All always reaches the
end:

- ✅ passed;
- ❌ what differed and a hint, never the answer (`CheckFailed`). A learner function that
  crashes, returns None or returns the wrong type fails with one line that says so;
- ⏳ not attempted (`ExerciseNotAttempted`) while the body still reads
  ``raise NotImplementedError()``.

Under pytest (``pytest --nbval-lax lessons/NN_*.ipynb``) the course's ``conftest.py``
sets ``MMLM_COURSE_STRICT_CHECKS=1``: a check then also *raises* its ❌ / ⏳ error, so the
nbval run fails on a wrong or missing answer. `run_check` always raises.

Each exercise is registered with its reference and a dict of *typical mistakes*
(wrong implementations a learner is likely to write). The tests feed every mistake to
its check and require it to be rejected.

When the environment variable ``MMLM_COURSE_CHECK_LOG`` names a file, each check result
is appended to it as a JSON line; `mmlm-course check` reads it to print its table.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import json
import os
import re
from typing import Any, Callable

import numpy as np

CHECK_LOG_ENV = "MMLM_COURSE_CHECK_LOG"
STRICT_ENV = "MMLM_COURSE_STRICT_CHECKS"


class CheckFailed(AssertionError):
    """A check that found a difference. Jupyter shows it as one line, not a traceback."""

    def _render_traceback_(self):
        return [f"\N{CROSS MARK} {self}"]


class ExerciseNotAttempted(NotImplementedError):
    """The exercise still raises NotImplementedError: nothing to check yet."""

    def _render_traceback_(self):
        return [f"\N{HOURGLASS WITH FLOWING SAND} {self}"]


@dataclasses.dataclass(frozen=True)
class Exercise:
    """One registered exercise.

    ``run(checker)`` performs the checks through a `Checker`; ``reference`` is the
    correct answer; ``mistakes`` maps a description of a typical wrong answer to a
    function that makes that mistake.
    """

    id: str
    reference: Callable
    mistakes: dict[str, Callable]
    run: Callable[["Checker"], None]

    @property
    def lesson(self) -> str:
        return self.id.split(".", 1)[0]


_REGISTRY: dict[str, Exercise] = {}


def exercise(exercise_id: str, reference: Callable, mistakes: dict[str, Callable]):
    """Decorator that registers a check function ``run(checker)`` under ``exercise_id``."""
    if len(mistakes) < 2:
        raise ValueError(f"{exercise_id}: register at least two typical mistakes, got {len(mistakes)}.")

    def register(run: Callable[["Checker"], None]) -> Callable[["Checker"], None]:
        if exercise_id in _REGISTRY:
            raise ValueError(f"Exercise id {exercise_id!r} is registered twice.")
        _REGISTRY[exercise_id] = Exercise(exercise_id, reference, dict(mistakes), run)
        return run

    return register


def registry() -> dict[str, Exercise]:
    """All registered exercises, by id (importing the lesson check modules first)."""
    import importlib
    import pkgutil

    import mmlm_course.exercises as package

    for module in sorted(m.name for m in pkgutil.iter_modules(package.__path__) if m.name.startswith("lesson")):
        importlib.import_module(f"{package.__name__}.{module}")  # registers that lesson's checks

    return dict(_REGISTRY)


def _describe(value: Any) -> str:
    if isinstance(value, np.ndarray):
        return f"array of shape {value.shape} and dtype {value.dtype}"
    if hasattr(value, "shape") and hasattr(value, "dtype"):
        return f"tensor of shape {tuple(value.shape)} and dtype {value.dtype}"
    if isinstance(value, (list, tuple)):
        return f"{type(value).__name__} of length {len(value)}"
    return f"{type(value).__name__} {value!r}"[:120]


def _one_line(error: BaseException) -> str:
    """The message of ``error`` on one line. Keras wraps an error raised inside a layer's
    ``call`` in a paragraph ("Exception encountered when calling ...", the arguments); keep
    the layer's name and the original message."""
    lines = [line.strip() for line in re.sub(r"\x1b\[[0-9;]*m", "", str(error)).splitlines() if line.strip()]
    if len(lines) > 1 and lines[0].startswith("Exception encountered when calling"):
        lines = [f"{lines[1]} (in {lines[0].removeprefix('Exception encountered when calling').strip(' .')})"]
    return (lines[0] if lines else "")[:300]


def _protect(value):
    """A copy of plain data (arrays, lists, dicts) so the learner cannot change the
    check's own inputs; other objects (a model whose flags an exercise sets) pass as is."""
    if isinstance(value, np.ndarray):
        return value.copy()
    if isinstance(value, (list, tuple, dict)):
        return copy.deepcopy(value)
    return value


class Checker:
    """What a check function uses: call the learner's code safely, then compare.

    Every ``expect_*`` method raises `CheckFailed` with a message of the form
    "<what>: expected <x>, got <y>. Hint: <hint>" and records the passed check's name.
    """

    def __init__(self, exercise_id: str, candidate: Callable):
        self.exercise_id = exercise_id
        self.candidate = candidate
        self.passed: list[str] = []

    def call(self, *args, **kwargs):
        """Call the learner's function; turn a crash or a missing return into one line."""
        args = tuple(_protect(a) for a in args)  # the learner may modify their inputs in place
        kwargs = {k: _protect(v) for k, v in kwargs.items()}
        try:
            with np.errstate(all="ignore"):  # overflow in the learner's code is reported by the check itself
                result = self.candidate(*args, **kwargs)
        except NotImplementedError:
            raise ExerciseNotAttempted(
                f"{self.exercise_id} is not attempted yet: replace `raise NotImplementedError()` "
                "with your code, run that cell, then run this check again.") from None
        except CheckFailed:
            raise
        except Exception as error:  # the learner's own bug: report it in one line
            shown = ", ".join(_describe(a) for a in args)
            raise CheckFailed(f"{self.exercise_id}: your function raised {type(error).__name__}: "
                              f"{_one_line(error)} (called with {shown}).") from None
        if result is None:
            raise CheckFailed(f"{self.exercise_id}: your function returned None. "
                              "Did you forget the `return` statement?")
        return result

    def fail(self, what: str, message: str, hint: str) -> None:
        raise CheckFailed(f"{self.exercise_id}: {what}: {message}. Hint: {hint}")

    def expect_type(self, what: str, value, expected_type, hint: str = "") -> None:
        if not isinstance(value, expected_type):
            names = getattr(expected_type, "__name__", None) or " or ".join(t.__name__ for t in expected_type)
            self.fail(what, f"expected a {names}, got {_describe(value)}", hint or f"return a {names}")
        self.passed.append(f"{what} type")

    def expect_number(self, what: str, value, hint: str) -> float:
        """A Python float from a float, a NumPy scalar, or a 0-d array / tensor; fail otherwise."""
        if isinstance(value, (bool, np.bool_)):
            self.fail(what, f"expected a number, got {value!r}", hint)
        if isinstance(value, (int, float, np.integer, np.floating)):
            return float(value)
        if hasattr(value, "shape"):
            array = np.asarray(value)
            if array.shape != ():
                self.fail(what, f"expected a single number (shape ()), got shape {array.shape}", hint)
            return float(array)
        self.fail(what, f"expected a number, got {type(value).__name__}", hint)

    def expect_array(self, what: str, value, shape: tuple, dtype=None, hint: str = "") -> np.ndarray:
        """``value`` must convert to an array of ``shape`` (and ``dtype`` if given)."""
        if not hasattr(value, "shape"):
            self.fail(what, f"expected an array of shape {shape}, got {_describe(value)}",
                      hint or "return a NumPy array (np.asarray(...))")
        array = np.asarray(value)
        if tuple(array.shape) != tuple(shape):
            self.fail(what, f"expected shape {tuple(shape)}, got {tuple(array.shape)}",
                      hint or "check which axis you reduced, padded or indexed")
        if dtype is not None and array.dtype != np.dtype(dtype):
            self.fail(what, f"expected dtype {np.dtype(dtype)}, got {array.dtype}",
                      hint or f"convert with .astype('{np.dtype(dtype)}')")
        self.passed.append(f"{what} shape")
        return array

    def expect_close(self, what: str, value, expected, hint: str, atol: float = 1e-5, rtol: float = 1e-5) -> None:
        expected = np.asarray(expected)
        array = self.expect_array(what, value, expected.shape)
        if not np.allclose(array.astype(np.float64), expected.astype(np.float64), atol=atol, rtol=rtol, equal_nan=False):
            worst = np.unravel_index(np.argmax(np.abs(array.astype(np.float64) - expected)), expected.shape)
            self.fail(what, f"values differ (largest difference at index {tuple(int(i) for i in worst)}: "
                      f"got {array[worst].item()!r})", hint)
        self.passed.append(f"{what} values")

    def expect_equal(self, what: str, value, expected, hint: str) -> None:
        if isinstance(expected, np.ndarray):
            array = self.expect_array(what, value, expected.shape)
            if not np.array_equal(array, expected):
                self.fail(what, "values differ", hint)
        elif value != expected:
            self.fail(what, f"expected {expected!r}, got {value!r}", hint)
        self.passed.append(what)

    def expect_raises(self, what: str, error_type, hint: str, *args) -> None:
        """The learner's function must raise ``error_type`` for ``args``."""
        try:
            self.candidate(*args)
        except error_type:
            self.passed.append(what)
            return
        except NotImplementedError:
            self.call(*args)  # re-raised as ExerciseNotAttempted
        except Exception as error:
            self.fail(what, f"expected {error_type.__name__}, got {type(error).__name__}: {error}", hint)
        self.fail(what, f"expected {error_type.__name__} to be raised, but nothing was raised", hint)


def _lookup(exercise_id: str) -> Exercise:
    exercises = registry()
    if exercise_id not in exercises:
        close = difflib.get_close_matches(str(exercise_id), list(exercises), n=3)
        raise KeyError(f"No exercise {exercise_id!r}. Did you mean {close}?" if close
                       else f"No exercise {exercise_id!r}; known ids start with the lesson number, e.g. '01.'.")
    return exercises[exercise_id]


def run_check(exercise_id: str, candidate) -> list[str]:
    """Run the checks of ``exercise_id`` on ``candidate``; return the passed checks'
    names or raise `CheckFailed` / `ExerciseNotAttempted` (`KeyError` for an unknown id).
    An answer that makes the comparison itself raise is a `CheckFailed` too, in one line.
    Prints nothing."""
    exercise = _lookup(exercise_id)
    if not callable(candidate):
        raise CheckFailed(f"{exercise_id}: expected your function itself, got {_describe(candidate)}. "
                          "Pass the name without calling it: check(\"...\", my_function), not my_function(x).")
    checker = Checker(exercise_id, candidate)
    try:
        exercise.run(checker)
    except (CheckFailed, ExerciseNotAttempted):
        raise
    except Exception as error:                 # the answer broke the comparison itself: one line, no traceback
        raise CheckFailed(f"{exercise_id}: your answer could not be checked ({type(error).__name__}: {error}). "
                          "Hint: return what the exercise asks for (type, shape, dtype).") from None
    if not checker.passed:
        raise CheckFailed(f"{exercise_id}: no comparison ran, so nothing was checked. Hint: run the lesson's "
                          "cells in order, and do not change the course's modules from your code.")
    return checker.passed


def check(exercise_id: str, candidate) -> None:
    """Check a learner's answer to exercise ``exercise_id`` and print one line:
    ✅ passed, ❌ what differed and a hint, or ⏳ not attempted. Never stops the notebook,
    unless ``MMLM_COURSE_STRICT_CHECKS=1`` (set under pytest), where ❌ and ⏳ also raise."""
    _lookup(exercise_id)                           # a wrong id is the notebook's own bug: KeyError
    error = None
    try:
        passed = run_check(exercise_id, candidate)
    except (ExerciseNotAttempted, CheckFailed) as raised:
        error = raised
    if error is None:
        _log(exercise_id, "pass", "")
        print(f"\N{WHITE HEAVY CHECK MARK} {exercise_id}: passed ({len(passed)} check{'s' if len(passed) != 1 else ''}).")
        return
    status = "not attempted" if isinstance(error, ExerciseNotAttempted) else "fail"
    _log(exercise_id, status, str(error))
    if os.environ.get(STRICT_ENV) == "1":
        raise error
    print(error._render_traceback_()[0])


def _log(exercise_id: str, status: str, message: str) -> None:
    path = os.environ.get(CHECK_LOG_ENV)
    if path:
        with open(path, "a", encoding="utf-8") as log:
            log.write(json.dumps({"exercise": exercise_id, "status": status, "message": message}) + "\n")
