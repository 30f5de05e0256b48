"""Tests for mmlm_course.quality.retrieval_towers: the retrieval benchmark's relation-binding
towers on a frozen object detector (`ObjectDualEncoder`)."""

import keras
import numpy as np
import pytest

from mmlm_course import detector, retrieval, retrieval_training, shapeworld
from mmlm_course.preprocessing import Tokenizer
from mmlm_course.quality import lesson06
from mmlm_course.quality.retrieval_towers import ObjectDualEncoder, ObjectPairTower, RoleTextTower, bind_roles

RNG = np.random.default_rng(0)
OBJECTS = dict(embed_dim=8, role_dim=3, relation_dim=2, text_dim=16, num_heads=2, text_layers=1)


@pytest.fixture(scope="module")
def data():
    return shapeworld.generate(24, "validation", seed=3)


@pytest.fixture(scope="module")
def tokenizer():
    return Tokenizer.for_shapeworld()


def test_bind_roles_factorises_dot_products():
    a, b, r = RNG.normal(size=(5, 3)), RNG.normal(size=(5, 3)), RNG.normal(size=(5, 2))
    a2, b2, r2 = RNG.normal(size=(5, 3)), RNG.normal(size=(5, 3)), RNG.normal(size=(5, 2))
    bound, bound2 = np.asarray(bind_roles(a, b, r)), np.asarray(bind_roles(a2, b2, r2))
    assert bound.shape == (5, 18)
    np.testing.assert_allclose((bound * bound2).sum(-1), (a * a2).sum(-1) * (b * b2).sum(-1) * (r * r2).sum(-1),
                               rtol=1e-5)
    # broadcasting over leading dimensions: every (i, j) pair of 4 objects at once
    pairs = np.asarray(bind_roles(a[None, :4, None], b[None, None, :4], np.ones((1, 4, 4, 2))))
    assert pairs.shape == (1, 4, 4, 18)
    np.testing.assert_allclose(pairs[0, 1, 2], np.asarray(bind_roles(a[1], b[2], np.ones(2))), rtol=1e-6)


def test_object_pair_tower_reads_where_the_objects_are():
    tower = ObjectPairTower(object_dim=4, role_dim=3, relation_dim=2)
    objects = np.zeros((1, 4, 14), np.float32)
    objects[0, :2, 0], objects[0, :2, -1] = [1.0, 0.0], 1.0  # two objects, the first one red-ish
    objects[0, 0, 11], objects[0, 1, 11] = -1.0, 1.0  # first on the left
    swapped = objects.copy()
    swapped[0, 0, 11], swapped[0, 1, 11] = 1.0, -1.0  # the same objects, places swapped
    out, out_swapped = np.asarray(tower(objects)), np.asarray(tower(swapped))
    assert out.shape == (1, 4 + 18)
    assert not np.allclose(out[:, 4:], out_swapped[:, 4:], atol=1e-4)  # how they are placed: different
    shuffled = objects[:, [1, 3, 0, 2]]  # the order of the slots does not matter
    np.testing.assert_allclose(np.asarray(tower(shuffled)), out, rtol=1e-5, atol=1e-6)
    empty = objects.copy()
    empty[0, 2:, :-1] = 50.0  # what an empty slot (objectness 0) holds does not matter
    np.testing.assert_allclose(np.asarray(tower(empty)), out, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="14"):
        tower(objects[..., :10])


def test_role_text_tower_ignores_padding_and_reads_word_order(tokenizer):
    tower = RoleTextTower(len(tokenizer), 16, text_dim=16, num_heads=2, num_layers=1, object_dim=4, role_dim=3,
                          relation_dim=2)
    captions = ["a red circle is to the left of a blue square", "a blue square is to the left of a red circle"]
    out = np.asarray(tower(tokenizer.encode_batch(captions, 16)))
    assert out.shape == (2, 4 + 18)
    short = np.asarray(tower(tokenizer.encode_batch(captions, 14)))  # less padding, same captions
    np.testing.assert_allclose(short, out, rtol=1e-4, atol=1e-5)
    assert not np.allclose(out[0, 4:], out[1, 4:], atol=1e-4)  # the same words in another order
    with pytest.raises(ValueError, match="ndim"):
        tower(np.ones((2, 3, 4), np.int32))


def test_object_dual_encoder_frozen_detector_round_trip(tmp_path, data, tokenizer):
    model = ObjectDualEncoder(len(tokenizer), **OBJECTS)
    assert isinstance(model, retrieval.DualEncoder)
    model.build()
    token_model = detector.build_object_encoder()[1]
    detector.load_detector(model.object_encoder, token_model)
    assert not model.object_encoder.trainable
    frozen = {id(v) for v in model.object_encoder.weights}
    assert frozen and not frozen & {id(v) for v in model.trainable_variables}  # the detector never trains
    inputs = {"images": data.images[:4], "token_ids": tokenizer.encode_batch(data.captions[:4], 16)}
    logits = np.asarray(model(inputs))
    assert logits.shape == (4, 4)
    assert retrieval.embed_images(model, data.images[:3]).shape == (3, 8 + 18)
    np.testing.assert_allclose(np.linalg.norm(retrieval.embed_texts(model, tokenizer, data.captions[:3]), axis=1),
                               1.0, rtol=1e-5)
    before = [keras.ops.convert_to_numpy(v) for v in model.object_encoder.weights]
    history = retrieval_training.train_dual_encoder(model, tokenizer, data, epochs=1, batch_size=8)
    assert np.isfinite(history["loss"]).all()
    for old, new in zip(before, model.object_encoder.weights):
        np.testing.assert_array_equal(old, keras.ops.convert_to_numpy(new))
    path = tmp_path / "objects.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded, ObjectDualEncoder)
    assert loaded.get_config() == model.get_config() and not loaded.object_encoder.trainable
    np.testing.assert_allclose(np.asarray(loaded(inputs)), np.asarray(model(inputs)), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="64x64"):
        model({"images": data.images[:4, ::2, ::2], "token_ids": inputs["token_ids"]})
    with pytest.raises(TypeError, match="expected an ObjectImageEncoder"):
        detector.load_detector(model.text_tower, token_model)


def test_benchmark_config_builds_the_object_dual_encoder(tokenizer):
    model = ObjectDualEncoder(len(tokenizer), **lesson06.BENCHMARK["model"])
    model.build()
    assert model.get_config()["embed_dim"] == lesson06.BENCHMARK["model"]["embed_dim"]
    assert retrieval.embed_images(model, shapeworld.generate(2, "test").images).shape == (2, 64 + 8 * 8 * 4)
