"""Tests for mmlm_course.encoders: patches, pooling, every encoder's shapes, padding
invariance, error messages and .keras round trips (attention: tests/test_attention.py)."""

import keras
import numpy as np
import pytest

from mmlm_course import encoders as E
from keras_helpers import round_trip

RNG = np.random.default_rng(0)


def normal(*shape, scale=1.0):
    return (RNG.normal(size=shape) * scale).astype(np.float32)


# --------------------------------------------------------------------------- images


def test_patchify_matches_loops():
    images = RNG.integers(0, 256, size=(2, 6, 9, 2), dtype=np.uint8)
    got = np.asarray(E.patchify(images, 3))
    assert got.shape == (2, 6, 18) and got.dtype == np.uint8
    expected = np.stack([[img[i:i + 3, j:j + 3].reshape(-1) for i in range(0, 6, 3) for j in range(0, 9, 3)]
                         for img in images])
    np.testing.assert_array_equal(got, expected)


def test_patchify_errors():
    with pytest.raises(ValueError, match="divisible by patch_size"):
        E.patchify(np.zeros((1, 8, 8, 3)), 5)
    with pytest.raises(ValueError, match="rank 4"):
        E.patchify(np.zeros((8, 8, 3)), 4)
    with pytest.raises(ValueError, match="patch_size"):
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
    with pytest.raises(ValueError, match="built for"):
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
    with pytest.raises(ValueError, match="channels"):
        encoder(np.zeros((1, 8, 8, 4), np.float32))
    with pytest.raises(ValueError, match="output"):
        E.ConvImageEncoder(output="grid")


def test_conv2d_param_count():
    layer = keras.layers.Conv2D(7, 5)
    layer.build((None, 9, 9, 3))
    assert E.conv2d_param_count(5, 3, 7) == layer.count_params()
    assert E.conv2d_param_count(5, 3, 7, use_bias=False) == 5 * 5 * 3 * 7
    with pytest.raises(ValueError, match="in_channels"):
        E.conv2d_param_count(3, 0, 4)


# --------------------------------------------------------------------------- text


def test_masked_mean_pool():
    x = normal(2, 3, 4)
    mask = np.array([[True, False, True], [False, False, False]])
    got = np.asarray(E.masked_mean_pool(x, mask))
    np.testing.assert_allclose(got[0], x[0, [0, 2]].mean(axis=0), atol=1e-6)
    np.testing.assert_array_equal(got[1], 0.0)
    np.testing.assert_allclose(np.asarray(E.masked_mean_pool(x)), x.mean(axis=1), atol=1e-6)
    with pytest.raises(ValueError, match="to match x"):
        E.masked_mean_pool(x, np.ones((2, 4), bool))
    with pytest.raises(TypeError, match="boolean"):
        E.masked_mean_pool(x, mask.astype(np.float32))
    with pytest.raises(ValueError, match="rank 3"):
        E.masked_mean_pool(x[0], mask[0])


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
    with pytest.raises(ValueError, match="max_length"):
        encoder(IDS)
    with pytest.raises(TypeError, match="integer token ids"):
        E.BagOfEmbeddings(12, 4)(IDS.astype(np.float32))
    with pytest.raises(ValueError, match="cell"):
        E.RecurrentTextEncoder(12, cell="rnn")
    with pytest.raises(ValueError, match="ndim=2"):
        E.TransformerTextEncoder(12, 8, 8, 2, 16, 1)(IDS[0])
    with pytest.raises(ValueError, match="axis -1"):
        E.PositionEmbedding(4, 6)(normal(2, 3, 5))


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
    with pytest.raises(ValueError, match="transpose"):
        encoder(normal(2, 40, 100))
    with pytest.raises(ValueError, match="mel_bins"):
        encoder(normal(100, 40))
    with pytest.raises(ValueError, match="mask"):
        encoder(normal(2, 50, 40), mask=np.ones((2, 49), bool))
    with pytest.raises(ValueError, match="strides"):
        E.AudioEncoder(40, filters=(8, 8), strides=(2,))


def test_shape_trace_prints_every_step(capsys):
    dense = keras.layers.Dense(3)
    out = E.shape_trace(normal(2, 4), [("dense", dense), ("double", lambda t: t * 2)])
    assert tuple(out.shape) == (2, 3)
    text = capsys.readouterr().out
    assert "(2, 3)" in text and "15" in text and "double" in text


# --------------------------------------------------------------------------- serialization


def test_image_layers_round_trip(tmp_path):
    inputs = keras.Input((16, 16, 3))
    tokens = E.PatchEmbedding(16, 4, 8, use_class_token=True)(inputs)
    vector = E.ConvImageEncoder(filters=(4, 8), embed_dim=8)(inputs)
    grid = E.ConvImageEncoder(filters=(4,), embed_dim=8, output="tokens")(inputs)
    model = keras.Model(inputs, [tokens, vector, grid])
    loaded = round_trip(model, RNG.random((2, 16, 16, 3), dtype=np.float32), tmp_path)
    patches = next(layer for layer in loaded.layers if isinstance(layer, E.PatchEmbedding))
    assert patches.get_config()["use_class_token"]


def test_text_layers_round_trip(tmp_path):
    ids = keras.Input((4,), dtype="int32")
    outputs = [E.BagOfEmbeddings(12, 6)(ids), E.RecurrentTextEncoder(12, 6, 5, cell="lstm", bidirectional=True)(ids),
               E.TransformerTextEncoder(12, 8, 8, 2, 16, 1)(ids)]
    embedded = keras.layers.Embedding(12, 6, mask_zero=True)(ids)
    outputs.append(E.PositionEmbedding(4, 6)(embedded))
    model = keras.Model(ids, outputs)
    round_trip(model, IDS, tmp_path)


def test_audio_encoder_round_trip(tmp_path):
    spectrogram = keras.Input((20, 8))
    frames = keras.Input((20,), dtype="bool")
    encoder = E.AudioEncoder(8, filters=(4, 4), strides=(1, 2), embed_dim=6)
    model = keras.Model([spectrogram, frames], encoder(spectrogram, mask=frames))
    mask = np.arange(20)[None].repeat(2, 0) < np.array([[20], [11]])
    loaded = round_trip(model, [normal(2, 20, 8), mask], tmp_path)
    assert loaded.layers[-1].get_config()["strides"] == [1, 2]


# Issue #16: a layer count that would build for minutes is refused; string arrays are refused.
@pytest.mark.parametrize("call,error,word", [
    (lambda: E.TransformerTextEncoder(20, 8, num_layers=10**9), ValueError, "num_layers"),
    (lambda: E.masked_mean_pool(np.zeros((2, 5, 4)).astype(str)), TypeError, "strings"),
])
def test_bad_inputs_raise_clear_errors(call, error, word):
    with pytest.raises(error, match=word):
        call()
