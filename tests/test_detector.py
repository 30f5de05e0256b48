"""Unit tests for mmlm_course.detector (lesson 04): the frozen object detector."""

import numpy as np
import pytest

import mmlm_course

mmlm_course.setup_notebook(seed=0)

import keras  # noqa: E402

from mmlm_course import detector, shapeworld  # noqa: E402
from mmlm_course.shapeworld import Scene, ShapeObject  # noqa: E402
from keras_helpers import to_numpy  # noqa: E402


def _scene():
    return Scene((ShapeObject("circle", "red", "small", 0.30, 0.20),  # cell (col 2, row 1)
                  ShapeObject("square", "blue", "large", 0.75, 0.50)))  # centre on a cell border: x=6.0, y=4.0


def test_object_grid_targets_marks_object_cells():
    targets = detector.object_grid_targets([_scene()])
    assert targets["object"].shape == (1, 64, 1) and targets["offset"].shape == (1, 64, 2)
    red = 1 * 8 + 2
    assert targets["object"][0, red, 0] == 1 and targets["color"][0, red] == shapeworld.COLOR_NAMES.index("red")
    np.testing.assert_allclose(targets["offset"][0, red], [0.30 * 8 - 2.5, 0.20 * 8 - 1.5], atol=1e-5)
    # The blue square sits on the corner of four cells: all four hold it.
    corner = [3 * 8 + 5, 3 * 8 + 6, 4 * 8 + 5, 4 * 8 + 6]
    assert targets["object"][0, corner, 0].tolist() == [1, 1, 1, 1]
    assert set(targets["shape"][0, corner].tolist()) == {shapeworld.SHAPES.index("square")}
    assert targets["object"].sum() == 5 and np.array_equal(targets["weight"], targets["object"][..., 0])
    with pytest.raises(TypeError, match="shapeworld.Scene"):
        detector.object_grid_targets(["not a scene"])


def _perfect_predictions(scenes):
    """Logits an ideal grid model would output for these scenes."""
    targets = detector.object_grid_targets(scenes)
    big = 20.0
    return {"object": np.where(targets["object"] > 0, big, -big).astype(np.float32),
            "color": (big * np.eye(6)[targets["color"]]).astype(np.float32),
            "shape": (big * np.eye(3)[targets["shape"]]).astype(np.float32),
            "size": (big * np.eye(2)[targets["size"]]).astype(np.float32),
            "offset": targets["offset"]}


def test_object_tokens_merge_the_cells_of_one_object():
    tokens = to_numpy(detector.ObjectTokens(num_objects=4)(_perfect_predictions([_scene()])))
    assert tokens.shape == (1, 4, len(detector.OBJECT_FEATURES))
    objectness = tokens[0, :, -1]
    assert (objectness > 0.5).sum() == 2, objectness  # four cells of the square count once
    found = {(detector.OBJECT_FEATURES[int(np.argmax(t[:6]))], round(float(t[11]), 3), round(float(t[12]), 3))
             for t in tokens[0] if t[-1] > 0.5}
    assert found == {("p(red)", 0.3, 0.2), ("p(blue)", 0.75, 0.5)}


def test_object_tokens_validate_arguments():
    with pytest.raises(ValueError, match="grid cells"):
        detector.ObjectTokens(num_objects=5, grid=2)
    with pytest.raises(ValueError, match="nms_radius"):
        detector.ObjectTokens(nms_radius=1.5)


def test_object_encoder_trains_and_outputs_tokens():
    data = shapeworld.generate(64, "train", seed=0)
    token_model, history = detector.pretrain_object_encoder(data, epochs=1, batch_size=32)
    assert token_model.trainable is False and "loss" in history.history
    tokens = token_model.predict(data.images[:5], verbose=0)
    assert tokens.shape == (5, shapeworld.MAX_OBJECTS, len(detector.OBJECT_FEATURES))
    assert np.all((tokens >= 0) & (tokens <= 1))
    with pytest.raises(TypeError, match="ShapeWorldData"):
        detector.pretrain_object_encoder(data.images)


def test_centred_positions_rescales_only_the_centre():
    objects = np.random.default_rng(0).uniform(size=(2, 4, 14)).astype(np.float32)
    centred = to_numpy(detector.CentredPositions()(objects))
    x = detector.OBJECT_FEATURES.index("x")
    np.testing.assert_allclose(centred[..., x:x + 2], detector.POSITION_SCALE * (objects[..., x:x + 2] - 0.5),
                               rtol=1e-6)
    np.testing.assert_array_equal(np.delete(centred, [x, x + 1], -1), np.delete(objects, [x, x + 1], -1))
    with pytest.raises(ValueError, match="axis -1"):
        detector.CentredPositions()(np.zeros((2, 4, 8), np.float32))
    with pytest.raises(ValueError, match="scale"):
        detector.CentredPositions(scale=0)


def test_load_detector_copies_the_token_model_into_the_vision_tower():
    _, token_model = detector.build_object_encoder()
    images = shapeworld.generate(3, "test", seed=0).images
    encoder = detector.ObjectImageEncoder(name="vision")
    detector.load_detector(encoder, token_model)
    tokens = to_numpy(encoder(images))
    expected = to_numpy(detector.CentredPositions()(token_model.predict(images, verbose=0)))
    np.testing.assert_allclose(tokens, expected, rtol=1e-5, atol=1e-5)
    # float pixels in [0, 1] read the same as uint8
    np.testing.assert_allclose(to_numpy(encoder(images.astype(np.float32) / 255.0)), tokens, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="token_model"):
        detector.load_detector(encoder, keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)]))
    with pytest.raises(TypeError, match="ObjectImageEncoder"):
        detector.load_detector(token_model, token_model)


def test_object_image_encoder_round_trips_and_forwards_its_dtype_policy(tmp_path):
    images = keras.Input((64, 64, 3), dtype="uint8")
    model = keras.Model(images, detector.ObjectImageEncoder(name="vision")(images))
    batch = shapeworld.generate(2, "test", seed=1).images
    path = tmp_path / "vision.keras"
    model.save(path)
    np.testing.assert_allclose(to_numpy(keras.saving.load_model(path)(batch)), to_numpy(model(batch)), rtol=1e-5, atol=1e-5)
    encoder = detector.ObjectImageEncoder(dtype="mixed_float16")
    assert encoder.centred.dtype_policy.name == "mixed_float16"
    assert all(layer.dtype_policy.name == "mixed_float16" for layer in encoder.detector.layers[1:])


def test_ink_channel_is_colour_blind():
    """Every ShapeWorld colour is the same full ink (a silhouette), the background none."""
    pixels = np.array([[list(rgb) for rgb in shapeworld.COLORS.values()] + [[shapeworld.BACKGROUND] * 3]], np.uint8)
    ink = to_numpy(detector.InkChannel()(pixels[None]))[0, 0, :, 0]  # (7,)
    assert ink[:-1].tolist() == [1.0] * len(shapeworld.COLORS) and ink[-1] <= 0.1, ink
    noisy = np.clip(pixels.astype(int) + np.array([12, -12, 12]), 0, 255).astype(np.uint8)  # the worst pixel noise
    assert to_numpy(detector.InkChannel()(noisy[None]))[0, 0, :-1, 0].min() == 1.0
    assert detector.InkChannel().compute_output_shape((2, 64, 64, 3)) == (2, 64, 64, 1)


def test_factorised_streams_keep_colour_and_shape_apart():
    """In the default detector the colour head cannot see shape: its inputs are 1x1
    convolutions, so an object's colour logits do not depend on the pixels around it; the
    other heads read the colour-blind ink channel only."""
    grid_model, _ = detector.build_object_encoder()
    assert {layer.name for layer in grid_model.layers} >= {"ink", "colour_pixels", "colour_cells"}
    scene = Scene((ShapeObject("circle", "red", "large", 0.3, 0.3),))
    red = shapeworld.render_image(scene, 64)
    blue = shapeworld.render_image(Scene((ShapeObject("circle", "blue", "large", 0.3, 0.3),)), 64)
    # the shape/size/object heads see the same ink for a red and a blue circle
    out_red, out_blue = grid_model.predict(np.stack([red, blue]), verbose=0)["shape"]
    np.testing.assert_allclose(out_red, out_blue, atol=0.05)
    with pytest.raises(ValueError, match="streams"):
        detector.build_object_encoder(streams="separate")
    assert "ink" not in {layer.name for layer in detector.build_object_encoder(streams="shared")[0].layers}


def test_attribute_accuracy_counts_per_colour_shape_pair():
    scenes = [_scene()]
    predictions = _perfect_predictions(scenes)
    tokens = to_numpy(detector.ObjectTokens(num_objects=4)(predictions))

    class Fixed:
        def __call__(self, images, training=False):
            return tokens

    data = shapeworld.ShapeWorldData(np.zeros((1, 64, 64, 3), np.uint8), scenes, ["c"], ["q"], ["a"], ["t"],
                                     "test", 0)
    table = detector.attribute_accuracy(Fixed(), data)
    assert table == {("blue", "square"): {"color": 1.0, "shape": 1.0, "objects": 1},
                     ("red", "circle"): {"color": 1.0, "shape": 1.0, "objects": 1}}
    wrong = tokens.copy()
    wrong[0, :, :6] = wrong[0, :, :6][:, ::-1]  # every colour answer now wrong

    class Wrong(Fixed):
        def __call__(self, images, training=False):
            return wrong
    assert detector.attribute_accuracy(Wrong(), data)[("red", "circle")] == {"color": 0.0, "shape": 1.0, "objects": 1}
    empty = tokens.copy()
    empty[..., -1] = 0.0  # nothing detected: both attributes count as wrong

    class Empty(Fixed):
        def __call__(self, images, training=False):
            return empty
    assert detector.attribute_accuracy(Empty(), data)[("red", "circle")] == {"color": 0.0, "shape": 0.0, "objects": 1}
    with pytest.raises(TypeError, match="ShapeWorldData"):
        detector.attribute_accuracy(Fixed(), scenes)


def test_recolour_keeps_the_layout_and_shows_only_the_allowed_pairs():
    """The diversity ablation's data (quality task `detector_diversity`)."""
    from mmlm_course.quality.lesson10 import DIVERSITY, recolour

    data = shapeworld.generate(40, "train", seed=0)
    for pairs, colours in DIVERSITY.items():
        assert len({(c, s) for s, cs in colours.items() for c in cs}) == pairs
        assert not any(c in colours[s] for c, s in shapeworld.HELD_OUT)   # never a held-out pair
        narrow = recolour(data, colours, seed=0)
        assert narrow.images.shape == data.images.shape
        for old, new in zip(data.scenes, narrow.scenes):
            assert [(o.shape, o.size, o.x, o.y) for o in old.objects] == [(o.shape, o.size, o.x, o.y) for o in new.objects]
            assert all(o.color in colours[o.shape] for o in new.objects)


# Issue #16: a huge grid used to try to allocate exabytes.
@pytest.mark.parametrize("call", [
    lambda: detector.object_grid_targets(shapeworld.generate(2).scenes, grid=10**9),
    lambda: detector.ObjectTokens(grid=10**9),
])
def test_huge_grid_raises_a_clear_error(call):
    with pytest.raises(ValueError, match="grid"):
        call()
