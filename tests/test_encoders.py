"""Tests for mmlm_course.encoders: attention against NumPy and Keras, patches, pooling,
every encoder's shapes, padding invariance, error messages and .keras round trips."""

import keras
import numpy as np
import pytest

from mmlm_course import encoders as E

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
    out, w = E.scaled_dot_product_attention(q, k, v)
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
    out, w = E.scaled_dot_product_attention(q, k, v, mask)
    ref_out, ref_w = np_attention(q, k, v, np.broadcast_to(full, (b, h, t, s)))
    np.testing.assert_allclose(np.asarray(w), ref_w, atol=1e-6)
    np.testing.assert_allclose(np.asarray(out), ref_out, atol=1e-5)
    assert np.all(np.asarray(w)[~np.broadcast_to(full, (b, h, t, s))] == 0)


def test_fully_masked_query_gives_zeros_not_nan():
    q, k, v = normal(1, 2, 4), normal(1, 3, 4), normal(1, 3, 4)
    mask = np.array([[[True, True, False], [False, False, False]]])
    out, w = E.scaled_dot_product_attention(q, k, v, mask)
    assert not np.isnan(np.asarray(out)).any()
    np.testing.assert_array_equal(np.asarray(w)[0, 1], 0.0)
    np.testing.assert_array_equal(np.asarray(out)[0, 1], 0.0)


@pytest.mark.parametrize("args,error,match", [
    ((normal(2, 4), normal(2, 4), normal(2, 4)), ValueError,
     r"query: expected shape .*rank 3 or 4.*got shape \(2, 4\)"),
    ((normal(2, 3, 4), normal(2, 3, 5), normal(2, 3, 4)), ValueError, "same feature size d"),
    ((normal(2, 3, 4), normal(3, 3, 4), normal(3, 3, 4)), ValueError, "same batch size"),
    ((normal(2, 3, 4), normal(2, 5, 4), normal(2, 4, 4)), ValueError, "same length k_len"),
    ((normal(2, 3, 4), normal(2, 3, 4), normal(2, 3, 4), np.ones((2, 3), np.float32)), TypeError,
     "boolean mask.*got dtype float32"),
    ((normal(2, 3, 4), normal(2, 5, 4), normal(2, 5, 4), np.ones((2, 4), bool)), ValueError, r"key padding mask"),
    ((normal(2, 3, 4), normal(2, 5, 4), normal(2, 5, 4), np.ones((2, 3, 4), bool)), ValueError, "does not broadcast"),
    ((np.ones((1, 2, 4), np.int32),) * 3, TypeError, "floating-point"),
])
def test_attention_errors(args, error, match):
    with pytest.raises(error, match=match):
        E.scaled_dot_product_attention(*args)


def test_causal_mask():
    np.testing.assert_array_equal(np.asarray(E.causal_mask(3)), np.tril(np.ones((3, 3), bool)))
    np.testing.assert_array_equal(np.asarray(E.causal_mask(2, 4)), [[1, 1, 1, 0], [1, 1, 1, 1]])
    with pytest.raises(ValueError, match="k_len"):
        E.causal_mask(3, 2)


# --------------------------------------------------------------------------- multi-head attention


def _copied(num_heads, key_dim, query, context=None, **kwargs):
    keras_kwargs = {("output_shape" if name == "output_dim" else name): value for name, value in kwargs.items()}
    keras_mha = keras.layers.MultiHeadAttention(num_heads, key_dim, **keras_kwargs)
    keras_mha(query, query if context is None else context)
    scratch = E.ScratchMultiHeadAttention(num_heads, key_dim, **kwargs)
    scratch(query, context)
    scratch.set_weights(keras_mha.get_weights())
    return keras_mha, scratch


def test_scratch_attention_equals_keras_with_padding_mask():
    x = normal(3, 6, 16)
    mask = np.ones((3, 6), bool)
    mask[0, 4:] = False
    mask[2, 1:] = False
    keras_mha, scratch = _copied(4, 8, x)
    expected, expected_w = keras_mha(x, x, attention_mask=np.repeat(mask[:, None, :], 6, axis=1),
                                     return_attention_scores=True)
    got, got_w = scratch(x, mask=mask, return_attention_scores=True)
    np.testing.assert_allclose(np.asarray(got), np.asarray(expected), atol=1e-5)
    np.testing.assert_allclose(np.asarray(got_w), np.asarray(expected_w), atol=1e-6)
    # Keras' query_mask / value_mask form: equal on every real query position.
    masked = keras_mha(x, x, query_mask=mask, value_mask=mask)
    np.testing.assert_allclose(np.asarray(scratch(x, mask=mask))[mask], np.asarray(masked)[mask], atol=1e-5)


def test_scratch_cross_attention_and_causal_equal_keras():
    q, c = normal(2, 4, 12), normal(2, 7, 10)
    c_mask = np.ones((2, 7), bool)
    c_mask[1, 5:] = False
    keras_mha, scratch = _copied(3, 5, q, c, value_dim=6, output_dim=9)
    expected = keras_mha(q, c, attention_mask=np.repeat(c_mask[:, None, :], 4, axis=1))
    got = scratch(q, c, context_mask=c_mask)
    assert tuple(got.shape) == (2, 4, 9)
    np.testing.assert_allclose(np.asarray(got), np.asarray(expected), atol=1e-5)

    x = normal(2, 5, 8)
    keras_mha, _ = _copied(2, 4, x)
    scratch = E.ScratchMultiHeadAttention(2, 4, use_causal_mask=True)
    scratch(x)
    scratch.set_weights(keras_mha.get_weights())
    np.testing.assert_allclose(np.asarray(scratch(x)), np.asarray(keras_mha(x, x, use_causal_mask=True)), atol=1e-5)


def test_scratch_attention_errors():
    layer = E.ScratchMultiHeadAttention(2, 4)
    with pytest.raises(ValueError, match=r"query.*\(batch, q_len, d\)"):
        layer(normal(2, 8))
    with pytest.raises(ValueError, match="same batch size"):
        layer(normal(2, 3, 8), normal(3, 3, 8))
    with pytest.raises(TypeError, match="boolean mask"):
        layer(normal(2, 3, 8), mask=np.ones((2, 3), np.int32))
    with pytest.raises(ValueError, match="num_heads must be a positive int"):
        E.ScratchMultiHeadAttention(0, 4)


# --------------------------------------------------------------------------- transformer block


def test_transformer_block_shapes_params_and_padding_invariance():
    block = E.TransformerEncoderBlock(16, 4, 32)
    x = normal(1, 4, 16)
    y = np.asarray(block(x))
    assert y.shape == (1, 4, 16)
    d, m = 16, 32
    assert block.count_params() == 2 * 2 * d + 4 * (d * d + d) + (d * m + m) + (m * d + d)
    padded = np.concatenate([x, normal(1, 3, 16, scale=5)], axis=1)
    mask = np.array([[True] * 4 + [False] * 3])
    np.testing.assert_allclose(np.asarray(block(padded, mask=mask))[:, :4], y, atol=1e-5)


def test_causal_block_ignores_the_future():
    block = E.TransformerEncoderBlock(8, 2, 16, use_causal_mask=True)
    x = normal(1, 5, 8)
    changed = x.copy()
    changed[:, 3:] += 10.0
    a, b = np.asarray(block(x)), np.asarray(block(changed))
    np.testing.assert_allclose(a[:, :3], b[:, :3], atol=1e-5)
    assert not np.allclose(a[:, 3:], b[:, 3:])


def test_transformer_block_errors():
    with pytest.raises(ValueError, match="divisible by num_heads"):
        E.TransformerEncoderBlock(10, 4, 8)
    with pytest.raises(ValueError, match=r"expected input \(batch, time, embed_dim=16\)"):
        E.TransformerEncoderBlock(16, 4, 8)(normal(1, 3, 12))
    with pytest.raises(ValueError, match="dropout"):
        E.TransformerEncoderBlock(16, 4, 8, dropout=1.5)


# --------------------------------------------------------------------------- images


def test_patchify_matches_loops():
    images = RNG.integers(0, 256, size=(2, 6, 9, 2), dtype=np.uint8)
    got = np.asarray(E.patchify(images, 3))
    assert got.shape == (2, 6, 18) and got.dtype == np.uint8
    expected = np.stack([[img[i:i + 3, j:j + 3].reshape(-1) for i in range(0, 6, 3) for j in range(0, 9, 3)]
                         for img in images])
    np.testing.assert_array_equal(got, expected)


def test_patchify_errors():
    with pytest.raises(ValueError, match=r"divisible by patch_size=5.*got 8x8"):
        E.patchify(np.zeros((1, 8, 8, 3)), 5)
    with pytest.raises(ValueError, match=r"expected shape \(batch, H, W, C\)"):
        E.patchify(np.zeros((8, 8, 3)), 4)
    with pytest.raises(ValueError, match="patch_size must be a positive int"):
        E.patchify(np.zeros((1, 8, 8, 3)), 0)


def test_patch_embedding_is_a_strided_convolution():
    images = RNG.random((2, 16, 16, 3), dtype=np.float32)
    layer = E.PatchEmbedding(16, 4, 10)
    tokens = np.asarray(layer(images))
    assert tokens.shape == (2, 16, 10)
    assert layer.count_params() == (4 * 4 * 3 * 10 + 10) + 16 * 10
    conv = keras.layers.Conv2D(10, 4, strides=4)
    conv.build((None, 16, 16, 3))
    kernel, bias = layer.projection.get_weights()
    conv.set_weights([kernel.reshape(4, 4, 3, 10), bias])
    positions = layer.position_embedding.get_weights()[0]
    expected = np.asarray(conv(images)).reshape(2, 16, 10) + positions
    np.testing.assert_allclose(tokens, expected, atol=1e-5)


def test_patch_embedding_class_token_and_errors():
    layer = E.PatchEmbedding(8, 4, 6, use_class_token=True)
    assert tuple(layer(np.zeros((3, 8, 8, 3), np.float32)).shape) == (3, 5, 6)
    with pytest.raises(ValueError, match="built for 8x8 images, got 16x16"):
        layer(np.zeros((1, 16, 16, 3), np.float32))
    with pytest.raises(ValueError, match="divisible by patch_size"):
        E.PatchEmbedding(10, 4, 6)


def test_conv_image_encoder_shapes_and_feature_maps():
    images = RNG.random((2, 32, 32, 3), dtype=np.float32)
    encoder = E.ConvImageEncoder(filters=(4, 8), embed_dim=6)
    assert tuple(encoder(images).shape) == (2, 6)
    maps = encoder.feature_maps(images)
    assert [tuple(m.shape) for m in maps] == [(2, 32, 32, 4), (2, 16, 16, 8)]
    expected = E.conv2d_param_count(3, 3, 4) + E.conv2d_param_count(3, 4, 8) + 8 * 6 + 6
    assert encoder.count_params() == expected
    tokens = E.ConvImageEncoder(filters=(4, 8), embed_dim=6, output="tokens")(images)
    assert tuple(tokens.shape) == (2, 64, 6)


def test_conv_image_encoder_errors():
    encoder = E.ConvImageEncoder(filters=(4,), embed_dim=6)
    with pytest.raises(TypeError, match="to_float_image"):
        encoder(np.zeros((1, 8, 8, 3), np.uint8))
    with pytest.raises(ValueError, match="expected 3 channels"):
        encoder(np.zeros((1, 8, 8, 4), np.float32))
    with pytest.raises(ValueError, match="output must be one of"):
        E.ConvImageEncoder(output="grid")


def test_conv2d_param_count():
    layer = keras.layers.Conv2D(7, 5)
    layer.build((None, 9, 9, 3))
    assert E.conv2d_param_count(5, 3, 7) == layer.count_params()
    assert E.conv2d_param_count(5, 3, 7, use_bias=False) == 5 * 5 * 3 * 7
    with pytest.raises(ValueError, match="in_channels must be a positive int, got 0"):
        E.conv2d_param_count(3, 0, 4)


# --------------------------------------------------------------------------- text


def test_masked_mean():
    x = normal(2, 3, 4)
    mask = np.array([[True, False, True], [False, False, False]])
    got = np.asarray(E.masked_mean(x, mask))
    np.testing.assert_allclose(got[0], x[0, [0, 2]].mean(axis=0), atol=1e-6)
    np.testing.assert_array_equal(got[1], 0.0)
    np.testing.assert_allclose(np.asarray(E.masked_mean(x)), x.mean(axis=1), atol=1e-6)
    with pytest.raises(ValueError, match=r"mask: expected shape \(batch, time\) = \(2, 3\)"):
        E.masked_mean(x, np.ones((2, 4), bool))
    with pytest.raises(TypeError, match="boolean mask"):
        E.masked_mean(x, mask.astype(np.float32))


IDS = np.array([[5, 6, 7, 8], [9, 10, 0, 0]], np.int32)


@pytest.mark.parametrize("make", [
    lambda: E.BagOfEmbeddings(12, 8),
    lambda: E.RecurrentTextEncoder(12, 8, 6),
    lambda: E.RecurrentTextEncoder(12, 8, 6, cell="lstm", bidirectional=True),
    lambda: E.TransformerTextEncoder(12, 8, 8, 2, 16, 1),
])
def test_text_encoders_ignore_padding(make):
    encoder = make()
    short = np.asarray(encoder(IDS[1:, :2]))
    batched = np.asarray(encoder(IDS))
    np.testing.assert_allclose(batched[1:], short, atol=1e-5)


def test_text_encoder_param_counts_and_order():
    gru = E.RecurrentTextEncoder(20, 8, 6)
    gru(IDS)
    assert gru.rnn.count_params() == 3 * (6 * (8 + 6) + 2 * 6)
    lstm = E.RecurrentTextEncoder(20, 8, 6, cell="lstm")
    lstm(IDS)
    assert lstm.rnn.count_params() == 4 * (6 * (8 + 6) + 6)
    bag = E.BagOfEmbeddings(20, 4)
    swapped = IDS[:1, ::-1].copy()
    np.testing.assert_allclose(np.asarray(bag(IDS[:1])), np.asarray(bag(swapped)), atol=1e-6)
    assert not np.allclose(np.asarray(gru(IDS[:1])), np.asarray(gru(swapped)))
    sequences = E.TransformerTextEncoder(20, 8, 8, 2, 16, 1, pooling=None)(IDS)
    assert tuple(sequences.shape) == (2, 4, 8)


def test_text_encoder_errors():
    encoder = E.TransformerTextEncoder(12, 3, 8, 2, 16, 1)
    with pytest.raises(ValueError, match="longer than max_length=3"):
        encoder(IDS)
    with pytest.raises(TypeError, match="integer token ids"):
        E.BagOfEmbeddings(12, 4)(IDS.astype(np.float32))
    with pytest.raises(ValueError, match="cell must be one of"):
        E.RecurrentTextEncoder(12, cell="rnn")


# --------------------------------------------------------------------------- audio


def test_audio_encoder_shapes_and_padding_invariance():
    encoder = E.AudioEncoder(10, filters=(6, 6), strides=(2, 2), kernel_size=3, embed_dim=5)
    clip = normal(1, 13, 10)
    alone = np.asarray(encoder(clip))
    assert alone.shape == (1, 5)
    padded = np.concatenate([clip, normal(1, 8, 10, scale=3)], axis=1)
    mask = np.arange(21)[None] < 13
    np.testing.assert_allclose(np.asarray(encoder(padded, mask=mask)), alone, atol=1e-5)
    tokens = E.AudioEncoder(10, filters=(6, 6), strides=(2, 2), embed_dim=5, output="tokens")(clip)
    assert tuple(tokens.shape) == (1, 4, 5) and encoder.output_frames(13) == 4


def test_audio_encoder_errors():
    encoder = E.AudioEncoder(40)
    with pytest.raises(ValueError, match=r"expected 40 mel bins.*transpose"):
        encoder(normal(2, 40, 100))
    with pytest.raises(ValueError, match=r"expected shape \(batch, frames, mel_bins=40\)"):
        encoder(normal(100, 40))
    with pytest.raises(ValueError, match="mask: expected"):
        encoder(normal(2, 50, 40), mask=np.ones((2, 49), bool))
    with pytest.raises(ValueError, match="one entry per conv layer"):
        E.AudioEncoder(40, filters=(8, 8), strides=(2,))


def test_shape_trace_prints_every_step(capsys):
    dense = keras.layers.Dense(3)
    out = E.shape_trace(normal(2, 4), [("dense", dense), ("double", lambda t: t * 2)])
    assert tuple(out.shape) == (2, 3)
    text = capsys.readouterr().out
    assert "(2, 3)" in text and "15" in text and "double" in text


# --------------------------------------------------------------------------- serialization


def _round_trip(model, inputs, tmp_path):
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    expected = model(inputs)
    got = loaded(inputs)
    for a, b in zip(keras.tree.flatten(expected), keras.tree.flatten(got)):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=1e-6)
    return loaded


def test_image_layers_round_trip(tmp_path):
    inputs = keras.Input((16, 16, 3))
    tokens = E.PatchEmbedding(16, 4, 8, use_class_token=True)(inputs)
    tokens = E.TransformerEncoderBlock(8, 2, 16, dropout=0.1)(tokens)
    vector = E.ConvImageEncoder(filters=(4, 8), embed_dim=8)(inputs)
    grid = E.ConvImageEncoder(filters=(4,), embed_dim=8, output="tokens")(inputs)
    model = keras.Model(inputs, [tokens, vector, grid])
    loaded = _round_trip(model, RNG.random((2, 16, 16, 3), dtype=np.float32), tmp_path)
    block = next(layer for layer in loaded.layers if isinstance(layer, E.TransformerEncoderBlock))
    assert block.get_config()["dropout"] == 0.1


def test_attention_and_text_layers_round_trip(tmp_path):
    ids = keras.Input((4,), dtype="int32")
    context = keras.Input((3, 6))
    outputs = [E.BagOfEmbeddings(12, 6)(ids), E.RecurrentTextEncoder(12, 6, 5, cell="lstm", bidirectional=True)(ids),
               E.TransformerTextEncoder(12, 8, 8, 2, 16, 1)(ids)]
    embedded = keras.layers.Embedding(12, 6, mask_zero=True)(ids)
    outputs.append(E.ScratchMultiHeadAttention(2, 3, output_dim=4)(embedded, context))
    outputs.append(E.PositionEmbedding(4, 6)(embedded))
    model = keras.Model([ids, context], outputs)
    _round_trip(model, [IDS, normal(2, 3, 6)], tmp_path)


def test_audio_encoder_round_trip(tmp_path):
    spectrogram = keras.Input((20, 8))
    frames = keras.Input((20,), dtype="bool")
    encoder = E.AudioEncoder(8, filters=(4, 4), strides=(1, 2), embed_dim=6)
    model = keras.Model([spectrogram, frames], encoder(spectrogram, mask=frames))
    mask = np.arange(20)[None].repeat(2, 0) < np.array([[20], [11]])
    loaded = _round_trip(model, [normal(2, 20, 8), mask], tmp_path)
    assert loaded.layers[-1].get_config()["strides"] == [1, 2]


def test_mixed_precision_block_with_padding_stays_finite():
    block = E.TransformerEncoderBlock(8, 2, 16, dtype="mixed_float16")
    mask = np.array([[True, True, False, False]])
    y = block(normal(1, 4, 8), mask=mask)
    assert keras.backend.standardize_dtype(y.dtype) == "float16"
    assert np.isfinite(np.asarray(y, np.float32)).all()
