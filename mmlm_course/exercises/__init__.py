"""The exercise checks: the `check` learners call, and one module of checks per lesson.

``from mmlm_course.exercises import check`` in a notebook; ``run_check`` returns the
passed checks' messages or raises. The per-lesson checks live in ``lessonNN.py`` beside
this file and register themselves when `registry` first imports them. Course machinery:
no lesson module imports from here.
"""

from mmlm_course.exercises.checker import (CHECK_LOG_ENV, RENAMED, STRICT_ENV, CheckFailed, Checker, Exercise,
                                           ExerciseNotAttempted, TapeError, check, current_id, draw_cases, exercise,
                                           registry,
                                           run_check)

__all__ = ["CHECK_LOG_ENV", "RENAMED", "STRICT_ENV", "CheckFailed", "Checker", "Exercise", "ExerciseNotAttempted", "TapeError",
           "check", "current_id", "draw_cases", "exercise", "registry", "run_check"]
