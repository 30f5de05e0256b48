"""The check function itself: one clear line for each way a learner's answer goes wrong."""

import json
import subprocess
import sys

import numpy as np
import pytest

from mmlm_course import exercises
from mmlm_course.exercises import CheckFailed, ExerciseNotAttempted, check


def test_pass_prints_one_line(capsys):
    check("01.to_float_image", lambda img: img.astype(np.float32) / 255)
    assert capsys.readouterr().out.startswith("✅ 01.to_float_image: passed")


def _stub(image):
    raise NotImplementedError()


def test_check_shows_each_result_and_never_stops_the_notebook(capsys, monkeypatch):
    monkeypatch.delenv(exercises.STRICT_ENV, raising=False)
    assert check("01.to_float_image", _stub) is None
    assert capsys.readouterr().out.startswith("⏳ 01.to_float_image is not attempted yet")
    assert check("01.to_float_image", lambda img: img / 255) is None           # float64: a wrong dtype
    out = capsys.readouterr().out
    assert out.startswith("❌ 01.to_float_image:") and "Hint:" in out and out.count("\n") == 1


def test_an_answer_the_check_cannot_read_is_a_failure_not_a_crash(capsys, monkeypatch):
    class Shape:                                # has a shape, but np.asarray of it raises
        shape, dtype = (4, 5, 3), "float32"

        def __array__(self, *args, **kwargs):
            raise RuntimeError("no array")

    monkeypatch.delenv(exercises.STRICT_ENV, raising=False)
    check("01.to_float_image", lambda img: Shape())
    shown = capsys.readouterr().out
    assert shown.startswith("❌ 01.to_float_image: your function returned") and "cannot read" in shown
    assert shown.count("\n") == 1


def test_strict_mode_raises_for_nbval(monkeypatch):
    monkeypatch.setenv(exercises.STRICT_ENV, "1")
    with pytest.raises(ExerciseNotAttempted, match="not attempted yet"):
        check("01.to_float_image", _stub)
    with pytest.raises(CheckFailed, match="dtype"):
        check("01.to_float_image", lambda img: img / 255)


@pytest.mark.parametrize("answer,message", [
    (lambda img: None, "returned None. Did you forget the `return`"),
    (lambda img: 1 / 0, "raised ZeroDivisionError: division by zero"),
    (lambda img: img.tolist(), "expected an array of shape"),
    (np.zeros(3), "expected your function itself, got array"),
])
def test_wrong_answers_fail_in_one_line(answer, message):
    with pytest.raises(CheckFailed) as error:
        exercises.run_check("01.to_float_image", answer)
    assert message in str(error.value) and "\n" not in str(error.value)
    assert error.value._render_traceback_() == [f"❌ {error.value}"]


def test_unknown_exercise_suggests_close_ids():
    with pytest.raises(KeyError, match="01.to_float_image"):
        check("01.to_float_imag", lambda x: x)


def test_results_are_logged_for_the_cli(tmp_path, monkeypatch):
    log = tmp_path / "log.jsonl"
    monkeypatch.setenv(exercises.CHECK_LOG_ENV, str(log))
    monkeypatch.delenv(exercises.STRICT_ENV, raising=False)
    check("00.count_color", lambda scene, color: sum(o.color == color for o in scene.objects))
    check("00.describe_object", lambda obj: (_ for _ in ()).throw(NotImplementedError()))
    check("00.count_color", lambda scene, color: 0)
    entries = [json.loads(line) for line in log.read_text().splitlines()]
    assert [(e["exercise"], e["status"]) for e in entries] == [
        ("00.count_color", "pass"), ("00.describe_object", "not attempted"), ("00.count_color", "fail")]


def test_registering_needs_two_mistakes():
    with pytest.raises(ValueError, match="at least two typical mistakes"):
        exercises.exercise("99.x", reference=abs, mistakes={"one": abs})


def test_a_learner_function_cannot_change_the_checks_inputs():
    def overwrite_then_answer(image):
        answer = image.astype(np.float32) / 255
        image[...] = 0           # would make the reference compare against zeros
        return np.zeros(image.shape, np.float32) if image.max() == 0 else answer

    with pytest.raises(CheckFailed):
        exercises.run_check("01.to_float_image", overwrite_then_answer)


def test_run_check_never_calls_the_methods_of_what_an_answer_returns():
    class Shape:                                # has a shape, but np.asarray of it raises
        shape, dtype = (4, 5, 3), "float32"

        def __array__(self, *args, **kwargs):
            raise RuntimeError("no array")

    with pytest.raises(CheckFailed, match="cannot read") as error:    # not "RuntimeError: no array"
        exercises.run_check("01.to_float_image", lambda img: Shape())
    assert "\n" not in str(error.value)


def test_an_error_inside_a_keras_layer_is_reported_in_one_line():
    from mmlm_course import attention

    class Broken(attention.TransformerBlock):              # has the block's layers; its call fails
        def call(self, x, mask=None):
            raise ValueError("shapes (2, 6, 16) and (3,) do not match")

    with pytest.raises(CheckFailed) as error:
        exercises.run_check("03.transformer_block", Broken)
    message = str(error.value)
    assert "\n" not in message and "shapes (2, 6, 16) and (3,) do not match (in Broken.call()" in message


_DRAW = """
import sys
sys.path.insert(0, {folder!r})
{imports}
import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from mmlm_course.exercises import draw_cases, plain
strategy = st.tuples(hnp.arrays(np.float32, (3, 4), elements=st.floats(-1e6, 1e6, width=32)),
                     st.lists(st.integers(-10**9, 10**9), max_size=5), st.text(max_size=4))
print(plain.dumps(draw_cases(strategy, 40)))
"""


def test_drawn_cases_do_not_depend_on_the_code_loaded(tmp_path):
    """A check draws the same inputs in the learner's kernel, the grader's child and the grader,
    whatever other code (with its own constants) each has loaded."""
    (tmp_path / "learner_code.py").write_text("A, B, C = 987654321, 271828.125, 'zqxj'\nD = [-31337, 4.5e5, 'qq']\n")
    runs = [subprocess.run([sys.executable, "-c", _DRAW.format(folder=str(tmp_path), imports=imports)],
                           capture_output=True, text=True, timeout=300, cwd=tmp_path)
            for imports in ("", "import learner_code")]
    assert all(run.returncode == 0 for run in runs), runs[0].stderr[-2000:] + runs[1].stderr[-2000:]
    assert runs[0].stdout == runs[1].stdout
    assert not (tmp_path / ".hypothesis").exists(), "a check must not leave a folder in the learner's directory"


def _draws():
    """One number from each random source a notebook cell may use after a check."""
    import random

    import keras
    import tensorflow as tf
    layer = keras.layers.Dense(1)                   # unseeded initialiser: Python's random
    layer.build((None, 1))
    return (random.random(), float(np.random.rand()), float(keras.ops.convert_to_numpy(keras.random.normal(()))),
            float(tf.random.uniform(())), float(keras.ops.convert_to_numpy(layer.kernel)[0, 0]))


@pytest.mark.parametrize("exercise_id,answer", [
    ("04.fusion_model", "reference"),       # builds and trains a model, and reseeds Keras
    ("07.decoder_lm", "reference"),         # builds layers with unseeded initialisers
    ("07.decoder_lm", "wrong"),             # a failing check keeps the state too
])
def test_a_check_leaves_the_notebooks_random_state_as_it_found_it(exercise_id, answer):
    """The cells after a check run the same whether the exercise was done, skipped or wrong."""
    import keras
    registered = exercises.registry()[exercise_id]
    candidate = registered.reference if answer == "reference" else next(iter(registered.mistakes.values()))
    keras.utils.set_random_seed(7)
    _draws()
    expected = _draws()
    keras.utils.set_random_seed(7)
    _draws()
    try:
        exercises.run_check(exercise_id, candidate)
    except CheckFailed:
        assert answer == "wrong"
    assert _draws() == expected
