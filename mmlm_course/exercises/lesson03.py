"""Checks for lesson 03: encoders (parameter counts, patches, masked pooling, attention, the block)."""

from __future__ import annotations

import warnings

import keras
import numpy as np

from mmlm_course import attention, encoders
from mmlm_course.exercises import Checker, exercise


def _np(value) -> np.ndarray:
    return np.asarray(value)


# --------------------------------------------------------------------------- 03.conv2d_param_count

_CONV_CASES = [(3, 3, 16), (3, 16, 32), (5, 1, 8), (1, 64, 10), (7, 3, 4)]


@exercise(
    "03.conv2d_param_count",
    reference=encoders.conv2d_param_count,
    mistakes={
        "forgets the biases": lambda k, c, f: k * k * c * f,
        "forgets the input channels": lambda k, c, f: k * k * f + f,
        "kernel_size not squared": lambda k, c, f: k * c * f + f,
        "one bias per input channel": lambda k, c, f: k * k * c * f + c,
    },
)
def _check_conv2d_param_count(c: Checker) -> None:
    import keras

    for kernel_size, in_channels, filters in _CONV_CASES:
        got = c.call(kernel_size, in_channels, filters)
        if isinstance(got, bool) or not isinstance(got, (int, np.integer)):
            c.fail("parameter count", f"expected an int, got {type(got).__name__} {got!r}",
                   "return a whole number of parameters")
        layer = keras.layers.Conv2D(filters, kernel_size)
        layer.build((None, 32, 32, in_channels))
        expected = layer.count_params()
        if int(got) != expected:
            c.fail(f"Conv2D({filters}, {kernel_size}) on {in_channels} input channels",
                   f"Keras counts {expected} parameters, you counted {int(got)}",
                   "each filter has one kernel_size x kernel_size weight per input channel, plus one bias")
        c.passed.append(f"Conv2D({filters}, {kernel_size}) on {in_channels} channels")


# --------------------------------------------------------------------------- 03.patchify

def _patchify_cases():
    rng = np.random.default_rng(3)
    return [
        (rng.random((2, 8, 8, 3), dtype=np.float32), 4),
        (rng.random((1, 6, 9, 2), dtype=np.float32), 3),  # not square, 2 channels
        (rng.integers(0, 256, size=(3, 4, 4, 3), dtype=np.uint8), 2),
        (rng.random((1, 4, 4, 1), dtype=np.float32), 4),  # one patch
    ]


def _permuted_patchify(order):
    def wrong(images, patch_size):
        b, h, w, ch = images.shape
        p = patch_size
        x = images.reshape(b, h // p, p, w // p, p, ch).transpose(order)
        return x.reshape(b, (h // p) * (w // p), p * p * ch)
    return wrong


@exercise(
    "03.patchify",
    reference=lambda images, patch_size: _np(encoders.patchify(images, patch_size)),
    mistakes={
        "reshapes without moving the axes": lambda images, p: images.reshape(
            images.shape[0], -1, p * p * images.shape[-1]),
        "patches column by column": _permuted_patchify((0, 3, 1, 2, 4, 5)),
        "pixels inside a patch transposed": _permuted_patchify((0, 1, 3, 4, 2, 5)),
        "channels first inside a patch": _permuted_patchify((0, 1, 3, 5, 2, 4)),
        "casts to float32": lambda images, p: _np(encoders.patchify(images, p)).astype(np.float32),
    },
)
def _check_patchify(c: Checker) -> None:
    for images, p in _patchify_cases():
        got = c.call(images.copy(), p)
        b, h, w, ch = images.shape
        expected = _np(encoders.patchify(images, p))
        what = f"patchify of {images.shape} with patch_size={p}"
        array = c.expect_array(what, got, expected.shape, hint="one row per patch: (batch, (H/p)*(W/p), p*p*C)")
        if array.dtype != images.dtype:
            c.fail(what, f"expected dtype {images.dtype} (the input's), got {array.dtype}",
                   "cutting patches only moves values: keep the input dtype")
        if np.array_equal(array, expected):
            continue
        got_rows = sorted(map(bytes, array.reshape(b * expected.shape[1], -1)))
        expected_rows = sorted(map(bytes, expected.reshape(b * expected.shape[1], -1)))
        if got_rows == expected_rows:
            c.fail(what, "every patch is right but they are in the wrong order",
                   "patches go in reading order: left to right along the first row of patches, then the next row")
        got_sets = sorted(bytes(np.sort(row)) for row in array.reshape(b * expected.shape[1], -1))
        expected_sets = sorted(bytes(np.sort(row)) for row in expected.reshape(b * expected.shape[1], -1))
        if got_sets == expected_sets:
            c.fail(what, "each patch holds the right values in the wrong order",
                   "flatten a patch as image[i*p:(i+1)*p, j*p:(j+1)*p, :].reshape(-1): rows, then columns, "
                   "then channels")
        c.fail(what, "your patches mix pixels from different image regions",
               "a plain reshape does not cut square patches: reshape to (B, H/p, p, W/p, p, C) and move "
               "the two patch-grid axes in front of the two pixel axes before flattening")
    c.passed.append("patches in reading order with the right pixels")


# --------------------------------------------------------------------------- 03.masked_mean

def _masked_mean_cases():
    rng = np.random.default_rng(7)
    x = rng.normal(size=(3, 5, 4)).astype(np.float32)
    mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]], bool)
    x2 = rng.normal(size=(2, 3, 6)).astype(np.float32) + 5.0
    mask2 = np.array([[1, 1, 0], [0, 0, 0]], bool)  # an all-padding row
    return [(x, mask), (x2, mask2)]


def _reference_masked_mean(x, mask):
    return _np(encoders.masked_mean_pool(x, mask))


@exercise(
    "03.masked_mean",
    reference=_reference_masked_mean,
    mistakes={
        "includes padding in the mean": lambda x, mask: x.mean(axis=1),
        "divides by the padded length": lambda x, mask: (x * mask[..., None]).sum(axis=1) / x.shape[1],
        "divides by zero on an all-padding row": lambda x, mask: (x * mask[..., None]).sum(axis=1)
        / mask.sum(axis=1, keepdims=True).astype(np.float32),
        "returns float64": lambda x, mask: (x * mask[..., None].astype(np.float64)).sum(axis=1)
        / np.maximum(mask.sum(axis=1, keepdims=True), 1),
        "averages over the feature axis": lambda x, mask: np.where(mask, x.mean(axis=2), 0.0).astype(np.float32),
    },
)
def _check_masked_mean(c: Checker) -> None:
    import warnings

    for x, mask in _masked_mean_cases():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # a learner's 0/0 must fail the check, not warn
            got = c.call(x.copy(), mask.copy())
        expected = _reference_masked_mean(x, mask)
        what = f"masked mean of x {x.shape} with mask {mask.shape}"
        array = c.expect_array(what, got, expected.shape,
                               hint="average over the time axis (axis 1): (batch, time, features) -> (batch, features)")
        if array.dtype != np.float32:
            c.fail(what, f"expected dtype float32 (the dtype of x), got {array.dtype}",
                   "NumPy turns float32 * float64 into float64: cast the mask with mask.astype(x.dtype)")
        empty = ~mask.any(axis=1)
        if np.isnan(array).any():
            c.fail(what, "contains NaN for a row with no real token",
                   "a row that is all padding has count 0: divide by max(count, 1) so its mean is 0")
        if empty.any() and not np.allclose(array[empty], 0.0):
            c.fail(what, "a row with no real token should give zeros", "sum only real positions, then divide by "
                   "max(count, 1)")
        c.expect_close(what, array, expected,
                       hint="sum x where mask is True and divide by the number of True positions in that row, "
                            "not by the padded length")
    c.passed.append("padding ignored, empty rows give zeros")


# --------------------------------------------------------------------------- 03.scaled_dot_product_attention

def _softmax(x, axis=-1):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def _attention_mistake(scale="sqrt", axis=-1, mask_mode="before", fill=-1e9):
    def wrong(query, key, value, mask=None):
        d = query.shape[-1]
        scores = query @ np.swapaxes(key, -1, -2)
        scores = scores / {"sqrt": np.sqrt(d), "none": 1.0, "d": d}[scale]
        if mask is not None and mask_mode == "before":
            scores = np.where(mask, scores, fill)
        elif mask is not None and mask_mode == "inverted":
            scores = np.where(mask, fill, scores)
        weights = _softmax(scores, axis).astype(np.float32)
        if mask is not None and mask_mode == "after":
            weights = weights * mask
        return (weights @ value).astype(np.float32), weights
    return wrong


def _attention_cases():
    rng = np.random.default_rng(11)
    b, h, q_len, k_len, d, dv = 2, 3, 4, 6, 8, 5
    normal = lambda *shape: rng.normal(size=shape).astype(np.float32)  # noqa: E731
    key_padding = np.ones((b, 1, k_len), bool)
    key_padding[0, 0, 4:] = False
    key_padding[1, 0, 5:] = False
    causal = np.tril(np.ones((q_len, q_len), bool))[None, None]  # (1, 1, q, q)
    return [
        ("rank-3, no mask", (normal(b, q_len, d) * 2, normal(b, k_len, d) * 2, normal(b, k_len, dv), None)),
        ("rank-3, key padding mask (batch, 1, k_len)",
         (normal(b, q_len, d) * 2, normal(b, k_len, d) * 2, normal(b, k_len, dv), key_padding)),
        ("rank-4 with heads, causal mask (1, 1, q_len, q_len)",
         (normal(b, h, q_len, d) * 2, normal(b, h, q_len, d) * 2, normal(b, h, q_len, dv), causal)),
    ]


@exercise(
    "03.scaled_dot_product_attention",
    reference=lambda q, k, v, mask=None: tuple(_np(t) for t in attention.scaled_dot_product_attention(q, k, v, mask)),
    mistakes={
        "no 1/sqrt(d) scaling": _attention_mistake(scale="none"),
        "divides by d instead of sqrt(d)": _attention_mistake(scale="d"),
        "softmax over the query axis": _attention_mistake(axis=-2),
        "mask applied after the softmax": _attention_mistake(mask_mode="after"),
        "mask inverted": _attention_mistake(mask_mode="inverted"),
        "masked scores set to 0 instead of a large negative number": _attention_mistake(fill=0.0),
        "ignores the mask": _attention_mistake(mask_mode="ignore"),
    },
)
def _check_scaled_dot_product_attention(c: Checker) -> None:
    for name, (query, key, value, mask) in _attention_cases():
        args = (query.copy(), key.copy(), value.copy(), None if mask is None else mask.copy())
        got = c.call(*args)
        if not (isinstance(got, (tuple, list)) and len(got) == 2):
            c.fail(name, f"expected a tuple (output, weights), got {type(got).__name__}",
                   "return both: `return output, weights`")
        expected_output, expected_weights = (_np(t) for t in attention.scaled_dot_product_attention(*args))
        weights = c.expect_array(f"{name}: weights", got[1], expected_weights.shape,
                                 hint="weights have shape (batch, [heads,] q_len, k_len): one row per query")
        weights = weights.astype(np.float64)
        if np.isnan(weights).any():
            c.fail(f"{name}: weights", "contain NaN", "use a large negative number such as -1e9 for masked scores")
        if mask is not None:
            visible = np.broadcast_to(mask, weights.shape)
            if np.abs(weights[~visible]).max(initial=0.0) > 1e-6:
                c.fail(f"{name}: weights", "masked keys (mask False) get a non-zero weight",
                       "mask=True means 'may attend'; replace the scores of masked keys by a large negative "
                       "number (e.g. -1e9) before the softmax")
        row_sums = weights.sum(axis=-1)
        if not np.allclose(row_sums, 1.0, atol=1e-4):
            if mask is None and np.allclose(weights.sum(axis=-2), 1.0, atol=1e-4):
                c.fail(f"{name}: weights", "each key's weights sum to 1 over the queries",
                       "take the softmax over the keys: the last axis of the scores")
            c.fail(f"{name}: weights", "the weights of a query do not sum to 1 over the keys",
                   "mask the scores before the softmax (not the weights after it), and take the softmax "
                   "over the last axis")
        c.expect_close(f"{name}: weights", weights, expected_weights, atol=1e-5,
                       hint="scores are query @ key^T divided by sqrt(d), d = the last axis of query")
        c.expect_close(f"{name}: output", got[0], expected_output, atol=1e-5,
                       hint="output = weights @ value, shape (batch, [heads,] q_len, d_v)")
    c.passed.append("scaling, softmax axis and masks")


# --------------------------------------------------------------------------- 03.transformer_block


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


def _pre_norm_forward(block, x, mask=None):
    x = x + block.attention(block.norm1(x), mask=mask)
    return x + block.mlp_out(block.mlp_in(block.norm2(x)))


class _ReferenceBlock(_BlockParts):
    def call(self, x, mask=None):
        return _pre_norm_forward(self, x, mask)


def _post_norm(b, x, mask):
    x = b.norm1(x + b.attention(x, mask=mask))
    return b.norm2(x + b.mlp_out(b.mlp_in(x)))


def _no_attention_residual(b, x, mask):
    x = b.attention(b.norm1(x), mask=mask)
    return x + b.mlp_out(b.mlp_in(b.norm2(x)))


def _no_mlp_residual(b, x, mask):
    x = x + b.attention(b.norm1(x), mask=mask)
    return b.mlp_out(b.mlp_in(b.norm2(x)))


def _norm1_twice(b, x, mask):
    x = x + b.attention(b.norm1(x), mask=mask)
    return x + b.mlp_out(b.mlp_in(b.norm1(x)))


def _parallel_mlp(b, x, mask):
    return x + b.attention(b.norm1(x), mask=mask) + b.mlp_out(b.mlp_in(b.norm2(x)))


def _block_mistake(forward):
    return type("MistakenBlock", (_BlockParts,), {"call": lambda self, x, mask=None: forward(self, x, mask)})


_BLOCK_PARTS = ("norm1", "attention", "norm2", "mlp_in", "mlp_out")


@exercise(
    "03.transformer_block",
    reference=_ReferenceBlock,
    mistakes={
        "post-norm (LayerNorm after the residual sum)": _block_mistake(_post_norm),
        "no residual around the attention": _block_mistake(_no_attention_residual),
        "no residual around the MLP": _block_mistake(_no_mlp_residual),
        "norm1 used twice": _block_mistake(_norm1_twice),
        "the MLP reads the block's input, not the attention's output": _block_mistake(_parallel_mlp),
        "ignores the padding mask": _block_mistake(lambda b, x, m: _pre_norm_forward(b, x, None)),
    },
)
def _check_transformer_block(c: Checker) -> None:
    with warnings.catch_warnings():              # Keras' build / mask warnings about a wrong answer's unused layers
        warnings.simplefilter("ignore")
        _check_block(c)


def _check_block(c: Checker) -> None:
    rng = np.random.default_rng(3)
    block = c.call(16, 2, 32)                               # embed_dim, num_heads, mlp_dim
    if not isinstance(block, keras.layers.Layer):
        c.fail("your answer", f"calling it with (embed_dim, num_heads, mlp_dim) gave {type(block).__name__}, "
                              "not a Keras layer", "pass the class itself: check(\"03.transformer_block\", "
                                                   "TransformerBlock)")
    missing = [name for name in _BLOCK_PARTS if not isinstance(getattr(block, name, None), keras.layers.Layer)]
    if missing:
        c.fail("the block's layers", f"missing {missing}",
               "keep the layers that __init__ creates (norm1, attention, norm2, mlp_in, mlp_out) and write call()")
    run = Checker(c.exercise_id, block)                     # calling the block: crashes become one line
    x = rng.normal(size=(2, 6, 16)).astype(np.float32)
    mask = np.array([[True] * 6, [True] * 4 + [False] * 2])
    first = run.call(x, mask=mask)                          # builds the layers it uses
    c.expect_array("output of the block for x (2, 6, 16)", first, (2, 6, 16),
                   hint="a block keeps the shape: (batch, time, embed_dim) in and out")
    for part in _BLOCK_PARTS:                               # random weights: the two LayerNorms now differ
        layer = getattr(block, part)
        if layer.get_weights():
            layer.set_weights([rng.normal(scale=0.5, size=w.shape).astype(np.float32) for w in layer.get_weights()])
    hint = ("pre-norm: x = x + attention(norm1(x), mask=mask), then x = x + mlp_out(mlp_in(norm2(x))); "
            "call the attention with one input so that the padding mask also hides the padded keys")
    for what, m in (("without a mask", None), ("with a padding mask", mask)):
        got = run.call(x, mask=m)
        expected = _np(_pre_norm_forward(block, x, m))
        c.expect_close(f"output {what} (random weights)", got, expected, atol=1e-4, rtol=1e-4, hint=hint)
