"""What the check tests share: "this answer passes" (also when replayed, as the grader does)."""

import pytest

from mmlm_course.exercises import plain, run_check


def passes(exercise_id, answer):
    """The check passes on ``answer``, and again when replayed from the record of that run."""
    tape = []
    assert run_check(exercise_id, answer, tape=tape)
    assert run_check(exercise_id, None, replay=plain.loads(plain.dumps(tape)))


def by_name(answers):
    """Parametrize a test over answer functions, each test named after its function."""
    return pytest.mark.parametrize("answer", answers, ids=lambda f: f.__name__)
