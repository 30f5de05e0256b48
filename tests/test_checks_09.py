"""Lesson 09: the reference passes each check and every registered mistake fails with a hint; answers written
differently from the reference, that do what the text asks, pass, directly and when the check is replayed from a
record (as the grader runs it); an answer not attempted yet is reported as such."""

import itertools
import re

import numpy as np
import pytest
from keras import ops

from mmlm_course import audio_lm, shapeworld
from mmlm_course.exercises import CheckFailed, ExerciseNotAttempted, plain, registry, run_check

IDS = ("09.stack_frames", "09.ctc_greedy_decode", "09.caption_is_true_of_sound")
EXERCISES = registry()
MISTAKES = [(eid, name) for eid in IDS for name in EXERCISES[eid].mistakes]


def _passes(exercise_id, answer):
    """The check passes on ``answer``, and again when replayed from the record of that run."""
    tape = []
    assert run_check(exercise_id, answer, tape=tape)
    assert run_check(exercise_id, None, replay=plain.loads(plain.dumps(tape)))


def _by_name(answers):
    return pytest.mark.parametrize("answer", answers, ids=lambda f: f.__name__)


@pytest.mark.parametrize("exercise_id", IDS)
def test_09_the_reference_passes(exercise_id):
    _passes(exercise_id, EXERCISES[exercise_id].reference)


@pytest.mark.parametrize("exercise_id,name", MISTAKES, ids=[f"{e}-{n[:40]}" for e, n in MISTAKES])
def test_09_every_mistake_fails_with_a_hint(exercise_id, name):
    with pytest.raises(CheckFailed) as error:
        run_check(exercise_id, EXERCISES[exercise_id].mistakes[name])
    message = str(error.value)
    assert message.startswith(exercise_id + ": ") and "\n" not in message
    assert ". Hint: " in message and len(message.split(". Hint: ", 1)[1]) > 20


@pytest.mark.parametrize("exercise_id", IDS)
def test_09_an_answer_not_attempted_is_reported_as_such(exercise_id):
    def stub(*args, **kwargs):
        raise NotImplementedError()

    with pytest.raises(ExerciseNotAttempted, match="not attempted yet"):
        run_check(exercise_id, stub)


# --------------------------------------------------------------------------- 09.stack_frames


def stack_by_slicing_with_keras_ops(frames, k):
    batch, time, width = frames.shape
    missing = -time % k
    x = ops.concatenate([ops.convert_to_tensor(frames), ops.zeros((batch, missing, width), frames.dtype)], axis=1)
    return ops.concatenate([x[:, i::k] for i in range(k)], axis=-1)       # frame jk + i is the i-th part of token j


def stack_with_a_loop_in_float64(frames, k):
    frames = np.asarray(frames, np.float64)
    batch, time, width = frames.shape
    tokens = int(np.ceil(time / k))
    out = np.zeros((batch, tokens, k * width))
    for j in range(tokens):
        for i in range(k):
            if j * k + i < time:
                out[:, j, i * width:(i + 1) * width] = frames[:, j * k + i]
    return out


def stack_with_np_pad(frames, k):
    batch, time, width = frames.shape
    tokens = (time + k - 1) // k
    padded = np.pad(frames, ((0, 0), (0, tokens * k - time), (0, 0)))
    return padded.reshape(batch, tokens, k, width).reshape(batch, tokens, k * width)


def stack_with_keras_ops_in_two_reshapes(frames, k):
    batch, time, width = frames.shape
    tokens = -(-time // k)
    x = ops.pad(frames, ((0, 0), (0, tokens * k - time), (0, 0)))
    return ops.reshape(ops.reshape(x, (batch, tokens, k, width)), (batch, tokens, k * width))


def stack_as_nested_lists(frames, k):
    return stack_with_np_pad(frames, k).tolist()


@_by_name([stack_by_slicing_with_keras_ops, stack_with_a_loop_in_float64, stack_with_np_pad,
           stack_with_keras_ops_in_two_reshapes, stack_as_nested_lists])
def test_09_stack_frames_other_correct_answers_pass(answer):
    _passes("09.stack_frames", answer)


def test_09_stack_frames_refuses_an_answer_that_pads_its_input_in_place():
    def pads_in_place(frames, k):
        result = stack_with_np_pad(frames, k)
        frames[...] = 0
        return result

    with pytest.raises(CheckFailed, match="changed its input in place"):
        run_check("09.stack_frames", pads_in_place)


def test_09_stack_frames_names_the_token_that_differs():
    def last_token_doubled(frames, k):
        result = stack_with_np_pad(frames, k).copy()
        result[:, -1] *= 2
        return result

    with pytest.raises(CheckFailed, match=r"token 3 of row 0 differs .*Hint: token j is frames jk"):
        run_check("09.stack_frames", last_token_doubled)


# --------------------------------------------------------------------------- 09.ctc_greedy_decode


def decode_with_groupby(frame_ids, blank=0):
    return [int(label) for label, _ in itertools.groupby(frame_ids) if label != blank]


def decode_with_zip(frame_ids, blank=0):
    ids = [int(i) for i in frame_ids]
    return [label for previous, label in zip([None] + ids[:-1], ids) if label != previous and label != blank]


def decode_to_a_tuple(frame_ids, blank=0):
    out, previous = [], None
    for label in frame_ids:
        if label != previous and label != blank:
            out.append(label)                          # NumPy ints, kept as they are
        previous = label
    return tuple(out)


def decode_to_a_numpy_array(frame_ids, blank=0):
    ids = np.asarray(frame_ids)
    starts = np.concatenate([[True], ids[1:] != ids[:-1]])
    return ids[starts & (ids != blank)]


@_by_name([decode_with_groupby, decode_with_zip, decode_to_a_tuple, decode_to_a_numpy_array])
def test_09_ctc_greedy_decode_other_correct_answers_pass(answer):
    _passes("09.ctc_greedy_decode", answer)


def test_09_ctc_greedy_decode_gives_the_frames_as_an_array_not_a_list():
    def expects_a_list(frame_ids, blank=0):
        if not frame_ids:                              # ambiguous for an array of more than one frame
            return []
        return decode_with_groupby(frame_ids, blank)

    with pytest.raises(CheckFailed, match="raised ValueError"):
        run_check("09.ctc_greedy_decode", expects_a_list)


# --------------------------------------------------------------------------- 09.caption_is_true_of_sound


def verify_with_a_regex(caption, scene):
    try:
        true = shapeworld.caption_is_true(caption, scene)
    except shapeworld.CaptionParseError:
        return False
    return true and not re.search(r"\b(above|below)\b", caption, flags=re.IGNORECASE)


def verify_with_the_truth_matrix(caption, scene):
    if not shapeworld.caption_parses(caption):
        return False
    for statement in shapeworld.parse_caption(caption):
        if statement[0] == "relation" and statement[2] not in audio_lm.SOUND_RELATIONS:
            return False
    return shapeworld.caption_truth_matrix([caption], [scene])[0, 0]         # a NumPy bool


def verify_by_words(caption, scene):
    words = caption.lower().split()
    if "above" in words or "below" in words:
        return False
    return shapeworld.caption_is_true(caption, scene)


@_by_name([verify_with_a_regex, verify_with_the_truth_matrix, verify_by_words])
def test_09_caption_is_true_of_sound_other_correct_answers_pass(answer):
    _passes("09.caption_is_true_of_sound", answer)


def test_09_caption_check_ignores_a_patched_verifier(monkeypatch):
    def steer(caption, scene):
        monkeypatch.setattr(audio_lm, "SOUND_RELATIONS", shapeworld.RELATIONS)
        monkeypatch.setattr(shapeworld, "caption_is_true", lambda caption, scene: True)
        return audio_lm.caption_is_true_of_sound(caption, scene)

    with pytest.raises(CheckFailed, match="expected False, got True"):
        run_check("09.caption_is_true_of_sound", steer)
