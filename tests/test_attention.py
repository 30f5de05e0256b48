"""Tests for mmlm_course.attention: scaled dot-product attention against NumPy, the causal
mask, the cache update, MultiHeadAttention against keras.layers.MultiHeadAttention (with
and without a key-value cache) and the Transformer block."""

import keras
import numpy as np
import pytest
from keras import ops

from mmlm_course import attention as A

RNG = np.random.default_rng(0)


def normal(*shape, scale=1.0):
    return (RNG.normal(size=shape) * scale).astype(np.float32)


def np_attention(q, k, v, mask=None):
    scores = q.astype(np.float64) @ np.swapaxes(k, -1, -2) / np.sqrt(q.shape[-1])
    if mask is not None:
        scores = np.where(mask, scores, -np.inf)
    scores = scores - scores.max(axis=-1, keepdims=True)
    weights = np.exp(scores)
    weights /= weights.sum(axis=-1, keepdims=True)
    return weights @ v, weights


# --------------------------------------------------------------------------- scaled_dot_product_attention


def test_attention_matches_numpy_without_mask():
    q, k, v = normal(2, 3, 4), normal(2, 5, 4), normal(2, 5, 6)
    out, w = A.scaled_dot_product_attention(q, k, v)
    ref_out, ref_w = np_attention(q, k, v)
    assert tuple(out.shape) == (2, 3, 6) and tuple(w.shape) == (2, 3, 5)
    np.testing.assert_allclose(np.asarray(w), ref_w, atol=1e-6)
    np.testing.assert_allclose(np.asarray(out), ref_out, atol=1e-5)


@pytest.mark.parametrize("layout", ["key_padding", "same_rank", "per_query_4d"])
def test_attention_masks_match_numpy(layout):
    b, h, t, s, d = 2, 3, 4, 5, 8
    q, k, v = normal(b, h, t, d, scale=2), normal(b, h, s, d, scale=2), normal(b, h, s, d)
    keys = np.ones((b, s), bool)
    keys[0, 3:] = False
    if layout == "key_padding":
        mask, full = keys, keys[:, None, None, :]
    elif layout == "same_rank":
        mask = keys[:, None, None, :] & np.tril(np.ones((t, s), bool), 1)[None, None]
        full = mask
    else:
        mask = np.broadcast_to(keys[:, None, :], (b, t, s)).copy()
        mask[1, 0, 1:] = False
        full = mask[:, None]
    out, w = A.scaled_dot_product_attention(q, k, v, mask)
    ref_out, ref_w = np_attention(q, k, v, np.broadcast_to(full, (b, h, t, s)))
    np.testing.assert_allclose(np.asarray(w), ref_w, atol=1e-6)
    np.testing.assert_allclose(np.asarray(out), ref_out, atol=1e-5)
    assert np.all(np.asarray(w)[~np.broadcast_to(full, (b, h, t, s))] == 0)


def test_fully_masked_query_gives_zeros_not_nan():
    q, k, v = normal(1, 2, 4), normal(1, 3, 4), normal(1, 3, 4)
    mask = np.array([[[True, True, False], [False, False, False]]])
    out, w = A.scaled_dot_product_attention(q, k, v, mask)
    assert not np.isnan(np.asarray(out)).any()
    np.testing.assert_array_equal(np.asarray(w)[0, 1], 0.0)
    np.testing.assert_array_equal(np.asarray(out)[0, 1], 0.0)


@pytest.mark.parametrize("args,error,match", [
    ((normal(2, 4), normal(2, 4), normal(2, 4)), ValueError, r"rank 3 or 4"),
    ((normal(2, 3, 4), normal(2, 3, 5), normal(2, 3, 4)), ValueError, "feature size"),
    ((normal(2, 3, 4), normal(3, 3, 4), normal(3, 3, 4)), ValueError, "batch size"),
    ((normal(2, 3, 4), normal(2, 5, 4), normal(2, 4, 4)), ValueError, "k_len"),
    ((normal(2, 3, 4), normal(2, 3, 4), normal(2, 3, 4), np.ones((2, 3), np.float32)), TypeError, "boolean"),
    ((normal(2, 3, 4), normal(2, 5, 4), normal(2, 5, 4), np.ones((2, 4), bool)), ValueError, "key padding"),
    ((normal(2, 3, 4), normal(2, 5, 4), normal(2, 5, 4), np.ones((2, 3, 4), bool)), ValueError, "broadcast"),
    ((np.ones((1, 2, 4), np.int32),) * 3, TypeError, "floating-point"),
])
def test_attention_errors(args, error, match):
    with pytest.raises(error, match=match):
        A.scaled_dot_product_attention(*args)


# --------------------------------------------------------------------------- causal mask and cache update


def test_causal_mask_is_the_lower_triangle():
    mask = ops.convert_to_numpy(A.causal_mask(5))
    assert mask.dtype == bool and mask.shape == (5, 5)
    np.testing.assert_array_equal(mask, np.tril(np.ones((5, 5), bool)))


def test_causal_mask_with_offset_for_a_cache():
    np.testing.assert_array_equal(ops.convert_to_numpy(A.causal_mask(1, 6, offset=3)),
                                  [[True, True, True, True, False, False]])
    np.testing.assert_array_equal(ops.convert_to_numpy(A.causal_mask(2, 5, offset=3)),
                                  np.tril(np.ones((5, 5), bool))[3:])
    tensor_offset = A.causal_mask(1, 4, offset=ops.convert_to_tensor(2, "int32"))
    np.testing.assert_array_equal(ops.convert_to_numpy(tensor_offset), [[True, True, True, False]])


def test_causal_mask_errors():
    with pytest.raises(ValueError, match="query_length"):
        A.causal_mask(0)
    with pytest.raises(TypeError, match="query_length"):
        A.causal_mask(2.0)
    with pytest.raises(ValueError, match="shorter than offset"):
        A.causal_mask(2, 3, offset=2)


def test_update_cache_writes_into_the_slot():
    cache = np.arange(2 * 5 * 3, dtype=np.float32).reshape(2, 5, 3)
    got = ops.convert_to_numpy(A.update_cache(cache, -np.ones((2, 2, 3), np.float32), 2))
    expected = cache.copy()
    expected[:, 2:4] = -1
    np.testing.assert_array_equal(got, expected)


def test_update_cache_on_axis_2_with_a_tensor_position():
    cache = np.zeros((1, 2, 4, 3), np.float32)
    new = np.ones((1, 2, 1, 3), np.float32)
    got = ops.convert_to_numpy(A.update_cache(cache, new, ops.convert_to_tensor(3, "int32"), axis=2))
    assert got[:, :, 3].min() == 1 and got[:, :, :3].max() == 0


def test_update_cache_errors():
    cache = np.zeros((2, 5, 3), np.float32)
    with pytest.raises(ValueError, match="position"):
        A.update_cache(cache, np.zeros((2, 1, 3), np.float32), 5)
    with pytest.raises(ValueError, match="must match cache"):
        A.update_cache(cache, np.zeros((1, 1, 3), np.float32), 0)
    with pytest.raises(ValueError, match="same rank"):
        A.update_cache(cache, np.zeros((2, 3), np.float32), 0)


# --------------------------------------------------------------------------- MultiHeadAttention


def _copied(num_heads, key_dim, query, context=None, **kwargs):
    """A keras.layers.MultiHeadAttention and ours with the same weights."""
    keras_kwargs = {("output_shape" if name == "output_dim" else name): value for name, value in kwargs.items()
                    if name != "use_causal_mask"}
    keras_mha = keras.layers.MultiHeadAttention(num_heads, key_dim, **keras_kwargs)
    keras_mha(query, query if context is None else context)
    ours = A.MultiHeadAttention(num_heads, key_dim, **kwargs)
    ours(query, context)
    ours.set_weights(keras_mha.get_weights())
    return keras_mha, ours


def test_multi_head_attention_equals_keras_with_padding_mask():
    x = normal(3, 6, 16)
    mask = np.ones((3, 6), bool)
    mask[0, 4:] = False
    mask[2, 1:] = False
    keras_mha, ours = _copied(4, 8, x)
    expected, expected_w = keras_mha(x, x, attention_mask=np.repeat(mask[:, None, :], 6, axis=1),
                                     return_attention_scores=True)
    got, got_w = ours(x, mask=mask, return_attention_scores=True)
    assert tuple(got_w.shape) == (3, 4, 6, 6)
    np.testing.assert_allclose(np.asarray(got), np.asarray(expected), atol=1e-5)
    np.testing.assert_allclose(np.asarray(got_w), np.asarray(expected_w), atol=1e-6)
    # Keras' query_mask / value_mask form: equal on every real query position.
    masked = keras_mha(x, x, query_mask=mask, value_mask=mask)
    np.testing.assert_allclose(np.asarray(ours(x, mask=mask))[mask], np.asarray(masked)[mask], atol=1e-5)


def test_cross_attention_and_causal_attention_equal_keras():
    q, c = normal(2, 4, 12), normal(2, 7, 10)
    c_mask = np.ones((2, 7), bool)
    c_mask[1, 5:] = False
    keras_mha, ours = _copied(3, 5, q, c, value_dim=6, output_dim=9)
    expected = keras_mha(q, c, attention_mask=np.repeat(c_mask[:, None, :], 4, axis=1))
    got = ours(q, c, context_mask=c_mask)
    assert tuple(got.shape) == (2, 4, 9)
    np.testing.assert_allclose(np.asarray(got), np.asarray(expected), atol=1e-5)

    x = normal(2, 5, 8)
    keras_mha, ours = _copied(2, 4, x, use_causal_mask=True)
    np.testing.assert_allclose(np.asarray(ours(x)), np.asarray(keras_mha(x, x, use_causal_mask=True)), atol=1e-5)


def test_a_cache_gives_the_outputs_and_weights_of_the_full_sequence():
    layer = A.MultiHeadAttention(2, 4, use_causal_mask=True)
    x = normal(2, 6, 8)
    full, full_w = layer(x, return_attention_scores=True)                          # (2, 6, 8), (2, 2, 6, 6)
    cache = (np.zeros((2, 2, 8, 4), np.float32),) * 2                              # 8 slots for 6 positions
    out, weights, cache = layer(x[:, :4], cache=cache, position=0, return_attention_scores=True)   # the prompt
    outputs, rows = [out], [weights]
    for t in (4, 5):                                                               # then one step at a time
        out, weights, cache = layer(x[:, t:t + 1], cache=cache, position=t, return_attention_scores=True)
        outputs.append(out)
        rows.append(weights)
    np.testing.assert_allclose(np.concatenate([np.asarray(o) for o in outputs], 1), np.asarray(full), atol=1e-5)
    weights = np.concatenate([np.asarray(w) for w in rows], axis=2)                # (2, 2, 6, 8 slots)
    np.testing.assert_allclose(weights[..., :6], np.asarray(full_w), atol=1e-6)
    assert np.all(weights[..., 6:] == 0)                                           # empty slots are masked
    keys, values = (np.asarray(t) for t in cache)
    assert keys.shape == values.shape == (2, 2, 8, 4) and np.all(keys[:, :, 6:] == 0)


def test_multi_head_attention_errors():
    layer = A.MultiHeadAttention(2, 4)
    with pytest.raises(ValueError, match="ndim=3"):
        layer(normal(2, 8))
    with pytest.raises(ValueError, match="batch size"):
        layer(normal(2, 3, 8), normal(3, 3, 8))
    with pytest.raises(TypeError, match="boolean"):
        layer(normal(2, 3, 8), mask=np.ones((2, 3), np.int32))
    with pytest.raises(ValueError, match="causal"):
        layer(normal(2, 3, 8), cache=(np.zeros((2, 2, 4, 4), np.float32),) * 2)
    with pytest.raises(ValueError, match="num_heads"):
        A.MultiHeadAttention(0, 4)
    with pytest.raises(TypeError, match="key_dim"):
        A.MultiHeadAttention(2, 4.0)


# --------------------------------------------------------------------------- TransformerBlock


def test_block_shapes_params_and_padding_invariance():
    block = A.TransformerBlock(16, 4, 32)
    x = normal(1, 4, 16)
    y = np.asarray(block(x))
    assert y.shape == (1, 4, 16)
    d, m = 16, 32
    assert block.count_params() == 2 * 2 * d + 4 * (d * d + d) + (d * m + m) + (m * d + d)
    padded = np.concatenate([x, normal(1, 3, 16, scale=5)], axis=1)
    mask = np.array([[True] * 4 + [False] * 3])
    np.testing.assert_allclose(np.asarray(block(padded, mask=mask))[:, :4], y, atol=1e-5)
    assert block.norm1.epsilon == block.norm2.epsilon == 1e-5


def test_causal_block_ignores_the_future_and_returns_its_weights():
    block = A.TransformerBlock(8, 2, 16, causal=True)
    x = normal(1, 5, 8)
    changed = x.copy()
    changed[:, 3:] += 10.0
    (a, weights), b = block(x, return_attention_scores=True), np.asarray(block(changed))
    a = np.asarray(a)
    np.testing.assert_allclose(a[:, :3], b[:, :3], atol=1e-5)
    assert not np.allclose(a[:, 3:], b[:, 3:])
    weights = np.asarray(weights)
    assert weights.shape == (1, 2, 5, 5) and np.all(np.triu(weights, k=1) == 0)


def test_causal_block_with_a_cache_equals_the_full_sequence():
    block = A.TransformerBlock(8, 2, 16, causal=True)
    x = normal(2, 5, 8)
    cache = (np.zeros((2, 2, 5, 4), np.float32),) * 2
    first, cache = block(x[:, :3], cache=cache, position=0)
    rest = []
    for t in (3, 4):
        out, cache = block(x[:, t:t + 1], cache=cache, position=t)
        rest.append(np.asarray(out))
    np.testing.assert_allclose(np.concatenate([np.asarray(first)] + rest, axis=1), np.asarray(block(x)), atol=1e-5)
    with pytest.raises(ValueError, match="causal"):
        A.TransformerBlock(8, 2, 16)(x, cache=cache)


def test_block_errors():
    with pytest.raises(ValueError, match="divisible by num_heads"):
        A.TransformerBlock(10, 4, 8)
    with pytest.raises(ValueError, match="axis -1"):
        A.TransformerBlock(16, 4, 8)(normal(1, 3, 12))
    with pytest.raises(ValueError, match="dropout"):
        A.TransformerBlock(16, 4, 8, dropout=1.5)


def test_layers_round_trip_through_a_keras_file(tmp_path):
    tokens = keras.Input((5, 8))
    context = keras.Input((3, 6))
    y = A.TransformerBlock(8, 2, 16, dropout=0.1, causal=True, seed=3)(tokens)
    z = A.MultiHeadAttention(2, 3, output_dim=4)(y, context)
    model = keras.Model([tokens, context], [y, z])
    path = tmp_path / "attention.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    inputs = [normal(2, 5, 8), normal(2, 3, 6)]
    for a, b in zip(model(inputs), loaded(inputs)):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=1e-6)
    block = next(layer for layer in loaded.layers if isinstance(layer, A.TransformerBlock))
    assert block.get_config()["causal"] and block.get_config()["dropout"] == 0.1
    for cls in (A.MultiHeadAttention, A.TransformerBlock):
        assert keras.saving.get_registered_name(cls) == f"mmlm_course>{cls.__name__}"


def test_mixed_precision_block_with_padding_stays_finite():
    block = A.TransformerBlock(8, 2, 16, dtype="mixed_float16")
    mask = np.array([[True, True, False, False]])
    y = block(normal(1, 4, 8), mask=mask)
    assert keras.backend.standardize_dtype(y.dtype) == "float16"
    assert np.isfinite(np.asarray(y, np.float32)).all()
    assert all(keras.backend.standardize_dtype(layer.compute_dtype) == "float16"
               for layer in (block.attention, block.norm1, block.mlp_in, block.dropout1))


# Issue #16: bad input to the public functions raises a clear TypeError / ValueError.
@pytest.mark.parametrize("call,error,word", [
    (lambda: A.MultiHeadAttention(2, 4, seed="3"), TypeError, "seed"),
    (lambda: A.MultiHeadAttention(2, 4, seed=-1), ValueError, "seed"),
    (lambda: A.TransformerBlock(8, 2, 16, seed=2.5), TypeError, "seed"),
    (lambda: A.causal_mask(3, 10**9), ValueError, "GiB"),
    (lambda: A.causal_mask(3, 5, offset=None), TypeError, "offset"),
    (lambda: A.causal_mask(3, 5, offset=1.5), TypeError, "offset"),
    (lambda: A.update_cache(None, np.zeros((2, 1, 4), np.float32), 0), TypeError, "cache"),
    (lambda: A.update_cache(np.zeros((2, 6, 4), np.float32), np.zeros((2, 1, 4), np.float32), "1"), TypeError,
     "position"),
    (lambda: A.scaled_dot_product_attention(np.zeros((2, 3, 4)).astype(str), np.zeros((2, 5, 4), np.float32),
                                            np.zeros((2, 5, 4), np.float32)), TypeError, "strings"),
])
def test_bad_inputs_raise_clear_errors(call, error, word):
    with pytest.raises(error, match=word):
        call()
