"""Every registered exercise check accepts its reference and rejects each typical mistake."""

import pytest

from mmlm_course import exercises

REGISTRY = exercises.registry()
CASES = [(exercise_id, name) for exercise_id, ex in REGISTRY.items() for name in ex.mistakes]


@pytest.mark.parametrize("exercise_id", sorted(REGISTRY))
def test_reference_passes(exercise_id):
    passed = exercises.run_check(exercise_id, REGISTRY[exercise_id].reference)
    assert passed, "a check must perform at least one comparison"


@pytest.mark.parametrize("exercise_id", sorted(REGISTRY))
def test_at_least_two_mistakes(exercise_id):
    assert len(REGISTRY[exercise_id].mistakes) >= 2


@pytest.mark.parametrize("exercise_id,mistake", CASES)
def test_typical_mistake_is_rejected(exercise_id, mistake):
    with pytest.raises(exercises.CheckFailed) as error:
        exercises.run_check(exercise_id, REGISTRY[exercise_id].mistakes[mistake])
    message = str(error.value)
    assert message.startswith(exercise_id) and "\n" not in message.strip()
