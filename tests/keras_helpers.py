"""Helpers the layer tests share: NumPy views of tensors and a `.keras` round trip."""

import keras
import numpy as np


def to_numpy(x):
    return keras.ops.convert_to_numpy(x)


def round_trip(model, inputs, tmp_path, rtol=1e-7, atol=1e-6):
    """Save ``model`` to a ``.keras`` file, load it back, check that every output is the same
    on ``inputs``, and return the loaded model."""
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    for expected, got in zip(keras.tree.flatten(model(inputs)), keras.tree.flatten(loaded(inputs))):
        np.testing.assert_allclose(to_numpy(got), to_numpy(expected), rtol=rtol, atol=atol)
    return loaded
