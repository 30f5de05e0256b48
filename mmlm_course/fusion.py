"""Lesson 04: fusion, the step that combines what the image and text encoders produced.

Where the modalities meet decides what a model can learn:

==================  =======================================  ===================================
level               here                                     combines
==================  =======================================  ===================================
early (data)        `early_fusion`, `TileConcat`             raw pixels (patches) + question
feature (vector)    `concat_fusion`, `ConcatFusion`,         pooled image vector + question
                    `ProductFusion`                          vector
feature (spatial)   `film`, `FiLM`                           every image position, modulated
                                                             by the question
decision (late)     `late_fusion`, `LateFusion`              two answer distributions
attention           `cross_attention`,                       every query token with a softmax-
                    `CrossAttentionFusion`                   weighted sum of the other modality
relational          `object_pairs`, `RelationFusion`         every ordered pair of objects with
                                                             the question (a relation network)
==================  =======================================  ===================================

`naive_similarity_fusion` is the tempting first attempt at attention (weights
``Q K^T``, no scaling, no softmax) kept here to show why it fails.

The question-answering part builds the lesson's comparison on ShapeWorld: `qa_arrays`
turns generated data into arrays, `object_grid_targets` and `build_object_encoder` give
the frozen, pretrained image encoder all fusion models share, `build_qa_model` builds a
question-only, an image-only or a fused model, and `accuracy_by_type` scores it.

Every layer uses `keras.ops` only, is registered for `.keras` serialization under the
package name ``mmlm_course`` and creates its sub-layers in ``__init__``. Masks are boolean,
True on real tokens. Functions accept NumPy arrays or tensors and validate shapes, dtypes
and batch sizes; a batch size that differs between the image and the text side is named
as such.
"""

from __future__ import annotations

import math
from typing import Sequence

import keras
import numpy as np
from keras import ops

from mmlm_course import encoders, shapeworld
from mmlm_course.validation import dtype_name, positive_int

__all__ = [
    "early_fusion", "concat_fusion", "product_fusion", "film", "late_fusion",
    "naive_similarity_fusion", "cross_attention", "object_pairs",
    "TileConcat", "ConcatFusion", "ProductFusion", "FiLM", "LateFusion", "CrossAttentionFusion", "RelationFusion",
    "ObjectTokens", "Objectness", "CentredPositions", "TokenMask", "MaskedMean", "QuestionEncoder",
    "ANSWERS", "FUSION_METHODS", "QUESTION_LENGTH", "qa_arrays", "object_grid_targets", "OBJECT_FEATURES",
    "build_object_encoder", "pretrain_object_encoder", "build_qa_model", "inputs_for", "fit_qa_model",
    "predict_answers", "accuracy_by_type", "GRID", "ObjectImageEncoder", "load_detector",
]

_register = keras.saving.register_keras_serializable(package="mmlm_course")


# --------------------------------------------------------------------------- validation


def _as_tensor(x, name: str):
    """NumPy arrays and Python lists become arrays; tensors pass through. Python floats
    (float64) become the Keras default float type."""
    if x is None:
        raise TypeError(f"{name}: expected an array or tensor, got None.")
    if not hasattr(x, "shape") or not hasattr(x, "dtype"):
        x = np.asarray(x)
        if x.dtype == np.float64:
            x = x.astype(keras.backend.floatx())
    return x


def _check(x, name: str, ranks: Sequence[int], layout: str, floating: bool = True) -> tuple:
    """Check rank (and float dtype); return the static shape."""
    shape = tuple(x.shape)
    if len(shape) not in ranks:
        raise ValueError(f"{name}: expected shape {layout} (rank {' or '.join(map(str, ranks))}), got shape "
                         f"{shape} (rank {len(shape)}).")
    if floating and "float" not in dtype_name(x):
        raise TypeError(f"{name}: expected a floating-point array {layout}, got dtype {dtype_name(x)}; convert it "
                        f"with keras.ops.cast({name}, 'float32') (pixels: divide uint8 by 255 first).")
    return shape


def _same(a, b) -> bool:
    return a is None or b is None or a == b


def _same_batch(first: tuple, second: tuple, first_name: str, second_name: str) -> None:
    if not _same(first[0], second[0]):
        raise ValueError(f"mismatched batch sizes: {first_name} has {first[0]} examples but {second_name} has "
                         f"{second[0]} (shapes {first} and {second}); pair every image with its own question, "
                         "in the same order.")


def _check_mask(mask, name: str, shape: tuple, of: str):
    """A boolean (batch, length) mask matching ``shape[:2]``."""
    mask = _as_tensor(mask, name)
    if dtype_name(mask) != "bool":
        raise TypeError(f"{name}: expected a boolean mask (True = real token), got dtype {dtype_name(mask)}; "
                        f"use ids != 0 or mask.astype(bool).")
    m_shape = tuple(mask.shape)
    if len(m_shape) != 2 or not (_same(m_shape[0], shape[0]) and _same(m_shape[1], shape[1])):
        raise ValueError(f"{name}: expected shape (batch, length) = {shape[:2]} to match {of} {shape}, got "
                         f"{m_shape}.")
    return mask


def _choice(value, options: Sequence, name: str):
    if value not in options:
        raise ValueError(f"{name} must be one of {tuple(options)}, got {value!r}.")
    return value


# --------------------------------------------------------------------------- fusion functions


def early_fusion(image, text):
    """Data-level fusion: copy the text vector to every image position and concatenate.

    image: float (batch, H, W, C) pixels or (batch, N, C) patches; text: float (batch, D),
    e.g. the question's word embeddings. Returns (batch, H, W, C + D) or (batch, N, C + D):
    each position now carries its own raw data plus the whole question, so every later
    layer sees both modalities from the start.
    """
    image, text = _as_tensor(image, "image"), _as_tensor(text, "text")
    i_shape = _check(image, "image", (3, 4), "(batch, H, W, C) or (batch, N, C)")
    t_shape = _check(text, "text", (2,), "(batch, D)")
    _same_batch(i_shape, t_shape, "image", "text")
    if dtype_name(image) != dtype_name(text):
        raise TypeError(f"image and text must share one float dtype, got {dtype_name(image)} and {dtype_name(text)}.")
    batch = ops.shape(image)[0]
    spatial = i_shape[1:-1]
    tiled = ops.reshape(text, (-1,) + (1,) * len(spatial) + (t_shape[-1],))  # (B, 1, [1,] D)
    tiled = ops.broadcast_to(tiled, (batch,) + tuple(spatial) + (t_shape[-1],))
    return ops.concatenate([image, tiled], axis=-1)


def concat_fusion(image_tokens, text_tokens, text_mask=None):
    """Feature-level fusion by concatenation.

    image_tokens: float (batch, N, D_image), one vector per image region; text_tokens:
    float (batch, T, D_text); text_mask: bool (batch, T), True on real tokens (None: all
    real). Pools each modality to one vector (the image by its mean over the N regions,
    the text by the mean over its *real* tokens only) and concatenates them:
    returns float (batch, D_image + D_text).
    """
    image_tokens, text_tokens = _as_tensor(image_tokens, "image_tokens"), _as_tensor(text_tokens, "text_tokens")
    i_shape = _check(image_tokens, "image_tokens", (3,), "(batch, N, D_image)")
    t_shape = _check(text_tokens, "text_tokens", (3,), "(batch, T, D_text)")
    _same_batch(i_shape, t_shape, "image_tokens", "text_tokens")
    if text_mask is not None:
        text_mask = _check_mask(text_mask, "text_mask", t_shape, "text_tokens")
    image_vector = ops.mean(image_tokens, axis=1)  # (B, D_image)
    text_vector = encoders.masked_mean(text_tokens, text_mask)  # (B, D_text)
    return ops.concatenate([image_vector, ops.cast(text_vector, image_vector.dtype)], axis=-1)


def product_fusion(image_vector, text_vector):
    """Feature-level fusion by element-wise product: float (batch, D) * (batch, D).

    Both vectors must already live in the same D-dimensional space (project them first).
    Unlike concatenation, a product lets a text feature switch an image feature on or off.
    """
    image_vector, text_vector = _as_tensor(image_vector, "image_vector"), _as_tensor(text_vector, "text_vector")
    i_shape = _check(image_vector, "image_vector", (2,), "(batch, D)")
    t_shape = _check(text_vector, "text_vector", (2,), "(batch, D)")
    _same_batch(i_shape, t_shape, "image_vector", "text_vector")
    if not _same(i_shape[-1], t_shape[-1]):
        raise ValueError(f"product fusion needs vectors of one size, got image D={i_shape[-1]} and text "
                         f"D={t_shape[-1]}; project both with Dense(D) first.")
    return image_vector * text_vector


def film(features, gamma, beta):
    """Feature-wise linear modulation (FiLM): ``gamma * features + beta``, per channel.

    features: float (batch, N, C) or (batch, H, W, C) image features; gamma, beta: float
    (batch, C), computed from the question. The same scale and shift apply to channel c
    at every position, so the question decides which image features matter (gamma) and
    which are switched on regardless (beta). Returns the shape of ``features``.
    """
    features, gamma, beta = (_as_tensor(t, n) for t, n in ((features, "features"), (gamma, "gamma"), (beta, "beta")))
    f_shape = _check(features, "features", (3, 4), "(batch, N, C) or (batch, H, W, C)")
    for t, n in ((gamma, "gamma"), (beta, "beta")):
        shape = _check(t, n, (2,), "(batch, C)")
        _same_batch(f_shape, shape, "features (image side)", f"{n} (text side)")
        if not _same(shape[-1], f_shape[-1]):
            raise ValueError(f"{n}: expected one value per feature channel, shape (batch, {f_shape[-1]}), got "
                             f"{shape}; FiLM modulates channels, not positions.")
    expand = (slice(None),) + (None,) * (len(f_shape) - 2) + (slice(None),)  # (B, 1, [1,] C)
    return features * gamma[expand] + beta[expand]


def late_fusion(image_logits, text_logits, image_weight=0.5):
    """Decision-level fusion: combine two answer distributions.

    image_logits, text_logits: float (batch, num_answers) from two separate models.
    Returns the log of the weighted geometric mean of their softmax probabilities,
    ``w * log_softmax(image) + (1 - w) * log_softmax(text)`` (a "product of experts"),
    float (batch, num_answers); ``image_weight`` w in [0, 1].
    """
    image_logits, text_logits = _as_tensor(image_logits, "image_logits"), _as_tensor(text_logits, "text_logits")
    i_shape = _check(image_logits, "image_logits", (2,), "(batch, num_answers)")
    t_shape = _check(text_logits, "text_logits", (2,), "(batch, num_answers)")
    _same_batch(i_shape, t_shape, "image_logits", "text_logits")
    if not _same(i_shape[-1], t_shape[-1]):
        raise ValueError(f"both models must score the same answers, got {i_shape[-1]} image and {t_shape[-1]} "
                         "text answer logits.")
    if isinstance(image_weight, (int, float)) and not 0.0 <= float(image_weight) <= 1.0:
        raise ValueError(f"image_weight must be in [0, 1], got {image_weight!r}.")
    return (image_weight * ops.log_softmax(image_logits, axis=-1)
            + (1.0 - image_weight) * ops.log_softmax(text_logits, axis=-1))


def _check_attention_inputs(queries, context, context_mask, names):
    queries, context = _as_tensor(queries, names[0]), _as_tensor(context, names[1])
    q_shape = _check(queries, names[0], (3,), "(batch, q_len, D)")
    c_shape = _check(context, names[1], (3,), "(batch, k_len, D)")
    _same_batch(q_shape, c_shape, names[0], names[1])
    if not _same(q_shape[-1], c_shape[-1]):
        raise ValueError(f"{names[0]} and {names[1]} must have the same feature size D to be compared, got "
                         f"{q_shape[-1]} and {c_shape[-1]}; project one of them with Dense({q_shape[-1]}).")
    if dtype_name(queries) != dtype_name(context):
        raise TypeError(f"{names[0]} and {names[1]} must share one float dtype, got {dtype_name(queries)} and "
                        f"{dtype_name(context)}.")
    if context_mask is not None:
        context_mask = _check_mask(context_mask, "context_mask", c_shape, names[1])
    return queries, context, context_mask


def naive_similarity_fusion(queries, context):
    """The tempting but broken version of attention (for the lesson; do not use).

    queries: float (batch, q_len, D) (e.g. image regions); context: float (batch, k_len, D)
    (e.g. words). Weights are the raw similarities ``queries @ context^T``, float
    (batch, q_len, k_len), with no scaling and no softmax; the output is ``weights @
    context``, float (batch, q_len, D). The weights grow with the square of the feature
    scale and do not sum to 1, so the output's size depends on the input's size, and
    padding is never ignored. Returns ``(output, weights)``.
    """
    queries, context, _ = _check_attention_inputs(queries, context, None, ("queries", "context"))
    weights = ops.matmul(queries, ops.swapaxes(context, -1, -2))  # (B, q_len, k_len)
    return ops.matmul(weights, context), weights


def cross_attention(queries, context, context_mask=None):
    """Scaled dot-product cross-attention without projections:
    ``softmax(queries @ context^T / sqrt(D)) @ context``.

    queries: float (batch, q_len, D) from one modality; context: float (batch, k_len, D)
    from the other; context_mask: bool (batch, k_len), True on real context tokens (padded
    words get weight 0). Returns ``(output, weights)``: output float (batch, q_len, D), a
    weighted average of context vectors per query; weights float (batch, q_len, k_len),
    each row a probability distribution over the context.
    """
    queries, context, context_mask = _check_attention_inputs(queries, context, context_mask, ("queries", "context"))
    return encoders.scaled_dot_product_attention(queries, context, context, context_mask)


def object_pairs(objects):
    """Every ordered pair of objects, side by side: the input of a relation network.

    objects: float (batch, K, D). Returns float (batch, K, K, 2 D) whose entry ``[b, i, j]``
    is ``[objects[b, i] ; objects[b, j]]``: object i first, then object j. Both orders of
    a pair are there, (i, j) and (j, i), so a function of a pair can tell "i left of j"
    from "j left of i"; the K diagonal entries pair an object with itself.
    """
    objects = _as_tensor(objects, "objects")
    shape = _check(objects, "objects", (3,), "(batch, K, D)")
    k = shape[1] if shape[1] is not None else ops.shape(objects)[1]
    first = ops.repeat(ops.expand_dims(objects, 2), k, axis=2)  # (B, K, K, D): o_i along j
    second = ops.repeat(ops.expand_dims(objects, 1), k, axis=1)  # (B, K, K, D): o_j along i
    return ops.concatenate([first, second], axis=-1)


# --------------------------------------------------------------------------- layers


@_register
class TileConcat(keras.layers.Layer):
    """`early_fusion` as a layer: ``layer(image, text)`` with image (batch, N, C) or
    (batch, H, W, C) and text (batch, D) -> (batch, ..., C + D). No weights."""

    def call(self, image, text):
        return early_fusion(image, text)


@_register
class ConcatFusion(keras.layers.Layer):
    """Pool-and-concatenate fusion, then an MLP: ``layer(image_tokens, text_tokens,
    text_mask=None)`` with image_tokens (batch, N, D_i), text_tokens (batch, T, D_t) ->
    (batch, units). Parameters: ``(D_i + D_t) * units + units``."""

    def __init__(self, units: int = 128, **kwargs):
        super().__init__(**kwargs)
        self.units = positive_int(units, "units")
        self.dense = keras.layers.Dense(self.units, activation="relu", name="dense")

    def build(self, image_tokens_shape, text_tokens_shape, text_mask_shape=None):
        self.dense.build((image_tokens_shape[0], image_tokens_shape[-1] + text_tokens_shape[-1]))

    def call(self, image_tokens, text_tokens, text_mask=None):
        return self.dense(concat_fusion(image_tokens, text_tokens, text_mask))

    def get_config(self):
        return {**super().get_config(), "units": self.units}


@_register
class ProductFusion(keras.layers.Layer):
    """Element-wise product fusion: ``layer(image_vector, text_vector)`` with float
    (batch, D_i) and (batch, D_t). Projects both to ``units`` (tanh keeps them in
    [-1, 1] so the product stays in range), multiplies, and returns (batch, units).
    Parameters: ``(D_i + 1) * units + (D_t + 1) * units``."""

    def __init__(self, units: int = 128, **kwargs):
        super().__init__(**kwargs)
        self.units = positive_int(units, "units")
        self.image_projection = keras.layers.Dense(self.units, activation="tanh", name="image_projection")
        self.text_projection = keras.layers.Dense(self.units, activation="tanh", name="text_projection")

    def build(self, image_vector_shape, text_vector_shape):
        self.image_projection.build(image_vector_shape)
        self.text_projection.build(text_vector_shape)

    def call(self, image_vector, text_vector):
        _same_batch(tuple(image_vector.shape), tuple(text_vector.shape), "image_vector", "text_vector")
        return product_fusion(self.image_projection(image_vector), self.text_projection(text_vector))

    def get_config(self):
        return {**super().get_config(), "units": self.units}


@_register
class FiLM(keras.layers.Layer):
    """A FiLM block: ``layer(features, condition)`` (Perez et al., 2018).

    features: float (batch, N, channels) or (batch, H, W, channels); condition: float
    (batch, D), the question vector. ``gamma = 1 + Dense(channels)(condition)`` and
    ``beta = Dense(channels)(condition)``; returns the residual block
    ``features + relu(film(norm(Dense(channels)(features)), gamma, beta))``, same shape as
    ``features``. With ``mode="gate"`` it is a gated fusion instead,
    ``sigmoid(Dense(channels)(condition)) * features``: the question only turns channels
    on and off.
    """

    def __init__(self, channels: int, mode: str = "film", **kwargs):
        super().__init__(**kwargs)
        self.channels = positive_int(channels, "channels")
        self.mode = _choice(mode, ("film", "gate"), "mode")
        self.gamma = keras.layers.Dense(self.channels, name="gamma")
        if self.mode == "film":
            self.transform = keras.layers.Dense(self.channels, name="transform")
            self.norm = keras.layers.LayerNormalization(center=False, scale=False, name="norm")
            self.beta = keras.layers.Dense(self.channels, name="beta")

    def _check_inputs(self, f_shape, c_shape):
        if len(f_shape) not in (3, 4) or f_shape[-1] != self.channels:
            raise ValueError(f"{self.name}: expected features (batch, N, {self.channels}) or (batch, H, W, "
                             f"{self.channels}), got {tuple(f_shape)}.")
        if len(c_shape) != 2:
            raise ValueError(f"{self.name}: expected a condition vector (batch, D), got {tuple(c_shape)}.")
        _same_batch(tuple(f_shape), tuple(c_shape), "features (image side)", "condition (text side)")

    def build(self, features_shape, condition_shape):
        self._check_inputs(tuple(features_shape), tuple(condition_shape))
        self.gamma.build(condition_shape)
        if self.mode == "film":
            self.transform.build(features_shape)
            self.norm.build(features_shape)
            self.beta.build(condition_shape)

    def call(self, features, condition):
        self._check_inputs(tuple(features.shape), tuple(condition.shape))
        if self.mode == "gate":
            gate = ops.sigmoid(self.gamma(condition))
            return film(features, gate, ops.zeros_like(gate))
        gamma = 1.0 + self.gamma(condition)  # (B, C): start as the identity
        modulated = film(self.norm(self.transform(features)), gamma, self.beta(condition))
        return features + ops.relu(modulated)

    def get_config(self):
        return {**super().get_config(), "channels": self.channels, "mode": self.mode}


@_register
class LateFusion(keras.layers.Layer):
    """Decision-level fusion with a learned weight: ``layer(image_logits, text_logits)``,
    both float (batch, num_answers) -> `late_fusion` log-probabilities (batch,
    num_answers) with ``image_weight = sigmoid(a)``, ``a`` one trainable scalar (starts at
    0, i.e. equal weights)."""

    def build(self, image_logits_shape, text_logits_shape):
        self.weight_logit = self.add_weight(name="weight_logit", shape=(), initializer="zeros")

    def call(self, image_logits, text_logits):
        return late_fusion(image_logits, text_logits, ops.sigmoid(self.weight_logit))

    @property
    def image_weight(self) -> float:
        """The learned weight of the image model, in (0, 1)."""
        return float(keras.ops.convert_to_numpy(ops.sigmoid(self.weight_logit)))


@_register
class CrossAttentionFusion(keras.layers.Layer):
    """Multi-head cross-attention from one modality to the other.

    ``layer(queries, context, context_mask=None, return_attention_scores=False)`` with
    queries float (batch, q_len, d_q) (here: image regions), context float (batch, k_len,
    d_c) (here: question tokens), context_mask bool (batch, k_len) (True on real tokens).
    Projects queries to ``num_heads`` queries of size ``key_dim``, the context to keys and
    values of that size, attends with `encoders.scaled_dot_product_attention` (scaled,
    softmax over the context, padding masked) and merges the heads with a Dense layer.
    Returns float (batch, q_len, output_dim) (default ``num_heads * key_dim``), and with
    ``return_attention_scores=True`` also the weights (batch, num_heads, q_len, k_len).
    """

    def __init__(self, num_heads: int = 2, key_dim: int = 32, output_dim: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.num_heads = positive_int(num_heads, "num_heads")
        self.key_dim = positive_int(key_dim, "key_dim")
        self.output_dim = self.num_heads * self.key_dim if output_dim is None else positive_int(output_dim,
                                                                                                  "output_dim")
        width = self.num_heads * self.key_dim
        self.query_projection = keras.layers.Dense(width, name="query")
        self.key_projection = keras.layers.Dense(width, name="key")
        self.value_projection = keras.layers.Dense(width, name="value")
        self.output_projection = keras.layers.Dense(self.output_dim, name="output")

    def build(self, queries_shape, context_shape, context_mask_shape=None):
        for shape, name in ((queries_shape, "queries"), (context_shape, "context")):
            if len(shape) != 3 or shape[-1] is None:
                raise ValueError(f"{self.name}: expected {name} (batch, length, features) with known features, got "
                                 f"{tuple(shape)}.")
        self.query_projection.build(queries_shape)
        self.key_projection.build(context_shape)
        self.value_projection.build(context_shape)
        self.output_projection.build(tuple(queries_shape[:-1]) + (self.num_heads * self.key_dim,))

    def _split_heads(self, x):
        x = ops.reshape(x, (ops.shape(x)[0], ops.shape(x)[1], self.num_heads, self.key_dim))  # (B, L, H, d)
        return ops.transpose(x, (0, 2, 1, 3))  # (B, H, L, d)

    def call(self, queries, context, context_mask=None, return_attention_scores=False):
        q_shape = _check(queries, "queries", (3,), "(batch, q_len, d_q)")
        c_shape = _check(context, "context", (3,), "(batch, k_len, d_c)")
        _same_batch(q_shape, c_shape, "queries (image side)", "context (text side)")
        if context_mask is not None:
            context_mask = _check_mask(context_mask, "context_mask", c_shape, "context")
        q = self._split_heads(self.query_projection(queries))  # (B, H, q_len, d)
        k = self._split_heads(self.key_projection(context))  # (B, H, k_len, d)
        v = self._split_heads(self.value_projection(context))  # (B, H, k_len, d)
        heads, weights = encoders.scaled_dot_product_attention(q, k, v, context_mask)  # (B, H, q_len, d)
        merged = ops.transpose(heads, (0, 2, 1, 3))  # (B, q_len, H, d)
        merged = ops.reshape(merged, (ops.shape(merged)[0], ops.shape(merged)[1], self.num_heads * self.key_dim))
        output = self.output_projection(merged)  # (B, q_len, output_dim)
        return (output, weights) if return_attention_scores else output

    def get_config(self):
        return {**super().get_config(), "num_heads": self.num_heads, "key_dim": self.key_dim,
                "output_dim": self.output_dim}


@_register
class RelationFusion(keras.layers.Layer):
    """A relation network (Santoro et al., 2017) over objects grounded in the question's words.

    ``layer(objects, question_tokens, question, question_mask=None, objectness=None,
    return_grounding=False)`` with objects float (batch, K, D_o), question_tokens float
    (batch, T, D_t) (position-aware, e.g. `QuestionEncoder`), question float (batch, D_q)
    (the pooled question vector), question_mask bool (batch, T) (True on real words) and
    objectness float (batch, K, 1) in [0, 1] (None: every slot holds an object).

    1. Grounding: ``s[k, t] = (W_o o_k) . (W_w x_t) / sqrt(key_dim)``, how well token t
       (features x_t) describes object k, float (batch, K, T), 0 on padded words. Row k says *where* in the
       question object k is named, so it carries the word order a pooled question loses
       (first named: the subject; last named: the reference).
    2. Every ordered pair (`object_pairs`) of grounded objects ``[o_k ; s_k]`` is joined
       with the question and scored by a two-layer ReLU MLP
       ``g([o_i ; s_i ; o_j ; s_j ; q])``, float (batch, K, K, units). (Its first layer
       is computed per object and summed per pair, the same numbers with fewer
       multiplications: `_pair_hidden`.)
    3. Each pair's scores are weighted by ``objectness_i * objectness_j`` (pairs with an
       empty slot count 0) and pooled over the K * K pairs by their mean (which keeps
       counts) and their max (one matching pair stands out): float (batch, 2 units). An
       answer head ``f`` reads it. (Santoro et al. sum; mean and max learn faster here.)

    Returns float (batch, 2 units), and with ``return_grounding=True`` also ``s``.
    Parameters: ``(D_o + 1 + D_t + 1) * key_dim + (2 (D_o + T) + D_q + 1) * units +
    (units + 1) * units``.
    """

    def __init__(self, units: int = 64, key_dim: int = 32, **kwargs):
        super().__init__(**kwargs)
        self.units = positive_int(units, "units")
        self.key_dim = positive_int(key_dim, "key_dim")
        self.object_projection = keras.layers.Dense(self.key_dim, name="object_key")
        self.word_projection = keras.layers.Dense(self.key_dim, name="word_query")
        self.pair_hidden = keras.layers.Dense(self.units, activation="relu", name="g_hidden")
        self.pair_output = keras.layers.Dense(self.units, activation="relu", name="g_output")

    def _check_inputs(self, objects, question_tokens, question, question_mask, objectness):
        o_shape = _check(objects, "objects", (3,), "(batch, K, D_o)")
        t_shape = _check(question_tokens, "question_tokens", (3,), "(batch, T, D_t)")
        q_shape = _check(question, "question", (2,), "(batch, D_q)")
        _same_batch(o_shape, t_shape, "objects (image side)", "question_tokens (text side)")
        _same_batch(o_shape, q_shape, "objects (image side)", "question (text side)")
        if question_mask is not None:
            question_mask = _check_mask(question_mask, "question_mask", t_shape, "question_tokens")
        if objectness is not None:
            w_shape = _check(objectness, "objectness", (3,), "(batch, K, 1)")
            if w_shape[-1] != 1 or not _same(w_shape[1], o_shape[1]):
                raise ValueError(f"objectness: expected one value per object slot, shape (batch, {o_shape[1]}, 1), "
                                 f"got {w_shape}.")
            _same_batch(o_shape, w_shape, "objects", "objectness")
        return question_mask

    def build(self, objects_shape, question_tokens_shape, question_shape, question_mask_shape=None,
              objectness_shape=None):
        if len(question_tokens_shape) != 3 or question_tokens_shape[1] is None:
            raise ValueError(f"{self.name}: expected question_tokens (batch, T, D_t) with a known length T (pad every "
                             f"question to one length), got shape {tuple(question_tokens_shape)}.")
        self.object_projection.build(objects_shape)
        self.word_projection.build(question_tokens_shape)
        grounded = objects_shape[-1] + question_tokens_shape[1]  # D_o + T
        self.pair_hidden.build((None, None, None, 2 * grounded + question_shape[-1]))
        self.pair_output.build((None, None, None, self.units))

    def _pair_hidden(self, grounded, question):
        """The first layer of g for every ordered pair: float (B, K, G), (B, D_q) -> (B, K, K, units).

        ``relu([x_i ; x_j ; q] W + b)`` with ``W`` split by rows into ``W_1`` (first object),
        ``W_2`` (second) and ``W_q`` equals ``relu(x_i W_1 + x_j W_2 + q W_q + b)``: the same
        numbers as running the Dense layer on `object_pairs` next to q, but every object is
        multiplied by ``W_1`` and ``W_2`` once instead of K times (K times fewer products).
        """
        width = grounded.shape[-1]
        kernel = self.pair_hidden.kernel  # (2 G + D_q, units)
        as_first = ops.matmul(grounded, kernel[:width])  # (B, K, units): x_i W_1
        as_second = ops.matmul(grounded, kernel[width:2 * width])  # (B, K, units): x_j W_2
        shared = ops.matmul(question, kernel[2 * width:]) + self.pair_hidden.bias  # (B, units): q W_q + b
        return ops.relu(as_first[:, :, None, :] + as_second[:, None, :, :] + shared[:, None, None, :])

    def ground(self, objects, question_tokens):
        """Step 1 without the mask: float (B, K, D_o), (B, T, D_t) -> s float (B, K, T)."""
        return ops.einsum("bkd,btd->bkt", self.object_projection(objects),
                          self.word_projection(question_tokens)) / math.sqrt(self.key_dim)

    def score_pairs(self, objects, grounding, question, objectness=None):
        """Steps 2 and 3: objects (B, K, D_o), masked grounding (B, K, T), question (B, D_q),
        objectness (B, K, 1) or None -> pooled pair scores float (B, 2 units)."""
        scores = self.pair_output(self._pair_hidden(ops.concatenate([objects, grounding], axis=-1), question))
        if objectness is not None:
            scores = scores * (objectness[:, :, None, :] * objectness[:, None, :, :])  # (B, K, K, 1) weights
        return ops.concatenate([ops.mean(scores, axis=(1, 2)), ops.max(scores, axis=(1, 2))], axis=-1)  # (B, 2u)

    def call(self, objects, question_tokens, question, question_mask=None, objectness=None,
             return_grounding=False):
        question_mask = self._check_inputs(objects, question_tokens, question, question_mask, objectness)
        grounding = self.ground(objects, question_tokens)                                 # (B, K, T)
        if question_mask is not None:
            grounding = grounding * ops.cast(question_mask, grounding.dtype)[:, None, :]
        fused = self.score_pairs(objects, grounding, question, objectness)
        return (fused, grounding) if return_grounding else fused

    def get_config(self):
        return {**super().get_config(), "units": self.units, "key_dim": self.key_dim}


# --------------------------------------------------------------------------- the frozen image encoder

GRID = 8
OBJECT_FEATURES = tuple([f"p({c})" for c in shapeworld.COLOR_NAMES] + [f"p({s})" for s in shapeworld.SHAPES]
                        + [f"p({z})" for z in shapeworld.SIZES] + ["x", "y", "objectness"])
"""The meaning of each of the 14 features of an object token."""


OBJECT_RADIUS = 0.75  # a cell whose centre is this close to an object's centre (in cells) "holds" it
OFFSET_RADIUS = 1.5  # cells this close to an object's centre learn to point at it


def object_grid_targets(scenes: Sequence[shapeworld.Scene], grid: int = GRID) -> dict:
    """Training targets for the object encoder: which object sits in each grid cell.

    The image is cut into ``grid x grid`` cells, numbered in reading order. A cell holds
    an object when its centre is within `OBJECT_RADIUS` cells of the object's centre: one
    to four cells per object, so an object on a cell border is still found with
    confidence (`ObjectTokens` merges the cells of one object). Returns a dict of NumPy
    arrays (N = len(scenes), G = grid * grid):

    - ``object`` float32 (N, G, 1): 1 in cells that hold an object, else 0;
    - ``color``, ``shape``, ``size`` int32 (N, G): class indices of the object a cell
      holds (0 on empty cells);
    - ``weight`` float32 (N, G): 1 in object cells, the sample weight of the three above
      (empty cells have no colour to learn);
    - ``offset`` float32 (N, G, 2): from the cell's centre to the nearest object centre,
      (dx, dy) in cell units, for every cell within `OFFSET_RADIUS` cells of one, so
      neighbouring cells agree on where an object is; ``offset_weight`` float32 (N, G)
      marks those cells.
    """
    grid = positive_int(grid, "grid")
    if isinstance(scenes, shapeworld.ShapeWorldData):
        scenes = scenes.scenes
    n, cells = len(scenes), grid * grid
    rows, cols = np.divmod(np.arange(cells), grid)
    cell_centres = np.stack([cols + 0.5, rows + 0.5], axis=-1)  # (G, 2) in cells
    targets = {"object": np.zeros((n, cells, 1), np.float32), "color": np.zeros((n, cells), np.int32),
               "shape": np.zeros((n, cells), np.int32), "size": np.zeros((n, cells), np.int32),
               "weight": np.zeros((n, cells), np.float32), "offset": np.zeros((n, cells, 2), np.float32),
               "offset_weight": np.zeros((n, cells), np.float32)}
    for i, scene in enumerate(scenes):
        if not isinstance(scene, shapeworld.Scene):
            raise TypeError(f"scenes[{i}]: expected a shapeworld.Scene, got {type(scene).__name__}.")
        if not scene.objects:
            continue
        centres = np.array([(obj.x * grid, obj.y * grid) for obj in scene.objects])  # (M, 2) in cells
        to_centres = centres[None, :, :] - cell_centres[:, None, :]  # (G, M, 2)
        distance = np.sqrt((to_centres ** 2).sum(-1))  # (G, M)
        nearest = distance.argmin(axis=1)  # (G,) the closest object of each cell
        gap = distance[np.arange(cells), nearest]
        own = gap <= OBJECT_RADIUS
        for cell in np.flatnonzero(own):
            obj = scene.objects[nearest[cell]]
            targets["object"][i, cell, 0] = targets["weight"][i, cell] = 1.0
            targets["color"][i, cell] = shapeworld.COLOR_NAMES.index(obj.color)
            targets["shape"][i, cell] = shapeworld.SHAPES.index(obj.shape)
            targets["size"][i, cell] = shapeworld.SIZES.index(obj.size)
        close = gap <= OFFSET_RADIUS
        targets["offset"][i][close] = to_centres[np.arange(cells), nearest][close]
        targets["offset_weight"][i][close] = 1.0
    return targets


NMS_RADIUS = 0.11  # half the smallest distance between two ShapeWorld object centres (0.22)


@_register
class ObjectTokens(keras.layers.Layer):
    """Turn the object encoder's per-cell predictions into ``num_objects`` object tokens.

    ``layer(predictions)`` with the dict of logits the grid model outputs (``object``
    (batch, G, 1), ``color`` (batch, G, 6), ``shape`` (batch, G, 3), ``size`` (batch, G, 2),
    ``offset`` (batch, G, 2), G = grid * grid cells). Picks ``num_objects`` cells greedily:
    the most likely object first, then the most likely one whose predicted centre is at
    least ``nms_radius`` away from every centre already picked (non-maximum suppression,
    so an object whose centre lies on a cell border is not counted twice). Returns float
    (batch, num_objects, 14) tokens: colour, shape and size probabilities, the centre
    (x, y) in [0, 1] of the image, and the objectness (see `OBJECT_FEATURES`): the summed
    objectness of the cells that point at this centre, at most 1. Empty slots have
    objectness near 0.
    """

    def __init__(self, num_objects: int = shapeworld.MAX_OBJECTS, grid: int = GRID, nms_radius: float = NMS_RADIUS,
                 **kwargs):
        super().__init__(**kwargs)
        self.num_objects = positive_int(num_objects, "num_objects")
        self.grid = positive_int(grid, "grid")
        if self.num_objects > self.grid ** 2:
            raise ValueError(f"num_objects={num_objects} is more than the {self.grid ** 2} grid cells.")
        if not isinstance(nms_radius, (int, float)) or not 0.0 <= nms_radius < 1.0:
            raise ValueError(f"nms_radius must be a float in [0, 1), got {nms_radius!r}.")
        self.nms_radius = float(nms_radius)
        rows, cols = np.divmod(np.arange(self.grid ** 2), self.grid)
        self._centres = np.stack([cols + 0.5, rows + 0.5], axis=-1).astype("float32")  # (G, 2) in cells

    def call(self, predictions):
        objectness = ops.sigmoid(predictions["object"])  # (B, G, 1)
        centres = ops.convert_to_tensor(self._centres, dtype=objectness.dtype)
        position = ops.clip((ops.expand_dims(centres, 0) + predictions["offset"]) / self.grid, 0.0, 1.0)  # (B, G, 2)
        tokens = ops.concatenate([ops.softmax(predictions["color"]), ops.softmax(predictions["shape"]),
                                  ops.softmax(predictions["size"]), position, objectness], -1)  # (B, G, 14)
        scores = objectness[..., 0]  # (B, G)
        free = ops.ones_like(scores)  # 1 where a cell is not yet part of a picked object
        picked = []
        for _ in range(self.num_objects):
            best = ops.expand_dims(ops.argmax(scores * free - (1.0 - free), axis=-1), -1)  # (B, 1)
            token = ops.take_along_axis(tokens, ops.expand_dims(best, -1), axis=1)  # (B, 1, 14)
            centre = ops.take_along_axis(position, ops.expand_dims(best, -1), axis=1)  # (B, 1, 2)
            near = ops.cast(ops.sum(ops.square(position - centre), axis=-1) < self.nms_radius ** 2,
                            scores.dtype) * free  # (B, G): the free cells that point at this object
            # An object whose centre lies on a cell border splits its objectness between
            # cells: its token gets their sum (at most 1).
            mass = ops.minimum(ops.sum(near * scores, axis=-1, keepdims=True), 1.0)  # (B, 1)
            picked.append(ops.concatenate([token[..., :-1], ops.expand_dims(mass, -1)], axis=-1))
            free = free * (1.0 - near)
        return ops.concatenate(picked, axis=1)  # (B, K, 14)

    def compute_output_shape(self, predictions_shape):
        return (predictions_shape["object"][0], self.num_objects, len(OBJECT_FEATURES))

    def get_config(self):
        return {**super().get_config(), "num_objects": self.num_objects, "grid": self.grid,
                "nms_radius": self.nms_radius}


PIXEL_CENTER, PIXEL_SCALE = 0.8, 0.25  # ShapeWorld pixels are mostly light background: centre them near 0


def build_object_encoder(filters: Sequence[int] = (8, 16, 32), width: int = 32,
                         num_objects: int = shapeworld.MAX_OBJECTS) -> tuple[keras.Model, keras.Model]:
    """The image encoder every fusion model shares, pretrained before fusion is trained.

    A lesson-03 `encoders.ConvImageEncoder` (three conv + max-pool stages, so a 64x64 image
    becomes an 8x8 grid of region features) with small per-cell heads that say whether an
    object's centre is in the cell and, if so, its colour, shape, size and exact position.
    Returns ``(grid_model, token_model)`` sharing their weights:

    - ``grid_model``: uint8 images (batch, 64, 64, 3) -> dict of per-cell logits (train it
      with `object_grid_targets`, see `pretrain_object_encoder`);
    - ``token_model``: uint8 images -> float (batch, num_objects, 14) object tokens
      (`ObjectTokens`), what the fusion models read.
    """
    images = keras.Input((64, 64, 3), dtype="uint8", name="image")
    x = keras.layers.Rescaling(1.0 / (255.0 * PIXEL_SCALE), offset=-PIXEL_CENTER / PIXEL_SCALE, name="rescale")(images)
    regions = encoders.ConvImageEncoder(filters, width, output="tokens", name="cnn")(x)  # (B, 64, width)
    hidden = keras.layers.Dense(width, activation="relu", name="cell_features")(regions)
    outputs = {name: keras.layers.Dense(units, name=name)(hidden)
               for name, units in (("object", 1), ("color", len(shapeworld.COLOR_NAMES)),
                                   ("shape", len(shapeworld.SHAPES)), ("size", len(shapeworld.SIZES)),
                                   ("offset", 2))}
    grid_model = keras.Model(images, outputs, name="object_grid_model")
    token_model = keras.Model(images, ObjectTokens(num_objects, name="object_tokens")(outputs),
                              name="object_encoder")
    return grid_model, token_model


def pretrain_object_encoder(data: shapeworld.ShapeWorldData, epochs: int = 3, batch_size: int = 32,
                            learning_rate: float = 3e-3, encoder: tuple | None = None, verbose: int = 0,
                            callbacks=None):
    """Train the object encoder on ``data`` (images and their scenes); return
    ``(token_model, history)``. The token model is frozen (``trainable = False``).

    ``encoder``: a ``(grid_model, token_model)`` pair from `build_object_encoder` to train
    (default: a new one).
    """
    if not isinstance(data, shapeworld.ShapeWorldData):
        raise TypeError(f"data: expected shapeworld.ShapeWorldData (from shapeworld.generate), got "
                        f"{type(data).__name__}.")
    grid_model, token_model = build_object_encoder() if encoder is None else encoder
    targets = object_grid_targets(data.scenes)
    weight, offset_weight = targets.pop("weight"), targets.pop("offset_weight")
    classes = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    grid_model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss={"object": keras.losses.BinaryCrossentropy(from_logits=True), "color": classes, "shape": classes,
              "size": classes, "offset": keras.losses.MeanSquaredError()})
    ones = np.ones_like(weight)
    history = grid_model.fit(data.images, targets, batch_size=batch_size, epochs=epochs, verbose=verbose,
                             sample_weight={"object": ones, "color": weight, "shape": weight, "size": weight,
                                            "offset": offset_weight}, callbacks=callbacks)
    token_model.trainable = False
    return token_model, history


@_register
class ObjectImageEncoder(keras.layers.Layer):
    """Lesson 04's object encoder as a *pretrained, frozen* vision tower (as LLaVA uses CLIP).

    uint8 images (B, 64, 64, 3) (or float in [0, 1]) -> object tokens float (B, K, 14):
    one token per detected object, `OBJECT_FEATURES` (colour, shape and size
    probabilities, centre, objectness), with the centre rescaled by `CentredPositions`.
    Train the detector with `pretrain_object_encoder` on ShapeWorld scenes, then copy
    it in with `load_detector`. It needs scenes with known objects to learn from, so
    it is for ShapeWorld; photos use `mllm.GridImageEncoder`.
    """

    def __init__(self, num_objects: int = shapeworld.MAX_OBJECTS, **kwargs):
        super().__init__(**kwargs)
        self.num_objects = positive_int(num_objects, "num_objects")
        self.detector = build_object_encoder(num_objects=self.num_objects)[1]
        self.centred = CentredPositions(name="centred_positions")

    def build(self, input_shape):
        self.detector.build((None, 64, 64, 3))

    def call(self, images, training=None):
        if "float" in keras.backend.standardize_dtype(images.dtype):
            images = images * 255.0                                    # the detector rescales 0..255 itself
        return self.centred(self.detector(images, training=False))     # (B, K, 14)

    def get_config(self):
        return {**super().get_config(), "num_objects": self.num_objects}


def load_detector(encoder: "ObjectImageEncoder", token_model) -> None:
    """Copy a pretrained object detector (the token model `pretrain_object_encoder`
    returns) into an `ObjectImageEncoder` (a vision tower of lessons 06, 08 and 09)."""
    if not isinstance(encoder, ObjectImageEncoder):
        raise TypeError(f"expected an ObjectImageEncoder to load into, got {type(encoder).__name__}.")
    detector = encoder.detector
    weights = token_model.get_weights() if isinstance(token_model, keras.Model) else None
    if weights is None or [w.shape for w in weights] != [tuple(v.shape) for v in detector.weights]:
        raise ValueError("token_model must be the object encoder from fusion.pretrain_object_encoder (or "
                         f"fusion.build_object_encoder()[1]), got {type(token_model).__name__} with other weights.")
    detector.set_weights(weights)


# --------------------------------------------------------------------------- question answering

ANSWERS = (shapeworld.COLOR_NAMES + shapeworld.SHAPES + shapeworld.SIZES + shapeworld.NUMBER_WORDS[1:]
           + ("yes", "no"))
"""Every answer a ShapeWorld question can have: a closed set of 17 classes."""
QUESTION_LENGTH = 14  # the longest ShapeWorld question has 14 tokens
FUSION_METHODS = ("question_only", "image_only", "early", "concat", "product", "film", "late", "cross_attention",
                  "relation")


def qa_arrays(data: shapeworld.ShapeWorldData, objects=None, max_length: int = QUESTION_LENGTH) -> dict:
    """Arrays for question answering from generated data.

    Returns a dict: ``image`` uint8 (N, 64, 64, 3); ``question`` int32 (N, max_length) token
    ids (`preprocessing.Tokenizer.for_shapeworld`, right-padded with 0); ``answer`` int32
    (N,) index into `ANSWERS`; ``question_type`` str array (N,); and ``objects`` float32
    (N, K, 14) when given (the object encoder's tokens for these images).
    """
    from mmlm_course.preprocessing import Tokenizer

    if not isinstance(data, shapeworld.ShapeWorldData):
        raise TypeError(f"data: expected shapeworld.ShapeWorldData (from shapeworld.generate), got "
                        f"{type(data).__name__}.")
    ids, _ = Tokenizer.for_shapeworld().encode_batch(data.questions, max_length=max_length)
    unknown = sorted(set(data.answers) - set(ANSWERS))
    if unknown:
        raise ValueError(f"answers {unknown} are not in the closed answer set ANSWERS {ANSWERS}.")
    arrays = {"image": data.images, "question": ids,
              "answer": np.array([ANSWERS.index(a) for a in data.answers], np.int32),
              "question_type": np.array(data.question_types)}
    if objects is not None:
        objects = np.asarray(objects)
        if objects.ndim != 3 or objects.shape[0] != len(data) or objects.shape[-1] != len(OBJECT_FEATURES):
            raise ValueError(f"objects: expected shape ({len(data)}, K, {len(OBJECT_FEATURES)}) (one row of object "
                             f"tokens per example), got {objects.shape}.")
        arrays["objects"] = objects.astype(np.float32)
    return arrays


@_register
class QuestionEncoder(keras.layers.Layer):
    """Token-level question features: int ids (batch, T) -> float (batch, T, width).

    ``kind="embedding"`` (default, fast): word embedding plus a learned position embedding
    (lesson 03's `PositionEmbedding`), so the same word at a different place differs.
    ``kind="gru"``: a bidirectional GRU over the embeddings (lesson 03's
    `RecurrentTextEncoder`): every token also sees its context, e.g. which object of a
    relation it belongs to. Slower on a CPU.
    """

    def __init__(self, vocab_size: int, max_length: int = QUESTION_LENGTH, width: int = 64, kind: str = "embedding",
                 **kwargs):
        super().__init__(**kwargs)
        self.vocab_size = positive_int(vocab_size, "vocab_size")
        self.max_length = positive_int(max_length, "max_length")
        self.width = positive_int(width, "width")
        self.kind = _choice(kind, ("embedding", "gru"), "kind")
        if self.kind == "embedding":
            self.embedding = keras.layers.Embedding(self.vocab_size, self.width, name="embedding")
            self.positions = encoders.PositionEmbedding(self.max_length, self.width, name="positions")
        else:
            if self.width % 2:
                raise ValueError(f"width must be even for a bidirectional GRU (two halves), got {width}.")
            self.rnn = encoders.RecurrentTextEncoder(self.vocab_size, embed_dim=32, units=self.width // 2,
                                                     bidirectional=True, return_sequences=True, name="gru")

    def build(self, ids_shape):
        if self.kind == "embedding":
            self.embedding.build(ids_shape)
            self.positions.build(tuple(ids_shape) + (self.width,))
        else:
            self.rnn.build(ids_shape)

    def call(self, ids):
        if self.kind == "embedding":
            return self.positions(self.embedding(ids))
        return self.rnn(ids)

    def compute_mask(self, ids, mask=None):
        return None

    def get_config(self):
        return {**super().get_config(), "vocab_size": self.vocab_size, "max_length": self.max_length,
                "width": self.width, "kind": self.kind}


def _mlp_head(x, width: int, prefix: str):
    x = keras.layers.Dense(2 * width, activation="relu", name=f"{prefix}_hidden")(x)
    return keras.layers.Dense(len(ANSWERS), name=f"{prefix}_logits")(x)


def _pool_objects(h, objectness, prefix: str):
    """Sum (so counts survive) and max over object slots, empty slots weighted by objectness."""
    h = keras.layers.Multiply(name=f"{prefix}_weigh")([h, objectness])
    return keras.layers.Concatenate(name=f"{prefix}_pool")([
        keras.layers.GlobalAveragePooling1D(name=f"{prefix}_mean")(h),
        keras.layers.GlobalMaxPooling1D(name=f"{prefix}_max")(h)])


@_register
class Objectness(keras.layers.Layer):
    """The last feature of object tokens, (batch, K, 14) -> (batch, K, 1)."""

    def call(self, objects):
        return objects[..., -1:]


POSITION_SCALE = 5.0


@_register
class CentredPositions(keras.layers.Layer):
    """Object tokens with their centre rescaled: (batch, K, 14) -> (batch, K, 14).

    ``x`` and ``y`` (see `OBJECT_FEATURES`) go from [0, 1] to ``scale * (p - 0.5)``, about
    [-2.5, 2.5] with the default ``scale`` 5: unit spread, like the other features. Two
    objects whose relation is asked differ by as little as 0.08 in [0, 1], a difference a
    freshly initialised network barely notices; rescaled, comparing positions is learnt
    in a few epochs instead of many. Every other feature passes unchanged.
    """

    def __init__(self, scale: float = POSITION_SCALE, **kwargs):
        super().__init__(**kwargs)
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or scale <= 0:
            raise ValueError(f"scale must be a positive number, got {scale!r}.")
        self.scale = float(scale)

    def call(self, objects):
        shape = _check(objects, "objects", (3,), f"(batch, K, {len(OBJECT_FEATURES)})")
        if shape[-1] != len(OBJECT_FEATURES):
            raise ValueError(f"objects: expected object tokens (batch, K, {len(OBJECT_FEATURES)}) with features "
                             f"{OBJECT_FEATURES}, got shape {shape}.")
        x = OBJECT_FEATURES.index("x")
        centre = (objects[..., x:x + 2] - 0.5) * self.scale  # (B, K, 2)
        return ops.concatenate([objects[..., :x], centre, objects[..., x + 2:]], axis=-1)

    def get_config(self):
        return {**super().get_config(), "scale": self.scale}


@_register
class TokenMask(keras.layers.Layer):
    """Padding mask of token ids: (batch, T) int -> (batch, T) bool, True on real tokens."""

    def call(self, ids):
        return encoders.padding_mask(ids)


@_register
class MaskedMean(keras.layers.Layer):
    """`encoders.masked_mean` as a layer: ``layer(x, padding)`` with x (batch, T, D) and
    padding a bool (batch, T) mask -> (batch, D). A Keras mask attached to ``x`` is
    consumed (the explicit one is used)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.supports_masking = True

    def call(self, x, padding, mask=None):
        return encoders.masked_mean(x, padding)

    def compute_mask(self, x, padding=None, mask=None):
        return None


def build_qa_model(method: str, num_objects: int = shapeworld.MAX_OBJECTS, width: int = 64,
                   question_length: int = QUESTION_LENGTH, text_encoder: str = "embedding") -> keras.Model:
    """A ShapeWorld question-answering model that fuses the modalities with ``method``.

    ``method`` is one of `FUSION_METHODS`. Inputs (by name, see `inputs_for`):
    ``question`` int32 (batch, question_length) and either ``objects`` float32 (batch,
    num_objects, 14), the frozen object encoder's tokens, or, for ``"early"``, ``image``
    uint8 (batch, 64, 64, 3) raw pixels. Output: logits over `ANSWERS`, (batch, 17).

    - ``question_only`` / ``image_only``: one modality, the baselines;
    - ``early``: raw 16x16-pixel patches (lesson 03's `PatchEmbedding`) each concatenated with
      the question's raw word embeddings (`TileConcat`), then one network;
    - ``concat`` / ``product``: pooled object vector and question vector, concatenated
      (`ConcatFusion`) or multiplied (`ProductFusion`);
    - ``film``: two `FiLM` blocks modulate every object token with the question vector;
    - ``late``: an image-only and a question-only model combined by `LateFusion`;
    - ``cross_attention``: every object token attends to the question tokens
      (`CrossAttentionFusion`), then each object with what it read is scored;
    - ``relation``: a relation network (`RelationFusion`) scores every ordered pair of
      object tokens (positions rescaled by `CentredPositions`) with the question, each
      object grounded in the question's words so the pair knows which object is named
      first.

    ``text_encoder``: the `QuestionEncoder` kind, ``"embedding"`` or ``"gru"``.
    """
    _choice(method, FUSION_METHODS, "method")
    question = keras.Input((question_length,), dtype="int32", name="question")
    mask = TokenMask(name="question_mask")(question)
    if method == "early":
        from mmlm_course.preprocessing import Tokenizer

        image = keras.Input((64, 64, 3), dtype="uint8", name="image")
        pixels = keras.layers.Rescaling(1.0 / 255.0, name="to_float")(image)
        patches = encoders.PatchEmbedding(64, patch_size=16, embed_dim=width // 2, name="patches")(pixels)  # (B, 16, .)
        words = keras.layers.Embedding(Tokenizer.for_shapeworld().vocab_size, 8, name="words")(question)
        words = keras.layers.Flatten(name="raw_question")(words)  # (B, T * 8): the question as data
        h = TileConcat(name="early_fusion")(patches, words)  # (B, 16, w/2 + T * 8)
        h = keras.layers.Dense(width, activation="relu", name="joint1")(h)
        h = keras.layers.Dense(width, activation="relu", name="joint2")(h)
        pooled = keras.layers.Concatenate(name="pool")([keras.layers.GlobalAveragePooling1D(name="mean")(h),
                                                         keras.layers.GlobalMaxPooling1D(name="max")(h)])
        return keras.Model({"image": image, "question": question}, _mlp_head(pooled, width, "answer"),
                           name="early_fusion")

    objects = keras.Input((num_objects, len(OBJECT_FEATURES)), dtype="float32", name="objects")
    objectness = Objectness(name="objectness")(objects)
    inputs = {"objects": objects, "question": question}

    def question_vector(prefix):
        from mmlm_course.preprocessing import Tokenizer

        tokens = QuestionEncoder(Tokenizer.for_shapeworld().vocab_size, question_length, width, text_encoder,
                                 name=f"{prefix}_text_encoder")(question)  # (B, T, w)
        vector = MaskedMean(name=f"{prefix}_text_pool")(tokens, mask)
        return tokens, keras.layers.Dense(width, activation="relu", name=f"{prefix}_text_vector")(vector)  # (B, w)

    def object_features(prefix):
        return keras.layers.Dense(width, activation="relu", name=f"{prefix}_object_features")(objects)  # (B, K, w)

    if method in ("question_only", "late"):
        _, q_vec = question_vector("q")
        q_logits = _mlp_head(q_vec, width, "q")
    if method in ("image_only", "late"):
        h = object_features("i")
        i_logits = _mlp_head(_pool_objects(h, objectness, "i"), width, "i")
    if method == "question_only":
        return keras.Model({"question": question}, q_logits, name="question_only")
    if method == "image_only":
        return keras.Model({"objects": objects}, i_logits, name="image_only")
    if method == "late":
        return keras.Model(inputs, LateFusion(name="late_fusion")(i_logits, q_logits), name="late_fusion")

    q_tokens, q_vec = question_vector("q")
    h = object_features("i") if method != "relation" else None
    if method == "concat":
        fused = ConcatFusion(2 * width, name="concat_fusion")(h, q_tokens, mask)
    elif method == "product":
        pooled = keras.layers.Dense(width, name="image_vector")(_pool_objects(h, objectness, "i"))
        fused = ProductFusion(2 * width, name="product_fusion")(pooled, q_vec)
    elif method == "film":
        for i in range(2):
            h = FiLM(width, name=f"film{i + 1}")(h, q_vec)
        fused = keras.layers.Concatenate(name="with_question")([_pool_objects(h, objectness, "film"), q_vec])
    elif method == "cross_attention":
        read = CrossAttentionFusion(num_heads=2, key_dim=width // 2, name="cross_attention")(h, q_tokens, mask)
        h = keras.layers.Concatenate(name="object_and_text")([h, read])  # (B, K, 2w)
        h = keras.layers.Dense(width, activation="relu", name="joint")(h)
        fused = keras.layers.Concatenate(name="with_question")([_pool_objects(h, objectness, "attn"), q_vec])
    else:  # relation: the raw tokens, so the pair function sees the two centres directly
        centred = CentredPositions(name="centred_positions")(objects)  # (B, K, 14)
        fused = RelationFusion(width, key_dim=width // 2, name="relation_network")(
            centred, q_tokens, q_vec, mask, objectness)  # (B, 2w)
    return keras.Model(inputs, _mlp_head(fused, width, "answer"), name=f"{method}_fusion")


def inputs_for(model: keras.Model, arrays: dict) -> dict:
    """The entries of ``arrays`` (from `qa_arrays`) that ``model`` takes, by input name."""
    names = [t.name for t in model.inputs]
    missing = [n for n in names if n not in arrays]
    if missing:
        hint = " (compute the object tokens with the object encoder and pass them to qa_arrays)" \
            if "objects" in missing else ""
        raise KeyError(f"model {model.name!r} needs inputs {names}; {missing} missing from arrays with keys "
                       f"{sorted(arrays)}{hint}.")
    return {n: arrays[n] for n in names}


def fit_qa_model(model: keras.Model, train: dict, epochs: int = 6, batch_size: int = 64,
                 learning_rate: float = 2e-3, verbose: int = 0, jit_compile="auto"):
    """Compile ``model`` (Adam, sparse cross-entropy on logits, accuracy) and fit it on
    ``train`` (a `qa_arrays` dict). Returns the Keras History."""
    model.compile(optimizer=keras.optimizers.Adam(learning_rate),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"],
                  jit_compile=jit_compile)
    return model.fit(inputs_for(model, train), train["answer"], batch_size=batch_size, epochs=epochs,
                     verbose=verbose)


def predict_answers(model: keras.Model, arrays: dict, batch_size: int = 512) -> np.ndarray:
    """Predicted answer indices, int (N,)."""
    inputs = inputs_for(model, arrays)
    count = len(next(iter(inputs.values())))
    logits = [keras.ops.convert_to_numpy(model({k: v[i:i + batch_size] for k, v in inputs.items()}, training=False))
              for i in range(0, count, batch_size)]  # eager calls: no retracing of a predict function per model
    return np.argmax(np.concatenate(logits), axis=-1)


def accuracy_by_type(predicted, answers, question_types) -> dict:
    """Accuracy overall and per question type.

    predicted, answers: int (N,) answer indices; question_types: str (N,). Returns
    ``{"overall": float, "color": float, ...}`` with the types in
    `shapeworld.QUESTION_TYPES` order (types absent from the data are left out).
    """
    predicted, answers, types = np.asarray(predicted), np.asarray(answers), np.asarray(question_types)
    if predicted.ndim != 1 or answers.ndim != 1 or types.ndim != 1:
        raise ValueError(f"expected three 1-D arrays (N,), got shapes {predicted.shape}, {answers.shape} and "
                         f"{types.shape}; take argmax(-1) of logits first.")
    if not len(predicted) == len(answers) == len(types):
        raise ValueError(f"predicted, answers and question_types must have one length, got {len(predicted)}, "
                         f"{len(answers)} and {len(types)}.")
    if len(answers) == 0:
        raise ValueError("no examples to score.")
    correct = predicted == answers
    result = {"overall": float(correct.mean())}
    for qtype in shapeworld.QUESTION_TYPES:
        if (types == qtype).any():
            result[qtype] = float(correct[types == qtype].mean())
    return result
