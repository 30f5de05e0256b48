"""Lesson 03: attention, the one mechanism behind every Transformer of the course.

Each query vector scores every key vector, the scores become weights with a softmax,
and the query's output is the weighted mean of the values:

    Attention(Q, K, V) = softmax(Q K^T / sqrt(d) + M) V

    Q: (batch, [heads,] q_len, d)    K: (batch, [heads,] k_len, d)    V: (batch, [heads,] k_len, d_v)
    weights: (batch, [heads,] q_len, k_len), each row sums to 1 over the keys
    output:  (batch, [heads,] q_len, d_v)

A boolean mask (True = may attend) hides keys: padding, or the future (`causal_mask`).
What the course builds on it, in the order a reader meets them:

- `MultiHeadAttention`: project the inputs to ``num_heads`` queries, keys and values,
  attend in each head, merge the heads. Self-attention (``context=None``) or
  cross-attention (keys and values from ``context``), the weight layout of
  `keras.layers.MultiHeadAttention`, the attention weights on request, and an optional
  key-value cache for generating one token at a time (lesson 07).
- `TransformerBlock`: pre-norm attention and MLP with residual connections; causal or
  not, it is the block of the text encoder (lesson 03), the decoder language model
  (lesson 07) and the multimodal model (lesson 08).
- `scaled_dot_product_attention`, `causal_mask` and `update_cache`: the three functions
  the layers are made of.

Everything is written with `keras.ops` (it runs on every Keras backend) and the layers
are registered for ``.keras`` saving under the package name ``mmlm_course``.
"""

from __future__ import annotations

import math

import keras
import numpy as np
from keras import ops

from mmlm_course.validation import (as_array, dtype_name, positive_int, require_array_budget, require_bool_mask,
                                    require_float_dtype,
                                    require_int, require_rank, require_rate, same_dim, static_shape)

__all__ = ["MultiHeadAttention", "TransformerBlock", "scaled_dot_product_attention", "causal_mask", "update_cache"]

_register = keras.saving.register_keras_serializable(package="mmlm_course")


@_register
class MultiHeadAttention(keras.layers.Layer):
    """Multi-head attention written out: project, split into heads, attend, merge.

    ``layer(query, context=None, mask=None, context_mask=None, attention_mask=None,
    cache=None, position=0, return_attention_scores=False)``:

    - query: float (batch, q_len, d_query); context: float (batch, k_len, d_context),
      default ``query`` (self-attention). Keys and values are both computed from ``context``.
    - mask: bool (batch, q_len), the query's padding mask (Keras passes it automatically
      after an ``Embedding(mask_zero=True)``). In self-attention it also masks the keys.
    - context_mask: bool (batch, k_len), padding of the context (cross-attention).
    - attention_mask: bool (batch, q_len, k_len), any extra pattern.
    - ``use_causal_mask=True`` (constructor): query i sees keys j <= i, never the future.
    - cache: ``(keys, values)``, each (batch, num_heads, L, key_dim / value_dim), for a
      causal self-attention layer that generates one step at a time. The new keys and
      values are written at time ``position`` (`update_cache`), the queries attend to the
      whole cache under ``causal_mask(q_len, L, offset=position)`` (empty slots after
      them are masked) and the call also returns the updated cache.

    Returns the output float (batch, q_len, output_dim) (default d_query); with
    ``return_attention_scores=True`` also the weights (batch, heads, q_len, k_len); with a
    cache also the new cache, last: ``(output, [weights,] (keys, values))``. Padded *query*
    rows are not masked (their outputs are ignored by any masked pooling or loss); a query
    that sees no key at all gets zero weights and a zero output, never NaN.

    The weights have exactly the shapes of `keras.layers.MultiHeadAttention` and are
    created in the same order, so ``layer.set_weights(keras_mha.get_weights())`` copies
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
        self.dropout = require_rate(dropout)
        self.use_bias = bool(use_bias)
        self.use_causal_mask = bool(use_causal_mask)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.seed = seed if seed is None else require_int(seed, "seed", 0)
        self.attention_dropout = keras.layers.Dropout(self.dropout, seed=seed, dtype=self.dtype_policy)
        self.input_spec = keras.layers.InputSpec(ndim=3)   # the query: (batch, q_len, d)
        self.supports_masking = True

    def _projection(self, name: str, shape: tuple):
        kernel = self.add_weight(name=f"{name}_kernel", shape=shape, initializer=self.kernel_initializer)
        bias_shape = shape[1:] if name != "output" else shape[-1:]
        bias = self.add_weight(name=f"{name}_bias", shape=bias_shape, initializer=self.bias_initializer) \
            if self.use_bias else None
        return kernel, bias

    def build(self, query_shape, context_shape=None):
        context_shape = query_shape if context_shape is None else context_shape
        for name, shape in (("query", query_shape), ("context", context_shape)):
            if len(shape) != 3 or shape[-1] is None:
                raise ValueError(f"{self.name}: expected {name} (batch, length, d) with a known d, got {tuple(shape)}.")
        d_query, d_context = query_shape[-1], context_shape[-1]
        h, k, v = self.num_heads, self.key_dim, self.value_dim
        self.query_kernel, self.query_bias = self._projection("query", (d_query, h, k))
        self.key_kernel, self.key_bias = self._projection("key", (d_context, h, k))
        self.value_kernel, self.value_bias = self._projection("value", (d_context, h, v))
        self.output_kernel, self.output_bias = self._projection("output", (h, v, self.output_dim or d_query))

    def _split_heads(self, x, kernel, bias):
        """(B, T, d) -> (B, H, T, k), ``einsum("btd,dhk->bhtk", x, kernel) + bias``
        computed as one matmul for all heads, then split (fewer, faster operations)."""
        d, h, k = kernel.shape
        y = ops.matmul(x, ops.reshape(kernel, (d, h * k)))                       # (B, T, H * k)
        if bias is not None:
            y = y + ops.reshape(bias, (h * k,))
        y = ops.reshape(y, (ops.shape(x)[0], ops.shape(x)[1], h, k))             # (B, T, H, k)
        return ops.transpose(y, (0, 2, 1, 3))

    def _merge_heads(self, heads):
        """(B, H, T, v) -> (B, T, output_dim): ``einsum("bhtv,hvo->bto", heads, kernel) + bias``,
        i.e. the heads side by side, then one projection."""
        h, v, out = self.output_kernel.shape
        x = ops.transpose(heads, (0, 2, 1, 3))                                   # (B, T, H, v)
        x = ops.reshape(x, (ops.shape(x)[0], ops.shape(x)[1], h * v))            # (B, T, H * v)
        x = ops.matmul(x, ops.reshape(self.output_kernel, (h * v, out)))         # (B, T, output_dim)
        return x if self.output_bias is None else x + self.output_bias

    def call(self, query, context=None, mask=None, context_mask=None, attention_mask=None, cache=None, position=0,
             return_attention_scores=False, training=None):
        require_float_dtype(query, "query")
        self_attention = context is None
        context = query if self_attention else context
        c_shape = require_rank(context, (3,), "context", "(batch, k_len, d)")
        require_float_dtype(context, "context")
        if not same_dim(query.shape[0], c_shape[0]):
            raise ValueError(f"{self.name}: query and context must have the same batch size, got "
                             f"{query.shape[0]} and {c_shape[0]}.")
        for name, x, kernel in (("query", query, self.query_kernel), ("context", context, self.key_kernel)):
            if not same_dim(x.shape[-1], kernel.shape[0]):
                raise ValueError(f"{self.name}: {name} must have {kernel.shape[0]} features, as when the layer was "
                                 f"built, got shape {tuple(x.shape)}.")
        if cache is not None and not (self_attention and self.use_causal_mask):
            raise ValueError(f"{self.name}: a key-value cache is for causal self-attention (generating one step at "
                             "a time): build the layer with use_causal_mask=True and call it without context.")
        if self_attention and context_mask is None and cache is None:
            context_mask = mask                                   # self-attention: padded tokens are no keys
        q = self._split_heads(query, self.query_kernel, self.query_bias)    # (B, H, T, key_dim)
        k = self._split_heads(context, self.key_kernel, self.key_bias)      # (B, H, S, key_dim)
        v = self._split_heads(context, self.value_kernel, self.value_bias)  # (B, H, S, value_dim)
        if cache is not None:                                     # S becomes the cache length L
            k = update_cache(cache[0], k, position, axis=2)                  # (B, H, L, key_dim)
            v = update_cache(cache[1], v, position, axis=2)                  # (B, H, L, value_dim)

        combined = None                                           # bool, broadcastable to (B, H, T, S)
        if context_mask is not None:
            require_bool_mask(context_mask, "context_mask")
            cm_shape = require_rank(context_mask, (2,), "context_mask", "(batch, k_len)")
            if not same_dim(cm_shape[1], k.shape[2]):
                raise ValueError(f"{self.name}: context_mask must be (batch, k_len={k.shape[2]}), got {cm_shape}.")
            combined = context_mask[:, None, None, :]                        # (B, 1, 1, S)
        if attention_mask is not None:
            require_bool_mask(attention_mask, "attention_mask")
            require_rank(attention_mask, (3,), "attention_mask", "(batch, q_len, k_len)")
            extra = attention_mask[:, None]                                  # (B, 1, T, S)
            combined = extra if combined is None else ops.logical_and(combined, extra)
        if self.use_causal_mask:
            query_length = ops.shape(q)[2] if q.shape[2] is None else q.shape[2]
            key_length = ops.shape(k)[2] if k.shape[2] is None else k.shape[2]
            causal = _causal_mask(query_length, key_length, position if cache is not None else 0)[None, None]
            combined = causal if combined is None else ops.logical_and(combined, causal)   # (.., T, S)

        heads, weights = scaled_dot_product_attention(q, k, v, combined)    # (B, H, T, value_dim), (B, H, T, S)
        if self.dropout > 0.0 and training:
            heads = ops.matmul(self.attention_dropout(weights, training=training), v)
        output = self._merge_heads(heads)                                    # (B, T, output_dim)
        results = (output,) + ((weights,) if return_attention_scores else ()) + (((k, v),) if cache is not None else ())
        return results[0] if len(results) == 1 else results

    def compute_mask(self, query, mask=None, **kwargs):
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
class TransformerBlock(keras.layers.Layer):
    """One pre-norm Transformer block (as in ViT and GPT-2)::

        x = x + Dropout(MultiHeadAttention(LayerNorm(x)))
        x = x + Dropout(Dense(embed_dim)(gelu(Dense(mlp_dim)(LayerNorm(x)))))

    Input float (batch, time, embed_dim) and an optional padding mask bool (batch, time)
    (passed automatically after ``Embedding(mask_zero=True)``); output the same shape.
    ``num_heads`` must divide ``embed_dim`` (each head gets ``embed_dim // num_heads``
    features). ``causal=True`` makes it a decoder block: no position sees a later one.
    ``cache`` / ``position`` go to the attention (see `MultiHeadAttention`; causal blocks
    only). Returns ``x``, or ``(x, [weights (batch, heads, time, keys),] [new_cache])``
    with ``return_attention_scores=True`` and / or a cache, in that order.

    Parameters: ``4 * (D*D + D)`` (attention) ``+ (D*M + M) + (M*D + D)`` (MLP)
    ``+ 2 * 2 * D`` (two LayerNorms) for D = embed_dim and M = mlp_dim.
    """

    def __init__(self, embed_dim: int, num_heads: int, mlp_dim: int, dropout: float = 0.0, causal: bool = False,
                 seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.embed_dim = positive_int(embed_dim, "embed_dim")
        self.num_heads = positive_int(num_heads, "num_heads")
        self.mlp_dim = positive_int(mlp_dim, "mlp_dim")
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim ({self.embed_dim}) must be divisible by num_heads ({self.num_heads}) so "
                             "each head gets embed_dim // num_heads features.")
        self.dropout = require_rate(dropout)
        self.causal = bool(causal)
        self.seed = seed = seed if seed is None else require_int(seed, "seed", 0)
        seeds = (None,) * 3 if seed is None else (seed, seed + 1, seed + 2)   # independent dropout masks
        policy = self.dtype_policy
        self.norm1 = keras.layers.LayerNormalization(epsilon=1e-5, name="norm1", dtype=policy)
        self.attention = MultiHeadAttention(self.num_heads, self.embed_dim // self.num_heads, dropout=self.dropout,
                                            use_causal_mask=self.causal, seed=seeds[0], name="attention",
                                            dtype=policy)
        self.norm2 = keras.layers.LayerNormalization(epsilon=1e-5, name="norm2", dtype=policy)
        self.mlp_in = keras.layers.Dense(self.mlp_dim, activation="gelu", name="mlp_in", dtype=policy)
        self.mlp_out = keras.layers.Dense(self.embed_dim, name="mlp_out", dtype=policy)
        self.dropout1 = keras.layers.Dropout(self.dropout, seed=seeds[1], dtype=policy)
        self.dropout2 = keras.layers.Dropout(self.dropout, seed=seeds[2], dtype=policy)
        self.input_spec = keras.layers.InputSpec(ndim=3, axes={-1: self.embed_dim})
        self.supports_masking = True

    def build(self, x_shape):
        self.norm1.build(x_shape)
        self.attention.build(x_shape)
        self.norm2.build(x_shape)
        self.mlp_in.build(x_shape)
        self.mlp_out.build(tuple(x_shape[:-1]) + (self.mlp_dim,))

    def call(self, x, mask=None, cache=None, position=0, return_attention_scores=False, training=None):
        require_float_dtype(x, "x")
        attended, weights, *new_cache = self.attention(self.norm1(x), mask=mask, cache=cache, position=position,
                                                       return_attention_scores=True, training=training)
        x = x + self.dropout1(attended, training=training)                           # (B, T, D)
        x = x + self.dropout2(self.mlp_out(self.mlp_in(self.norm2(x))), training=training)
        results = (x,) + ((weights,) if return_attention_scores else ()) + tuple(new_cache)
        return results[0] if len(results) == 1 else results

    def compute_mask(self, x, mask=None, **kwargs):
        return mask

    def get_config(self):
        config = super().get_config()
        config.update(embed_dim=self.embed_dim, num_heads=self.num_heads, mlp_dim=self.mlp_dim,
                      dropout=self.dropout, causal=self.causal, seed=self.seed)
        return config


# --------------------------------------------------------------------------- the functions


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
    query, key, value = (as_array(t, n) for t, n in ((query, "query"), (key, "key"), (value, "value")))
    layout = "(batch, [heads,] len, d)"
    q_shape = require_rank(query, (3, 4), "query", layout)
    k_shape = require_rank(key, (3, 4), "key", layout)
    v_shape = require_rank(value, (3, 4), "value", layout)
    if not len(q_shape) == len(k_shape) == len(v_shape):
        raise ValueError(f"query, key and value must have the same rank, got shapes {q_shape}, {k_shape} "
                         f"and {v_shape}.")
    for t, n in ((query, "query"), (key, "key"), (value, "value")):
        require_float_dtype(t, n)
    if not dtype_name(query) == dtype_name(key) == dtype_name(value):
        raise TypeError(f"query, key and value must share one dtype, got {dtype_name(query)}, {dtype_name(key)} "
                        f"and {dtype_name(value)}.")
    for axis in range(len(q_shape) - 2):
        if not (same_dim(q_shape[axis], k_shape[axis]) and same_dim(k_shape[axis], v_shape[axis])):
            what = "batch size" if axis == 0 else "number of heads"
            raise ValueError(f"query, key and value must have the same {what} (axis {axis}), got shapes "
                             f"{q_shape}, {k_shape} and {v_shape}.")
    if not same_dim(q_shape[-1], k_shape[-1]):
        raise ValueError(f"query and key must have the same feature size d (last axis), got {q_shape[-1]} "
                         f"and {k_shape[-1]}.")
    if not same_dim(k_shape[-2], v_shape[-2]):
        raise ValueError(f"key and value must have the same length k_len (axis -2), got {k_shape[-2]} and "
                         f"{v_shape[-2]}.")
    depth = q_shape[-1]
    scale = ops.cast(1.0 / math.sqrt(depth), query.dtype) if depth is not None \
        else ops.rsqrt(ops.cast(ops.shape(query)[-1], query.dtype))
    scores = ops.matmul(query, ops.swapaxes(key, -1, -2)) * scale            # (B, [H,] q_len, k_len)
    if mask is not None:
        mask = _mask_like_scores(mask, q_shape[:-1] + (k_shape[-2],))
        # a finite "minus infinity" (-3e4 fits float16): a fully masked row gives no NaN
        large_negative = -3e4 if dtype_name(scores) == "float16" else -1e9
        scores = ops.where(mask, scores, ops.cast(large_negative, scores.dtype))
    weights = ops.softmax(scores, axis=-1)
    if mask is not None:
        weights = ops.where(mask, weights, ops.zeros_like(weights))          # exact zeros, also for empty rows
    return ops.matmul(weights, value), weights


def _mask_like_scores(mask, scores_shape: tuple):
    """Validate a mask and bring it to the rank of the scores (see scaled_dot_product_attention)."""
    mask = as_array(mask, "mask")
    require_bool_mask(mask, "mask")
    rank, mask_shape = len(scores_shape), static_shape(mask)
    if len(mask_shape) == 2:                                  # key padding mask (batch, k_len)
        if not (same_dim(mask_shape[0], scores_shape[0]) and same_dim(mask_shape[1], scores_shape[-1])):
            raise ValueError(f"mask: a rank-2 mask is a key padding mask of shape (batch, k_len) = "
                             f"({scores_shape[0]}, {scores_shape[-1]}), got {mask_shape}.")
        for _ in range(rank - 2):
            mask = ops.expand_dims(mask, 1)                   # (batch, 1, [1,] k_len)
    elif len(mask_shape) == 3 and rank == 4:                  # (batch, q_len, k_len): the same for every head
        mask = ops.expand_dims(mask, 1)
    elif len(mask_shape) != rank:
        raise ValueError(f"mask: expected rank 2 (batch, k_len) or rank {rank} broadcastable to the scores "
                         f"{scores_shape}, got shape {mask_shape}.")
    for axis, (m, s) in enumerate(zip(static_shape(mask), scores_shape)):
        if m is not None and s is not None and m not in (1, s):
            raise ValueError(f"mask: shape {mask_shape} does not broadcast to the attention scores "
                             f"(batch, [heads,] q_len, k_len) = {scores_shape} (axis {axis}: {m} vs {s}).")
    return mask


def causal_mask(query_length: int, key_length: int | None = None, offset=0):
    """The causal attention mask: bool (query_length, key_length), True where allowed.

    Query ``i`` sits at absolute position ``offset + i`` and may attend to key ``j`` when
    ``j <= offset + i``: itself and the past, never the future. With the defaults
    (``key_length = query_length``, ``offset = 0``) this is the lower triangle including
    the diagonal. With a fixed-size key-value cache of length L, one new query at position
    ``p`` uses ``causal_mask(1, L, offset=p)``: the empty slots after ``p`` are masked.
    ``offset`` may be a scalar int tensor.
    """
    query_length = require_int(query_length, "query_length", 1)
    key_length = query_length if key_length is None else require_int(key_length, "key_length", 1)
    if isinstance(offset, (int, np.integer)):
        offset = require_int(offset, "offset", 0)
        if key_length < offset + query_length:
            raise ValueError(f"key_length={key_length} is shorter than offset + query_length = "
                             f"{offset} + {query_length}: the keys must include every query position.")
    elif not hasattr(offset, "shape"):
        raise TypeError(f"offset must be an int or a scalar int tensor, got {type(offset).__name__} {offset!r:.40}.")
    require_array_budget((query_length, key_length), 8, "query_length and key_length")
    return _causal_mask(query_length, key_length, offset)


def _causal_mask(query_length, key_length, offset):
    """`causal_mask` without checks: the lengths may be traced scalars inside a compiled step."""
    queries = ops.expand_dims(ops.arange(query_length, dtype="int32") + ops.cast(offset, "int32"), 1)  # (T, 1)
    keys = ops.expand_dims(ops.arange(key_length, dtype="int32"), 0)                                   # (1, S)
    return ops.less_equal(keys, queries)


def update_cache(cache, new, position, axis: int = 1):
    """Write ``new`` into ``cache`` at time ``position``; return the updated cache.

    cache: a buffer (B, L, ...) with time on ``axis`` (1 by default); new: (B, T_new, ...)
    with the same rank, the same size on every other axis, and T_new on ``axis``;
    position: int (or scalar int tensor) with 0 <= position <= L - T_new. The result has
    the cache's shape and dtype: time steps ``position .. position + T_new - 1`` hold
    ``new``, all others are unchanged. A fixed-size buffer keeps every generation step
    the same shape, so a compiled step is traced only once.
    """
    cache, new = as_array(cache, "cache"), as_array(new, "new")
    cache_shape, new_shape = static_shape(cache), static_shape(new)
    if len(cache_shape) < 2 or len(new_shape) != len(cache_shape):
        raise ValueError(f"update_cache: cache and new need the same rank >= 2, got cache shape {cache_shape} "
                         f"and new shape {new_shape}.")
    axis = require_int(axis, "axis", 1, len(cache_shape) - 1)
    others = [i for i in range(len(cache_shape)) if i != axis]
    if any(not same_dim(new_shape[i], cache_shape[i]) for i in others):
        raise ValueError(f"update_cache: new {new_shape} must match cache {cache_shape} on every axis but the "
                         f"time axis {axis}.")
    if not isinstance(position, (int, np.integer)) and not hasattr(position, "shape"):
        raise TypeError(f"position must be an int or a scalar int tensor, got {type(position).__name__} "
                        f"{position!r:.40}.")
    if isinstance(position, (int, np.integer)) and None not in (cache_shape[axis], new_shape[axis]):
        require_int(position, "position", 0, cache_shape[axis] - new_shape[axis])
    start = [0] * len(cache_shape)
    start[axis] = ops.cast(position, "int32")
    return ops.slice_update(cache, start, ops.cast(new, cache.dtype))
