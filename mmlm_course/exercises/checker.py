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

import contextlib
import copy
import dataclasses
import difflib
import inspect
import json
import os
import random
import re
import sys
from typing import Any, Callable

import numpy as np

from mmlm_course.exercises import plain

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
    the layer's name and the original message. TensorFlow's ``{{function_node ...}}`` prefix goes."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(error))
    text = re.sub(r"\{\{function_node [^}]*\}\}\s*", "", text)     # TensorFlow's op prefix
    lines = [line.strip() for line in text.splitlines() if line.strip()]
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


class TapeError(Exception):
    """Replaying a recorded check went wrong: the record ends early or does not match the check.
    Only the grader meets it (the learner's process stopped, or its record was tampered with)."""


def _type_names(error_type: type) -> list[str]:
    return [f"{cls.__module__}.{cls.__qualname__}" for cls in error_type.__mro__]


def error_message(error: BaseException) -> str:
    """An exception's message on one line, shortened; never raises (checks quote it in their hints)."""
    try:
        return _one_line(error)
    except Exception:                          # an exception whose __str__ itself fails
        return f"<{type(error).__name__} with an unreadable message>"


def _unchanged(before, after) -> bool:
    try:
        return plain.dumps(plain.to_plain(before)) == plain.dumps(plain.to_plain(after))
    except plain.NotPlain:
        return True                            # objects (a model) are the learner's to change


class Checker:
    """What a check function uses: call the learner's code, then compare plain data.

    The learner's code runs only inside `call`, `expect_raises` and `scenario`, and what comes
    out of it is *plain data* (`plain.to_plain`: exact built-in types and NumPy arrays,
    copied), so the comparisons never run the learner's methods. Each of the three produces
    an *outcome* (returned a value / raised / not attempted), which a checker can record on a
    ``tape`` (the grader's sandboxed child does) or read back from one (``replay``: the
    grader's trusted parent, which never runs the learner's code, runs the same check on the
    recorded outcomes). A check therefore must not touch the learner's objects itself: what
    it needs from an object (a layer's outputs, a model's flags) it gets through
    ``call(..., project=...)`` or `scenario`.

    Every ``expect_*`` method raises `CheckFailed` with a message of the form
    "<what>: expected <x>, got <y>. Hint: <hint>" and records the passed check's name.
    """

    def __init__(self, exercise_id: str, candidate: Callable, *, tape: list | None = None,
                 replay: list | None = None, runner: Callable | None = None):
        self.exercise_id = exercise_id
        self.candidate = candidate
        self.passed: list[str] = []
        self.tape = tape                       # record: every outcome is appended here
        self._replay = None if replay is None else list(replay)
        self._runner = runner or (lambda run: run())   # the grader's child runs it on a thread of its own

    # ------------------------------------------------------------------ running the learner's code

    def _outcome(self, key: str, run: Callable[[], Any], after: Callable[[], dict] | None = None) -> dict:
        """Run ``run()`` (the learner's code) and describe what happened as plain data, or
        read that description back from the replay tape."""
        if self._replay is not None:
            if not self._replay:
                raise TapeError(f"{self.exercise_id}: the record ends before the check does (at {key})")
            entry = self._replay.pop(0)
            if not isinstance(entry, dict) or entry.get("key") != key or not isinstance(entry.get("outcome"), dict):
                raise TapeError(f"{self.exercise_id}: the record does not match the check (at {key})")
            return entry["outcome"]

        def live() -> dict:                    # everything that may run the learner's code, on the runner
            try:
                with np.errstate(all="ignore"):  # overflow in the learner's code is reported by the check itself
                    return {"status": "returned", "value": plain.to_plain(run())}
            except NotImplementedError:
                return {"status": "not attempted"}
            except plain.NotPlain as error:
                return {"status": "not plain", "type": str(error)}
            except (Exception, SystemExit) as error:   # the learner's own bug (sys.exit too): one line
                return {"status": "raised", "types": _type_names(type(error)), "message": error_message(error)}

        try:
            outcome = self._runner(live)
        except Exception as error:             # the runner's own limit (the grader's timeout)
            outcome = {"status": "raised", "types": _type_names(type(error)), "message": error_message(error)}
        if after is not None:
            outcome.update(after())
        if self.tape is not None:
            self.tape.append({"key": key, "outcome": outcome})
        return outcome

    def _not_attempted(self) -> ExerciseNotAttempted:
        return ExerciseNotAttempted(
            f"{self.exercise_id} is not attempted yet: replace `raise NotImplementedError()` "
            "with your code, run that cell, then run this check again.")

    def _value(self, outcome: dict, called_with: str, allow_none: bool = False):
        status = outcome.get("status")
        if status == "not attempted":
            raise self._not_attempted()
        if status == "raised":
            raise CheckFailed(f"{self.exercise_id}: your function raised {outcome['types'][0].rsplit('.', 1)[-1]}: "
                              f"{outcome['message']} (called with {called_with}).")
        if status == "not plain":
            raise CheckFailed(f"{self.exercise_id}: your function returned {outcome['type']}, which the check "
                              "cannot read. Hint: return what the exercise asks for: a number, a string, a NumPy "
                              "array or tensor, or a list / tuple / dict of them.")
        if status != "returned":
            raise TapeError(f"{self.exercise_id}: an outcome of unknown kind {status!r}")
        if outcome["value"] is None and not allow_none:
            raise CheckFailed(f"{self.exercise_id}: your function returned None. "
                              "Did you forget the `return` statement?")
        return outcome["value"]

    def call(self, *args, project: Callable | None = None, read_only: bool = False, **kwargs):
        """Call the learner's function and return its result as plain data; a crash, a missing
        return or an unreadable result fails in one line. ``project(result)`` (check code,
        run right after the call, where the learner's code runs) turns a result that is an
        object into the plain data the check needs. With ``read_only=True`` an answer that
        changes an argument in place fails."""
        originals = (args, kwargs) if read_only else None
        args = tuple(_protect(a) for a in args)
        kwargs = {k: _protect(v) for k, v in kwargs.items()}

        def run():
            result = self.candidate(*args, **kwargs)
            return project(result) if project is not None and result is not None else result

        def after():
            if originals is None:
                return {}
            changed = [str(i) for i, (a, b) in enumerate(zip(originals[0], args)) if not _unchanged(a, b)]
            changed += [k for k in kwargs if not _unchanged(originals[1][k], kwargs[k])]
            return {"changed": changed}

        shown = ", ".join([_describe(a) for a in args] + [f"{k}={_describe(v)}" for k, v in kwargs.items()])
        outcome = self._outcome("call:" + plain.digest([args, kwargs]), run, after)
        value = self._value(outcome, shown)
        if outcome.get("changed"):
            which = ", ".join(f"`{self._parameter_name(int(name))}`" if name.isdigit() else f"`{name}`"
                              for name in outcome["changed"])
            raise CheckFailed(f"{self.exercise_id}: your function changed its input in place ({which}). "
                              "Hint: leave the inputs as they are and return a new value (x = x + 1, or "
                              "x.copy() first, rather than x += 1 or x[...] = ...).")
        return value

    def _parameter_name(self, index: int) -> str:
        """The name the exercise's text gives its ``index``-th argument (the reference's own)."""
        try:
            names = list(inspect.signature(_lookup(self.exercise_id).reference).parameters)
        except (KeyError, TypeError, ValueError):
            names = []
        return names[index] if index < len(names) and not names[index].startswith("*") else f"argument {index + 1}"

    def scenario(self, label: str, steps: Callable[[Callable], Any], allow_none: bool = False):
        """Run ``steps(candidate)`` (check code that uses the learner's function or class, where
        the learner's code runs) and return what it returns, as plain data."""
        outcome = self._outcome("scenario:" + label, lambda: steps(self.candidate))
        return self._value(outcome, label, allow_none=allow_none)

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
        """The learner's function must raise ``error_type`` (or a subclass) for ``args``."""
        args = tuple(_protect(a) for a in args)
        outcome = self._outcome("raises:" + plain.digest(list(args)), lambda: self.candidate(*args) and None)
        status = outcome.get("status")
        if status == "not attempted":
            raise self._not_attempted()
        if status == "raised":
            expected = _type_names(error_type)[0]
            if expected in outcome["types"]:
                self.passed.append(what)
                return
            self.fail(what, f"expected {error_type.__name__}, got {outcome['types'][0].rsplit('.', 1)[-1]}: "
                      f"{outcome['message']}", hint)
        self.fail(what, f"expected {error_type.__name__} to be raised, but nothing was raised", hint)


def draw_cases(strategy, count: int) -> list:
    """Up to ``count`` inputs drawn from a Hypothesis strategy: a property-based generator that
    seeks out the corners (zeros, huge and tiny values, repeats, empty or one-row batches), and
    draws the same inputs on every run and in every process, so a learner who runs a check twice
    sees the same result, and the grader can replay it."""
    from hypothesis import HealthCheck, Phase, given, settings

    cases = []

    @settings(max_examples=count, derandomize=True, database=None, phases=[Phase.generate], deadline=None,
              suppress_health_check=list(HealthCheck))
    @given(strategy)
    def collect(case):
        cases.append(case)

    with _without_local_constants():
        collect()
    return cases[:count]


@contextlib.contextmanager
def _without_local_constants():
    """Hypothesis also draws constants it finds in the source of the modules loaded in this
    process (the learner's code, the grader's), which would make the inputs differ from one
    process to the next. Switch that off while a check draws: only Hypothesis' own fixed
    constants are used. Its caches go to the temporary folder, not a `.hypothesis` folder
    beside the learner's notebook. (Private parts of Hypothesis: if they move,
    `test_drawn_cases_do_not_depend_on_the_code_loaded` fails.)"""
    import tempfile

    from hypothesis import configuration
    from hypothesis.internal.conjecture import providers

    empty = providers.Constants(integers=providers.SortedSet(), floats=providers.SortedSet(key=providers.float_to_int),
                                bytes=providers.SortedSet(), strings=providers.SortedSet())
    saved = providers._get_local_constants, providers.CONSTANTS_CACHE
    home = getattr(configuration, "__hypothesis_home_directory", None)
    providers._get_local_constants = lambda: empty
    providers.CONSTANTS_CACHE = type(saved[1])(1024)
    if home is None and not os.environ.get("HYPOTHESIS_STORAGE_DIRECTORY"):
        configuration.set_hypothesis_home_dir(os.path.join(tempfile.gettempdir(), "mmlm-course-hypothesis"))
    try:
        yield
    finally:
        providers._get_local_constants, providers.CONSTANTS_CACHE = saved
        configuration.set_hypothesis_home_dir(home)


# Ids that moved when lesson 09 (audio-language models) was added and the capstone became
# lesson 10: old notebooks and submissions that call the old id are checked under the new one.
RENAMED = {"09.resume_position": "10.resume_position", "09.write_json_atomically": "10.write_json_atomically",
           "09.caption_truth_rate": "10.caption_truth_rate"}


def current_id(exercise_id: str) -> str:
    """The id an exercise has today: an id in `RENAMED` maps to its new name, any other id is itself."""
    return RENAMED.get(exercise_id, exercise_id) if isinstance(exercise_id, str) else exercise_id


def _lookup(exercise_id: str) -> Exercise:
    exercises = registry()
    exercise_id = current_id(exercise_id)
    if exercise_id not in exercises:
        close = difflib.get_close_matches(str(exercise_id), list(exercises), n=3)
        raise KeyError(f"No exercise {exercise_id!r}. Did you mean {close}?" if close
                       else f"No exercise {exercise_id!r}; known ids start with the lesson number, e.g. '01.'.")
    return exercises[exercise_id]


def run_check(exercise_id: str, candidate, *, tape: list | None = None, replay: list | None = None,
              runner: Callable | None = None) -> list[str]:
    """Run the checks of ``exercise_id`` on ``candidate``; return the passed checks'
    names or raise `CheckFailed` / `ExerciseNotAttempted` (`KeyError` for an unknown id).
    An answer that makes the comparison itself raise is a `CheckFailed` too, in one line.
    Prints nothing.

    ``tape``: append every outcome of the learner's code to this list (the grader's sandboxed
    child). ``replay``: run the check on such a list instead of calling ``candidate`` (the
    grader's parent, which passes ``candidate=None``); a record that ends early or does not
    match raises `TapeError`. ``runner(run)``: how to call ``run``, the learner's code (default:
    directly)."""
    exercise_id = current_id(exercise_id)
    exercise = _lookup(exercise_id)
    with learners_random_state_kept():
        return _run(exercise, Checker(exercise_id, candidate, tape=tape, replay=replay, runner=runner), candidate)


def _run(exercise: Exercise, checker: Checker, candidate) -> list[str]:
    exercise_id = exercise.id
    given = checker._outcome("candidate", lambda: None if callable(candidate) else _describe(candidate))
    if given.get("status") != "returned" or given.get("value") is not None:
        raise CheckFailed(f"{exercise_id}: expected your function itself, got {given.get('value')}. "
                          "Pass the name without calling it: check(\"...\", my_function), not my_function(x).")
    try:
        exercise.run(checker)
    except (CheckFailed, ExerciseNotAttempted, TapeError):
        raise
    except Exception as error:                 # the answer broke the comparison itself: one line, no traceback
        raise CheckFailed(f"{exercise_id}: your answer could not be checked ({type(error).__name__}: "
                          f"{error_message(error)}). Hint: return what the exercise asks for (type, shape, dtype).") from None
    if not checker.passed:
        raise CheckFailed(f"{exercise_id}: no comparison ran, so nothing was checked. Hint: run the lesson's "
                          "cells in order, and do not change the course's modules from your code.")
    return checker.passed


@contextlib.contextmanager
def learners_random_state_kept():
    """Put back the notebook's random state after a check: Python's `random`, NumPy's global
    generator, Keras' global seed (and its `SeedGenerator`) and TensorFlow's eager seed.

    A check builds layers, draws cases and may reseed; without this, the cells after a check
    would train and sample differently depending on whether the exercise was done. Keras and
    TensorFlow keep that state in internal objects (there is no public getter), read here."""
    import keras
    from keras.src.backend.common import global_state
    from keras.src.random.seed_generator import GLOBAL_SEED_GENERATOR
    from keras.src.utils.rng_utils import GLOBAL_RANDOM_SEED

    python_state, numpy_state = random.getstate(), np.random.get_state()
    seed = global_state.get_global_attribute(GLOBAL_RANDOM_SEED)
    generator = global_state.get_global_attribute(GLOBAL_SEED_GENERATOR)
    generator_state = None if generator is None else keras.ops.convert_to_numpy(generator.state.value)
    eager = _tensorflow_eager_context()
    eager_seed = eager_rng = None
    if eager is not None:
        eager_seed, rng = getattr(eager, "_seed", None), getattr(eager, "_rng", None)
        eager_rng = rng.getstate() if isinstance(rng, random.Random) else None
    try:
        yield
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)
        global_state.set_global_attribute(GLOBAL_RANDOM_SEED, seed)
        global_state.set_global_attribute(GLOBAL_SEED_GENERATOR, generator)
        if generator is not None:
            generator.state.assign(generator_state)
        if eager is not None:
            eager._seed = eager_seed
            if eager_rng is not None:
                eager._rng = random.Random()
                eager._rng.setstate(eager_rng)


def _tensorflow_eager_context():
    """TensorFlow's eager context, where ops' seeds are drawn, if TensorFlow is loaded (else None)."""
    if "tensorflow" not in sys.modules:
        return None
    from tensorflow.python.eager import context
    return context.context()


def check(exercise_id: str, candidate) -> None:
    """Check a learner's answer to exercise ``exercise_id`` and print one line:
    ✅ passed, ❌ what differed and a hint, or ⏳ not attempted. Never stops the notebook,
    unless ``MMLM_COURSE_STRICT_CHECKS=1`` (set under pytest), where ❌ and ⏳ also raise."""
    exercise_id = current_id(exercise_id)
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
