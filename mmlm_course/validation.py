"""Small argument checks shared by the lesson modules.

Every check raises an error that names the argument, says what was expected and shows
what was received, so a learner who passes a wrong value reads how to fix it.
"""

from __future__ import annotations

import keras
import numpy as np


def dtype_name(x) -> str:
    """The Keras name of an array's or tensor's dtype, e.g. ``"float32"`` or ``"int64"``."""
    return keras.backend.standardize_dtype(x.dtype)


def static_shape(x) -> tuple:
    """The static shape as a tuple (entries may be None for symbolic tensors)."""
    return tuple(x.shape)


def positive_int(value, name: str) -> int:
    """``value`` as an int >= 1; ValueError for anything else (bools included)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}.")
    return int(value)


def require_int(name: str, value, low: int | None = None, high: int | None = None) -> int:
    """``value`` as an int in ``[low, high]`` (either bound optional).

    TypeError when it is not an int (a bool or a float such as ``3.0`` included),
    ValueError when it is out of range.
    """
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be a Python int, got {type(value).__name__} {value!r}.")
    value = int(value)
    if low is not None and value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}.")
    if high is not None and value > high:
        raise ValueError(f"{name} must be <= {high}, got {value}.")
    return value
