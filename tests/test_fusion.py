"""Unit tests for mmlm_course.fusion (lesson 04): fusion functions and layers."""

import numpy as np
import pytest

import mmlm_course

mmlm_course.setup_notebook(seed=0)

import keras  # noqa: E402

from mmlm_course import detector, fusion  # noqa: E402
from keras_helpers import round_trip, to_numpy  # noqa: E402


def _rng(seed=0):
    return np.random.default_rng(seed)


def _normal(*shape, seed=0):
    return _rng(seed).normal(size=shape).astype(np.float32)


# --------------------------------------------------------------------------- functions


def test_early_fusion_tiles_text_over_every_position():
    image, text = _normal(2, 4, 5, 3), _normal(2, 6, seed=1)
    fused = to_numpy(fusion.early_fusion(image, text))
    assert fused.shape == (2, 4, 5, 9)
    np.testing.assert_allclose(fused[..., :3], image)
    np.testing.assert_allclose(fused[:, 2, 3, 3:], text)
    patches = to_numpy(fusion.early_fusion(_normal(2, 7, 3), text))
    assert patches.shape == (2, 7, 9)


def test_early_fusion_names_mismatched_batch_sizes():
    with pytest.raises(ValueError, match="mismatched batch sizes: image has 2 examples but text has 3"):
        fusion.early_fusion(_normal(2, 4, 4, 3), _normal(3, 6))
    with pytest.raises(ValueError, match=r"text: expected shape \(batch, D\)"):
        fusion.early_fusion(_normal(2, 4, 4, 3), _normal(2, 1, 6))


def test_concat_fusion_ignores_padding():
    image, text = _normal(2, 5, 3), _normal(2, 4, 2, seed=1)
    mask = np.array([[True, True, False, False], [True, True, True, True]])
    text[0, 2:] = 1e6
    fused = to_numpy(fusion.concat_fusion(image, text, mask))
    expected_text = np.stack([text[0, :2].mean(0), text[1].mean(0)])
    np.testing.assert_allclose(fused, np.concatenate([image.mean(1), expected_text], -1), rtol=1e-5, atol=1e-5)


def test_concat_fusion_validates_inputs():
    with pytest.raises(ValueError, match="mismatched batch sizes: image_tokens has 2 examples but text_tokens has 1"):
        fusion.concat_fusion(_normal(2, 5, 3), _normal(1, 4, 2))
    with pytest.raises(TypeError, match="text_mask: expected a boolean mask"):
        fusion.concat_fusion(_normal(2, 5, 3), _normal(2, 4, 2), np.ones((2, 4), np.int32))
    with pytest.raises(ValueError, match=r"text_mask: expected shape \(batch, length\) = \(2, 4\)"):
        fusion.concat_fusion(_normal(2, 5, 3), _normal(2, 4, 2), np.ones((2, 5), bool))
    with pytest.raises(TypeError, match="floating-point"):
        fusion.concat_fusion(np.ones((2, 5, 3), np.uint8), _normal(2, 4, 2))


def test_product_fusion():
    a, b = _normal(3, 4), _normal(3, 4, seed=1)
    np.testing.assert_allclose(to_numpy(fusion.product_fusion(a, b)), a * b)
    with pytest.raises(ValueError, match="product fusion needs vectors of one size"):
        fusion.product_fusion(a, _normal(3, 5))


def test_film_scales_and_shifts_channels():
    features, gamma, beta = _normal(2, 3, 4), _normal(2, 4, seed=1), _normal(2, 4, seed=2)
    np.testing.assert_allclose(to_numpy(fusion.film(features, gamma, beta)), features * gamma[:, None] + beta[:, None],
                               rtol=1e-6)
    grid = _normal(2, 3, 3, 4)
    np.testing.assert_allclose(to_numpy(fusion.film(grid, gamma, beta)), grid * gamma[:, None, None] + beta[:, None, None],
                               rtol=1e-6)
    with pytest.raises(ValueError, match=r"gamma: expected one value per feature channel, shape \(batch, 4\)"):
        fusion.film(features, _normal(2, 3), beta)
    with pytest.raises(ValueError, match="mismatched batch sizes"):
        fusion.film(features, _normal(1, 4), _normal(1, 4))


def test_late_fusion_is_a_weighted_sum_of_log_probabilities():
    a, b = _normal(2, 5), _normal(2, 5, seed=1)

    def log_softmax(x):
        x = x - x.max(-1, keepdims=True)
        return x - np.log(np.exp(x).sum(-1, keepdims=True))

    np.testing.assert_allclose(to_numpy(fusion.late_fusion(a, b, 0.25)), 0.25 * log_softmax(a) + 0.75 * log_softmax(b),
                               rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="image_weight"):
        fusion.late_fusion(a, b, 1.5)
    with pytest.raises(ValueError, match="both models must score the same answers"):
        fusion.late_fusion(a, _normal(2, 4))


def test_naive_similarity_weights_grow_with_the_square_of_the_scale():
    queries, context = _normal(2, 3, 8), _normal(2, 4, 8, seed=1)
    output, weights = (to_numpy(t) for t in fusion.naive_similarity_fusion(queries, context))
    np.testing.assert_allclose(weights, queries @ context.transpose(0, 2, 1), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(output, weights @ context, rtol=1e-4, atol=1e-4)
    _, scaled = fusion.naive_similarity_fusion(10 * queries, 10 * context)
    np.testing.assert_allclose(to_numpy(scaled), 100 * weights, rtol=1e-4, atol=1e-3)


def test_cross_attention_matches_numpy_and_masks_padding():
    queries, context = _normal(2, 3, 16), _normal(2, 5, 16, seed=1)
    mask = np.array([[True, True, True, False, False], [True] * 5])
    output, weights = (to_numpy(t) for t in fusion.cross_attention(queries, context, mask))
    scores = queries @ context.transpose(0, 2, 1) / 4.0
    scores = np.where(mask[:, None], scores, -np.inf)
    expected = np.exp(scores - scores.max(-1, keepdims=True))
    expected /= expected.sum(-1, keepdims=True)
    np.testing.assert_allclose(weights, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(output, expected @ context, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(weights.sum(-1), 1.0, rtol=1e-6)
    assert np.all(weights[0, :, 3:] == 0)


def test_object_pairs_holds_every_ordered_pair():
    objects = _normal(2, 3, 4)
    pairs = to_numpy(fusion.object_pairs(objects))
    assert pairs.shape == (2, 3, 3, 8)
    for i in range(3):
        for j in range(3):
            np.testing.assert_allclose(pairs[:, i, j], np.concatenate([objects[:, i], objects[:, j]], -1))
    with pytest.raises(ValueError, match=r"objects: expected shape \(batch, K, D\)"):
        fusion.object_pairs(_normal(2, 3))
    with pytest.raises(TypeError, match="floating-point"):
        fusion.object_pairs(np.ones((2, 3, 4), np.int32))


def test_cross_attention_validates_inputs():
    with pytest.raises(ValueError, match="mismatched batch sizes: queries has 2 examples but context has 3"):
        fusion.cross_attention(_normal(2, 3, 4), _normal(3, 5, 4))
    with pytest.raises(ValueError, match="must have the same feature size D"):
        fusion.cross_attention(_normal(2, 3, 4), _normal(2, 5, 6))
    with pytest.raises(ValueError, match=r"queries: expected shape \(batch, q_len, D\)"):
        fusion.cross_attention(_normal(3, 4), _normal(2, 5, 4))


# --------------------------------------------------------------------------- layers


def test_fusion_layers_round_trip_through_keras_files(tmp_path):
    objects = keras.Input((4, 8), name="objects")
    words = keras.Input((6, 8), name="words")
    mask = keras.Input((6,), dtype="bool", name="mask")
    vector = keras.layers.GlobalAveragePooling1D()(words)
    tiled = fusion.TileConcat()(objects, vector)  # (B, 4, 16)
    film = fusion.FiLM(16, name="film")(tiled, vector)
    gated = fusion.FiLM(16, mode="gate", name="gate")(film, vector)
    attended = fusion.CrossAttentionFusion(num_heads=2, key_dim=4, output_dim=8)(gated, words, mask)
    concat = fusion.ConcatFusion(12)(attended, words, mask)
    product = fusion.ProductFusion(12)(concat, vector)
    logits_a, logits_b = keras.layers.Dense(5)(product), keras.layers.Dense(5)(vector)
    out = fusion.LateFusion()(logits_a, logits_b)
    model = keras.Model({"objects": objects, "words": words, "mask": mask}, out)
    inputs = {"objects": _normal(3, 4, 8), "words": _normal(3, 6, 8, seed=1),
              "mask": np.array([[True] * 6, [True] * 2 + [False] * 4, [True] * 5 + [False]])}
    loaded = round_trip(model, inputs, tmp_path, rtol=1e-5, atol=1e-5)
    assert isinstance(loaded.get_layer("gate"), fusion.FiLM) and loaded.get_layer("gate").mode == "gate"


def test_cross_attention_layer_returns_weights_and_checks_batch():
    layer = fusion.CrossAttentionFusion(num_heads=2, key_dim=4)
    out, weights = layer(_normal(2, 3, 5), _normal(2, 6, 7), np.ones((2, 6), bool), return_attention_scores=True)
    assert tuple(out.shape) == (2, 3, 8) and tuple(weights.shape) == (2, 2, 3, 6)
    np.testing.assert_allclose(to_numpy(weights).sum(-1), 1.0, rtol=1e-5)
    with pytest.raises(ValueError, match="mismatched batch sizes: queries \\(image side\\) has 2"):
        layer(_normal(2, 3, 5), _normal(4, 6, 7))


def test_film_layer_starts_as_a_residual_and_validates_channels():
    layer = fusion.FiLM(4)
    features = _normal(2, 3, 4)
    assert tuple(layer(features, _normal(2, 6)).shape) == (2, 3, 4)
    with pytest.raises(ValueError, match="axis -1"):
        fusion.FiLM(4)(_normal(2, 3, 5), _normal(2, 6))
    with pytest.raises(ValueError, match="channels"):
        fusion.FiLM(0)


def _relation_inputs(batch=3, k=4, length=6):
    mask = np.arange(length)[None, :] < np.array([6, 2, 5])[:batch, None]
    objectness = np.ones((batch, k, 1), np.float32)
    objectness[:, -1] = 0.0  # the last slot is empty
    return (_normal(batch, k, 14), _normal(batch, length, 8, seed=1), _normal(batch, 5, seed=2), mask, objectness)


def test_relation_fusion_shapes_grounding_and_empty_slots():
    objects, tokens, question, mask, objectness = _relation_inputs()
    layer = fusion.RelationFusion(units=12, key_dim=4)
    fused, grounding = layer(objects, tokens, question, mask, objectness, return_grounding=True)
    assert tuple(fused.shape) == (3, 24) and tuple(grounding.shape) == (3, 4, 6)
    assert np.all(to_numpy(grounding)[1, :, 2:] == 0)  # padded words describe no object
    assert layer.count_params() == (14 + 1) * 4 + (8 + 1) * 4 + (2 * (14 + 6) + 5 + 1) * 12 + (12 + 1) * 12
    changed = objects.copy()
    changed[:, -1] = 100.0  # what an empty slot holds does not matter
    np.testing.assert_allclose(to_numpy(layer(changed, tokens, question, mask, objectness)), to_numpy(fused), rtol=1e-5,
                               atol=1e-5)
    assert tuple(layer(objects, tokens, question).shape) == (3, 24)  # no mask, every slot an object


def test_relation_fusion_equals_its_formula_on_every_pair():
    """The per-object split of g's first layer gives what the Dense layers give on object_pairs."""
    objects, tokens, question, mask, objectness = _relation_inputs()
    layer = fusion.RelationFusion(units=12, key_dim=4)
    fused, grounding = layer(objects, tokens, question, mask, objectness, return_grounding=True)
    pairs = to_numpy(fusion.object_pairs(np.concatenate([objects, to_numpy(grounding)], axis=-1)))  # (3, 4, 4, 2 (14 + 6))
    q = np.broadcast_to(question[:, None, None, :], pairs.shape[:3] + (question.shape[-1],))
    scores = to_numpy(layer.pair_output(layer.pair_hidden(np.concatenate([pairs, q], axis=-1))))  # (3, 4, 4, 12)
    scores = scores * objectness[:, :, None, :] * objectness[:, None, :, :]
    expected = np.concatenate([scores.mean(axis=(1, 2)), scores.max(axis=(1, 2))], axis=-1)
    np.testing.assert_allclose(to_numpy(fused), expected, rtol=1e-5, atol=1e-5)


def test_relation_fusion_validates_inputs():
    objects, tokens, question, mask, objectness = _relation_inputs()
    layer = fusion.RelationFusion(units=8, key_dim=4)
    with pytest.raises(ValueError, match=r"mismatched batch sizes: objects \(image side\) has 3 examples but "
                                         r"question_tokens \(text side\) has 2"):
        layer(objects, tokens[:2], question)
    with pytest.raises(ValueError, match=r"objectness: expected one value per object slot, shape \(batch, 4, 1\)"):
        layer(objects, tokens, question, mask, objectness[:, :3])
    with pytest.raises(TypeError, match="question_mask: expected a boolean mask"):
        layer(objects, tokens, question, mask.astype(np.int32))
    with pytest.raises(ValueError, match=r"question: expected shape \(batch, D_q\)"):
        layer(objects, tokens, tokens)
    with pytest.raises(ValueError, match="units"):
        fusion.RelationFusion(units=0)
    with pytest.raises(ValueError, match="with a known length T"):
        fusion.RelationFusion()(keras.Input((4, 14)), keras.Input((None, 8)), keras.Input((5,)))


def test_relation_layers_round_trip_through_keras_files(tmp_path):
    objects = keras.Input((4, 14), name="objects")
    tokens = keras.Input((6, 8), name="tokens")
    mask = keras.Input((6,), dtype="bool", name="mask")
    question = keras.layers.GlobalAveragePooling1D()(tokens)
    objectness = keras.Input((4, 1), name="objectness")
    centred = detector.CentredPositions(scale=4.0, name="centred")(objects)
    fused = fusion.RelationFusion(units=8, key_dim=4, name="relation")(centred, tokens, question, mask, objectness)
    model = keras.Model({"objects": objects, "tokens": tokens, "mask": mask, "objectness": objectness},
                        keras.layers.Dense(3)(fused))
    inputs = {"objects": _rng().uniform(size=(3, 4, 14)).astype(np.float32), "tokens": _normal(3, 6, 8, seed=1),
              "mask": _relation_inputs()[3], "objectness": _relation_inputs()[4]}
    loaded = round_trip(model, inputs, tmp_path, rtol=1e-5, atol=1e-5)
    assert loaded.get_layer("centred").scale == 4.0
    assert (loaded.get_layer("relation").units, loaded.get_layer("relation").key_dim) == (8, 4)


def test_cross_attention_layer_ignores_padded_context():
    layer = fusion.CrossAttentionFusion(num_heads=2, key_dim=4)
    queries, context = _normal(2, 3, 5), _normal(2, 6, 7, seed=1)
    mask = np.array([[True] * 4 + [False] * 2, [True] * 6])
    out, weights = layer(queries, context, mask, return_attention_scores=True)
    assert np.all(to_numpy(weights)[0, :, :, 4:] == 0)
    changed = context.copy()
    changed[0, 4:] = 1e3  # junk in the padding changes nothing
    np.testing.assert_allclose(to_numpy(layer(queries, changed, mask)), to_numpy(out), rtol=1e-5, atol=1e-5)


def test_product_fusion_layer_normalises_before_the_product():
    layer = fusion.ProductFusion(12)
    out = to_numpy(layer(1e4 * _normal(3, 5), _normal(3, 7, seed=1)))
    assert out.shape == (3, 12) and np.all(np.abs(out) < 1.0) and out.std() > 0.05  # not saturated
    assert layer.count_params() == (5 + 1) * 12 + (7 + 1) * 12 + 4 * 12
    with pytest.raises(ValueError, match="mismatched batch sizes"):
        layer(_normal(3, 5), _normal(2, 7))


def test_product_fusion_learns_with_unbounded_image_features():
    """Image features as a ReLU encoder without normalisation gives them: positive, large,
    offset. The answer is the sign of the latent factor the text names, times the text's
    sign: an image-text interaction. A bare tanh saturates on such features (its gradient
    vanishes, about 60% here); the normalised projection learns it."""
    rng = _rng(3)
    n, d, f = 3072, 4, 32
    latent = rng.normal(size=(n, d)).astype(np.float32)
    image = (500.0 * np.maximum(latent @ rng.normal(size=(d, f)), 0.0) + 300.0).astype(np.float32)
    which, sign = rng.integers(0, d, size=n), rng.choice([-1.0, 1.0], size=n).astype(np.float32)
    text = np.eye(d, dtype=np.float32)[which] * sign[:, None]
    labels = (latent[np.arange(n), which] * sign > 0).astype(np.int32)
    keras.utils.set_random_seed(0)
    image_in, text_in = keras.Input((f,)), keras.Input((d,))
    model = keras.Model([image_in, text_in], keras.layers.Dense(2)(fusion.ProductFusion(16)(image_in, text_in)))
    model.compile(keras.optimizers.Adam(1e-2), keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    model.fit([image[:2048], text[:2048]], labels[:2048], epochs=10, batch_size=64, verbose=0)
    accuracy = model.evaluate([image[2048:], text[2048:]], labels[2048:], verbose=0)[1]
    assert accuracy > 0.9, accuracy


def test_fusion_layers_forward_their_dtype_policy():
    layer = fusion.FiLM(4, dtype="mixed_float16")
    out = layer(_normal(2, 3, 4), _normal(2, 6))
    assert keras.backend.standardize_dtype(out.dtype) == "float16"
    for sub in (layer.gamma, layer.beta, layer.transform, layer.norm):
        assert sub.dtype_policy.name == "mixed_float16"
    product = fusion.ProductFusion(8, dtype="mixed_float16")
    assert keras.backend.standardize_dtype(product(_normal(2, 3), _normal(2, 5)).dtype) == "float16"
    attention = fusion.CrossAttentionFusion(num_heads=2, key_dim=4, dtype="mixed_float16")
    assert attention.attention.dtype_policy.name == "mixed_float16"
    relation = fusion.RelationFusion(units=8, key_dim=4, dtype="mixed_float16")
    objects, tokens, question, mask, objectness = _relation_inputs()
    assert keras.backend.standardize_dtype(relation(objects, tokens, question, mask, objectness).dtype) == "float16"


# Issue #16: bad input to the public functions raises a clear TypeError / ValueError.
_F = np.zeros((2, 5), np.float32)


@pytest.mark.parametrize("call,error,word", [
    (lambda: fusion.require_same_batch((), (2, 3), "a", "b"), ValueError, "batch axis"),
    (lambda: fusion.require_token_mask(np.ones((2, 5), bool), (), "mask", "tokens"), ValueError, "tokens_shape"),
    (lambda: fusion.late_fusion(_F, _F, image_weight=None), TypeError, "image_weight"),
    (lambda: fusion.late_fusion(_F, _F, image_weight="x"), TypeError, "image_weight"),
    (lambda: fusion.product_fusion(_F.astype(str), _F), TypeError, "strings"),
    (lambda: fusion.cross_attention(np.zeros((2, 3, 4), np.float32), np.zeros((2, 5, 4), np.float32),
                                    context_mask="x"), TypeError, "context_mask"),
])
def test_bad_inputs_raise_clear_errors(call, error, word):
    with pytest.raises(error, match=word):
        call()
