"""Plain data: what a check compares, and what crosses from the grader's sandbox to the grader.

A learner's function may return anything: a NumPy array, a TensorFlow or JAX tensor, a list,
a `str` subclass whose ``__eq__`` always says yes. `to_plain` turns the result into plain
data of exact built-in types (``bool``, ``int``, ``float``, ``complex``, ``str``, ``bytes``,
``None``, ``list``, ``tuple``, ``dict``, ``set``, NumPy scalars and arrays of numbers, booleans
or strings), copying everything, so a check never runs the learner's comparison methods and
never holds an object the learner can still change.

`dumps` / `loads` serialise plain data as JSON (arrays as base64 bytes with their dtype and
shape), never with pickle: `loads` only ever builds the types above, whatever bytes it gets.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
from typing import Any

import numpy as np

MAX_DEPTH = 32
MAX_ITEMS = 20_000_000            # array elements and container items in one value
_TENSOR_MODULES = ("tensorflow", "keras", "jax", "jaxlib", "torch")
_ARRAY_KINDS = "biufcUS"           # bool, ints, floats, complex, str, bytes: never object arrays


_EXACT = {int: int.__int__, float: float.__float__, complex: complex.__complex__, str: str.__str__,
          bytes: bytes.__bytes__}


class NotPlain(TypeError):
    """A value with no plain-data form (a model, a generator, an array of objects...)."""


def to_plain(value: Any) -> Any:
    """A copy of ``value`` made only of exact plain types; `NotPlain` for anything else."""
    budget = [MAX_ITEMS]
    return _plain(value, 0, budget)


def _spend(budget: list, count: int) -> None:
    budget[0] -= count
    if budget[0] < 0:
        raise NotPlain(f"a value with more than {MAX_ITEMS:,} items")


def _plain(value: Any, depth: int, budget: list) -> Any:
    if depth > MAX_DEPTH:
        raise NotPlain(f"a value nested more than {MAX_DEPTH} levels deep")
    _spend(budget, 1)
    kind = type(value)
    if value is None or kind in (bool, int, float, complex, str, bytes):
        return value
    if isinstance(value, np.generic):
        return _array(np.asarray(value), budget)[()]
    if isinstance(value, np.ndarray):
        return _array(value, budget)
    for base, exact in _EXACT.items():               # a subclass loses its methods (its __eq__ too)
        if isinstance(value, base):
            return exact(value)
    if isinstance(value, (list, tuple)):
        items = [_plain(item, depth + 1, budget) for item in list.__iter__(value)] if isinstance(value, list) \
            else [_plain(item, depth + 1, budget) for item in tuple.__iter__(value)]
        return items if isinstance(value, list) else tuple(items)
    if isinstance(value, dict):
        return {_plain(k, depth + 1, budget): _plain(v, depth + 1, budget) for k, v in dict.items(value)}
    if isinstance(value, (set, frozenset)):
        return {_plain(item, depth + 1, budget) for item in (set.__iter__(value) if isinstance(value, set)
                                                             else frozenset.__iter__(value))}
    module = (type(value).__module__ or "").split(".")[0]
    if module in _TENSOR_MODULES and hasattr(value, "shape") and hasattr(value, "dtype"):
        try:
            array = np.asarray(value)
        except Exception as error:                   # a symbolic tensor has no values
            raise NotPlain(f"a {type(value).__name__} with no values ({error})") from None
        return _array(array, budget)
    raise NotPlain(f"a {type(value).__module__}.{type(value).__qualname__}")


def _array(array: np.ndarray, budget: list) -> np.ndarray:
    if array.dtype.kind not in _ARRAY_KINDS or array.dtype.fields is not None:
        raise NotPlain(f"an array of dtype {array.dtype} (only numbers, booleans or strings)")
    _spend(budget, int(array.size))
    return np.array(array, copy=True, subok=False, order="C")


# --------------------------------------------------------------------------- serialising

def _encode(value: Any) -> Any:
    kind = type(value)
    if value is None or kind in (bool, int, str):
        return value
    if kind is float:
        return value if math.isfinite(value) else {"t": "float", "v": repr(value)}
    if kind is complex:
        return {"t": "complex", "v": [repr(value.real), repr(value.imag)]}
    if kind is bytes:
        return {"t": "bytes", "v": base64.b64encode(value).decode("ascii")}
    if kind is list:
        return [_encode(item) for item in value]
    if kind is tuple:
        return {"t": "tuple", "v": [_encode(item) for item in value]}
    if kind is dict:
        return {"t": "dict", "v": [[_encode(k), _encode(v)] for k, v in value.items()]}
    if kind is set:
        return {"t": "set", "v": sorted((_encode(item) for item in value), key=json.dumps)}
    if isinstance(value, np.generic):
        return {"t": "scalar", "v": _encode(np.asarray(value))}
    if kind is np.ndarray:
        return {"t": "array", "dtype": value.dtype.str, "shape": list(value.shape),
                "v": base64.b64encode(np.ascontiguousarray(value).tobytes()).decode("ascii")}
    raise NotPlain(f"a {kind.__module__}.{kind.__qualname__} (call to_plain first)")


def _decode(data: Any) -> Any:
    if data is None or type(data) in (bool, int, float, str):
        return data
    if type(data) is list:
        return [_decode(item) for item in data]
    if type(data) is not dict or set(data) - {"t", "v", "dtype", "shape"}:
        raise ValueError(f"not plain data: {str(data)[:80]}")
    tag, v = data.get("t"), data.get("v")
    if tag == "float":
        return float(v) if v in ("nan", "inf", "-inf") else _bad(data)
    if tag == "complex":
        return complex(float(v[0]), float(v[1]))
    if tag == "bytes":
        return base64.b64decode(v, validate=True)
    if tag == "tuple":
        return tuple(_decode(item) for item in v)
    if tag == "dict":
        return {_decode(k): _decode(item) for k, item in v}
    if tag == "set":
        return {_decode(item) for item in v}
    if tag == "scalar":
        array = _decode(v)
        return array[()] if type(array) is np.ndarray and array.shape == () else _bad(data)
    if tag == "array":
        dtype = np.dtype(data["dtype"])
        if dtype.kind not in _ARRAY_KINDS or dtype.fields is not None:
            return _bad(data)
        shape = tuple(int(n) for n in data["shape"])
        raw = base64.b64decode(v, validate=True)
        if len(raw) != dtype.itemsize * math.prod(shape):
            return _bad(data)
        return np.frombuffer(raw, dtype=dtype).reshape(shape).copy()
    return _bad(data)


def _bad(data):
    raise ValueError(f"not plain data: {str(data)[:80]}")


def dumps(value: Any) -> str:
    """Plain data as one line of JSON (no newline inside)."""
    return json.dumps(_encode(value), separators=(",", ":"), allow_nan=False)


def loads(text: str | bytes) -> Any:
    """Plain data back from `dumps`; `ValueError` for anything `dumps` cannot have written."""
    try:
        return _decode(json.loads(text))
    except ValueError:
        raise
    except Exception as error:                       # wrong shapes of JSON: a KeyError, a TypeError...
        raise ValueError(f"not plain data ({type(error).__name__}: {error})") from None


def digest(value: Any) -> str:
    """A short fingerprint of a check's arguments; objects count by their type's name."""
    def shape(item):
        try:
            return to_plain(item)
        except NotPlain:
            return f"<{type(item).__module__}.{type(item).__qualname__}>"
    if isinstance(value, (list, tuple)):
        value = [shape(item) for item in value]
    elif isinstance(value, dict):
        value = {str(k): shape(v) for k, v in value.items()}
    else:
        value = shape(value)
    return hashlib.sha256(dumps(value).encode()).hexdigest()[:16]
