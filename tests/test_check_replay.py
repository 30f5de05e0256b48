"""The grader's record / replay gives every answer the verdict the notebook's own check gives.

The grader runs a check twice: in the sandboxed child, which records what the learner's code
returned (on a thread of its own, as there), and in the grader, which replays the same check
on that record, serialised as plain data, without running the learner's code. For every
exercise, on its reference and on every registered typical mistake, the recorded verdict
(the one a learner sees in the notebook) must be right: the reference passes, each mistake
fails; and the replayed verdict must be the same, message included.
"""

import pytest

from mmlm_course.exercises import CheckFailed, ExerciseNotAttempted, TapeError, plain, registry, run_check
from mmlm_course.tools.grading_child import on_own_thread

EXERCISES = registry()
CASES = [(eid, name) for eid, ex in sorted(EXERCISES.items()) for name in ("reference", *ex.mistakes)]


def _verdict(exercise_id, candidate, **kwargs):
    try:
        return "pass", len(run_check(exercise_id, candidate, **kwargs))
    except CheckFailed as error:
        return "fail", str(error)
    except ExerciseNotAttempted:
        return "not attempted", ""


@pytest.mark.parametrize("exercise_id,answer", CASES, ids=[f"{e}-{n[:40]}" for e, n in CASES])
def test_a_replayed_check_gives_the_direct_verdict(exercise_id, answer):
    exercise = EXERCISES[exercise_id]
    candidate = exercise.reference if answer == "reference" else exercise.mistakes[answer]
    tape = []
    recorded = _verdict(exercise_id, candidate, tape=tape, runner=on_own_thread(120))
    replayed = _verdict(exercise_id, None, replay=plain.loads(plain.dumps(tape)))
    assert recorded[0] == ("pass" if answer == "reference" else "fail"), recorded
    if recorded[0] == "fail":                      # one line that names the exercise
        assert recorded[1].startswith(exercise_id) and "\n" not in recorded[1].strip()
    assert replayed == recorded


def test_a_record_that_ends_early_or_was_altered_is_refused():
    exercise_id = "01.to_float_image"
    tape = []
    run_check(exercise_id, EXERCISES[exercise_id].reference, tape=tape)
    with pytest.raises(TapeError, match="ends"):
        run_check(exercise_id, None, replay=tape[:-1])
    altered = [dict(entry) for entry in tape]
    altered[1] = {"key": "call:0000", "outcome": altered[1]["outcome"]}
    with pytest.raises(TapeError, match="match"):
        run_check(exercise_id, None, replay=altered)
