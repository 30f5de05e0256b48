"""Lesson 05: losses, written with `keras.ops` only so they run on every Keras backend.

A classifier outputs *logits* ``z`` (any real numbers); ``softmax(z)`` turns them into
probabilities. Training minimises the negative log-likelihood of the data,

    L(theta) = sum_i -log P(y_i | x_i; theta) = sum_i -log_softmax(z_i)[y_i],

and `log_softmax` is computed with the log-sum-exp trick so it neither overflows
(``exp(1000) = inf``) nor underflows (``log(0) = -inf``).

Public API (later lessons import these):

- `log_softmax`, `sparse_cross_entropy`, `negative_log_likelihood`: classification.
- `masked_mean`, `masked_sequence_loss`: token-level mean over real tokens only
  (language models, lessons 07 and 08). A batch without any real token gives 0, not NaN.
- `l2_normalize`, `similarity_logits`, `info_nce_from_logits`, `symmetric_info_nce` and
  the `LearnedTemperature` layer: CLIP-style contrastive learning (lesson 06).
- `float_tensor`, `check_labels`, `check_mask`: the input checks of these losses, shared
  with `metrics` (general checks live in `validation`).

Shapes: ``B`` batch, ``T`` time (tokens), ``C`` classes (the vocabulary size for language
models), ``D`` embedding features. Float computations run in the input's float dtype,
except that float16 / bfloat16 are computed in float32 (mixed precision keeps losses in
float32). Value checks that need the numbers (label ids in range, mask values) run when
the inputs are concrete (NumPy arrays or eager tensors); inside a compiled training step
only shapes and dtypes can be checked.
"""

from __future__ import annotations

import math

import keras
import numpy as np
from keras import ops

from mmlm_course.validation import (as_array, concrete_values, dtype_name, is_float, is_int, require_choice, require_int,
                                    require_float, require_float_dtype, require_int_dtype, same_dim, same_shape,
                                    static_shape)

# --------------------------------------------------------------------------- input checks (shared with metrics)


def float_tensor(x, name: str, what: str = "logits"):
    """``x`` (array, list or tensor) as a float tensor to compute a loss or metric in.

    float16 / bfloat16 become float32 (losses stay in float32 under mixed precision);
    float64 stays float64. TypeError for integer input, which usually means labels and
    logits were swapped.
    """
    x = ops.convert_to_tensor(as_array(x, name))
    require_float_dtype(x, name, fix=f"cast it with ops.cast(x, 'float32') (were {what} and labels swapped?)")
    return ops.cast(x, "float64" if dtype_name(x) == "float64" else "float32")


def check_labels(labels, logits, name: str = "labels"):
    """Integer class ids of shape ``logits.shape[:-1]`` with values in [0, C), as a tensor.

    TypeError for non-integer labels (one-hot vectors, probabilities); ValueError for a
    shape that does not match the logits (naming differing batch sizes) or, when the
    values are known now, an id outside [0, C).
    """
    labels = ops.convert_to_tensor(as_array(labels, name))
    require_int_dtype(labels, name, what="integer class ids (int32, not one-hot vectors or probabilities; "
                                         "were labels and logits swapped?)")
    shape, expected = static_shape(labels), static_shape(logits)[:-1]
    if not same_shape(shape, expected):
        batch_note = ""
        if shape and expected and not same_dim(shape[0], expected[0]):
            batch_note = (f" The batch sizes differ: {shape[0]} labels for {expected[0]} rows of logits "
                          "(did the labels and the model inputs come from different batches?).")
        raise ValueError(f"{name}: expected shape {expected} (logits shape {static_shape(logits)} without the class "
                         f"axis: one class id per prediction), got shape {shape}.{batch_note}")
    num_classes = static_shape(logits)[-1]
    values = concrete_values(labels)
    if values is not None and values.size and num_classes is not None:
        low, high = int(values.min()), int(values.max())
        if low < 0 or high >= num_classes:
            raise ValueError(f"{name}: class ids must lie in [0, {num_classes}) for logits with {num_classes} "
                             f"classes, got values from {low} to {high}.")
    return labels


def check_mask(mask, shape: tuple, name: str = "mask"):
    """A mask of ``shape``: bool (True on real tokens) or non-negative numeric weights.

    Returned as a tensor of its own dtype. ValueError for a wrong shape or (when the
    values are known now) a negative or NaN weight; TypeError for other dtypes.
    """
    if isinstance(mask, np.ndarray) and mask.dtype.kind in "USO":
        raise TypeError(f"{name}: expected a bool mask (or 0/1 numbers), got dtype {mask.dtype}.")
    mask = ops.convert_to_tensor(as_array(mask, name))
    if not same_shape(static_shape(mask), shape):
        raise ValueError(f"{name}: expected shape {shape} (one entry per token, True on real tokens), "
                         f"got shape {static_shape(mask)}.")
    dtype = dtype_name(mask)
    if dtype != "bool" and not (is_int(mask) or is_float(mask)):
        raise TypeError(f"{name}: expected a bool mask (or 0/1 numbers), got dtype {dtype}.")
    if dtype != "bool":
        values = concrete_values(mask)
        if values is not None and values.size and (np.isnan(values).any() or values.min() < 0):
            raise ValueError(f"{name}: mask weights must be non-negative numbers (True/1 on real tokens, "
                             f"False/0 on padding), got minimum {values.min()!r}.")
    return mask


# --------------------------------------------------------------------------- classification


def _check_axis(axis, x, where: str) -> int:
    rank = len(static_shape(x))
    return require_int(axis, f"{where}: axis (for a rank-{rank} input)", -rank, rank - 1)


def log_softmax(logits, axis: int = -1):
    """Stable ``log(softmax(logits))`` along ``axis``.

    Uses ``log_softmax(z) = z - m - log(sum(exp(z - m)))`` with ``m = max(z)``: every
    exponent is <= 0, so nothing overflows, and the log is never taken of a rounded-to-0
    probability. Input: float (..., C). Output: same shape and float dtype (float16 is
    computed in float32).
    """
    logits = float_tensor(logits, "log_softmax: logits")
    if len(static_shape(logits)) == 0:
        raise ValueError("log_softmax: expected logits with a class axis, e.g. shape (B, C), got a scalar.")
    axis = _check_axis(axis, logits, "log_softmax")
    if 0 in static_shape(logits):
        raise ValueError(f"log_softmax: logits are empty (shape {static_shape(logits)}); expected at least one row "
                         "and one class.")
    m = ops.stop_gradient(ops.max(logits, axis=axis, keepdims=True))
    shifted = logits - m
    return shifted - ops.log(ops.sum(ops.exp(shifted), axis=axis, keepdims=True))


def sparse_cross_entropy(labels, logits, label_smoothing: float = 0.0):
    """Per-prediction cross-entropy ``-log P(y | x)`` from logits, optionally label-smoothed.

    Args:
        labels: int (...,) class ids in [0, C).
        logits: float (..., C) unnormalised scores.
        label_smoothing: epsilon in [0, 1). The target distribution becomes
            ``(1 - epsilon) * one_hot(y) + epsilon / C`` (as in Keras), so the loss is
            ``(1 - epsilon) * (-log p_y) + epsilon * mean_c(-log p_c)``.

    Returns:
        float (...,): one loss per prediction (no reduction).
    """
    logits = float_tensor(logits, "sparse_cross_entropy: logits")
    if len(static_shape(logits)) < 1:
        raise ValueError("sparse_cross_entropy: expected logits of shape (..., C), got a scalar.")
    labels = check_labels(labels, logits, "sparse_cross_entropy: labels")
    label_smoothing = require_float(label_smoothing, "label_smoothing", 0.0, 1.0, high_open=True)
    log_probs = log_softmax(logits)
    index = ops.expand_dims(ops.cast(labels, "int32"), -1)
    nll = -ops.squeeze(ops.take_along_axis(log_probs, index, axis=-1), -1)
    if label_smoothing == 0.0:
        return nll
    uniform = -ops.mean(log_probs, axis=-1)
    return (1.0 - label_smoothing) * nll + label_smoothing * uniform


REDUCTIONS = ("mean", "sum", "none")


def negative_log_likelihood(labels, logits, reduction: str = "mean", label_smoothing: float = 0.0):
    """The negative log-likelihood ``sum_i -log P(y_i | x_i)`` of integer labels under logits.

    Args:
        labels: int (B,) (or any (...,)) class ids; logits: float (B, C) (or (..., C)).
        reduction: ``"sum"`` (the textbook sum), ``"mean"`` (sum / number of
            predictions, what Keras and ``fit`` report) or ``"none"`` (one value each).
        label_smoothing: see `sparse_cross_entropy`.

    Returns: a float scalar, or float (...,) for ``reduction="none"``.
    """
    require_choice(reduction, REDUCTIONS, "reduction")
    per_example = sparse_cross_entropy(labels, logits, label_smoothing)
    if reduction == "none":
        return per_example
    if reduction == "sum":
        return ops.sum(per_example)
    return ops.mean(per_example)


# --------------------------------------------------------------------------- sequences


def masked_mean(values, mask):
    """Mean of ``values`` over the positions where ``mask`` is True (token-level mean).

    ``sum(values * mask) / max(sum(mask), 1)``: padding never counts, each real token has
    the same weight whatever its sequence length, and a batch without any real token gives
    0.0 (not NaN). Padded positions may hold anything finite (real models put garbage
    there); they are multiplied by 0.

    Args:
        values: float (...) e.g. per-token losses (B, T).
        mask: bool (or non-negative 0/1 weights) with the same shape as ``values``.
    Returns: a float scalar.
    """
    values = float_tensor(values, "masked_mean: values", "values")
    weights = ops.cast(check_mask(mask, static_shape(values), "masked_mean: mask"), values.dtype)
    # where() (not values * weights) keeps inf / NaN at padded positions out of the sum.
    total = ops.sum(ops.where(weights > 0, values * weights, ops.zeros_like(values)))
    return total / ops.maximum(ops.sum(weights), ops.cast(1.0, values.dtype))


def masked_sequence_loss(labels, logits, mask=None, label_smoothing: float = 0.0):
    """Cross-entropy of a sequence model, averaged over real tokens only.

    Args:
        labels: int (B, T) target token ids (the inputs shifted by one for a language model).
        logits: float (B, T, V) scores over the vocabulary.
        mask: bool (B, T), True on real tokens, False on padding; None means every token
            counts. Pass ``labels != pad_id`` when you have no mask at hand.
        label_smoothing: see `sparse_cross_entropy`.

    Returns:
        float scalar: ``sum(mask * ce) / max(sum(mask), 1)``. A fully padded row adds
        nothing (no NaN) and a fully padded batch gives 0.0. Equals
        ``keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=pad_id)``
        when ``mask = labels != pad_id``.
    """
    logits = float_tensor(logits, "masked_sequence_loss: logits")
    if len(static_shape(logits)) != 3:
        raise ValueError(f"masked_sequence_loss: expected logits of shape (B, T, V), got shape {static_shape(logits)}.")
    per_token = sparse_cross_entropy(labels, logits, label_smoothing)  # (B, T)
    if mask is None:
        return ops.mean(per_token)
    return masked_mean(per_token, mask)


# --------------------------------------------------------------------------- contrastive (CLIP)


def l2_normalize(x, axis: int = -1, epsilon: float = 1e-12):
    """``x / max(||x||, epsilon)`` along ``axis`` (an all-zero vector stays zero, no NaN)."""
    x = float_tensor(x, "l2_normalize: x", "values")
    axis = _check_axis(axis, x, "l2_normalize")
    epsilon = require_float(epsilon, "epsilon", 0.0, 1.0, low_open=True)
    norm = ops.sqrt(ops.sum(ops.square(x), axis=axis, keepdims=True))
    return x / ops.maximum(norm, ops.cast(epsilon, x.dtype))


def _check_embeddings(image_embeddings, text_embeddings):
    images = float_tensor(image_embeddings, "image_embeddings", "embeddings")
    texts = float_tensor(text_embeddings, "text_embeddings", "embeddings")
    for name, value in (("image_embeddings", images), ("text_embeddings", texts)):
        if len(static_shape(value)) != 2:
            raise ValueError(f"{name}: expected shape (B, D) (one embedding vector per example), "
                             f"got shape {static_shape(value)}.")
    (b_img, d_img), (b_txt, d_txt) = static_shape(images), static_shape(texts)
    if None not in (b_img, b_txt) and b_img != b_txt:
        raise ValueError(f"Image/text batch mismatch: got {b_img} image embeddings and {b_txt} text embeddings. "
                         "Contrastive training needs one matching text per image (row i of each is a pair).")
    if None not in (d_img, d_txt) and d_img != d_txt:
        raise ValueError(f"Embedding size mismatch: image embeddings have {d_img} features and text embeddings "
                         f"have {d_txt}. Project both into the same space (a Dense layer of the same width).")
    return images, texts


def _temperature(temperature, dtype):
    if isinstance(temperature, (int, float, complex, np.number)):      # a complex one is refused here
        require_float(temperature, "temperature", low=0.0, low_open=True)
    t = ops.convert_to_tensor(as_array(temperature, "temperature"))
    if len(static_shape(t)) != 0:
        raise ValueError(f"temperature must be a scalar, got shape {static_shape(t)}.")
    return ops.cast(t, dtype)


def similarity_logits(image_embeddings, text_embeddings, temperature=0.07):
    """Cosine similarities divided by the temperature: float (B, B).

    Entry ``[i, j]`` is ``cos(image_i, text_j) / T``; the matching pairs lie on the
    diagonal. A small T sharpens the softmax (CLIP learns T, starting at 0.07).
    Inputs: float (B, D) each, same B and D (errors name the mismatch).
    """
    images, texts = _check_embeddings(image_embeddings, text_embeddings)
    dtype = "float64" if "float64" in (dtype_name(images), dtype_name(texts)) else "float32"
    images, texts = ops.cast(images, dtype), ops.cast(texts, dtype)
    cosine = ops.matmul(l2_normalize(images), ops.transpose(l2_normalize(texts)))
    return cosine / _temperature(temperature, dtype)


def info_nce_from_logits(logits):
    """Symmetric InfoNCE of a square (B, B) logit matrix whose diagonal holds the true pairs.

    ``(CE(rows, diag) + CE(columns, diag)) / 2``: image-to-text (each image must pick its
    text among B texts: softmax over a row) and text-to-image (softmax over a column).
    Returns a float scalar.
    """
    logits = float_tensor(logits, "info_nce_from_logits: logits")
    shape = static_shape(logits)
    if len(shape) != 2 or (None not in shape and shape[0] != shape[1]):
        raise ValueError(f"info_nce_from_logits: expected a square (B, B) similarity matrix (images x texts), "
                         f"got shape {shape}.")
    diagonal = ops.diagonal(logits)
    image_to_text = ops.logsumexp(logits, axis=1) - diagonal  # -log softmax(row i)[i]
    text_to_image = ops.logsumexp(logits, axis=0) - diagonal  # -log softmax(column j)[j]
    return (ops.mean(image_to_text) + ops.mean(text_to_image)) / 2.0


def symmetric_info_nce(image_embeddings, text_embeddings, temperature=0.07):
    """The CLIP loss: symmetric InfoNCE on L2-normalised embeddings.

    Args:
        image_embeddings, text_embeddings: float (B, D); row i of each is a matching pair,
            every other row is a negative.
        temperature: T > 0, a float or a scalar tensor (e.g. ``LearnedTemperature.temperature``).
            The logits are ``cos / T`` (divide, not multiply: T = 0.07 scales by ~14).

    Returns: float scalar, the mean of the image-to-text and text-to-image cross-entropies.
    When every similarity is equal (no information) it is exactly ``log(B)``.
    """
    return info_nce_from_logits(similarity_logits(image_embeddings, text_embeddings, temperature))


@keras.saving.register_keras_serializable(package="mmlm_course")
class ClipValue(keras.constraints.Constraint):
    """Weight constraint: clip every value into ``[min_value, max_value]`` after each update."""

    def __init__(self, min_value: float, max_value: float):
        if not min_value <= max_value:
            raise ValueError(f"ClipValue needs min_value <= max_value, got {min_value} > {max_value}.")
        self.min_value = float(min_value)
        self.max_value = float(max_value)

    def __call__(self, w):
        return ops.clip(w, self.min_value, self.max_value)

    def get_config(self):
        return {"min_value": self.min_value, "max_value": self.max_value}


@keras.saving.register_keras_serializable(package="mmlm_course")
class LearnedTemperature(keras.layers.Layer):
    """A trainable softmax temperature, stored as ``log T`` and clipped as in CLIP.

    ``layer(similarities)`` returns ``similarities / T``. The weight ``log_temperature``
    starts at ``log(initial_temperature)`` and is kept in
    ``[log(min_temperature), log(max_temperature)]``: after every optimizer step (a
    weight constraint) and again in `call`. The defaults 0.07, 0.01 and 1.0 are CLIP's:
    the logit scale ``1 / T`` stays in [1, 100], so the logits cannot blow up.

    Learning ``log T`` rather than T keeps T positive and makes its steps relative.
    The layer always computes in float32 (also under mixed precision).

    Input: float (..., ) similarities, e.g. (B, B) cosines. Output: same shape, float32.
    """

    def __init__(self, initial_temperature: float = 0.07, min_temperature: float = 0.01,
                 max_temperature: float = 1.0, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        for name, value in (("initial_temperature", initial_temperature), ("min_temperature", min_temperature),
                            ("max_temperature", max_temperature)):
            require_float(value, f"LearnedTemperature: {name}", low=0.0, low_open=True)
        if not min_temperature <= initial_temperature <= max_temperature:
            raise ValueError(f"LearnedTemperature: expected min_temperature <= initial_temperature <= "
                             f"max_temperature, got {min_temperature} <= {initial_temperature} <= "
                             f"{max_temperature}.")
        self.initial_temperature = float(initial_temperature)
        self.min_temperature = float(min_temperature)
        self.max_temperature = float(max_temperature)
        self._low, self._high = math.log(self.min_temperature), math.log(self.max_temperature)
        self.log_temperature = self.add_weight(
            name="log_temperature", shape=(), dtype="float32",
            initializer=keras.initializers.Constant(math.log(self.initial_temperature)),
            constraint=ClipValue(self._low, self._high), trainable=True)

    @property
    def temperature(self):
        """The current clipped temperature T, a float32 scalar tensor."""
        return ops.exp(ops.clip(ops.convert_to_tensor(self.log_temperature), self._low, self._high))

    def call(self, similarities):
        require_float_dtype(similarities, "LearnedTemperature: similarities")
        return ops.cast(similarities, "float32") / self.temperature

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(initial_temperature=self.initial_temperature, min_temperature=self.min_temperature,
                      max_temperature=self.max_temperature)
        return config
