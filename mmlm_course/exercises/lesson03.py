"""Checks for lesson 03: encoders (parameter counts, patches, masked pooling, attention, the block)."""

from __future__ import annotations

import types
import warnings

import keras
import numpy as np
from hypothesis import strategies as st

from mmlm_course import attention, encoders
from mmlm_course.exercises import Checker, draw_cases, exercise
from mmlm_course.exercises.layers import (expect_layer_class, instantiate, layer_snapshot, randomise_weights,
                                          rebuild_layer)


def _np(value) -> np.ndarray:
    return np.asarray(value)


# --------------------------------------------------------------------------- 03.conv2d_param_count

_CONV_CASES = ((3, 3, 16), (3, 16, 32), (5, 1, 8), (1, 64, 10), (7, 3, 4), (1, 1, 1))


@exercise(
    "03.conv2d_param_count",
    reference=encoders.conv2d_param_count,
    mistakes={
        "forgets the biases": lambda k, c, f: k * k * c * f,
        "forgets the input channels": lambda k, c, f: k * k * f + f,
        "kernel_size not squared": lambda k, c, f: k * c * f + f,
        "one bias per input channel": lambda k, c, f: k * k * c * f + c,
        "one bias per kernel and input channel": lambda k, c, f: (k * k + 1) * c * f,
        "a single bias for the layer": lambda k, c, f: k * k * c * f + 1,
        "returns a float": lambda k, c, f: float(k * k * c * f + f),
    },
)
def _check_conv2d_param_count(c: Checker) -> None:
    drawn = draw_cases(st.tuples(st.integers(1, 7), st.integers(1, 64), st.integers(1, 64)), 8)
    for kernel_size, in_channels, filters in list(_CONV_CASES) + drawn:
        got = c.call(kernel_size, in_channels, filters)
        if isinstance(got, (bool, np.bool_)) or not isinstance(got, (int, np.integer)):
            c.fail("parameter count", f"expected an int, got {type(got).__name__} {' '.join(repr(got).split())[:80]}",
                   "return a whole number of parameters (an int, not a float)")
        layer = keras.layers.Conv2D(filters, kernel_size)
        layer.build((None, 32, 32, in_channels))
        expected = layer.count_params()
        if int(got) != expected:
            c.fail(f"Conv2D({filters}, {kernel_size}) on {in_channels} input channels",
                   f"Keras counts {expected} parameters, you counted {int(got)}",
                   "each filter has one kernel_size x kernel_size weight per input channel, plus one bias")
        c.passed.append(f"Conv2D({filters}, {kernel_size}) on {in_channels} channels")


# --------------------------------------------------------------------------- 03.patchify

def _image(rng: np.random.Generator, shape: tuple, dtype) -> np.ndarray:
    if np.dtype(dtype).kind in "iu":
        return rng.integers(0, 256 if np.dtype(dtype).kind == "u" else 1000, size=shape).astype(dtype)
    return rng.normal(size=shape).astype(dtype)


def _patchify_cases() -> list[tuple[np.ndarray, int]]:
    rng = np.random.default_rng(3)
    cases = [
        (_image(rng, (2, 8, 8, 3), np.float32), 4),
        (_image(rng, (1, 6, 9, 2), np.float32), 3),       # not square, 2 channels, a batch of one
        (_image(rng, (3, 4, 4, 3), np.uint8), 2),
        (_image(rng, (1, 4, 4, 1), np.float32), 4),       # one patch
        (_image(rng, (2, 3, 6, 2), np.int16), 1),         # every pixel is a patch
        (_image(rng, (2, 4, 6, 3), np.float64), 2),       # 2 x 3 patches
    ]
    shapes = st.tuples(st.integers(1, 3), st.integers(1, 3), st.integers(1, 4), st.integers(1, 4),
                       st.integers(1, 3), st.sampled_from(["uint8", "float32", "float64", "int32"]),
                       st.integers(0, 2 ** 16))
    for batch, rows, cols, p, channels, dtype, seed in draw_cases(shapes, 8):
        cases.append((_image(np.random.default_rng(seed), (batch, rows * p, cols * p, channels), dtype), p))
    return cases


def _reference_patchify(images, patch_size):
    return _np(encoders.patchify(images, patch_size))


def _patchify_by_slices(images, p, order="rows", inside="rows", grid_rows=None, dtype=None):
    """A loop answer: patch (i, j) is a slice of the image; the arguments name a mistake."""
    b, h, w, ch = images.shape
    rows, cols = grid_rows or h // p, w // p
    grid = [(i, j) for i in range(rows) for j in range(cols)] if order == "rows" else \
        [(i, j) for j in range(cols) for i in range(rows)]
    out = np.zeros((b, len(grid), p * p * ch), dtype or images.dtype)
    for n, (i, j) in enumerate(grid):
        patch = images[:, i * p:(i + 1) * p, j * p:(j + 1) * p, :]
        if inside == "columns":
            patch = patch.transpose(0, 2, 1, 3)
        out[:, n] = patch.reshape(b, -1)
    return out


@exercise(
    "03.patchify",
    reference=_reference_patchify,
    mistakes={
        "reshapes without moving the axes": lambda images, p: images.reshape(
            images.shape[0], -1, p * p * images.shape[-1]),
        "patches column by column": lambda images, p: _patchify_by_slices(images, p, order="columns"),
        "pixels inside a patch transposed": lambda images, p: _patchify_by_slices(images, p, inside="columns"),
        "channels first inside a patch": lambda images, p: _np(encoders.patchify(images, p)).reshape(
            images.shape[0], -1, p * p, images.shape[-1]).transpose(0, 1, 3, 2).reshape(
            images.shape[0], -1, p * p * images.shape[-1]),
        "casts to float32": lambda images, p: _reference_patchify(images, p).astype(np.float32),
        "loop into np.zeros without a dtype (float64)": lambda images, p: _patchify_by_slices(
            images, p, dtype=np.float64),
        "uses W/p for both grid axes": lambda images, p: _patchify_by_slices(
            images, p, grid_rows=images.shape[2] // p),
    },
)
def _check_patchify(c: Checker) -> None:
    for images, p in _patchify_cases():
        got = c.call(images, p, read_only=True)
        expected = _reference_patchify(images, p)
        what = f"patchify of {images.dtype} {images.shape} with patch_size={p}"
        array = c.expect_array(what, got, expected.shape, hint="one row per patch: (batch, (H/p)*(W/p), p*p*C)")
        if array.dtype != images.dtype:
            c.fail(what, f"expected dtype {images.dtype} (the input's), got {array.dtype}",
                   "cutting patches only moves values: keep the input dtype (np.zeros(...) is float64 unless "
                   "you pass dtype=images.dtype)")
        if not np.array_equal(array, expected):
            _explain_patch_difference(c, what, array, expected, images.shape[2] // p, p)
    c.passed.append("patches in reading order with the right pixels")


def _explain_patch_difference(c: Checker, what: str, array, expected, cols: int, p: int) -> None:
    """Name the first wrong patch and what is wrong with it."""
    b, n = (int(i) for i in np.argwhere((array != expected).any(axis=-1))[0])
    i, j = divmod(n, cols)
    where = f"patch {n} of image {b} (patch row {i}, column {j}, i.e. image[{i * p}:{(i + 1) * p}, " \
            f"{j * p}:{(j + 1) * p}, :])"
    matches = [m for m in range(expected.shape[1]) if np.array_equal(array[b, n], expected[b, m])]
    if matches:
        i2, j2 = divmod(matches[0], cols)
        c.fail(what, f"{where} holds the patch at row {i2}, column {j2}",
               "patches go in reading order: left to right along the first row of patches, then the next row")
    if np.array_equal(np.sort(array[b, n]), np.sort(expected[b, n])):
        c.fail(what, f"{where} holds the right values in the wrong order",
               "inside a patch the numbers go row by row, then column, then channel, as "
               "image[i*p:(i+1)*p, j*p:(j+1)*p, :].reshape(-1) gives them")
    c.fail(what, f"{where} holds values from outside that square",
           "each patch must be one p x p square of the image: compare your patch with that slice")


# --------------------------------------------------------------------------- 03.masked_mean

def _masked_mean_cases() -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(7)
    x = rng.normal(size=(3, 5, 4)).astype(np.float32)
    mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]], bool)   # the longest row is not first
    x2 = rng.normal(size=(2, 3, 6)).astype(np.float32) + 5.0
    mask2 = np.array([[1, 1, 0], [0, 0, 0]], bool)                                 # an all-padding row
    x3 = rng.normal(size=(1, 4, 3)).astype(np.float32)
    x3[0, 1, 1:] = 0.0                                                             # a real token may hold zeros
    mask3 = np.array([[0, 1, 0, 1]], bool)                                         # a batch of one, holes
    cases = [(x, mask), (x2, mask2), (x3, mask3)]
    shapes = st.tuples(st.integers(1, 4), st.integers(1, 6), st.integers(1, 5), st.integers(0, 2 ** 16))
    for batch, length, dim, seed in draw_cases(shapes, 10):
        rng = np.random.default_rng(seed)
        fill = rng.choice([0.0, 0.5, 1.0], size=(batch, 1))                       # empty, partial and full rows
        mask = rng.random((batch, length)) < fill
        x = (rng.normal(size=(batch, length, dim)) * rng.choice([1.0, 100.0])).astype(np.float32)
        cases.append((x, mask))
    return cases


def _reference_masked_mean(x, mask):
    return _np(encoders.masked_mean_pool(x, mask))


def _masked_sum(x, mask):
    return (x * mask[..., None]).sum(axis=1)


@exercise(
    "03.masked_mean",
    reference=_reference_masked_mean,
    mistakes={
        "includes padding in the mean": lambda x, mask: x.mean(axis=1),
        "divides by the padded length": lambda x, mask: _masked_sum(x, mask) / x.shape[1],
        "divides by zero on an all-padding row": lambda x, mask: _masked_sum(x, mask)
        / mask.sum(axis=1, keepdims=True).astype(np.float32),
        "returns float64": lambda x, mask: (x * mask[..., None].astype(np.float64)).sum(axis=1)
        / np.maximum(mask.sum(axis=1, keepdims=True), 1),
        "divides by an int64 count (float64 result)": lambda x, mask: _masked_sum(x, mask)
        / np.maximum(mask.sum(axis=1, keepdims=True), 1),
        "averages over the feature axis": lambda x, mask: np.where(mask, x.mean(axis=2), 0.0).astype(np.float32),
        "counts the real positions of the whole batch": lambda x, mask: _masked_sum(x, mask)
        / np.float32(max(mask.sum(), 1)),
        "returns the masked sum": _masked_sum,
        "counts the non-zero values instead of the real positions": lambda x, mask: _masked_sum(x, mask)
        / np.maximum(np.count_nonzero(x * mask[..., None], axis=1), 1).astype(np.float32),
    },
)
def _check_masked_mean(c: Checker) -> None:
    for x, mask in _masked_mean_cases():
        got = c.call(x, mask, read_only=True)
        expected = _reference_masked_mean(x, mask)
        what = f"masked mean of x {x.shape} with mask {mask.astype(int).tolist()}"
        array = c.expect_array(what, got, expected.shape,
                               hint="average over the time axis (axis 1): (batch, time, features) -> (batch, features)")
        if array.dtype != np.float32:
            c.fail(what, f"expected dtype float32 (the dtype of x), got {array.dtype}",
                   "NumPy turns float32 combined with float64 or with an int64 count into float64: cast the mask "
                   "or the count to x.dtype")
        empty = ~mask.any(axis=1)
        if np.isnan(array).any():
            c.fail(what, f"row {int(np.argwhere(np.isnan(array))[0][0])} contains NaN",
                   "a row that is all padding has count 0: divide by max(count, 1) so its mean is 0")
        if empty.any() and not np.allclose(array[empty], 0.0):
            c.fail(what, f"row {int(np.argwhere(empty)[0][0])} has no real token but is not all zeros",
                   "sum only real positions, then divide by max(count, 1)")
        scale = max(1.0, float(np.abs(x).max(initial=0.0)))
        c.expect_close(what, array, expected, atol=1e-5 * scale,
                       hint="sum x where mask is True and divide by the number of True positions in that row, "
                            "not by the padded length")
    c.passed.append("padding ignored, empty rows give zeros")


# --------------------------------------------------------------------------- 03.scaled_dot_product_attention

def _softmax(x, axis=-1):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def _attend(query, key, value, mask=None):
    """The check's own attention, in float64: (output, weights)."""
    scores = query.astype(np.float64) @ np.swapaxes(key.astype(np.float64), -1, -2) / np.sqrt(query.shape[-1])
    if mask is not None:
        scores = np.where(mask, scores, -np.inf)
    weights = _softmax(scores)
    return weights @ value.astype(np.float64), weights


def masked_after_softmax(weights: np.ndarray, scores: np.ndarray, visible: np.ndarray) -> bool:
    """Whether ``weights`` are the softmax of the *unmasked* float64 ``scores``, masked afterwards (``visible``:
    the mask broadcast to the scores' shape), renormalised or not. Renormalised, a row whose real scores all lie
    far below a masked one may lose them to underflow: NaN (0 / 0) or zeros there."""
    kept = _softmax(scores) * visible
    gap = np.where(visible, scores, -np.inf).max(-1) - scores.max(-1)       # best real score - best score
    with np.errstate(all="ignore"):
        renormalised = kept / kept.sum(-1, keepdims=True)
        lost = (~np.isfinite(weights) | (np.abs(weights) < 1e-6)).all(-1)
    if np.allclose(weights, kept, atol=1e-4):
        return True
    if not lost.any() or (lost & (gap > -80)).any():       # only a row far below a masked key can be lost
        return False
    return bool(np.allclose(weights[~lost], renormalised[~lost], atol=1e-3))


def _attention_mistake(scale="sqrt", axis=-1, mask_mode="before", fill=-1e9, stable=True, key_t=False, swap=False):
    def wrong(query, key, value, mask=None):
        divisor = {"sqrt": np.sqrt(query.shape[-1]), "none": 1.0, "d": query.shape[-1],
                   "d_v": np.sqrt(value.shape[-1]), "k_len": np.sqrt(key.shape[-2])}[scale]
        scores = query @ (key.T if key_t else np.swapaxes(key, -1, -2)) / divisor
        if mask is not None and mask_mode == "before":
            scores = np.where(mask, scores, fill)
        elif mask is not None and mask_mode == "inverted":
            scores = np.where(mask, fill, scores)
        if stable:
            weights = _softmax(scores, axis).astype(np.float32)
        else:
            weights = np.exp(scores) / np.exp(scores).sum(axis=axis, keepdims=True)
        if mask is not None and mask_mode.startswith("after"):
            weights = weights * mask
            if mask_mode == "after, renormalised":
                weights = weights / weights.sum(axis=-1, keepdims=True)
        output = (weights @ value).astype(np.float32)
        return (weights, output) if swap else (output, weights)
    return wrong


def _attention_cases() -> list[tuple[str, tuple]]:
    rng = np.random.default_rng(11)
    b, h, q_len, k_len, d, dv = 2, 3, 4, 6, 8, 5
    normal = lambda *shape: rng.normal(size=shape).astype(np.float32)  # noqa: E731
    key_padding = np.ones((b, 1, k_len), bool)
    key_padding[0, 0, 4:] = False
    key_padding[1, 0, 5:] = False
    causal = np.tril(np.ones((q_len, q_len), bool))[None, None]  # (1, 1, q, q)
    cases = [
        ("rank-3, no mask", (normal(b, q_len, d) * 2, normal(b, k_len, d) * 2, normal(b, k_len, dv), None)),
        ("rank-3, key padding mask (batch, 1, k_len)",
         (normal(b, q_len, d) * 2, normal(b, k_len, d) * 2, normal(b, k_len, dv), key_padding)),
        ("rank-4 with heads, causal mask (1, 1, q_len, q_len)",
         (normal(b, h, q_len, d) * 2, normal(b, h, q_len, d) * 2, normal(b, h, q_len, dv), causal)),
        ("large scores (hundreds), no mask",
         (normal(b, q_len, d) * 20, normal(b, k_len, d) * 20, normal(b, k_len, dv), None)),
        ("large scores (hundreds), key padding mask",
         (normal(b, q_len, d) * 20, normal(b, k_len, d) * 20, normal(b, k_len, dv), key_padding)),
        ("large scores: the masked keys score thousands above the others",
         (3 + 0.1 * normal(b, q_len, d), np.where(key_padding[:, 0, :, None], normal(b, k_len, d), np.float32(250)),
          normal(b, k_len, dv), key_padding)),
    ]
    shapes = st.tuples(st.integers(1, 2), st.sampled_from([0, 1, 2]), st.integers(1, 4), st.integers(2, 5),
                       st.integers(1, 6), st.integers(1, 4), st.sampled_from(["none", "keys", "full"]),
                       st.integers(0, 2 ** 16))
    for b, h, q_len, k_len, d, dv, kind, seed in draw_cases(shapes, 10):
        rng = np.random.default_rng(seed)
        lead = (b, h) if h else (b,)
        q, k, v = (rng.normal(size=lead + (n, m)).astype(np.float32) for n, m in ((q_len, d), (k_len, d), (k_len, dv)))
        mask = None
        if kind != "none":
            shape = lead + ((1,) if kind == "keys" else (q_len,)) + (k_len,)
            mask = rng.random(shape) < 0.6
            np.put_along_axis(mask, rng.integers(0, k_len, size=shape[:-1] + (1,)), True, axis=-1)  # >= 1 key
        cases.append((f"{'rank-4' if h else 'rank-3'} {q.shape}, mask {None if mask is None else mask.shape}",
                      (q, k, v, mask)))
    return cases


@exercise(
    "03.scaled_dot_product_attention",
    reference=lambda q, k, v, mask=None: tuple(_np(t) for t in attention.scaled_dot_product_attention(q, k, v, mask)),
    mistakes={
        "no 1/sqrt(d) scaling": _attention_mistake(scale="none"),
        "divides by d instead of sqrt(d)": _attention_mistake(scale="d"),
        "divides by sqrt(d_v)": _attention_mistake(scale="d_v"),
        "divides by sqrt(k_len)": _attention_mistake(scale="k_len"),
        "softmax over the query axis": _attention_mistake(axis=-2),
        "mask applied after the softmax": _attention_mistake(mask_mode="after"),
        "mask applied after the softmax, weights renormalised": _attention_mistake(mask_mode="after, renormalised"),
        "mask inverted": _attention_mistake(mask_mode="inverted"),
        "masked scores set to 0 instead of a large negative number": _attention_mistake(fill=0.0),
        "ignores the mask": _attention_mistake(mask_mode="ignore"),
        "softmax without subtracting the maximum": _attention_mistake(stable=False),
        "key.T instead of swapping the last two axes": _attention_mistake(key_t=True),
        "returns (weights, output)": _attention_mistake(swap=True),
    },
)
def _check_scaled_dot_product_attention(c: Checker) -> None:
    for name, (query, key, value, mask) in _attention_cases():
        got = (c.call(query, key, value, read_only=True) if mask is None
               else c.call(query, key, value, mask, read_only=True))
        expected_output, expected_weights = _attend(query, key, value, mask)
        scores = query.astype(np.float64) @ np.swapaxes(key.astype(np.float64), -1, -2) / np.sqrt(query.shape[-1])
        _expect_attention(c, name, got, expected_output, expected_weights, mask, large="large" in name, scores=scores)
    c.passed.append("scaling, softmax axis, masks and large scores")


def _expect_attention(c: Checker, name: str, got, expected_output, expected_weights, mask, large: bool,
                      scores: np.ndarray) -> None:
    if not (isinstance(got, (tuple, list)) and len(got) == 2):
        c.fail(name, f"expected a tuple (output, weights), got {type(got).__name__}",
               "return both: `return output, weights`")
    shapes = [tuple(np.shape(part)) if hasattr(part, "shape") else None for part in got]
    if shapes == [expected_weights.shape, expected_output.shape] != [expected_output.shape, expected_weights.shape]:
        c.fail(name, "the first item has the shape of the weights and the second that of the output",
               "return them in the order the exercise asks: `return output, weights`")
    weights = c.expect_array(f"{name}: weights", got[1], expected_weights.shape,
                             hint="weights have shape (batch, [heads,] q_len, k_len): one row per query").astype(float)
    if mask is not None and not (np.isfinite(weights).all() and np.allclose(weights.sum(-1), 1.0, atol=1e-4)):
        if masked_after_softmax(weights, scores, np.broadcast_to(mask, weights.shape)):
            c.fail(f"{name}: weights", "they are the softmax of the unmasked scores, masked afterwards",
                   "apply the mask to the scores, before the softmax: masking the weights after it leaves real "
                   "weights that do not sum to 1 (and lost to underflow when a masked key has by far the largest "
                   "score)")
    if not np.isfinite(weights).all():
        c.fail(f"{name}: weights", "contain NaN or inf",
               "subtract each row's largest score before np.exp (exp overflows for scores of a few hundred)"
               if large else "use a large negative number such as -1e9 for masked scores")
    if mask is not None:
        visible = np.broadcast_to(mask, weights.shape)
        if np.abs(weights[~visible]).max(initial=0.0) > 1e-6:
            c.fail(f"{name}: weights", "masked keys (mask False) get a non-zero weight",
                   "mask=True means 'may attend'; replace the scores of masked keys by a large negative "
                   "number (e.g. -1e9) before the softmax")
    if not np.allclose(weights.sum(axis=-1), 1.0, atol=1e-4):
        if mask is None and np.allclose(weights.sum(axis=-2), 1.0, atol=1e-4):
            c.fail(f"{name}: weights", "each key's weights sum to 1 over the queries",
                   "take the softmax over the keys: the last axis of the scores")
        c.fail(f"{name}: weights", "the weights of a query do not sum to 1 over the keys",
               "mask the scores before the softmax (not the weights after it), and take the softmax "
               "over the last axis")
    atol = 1e-3 if large else 1e-5             # float32 scores of a few hundred carry rounding errors of ~1e-4
    c.expect_close(f"{name}: weights", weights, expected_weights, atol=atol,
                   hint="scores are query @ key^T (swap the last two axes of key) divided by sqrt(d), "
                        "d = the last axis of query")
    c.expect_close(f"{name}: output", got[0], expected_output, atol=atol,
                   hint="output = weights @ value, shape (batch, [heads,] q_len, d_v)")


# --------------------------------------------------------------------------- 03.transformer_block
# The scenario builds the learner's block, gives its five layers seeded random weights and runs
# it; the check rebuilds the five layers from their snapshots (`layers.rebuild_layer`: known classes
# only) and computes the pre-norm forward itself, so any layer sizes pass.

_BLOCK_SIZES = (16, 2, 32)                              # embed_dim, num_heads, mlp_dim
_BLOCK_PARTS = ("norm1", "attention", "norm2", "mlp_in", "mlp_out")
_BLOCK_LABEL = "TransformerBlock(16, 2, 32) called on x (3, 6, 16) with a padding mask, then with random weights"
_BLOCK_CLASSES = (keras.layers.LayerNormalization, keras.layers.Dense, attention.MultiHeadAttention)


def _block_inputs():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(3, 6, 16)).astype(np.float32)
    mask = np.arange(6)[None, :] < np.array([4, 6, 1])[:, None]        # the longest row is not the first
    return x, mask, rng.normal(size=(1, 5, 16)).astype(np.float32)     # and a batch of one


def _call_block(block, *args, **kwargs):
    """``block(*args, **kwargs)``, or None where call() returned None. Keras then files the input mask under
    ``id(None)`` and raises a TypeError about a weak reference; the entry would break every later masked layer
    call of the session, correct answers included, so it is removed here."""
    try:
        return block(*args, **kwargs)
    except TypeError:
        from keras.src.backend.common import global_state   # Keras' own table of the masks it attached
        masks = global_state.get_global_attribute("_keras_mask_dict") or {}
        if masks.pop(id(None), None) is None:
            raise
        return None


def _run_block(block_class) -> dict:
    """The scenario (runs the learner's class): plain data about the block and its outputs."""
    x, mask, one = _block_inputs()
    block = instantiate(block_class, *_BLOCK_SIZES)
    if isinstance(block, str):
        return block
    parts = {name: getattr(block, name, None) for name in _BLOCK_PARTS}
    missing = [name for name, layer in parts.items() if not isinstance(layer, keras.layers.Layer)]
    if missing:
        return {"missing": missing}
    if _call_block(block, x.copy(), mask=mask.copy()) is None:      # builds the layers that call() uses
        return {"outputs": {"masked": None}}
    randomise_weights(parts.values(), seed=5)            # random weights: the two LayerNorms now differ
    outputs = {"masked": _call_block(block, x.copy(), mask=mask.copy()), "unmasked": block(x.copy()),
               "one": block(one)}
    return {"outputs": outputs, "parts": {name: layer_snapshot(layer) for name, layer in parts.items()}}


def _pre_norm_forward(b, x, mask=None):
    x = x + b.attention(b.norm1(x), mask=mask)
    return x + b.mlp_out(b.mlp_in(b.norm2(x)))


def _post_norm(b, x, mask):
    x = b.norm1(x + b.attention(x, mask=mask))
    return b.norm2(x + b.mlp_out(b.mlp_in(x)))


def _no_attention_residual(b, x, mask):
    x = b.attention(b.norm1(x), mask=mask)
    return x + b.mlp_out(b.mlp_in(b.norm2(x)))


def _no_mlp_residual(b, x, mask):
    x = x + b.attention(b.norm1(x), mask=mask)
    return b.mlp_out(b.mlp_in(b.norm2(x)))


def _residual_of_normalised(b, x, mask):
    h = b.norm1(x)
    x = h + b.attention(h, mask=mask)
    return x + b.mlp_out(b.mlp_in(b.norm2(x)))


def _parallel_mlp(b, x, mask):
    return x + b.attention(b.norm1(x), mask=mask) + b.mlp_out(b.mlp_in(b.norm2(x)))


# What each recognisable wrong forward pass does, in the words of the failure message.
_BLOCK_DIAGNOSES = types.MappingProxyType({
    "it normalises the sums (post-norm), so the residual stream is normalised": _post_norm,
    "the attention's output replaces x instead of being added to it (no residual)": _no_attention_residual,
    "the MLP's output replaces x instead of being added to it (no residual)": _no_mlp_residual,
    "the attention's output is added to norm1(x), not to x": _residual_of_normalised,
    "the MLP reads the block's input, not x after the attention's residual": _parallel_mlp,
})


class _BlockParts(keras.layers.Layer):
    """The parts of a pre-norm block, exactly as the notebook's ``__init__`` creates them."""

    def __init__(self, embed_dim, num_heads, mlp_dim, **kwargs):
        super().__init__(**kwargs)
        self.norm1 = keras.layers.LayerNormalization(epsilon=1e-5)
        self.attention = attention.MultiHeadAttention(num_heads, embed_dim // num_heads)
        self.norm2 = keras.layers.LayerNormalization(epsilon=1e-5)
        self.mlp_in = keras.layers.Dense(mlp_dim, activation="gelu")
        self.mlp_out = keras.layers.Dense(embed_dim)
        self.supports_masking = True


def _block_answer(forward):
    return type("TransformerBlock", (_BlockParts,), {"call": lambda self, x, mask=None: forward(self, x, mask)})


def _norm1_twice(b, x, mask):
    x = x + b.attention(b.norm1(x), mask=mask)
    return x + b.mlp_out(b.mlp_in(b.norm1(x)))


def _unnormalised_keys(b, x, mask):
    x = x + b.attention(b.norm1(x), context=x, mask=mask)
    return x + b.mlp_out(b.mlp_in(b.norm2(x)))


def _zeroes_padding(b, x, mask):
    if mask is not None:
        x = x * keras.ops.cast(mask, x.dtype)[..., None]
    return _pre_norm_forward(b, x)


def _mask_inverted(b, x, mask):
    return _pre_norm_forward(b, x, None if mask is None else keras.ops.logical_not(mask))


@exercise(
    "03.transformer_block",
    reference=_block_answer(_pre_norm_forward),
    mistakes={
        **{f"wrong forward pass: {why}": _block_answer(forward) for why, forward in _BLOCK_DIAGNOSES.items()},
        "norm1 used twice": _block_answer(_norm1_twice),
        "ignores the padding mask": _block_answer(lambda b, x, m: _pre_norm_forward(b, x, None)),
        "mask inverted": _block_answer(_mask_inverted),
        "keys and values from the un-normalised x": _block_answer(_unnormalised_keys),
        "zeroes the padded tokens instead of masking the attention": _block_answer(_zeroes_padding),
        "call() without a return statement": _block_answer(lambda b, x, mask: None),
    },
)
def _check_transformer_block(c: Checker) -> None:
    with warnings.catch_warnings():              # Keras' build / mask warnings about a wrong answer's unused layers
        warnings.simplefilter("ignore")
        report = c.scenario(_BLOCK_LABEL, _run_block)
        _check_block(c, report)


def _check_block(c: Checker, report) -> None:
    expect_layer_class(c, report, "TransformerBlock")
    if "missing" in report:
        c.fail("the block's layers", f"missing {report['missing']}",
               "keep the layers that __init__ creates (norm1, attention, norm2, mlp_in, mlp_out) and write call()")
    x, mask, one = _block_inputs()
    outputs = report["outputs"]
    if outputs["masked"] is None:
        c.fail("output of the block", "call() returned None", "did you forget the `return` statement?")
    c.expect_array("output of the block for x (3, 6, 16)", outputs["masked"], x.shape,
                   hint="a block keeps the shape: (batch, time, embed_dim) in and out")
    parts = _rebuild_parts(c, report["parts"], x.shape[-1])
    hint = ("pre-norm, as in the lesson's formula: each sub-layer reads a normalised copy of x (norm1 before the "
            "attention, norm2 before the MLP) and its result is added to x itself, which is never normalised")
    expected = _np(_pre_norm_forward(parts, x))
    got = c.expect_array("output without a mask (random weights)", outputs["unmasked"], x.shape)
    if not np.allclose(got, expected, atol=1e-4, rtol=1e-4):
        for why, forward in _BLOCK_DIAGNOSES.items():
            if np.allclose(got, _np(forward(parts, x, None)), atol=1e-4, rtol=1e-4):
                c.fail("output without a mask (random weights)", f"it differs from the pre-norm block: {why}", hint)
        c.expect_close("output without a mask (random weights)", got, expected, atol=1e-4, rtol=1e-4, hint=hint)
    c.expect_close("output for a batch of one (1, 5, 16)", outputs["one"], _np(_pre_norm_forward(parts, one)),
                   atol=1e-4, rtol=1e-4, hint="the block must work for any batch size and length")
    got = c.expect_array("output with a padding mask", outputs["masked"], x.shape)[mask]
    expected_masked = _np(_pre_norm_forward(parts, x, mask))[mask]
    if not np.allclose(got, expected_masked, atol=1e-4, rtol=1e-4):
        c.fail("output with a padding mask (lengths 4, 6, 1)",
               "the real tokens' outputs equal those without the mask, so they still attend to the padded tokens"
               if np.allclose(got, expected[mask], atol=1e-4, rtol=1e-4) else
               f"differs at real token {_first_difference(got, expected_masked, mask)}",
               "call the attention with one input and mask=mask: True marks real tokens, and in self-attention the "
               "mask also hides the padded keys")
    c.passed.append("output with a padding mask (random weights), real tokens")


def _first_difference(got, expected, mask) -> str:
    index = int(np.argwhere(~np.isclose(got, expected, atol=1e-4, rtol=1e-4).all(axis=-1))[0][0])
    row, position = np.argwhere(mask)[index]
    return f"(row {row}, position {position})"


def _rebuild_parts(c: Checker, snapshots: dict, dim: int) -> types.SimpleNamespace:
    """The block's five layers rebuilt from their snapshots, each to read what the pre-norm forward feeds it."""
    unused = [name for name in _BLOCK_PARTS if not snapshots[name].get("built")]
    if unused:
        c.fail("the block's layers", f"{', '.join(unused)} never called (not built after calling the block)",
               "use each of the five layers once: norm1 and attention, then norm2, mlp_in and mlp_out")
    layers = {}
    for name in _BLOCK_PARTS:
        layers[name] = rebuild_layer(
            c, f"the block's layer `{name}`", snapshots[name], classes=_BLOCK_CLASSES,
            reads=layers["mlp_in"].units if name == "mlp_out" else dim,
            hint="each layer reads what the formula gives it: norm1, attention, norm2 and mlp_in read x (embed_dim "
                 "features), mlp_out reads mlp_in's output")
    c.passed.append("the block's five layers")
    return types.SimpleNamespace(**layers)
