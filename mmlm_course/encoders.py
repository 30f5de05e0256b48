"""Lesson 03: encoders, one per modality, each mapping raw tensors to feature vectors or tokens.

An encoder turns one modality into numbers a fusion model can combine:

=========================  ==========================================  ===========================
encoder                    input                                       output
=========================  ==========================================  ===========================
`ConvImageEncoder`         float images (B, H, W, C)                   (B, D) or tokens (B, N, D)
`PatchEmbedding`           float images (B, H, W, C)                   patch tokens (B, N[+1], D)
`BagOfEmbeddings`          int ids (B, T)                              (B, D)
`RecurrentTextEncoder`     int ids (B, T)                              (B, units) or (B, T, units)
`TransformerTextEncoder`   int ids (B, T)                              (B, D) or (B, T, D)
`AudioEncoder`             log-mel spectrogram (B, frames, mel_bins)   (B, D) or (B, frames', D)
=========================  ==========================================  ===========================

Building blocks later lessons import: `scaled_dot_product_attention` (a plain function),
`ScratchMultiHeadAttention` (self- and cross-attention with the weight layout of
`keras.layers.MultiHeadAttention`), `TransformerEncoderBlock`, `PositionEmbedding`,
`patchify` and `masked_mean`.

Every layer is written with `keras.ops` only (no TensorFlow), is registered for `.keras`
serialization under the package name ``mmlm_course`` and creates its sub-layers in
``__init__``. Masks are boolean and ``True`` marks a real (attendable) position, as in
`mmlm_course.preprocessing.pad_sequences`. Token id 0 is padding.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import keras
import numpy as np
from keras import ops

from mmlm_course.validation import dtype_name, positive_int, static_shape

__all__ = [
    "scaled_dot_product_attention", "masked_mean", "patchify", "conv2d_param_count",
    "padding_mask", "causal_mask", "shape_trace",
    "PositionEmbedding", "ScratchMultiHeadAttention", "TransformerEncoderBlock",
    "ConvImageEncoder", "PatchEmbedding", "BagOfEmbeddings", "RecurrentTextEncoder",
    "TransformerTextEncoder", "AudioEncoder",
]

PAD_ID = 0
_register = keras.saving.register_keras_serializable(package="mmlm_course")


# --------------------------------------------------------------------------- validation helpers


def _as_tensor(x, name: str):
    if x is None:
        raise TypeError(f"{name}: expected a tensor or array, got None.")
    if not hasattr(x, "shape") or not hasattr(x, "dtype"):
        try:
            x = np.asarray(x)
        except Exception:  # pragma: no cover - exotic objects
            raise TypeError(f"{name}: expected a tensor or array, got {type(x).__name__}.") from None
        if x.dtype == np.float64:  # Python floats: use the Keras default float type
            x = x.astype(keras.backend.floatx())
    return x


def _require_float(x, name: str, fix: str = "") -> None:
    dtype = dtype_name(x)
    if "float" not in dtype:
        raise TypeError(f"{name}: expected a floating-point tensor, got dtype {dtype}"
                        + (f"; {fix}" if fix else f"; convert it with keras.ops.cast({name}, 'float32')") + ".")


def _require_bool_mask(mask, name: str) -> None:
    dtype = dtype_name(mask)
    if dtype != "bool":
        raise TypeError(f"{name}: expected a boolean mask (True = real position), got dtype {dtype}; convert it "
                        f"with keras.ops.cast({name}, 'bool') or ids != 0 (an additive 0/-inf mask is not accepted).")


def _require_rank(x, ranks: Sequence[int], name: str, layout: str) -> tuple:
    shape = static_shape(x)
    if len(shape) not in ranks:
        raise ValueError(f"{name}: expected shape {layout} (rank {' or '.join(map(str, ranks))}), "
                         f"got shape {shape} (rank {len(shape)}).")
    return shape


def _same_dim(a, b) -> bool:
    return a is None or b is None or a == b


def _rate(value, name: str = "dropout") -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be a float in [0, 1), got {value!r}.")
    return float(value)


def _int_tuple(values, name: str) -> tuple[int, ...]:
    if isinstance(values, (int, np.integer)):
        values = (values,)
    values = tuple(values)
    if not values:
        raise ValueError(f"{name} must name at least one layer, got an empty sequence.")
    return tuple(positive_int(v, f"{name}[{i}]") for i, v in enumerate(values))


def _choice(value, options: Sequence, name: str):
    if value not in options:
        raise ValueError(f"{name} must be one of {tuple(options)}, got {value!r}.")
    return value


def _large_negative(dtype: str) -> float:
    """A finite 'minus infinity' for masked scores (finite so fully masked rows give no NaN)."""
    return -3e4 if dtype == "float16" else -1e9


# --------------------------------------------------------------------------- functions


def conv2d_param_count(kernel_size: int, in_channels: int, filters: int, use_bias: bool = True) -> int:
    """Trainable parameters of a ``Conv2D(filters, kernel_size)`` on ``in_channels`` inputs.

    Each of the ``filters`` kernels has ``kernel_size * kernel_size * in_channels`` weights,
    plus one bias each: ``k*k*C_in*F + F``. The image size does not appear: a convolution
    shares its weights across positions.
    """
    k = positive_int(kernel_size, "kernel_size")
    c = positive_int(in_channels, "in_channels")
    f = positive_int(filters, "filters")
    return k * k * c * f + (f if use_bias else 0)


def masked_mean(x, mask=None):
    """Mean over the time axis that ignores padding.

    x: float (batch, time, features); mask: bool (batch, time), True on real positions,
    or None (plain mean). Returns float (batch, features):
    ``sum_t m[b,t] x[b,t,:] / sum_t m[b,t]``. A row with no real position gives zeros
    (not NaN).
    """
    x = _as_tensor(x, "x")
    shape = _require_rank(x, (3,), "x", "(batch, time, features)")
    _require_float(x, "x")
    if mask is None:
        return ops.mean(x, axis=1)
    mask = _as_tensor(mask, "mask")
    mask_shape = _require_rank(mask, (2,), "mask", "(batch, time)")
    _require_bool_mask(mask, "mask")
    if not (_same_dim(mask_shape[0], shape[0]) and _same_dim(mask_shape[1], shape[1])):
        raise ValueError(f"mask: expected shape (batch, time) = {shape[:2]} to match x {shape}, "
                         f"got {mask_shape}.")
    weights = ops.expand_dims(ops.cast(mask, x.dtype), -1)  # (B, T, 1)
    total = ops.sum(x * weights, axis=1)  # (B, F)
    count = ops.sum(weights, axis=1)  # (B, 1)
    return total / ops.maximum(count, ops.cast(1.0, x.dtype))


def padding_mask(ids, pad_id: int = PAD_ID):
    """Boolean (batch, time) mask of real tokens: ``ids != pad_id``."""
    ids = _as_tensor(ids, "ids")
    _require_rank(ids, (2,), "ids", "(batch, time)")
    if "int" not in dtype_name(ids):
        raise TypeError(f"ids: expected integer token ids, got dtype {dtype_name(ids)}.")
    return ops.not_equal(ids, pad_id)


def causal_mask(q_len: int, k_len: int | None = None):
    """Boolean (q_len, k_len) mask, True where key j <= query i (no looking ahead).

    With ``k_len > q_len`` the queries are the last ``q_len`` positions (as with a cache).
    """
    q_len = positive_int(q_len, "q_len")
    k_len = q_len if k_len is None else positive_int(k_len, "k_len")
    if k_len < q_len:
        raise ValueError(f"causal_mask: k_len ({k_len}) must be >= q_len ({q_len}).")
    rows = ops.expand_dims(ops.arange(q_len) + (k_len - q_len), 1)
    cols = ops.expand_dims(ops.arange(k_len), 0)
    return ops.greater_equal(rows, cols)


def _attention_mask_for(mask, scores_shape: tuple):
    """Bring a mask to the rank of the scores; validate it. See scaled_dot_product_attention."""
    mask = _as_tensor(mask, "mask")
    _require_bool_mask(mask, "mask")
    rank, mask_shape = len(scores_shape), static_shape(mask)
    if len(mask_shape) == 2:  # key padding mask (batch, k_len)
        if not (_same_dim(mask_shape[0], scores_shape[0]) and _same_dim(mask_shape[1], scores_shape[-1])):
            raise ValueError(f"mask: a rank-2 mask is a key padding mask of shape (batch, k_len) = "
                             f"({scores_shape[0]}, {scores_shape[-1]}), got {mask_shape}.")
        for _ in range(rank - 2):
            mask = ops.expand_dims(mask, 1)  # (batch, 1, [1,] k_len)
    elif len(mask_shape) == 3 and rank == 4:  # (batch, q_len, k_len): the same for every head
        mask = ops.expand_dims(mask, 1)
    elif len(mask_shape) != rank:
        raise ValueError(f"mask: expected rank 2 (batch, k_len) or rank {rank} broadcastable to the scores "
                         f"{scores_shape}, got shape {mask_shape}.")
    for axis, (m, s) in enumerate(zip(static_shape(mask), scores_shape)):
        if m is not None and s is not None and m not in (1, s):
            raise ValueError(f"mask: shape {mask_shape} does not broadcast to the attention scores "
                             f"(batch, [heads,] q_len, k_len) = {scores_shape} (axis {axis}: {m} vs {s}).")
    return mask


def scaled_dot_product_attention(query, key, value, mask=None):
    """Scaled dot-product attention, ``softmax(Q K^T / sqrt(d) + mask) V``.

    Shapes (the ``heads`` axis is optional; all three inputs use the same layout):

    - query: float (batch, [heads,] q_len, d)
    - key:   float (batch, [heads,] k_len, d)
    - value: float (batch, [heads,] k_len, d_v)
    - mask:  bool, True where a query may attend to a key. Either a key padding mask
      (batch, k_len), or a mask of the scores' rank broadcastable to
      (batch, [heads,] q_len, k_len) (e.g. (batch, 1, q_len, k_len) or (1, q_len, k_len)),
      or (batch, q_len, k_len) for 4-D inputs (the same for every head).

    Returns ``(output, weights)``: output float (batch, [heads,] q_len, d_v), weights float
    (batch, [heads,] q_len, k_len), each row a softmax over the keys. Masked scores are
    replaced by a large negative number *before* the softmax; a query with no visible key
    gets all-zero weights (and a zero output), like `keras.layers.MultiHeadAttention`.
    """
    query, key, value = (_as_tensor(t, n) for t, n in ((query, "query"), (key, "key"), (value, "value")))
    layout = "(batch, [heads,] len, d)"
    q_shape = _require_rank(query, (3, 4), "query", layout)
    k_shape = _require_rank(key, (3, 4), "key", layout)
    v_shape = _require_rank(value, (3, 4), "value", layout)
    if not len(q_shape) == len(k_shape) == len(v_shape):
        raise ValueError(f"query, key and value must have the same rank, got shapes {q_shape}, {k_shape} "
                         f"and {v_shape}.")
    for t, n in ((query, "query"), (key, "key"), (value, "value")):
        _require_float(t, n)
    if not dtype_name(query) == dtype_name(key) == dtype_name(value):
        raise TypeError(f"query, key and value must share one dtype, got {dtype_name(query)}, {dtype_name(key)} "
                        f"and {dtype_name(value)}.")
    for axis in range(len(q_shape) - 2):
        if not (_same_dim(q_shape[axis], k_shape[axis]) and _same_dim(k_shape[axis], v_shape[axis])):
            what = "batch size" if axis == 0 else "number of heads"
            raise ValueError(f"query, key and value must have the same {what} (axis {axis}), got shapes "
                             f"{q_shape}, {k_shape} and {v_shape}.")
    if not _same_dim(q_shape[-1], k_shape[-1]):
        raise ValueError(f"query and key must have the same feature size d (last axis), got {q_shape[-1]} "
                         f"and {k_shape[-1]}.")
    if not _same_dim(k_shape[-2], v_shape[-2]):
        raise ValueError(f"key and value must have the same length k_len (axis -2), got {k_shape[-2]} and "
                         f"{v_shape[-2]}.")
    depth = q_shape[-1] if q_shape[-1] is not None else ops.shape(query)[-1]
    scale = ops.cast(1.0 / math.sqrt(depth), query.dtype) if isinstance(depth, int) \
        else ops.rsqrt(ops.cast(depth, query.dtype))
    scores = ops.matmul(query, ops.swapaxes(key, -1, -2)) * scale  # (B, [H,] q_len, k_len)
    if mask is not None:
        scores_shape = q_shape[:-1] + (k_shape[-2],)
        mask = _attention_mask_for(mask, scores_shape)
        scores = ops.where(mask, scores, ops.cast(_large_negative(dtype_name(scores)), scores.dtype))
    weights = ops.softmax(scores, axis=-1)
    if mask is not None:
        weights = ops.where(mask, weights, ops.zeros_like(weights))
    return ops.matmul(weights, value), weights


def patchify(images, patch_size: int):
    """Cut images into non-overlapping square patches and flatten each one.

    images: (batch, H, W, C), any dtype, H and W divisible by ``patch_size``.
    Returns (batch, num_patches, patch_size * patch_size * C) with the same dtype, where
    ``num_patches = (H // p) * (W // p)``. Patches are in reading order (left to right,
    then top to bottom); inside a patch the values are in the order (row, column,
    channel), exactly as ``image[i*p:(i+1)*p, j*p:(j+1)*p, :].reshape(-1)``.
    """
    images = _as_tensor(images, "images")
    shape = _require_rank(images, (4,), "images", "(batch, H, W, C)")
    p = positive_int(patch_size, "patch_size")
    _, height, width, channels = shape
    if height is None or width is None or channels is None:
        raise ValueError(f"patchify needs a known image size, got shape {shape}; give the Input a full shape "
                         "such as keras.Input((64, 64, 3)).")
    if height % p or width % p:
        raise ValueError(f"images: height and width must be divisible by patch_size={p}, got {height}x{width}; "
                         f"resize or crop to a multiple of {p} (e.g. {height - height % p}x{width - width % p}).")
    rows, cols = height // p, width // p
    x = ops.reshape(images, (-1, rows, p, cols, p, channels))  # (B, rows, p, cols, p, C)
    x = ops.transpose(x, (0, 1, 3, 2, 4, 5))  # (B, rows, cols, p, p, C)
    return ops.reshape(x, (-1, rows * cols, p * p * channels))


def shape_trace(inputs, steps: Sequence[tuple[str, Callable]], show: bool = True):
    """Apply ``steps`` (a list of ``(name, layer_or_function)``) one after another and
    print one row per step: output shape and the step's parameter count. Returns the last
    output. A teaching helper: it makes every intermediate shape visible."""
    x = inputs
    rows = [("input", tuple(_as_tensor(inputs, "inputs").shape), 0)]
    for name, step in steps:
        x = step(x)
        params = step.count_params() if isinstance(step, keras.layers.Layer) and step.built else 0
        rows.append((name, tuple(int(d) for d in x.shape), params))
    if show:
        width = max(len(r[0]) for r in rows) + 2
        print(f"{'step':<{width}}{'output shape':<24}{'params':>10}")
        for name, shape, params in rows:
            print(f"{name:<{width}}{str(shape):<24}{params:>10,}")
        print(f"{'total':<{width}}{'':<24}{sum(r[2] for r in rows):>10,}")
    return x


# --------------------------------------------------------------------------- attention layers


@_register
class PositionEmbedding(keras.layers.Layer):
    """Learned position embeddings added to a sequence: ``x[:, t] + P[t]``.

    Input float (batch, time, dim) with ``time <= max_length`` and ``dim == embed_dim``;
    output the same shape. ``P`` has shape (max_length, embed_dim): ``max_length *
    embed_dim`` parameters.
    """

    def __init__(self, max_length: int, embed_dim: int, initializer="random_normal", **kwargs):
        super().__init__(**kwargs)
        self.max_length = positive_int(max_length, "max_length")
        self.embed_dim = positive_int(embed_dim, "embed_dim")
        self.initializer = keras.initializers.get(initializer)
        self.supports_masking = True

    def build(self, input_shape):
        if len(input_shape) != 3 or input_shape[-1] != self.embed_dim:
            raise ValueError(f"{self.name}: expected input (batch, time, {self.embed_dim}), got {tuple(input_shape)}.")
        self.positions = self.add_weight(shape=(self.max_length, self.embed_dim), initializer=self.initializer,
                                         name="positions")

    def call(self, x):
        length = x.shape[1]
        if length is not None and length > self.max_length:
            raise ValueError(f"{self.name}: sequence length {length} is longer than max_length={self.max_length}; "
                             "truncate the input or build the layer with a larger max_length.")
        length = ops.shape(x)[1] if length is None else length
        return x + ops.cast(ops.expand_dims(self.positions[:length], 0), x.dtype)

    def compute_mask(self, x, mask=None):
        return mask

    def get_config(self):
        config = super().get_config()
        config.update(max_length=self.max_length, embed_dim=self.embed_dim,
                      initializer=keras.initializers.serialize(self.initializer))
        return config


@_register
class ScratchMultiHeadAttention(keras.layers.Layer):
    """Multi-head attention written out: project, split into heads, attend, merge.

    ``layer(query, context=None, mask=None, context_mask=None, attention_mask=None)``:

    - query: float (batch, q_len, d_query); context: float (batch, k_len, d_context),
      default ``query`` (self-attention). Keys and values are both computed from ``context``.
    - mask: bool (batch, q_len), the query's padding mask (Keras passes it automatically
      from an ``Embedding(mask_zero=True)``). In self-attention it also masks the keys.
    - context_mask: bool (batch, k_len), padding of the context (cross-attention).
    - attention_mask: bool (batch, q_len, k_len), any extra pattern.
    - ``use_causal_mask=True`` (constructor) forbids attending to later positions.

    Returns float (batch, q_len, output_dim) (default d_query), and with
    ``return_attention_scores=True`` also the weights (batch, heads, q_len, k_len).
    Padded *query* rows are not masked (their outputs are ignored by any masked pooling or
    loss), so they never produce NaN.

    The weights have exactly the shapes of `keras.layers.MultiHeadAttention` and are
    created in the same order, so ``scratch.set_weights(keras_mha.get_weights())`` copies
    them: query / key / value kernels (d, heads, key_dim) with biases (heads, key_dim),
    output kernel (heads, value_dim, output_dim) with bias (output_dim,).
    """

    def __init__(self, num_heads: int, key_dim: int, value_dim: int | None = None, output_dim: int | None = None,
                 dropout: float = 0.0, use_bias: bool = True, use_causal_mask: bool = False,
                 kernel_initializer="glorot_uniform", bias_initializer="zeros", seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.num_heads = positive_int(num_heads, "num_heads")
        self.key_dim = positive_int(key_dim, "key_dim")
        self.value_dim = self.key_dim if value_dim is None else positive_int(value_dim, "value_dim")
        self.output_dim = None if output_dim is None else positive_int(output_dim, "output_dim")
        self.dropout = _rate(dropout)
        self.use_bias = bool(use_bias)
        self.use_causal_mask = bool(use_causal_mask)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.seed = seed
        self.attention_dropout = keras.layers.Dropout(self.dropout, seed=seed, dtype=self.dtype_policy)
        self.supports_masking = True

    def _projection(self, name: str, shape: tuple):
        kernel = self.add_weight(name=f"{name}_kernel", shape=shape, initializer=self.kernel_initializer)
        bias_shape = shape[1:] if name != "output" else shape[-1:]
        bias = self.add_weight(name=f"{name}_bias", shape=bias_shape, initializer=self.bias_initializer) \
            if self.use_bias else None
        return kernel, bias

    def build(self, query_shape, context_shape=None):
        if len(query_shape) != 3 or query_shape[-1] is None:
            raise ValueError(f"{self.name}: expected query (batch, q_len, d) with a known d, got {tuple(query_shape)}.")
        context_shape = query_shape if context_shape is None else context_shape
        if len(context_shape) != 3 or context_shape[-1] is None:
            raise ValueError(f"{self.name}: expected context (batch, k_len, d) with a known d, "
                             f"got {tuple(context_shape)}.")
        d_query, d_context = query_shape[-1], context_shape[-1]
        h, k, v = self.num_heads, self.key_dim, self.value_dim
        out = self.output_dim or d_query
        self.query_kernel, self.query_bias = self._projection("query", (d_query, h, k))
        self.key_kernel, self.key_bias = self._projection("key", (d_context, h, k))
        self.value_kernel, self.value_bias = self._projection("value", (d_context, h, v))
        self.output_kernel, self.output_bias = self._projection("output", (h, v, out))
        self.attention_dropout.build(None)

    def _project(self, x, kernel, bias):
        y = ops.einsum("btd,dhk->bhtk", x, kernel)  # (B, H, T, k)
        return y if bias is None else y + ops.expand_dims(bias, 1)

    def call(self, query, context=None, mask=None, context_mask=None, attention_mask=None,
             return_attention_scores=False, training=None):
        _require_rank(query, (3,), "query", "(batch, q_len, d)")
        _require_float(query, "query")
        self_attention = context is None
        context = query if self_attention else context
        c_shape = _require_rank(context, (3,), "context", "(batch, k_len, d)")
        _require_float(context, "context")
        if not _same_dim(query.shape[0], c_shape[0]):
            raise ValueError(f"{self.name}: query and context must have the same batch size, got "
                             f"{query.shape[0]} and {c_shape[0]}.")
        if self_attention and context_mask is None:
            context_mask = mask
        combined = None
        if context_mask is not None:
            _require_bool_mask(context_mask, "context_mask")
            cm_shape = _require_rank(context_mask, (2,), "context_mask", "(batch, k_len)")
            if not _same_dim(cm_shape[1], c_shape[1]):
                raise ValueError(f"{self.name}: context_mask must be (batch, k_len={c_shape[1]}), got {cm_shape}.")
            combined = ops.expand_dims(ops.expand_dims(context_mask, 1), 1)  # (B, 1, 1, S)
        if attention_mask is not None:
            _require_bool_mask(attention_mask, "attention_mask")
            _require_rank(attention_mask, (3,), "attention_mask", "(batch, q_len, k_len)")
            extra = ops.expand_dims(attention_mask, 1)  # (B, 1, T, S)
            combined = extra if combined is None else ops.logical_and(combined, extra)
        if self.use_causal_mask:
            q_len = query.shape[1] if query.shape[1] is not None else ops.shape(query)[1]
            k_len = context.shape[1] if context.shape[1] is not None else ops.shape(context)[1]
            rows = ops.expand_dims(ops.arange(q_len) + (k_len - q_len), 1)
            causal = ops.greater_equal(rows, ops.expand_dims(ops.arange(k_len), 0))[None, None]  # (1, 1, T, S)
            combined = causal if combined is None else ops.logical_and(combined, causal)
        q = self._project(query, self.query_kernel, self.query_bias)  # (B, H, T, key_dim)
        k = self._project(context, self.key_kernel, self.key_bias)  # (B, H, S, key_dim)
        v = self._project(context, self.value_kernel, self.value_bias)  # (B, H, S, value_dim)
        heads, weights = scaled_dot_product_attention(q, k, v, combined)  # (B, H, T, value_dim), (B, H, T, S)
        if self.dropout > 0.0 and training:
            heads = ops.matmul(self.attention_dropout(weights, training=training), v)
        output = ops.einsum("bhtv,hvo->bto", heads, self.output_kernel)  # (B, T, output_dim)
        if self.output_bias is not None:
            output = output + self.output_bias
        return (output, weights) if return_attention_scores else output

    def compute_mask(self, query, mask=None):
        return mask

    def get_config(self):
        config = super().get_config()
        config.update(num_heads=self.num_heads, key_dim=self.key_dim, value_dim=self.value_dim,
                      output_dim=self.output_dim, dropout=self.dropout, use_bias=self.use_bias,
                      use_causal_mask=self.use_causal_mask,
                      kernel_initializer=keras.initializers.serialize(self.kernel_initializer),
                      bias_initializer=keras.initializers.serialize(self.bias_initializer), seed=self.seed)
        return config


@_register
class TransformerEncoderBlock(keras.layers.Layer):
    """One pre-norm Transformer block (as in ViT and GPT-2)::

        x = x + Dropout(MultiHeadSelfAttention(LayerNorm(x)))
        x = x + Dropout(Dense(embed_dim)(gelu(Dense(mlp_dim)(LayerNorm(x)))))

    Input float (batch, time, embed_dim) and an optional padding mask bool (batch, time)
    (passed automatically after ``Embedding(mask_zero=True)``); output the same shape.
    ``num_heads`` must divide ``embed_dim``. With ``use_causal_mask=True`` it is a
    decoder block (no looking ahead). ``return_attention_scores=True`` in the call also
    returns the weights (batch, heads, time, time).
    """

    def __init__(self, embed_dim: int, num_heads: int, mlp_dim: int, dropout: float = 0.0,
                 use_causal_mask: bool = False, layer_norm_epsilon: float = 1e-6, seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.embed_dim = positive_int(embed_dim, "embed_dim")
        self.num_heads = positive_int(num_heads, "num_heads")
        self.mlp_dim = positive_int(mlp_dim, "mlp_dim")
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim ({self.embed_dim}) must be divisible by num_heads ({self.num_heads}) so "
                             "each head gets embed_dim // num_heads features.")
        self.dropout = _rate(dropout)
        self.use_causal_mask = bool(use_causal_mask)
        self.layer_norm_epsilon = float(layer_norm_epsilon)
        self.seed = seed
        policy = self.dtype_policy
        self.norm1 = keras.layers.LayerNormalization(epsilon=self.layer_norm_epsilon, name="norm1", dtype=policy)
        self.attention = ScratchMultiHeadAttention(self.num_heads, self.embed_dim // self.num_heads,
                                                   dropout=self.dropout, use_causal_mask=self.use_causal_mask,
                                                   seed=seed, name="attention", dtype=self.dtype_policy)
        self.norm2 = keras.layers.LayerNormalization(epsilon=self.layer_norm_epsilon, name="norm2", dtype=policy)
        self.mlp_in = keras.layers.Dense(self.mlp_dim, activation="gelu", name="mlp_in", dtype=self.dtype_policy)
        self.mlp_out = keras.layers.Dense(self.embed_dim, name="mlp_out", dtype=self.dtype_policy)
        self.dropout1 = keras.layers.Dropout(self.dropout, seed=seed, dtype=self.dtype_policy)
        self.dropout2 = keras.layers.Dropout(self.dropout, seed=seed, dtype=self.dtype_policy)
        self.supports_masking = True

    def build(self, input_shape):
        if len(input_shape) != 3 or input_shape[-1] != self.embed_dim:
            raise ValueError(f"{self.name}: expected input (batch, time, embed_dim={self.embed_dim}), "
                             f"got {tuple(input_shape)}.")
        self.norm1.build(input_shape)
        self.attention.build(input_shape)
        self.norm2.build(input_shape)
        self.mlp_in.build(input_shape)
        self.mlp_out.build(tuple(input_shape[:-1]) + (self.mlp_dim,))

    def call(self, x, mask=None, training=None, return_attention_scores=False):
        _require_rank(x, (3,), "x", f"(batch, time, {self.embed_dim})")
        if x.shape[-1] != self.embed_dim:
            raise ValueError(f"{self.name}: expected {self.embed_dim} features in the last axis, got {x.shape[-1]}.")
        attended, weights = self.attention(self.norm1(x), mask=mask, return_attention_scores=True, training=training)
        x = x + self.dropout1(attended, training=training)
        x = x + self.dropout2(self.mlp_out(self.mlp_in(self.norm2(x))), training=training)
        return (x, weights) if return_attention_scores else x

    def compute_mask(self, x, mask=None):
        return mask

    def get_config(self):
        config = super().get_config()
        config.update(embed_dim=self.embed_dim, num_heads=self.num_heads, mlp_dim=self.mlp_dim,
                      dropout=self.dropout, use_causal_mask=self.use_causal_mask,
                      layer_norm_epsilon=self.layer_norm_epsilon, seed=self.seed)
        return config


# --------------------------------------------------------------------------- image encoders


def _check_images(images, name: str, channels: int | None = None, size: tuple | None = None):
    shape = _require_rank(images, (4,), name, "(batch, H, W, C)")
    _require_float(images, name, "convert uint8 pixels with mmlm_course.preprocessing.to_float_image "
                                 "(or keras.ops.cast(images, 'float32') / 255)")
    if channels is not None and shape[-1] is not None and shape[-1] != channels:
        raise ValueError(f"{name}: expected {channels} channels in the last axis (channels last), got shape {shape}.")
    if size is not None and shape[1:3] != size and None not in shape[1:3]:
        raise ValueError(f"{name}: this layer was built for {size[0]}x{size[1]} images, got {shape[1]}x{shape[2]}; "
                         "resize with mmlm_course.preprocessing.resize_image.")
    return shape


@_register
class ConvImageEncoder(keras.layers.Layer):
    """A small CNN: ``[Conv2D(f, k, same, relu) -> MaxPool2D(2)]`` per entry of ``filters``.

    Input float images (batch, H, W, channels) (in [0, 1] or standardised). Output:

    - ``output="vector"``: global pooling (``pooling="avg"`` or ``"max"``: "is it anywhere
      in the image?") then ``Dense(embed_dim)``: (batch, embed_dim);
    - ``output="tokens"``: ``Dense(embed_dim)`` at every position of the last feature map:
      (batch, H' * W', embed_dim) with ``H' = H / 2**len(filters)``, one token per region
      (what lesson 08 feeds a language model).

    ``feature_maps(images)`` returns each convolution's activations, (batch, H_i, W_i, f_i).
    """

    def __init__(self, filters: Sequence[int] = (16, 32, 64), embed_dim: int = 64, kernel_size: int = 3,
                 output: str = "vector", pooling: str = "avg", channels: int = 3, **kwargs):
        super().__init__(**kwargs)
        self.filters = _int_tuple(filters, "filters")
        self.embed_dim = positive_int(embed_dim, "embed_dim")
        self.kernel_size = positive_int(kernel_size, "kernel_size")
        self.output_mode = _choice(output, ("vector", "tokens"), "output")
        self.channels = positive_int(channels, "channels")
        policy = self.dtype_policy
        self.convs = [keras.layers.Conv2D(f, self.kernel_size, padding="same", activation="relu", name=f"conv{i + 1}",
                                          dtype=policy) for i, f in enumerate(self.filters)]
        self.pools = [keras.layers.MaxPooling2D(2, name=f"pool{i + 1}", dtype=policy) for i in range(len(self.filters))]
        self.pooling = _choice(pooling, ("avg", "max"), "pooling")
        pool_class = keras.layers.GlobalAveragePooling2D if self.pooling == "avg" else keras.layers.GlobalMaxPooling2D
        self.global_pool = pool_class(name="global_pool", dtype=self.dtype_policy)
        self.project = keras.layers.Dense(self.embed_dim, name="project", dtype=self.dtype_policy)

    def build(self, input_shape):
        _check_images(keras.KerasTensor(input_shape), self.name, self.channels)
        shape = tuple(input_shape)
        for conv, pool in zip(self.convs, self.pools):
            conv.build(shape)
            shape = conv.compute_output_shape(shape)
            shape = pool.compute_output_shape(shape)
        for dim in shape[1:3]:
            if dim is not None and dim < 1:
                raise ValueError(f"{self.name}: {len(self.filters)} poolings halve {tuple(input_shape)[1:3]} to "
                                 f"nothing; use fewer filters or larger images.")
        self.project.build(shape[:1] + (shape[-1],))

    def feature_maps(self, images) -> list:
        """The activation of every convolution (after ReLU, before pooling): a list of
        float (batch, H / 2**i, W / 2**i, filters[i])."""
        images = _as_tensor(images, "images")
        _check_images(images, "images", self.channels)
        maps, x = [], images
        for conv, pool in zip(self.convs, self.pools):
            x = conv(x)
            maps.append(x)
            x = pool(x)
        return maps

    def call(self, images):
        _check_images(images, "images", self.channels)
        x = images
        for conv, pool in zip(self.convs, self.pools):
            x = pool(conv(x))  # (B, H/2^i, W/2^i, f_i)
        if self.output_mode == "vector":
            return self.project(self.global_pool(x))  # (B, embed_dim)
        grid = self.project(x)  # (B, H', W', embed_dim)
        return ops.reshape(grid, (-1, grid.shape[1] * grid.shape[2], self.embed_dim))  # (B, H'*W', embed_dim)

    def get_config(self):
        config = super().get_config()
        config.update(filters=list(self.filters), embed_dim=self.embed_dim, kernel_size=self.kernel_size,
                      output=self.output_mode, pooling=self.pooling, channels=self.channels)
        return config


def _pair(value, name: str) -> tuple[int, int]:
    if isinstance(value, (int, np.integer)):
        value = (value, value)
    value = tuple(value)
    if len(value) != 2:
        raise ValueError(f"{name} must be an int or (height, width), got {value!r}.")
    return positive_int(value[0], f"{name}[0]"), positive_int(value[1], f"{name}[1]")


@_register
class PatchEmbedding(keras.layers.Layer):
    """ViT-style patch tokens: `patchify`, a shared linear projection, learned positions.

    Input float images (batch, H, W, channels) of exactly ``image_size``. Output
    (batch, num_patches [+ 1], embed_dim), ``num_patches = (H / p) * (W / p)``; with
    ``use_class_token=True`` a learned ``[CLS]`` token comes first. Parameters:
    ``p*p*C*D + D`` (projection) ``+ (num_patches [+1]) * D`` (positions) ``[+ D]`` (class
    token). The projection is the same as ``Conv2D(D, p, strides=p)``.
    """

    def __init__(self, image_size=64, patch_size: int = 8, embed_dim: int = 64, channels: int = 3,
                 use_class_token: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.image_size = _pair(image_size, "image_size")
        self.patch_size = positive_int(patch_size, "patch_size")
        self.embed_dim = positive_int(embed_dim, "embed_dim")
        self.channels = positive_int(channels, "channels")
        self.use_class_token = bool(use_class_token)
        height, width = self.image_size
        if height % self.patch_size or width % self.patch_size:
            raise ValueError(f"image_size {height}x{width} must be divisible by patch_size={self.patch_size}.")
        self.grid_size = (height // self.patch_size, width // self.patch_size)
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.projection = keras.layers.Dense(self.embed_dim, name="projection", dtype=self.dtype_policy)
        self.position_embedding = PositionEmbedding(self.num_patches + int(self.use_class_token), self.embed_dim,
                                                    initializer=keras.initializers.RandomNormal(stddev=0.02),
                                                    name="position_embedding", dtype=self.dtype_policy)

    def build(self, input_shape):
        _check_images(keras.KerasTensor(input_shape), self.name, self.channels, self.image_size)
        self.projection.build((None, self.num_patches, self.patch_size ** 2 * self.channels))
        self.position_embedding.build((None, self.num_patches + int(self.use_class_token), self.embed_dim))
        if self.use_class_token:
            self.class_token = self.add_weight(name="class_token", shape=(1, 1, self.embed_dim),
                                               initializer=keras.initializers.RandomNormal(stddev=0.02))

    def call(self, images):
        _check_images(images, "images", self.channels, self.image_size)
        tokens = self.projection(patchify(images, self.patch_size))  # (B, N, D)
        if self.use_class_token:
            batch = ops.shape(tokens)[0]
            cls = ops.broadcast_to(ops.cast(self.class_token, tokens.dtype), (batch, 1, self.embed_dim))
            tokens = ops.concatenate([cls, tokens], axis=1)  # (B, N + 1, D)
        return self.position_embedding(tokens)

    def get_config(self):
        config = super().get_config()
        config.update(image_size=list(self.image_size), patch_size=self.patch_size, embed_dim=self.embed_dim,
                      channels=self.channels, use_class_token=self.use_class_token)
        return config


# --------------------------------------------------------------------------- text encoders


def _check_ids(ids, name: str = "ids", max_length: int | None = None):
    shape = _require_rank(ids, (2,), name, "(batch, time)")
    if "int" not in dtype_name(ids):
        raise TypeError(f"{name}: expected integer token ids (batch, time), got dtype {dtype_name(ids)}; "
                        "use Tokenizer.encode_batch, which returns int32 ids.")
    if max_length is not None and shape[1] is not None and shape[1] > max_length:
        raise ValueError(f"{name}: {shape[1]} tokens is longer than max_length={max_length}; truncate with "
                         f"Tokenizer.encode_batch(texts, max_length={max_length}) or build a longer encoder.")
    return shape


def _text_mask(ids, mask):
    """The given mask (validated) or ``ids != 0``."""
    if mask is None:
        return ops.not_equal(ids, PAD_ID)
    _require_bool_mask(mask, "mask")
    m_shape = _require_rank(mask, (2,), "mask", "(batch, time)")
    if not all(_same_dim(a, b) for a, b in zip(m_shape, ids.shape)):
        raise ValueError(f"mask: expected the shape of ids {tuple(ids.shape)}, got {m_shape}.")
    return mask


@_register
class BagOfEmbeddings(keras.layers.Layer):
    """The simplest text encoder: the mean of the word embeddings of the real tokens.

    Input int ids (batch, time) (0 = padding) and an optional bool mask (batch, time)
    (default ``ids != 0``). Output float (batch, embed_dim). Word order is ignored:
    "a circle left of a square" and "a square left of a circle" get the same vector.
    Parameters: ``vocab_size * embed_dim``.
    """

    def __init__(self, vocab_size: int, embed_dim: int = 64, **kwargs):
        super().__init__(**kwargs)
        self.vocab_size = positive_int(vocab_size, "vocab_size")
        self.embed_dim = positive_int(embed_dim, "embed_dim")
        self.embedding = keras.layers.Embedding(self.vocab_size, self.embed_dim, name="embedding",
                                                dtype=self.dtype_policy)

    def build(self, ids_shape):
        self.embedding.build(ids_shape)

    def call(self, ids, mask=None):
        _check_ids(ids)
        return masked_mean(self.embedding(ids), _text_mask(ids, mask))  # (B, D)

    def compute_mask(self, ids, mask=None):
        return None

    def get_config(self):
        config = super().get_config()
        config.update(vocab_size=self.vocab_size, embed_dim=self.embed_dim)
        return config


@_register
class RecurrentTextEncoder(keras.layers.Layer):
    """Embedding then a GRU or LSTM that reads the tokens in order, skipping padding.

    Input int ids (batch, time), optional bool mask (default ``ids != 0``). Output the
    final hidden state float (batch, units) (``2 * units`` if bidirectional), or every
    state (batch, time, units) with ``return_sequences=True``. Parameters of the
    recurrent layer: GRU ``3 * (units * (embed_dim + units) + 2 * units)`` (Keras uses two
    biases, ``reset_after=True``), LSTM ``4 * (units * (embed_dim + units) + units)``.
    """

    def __init__(self, vocab_size: int, embed_dim: int = 32, units: int = 64, cell: str = "gru",
                 bidirectional: bool = False, return_sequences: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.vocab_size = positive_int(vocab_size, "vocab_size")
        self.embed_dim = positive_int(embed_dim, "embed_dim")
        self.units = positive_int(units, "units")
        self.cell = _choice(cell, ("gru", "lstm"), "cell")
        self.bidirectional = bool(bidirectional)
        self.return_sequences = bool(return_sequences)
        self.embedding = keras.layers.Embedding(self.vocab_size, self.embed_dim, name="embedding",
                                                dtype=self.dtype_policy)
        layer_class = keras.layers.GRU if self.cell == "gru" else keras.layers.LSTM
        rnn = layer_class(self.units, return_sequences=self.return_sequences, name=self.cell, dtype=self.dtype_policy)
        self.rnn = keras.layers.Bidirectional(rnn, name="bidirectional", dtype=self.dtype_policy) \
            if self.bidirectional else rnn
        self.supports_masking = True

    def build(self, ids_shape):
        self.embedding.build(ids_shape)
        self.rnn.build(tuple(ids_shape) + (self.embed_dim,))

    def call(self, ids, mask=None):
        _check_ids(ids)
        mask = _text_mask(ids, mask)
        return self.rnn(self.embedding(ids), mask=mask)

    def compute_mask(self, ids, mask=None):
        if not self.return_sequences:
            return None
        return ops.not_equal(ids, PAD_ID) if mask is None else mask

    def get_config(self):
        config = super().get_config()
        config.update(vocab_size=self.vocab_size, embed_dim=self.embed_dim, units=self.units, cell=self.cell,
                      bidirectional=self.bidirectional, return_sequences=self.return_sequences)
        return config


@_register
class TransformerTextEncoder(keras.layers.Layer):
    """Token embeddings + learned positions, ``num_layers`` `TransformerEncoderBlock` s, a
    final LayerNorm, then padding-aware mean pooling.

    Input int ids (batch, time) with ``time <= max_length``, optional bool mask (default
    ``ids != 0``). Output float (batch, embed_dim), or (batch, time, embed_dim) with
    ``pooling=None``.
    """

    def __init__(self, vocab_size: int, max_length: int, embed_dim: int = 64, num_heads: int = 4,
                 mlp_dim: int = 128, num_layers: int = 2, dropout: float = 0.0, pooling: str | None = "mean",
                 **kwargs):
        super().__init__(**kwargs)
        self.vocab_size = positive_int(vocab_size, "vocab_size")
        self.max_length = positive_int(max_length, "max_length")
        self.embed_dim = positive_int(embed_dim, "embed_dim")
        self.num_heads = positive_int(num_heads, "num_heads")
        self.mlp_dim = positive_int(mlp_dim, "mlp_dim")
        self.num_layers = positive_int(num_layers, "num_layers")
        self.dropout = _rate(dropout)
        self.pooling = _choice(pooling, ("mean", None), "pooling")
        policy = self.dtype_policy
        self.token_embedding = keras.layers.Embedding(self.vocab_size, self.embed_dim, name="token_embedding",
                                                      dtype=policy)
        self.position_embedding = PositionEmbedding(self.max_length, self.embed_dim, name="position_embedding",
                                                    dtype=policy)
        self.blocks = [TransformerEncoderBlock(self.embed_dim, self.num_heads, self.mlp_dim, self.dropout,
                                               name=f"block{i + 1}", dtype=policy) for i in range(self.num_layers)]
        self.final_norm = keras.layers.LayerNormalization(epsilon=1e-6, name="final_norm", dtype=policy)
        self.supports_masking = True

    def build(self, ids_shape):
        self.token_embedding.build(ids_shape)
        sequence_shape = tuple(ids_shape) + (self.embed_dim,)
        self.position_embedding.build(sequence_shape)
        for block in self.blocks:
            block.build(sequence_shape)
        self.final_norm.build(sequence_shape)

    def call(self, ids, mask=None, training=None):
        _check_ids(ids, max_length=self.max_length)
        mask = _text_mask(ids, mask)
        x = self.position_embedding(self.token_embedding(ids))  # (B, T, D)
        for block in self.blocks:
            x = block(x, mask=mask, training=training)
        x = self.final_norm(x)
        return masked_mean(x, mask) if self.pooling == "mean" else x

    def compute_mask(self, ids, mask=None):
        if self.pooling == "mean":
            return None
        return ops.not_equal(ids, PAD_ID) if mask is None else mask

    def get_config(self):
        config = super().get_config()
        config.update(vocab_size=self.vocab_size, max_length=self.max_length, embed_dim=self.embed_dim,
                      num_heads=self.num_heads, mlp_dim=self.mlp_dim, num_layers=self.num_layers,
                      dropout=self.dropout, pooling=self.pooling)
        return config


# --------------------------------------------------------------------------- audio encoder


@_register
class AudioEncoder(keras.layers.Layer):
    """A 1-D CNN over time on a log-mel spectrogram (mel bins are the input channels).

    Input float (batch, frames, mel_bins) and an optional bool mask (batch, frames), True
    on real frames (clips of different lengths padded at the end to one length). Each
    entry of ``filters`` is ``Conv1D(f, kernel_size, strides=s, padding="causal", relu)``
    followed by a LayerNorm (over features, per frame), so time shrinks by
    ``prod(strides)``. Causal padding means a frame only sees the frames before it, so
    padding added at the end never leaks into the real frames: with the mask, the output
    does not depend on how much padding a clip got. Output:

    - ``output="vector"``: padding-aware mean over time then ``Dense(embed_dim)``:
      (batch, embed_dim);
    - ``output="tokens"``: ``Dense(embed_dim)`` per remaining frame:
      (batch, ceil(frames / prod(strides)), embed_dim) (audio tokens).
    """

    def __init__(self, mel_bins: int, filters: Sequence[int] = (64, 64), strides: Sequence[int] = (2, 2),
                 kernel_size: int = 5, embed_dim: int = 64, output: str = "vector", **kwargs):
        super().__init__(**kwargs)
        self.mel_bins = positive_int(mel_bins, "mel_bins")
        self.filters = _int_tuple(filters, "filters")
        self.strides = _int_tuple(strides, "strides")
        if len(self.strides) != len(self.filters):
            raise ValueError(f"strides must have one entry per conv layer ({len(self.filters)}), got {self.strides}.")
        self.kernel_size = positive_int(kernel_size, "kernel_size")
        self.embed_dim = positive_int(embed_dim, "embed_dim")
        self.output_mode = _choice(output, ("vector", "tokens"), "output")
        policy = self.dtype_policy
        self.convs = [keras.layers.Conv1D(f, self.kernel_size, strides=s, padding="causal", activation="relu",
                                          name=f"conv{i + 1}", dtype=policy)
                      for i, (f, s) in enumerate(zip(self.filters, self.strides))]
        self.norms = [keras.layers.LayerNormalization(epsilon=1e-6, name=f"norm{i + 1}", dtype=policy)
                      for i in range(len(self.filters))]
        self.project = keras.layers.Dense(self.embed_dim, name="project", dtype=self.dtype_policy)

    def _check(self, spectrogram):
        shape = _require_rank(spectrogram, (3,), "spectrogram", f"(batch, frames, mel_bins={self.mel_bins})")
        _require_float(spectrogram, "spectrogram")
        if shape[-1] is not None and shape[-1] != self.mel_bins:
            hint = " (is it (batch, mel_bins, frames)? transpose to put time first)" \
                if shape[1] == self.mel_bins else ""
            raise ValueError(f"spectrogram: expected {self.mel_bins} mel bins in the last axis, got shape "
                             f"{shape}{hint}.")
        return shape

    def build(self, spectrogram_shape):
        self._check(keras.KerasTensor(spectrogram_shape))
        shape = tuple(spectrogram_shape)
        for conv, norm in zip(self.convs, self.norms):
            conv.build(shape)
            shape = conv.compute_output_shape(shape)
            norm.build(shape)
        self.project.build(shape)

    def output_frames(self, frames: int) -> int:
        """Number of frames left after the strided convolutions."""
        for s in self.strides:
            frames = -(-frames // s)
        return frames

    def call(self, spectrogram, mask=None):
        shape = self._check(spectrogram)
        if mask is not None:
            _require_bool_mask(mask, "mask")
            m_shape = _require_rank(mask, (2,), "mask", "(batch, frames)")
            if not (_same_dim(m_shape[0], shape[0]) and _same_dim(m_shape[1], shape[1])):
                raise ValueError(f"mask: expected (batch, frames) = {shape[:2]} to match the spectrogram, "
                                 f"got {m_shape}.")
        x = spectrogram
        for conv, norm, stride in zip(self.convs, self.norms, self.strides):
            x = norm(conv(x))  # (B, ceil(T / s), f)
            if mask is not None and stride > 1:
                mask = mask[:, ::stride]  # output frame i ends at input frame i * s: real when that one is
        if self.output_mode == "tokens":
            return self.project(x)  # (B, T', embed_dim)
        return self.project(masked_mean(x, mask))  # (B, embed_dim)

    def compute_mask(self, spectrogram, mask=None):
        if self.output_mode == "vector" or mask is None:
            return None
        for stride in self.strides:
            mask = mask[:, ::stride]
        return mask

    def get_config(self):
        config = super().get_config()
        config.update(mel_bins=self.mel_bins, filters=list(self.filters), strides=list(self.strides),
                      kernel_size=self.kernel_size, embed_dim=self.embed_dim, output=self.output_mode)
        return config
