"""Losses of lesson 05 against float64 NumPy references written here, plus edge cases and errors."""

import inspect
import math

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import ops

from mmlm_course import losses

RNG = np.random.default_rng(0)


# --------------------------------------------------------------------------- float64 references


def ref_log_softmax(z):
    z = np.asarray(z, np.float64)
    m = z.max(axis=-1, keepdims=True)
    return z - m - np.log(np.exp(z - m).sum(axis=-1, keepdims=True))


def ref_cross_entropy(labels, logits, smoothing=0.0):
    """-sum_c q_c log p_c with q = (1 - eps) one_hot + eps / C."""
    log_p = ref_log_softmax(logits)
    num_classes = log_p.shape[-1]
    q = (1 - smoothing) * np.eye(num_classes)[np.asarray(labels)] + smoothing / num_classes
    return -(q * log_p).sum(-1)


def ref_info_nce(image, text, temperature):
    image = np.asarray(image, np.float64)
    text = np.asarray(text, np.float64)
    image = image / np.linalg.norm(image, axis=1, keepdims=True)
    text = text / np.linalg.norm(text, axis=1, keepdims=True)
    logits = image @ text.T / temperature
    labels = np.arange(len(image))
    return (ref_cross_entropy(labels, logits).mean() + ref_cross_entropy(labels, logits.T).mean()) / 2


def np_(x):
    return np.asarray(ops.convert_to_numpy(x))


# --------------------------------------------------------------------------- log-softmax and NLL


def test_log_softmax_matches_reference_and_sums_to_one():
    logits = (4 * RNG.normal(size=(5, 7))).astype(np.float32)
    got = np_(losses.log_softmax(logits))
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, ref_log_softmax(logits), atol=1e-5)
    np.testing.assert_allclose(np.exp(got).sum(-1), 1.0, atol=1e-5)


def test_log_softmax_is_stable_where_the_naive_version_fails():
    logits = np.array([[1000.0, 0.0, -1000.0], [0.0, -200.0, -400.0]], np.float32)
    naive = np_(ops.log(ops.exp(logits) / ops.sum(ops.exp(logits), axis=-1, keepdims=True)))
    softmax_then_log = np_(ops.log(ops.softmax(logits)))
    assert np.isnan(naive[0]).any()  # exp(1000) = inf and inf / inf = NaN
    assert np.isneginf(softmax_then_log).any()  # log(0) = -inf
    got = np_(losses.log_softmax(logits))
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, ref_log_softmax(logits), rtol=1e-6)


def test_log_softmax_keeps_float64_and_computes_float16_in_float32():
    z64 = RNG.normal(size=(2, 3))
    assert np_(losses.log_softmax(z64)).dtype == np.float64
    np.testing.assert_allclose(np_(losses.log_softmax(z64)), ref_log_softmax(z64), rtol=1e-12)
    assert np_(losses.log_softmax(z64.astype(np.float16))).dtype == np.float32


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_negative_log_likelihood_reductions(reduction):
    logits = (3 * RNG.normal(size=(6, 5))).astype(np.float32)
    labels = RNG.integers(0, 5, size=6)
    per_example = ref_cross_entropy(labels, logits)
    expected = {"mean": per_example.mean(), "sum": per_example.sum(), "none": per_example}[reduction]
    got = np_(losses.negative_log_likelihood(labels, logits, reduction=reduction))
    np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_cross_entropy_equals_keras_and_handles_extreme_logits():
    logits = np.array([[1000.0, 0.0], [0.0, 1000.0], [3.0, -1.0]], np.float32)
    labels = np.array([0, 0, 1])
    got = np_(losses.sparse_cross_entropy(labels, logits))
    np.testing.assert_allclose(got, [0.0, 1000.0, 4.0 + math.log1p(math.exp(-4.0))], rtol=1e-6)
    keras_loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction=None)
    np.testing.assert_allclose(got, np_(keras_loss(labels, logits)), rtol=1e-5)


@pytest.mark.parametrize("epsilon", [0.0, 0.1, 0.5])
def test_label_smoothing_matches_reference_and_keras(epsilon):
    logits = (2 * RNG.normal(size=(4, 6))).astype(np.float32)
    labels = RNG.integers(0, 6, size=4)
    got = np_(losses.sparse_cross_entropy(labels, logits, label_smoothing=epsilon))
    np.testing.assert_allclose(got, ref_cross_entropy(labels, logits, epsilon), rtol=1e-5)
    keras_loss = keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=epsilon, reduction=None)
    np.testing.assert_allclose(got, np_(keras_loss(np.eye(6)[labels], logits)), rtol=1e-5)


def test_label_smoothing_has_a_finite_optimum():
    """Without smoothing the loss keeps falling as the margin grows; with it, it turns up again."""
    margins = np.linspace(0, 30, 61, dtype=np.float32)
    logits = np.stack([margins, np.zeros_like(margins), np.zeros_like(margins)], axis=1)
    labels = np.zeros(len(margins), np.int64)
    plain = np_(losses.sparse_cross_entropy(labels, logits))
    smooth = np_(losses.sparse_cross_entropy(labels, logits, label_smoothing=0.1))
    assert np.all(np.diff(plain) <= 0)
    assert 0 < np.argmin(smooth) < len(margins) - 1


def test_classification_errors_say_what_was_expected():
    logits = np.zeros((5, 10), np.float32)
    with pytest.raises(ValueError, match="batch sizes differ"):
        losses.negative_log_likelihood(np.zeros(4, np.int32), logits)
    with pytest.raises(TypeError, match="integer class ids"):
        losses.negative_log_likelihood(np.zeros(5, np.float32), logits)
    with pytest.raises(TypeError, match="floating-point"):
        losses.negative_log_likelihood(np.zeros(5, np.int32), np.zeros((5, 10), np.int32))
    with pytest.raises(ValueError, match="class ids must lie in"):
        losses.negative_log_likelihood(np.array([0, 1, 2, 3, 10]), logits)
    with pytest.raises(ValueError, match="reduction must be one of"):
        losses.negative_log_likelihood(np.zeros(5, np.int32), logits, reduction="avg")
    with pytest.raises(ValueError, match="label_smoothing"):
        losses.sparse_cross_entropy(np.zeros(5, np.int32), logits, label_smoothing=1.0)


# --------------------------------------------------------------------------- masked sequence loss


def _sequence_batch(lengths, time=6, vocab=9):
    logits = (3 * RNG.normal(size=(len(lengths), time, vocab))).astype(np.float32)
    mask = np.arange(time)[None, :] < np.asarray(lengths)[:, None]
    labels = np.where(mask, RNG.integers(4, vocab, size=mask.shape), 0).astype(np.int32)
    return labels, logits, mask


def ref_masked_loss(labels, logits, mask, smoothing=0.0):
    per_token = ref_cross_entropy(labels, logits, smoothing)
    return per_token[mask].sum() / max(mask.sum(), 1)


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_masked_sequence_loss_averages_real_tokens_only(smoothing):
    labels, logits, mask = _sequence_batch([6, 2, 4])
    got = float(losses.masked_sequence_loss(labels, logits, mask, label_smoothing=smoothing))
    assert got == pytest.approx(ref_masked_loss(labels, logits, mask, smoothing), rel=1e-5)
    assert got != pytest.approx(ref_cross_entropy(labels, logits, smoothing).mean(), rel=1e-3)  # padding matters


def test_masked_sequence_loss_equals_keras_ignore_class():
    labels, logits, mask = _sequence_batch([6, 1, 3])
    keras_loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=0)
    assert float(losses.masked_sequence_loss(labels, logits, labels != 0)) == pytest.approx(
        float(keras_loss(labels, logits)), rel=1e-5)


def test_fully_padded_row_and_batch_give_no_nan():
    labels, logits, mask = _sequence_batch([3, 0, 5])
    got = float(losses.masked_sequence_loss(labels, logits, mask))
    assert got == pytest.approx(ref_masked_loss(labels, logits, mask), rel=1e-5)
    labels, logits, mask = _sequence_batch([0, 0])
    assert float(losses.masked_sequence_loss(labels, logits, mask)) == 0.0
    # ...and the gradient of an empty batch is zero, not NaN.
    logits_var = tf.Variable(logits)
    with tf.GradientTape() as tape:
        loss = losses.masked_sequence_loss(labels, logits_var, mask)
    assert np.all(tape.gradient(loss, logits_var).numpy() == 0)


def test_masked_mean_weights_and_garbage_in_padding():
    values = np.array([[1.0, 2.0, np.inf], [4.0, np.nan, 0.0]], np.float32)
    mask = np.array([[True, True, False], [True, False, False]])
    assert float(losses.masked_mean(values, mask)) == pytest.approx(7.0 / 3.0)
    weights = np.array([[1.0, 0.5, 0.0], [2.0, 0.0, 0.0]], np.float32)
    assert float(losses.masked_mean(values, weights)) == pytest.approx((1 + 1 + 8) / 3.5)
    assert float(losses.masked_mean(np.ones((2, 3), np.float32), np.zeros((2, 3), bool))) == 0.0


def test_masked_sequence_loss_without_mask_is_the_plain_mean():
    labels, logits, _ = _sequence_batch([6, 6])
    assert float(losses.masked_sequence_loss(labels, logits)) == pytest.approx(
        ref_cross_entropy(labels, logits).mean(), rel=1e-5)


def test_masked_sequence_loss_errors():
    labels, logits, mask = _sequence_batch([2, 3])
    with pytest.raises(ValueError, match=r"\(B, T, V\)"):
        losses.masked_sequence_loss(labels, logits[:, :, 0], mask)
    with pytest.raises(ValueError, match="mask: expected shape"):
        losses.masked_sequence_loss(labels, logits, mask[:, :5])
    with pytest.raises(ValueError, match="batch sizes differ"):
        losses.masked_sequence_loss(np.zeros((3, 6), np.int32), logits, mask)
    with pytest.raises(ValueError, match="non-negative"):
        losses.masked_mean(np.ones((2, 2), np.float32), -np.ones((2, 2), np.float32))
    with pytest.raises(TypeError, match="ragged"):
        losses.masked_mean([[1.0, 2.0], [1.0]], [[True, True], [True]])


# --------------------------------------------------------------------------- InfoNCE and temperature


@pytest.mark.parametrize("temperature", [0.07, 0.5, 1.0])
def test_symmetric_info_nce_matches_reference(temperature):
    image = (RNG.normal(size=(6, 8)) * RNG.uniform(0.5, 3, size=(6, 1))).astype(np.float32)
    text = (image + RNG.normal(size=(6, 8))).astype(np.float32)
    got = float(losses.symmetric_info_nce(image, text, temperature))
    assert got == pytest.approx(ref_info_nce(image, text, temperature), rel=1e-5)


def test_info_nce_is_symmetric_in_its_arguments_and_known_values():
    image = RNG.normal(size=(5, 4)).astype(np.float32)
    text = RNG.normal(size=(5, 4)).astype(np.float32)
    assert float(losses.symmetric_info_nce(image, text)) == pytest.approx(
        float(losses.symmetric_info_nce(text, image)), rel=1e-6)
    # All similarities equal: every choice is a 1-in-B guess, loss log(B).
    same = np.ones((5, 4), np.float32)
    assert float(losses.symmetric_info_nce(same, same, 0.1)) == pytest.approx(math.log(5), rel=1e-6)
    # Orthogonal perfect pairs at a low temperature: loss near 0.
    eye = np.eye(4, dtype=np.float32)
    assert float(losses.symmetric_info_nce(eye, 2 * eye, 0.01)) < 1e-6


def test_info_nce_from_logits_uses_both_directions():
    logits = RNG.normal(size=(4, 4))
    labels = np.arange(4)
    expected = (ref_cross_entropy(labels, logits).mean() + ref_cross_entropy(labels, logits.T).mean()) / 2
    assert float(losses.info_nce_from_logits(logits)) == pytest.approx(expected, rel=1e-10)
    similarity = np_(losses.similarity_logits(np.eye(3), np.eye(3), temperature=0.5))
    np.testing.assert_allclose(similarity, 2 * np.eye(3))


def test_info_nce_errors_name_the_modalities():
    with pytest.raises(ValueError, match="batch mismatch"):
        losses.symmetric_info_nce(np.ones((8, 4), np.float32), np.ones((6, 4), np.float32))
    with pytest.raises(ValueError, match="Embedding size mismatch"):
        losses.symmetric_info_nce(np.ones((3, 4), np.float32), np.ones((3, 5), np.float32))
    with pytest.raises(ValueError, match=r"image_embeddings: expected shape \(B, D\)"):
        losses.symmetric_info_nce(np.ones((3,), np.float32), np.ones((3, 5), np.float32))
    with pytest.raises(ValueError, match="temperature must be >"):
        losses.symmetric_info_nce(np.ones((3, 4), np.float32), np.ones((3, 4), np.float32), 0.0)
    with pytest.raises(ValueError, match=r"square \(B, B\)"):
        losses.info_nce_from_logits(np.ones((3, 4), np.float32))


def test_learned_temperature_scales_and_is_clipped_like_clip():
    layer = losses.LearnedTemperature()
    assert float(layer.temperature) == pytest.approx(0.07, rel=1e-6)
    np.testing.assert_allclose(np_(layer(np.array([[0.7, -0.07]], np.float32))), [[10.0, -1.0]], rtol=1e-5)
    layer.log_temperature.assign(math.log(1e-4))  # set below the floor by hand
    assert float(layer.temperature) == pytest.approx(0.01, rel=1e-6)  # 1/T <= 100
    # The constraint clips the weight itself after each optimizer step.
    layer = losses.LearnedTemperature(initial_temperature=0.02)
    optimizer = keras.optimizers.SGD(learning_rate=100.0)
    with tf.GradientTape() as tape:
        loss = -ops.sum(layer(np.ones((2, 2), np.float32)))  # rewards a smaller T
    optimizer.apply_gradients(zip(tape.gradient(loss, layer.trainable_weights), layer.trainable_weights))
    assert float(layer.log_temperature) == pytest.approx(math.log(0.01), rel=1e-6)


def test_learned_temperature_trains_inside_info_nce():
    layer = losses.LearnedTemperature(initial_temperature=1.0)
    optimizer = keras.optimizers.Adam(learning_rate=0.1)
    eye = np.eye(4, dtype=np.float32)
    for _ in range(5):
        with tf.GradientTape() as tape:
            loss = losses.info_nce_from_logits(layer(eye))  # perfect pairs: a lower T is better
        optimizer.apply_gradients(zip(tape.gradient(loss, layer.trainable_weights), layer.trainable_weights))
    assert float(layer.temperature) < 0.7


def test_learned_temperature_round_trips_through_keras_file(tmp_path):
    inputs = keras.Input((3,))
    model = keras.Model(inputs, losses.LearnedTemperature(0.2, min_temperature=0.05, max_temperature=0.5)(inputs))
    model.layers[-1].log_temperature.assign(math.log(0.3))
    path = tmp_path / "temperature.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    layer = loaded.layers[-1]
    assert isinstance(layer, losses.LearnedTemperature)
    assert (layer.min_temperature, layer.max_temperature, layer.initial_temperature) == (0.05, 0.5, 0.2)
    assert float(layer.temperature) == pytest.approx(0.3, rel=1e-6)
    x = RNG.normal(size=(2, 3)).astype(np.float32)
    np.testing.assert_allclose(np_(loaded(x)), np_(model(x)), rtol=1e-6)


def test_learned_temperature_validates_its_arguments():
    with pytest.raises(ValueError, match="min_temperature <= initial_temperature"):
        losses.LearnedTemperature(initial_temperature=0.001)
    with pytest.raises(ValueError, match="min_temperature must be >"):
        losses.LearnedTemperature(min_temperature=0.0)
    with pytest.raises(TypeError, match="floating-point"):
        losses.LearnedTemperature()(np.ones((2, 2), np.int32))


def test_losses_module_uses_keras_ops_only():
    source = inspect.getsource(losses)
    assert "import tensorflow" not in source and "tf." not in source


def test_shared_input_checks_keep_float64_and_name_the_problem():
    assert keras.backend.standardize_dtype(losses.float_tensor(np.zeros(2, np.float64), "x").dtype) == "float64"
    assert keras.backend.standardize_dtype(losses.float_tensor(np.zeros(2, np.float16), "x").dtype) == "float32"
    with pytest.raises(TypeError, match="swapped"):
        losses.float_tensor(np.zeros(2, np.int32), "x")
    logits = np.zeros((2, 3), np.float32)
    assert np_(losses.check_labels([0, 2], logits)).tolist() == [0, 2]
    with pytest.raises(ValueError, match=r"must lie in \[0, 3\)"):
        losses.check_labels([0, 3], logits)
    assert np_(losses.check_mask([[1.0, 0.0]], (1, 2))).tolist() == [[1.0, 0.0]]
    with pytest.raises(TypeError, match="bool mask"):
        losses.check_mask(np.array([["a", "b"]]), (1, 2))


# Issue #16: bad axis / epsilon arguments raise clear errors instead of TensorFlow's.
_Z = np.zeros((2, 3), np.float32)


@pytest.mark.parametrize("call,error,word", [
    (lambda: losses.log_softmax(_Z, axis=5), ValueError, "axis"),
    (lambda: losses.log_softmax(_Z, axis="1"), TypeError, "axis"),
    (lambda: losses.log_softmax(np.zeros((2, 0), np.float32)), ValueError, "empty"),
    (lambda: losses.l2_normalize(_Z, axis=2.5), TypeError, "axis"),
    (lambda: losses.l2_normalize(_Z, epsilon=None), TypeError, "epsilon"),
    (lambda: losses.l2_normalize(_Z, epsilon=-1.0), ValueError, "epsilon"),
    (lambda: losses.check_labels(np.array([0, 1]), None), TypeError, "array or tensor"),
])
def test_bad_inputs_raise_clear_errors(call, error, word):
    with pytest.raises(error, match=word):
        call()
