"""Lessons 03 and 04: answers written differently from the reference, which do what the text asks, pass."""

import math

import keras
import numpy as np
import pytest
from keras import ops

from mmlm_course import attention
from mmlm_course.exercises import CheckFailed, run_check
from check_helpers import by_name, passes


# --------------------------------------------------------------------------- 03.conv2d_param_count

def _conv_params_factored(kernel_size, in_channels, filters):
    return (kernel_size ** 2 * in_channels + 1) * filters


def _conv_params_numpy_int(kernel_size, in_channels, filters):
    return np.int64(math.prod((kernel_size, kernel_size, in_channels, filters)) + filters)


def _conv_params_from_keras(kernel_size, in_channels, filters):
    layer = keras.layers.Conv2D(filters, kernel_size)
    layer.build((None, None, None, in_channels))
    return layer.count_params()


@by_name([_conv_params_factored, _conv_params_numpy_int, _conv_params_from_keras])
def test_03_other_correct_conv2d_param_counts_pass(answer):
    passes("03.conv2d_param_count", answer)


# --------------------------------------------------------------------------- 03.patchify

def _patchify_loop(images, patch_size):
    p = patch_size
    _, h, w, _ = images.shape
    patches = [images[:, i * p:(i + 1) * p, j * p:(j + 1) * p, :].reshape(len(images), -1)
               for i in range(h // p) for j in range(w // p)]
    return np.stack(patches, axis=1)


def _patchify_windows(images, patch_size):
    p = patch_size
    b, h, w, c = images.shape
    windows = np.lib.stride_tricks.sliding_window_view(images, (p, p), axis=(1, 2))[:, ::p, ::p]  # (B, r, c, C, p, p)
    return windows.transpose(0, 1, 2, 4, 5, 3).reshape(b, -1, p * p * c)


def _patchify_keras_ops(images, patch_size):
    p = patch_size
    b, h, w, c = images.shape
    x = ops.reshape(ops.convert_to_tensor(images), (b, h // p, p, w // p, p, c))
    return ops.reshape(ops.transpose(x, (0, 1, 3, 2, 4, 5)), (b, -1, p * p * c))


@by_name([_patchify_loop, _patchify_windows, _patchify_keras_ops])
def test_03_other_correct_patchify_pass(answer):
    passes("03.patchify", answer)


# --------------------------------------------------------------------------- 03.masked_mean

def _masked_mean_loop(x, mask):
    out = np.zeros((x.shape[0], x.shape[2]), np.float32)
    for b in range(x.shape[0]):
        if mask[b].any():
            out[b] = x[b][mask[b]].mean(axis=0)
    return out


def _masked_mean_nan_to_num(x, mask):
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(mask[..., None], x, 0).sum(axis=1) / mask.sum(axis=1, keepdims=True).astype(np.float32)
    return np.nan_to_num(mean)


def _masked_mean_divide_where(x, mask):
    total = (x * mask[..., None]).sum(axis=1)
    count = mask.sum(axis=1, keepdims=True)
    return np.divide(total, count, out=np.zeros_like(total), where=count > 0)


def _masked_mean_keras_ops(x, mask):
    weights = ops.expand_dims(ops.cast(mask, "float32"), -1)
    return ops.sum(x * weights, axis=1) / ops.maximum(ops.sum(weights, axis=1), 1.0)


@by_name([_masked_mean_loop, _masked_mean_nan_to_num, _masked_mean_divide_where,
          _masked_mean_keras_ops])
def test_03_other_correct_masked_means_pass(answer):
    passes("03.masked_mean", answer)


# --------------------------------------------------------------------------- 03.scaled_dot_product_attention

def _attention_scipy(query, key, value, mask=None):
    from scipy.special import softmax
    scores = np.einsum("...qd,...kd->...qk", query, key) / math.sqrt(query.shape[-1])
    if mask is not None:
        scores = np.where(mask, scores, -np.inf)
    weights = softmax(scores, axis=-1)
    return np.einsum("...qk,...kv->...qv", weights, value), weights


def _attention_keras_ops(query, key, value, mask=None):
    scores = ops.matmul(query, ops.swapaxes(key, -1, -2)) / ops.sqrt(float(query.shape[-1]))
    if mask is not None:
        scores = ops.where(mask, scores, -1e9)
    weights = ops.softmax(scores, axis=-1)
    return ops.matmul(weights, value), weights


def _attention_float64_loop(query, key, value, mask=None):
    q, k, v = (np.asarray(a, np.float64) for a in (query, key, value))
    scores = q @ np.swapaxes(k, -1, -2) / np.sqrt(q.shape[-1])
    if mask is not None:
        scores = np.where(mask, scores, np.finfo(np.float64).min)
    weights = np.empty_like(scores)
    for index in np.ndindex(scores.shape[:-1]):
        row = np.exp(scores[index] - scores[index].max())
        weights[index] = row / row.sum()
    return weights @ v, weights


def _attention_additive_mask(query, key, value, mask=None):
    """The mask added to the scores as 0 / -1e9 (einsum, float64 softmax)."""
    scores = np.einsum("...qd,...kd->...qk", query, key) / np.sqrt(query.shape[-1])
    scores = scores + (0.0 if mask is None else np.where(mask, 0.0, -1e9))
    weights = np.exp(scores - scores.max(-1, keepdims=True))
    weights = weights / weights.sum(-1, keepdims=True)
    return np.einsum("...qk,...kv->...qv", weights, value), weights


@by_name([_attention_scipy, _attention_keras_ops, _attention_float64_loop,
          _attention_additive_mask])
def test_03_other_correct_attention_pass(answer):
    passes("03.scaled_dot_product_attention", answer)


# --------------------------------------------------------------------------- 03.transformer_block

def _block_class(call, attention_layer=None, mlp=("gelu", 1)):
    """The notebook's TransformerBlock with a learner's ``call``, optionally with other sizes."""

    def __init__(self, embed_dim, num_heads, mlp_dim, **kwargs):
        keras.layers.Layer.__init__(self, **kwargs)
        self.norm1 = keras.layers.LayerNormalization(epsilon=1e-5)
        self.attention = (attention_layer or (lambda h, d: attention.MultiHeadAttention(h, d // h)))(num_heads,
                                                                                                      embed_dim)
        self.norm2 = keras.layers.LayerNormalization(epsilon=1e-6)
        self.mlp_in = keras.layers.Dense(mlp[1] * mlp_dim, activation=mlp[0])
        self.mlp_out = keras.layers.Dense(embed_dim)
        self.supports_masking = True

    return type("TransformerBlock", (keras.layers.Layer,), {"__init__": __init__, "call": call})


def _call_with_ops(self, x, mask=None, training=None):
    x = ops.add(x, self.attention(self.norm1(x), mask=mask, training=training))
    return ops.add(x, self.mlp_out(self.mlp_in(self.norm2(x), training=training)))


def _call_hiding_padded_rows(self, x, mask=None):
    pairs = None if mask is None else ops.logical_and(mask[:, :, None], mask[:, None, :])  # (B, T, T)
    x = x + self.attention(self.norm1(x), attention_mask=pairs)
    return x + self.mlp_out(self.mlp_in(self.norm2(x)))


def _call_keyword_context_mask(self, x, mask=None):
    normed = self.norm1(x)
    attended = self.attention(query=normed, context_mask=mask)
    residual = x + attended
    return residual + self.mlp_out(self.mlp_in(self.norm2(residual)))


_BLOCKS = {
    "keras_ops_and_training": _block_class(_call_with_ops),
    "attention_mask_hiding_padded_rows": _block_class(_call_hiding_padded_rows),
    "other_sizes_and_relu": _block_class(_call_keyword_context_mask,
                                         attention_layer=lambda h, d: attention.MultiHeadAttention(4, 8),
                                         mlp=("relu", 2)),
    "the_course_block": attention.TransformerBlock,
}


@pytest.mark.parametrize("name", sorted(_BLOCKS))
def test_03_other_correct_transformer_blocks_pass(name):
    passes("03.transformer_block", _BLOCKS[name])


def test_03_block_without_return_fails_clearly_and_leaves_keras_usable():
    """Keras files the mask of a call() that returned None under id(None); left there, it broke every later
    masked call of the session, so the next, correct, block failed with a TypeError about a weak reference."""
    forgot_return = _block_class(lambda self, x, mask=None: None)
    with pytest.raises(CheckFailed, match="call\\(\\) returned None"):
        run_check("03.transformer_block", forgot_return)
    passes("03.transformer_block", _BLOCKS["keras_ops_and_training"])


def test_03_block_with_a_layer_the_check_cannot_rebuild_fails_clearly():
    block = _block_class(_call_with_ops, attention_layer=lambda h, d: attention.TransformerBlock(d, h, d))
    with pytest.raises(CheckFailed, match="cannot rebuild"):
        run_check("03.transformer_block", block)


# --------------------------------------------------------------------------- 04.concat_fusion

def _concat_keras_ops(image_tokens, text_tokens, text_mask):
    weights = ops.expand_dims(ops.cast(text_mask, text_tokens.dtype), -1)
    text = ops.sum(text_tokens * weights, axis=1) / ops.sum(weights, axis=1)
    return ops.concatenate([ops.mean(image_tokens, axis=1), text], axis=-1)


def _concat_loop_float64(image_tokens, text_tokens, text_mask):
    rows = []
    for image, text, mask in zip(image_tokens, text_tokens, text_mask):
        rows.append(np.concatenate([image.mean(axis=0, dtype=np.float64), text[mask].mean(axis=0, dtype=np.float64)]))
    return np.array(rows)


@by_name([_concat_keras_ops, _concat_loop_float64])
def test_04_other_correct_concat_fusions_pass(answer):
    passes("04.concat_fusion", answer)


# --------------------------------------------------------------------------- 04.fusion_model

class FusionModelAnswer(keras.Model):
    """04.fusion_model as a keras.Model subclass passed to the check as the class itself."""

    def __init__(self, num_objects, num_features, question_length, vocab_size, num_answers, **kwargs):
        super().__init__(**kwargs)
        self.objects = keras.layers.Dense(48, activation="relu")
        self.words = keras.layers.Embedding(vocab_size, 16, mask_zero=True)
        self.question = keras.layers.GlobalAveragePooling1D()
        self.hidden = keras.layers.Dense(96, activation="relu")
        self.logits = keras.layers.Dense(num_answers)

    def call(self, inputs, training=None):
        image = ops.mean(self.objects(inputs["objects"]), axis=1)
        question = self.question(self.words(inputs["token_ids"]))
        return self.logits(self.hidden(ops.concatenate([image, question], axis=-1)))


def _fusion_model_sum_over_count(num_objects, num_features, question_length, vocab_size, num_answers):
    """Functional, with keras.ops on the symbolic tensors: the masked mean written as sum / count."""
    objects = keras.Input((num_objects, num_features), name="objects")
    token_ids = keras.Input((question_length,), dtype="int32", name="token_ids")
    image = ops.mean(keras.layers.Dense(64, activation="relu")(objects), axis=1)
    real = ops.expand_dims(ops.cast(ops.not_equal(token_ids, 0), "float32"), -1)
    words = keras.layers.Embedding(vocab_size, 32)(token_ids)
    question = ops.sum(words * real, axis=1) / ops.maximum(ops.sum(real, axis=1), 1.0)
    hidden = keras.layers.Dense(128, activation="relu")(keras.layers.Concatenate()([image, question]))
    return keras.Model(inputs={"objects": objects, "token_ids": token_ids},
                       outputs=keras.layers.Dense(num_answers)(hidden))


def _fusion_model_gelu_lambda_dropout(num_objects, num_features, question_length, vocab_size, num_answers):
    """GELU on the objects, the mean in a Lambda layer, a tanh hidden layer and dropout before the logits."""
    objects = keras.Input((num_objects, num_features), name="objects")
    token_ids = keras.Input((question_length,), dtype="int32", name="token_ids")
    image = keras.layers.Lambda(lambda x: ops.mean(x, axis=1))(keras.layers.Dense(32, activation="gelu")(objects))
    question = keras.layers.GlobalAveragePooling1D()(keras.layers.Embedding(vocab_size, 16, mask_zero=True)(token_ids))
    hidden = keras.layers.Dense(64, activation="tanh")(keras.layers.Concatenate()([image, question]))
    logits = keras.layers.Dense(num_answers)(keras.layers.Dropout(0.1)(hidden))
    return keras.Model({"objects": objects, "token_ids": token_ids}, logits)


def _fusion_model_eight_units(num_objects, num_features, question_length, vocab_size, num_answers):
    """The smallest sizes the text allows: 8 units in every layer, 8-dimensional word embeddings."""
    objects = keras.Input((num_objects, num_features), name="objects")
    token_ids = keras.Input((question_length,), dtype="int32", name="token_ids")
    image = keras.layers.GlobalAveragePooling1D()(keras.layers.Dense(8, activation="relu")(objects))
    question = keras.layers.GlobalAveragePooling1D()(keras.layers.Embedding(vocab_size, 8, mask_zero=True)(token_ids))
    hidden = keras.layers.Dense(8, activation="relu")(keras.layers.Concatenate()([image, question]))
    return keras.Model({"objects": objects, "token_ids": token_ids}, keras.layers.Dense(num_answers)(hidden))


@by_name([FusionModelAnswer, _fusion_model_sum_over_count,
          _fusion_model_gelu_lambda_dropout, _fusion_model_eight_units])
def test_04_other_correct_fusion_models_pass(answer):
    passes("04.fusion_model", answer)


# --------------------------------------------------------------------------- 04.film

def _film_einsum(features, gamma, beta):
    return np.einsum("bnc,bc->bnc", features, gamma) + np.expand_dims(beta, 1)


def _film_keras_ops(features, gamma, beta):
    return ops.add(ops.multiply(features, ops.expand_dims(gamma, 1)), ops.expand_dims(beta, 1))


def _film_loop(features, gamma, beta):
    out = np.empty_like(features)
    for b in range(features.shape[0]):
        for n in range(features.shape[1]):
            out[b, n] = gamma[b] * features[b, n] + beta[b]
    return out


def _film_reshape(features, gamma, beta):
    return gamma.reshape(len(gamma), 1, -1) * features + beta.reshape(len(beta), 1, -1)


@by_name([_film_einsum, _film_keras_ops, _film_loop, _film_reshape])
def test_04_other_correct_films_pass(answer):
    passes("04.film", answer)


# --------------------------------------------------------------------------- 04.cross_attention

def _cross_attention_keras_ops_list(queries, context, context_mask):
    scores = ops.einsum("bqd,bkd->bqk", queries, context) / math.sqrt(queries.shape[-1])
    scores = ops.where(ops.expand_dims(context_mask, 1), scores, -1e9)
    weights = ops.softmax(scores, axis=-1)
    return [ops.matmul(weights, context), weights]


def _cross_attention_scipy_inf(queries, context, context_mask):
    from scipy.special import softmax
    scores = queries @ context.transpose(0, 2, 1) / np.sqrt(queries.shape[-1])
    weights = softmax(np.where(context_mask[:, None, :], scores, -np.inf), axis=-1)
    return weights @ context, weights


def _cross_attention_penalty(queries, context, context_mask):
    """Padding pushed down by subtracting 1e9 from its scores."""
    scores = queries @ np.swapaxes(context, 1, 2) / np.sqrt(queries.shape[-1]) - 1e9 * ~context_mask[:, None, :]
    weights = np.exp(scores - scores.max(-1, keepdims=True))
    weights = weights / weights.sum(-1, keepdims=True)
    return weights @ context, weights


@by_name([_cross_attention_keras_ops_list, _cross_attention_scipy_inf,
          _cross_attention_penalty])
def test_04_other_correct_cross_attentions_pass(answer):
    passes("04.cross_attention", answer)


# --------------------------------------------------------------------------- 04.object_pairs

def _pairs_broadcast(objects):
    b, k, d = objects.shape
    first = np.broadcast_to(objects[:, :, None, :], (b, k, k, d))
    second = np.broadcast_to(objects[:, None, :, :], (b, k, k, d))
    return np.concatenate([first, second], axis=-1)


def _pairs_loop(objects):
    b, k, d = objects.shape
    out = np.zeros((b, k, k, 2 * d), objects.dtype)
    for i in range(k):
        for j in range(k):
            out[:, i, j] = np.concatenate([objects[:, i], objects[:, j]], axis=-1)
    return out


def _pairs_repeat_tile_keras(objects):
    b, k, d = objects.shape
    first = ops.reshape(ops.repeat(objects, k, axis=1), (b, k, k, d))
    second = ops.reshape(ops.tile(objects, (1, k, 1)), (b, k, k, d))
    return ops.concatenate([first, second], axis=-1)


@by_name([_pairs_broadcast, _pairs_loop, _pairs_repeat_tile_keras])
def test_04_other_correct_object_pairs_pass(answer):
    passes("04.object_pairs", answer)
