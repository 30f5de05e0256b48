"""Every registered exercise check accepts its reference and rejects each typical mistake."""

import numpy as np
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


def _adam_as_keras_writes_it(param, grad, m, v, t, learning_rate=1e-3, beta_1=0.9, beta_2=0.999, epsilon=1e-8):
    """Keras' form: the bias correction folded into the learning rate (epsilon moves a little)."""
    m = m + (grad - m) * (1 - beta_1)
    v = v + (grad * grad - v) * (1 - beta_2)
    alpha = learning_rate * np.sqrt(1 - beta_2 ** t) / (1 - beta_1 ** t)
    return param - alpha * m / (np.sqrt(v) + epsilon), m, v


def _adam_in_place_returning_a_list(param, grad, m, v, t, learning_rate=1e-3, beta_1=0.9, beta_2=0.999,
                                    epsilon=1e-8):
    m *= beta_1
    m += (1 - beta_1) * grad
    v *= beta_2
    v += (1 - beta_2) * np.square(grad)
    return [param - learning_rate * (m / (1 - beta_1 ** t)) / (np.sqrt(v / (1 - beta_2 ** t)) + epsilon), m, v]


@pytest.mark.parametrize("answer", [_adam_as_keras_writes_it, _adam_in_place_returning_a_list],
                         ids=lambda f: f.__name__)
def test_other_correct_adam_updates_pass(answer):
    assert exercises.run_check("05.adam_step", answer)
