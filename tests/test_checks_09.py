"""Lesson 09: the reference passes each check and every registered mistake fails with a hint; answers written
differently from the reference, that do what the text asks, pass, directly and when the check is replayed from a
record (as the grader runs it); an answer not attempted yet is reported as such."""

import itertools
import math
import re

import numpy as np
import pytest
from keras import ops

from mmlm_course import audio_lm, shapeworld
from mmlm_course.exercises import CheckFailed, ExerciseNotAttempted, registry, run_check
from check_helpers import by_name, passes

IDS = ("09.stack_frames", "09.ctc_greedy_decode", "09.caption_is_true_of_sound")
EXERCISES = registry()
MISTAKES = [(eid, name) for eid in IDS for name in EXERCISES[eid].mistakes]


@pytest.mark.parametrize("exercise_id", IDS)
def test_09_the_reference_passes(exercise_id):
    passes(exercise_id, EXERCISES[exercise_id].reference)


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


def stack_token_by_token(frames, k):
    frames = np.asarray(frames)
    batch, time, width = frames.shape
    tokens = []
    for start in range(0, time, k):
        chunk = frames[:, start:start + k]
        if chunk.shape[1] < k:
            chunk = np.concatenate([chunk, np.zeros((batch, k - chunk.shape[1], width), frames.dtype)], axis=1)
        tokens.append(np.concatenate([chunk[:, i] for i in range(k)], axis=-1))
    return np.stack(tokens, axis=1)


def stack_frame_by_frame_into_a_buffer(frames, k):
    frames = np.asarray(frames)
    batch, time, width = frames.shape
    out = np.zeros((batch, math.ceil(time / k), k * width), frames.dtype)
    for t in range(time):
        out[:, t // k, (t % k) * width:(t % k + 1) * width] = frames[:, t]
    return out


def stack_via_the_features_first_view_and_back(frames, k):
    x = np.swapaxes(np.asarray(frames), 1, 2)                       # (B, D, T): pad time, then back
    batch, width, time = x.shape
    tokens = math.ceil(time / k)
    x = np.pad(x, ((0, 0), (0, 0), (0, tokens * k - time)))
    return np.swapaxes(x, 1, 2).reshape(batch, tokens, k * width)


@by_name([stack_by_slicing_with_keras_ops, stack_with_a_loop_in_float64, stack_with_np_pad,
           stack_with_keras_ops_in_two_reshapes, stack_as_nested_lists, stack_token_by_token,
           stack_frame_by_frame_into_a_buffer, stack_via_the_features_first_view_and_back])
def test_09_stack_frames_other_correct_answers_pass(answer):
    passes("09.stack_frames", answer)


def test_09_stack_frames_refuses_an_answer_that_pads_its_input_in_place():
    def pads_in_place(frames, k):
        result = stack_with_np_pad(frames, k)
        frames[...] = 0
        return result

    with pytest.raises(CheckFailed, match="changed its input in place"):
        run_check("09.stack_frames", pads_in_place)


@pytest.mark.parametrize("reshape", [np.reshape, ops.reshape], ids=["numpy", "keras_ops"])
def test_09_stack_frames_says_why_a_reshape_without_padding_fails(reshape):
    def reshapes_only(frames, k):
        return reshape(frames, (frames.shape[0], -1, k * frames.shape[2]))

    with pytest.raises(CheckFailed, match=r"\(2, 7, 3\).*Hint: 7 frames do not split into groups of 3: complete the "
                                          r"last token with zeros"):
        run_check("09.stack_frames", reshapes_only)


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


def decode_run_by_run(frame_ids, blank=0):
    ids, out, t = list(np.asarray(frame_ids)), [], 0
    while t < len(ids):
        label = ids[t]
        while t < len(ids) and ids[t] == label:
            t += 1
        if label != blank:
            out.append(int(label))
    return out


def decode_in_two_passes(frame_ids, blank=0):
    merged = []
    for label in np.asarray(frame_ids).tolist():
        if not merged or merged[-1] != label:
            merged.append(label)
    return [label for label in merged if label != blank]


def decode_with_np_diff(frame_ids, blank=0):
    ids = np.asarray(frame_ids, np.int64)
    starts = np.flatnonzero(np.diff(ids, prepend=ids[:1] - 1)) if ids.size else []
    return [int(ids[s]) for s in starts if ids[s] != blank]


def decode_with_keras_ops(frame_ids, blank=0):
    ids = ops.convert_to_tensor(np.asarray(frame_ids))
    if ids.shape[0] == 0:
        return []
    previous = ops.concatenate([ops.full((1,), -1, ids.dtype), ids[:-1]], axis=0)
    keep = ops.convert_to_numpy(ops.logical_and(ops.not_equal(ids, previous), ops.not_equal(ids, blank)))
    return [int(label) for label, kept in zip(ops.convert_to_numpy(ids), keep) if kept]


def decode_without_a_default_blank(frame_ids, blank):
    return decode_with_groupby(frame_ids, blank)


def decode_keeping_numpy_ints(frame_ids, blank=0):
    ids = np.asarray(frame_ids)
    return [ids[t] for t in range(len(ids)) if (t == 0 or ids[t] != ids[t - 1]) and ids[t] != blank]


@by_name([decode_with_groupby, decode_with_zip, decode_to_a_tuple, decode_to_a_numpy_array, decode_run_by_run,
           decode_in_two_passes, decode_with_np_diff, decode_with_keras_ops, decode_keeping_numpy_ints,
           decode_without_a_default_blank])
def test_09_ctc_greedy_decode_other_correct_answers_pass(answer):
    passes("09.ctc_greedy_decode", answer)


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


def verify_statement_by_statement(caption, scene):
    """Its own truth test: the relation compares the centres' x, strictly, between two different objects."""
    try:
        statements = shapeworld.parse_caption(caption)
    except ValueError:                                  # CaptionParseError is a ValueError
        return False

    def fits(obj, attributes):
        return all(getattr(obj, key) == value for key, value in attributes.items())

    for statement in statements:
        if statement[0] == "exists":
            true = any(fits(o, statement[1]) for o in scene.objects)
        elif statement[0] == "count":
            true = len(scene.objects) == statement[1]
        else:
            _, first, relation, second = statement
            if relation not in ("to the left of", "to the right of"):
                return False
            true = any(relation in shapeworld.relations_between(a, b) for a in scene.objects if fits(a, first)
                       for b in scene.objects if b is not a and fits(b, second))
        if not true:
            return False
    return True


def verify_truth_first(caption, scene):
    if not shapeworld.caption_is_true(caption, scene):             # False for a caption outside the grammar
        return False
    relations = {s[2] for s in shapeworld.parse_caption(caption) if s[0] == "relation"}
    return np.bool_(relations <= set(audio_lm.SOUND_RELATIONS))


@by_name([verify_with_a_regex, verify_with_the_truth_matrix, verify_by_words, verify_statement_by_statement,
           verify_truth_first])
def test_09_caption_is_true_of_sound_other_correct_answers_pass(answer):
    passes("09.caption_is_true_of_sound", answer)


def test_09_caption_check_ignores_a_patched_verifier(monkeypatch):
    def steer(caption, scene):
        monkeypatch.setattr(audio_lm, "SOUND_RELATIONS", shapeworld.RELATIONS)
        monkeypatch.setattr(shapeworld, "caption_is_true", lambda caption, scene: True)
        return audio_lm.caption_is_true_of_sound(caption, scene)

    with pytest.raises(CheckFailed, match="expected False, got True"):
        run_check("09.caption_is_true_of_sound", steer)


@pytest.mark.parametrize("name,hint", [
    ("reads left to right from the order of scene.objects", "not from their order in scene.objects"),
    ("counts objects at the same x as left / right (<= for <)", "two objects at the same x"),
    ("wants the centres shapeworld.RELATION_MARGIN apart", "however small (no margin)"),
    ("compares the left edges of the shapes, not their centres", "compare the centres' x, not the edges"),
    ("reads 'there are N objects' as at least N", "exactly N, not at least N"),
])
def test_09_caption_check_names_the_reading_of_position_that_went_wrong(name, hint):
    with pytest.raises(CheckFailed, match=re.escape(hint)):
        run_check("09.caption_is_true_of_sound", EXERCISES["09.caption_is_true_of_sound"].mistakes[name])
