"""Lesson 04: fusion, the step that combines what the image and text encoders produced.

Where the modalities meet decides what a model can learn:

==================  =======================================  ===================================
level               here                                     combines
==================  =======================================  ===================================
early (data)        `early_fusion`, `TileConcat`             raw pixels (patches) + question
feature (vector)    `concat_fusion`, `ConcatFusion`,         pooled image vector + question
                    `product_fusion`, `ProductFusion`        vector
feature (spatial)   `film`, `FiLM`                           every image position, modulated
                                                             by the question
decision (late)     `late_fusion`, `LateFusion`              two answer distributions
attention           `cross_attention`,                       every query token with a softmax-
                    `CrossAttentionFusion`                   weighted sum of the other modality
relational          `object_pairs`, `RelationFusion`         every ordered pair of objects with
                                                             the question (a relation network)
==================  =======================================  ===================================

`naive_similarity_fusion` is the tempting first attempt at attention (weights
``Q K^T``, no scaling, no softmax) kept here to show why it fails. Attention itself is
lesson 03's `attention` module.

The lesson's comparison lives next door: `detector` is the frozen image encoder every
fusion model shares, `qa` the question-answering harness that builds, trains and scores
one model per fusion method.

Every layer uses `keras.ops` only, is registered for `.keras` serialization under the
package name ``mmlm_course``, creates its sub-layers in ``__init__`` with the layer's
dtype policy. Masks are boolean, True on real tokens. Functions accept NumPy arrays or
tensors and validate shapes, dtypes and batch sizes; a batch size that differs between
the image and the text side is named as such (`require_same_batch`).
"""

from __future__ import annotations

import math

import keras
from keras import ops

from mmlm_course import attention, encoders
from mmlm_course.validation import (as_array, positive_int, require_bool_mask, require_choice, require_float,
                                    require_float_dtype, require_rank, require_same_dtype, same_dim, static_shape)

__all__ = [
    "early_fusion", "concat_fusion", "product_fusion", "film", "late_fusion",
    "naive_similarity_fusion", "cross_attention", "object_pairs",
    "TileConcat", "ConcatFusion", "ProductFusion", "FiLM", "LateFusion", "CrossAttentionFusion", "RelationFusion",
    "require_same_batch", "require_token_mask",
]

_register = keras.saving.register_keras_serializable(package="mmlm_course")


# --------------------------------------------------------------------------- pairing checks


def require_same_batch(first: tuple, second: tuple, first_name: str, second_name: str) -> None:
    """ValueError unless two static shapes hold the same number of examples (axis 0).

    Fusion pairs every image with its own question; a batch size that differs between
    the two sides is the commonest fusion bug, so the message names both sides.
    """
    for shape, name in ((first, first_name), (second, second_name)):
        if not isinstance(shape, tuple) or not shape:
            raise ValueError(f"{name}: expected a static shape with a batch axis, e.g. (batch, ...), got {shape!r}.")
    if not same_dim(first[0], second[0]):
        raise ValueError(f"mismatched batch sizes: {first_name} has {first[0]} examples but {second_name} has "
                         f"{second[0]} (shapes {first} and {second}); pair every image with its own question, "
                         "in the same order.")


def require_token_mask(mask, tokens_shape: tuple, name: str, of: str):
    """``mask`` as a boolean (batch, length) array matching ``tokens_shape[:2]``, the
    shape of the (batch, length, features) tokens ``of`` names."""
    if not isinstance(tokens_shape, tuple) or len(tokens_shape) < 2:
        raise ValueError(f"tokens_shape: expected the (batch, length, ...) shape of {of}, got {tokens_shape!r}.")
    mask = as_array(mask, name)
    require_bool_mask(mask, name)
    m_shape = static_shape(mask)
    if len(m_shape) != 2 or not (same_dim(m_shape[0], tokens_shape[0]) and same_dim(m_shape[1], tokens_shape[1])):
        raise ValueError(f"{name}: expected shape (batch, length) = {tokens_shape[:2]} to match {of} {tokens_shape}, "
                         f"got {m_shape}.")
    return mask


def _float_input(x, name: str, ranks, layout: str) -> tuple:
    """Rank and float-dtype check of one input; returns its static shape."""
    shape = require_rank(x, ranks, name, layout)
    require_float_dtype(x, name, fix=f"convert it with keras.ops.cast({name}, 'float32') (pixels: divide uint8 "
                                     "by 255 first)")
    return shape


# --------------------------------------------------------------------------- fusion functions


def early_fusion(image, text):
    """Data-level fusion: copy the text vector to every image position and concatenate.

    image: float (batch, H, W, C) pixels or (batch, N, C) patches; text: float (batch, D),
    e.g. the question's word embeddings. Returns (batch, H, W, C + D) or (batch, N, C + D):
    each position now carries its own raw data plus the whole question, so every later
    layer sees both modalities from the start.
    """
    image, text = as_array(image, "image"), as_array(text, "text")
    i_shape = _float_input(image, "image", (3, 4), "(batch, H, W, C) or (batch, N, C)")
    t_shape = _float_input(text, "text", (2,), "(batch, D)")
    require_same_batch(i_shape, t_shape, "image", "text")
    require_same_dtype(image, text, "image", "text")
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
    image_tokens, text_tokens = as_array(image_tokens, "image_tokens"), as_array(text_tokens, "text_tokens")
    i_shape = _float_input(image_tokens, "image_tokens", (3,), "(batch, N, D_image)")
    t_shape = _float_input(text_tokens, "text_tokens", (3,), "(batch, T, D_text)")
    require_same_batch(i_shape, t_shape, "image_tokens", "text_tokens")
    if text_mask is not None:
        text_mask = require_token_mask(text_mask, t_shape, "text_mask", "text_tokens")
    image_vector = ops.mean(image_tokens, axis=1)  # (B, D_image)
    text_vector = encoders.masked_mean_pool(text_tokens, text_mask)  # (B, D_text)
    return ops.concatenate([image_vector, ops.cast(text_vector, image_vector.dtype)], axis=-1)


def product_fusion(image_vector, text_vector):
    """Feature-level fusion by element-wise product: float (batch, D) * (batch, D).

    Both vectors must already live in the same D-dimensional space (project them first).
    Unlike concatenation, a product lets a text feature switch an image feature on or off.
    """
    image_vector, text_vector = as_array(image_vector, "image_vector"), as_array(text_vector, "text_vector")
    i_shape = _float_input(image_vector, "image_vector", (2,), "(batch, D)")
    t_shape = _float_input(text_vector, "text_vector", (2,), "(batch, D)")
    require_same_batch(i_shape, t_shape, "image_vector", "text_vector")
    if not same_dim(i_shape[-1], t_shape[-1]):
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
    features, gamma, beta = as_array(features, "features"), as_array(gamma, "gamma"), as_array(beta, "beta")
    f_shape = _float_input(features, "features", (3, 4), "(batch, N, C) or (batch, H, W, C)")
    for t, n in ((gamma, "gamma"), (beta, "beta")):
        shape = _float_input(t, n, (2,), "(batch, C)")
        require_same_batch(f_shape, shape, "features (image side)", f"{n} (text side)")
        if not same_dim(shape[-1], f_shape[-1]):
            raise ValueError(f"{n}: expected one value per feature channel, shape (batch, {f_shape[-1]}), got "
                             f"{shape}; FiLM modulates channels, not positions.")
    expand = (slice(None),) + (None,) * (len(f_shape) - 2) + (slice(None),)  # (B, 1, [1,] C)
    return features * gamma[expand] + beta[expand]


def late_fusion(image_logits, text_logits, image_weight=0.5):
    """Decision-level fusion: combine two answer distributions.

    image_logits, text_logits: float (batch, num_answers) from two separate models.
    Returns the log of the weighted geometric mean of their softmax probabilities,
    ``w * log_softmax(image) + (1 - w) * log_softmax(text)`` (a "product of experts"),
    float (batch, num_answers); ``image_weight`` w in [0, 1] (a number or a scalar tensor).
    """
    image_logits, text_logits = as_array(image_logits, "image_logits"), as_array(text_logits, "text_logits")
    i_shape = _float_input(image_logits, "image_logits", (2,), "(batch, num_answers)")
    t_shape = _float_input(text_logits, "text_logits", (2,), "(batch, num_answers)")
    require_same_batch(i_shape, t_shape, "image_logits", "text_logits")
    require_same_dtype(image_logits, text_logits, "image_logits", "text_logits")
    if not same_dim(i_shape[-1], t_shape[-1]):
        raise ValueError(f"both models must score the same answers, got {i_shape[-1]} image and {t_shape[-1]} "
                         "text answer logits.")
    if isinstance(image_weight, (int, float)) or not hasattr(image_weight, "shape"):
        image_weight = require_float(image_weight, "image_weight", 0.0, 1.0)
    return (image_weight * ops.log_softmax(image_logits, axis=-1)
            + (1.0 - image_weight) * ops.log_softmax(text_logits, axis=-1))


def _attention_inputs(queries, context, context_mask):
    """The checks `naive_similarity_fusion` and `cross_attention` share."""
    queries, context = as_array(queries, "queries"), as_array(context, "context")
    q_shape = _float_input(queries, "queries", (3,), "(batch, q_len, D)")
    c_shape = _float_input(context, "context", (3,), "(batch, k_len, D)")
    require_same_batch(q_shape, c_shape, "queries", "context")
    if not same_dim(q_shape[-1], c_shape[-1]):
        raise ValueError(f"queries and context must have the same feature size D to be compared, got "
                         f"{q_shape[-1]} and {c_shape[-1]}; project one of them with Dense({q_shape[-1]}).")
    require_same_dtype(queries, context, "queries", "context")
    if context_mask is not None:
        context_mask = require_token_mask(context_mask, c_shape, "context_mask", "context")
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
    queries, context, _ = _attention_inputs(queries, context, None)
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
    queries, context, context_mask = _attention_inputs(queries, context, context_mask)
    mask = None if context_mask is None else context_mask[:, None, :]  # (B, 1, k_len): the same for every query
    return attention.scaled_dot_product_attention(queries, context, context, mask)


def object_pairs(objects):
    """Every ordered pair of objects, side by side: the input of a relation network.

    objects: float (batch, K, D). Returns float (batch, K, K, 2 D) whose entry ``[b, i, j]``
    is ``[objects[b, i] ; objects[b, j]]``: object i first, then object j. Both orders of
    a pair are there, (i, j) and (j, i), so a function of a pair can tell "i left of j"
    from "j left of i"; the K diagonal entries pair an object with itself.
    """
    objects = as_array(objects, "objects")
    shape = _float_input(objects, "objects", (3,), "(batch, K, D)")
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
        self.dense = keras.layers.Dense(self.units, activation="relu", name="dense", dtype=self.dtype_policy)
        self.input_spec = keras.layers.InputSpec(ndim=3)

    def build(self, image_tokens_shape, text_tokens_shape, text_mask_shape=None):
        self.dense.build((image_tokens_shape[0], image_tokens_shape[-1] + text_tokens_shape[-1]))

    def call(self, image_tokens, text_tokens, text_mask=None):
        return self.dense(concat_fusion(image_tokens, text_tokens, text_mask))

    def get_config(self):
        return {**super().get_config(), "units": self.units}


@_register
class ProductFusion(keras.layers.Layer):
    """Element-wise product fusion: ``layer(image_vector, text_vector)`` with float
    (batch, D_i) and (batch, D_t) -> (batch, units).

    Each side is projected to ``units``, normalised (`LayerNormalization`) and squashed
    by tanh, then the two are multiplied: ``tanh(LN(W_i v_i)) * tanh(LN(W_t v_t))``.
    Without the normalisation, features of a large or unbounded scale (e.g. unnormalised
    image features) push tanh into saturation, its gradient vanishes and the model falls
    back on the question alone; normalised, every unit stays in tanh's sensitive range
    whatever the scale of the input. Parameters: ``(D_i + 1) * units + (D_t + 1) * units
    + 4 * units``.
    """

    def __init__(self, units: int = 128, **kwargs):
        super().__init__(**kwargs)
        self.units = positive_int(units, "units")
        policy = self.dtype_policy
        self.image_projection = keras.layers.Dense(self.units, name="image_projection", dtype=policy)
        self.text_projection = keras.layers.Dense(self.units, name="text_projection", dtype=policy)
        self.image_norm = keras.layers.LayerNormalization(name="image_norm", dtype=policy)
        self.text_norm = keras.layers.LayerNormalization(name="text_norm", dtype=policy)
        self.input_spec = keras.layers.InputSpec(ndim=2)

    def build(self, image_vector_shape, text_vector_shape):
        self.image_projection.build(image_vector_shape)
        self.text_projection.build(text_vector_shape)
        self.image_norm.build(tuple(image_vector_shape[:-1]) + (self.units,))
        self.text_norm.build(tuple(text_vector_shape[:-1]) + (self.units,))

    def call(self, image_vector, text_vector):
        require_same_batch(static_shape(image_vector), static_shape(text_vector), "image_vector", "text_vector")
        image = ops.tanh(self.image_norm(self.image_projection(image_vector)))  # (B, units) in [-1, 1]
        text = ops.tanh(self.text_norm(self.text_projection(text_vector)))
        return product_fusion(image, text)

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
        self.mode = require_choice(mode, ("film", "gate"), "mode")
        policy = self.dtype_policy
        self.gamma = keras.layers.Dense(self.channels, name="gamma", dtype=policy)
        if self.mode == "film":
            self.transform = keras.layers.Dense(self.channels, name="transform", dtype=policy)
            self.norm = keras.layers.LayerNormalization(center=False, scale=False, name="norm", dtype=policy)
            self.beta = keras.layers.Dense(self.channels, name="beta", dtype=policy)
        self.input_spec = keras.layers.InputSpec(min_ndim=3, max_ndim=4, axes={-1: self.channels})

    def _check_condition(self, f_shape, c_shape):
        if len(c_shape) != 2:
            raise ValueError(f"{self.name}: expected a condition vector (batch, D), got {tuple(c_shape)}.")
        require_same_batch(tuple(f_shape), tuple(c_shape), "features (image side)", "condition (text side)")

    def build(self, features_shape, condition_shape):
        self._check_condition(features_shape, condition_shape)
        self.gamma.build(condition_shape)
        if self.mode == "film":
            self.transform.build(features_shape)
            self.norm.build(features_shape)
            self.beta.build(condition_shape)

    def call(self, features, condition):
        self._check_condition(static_shape(features), static_shape(condition))
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

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.input_spec = keras.layers.InputSpec(ndim=2)

    def build(self, image_logits_shape, text_logits_shape):
        self.weight_logit = self.add_weight(name="weight_logit", shape=(), initializer="zeros")

    def call(self, image_logits, text_logits):
        return late_fusion(image_logits, text_logits, ops.sigmoid(self.weight_logit))


@_register
class CrossAttentionFusion(keras.layers.Layer):
    """Multi-head cross-attention from one modality to the other.

    ``layer(queries, context, context_mask=None, return_attention_scores=False)`` with
    queries float (batch, q_len, d_q) (here: image regions), context float (batch, k_len,
    d_c) (here: question tokens), context_mask bool (batch, k_len) (True on real tokens).
    It is lesson 03's `attention.MultiHeadAttention` with the queries from one modality
    and the keys and values from the other: ``num_heads`` heads of size ``key_dim``,
    scaled, softmax over the context, padding masked, heads merged by a Dense layer.
    Returns float (batch, q_len, output_dim) (default ``num_heads * key_dim``), and with
    ``return_attention_scores=True`` also the weights (batch, num_heads, q_len, k_len).
    """

    def __init__(self, num_heads: int = 2, key_dim: int = 32, output_dim: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.num_heads = positive_int(num_heads, "num_heads")
        self.key_dim = positive_int(key_dim, "key_dim")
        self.output_dim = (self.num_heads * self.key_dim if output_dim is None
                           else positive_int(output_dim, "output_dim"))
        self.attention = attention.MultiHeadAttention(self.num_heads, self.key_dim, output_dim=self.output_dim,
                                                      name="attention", dtype=self.dtype_policy)
        self.input_spec = keras.layers.InputSpec(ndim=3)

    def build(self, queries_shape, context_shape, context_mask_shape=None):
        if len(context_shape) != 3 or context_shape[-1] is None:
            raise ValueError(f"{self.name}: expected context (batch, length, features) with known features, got "
                             f"{tuple(context_shape)}.")
        self.attention.build(queries_shape, context_shape)

    def call(self, queries, context, context_mask=None, return_attention_scores=False):
        q_shape = static_shape(queries)
        c_shape = require_rank(context, (3,), "context", "(batch, k_len, d_c)")
        require_same_batch(q_shape, c_shape, "queries (image side)", "context (text side)")
        if context_mask is not None:
            context_mask = require_token_mask(context_mask, c_shape, "context_mask", "context")
        return self.attention(queries, context=context, context_mask=context_mask,
                              return_attention_scores=return_attention_scores)

    def get_config(self):
        return {**super().get_config(), "num_heads": self.num_heads, "key_dim": self.key_dim,
                "output_dim": self.output_dim}


@_register
class RelationFusion(keras.layers.Layer):
    """A relation network (Santoro et al., 2017) over objects grounded in the question's words.

    ``layer(objects, question_tokens, question, question_mask=None, objectness=None,
    return_grounding=False)`` with objects float (batch, K, D_o), question_tokens float
    (batch, T, D_t) (position-aware, e.g. `qa.QuestionEncoder`), question float (batch, D_q)
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
        policy = self.dtype_policy
        self.object_projection = keras.layers.Dense(self.key_dim, name="object_key", dtype=policy)
        self.word_projection = keras.layers.Dense(self.key_dim, name="word_query", dtype=policy)
        self.pair_hidden = keras.layers.Dense(self.units, activation="relu", name="g_hidden", dtype=policy)
        self.pair_output = keras.layers.Dense(self.units, activation="relu", name="g_output", dtype=policy)
        self.input_spec = keras.layers.InputSpec(ndim=3)

    def _check_inputs(self, objects, question_tokens, question, question_mask, objectness):
        o_shape = static_shape(objects)
        t_shape = _float_input(question_tokens, "question_tokens", (3,), "(batch, T, D_t)")
        q_shape = _float_input(question, "question", (2,), "(batch, D_q)")
        require_same_batch(o_shape, t_shape, "objects (image side)", "question_tokens (text side)")
        require_same_batch(o_shape, q_shape, "objects (image side)", "question (text side)")
        if question_mask is not None:
            question_mask = require_token_mask(question_mask, t_shape, "question_mask", "question_tokens")
        if objectness is not None:
            w_shape = _float_input(objectness, "objectness", (3,), "(batch, K, 1)")
            if w_shape[-1] != 1 or not same_dim(w_shape[1], o_shape[1]):
                raise ValueError(f"objectness: expected one value per object slot, shape (batch, {o_shape[1]}, 1), "
                                 f"got {w_shape}.")
            require_same_batch(o_shape, w_shape, "objects", "objectness")
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
        kernel = ops.cast(self.pair_hidden.kernel, grounded.dtype)  # (2 G + D_q, units)
        as_first = ops.matmul(grounded, kernel[:width])  # (B, K, units): x_i W_1
        as_second = ops.matmul(grounded, kernel[width:2 * width])  # (B, K, units): x_j W_2
        bias = ops.cast(self.pair_hidden.bias, grounded.dtype)
        shared = ops.matmul(question, kernel[2 * width:]) + bias  # (B, units): q W_q + b
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
