"""Lessons 08 and 10: answers written differently from the reference, that do what the text asks, pass."""

import collections
import json
import os
import shutil
import statistics
import tempfile
from math import erf
from os import replace as bound_replace            # bound before the check runs: the check must still see it
from pathlib import Path

import keras
import numpy as np
import pytest
from keras import ops

from mmlm_course import exercises, shapeworld, stages

# --------------------------------------------------------------------------- 08.answer_only_targets


def _targets_with_loops(token_ids, prompt_lengths):
    ids = np.asarray(token_ids)
    inputs = np.zeros((ids.shape[0], ids.shape[1] - 1), np.int32)
    targets = np.zeros_like(inputs)
    for row in range(ids.shape[0]):
        for t in range(ids.shape[1] - 1):
            inputs[row, t] = ids[row, t]
            if t + 1 >= prompt_lengths[row]:
                targets[row, t] = ids[row, t + 1]
    return inputs, targets


def _targets_with_keras_ops(token_ids, prompt_lengths):
    ids = ops.cast(ops.convert_to_tensor(token_ids), "int32")
    positions = ops.arange(1, ops.shape(ids)[1])[None, :]
    keep = positions >= ops.cast(ops.convert_to_tensor(prompt_lengths), "int32")[:, None]
    return ids[:, :-1], ops.where(keep, ids[:, 1:], ops.zeros_like(ids[:, 1:]))


def _targets_as_a_list(token_ids, prompt_lengths):
    ids = np.asarray(token_ids, dtype=np.int32)
    mask = np.arange(ids.shape[1] - 1) >= np.asarray(prompt_lengths)[:, None] - 1
    return [ids[:, :-1], ids[:, 1:] * mask.astype(np.int32)]


@pytest.mark.parametrize("answer", [_targets_with_loops, _targets_with_keras_ops, _targets_as_a_list],
                         ids=lambda f: f.__name__)
def test_08_other_correct_answer_only_targets_pass(answer):
    assert exercises.run_check("08.answer_only_targets", answer)


# --------------------------------------------------------------------------- 08.project_tokens


def _project_with_numpy_erf(features, w1, b1, w2, b2):
    hidden = features.astype(np.float64) @ w1 + b1
    hidden = 0.5 * hidden * (1 + np.vectorize(erf)(hidden / np.sqrt(2)))
    return hidden @ w2 + b2


def _project_with_exact_ops_gelu(features, w1, b1, w2, b2):
    return ops.matmul(ops.gelu(ops.matmul(features, w1) + b1, approximate=False), w2) + b2   # default: tanh


def _project_with_einsum(features, w1, b1, w2, b2):
    hidden = keras.activations.gelu(ops.einsum("bnd,dh->bnh", features, w1) + b1)
    return ops.einsum("bnh,hk->bnk", hidden, w2) + b2


@pytest.mark.parametrize("answer", [_project_with_numpy_erf, _project_with_exact_ops_gelu, _project_with_einsum],
                         ids=lambda f: f.__name__)
def test_08_other_correct_projectors_pass(answer):
    assert exercises.run_check("08.project_tokens", answer)


# --------------------------------------------------------------------------- 08.prepend_image_tokens


def _prepend_with_numpy(image_tokens, text_embeddings, position_table):
    sequence = np.concatenate([image_tokens, text_embeddings], axis=1)
    return sequence + position_table[np.newaxis, :sequence.shape[1], :]


def _prepend_positions_per_part(image_tokens, text_embeddings, position_table):
    p, t = image_tokens.shape[1], text_embeddings.shape[1]
    return ops.concatenate([image_tokens + position_table[:p], text_embeddings + position_table[p:p + t]], axis=1)


def _prepend_with_take(image_tokens, text_embeddings, position_table):
    sequence = ops.concatenate([image_tokens, text_embeddings], axis=1)
    return sequence + ops.take(position_table, ops.arange(ops.shape(sequence)[1]), axis=0)


@pytest.mark.parametrize("answer", [_prepend_with_numpy, _prepend_positions_per_part, _prepend_with_take],
                         ids=lambda f: f.__name__)
def test_08_other_correct_prepends_pass(answer):
    assert exercises.run_check("08.prepend_image_tokens", answer)


# --------------------------------------------------------------------------- 08.set_stage_trainable


def _stage_by_layer_names(model, stage):
    model.trainable = True
    for layer in model.layers:
        if layer.name == "language_model":
            layer.trainable = stage == 2
        elif layer.name == "image_encoder":
            layer.trainable = stage == 2 and model.config.vision != "objects"
        else:
            layer.trainable = True
    return int(np.sum([np.prod(w.shape) for w in model.trainable_weights]))


def _stage_two_flags_only(model, stage):
    """Never freezes anything but the two main parts, so after unfreezing the whole it need not reset the rest."""
    model.trainable = True
    model.language_model.trainable = stage == 2
    model.image_encoder.trainable = stage == 2 and model.config.vision == "grid"
    return stages.trainable_parameter_count(model)


def _stage_naming_every_part(model, stage):
    model.trainable = True
    model.projector.trainable = True
    if model.relation_head is not None:
        model.relation_head.trainable = True
    for layer in getattr(model, "cross_attention", []):
        layer.trainable = True
    if stage == 1:
        model.language_model.trainable = False
        model.image_encoder.trainable = False
    else:
        model.language_model.trainable = True
        model.image_encoder.trainable = model.config.vision != "objects"
    return sum(w.numpy().size for w in model.trainable_weights)


@pytest.mark.parametrize("answer", [_stage_by_layer_names, _stage_two_flags_only, _stage_naming_every_part],
                         ids=lambda f: f.__name__)
def test_08_other_correct_stage_flags_pass(answer):
    assert exercises.run_check("08.set_stage_trainable", answer)


# --------------------------------------------------------------------------- 10.resume_position


_Position = __import__("collections").namedtuple("Position", "epoch batch")


def _position_by_counting(step, steps_per_epoch):
    epoch = 0
    while step >= steps_per_epoch:
        step -= steps_per_epoch
        epoch += 1
    return epoch, step


@pytest.mark.parametrize("answer", [_position_by_counting, lambda s, n: np.divmod(s, n), lambda s, n: _Position(*divmod(s, n)),
                                    lambda s, n: (int(s / n), s - int(s / n) * n)],
                         ids=["counting", "np_divmod", "namedtuple", "int_of_division"])
def test_10_other_correct_resume_positions_pass(answer):
    assert exercises.run_check("10.resume_position", answer)


def test_10_resume_position_shows_a_huge_whole_number_as_a_wrong_position():
    with pytest.raises(exercises.CheckFailed, match=r"expected \(0, 9\), got \(\d{30,}, 0\)\. Hint: steps count"):
        exercises.run_check("10.resume_position", lambda step, steps_per_epoch: (step ** 40, 0))


# --------------------------------------------------------------------------- 10.write_json_atomically


def _save_with_mkstemp(path, data):
    fd, temporary = tempfile.mkstemp(dir=os.path.dirname(path), suffix=".json")
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(data, handle, indent=2)
    except Exception:
        os.remove(temporary)
        raise
    bound_replace(temporary, path)


def _save_with_named_temporary_file(path, data):
    path = Path(path)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=path.name, delete=False) as handle:
        json.dump(data, handle)
        handle.flush()
        os.fsync(handle.fileno())
    Path(handle.name).replace(path)


def _save_text_then_rename(path, data):
    temporary = str(path) + ".partial"
    with open(temporary, "w") as handle:
        handle.write(json.dumps(data, sort_keys=True))
    os.rename(temporary, str(path))


def _save_raising_value_error(path, data):
    temporary = Path(path).with_suffix(".tmp")
    try:
        with open(temporary, "w", encoding="utf-8") as handle:
            json.dump(data, handle)
    except TypeError as error:
        temporary.unlink()
        raise ValueError(f"cannot save {path}: {error}") from error
    shutil.move(temporary, path)


def _save_reporting_failure(path, data):
    temporary = Path(path).parent / f".{Path(path).name}.tmp"
    try:
        temporary.write_text(json.dumps(data), encoding="utf-8")
    except TypeError:
        return False
    os.replace(temporary, path)
    return True


@pytest.mark.parametrize("answer", [_save_with_mkstemp, _save_with_named_temporary_file, _save_text_then_rename,
                                    _save_raising_value_error, _save_reporting_failure], ids=lambda f: f.__name__)
def test_10_other_correct_atomic_writes_pass(answer):
    assert exercises.run_check("10.write_json_atomically", answer)


def test_10_atomic_write_check_failure_is_one_line_for_a_file_that_is_not_json():
    def writes_repr(path, data):
        temporary = str(path) + ".tmp"
        with open(temporary, "w") as handle:
            handle.write(repr(data))
        os.replace(temporary, path)

    with pytest.raises(exercises.CheckFailed, match="JSON"):
        exercises.run_check("10.write_json_atomically", writes_repr)


# --------------------------------------------------------------------------- 10.caption_truth_rate


def _truth_by_counting(captions, scenes):
    true = 0
    for caption, scene in zip(captions, scenes):
        if shapeworld.caption_is_true(caption, scene):
            true += 1
    return true / len(captions)


def _truth_judging_each_distinct_pair_once(captions, scenes):
    """Judges each distinct (caption, scene) pair once and weighs it by how often it occurs."""
    counts = collections.Counter(zip(captions, scenes))
    true = sum(n for (caption, scene), n in counts.items() if shapeworld.caption_is_true(caption, scene))
    return true / len(captions)


@pytest.mark.parametrize("answer", [
    _truth_by_counting,
    _truth_judging_each_distinct_pair_once,
    lambda captions, scenes: np.mean(np.diag(shapeworld.caption_truth_matrix(captions, scenes))),
    lambda captions, scenes: statistics.mean(shapeworld.caption_is_true(c, s) for c, s in zip(captions, scenes)),
    lambda captions, scenes: ops.mean(ops.convert_to_tensor(
        [float(shapeworld.caption_is_true(c, s)) for c, s in zip(captions, scenes)])),
], ids=["counting", "distinct_pairs_weighted", "truth_matrix_diagonal", "statistics_mean", "keras_mean"])
def test_10_other_correct_truth_rates_pass(answer):
    assert exercises.run_check("10.caption_truth_rate", answer)


def test_10_caption_truth_rate_judges_the_captions_before_the_answer_runs(monkeypatch):
    def steer(captions, scenes):
        monkeypatch.setattr(shapeworld, "caption_is_true", lambda caption, scene: True)
        return 1.0

    with pytest.raises(exercises.CheckFailed, match="captions of other scenes: got 1, expected 0"):
        exercises.run_check("10.caption_truth_rate", steer)


def test_the_capstone_ids_of_before_the_audio_lesson_still_check_under_their_new_names():
    # lesson 09 became the audio lesson and the capstone lesson 10: an old notebook's check("09.x", ...) still works
    for old, new in exercises.RENAMED.items():
        assert exercises.current_id(old) == new and new in exercises.registry()
        reference = exercises.registry()[new].reference
        assert exercises.run_check(old, reference) == exercises.run_check(new, reference)
