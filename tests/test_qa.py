"""Unit tests for mmlm_course.qa (lesson 04): the question-answering harness."""

import numpy as np
import pytest

import mmlm_course

mmlm_course.setup_notebook(seed=0)

import keras  # noqa: E402

from mmlm_course import detector, qa, shapeworld  # noqa: E402
from mmlm_course.preprocessing import Tokenizer  # noqa: E402
from keras_helpers import round_trip, to_numpy  # noqa: E402


def _perfect_tokens(scenes):
    """The object tokens an ideal detector would output for these scenes."""
    targets = detector.object_grid_targets(scenes)
    big = 20.0
    logits = {"object": np.where(targets["object"] > 0, big, -big).astype(np.float32),
              "color": (big * np.eye(6)[targets["color"]]).astype(np.float32),
              "shape": (big * np.eye(3)[targets["shape"]]).astype(np.float32),
              "size": (big * np.eye(2)[targets["size"]]).astype(np.float32),
              "offset": targets["offset"]}
    return to_numpy(detector.ObjectTokens()(logits))


@pytest.fixture(scope="module")
def qa_data():
    data = shapeworld.generate(24, "validation", seed=1)
    return qa.shapeworld_qa_arrays(data, _perfect_tokens(data.scenes))


# --------------------------------------------------------------------------- a dataset that is not ShapeWorld

COLOURS = ("amber", "teal", "violet")
OWN_ANSWERS = COLOURS + ("yes", "no")


def _own_dataset(n=30, seed=0):
    """A tiny dataset with its own words, answers, question types and image size."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 32, 48, 1), dtype=np.uint8)
    questions, answers, types = [], [], []
    for i in range(n):
        colour = COLOURS[i % 3]
        if i % 2:
            questions.append("which hue does the blob have?")
            answers.append(colour)
            types.append("hue")
        else:
            questions.append(f"is the blob {colour}?")
            answers.append("yes" if i % 4 else "no")
            types.append("verify")
    return images, questions, answers, types


def test_qa_arrays_and_models_work_on_another_dataset():
    images, questions, answers, types = _own_dataset()
    tokenizer = Tokenizer.from_texts(questions)
    features = np.random.default_rng(1).normal(size=(30, 6, 5)).astype(np.float32)  # any encoder's tokens
    arrays = qa.qa_arrays(images, questions, answers, types, tokenizer=tokenizer, answer_set=OWN_ANSWERS,
                          max_length=8, objects=features)
    assert arrays["token_ids"].shape == (30, 8) and arrays["token_ids"].dtype == np.int32
    assert arrays["answer"].max() < len(OWN_ANSWERS) and set(arrays["question_type"]) == {"hue", "verify"}
    for method in qa.FUSION_METHODS:
        model = qa.build_qa_model(method, num_objects=6, width=16, question_length=8, vocab_size=tokenizer.vocab_size,
                                  answer_set=OWN_ANSWERS, image_shape=(32, 48, 1), token_features=5)
        logits = model(qa.inputs_for(model, arrays))
        assert tuple(logits.shape) == (30, len(OWN_ANSWERS)), method
        assert np.all(np.isfinite(to_numpy(logits)))
    history = qa.fit_qa_model(model, arrays, epochs=1, batch_size=8, validation=arrays)
    assert {"loss", "val_loss", "val_accuracy"} <= set(history.history)


def test_early_fusion_emits_one_logit_per_answer(qa_data):
    model = qa.build_qa_model("early", width=16, answer_set=("yes", "no", "maybe"))
    assert tuple(model(qa.inputs_for(model, qa_data)).shape) == (24, 3)
    assert tuple(qa.build_qa_model("early", width=16).outputs[0].shape) == (None, len(qa.ANSWERS))


def test_mismatches_between_data_and_model_are_errors(qa_data):
    images, questions, answers, types = _own_dataset()
    with pytest.raises(ValueError, match="vocabulary"):  # the ShapeWorld vocabulary does not know 'hue'
        qa.qa_arrays(images, questions, answers, types, answer_set=OWN_ANSWERS, max_length=8)
    tokenizer = Tokenizer.from_texts(questions)
    with pytest.raises(ValueError, match="answer set"):
        qa.qa_arrays(images, questions, answers, types, tokenizer=tokenizer, max_length=8)
    with pytest.raises(ValueError, match="max_length"):
        qa.qa_arrays(images, questions, answers, types, tokenizer=tokenizer, answer_set=OWN_ANSWERS, max_length=4)
    with pytest.raises(ValueError, match="one per image"):
        qa.qa_arrays(images, questions[:-1], answers, types, tokenizer=tokenizer, answer_set=OWN_ANSWERS,
                     max_length=8)
    arrays = qa.qa_arrays(images, questions, answers, types, tokenizer=tokenizer, answer_set=OWN_ANSWERS,
                          max_length=8)
    small = qa.build_qa_model("question_only", width=16, question_length=8, vocab_size=5, answer_set=OWN_ANSWERS)
    with pytest.raises(ValueError, match="vocabulary"):
        qa.inputs_for(small, arrays)
    too_few = qa.build_qa_model("question_only", width=16, question_length=8, vocab_size=tokenizer.vocab_size,
                                answer_set=2)
    with pytest.raises(ValueError, match="answer_set"):
        qa.fit_qa_model(too_few, arrays, epochs=1)
    with pytest.raises(ValueError, match="shape"):  # ShapeWorld's 14-token questions, a model built for 8
        qa.inputs_for(small, qa_data)
    with pytest.raises(ValueError, match="answer_set"):
        qa.build_qa_model("concat", answer_set=("yes", "yes"))


def test_shapeworld_qa_arrays(qa_data):
    assert qa_data["token_ids"].shape == (24, qa.QUESTION_LENGTH) and qa_data["token_ids"].dtype == np.int32
    assert qa_data["answer"].dtype == np.int32 and qa_data["answer"].max() < len(qa.ANSWERS)
    assert qa_data["objects"].shape == (24, 4, 14) and qa_data["image"].dtype == np.uint8
    assert len(qa.ANSWERS) == 17 and len(set(qa.ANSWERS)) == 17
    data = shapeworld.generate(3, "train", seed=0)
    with pytest.raises(ValueError, match=r"objects: expected shape \(3, K, F\)"):
        qa.shapeworld_qa_arrays(data, np.zeros((4, 4, 14)))
    with pytest.raises(ValueError, match="object tokens"):
        qa.shapeworld_qa_arrays(data, np.zeros((3, 4, 8)))
    with pytest.raises(TypeError, match="ShapeWorldData"):
        qa.shapeworld_qa_arrays(data.images)
    token_model = detector.build_object_encoder()[1]
    computed = qa.shapeworld_qa_arrays(data, image_encoder=token_model)
    np.testing.assert_allclose(computed["objects"], token_model.predict(data.images, verbose=0), rtol=1e-5)


@pytest.mark.parametrize("method", qa.FUSION_METHODS)
def test_every_qa_model_builds_and_predicts(method, qa_data):
    model = qa.build_qa_model(method, width=16)
    logits = model(qa.inputs_for(model, qa_data))
    assert tuple(logits.shape) == (24, len(qa.ANSWERS))
    assert np.all(np.isfinite(to_numpy(logits)))


def test_qa_model_round_trips_and_trains(qa_data, tmp_path):
    model = qa.build_qa_model("cross_attention", width=16, text_encoder="gru")
    seen = []
    callback = keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: seen.append(epoch))
    history = qa.fit_qa_model(model, qa_data, epochs=1, batch_size=8, callbacks=[callback])
    assert np.isfinite(history.history["loss"][0]) and seen == [0]
    round_trip(model, qa.inputs_for(model, qa_data), tmp_path, rtol=1e-5, atol=1e-5)
    predicted = qa.predict_answers(model, qa_data, batch_size=10)
    assert predicted.shape == (24,)


def test_only_the_relation_model_tells_subject_from_reference(qa_data):
    token_ids = Tokenizer.for_shapeworld().encode_batch(
        ["is the red circle to the left of the blue square?", "is the blue square to the left of the red circle?"],
        max_length=qa.QUESTION_LENGTH)
    objects = np.repeat(qa_data["objects"][:1], 2, axis=0)
    logits = {}
    for method in ("concat", "relation"):
        keras.utils.set_random_seed(0)
        model = qa.build_qa_model(method, width=16)
        logits[method] = to_numpy(model({"objects": objects, "token_ids": token_ids}))
    # A mean over (word + position) embeddings is a bag of words: both questions look the same.
    np.testing.assert_allclose(logits["concat"][0], logits["concat"][1], rtol=1e-5, atol=1e-6)
    assert np.abs(logits["relation"][0] - logits["relation"][1]).max() > 1e-4


def test_inputs_for_and_unknown_method(qa_data):
    model = qa.build_qa_model("early", width=16)
    assert sorted(qa.inputs_for(model, qa_data)) == ["image", "token_ids"]
    with pytest.raises(KeyError, match="compute the object tokens"):
        qa.inputs_for(qa.build_qa_model("film", width=16), {"token_ids": qa_data["token_ids"]})
    with pytest.raises(TypeError, match="uint8"):
        qa.inputs_for(model, dict(qa_data, image=qa_data["image"] / 255.0))
    with pytest.raises(ValueError, match="method must be one of"):
        qa.build_qa_model("attention")


def test_accuracy_by_type_reports_every_type():
    result = qa.accuracy_by_type([1, 2, 3, 4], [1, 2, 0, 0], ["color", "color", "count", "relation"])
    assert result == {"overall": 0.5, "color": 1.0, "count": 0.0, "relation": 0.0}
    # A type ShapeWorld does not have is reported too, after ShapeWorld's own.
    result = qa.accuracy_by_type([1, 2, 3, 4], [1, 2, 3, 0], ["colour_of_sky", "count", "count", "colour_of_sky"])
    assert list(result) == ["overall", "count", "colour_of_sky"] and result["colour_of_sky"] == 0.5
    result = qa.accuracy_by_type([1, 2], [1, 0], ["b", "a"], types=("a", "b", "c"))
    assert list(result) == ["overall", "a", "b"]
    with pytest.raises(ValueError, match="not in types"):
        qa.accuracy_by_type([1, 2], [1, 0], ["b", "a"], types=("a",))
    with pytest.raises(ValueError, match="must have one length"):
        qa.accuracy_by_type([1, 2], [1], ["color", "color"])
    with pytest.raises(ValueError, match="take argmax"):
        qa.accuracy_by_type(np.zeros((2, 17)), [1, 2], ["color", "color"])


def test_question_encoder_checks_its_input_and_forwards_its_dtype_policy():
    encoder = qa.QuestionEncoder(20, max_length=6, width=8, dtype="mixed_float16")
    out = encoder(np.array([[3, 4, 0, 0, 0, 0]], np.int32))
    assert tuple(out.shape) == (1, 6, 8) and keras.backend.standardize_dtype(out.dtype) == "float16"
    with pytest.raises(ValueError, match="ndim"):
        qa.QuestionEncoder(20, max_length=6, width=8)(np.zeros((1, 6, 2), np.int32))
    with pytest.raises(ValueError, match="even"):
        qa.QuestionEncoder(20, width=7, kind="gru")


# Issue #16: bad input to the public functions raises a clear TypeError / ValueError.
@pytest.mark.parametrize("change,error,word", [
    ({"tokenizer": 5}, TypeError, "Tokenizer"),
    ({"images": np.zeros((2, 64, 64, 3)).astype(str)}, TypeError, "images"),
    ({"question_types": [5, 5]}, TypeError, "question_types"),
])
def test_qa_arrays_bad_inputs(change, error, word):
    data = shapeworld.generate(2, seed=0)
    args = dict(images=data.images, questions=data.questions, answers=data.answers,
                question_types=data.question_types)
    args.update(change)
    with pytest.raises(error, match=word):
        qa.qa_arrays(**args)


def test_accuracy_by_type_needs_string_types():
    with pytest.raises(TypeError, match="question_types"):
        qa.accuracy_by_type(np.array([0, 1]), np.array([0, 1]), [1, 2])


@pytest.mark.parametrize("predicted", [np.array(["red", "blue"]), np.array([0, -1]), np.array([0.0, 1.0])])
def test_accuracy_by_type_needs_answer_indices(predicted):
    with pytest.raises(TypeError, match="predicted"):
        qa.accuracy_by_type(predicted, np.array([0, 1]), ["color", "count"])
