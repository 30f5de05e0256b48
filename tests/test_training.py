"""Lesson 05 training helpers: the warmup + cosine schedule, the step loop's batch order, the colour task,
compute_loss. (The step loop itself trains lesson 08's model in tests/test_mllm.py.)"""

import math

import keras
import numpy as np
import pytest

from mmlm_course import losses, shapeworld, training


def ref_warmup_cosine(step, peak, total, warmup, final):
    if step < warmup:
        return peak * step / warmup
    progress = min((step - warmup) / (total - warmup), 1.0)
    return final + (peak - final) * 0.5 * (1 + math.cos(math.pi * progress))


@pytest.mark.parametrize("warmup,final", [(10, 0.0), (0, 1e-5), (25, 2e-4)])
def test_warmup_cosine_matches_reference_and_keras_builtin(warmup, final):
    peak, total = 1e-3, 100
    schedule = training.WarmupCosineDecay(peak, total, warmup, final)
    steps = range(0, 130)
    got = training.schedule_values(schedule, steps)
    expected = [ref_warmup_cosine(s, peak, total, warmup, final) for s in steps]
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-10)
    builtin = keras.optimizers.schedules.CosineDecay(
        0.0 if warmup else peak, total - warmup, alpha=final / peak,
        warmup_target=peak if warmup else None, warmup_steps=warmup)
    np.testing.assert_allclose(got, training.schedule_values(builtin, steps), rtol=1e-5, atol=1e-10)
    assert got.max() == pytest.approx(peak, rel=1e-6) and got[-1] == pytest.approx(final, abs=1e-10)


def test_warmup_cosine_validates_arguments():
    with pytest.raises(ValueError, match="warmup_steps"):
        training.WarmupCosineDecay(1e-3, 10, warmup_steps=10)
    with pytest.raises(ValueError, match="peak_learning_rate"):
        training.WarmupCosineDecay(0.0, 10)
    with pytest.raises(ValueError, match="final_learning_rate"):
        training.WarmupCosineDecay(1e-3, 10, final_learning_rate=1e-2)
    with pytest.raises(TypeError, match="total_steps"):
        training.WarmupCosineDecay(1e-3, 10.5)


def test_schedule_serializes_inside_an_optimizer_and_a_keras_file(tmp_path):
    schedule = training.WarmupCosineDecay(1e-3, 50, 5, 1e-5)
    restored = keras.optimizers.schedules.deserialize(keras.optimizers.schedules.serialize(schedule))
    assert isinstance(restored, training.WarmupCosineDecay) and restored.get_config() == schedule.get_config()
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(3)(inputs))
    model.compile(keras.optimizers.Adam(schedule), loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(np.ones((8, 4), np.float32), np.zeros(8, np.int32), epochs=1, verbose=0)
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    assert isinstance(loaded.optimizer._learning_rate, training.WarmupCosineDecay)


def test_color_classification_data_is_deterministic_and_labelled():
    images, labels = training.color_classification_data(12, "train", seed=3, image_size=24)
    assert images.shape == (12, 24, 24, 3) and images.dtype == np.uint8 and labels.dtype == np.int32
    again, labels_again = training.color_classification_data(12, "train", seed=3, image_size=24)
    np.testing.assert_array_equal(images, again)
    np.testing.assert_array_equal(labels, labels_again)
    other, _ = training.color_classification_data(12, "validation", seed=3, image_size=24)
    assert not np.array_equal(images, other)
    for image, label in zip(images, labels):  # the most saturated pixel has the object's colour
        pixels = image.reshape(-1, 3).astype(int)
        brightest = pixels[np.argmax(pixels.max(1) - pixels.min(1))]
        nearest = np.argmin([np.abs(brightest - np.array(c)).sum() for c in shapeworld.COLORS.values()])
        assert nearest == label
    with pytest.raises(ValueError, match="split"):
        training.color_classification_data(2, "dev")
    with pytest.raises(TypeError, match="num_examples"):
        training.color_classification_data(2.0)


def test_batch_indices_are_a_deterministic_function_of_the_step():
    rows, batch = 100, 32                     # 3 full batches per epoch, 4 rows dropped
    first = [training.batch_indices(rows, batch, seed=0, step=s) for s in range(6)]
    again = [training.batch_indices(rows, batch, seed=0, step=s) for s in range(6)]
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    epoch0 = np.concatenate(first[:3])
    assert len(set(epoch0.tolist())) == 96                   # no row twice within an epoch
    assert not np.array_equal(first[0], first[3])            # a new permutation each epoch
    assert not np.array_equal(first[0], training.batch_indices(rows, batch, seed=1, step=0))
    with pytest.raises(ValueError, match="larger than"):
        training.batch_indices(10, 32, 0, 0)


class NLLModel(keras.Model):
    """A model whose loss is defined by overriding compute_loss (portable, no GradientTape)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.dense = keras.layers.Dense(3)

    def call(self, x):
        return self.dense(x)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        return losses.negative_log_likelihood(y, y_pred, reduction="mean")


def test_compute_loss_override_trains_like_the_compiled_loss():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 5)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int32) + (x[:, 1] > 0).astype(np.int32)
    histories = []
    for custom in (True, False):
        keras.utils.set_random_seed(0)
        if custom:
            model = NLLModel()
            model.compile(keras.optimizers.SGD(0.1), metrics=["accuracy"])
        else:
            inputs = keras.Input((5,))
            model = keras.Model(inputs, keras.layers.Dense(3)(inputs))
            model.compile(keras.optimizers.SGD(0.1), metrics=["accuracy"],
                          loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        histories.append(model.fit(x, y, batch_size=16, epochs=3, shuffle=False, verbose=0).history)
    np.testing.assert_allclose(histories[0]["loss"], histories[1]["loss"], rtol=1e-5)
    assert histories[0]["loss"][-1] < histories[0]["loss"][0]


def _tiny_regression(seed=0):
    keras.utils.set_random_seed(seed)
    inputs = {"a": keras.Input((3,), name="a"), "b": keras.Input((2,), name="b")}
    joined = keras.layers.Concatenate()([inputs["a"], inputs["b"]])
    model = keras.Model(inputs, keras.layers.Dense(1)(joined))
    model.compile(keras.optimizers.Adam(1e-2), loss="mse")
    return model


def test_train_steps_prefetch_and_plain_numpy_train_the_same_batches():
    rng = np.random.default_rng(0)
    x = {"a": rng.normal(size=(40, 3)).astype(np.float32), "b": rng.normal(size=(40, 2)).astype(np.float32)}
    y = rng.normal(size=(40, 1)).astype(np.float32)
    results = []
    for prefetch in (False, True):
        model, seen = _tiny_regression(), []
        log = training.train_steps(model, x, y, 9, batch_size=8, seed=4, log_every=4, prefetch=prefetch,
                                   on_step=lambda step, logs: seen.append((step, logs["loss"])))
        assert log["steps"] == [4, 8, 9] and [s for s, _ in seen] == list(range(1, 10))
        results.append(([loss for _, loss in seen], model.get_weights()))
    np.testing.assert_allclose(results[0][0], results[1][0], rtol=1e-6)
    for a, b in zip(results[0][1], results[1][1]):
        np.testing.assert_allclose(a, b, rtol=1e-6)


def test_train_steps_checks_its_arguments():
    model = _tiny_regression()
    x = {"a": np.zeros((10, 3), np.float32), "b": np.zeros((9, 2), np.float32)}
    with pytest.raises(ValueError, match="same number of rows"):
        training.train_steps(model, x, np.zeros((10, 1), np.float32), 2)
    x["b"] = np.zeros((10, 2), np.float32)
    with pytest.raises(ValueError, match="steps"):
        training.train_steps(model, x, np.zeros((10, 1), np.float32), 2, batch_size=5, start_step=3)
    with pytest.raises(TypeError, match="batch_size"):
        training.train_steps(model, x, np.zeros((10, 1), np.float32), 2, batch_size=5.0)
    log = training.train_steps(model, x, np.zeros((10, 1), np.float32), 3, batch_size=5, start_step=3)
    assert log["steps"] == [] and int(model.optimizer.iterations) == 0          # nothing left to train


# Issue #16: huge sizes and bad seeds raise clear errors (no multi-minute permutation or allocation).
@pytest.mark.parametrize("call,error,word", [
    (lambda: training.batch_indices(10**10, 4, 0, 0), ValueError, "num_rows"),
    (lambda: training.color_classification_data(10**9), ValueError, "GiB"),
    (lambda: training.color_classification_data(4, seed=None), TypeError, "seed"),
    (lambda: training.color_classification_data(4, seed=-1), ValueError, "seed"),
])
def test_bad_inputs_raise_clear_errors(call, error, word):
    with pytest.raises(error, match=word):
        call()
