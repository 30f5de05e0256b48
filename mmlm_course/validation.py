"""Argument checks shared by every lesson module: one convention, one place.

Every check takes the value first and its name second (``require_int(value, "batch_size",
low=1)``), raises ``TypeError`` when the *kind* of value is wrong (a float where an int is
needed, an int array where floats are needed) and ``ValueError`` when the kind is right but
the value is not (out of range, wrong rank, mismatched sizes). Each message names the
argument, says what was expected, shows what was received and, where it helps, how to fix it.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Sequence

import keras
import numpy as np


def dtype_name(x) -> str:
    """The Keras name of an array's or tensor's dtype, e.g. ``"float32"`` or ``"int64"``."""
    if not hasattr(x, "dtype"):
        raise TypeError(f"expected an array or tensor, got {type(x).__name__} {x!r:.60}; "
                        "convert it with np.asarray(...) first.")
    return keras.backend.standardize_dtype(x.dtype)


def static_shape(x) -> tuple:
    """The static shape as a tuple (entries may be None for symbolic tensors)."""
    if not hasattr(x, "shape"):
        raise TypeError(f"expected an array or tensor, got {type(x).__name__} {x!r:.60}; "
                        "convert it with np.asarray(...) first.")
    return tuple(x.shape)


def same_dim(a, b) -> bool:
    """Two sizes agree, where an unknown size (None) agrees with anything."""
    return a is None or b is None or a == b


def same_shape(a: tuple, b: tuple) -> bool:
    """Two static shapes agree axis by axis (None matches anything)."""
    return len(a) == len(b) and all(same_dim(x, y) for x, y in zip(a, b))


# --------------------------------------------------------------------------- Python values


def require_int(value, name: str, low: int | None = None, high: int | None = None) -> int:
    """``value`` as a Python int in ``[low, high]`` (either bound optional).

    TypeError when it is not an integer (bools and floats such as ``3.0`` included);
    ValueError when it is out of range.
    """
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}.")
    value = int(value)
    if low is not None and value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}.")
    if high is not None and value > high:
        raise ValueError(f"{name} must be <= {high}, got {value}.")
    return value


def positive_int(value, name: str) -> int:
    """``value`` as an int >= 1 (`require_int` with ``low=1``)."""
    return require_int(value, name, low=1)


def require_float(value, name: str, low: float | None = None, high: float | None = None,
                  low_open: bool = False, high_open: bool = False) -> float:
    """``value`` as a finite Python float in the given range (ints accepted, bools not).

    ``low_open`` / ``high_open`` exclude the bound itself (``(0, 1)`` rather than ``[0, 1]``).
    """
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__} {value!r}.")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value}.")
    if low is not None and (value <= low if low_open else value < low):
        raise ValueError(f"{name} must be {'>' if low_open else '>='} {low}, got {value}.")
    if high is not None and (value >= high if high_open else value > high):
        raise ValueError(f"{name} must be {'<' if high_open else '<='} {high}, got {value}.")
    return value


def require_rate(value, name: str = "dropout") -> float:
    """A dropout-style rate in [0, 1)."""
    return require_float(value, name, low=0.0, high=1.0, high_open=True)


def require_choice(value, options: Sequence, name: str):
    """``value`` if it is one of ``options``; ValueError naming the options otherwise."""
    try:
        known = value in options
    except TypeError:  # an unhashable value tested against a set or dict
        known = False
    if not known:
        raise ValueError(f"{name} must be one of {tuple(options)}, got {value!r}.")
    return value


def int_tuple(values, name: str) -> tuple[int, ...]:
    """One positive int or a non-empty sequence of them, as a tuple."""
    if isinstance(values, (int, np.integer)) and not isinstance(values, bool):
        values = (values,)
    if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
        raise TypeError(f"{name} must be an int or a sequence of ints, got {type(values).__name__} {values!r}.")
    values = tuple(values)
    if not values:
        raise ValueError(f"{name} must hold at least one value, got an empty sequence.")
    return tuple(positive_int(v, f"{name}[{i}]") for i, v in enumerate(values))


def require_bool(value, name: str) -> bool:
    """``value`` as a Python bool (NumPy bools and the integers 0 and 1 accepted, None read as
    False, as the course's flags always have); TypeError for anything else, so that ``"no"`` or
    ``2`` is not taken as True."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value in (0, 1):
        return bool(value)
    if value is not None and not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {type(value).__name__} {value!r:.60}.")
    return bool(value)


def require_path(value, name: str = "path") -> Path:
    """``value`` (a str or os.PathLike, not empty) as a Path; TypeError / ValueError otherwise."""
    if not isinstance(value, (str, os.PathLike)) or isinstance(os.fspath(value), bytes):
        raise TypeError(f"{name} must be a file path (str or pathlib.Path), got {type(value).__name__} {value!r:.60}.")
    if not os.fspath(value):
        raise ValueError(f"{name} must be a file path, got an empty string.")
    return Path(value)


def require_file(value, what: str, name: str = "path") -> Path:
    """``value`` as the Path of an existing file; ``what`` names the kind, e.g. ``"sound"``.

    TypeError for a non-path, ValueError for a folder or a name the system refuses (too
    long, ...), FileNotFoundError for a missing file.
    """
    path = require_path(value, name)
    try:
        if path.is_dir():
            article = "an" if what[:1] in "aeiou" else "a"
            raise ValueError(f"{path} is a folder, not {article} {what} file: pass the path of one file.")
        if not path.is_file():
            raise FileNotFoundError(f"No {what} file at {path}.")
    except (FileNotFoundError, ValueError):
        raise
    except OSError as error:                       # e.g. a name longer than the system allows
        raise ValueError(f"{name}: cannot open {str(path)[:80]!r} ({error.strerror}); "
                         "pass the path of one file.") from None
    return path


def require_str(value, name: str, allow_empty: bool = False) -> str:
    """``value`` if it is a str (non-empty unless ``allow_empty``): TypeError / ValueError otherwise."""
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, got {type(value).__name__} {value!r:.60}.")
    if not value and not allow_empty:
        raise ValueError(f"{name} must be a non-empty string, got ''.")
    return value


def require_instance(value, types, name: str, fix: str = ""):
    """``value`` if it is an instance of ``types`` (a class or a tuple of them); TypeError
    naming the expected class(es), what was received and ``fix`` (how to make one) otherwise."""
    if not isinstance(value, types):
        names = " or ".join(t.__name__ for t in (types if isinstance(types, tuple) else (types,)))
        raise TypeError(f"{name} must be a {names}, got {type(value).__name__} {value!r:.60}"
                        + (f"; {fix}" if fix else "") + ".")
    return value


def require_rng(rng, name: str = "rng", optional: bool = False) -> np.random.Generator | None:
    """``rng`` if it is a NumPy Generator (or None with ``optional``); TypeError otherwise."""
    if rng is None and optional:
        return None
    return require_instance(rng, np.random.Generator, name, "pass np.random.default_rng(seed)")


def require_finite(value, name: str) -> None:
    """TypeError unless ``value`` is a number or an array of numbers; ValueError for NaN / inf.
    The value itself is left as it is (so a float stays a float and an array an array)."""
    try:
        array = None if value is None or isinstance(value, (str, bytes)) else np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        array = None
    if array is None:
        raise TypeError(f"{name} must be a number (or an array of numbers), got {type(value).__name__} {value!r:.60}.")
    if not np.isfinite(array).all():
        raise ValueError(f"{name} must be finite, got {value!r:.60} (NaN or inf).")


def require_scene(scene, name: str = "scene"):
    """``scene`` if it is a `shapeworld.Scene` (TypeError saying where to get one otherwise)."""
    from mmlm_course.shapeworld import Scene  # imported here: shapeworld itself imports this module

    if not isinstance(scene, Scene):
        raise TypeError(f"{name}: expected a shapeworld.Scene, got {type(scene).__name__}; take one from "
                        "shapeworld.generate(...).scenes or make one with shapeworld.sample_scene(rng).")
    return scene


def require_relations(relations, name: str = "relations") -> None:
    """ValueError unless ``relations`` is a list of some of `shapeworld.RELATIONS`."""
    from mmlm_course.shapeworld import RELATIONS

    try:
        known = not isinstance(relations, str) and set(relations) <= set(RELATIONS)
    except TypeError:  # not iterable, or unhashable items
        known = False
    if not known:
        raise ValueError(f"{name} must be a list of some of {RELATIONS}, got {relations!r:.80}.")


MAX_ARRAY_BYTES = 4 * 2**30  # far above anything the course makes; beyond it a request is a typo


def require_array_budget(shape: Sequence[int], itemsize: int, name: str) -> None:
    """ValueError when an array of ``shape`` (``itemsize`` bytes per value) would exceed
    `MAX_ARRAY_BYTES`, before any time or memory is spent on it; ``name`` names the arguments."""
    nbytes = math.prod(int(n) for n in shape) * itemsize
    if nbytes > MAX_ARRAY_BYTES:
        raise ValueError(f"{name}: the result would be an array of shape {tuple(shape)}, {nbytes / 2**30:.3g} GiB, "
                         f"more than the {MAX_ARRAY_BYTES // 2**30} GiB allowed; use smaller values.")


# --------------------------------------------------------------------------- arrays and tensors


def as_array(x, name: str):
    """``x`` as something with a shape and a dtype: tensors and arrays pass through; lists
    and Python numbers become NumPy arrays (Python floats in the Keras default float type).

    TypeError for None, for ragged lists and for arrays of Python objects.
    """
    if x is None:
        raise TypeError(f"{name}: expected an array or tensor, got None.")
    if not hasattr(x, "shape") or not hasattr(x, "dtype"):
        try:
            x = np.asarray(x)
        except (ValueError, TypeError):
            raise TypeError(f"{name}: expected a rectangular array of numbers, got a ragged "
                            f"{type(x).__name__}; pad the rows to one length first "
                            "(preprocessing.pad_sequences).") from None
        if x.dtype == object:
            raise TypeError(f"{name}: expected numbers, got an array of Python objects (ragged lists?); pad the "
                            "rows to one length first (preprocessing.pad_sequences).")
        if x.dtype == np.float64:
            x = x.astype(keras.backend.floatx())
    if isinstance(x, np.ndarray) and x.dtype.kind in "USO":
        raise TypeError(f"{name}: expected numbers, got an array of {'strings' if x.dtype.kind != 'O' else 'objects'} "
                        f"(dtype {x.dtype}); encode text with a Tokenizer first, or convert with np.asarray(x, float).")
    return x


def require_rank(x, ranks: Sequence[int], name: str, layout: str) -> tuple:
    """Check that ``x`` has one of ``ranks``; return its static shape. ``layout`` names
    the axes in the message, e.g. ``"(batch, time, features)"``."""
    shape = static_shape(x)
    if len(shape) not in ranks:
        raise ValueError(f"{name}: expected shape {layout} (rank {' or '.join(map(str, ranks))}), "
                         f"got shape {shape} (rank {len(shape)}).")
    return shape


def is_float(x) -> bool:
    return dtype_name(x).startswith(("float", "bfloat"))


def is_int(x) -> bool:
    return dtype_name(x).startswith(("int", "uint"))


def require_float_dtype(x, name: str, fix: str = "") -> None:
    """TypeError unless ``x`` holds floating-point values."""
    if not is_float(x):
        raise TypeError(f"{name}: expected a floating-point tensor, got dtype {dtype_name(x)}; "
                        + (fix or f"convert it with keras.ops.cast({name}, 'float32')") + ".")


def require_int_dtype(x, name: str, what: str = "integer token ids") -> None:
    """TypeError unless ``x`` holds integers."""
    if not is_int(x):
        raise TypeError(f"{name}: expected {what}, got dtype {dtype_name(x)}; convert it with "
                        f"keras.ops.cast({name}, 'int32').")


def write_error(path: Path, error: OSError) -> ValueError:
    """The ValueError to raise when writing ``path`` failed with ``error`` (a missing folder, ...)."""
    return ValueError(f"Cannot write {str(path)[:80]!r} ({error.strerror}): does its folder exist?")


def require_same_dtype(a, b, a_name: str, b_name: str) -> None:
    """TypeError unless two tensors share one dtype (TensorFlow would refuse to add them)."""
    if dtype_name(a) != dtype_name(b):
        raise TypeError(f"{a_name} and {b_name} must share one float dtype, got {dtype_name(a)} and {dtype_name(b)}; "
                        f"cast one with keras.ops.cast({b_name}, '{dtype_name(a)}').")


def require_bool_mask(mask, name: str) -> None:
    """TypeError unless ``mask`` is boolean (True marks a real, attendable position)."""
    if dtype_name(mask) != "bool":
        raise TypeError(f"{name}: expected a boolean mask (True = real position), got dtype {dtype_name(mask)}; "
                        f"convert it with keras.ops.cast({name}, 'bool') or ids != 0 (an additive 0/-inf mask "
                        "is not accepted).")


def concrete_values(x) -> np.ndarray | None:
    """The values of ``x`` as NumPy when they exist now, or None inside a traced graph."""
    if isinstance(x, np.ndarray):
        return x
    if keras.backend.is_keras_tensor(x):
        return None
    try:
        return np.asarray(keras.ops.convert_to_numpy(x))
    except Exception:  # a traced tensor has no values yet
        return None
