import numpy as np
import pytest

from mmlm_course import shapeworld as sw
from mmlm_course.shapeworld import Scene, ShapeObject


def test_same_seed_same_data_and_splits_differ():
    a, b = sw.generate(60, "train", seed=3), sw.generate(60, "train", seed=3)
    assert np.array_equal(a.images, b.images)
    assert a.captions == b.captions and a.questions == b.questions and a.scenes == b.scenes
    c = sw.generate(60, "test", seed=3)
    assert not np.array_equal(a.images, c.images)
    assert sw.generate(60, "train", seed=4).captions != a.captions


def test_shapes_dtypes_and_image_size():
    data = sw.generate(12, "validation", image_size=32)
    assert data.images.shape == (12, 32, 32, 3) and data.images.dtype == np.uint8
    assert len(data) == 12 == len(data.captions) == len(data.answers) == len(data.question_types)


def test_every_generated_caption_is_true_and_parses():
    data = sw.generate(300, "train")
    assert all(sw.caption_is_true(c, s) for c, s in zip(data.captions, data.scenes))


def test_scenes_are_valid():
    for scene in sw.generate(300, "test").scenes:
        assert 1 <= len(scene.objects) <= sw.MAX_OBJECTS
        for i, a in enumerate(scene.objects):
            assert 0 <= a.x - a.radius and a.x + a.radius <= 1
            for b in scene.objects[i + 1:]:
                assert np.hypot(a.x - b.x, a.y - b.y) > a.radius + b.radius  # no overlap


def test_held_out_combinations_only_in_compositional_split():
    for split in ("train", "validation", "test"):
        data = sw.generate(300, split)
        assert not any((o.color, o.shape) in sw.HELD_OUT for s in data.scenes for o in s.objects)
        assert not any(f"{c} {s}" in q for q in data.questions for c, s in sw.HELD_OUT)
    comp = sw.generate(100, "compositional")
    assert all(any((o.color, o.shape) in sw.HELD_OUT for o in s.objects) for s in comp.scenes)


def test_answers_are_balanced_per_question_type():
    data = sw.generate(1800, "train")
    for qtype in sw.QUESTION_TYPES:
        answers = [a for a, t in zip(data.answers, data.question_types) if t == qtype]
        assert len(answers) == 300
        _, counts = np.unique(answers, return_counts=True)
        assert counts.max() / len(answers) <= 1 / len(counts) + 0.1, (qtype, counts)


def test_answers_are_correct_for_their_scene():
    data = sw.generate(300, "train")
    for q, a, t, scene in zip(data.questions, data.answers, data.question_types, data.scenes):
        if t == "count":
            assert a == sw.NUMBER_WORDS[len(scene.objects)]
        elif t == "exist":
            color, shape = q.removeprefix("is there a ").removeprefix("is there an ").rstrip("?").split()
            assert (a == "yes") == (sw.count_objects(scene, color=color, shape=shape) > 0)


def test_verifier_relations_and_articles():
    scene = Scene((ShapeObject("circle", "red", "large", 0.2, 0.5), ShapeObject("square", "orange", "small", 0.8, 0.5)))
    assert sw.caption_is_true("a large red circle is to the left of an orange square", scene)
    assert not sw.caption_is_true("a large red circle is to the right of an orange square", scene)
    assert not sw.caption_is_true("a circle is above a square", scene)
    assert sw.caption_is_true("there are two objects and there is a small orange square", scene)
    assert not sw.caption_parses("a orange square is below a circle")  # wrong article
    assert not sw.caption_parses("")
    assert not sw.caption_parses("a red circle is near a square")
    assert not sw.caption_is_true("a red circle is to the left of a red circle", scene)  # needs two objects


def test_scene_round_trips_through_json():
    scene = sw.generate(3, "train").scenes[2]
    assert Scene.from_dict(__import__("json").loads(scene.to_json())) == scene


def test_sound_encodes_the_objects():
    scene = Scene((ShapeObject("circle", "red", "large", 0.2, 0.5), ShapeObject("triangle", "blue", "small", 0.8, 0.5)))
    wave = sw.render_sound(scene)
    assert wave.dtype == np.float32 and wave.ndim == 1
    assert np.abs(wave).max() <= 1.0
    expected = (0.05 * 3 + 0.3 + 0.15) * sw.SOUND_SAMPLE_RATE
    assert abs(len(wave) - expected) <= 3
    first = wave[int(0.06 * sw.SOUND_SAMPLE_RATE): int(0.3 * sw.SOUND_SAMPLE_RATE)]
    peak_hz = np.argmax(np.abs(np.fft.rfft(first))) * sw.SOUND_SAMPLE_RATE / len(first)
    assert abs(peak_hz - sw.TONE_HZ["red"]) < 10  # the leftmost object plays first
    with pytest.raises(ValueError, match="sample_rate"):
        sw.render_sound(scene, sample_rate=4000)


def test_bad_arguments_say_what_was_expected():
    with pytest.raises(ValueError, match="Unknown split 'tran'"):
        sw.generate(3, "tran")
    with pytest.raises(ValueError, match="num_examples must be >= 0"):
        sw.generate(-1)
    with pytest.raises(TypeError, match="num_examples must be an int"):
        sw.generate(2.0)
    with pytest.raises(ValueError, match="image_size"):
        sw.generate(2, image_size=8)
    with pytest.raises(ValueError, match="num_objects must be <= 4"):
        sw.sample_scene(np.random.default_rng(0), num_objects=12)
    with pytest.raises(ValueError, match="unknown attribute"):
        sw.count_objects(sw.generate(1).scenes[0], colour="red")


def test_vocabulary_covers_generated_text():
    from mmlm_course.preprocessing import split_words

    vocab = set(sw.vocabulary())
    data = sw.generate(600, "compositional")
    assert {w for text in data.captions + data.questions + data.answers for w in split_words(text)} <= vocab


# --------------------------------------------------------------------------- the fast verifier


def _mixed_captions(data, rng):
    """True captions, captions of other scenes, relations turned around, counts, conjunctions
    and text outside the grammar."""
    swap = {"left": "right", "right": "left", "above": "below", "below": "above"}
    captions = list(data.captions)
    captions += [" ".join(swap.get(w, w) for w in c.split()) for c in data.captions]
    captions += [sw.make_caption(s, rng) for s in data.scenes]
    captions += [f"there are {sw.NUMBER_WORDS[n]} objects" for n in range(5)]
    captions += ["there is a circle", "a circle is above a circle", "a square is below a triangle and there is a "
                 "red circle", "an orange square is to the left of a small object", "not a caption", ""]
    return captions


def test_caption_truth_matrix_equals_caption_is_true_on_random_scenes():
    rng = np.random.default_rng(7)
    for split, seed in (("validation", 3), ("compositional", 5)):
        data = sw.generate(40, split, seed=seed)
        scenes = data.scenes + [Scene((ShapeObject("circle", "red", "small", 0.3, 0.3),)),
                                Scene((ShapeObject("circle", "red", "small", 0.3, 0.3),
                                       ShapeObject("circle", "red", "small", 0.7, 0.3)))]  # ties in y
        captions = _mixed_captions(data, rng)
        got = sw.caption_truth_matrix(captions, scenes)
        expected = np.array([[sw.caption_is_true(c, s) for s in scenes] for c in captions])
        assert got.dtype == bool and got.shape == (len(captions), len(scenes))
        np.testing.assert_array_equal(got, expected)
        assert got[np.arange(40), np.arange(40)].all(), "every caption is true of its own scene"
        assert 0.05 < got.mean() < 0.95  # both answers occur
        assert not got[-2:].any(), "text outside the grammar is false everywhere"


def test_caption_truth_matrix_errors():
    scenes = sw.generate(2, "test").scenes
    with pytest.raises(TypeError, match="list of caption strings"):
        sw.caption_truth_matrix("there is a red circle", scenes)
    with pytest.raises(TypeError, match="Scene"):
        sw.caption_truth_matrix(["there is a red circle"], [np.zeros((64, 64, 3))])
    with pytest.raises(TypeError, match="str"):
        sw.caption_truth_matrix([3], scenes)
    with pytest.raises(ValueError, match="at least one caption"):
        sw.caption_truth_matrix([], scenes)


def test_relation_holds_is_the_rule_of_relations_between():
    a, b = ShapeObject("circle", "red", "small", 0.2, 0.6), ShapeObject("square", "blue", "small", 0.5, 0.5)
    assert sw.relations_between(a, b) == ["to the left of", "below"]
    assert sw.relations_between(a, b, margin=0.2) == ["to the left of"]
    assert sw.relation_holds("above", b.x, b.y, a.x, a.y)
    xs = np.array([0.1, 0.5, 0.9])
    np.testing.assert_array_equal(sw.relation_holds("to the right of", xs, 0.0, 0.5, 0.0), [False, False, True])
    with pytest.raises(ValueError, match="Unknown relation"):
        sw.relation_holds("near", 0.1, 0.1, 0.2, 0.2)


def test_rotate_scene_180_swaps_every_relation():
    scene = Scene((ShapeObject("circle", "red", "large", 0.2, 0.3), ShapeObject("square", "blue", "small", 0.8, 0.7)))
    turned = sw.rotate_scene_180(scene)
    assert [(o.x, o.y) for o in turned.objects] == [(0.8, 0.7), (0.2, 0.3)]
    assert sw.caption_is_true("a red circle is to the left of a blue square", scene)
    assert not sw.caption_is_true("a red circle is to the left of a blue square", turned)
    assert sw.caption_is_true("a red circle is to the right of a blue square", turned)
    assert sw.caption_is_true("a red circle is above a blue square", scene)
    assert sw.caption_is_true("a red circle is below a blue square", turned)
    assert sw.caption_is_true("there is a large red circle and there are two objects", turned)  # attributes kept
    with pytest.raises(TypeError, match="expected a shapeworld.Scene"):
        sw.rotate_scene_180(scene.objects)


def test_rotate_scene_180_on_generated_scenes():
    data = sw.generate(200, "train", seed=2)
    for caption, scene in zip(data.captions, data.scenes):
        turned = sw.rotate_scene_180(scene)
        assert sw.rotate_scene_180(turned) == scene  # two half turns: the scene again
        if caption.startswith("there is"):
            assert sw.caption_is_true(caption, turned)
            continue
        relation = next(r for r in sw.RELATIONS if f" {r} " in caption)
        assert sw.caption_is_true(caption.replace(relation, sw.OPPOSITE[relation]), turned)


def test_rotate_scene_180_is_the_image_turned_by_180_degrees():
    # circles and squares are symmetric under a half turn, so rendering the turned scene gives
    # the turned image (triangles would be drawn upright instead of upside down)
    scene = Scene((ShapeObject("circle", "red", "large", 0.25, 0.3), ShapeObject("square", "blue", "small", 0.7, 0.75)))
    turned_image = sw.render_image(scene)[::-1, ::-1]
    assert np.mean(sw.render_image(sw.rotate_scene_180(scene)) == turned_image) > 0.99
    assert np.mean(sw.render_image(scene) == turned_image) < 0.95


# Issue #16: bad input to the public functions raises a clear TypeError / ValueError.
_SCENE = Scene((ShapeObject("circle", "red", "large", 0.2, 0.3), ShapeObject("square", "blue", "small", 0.8, 0.7)))


@pytest.mark.parametrize("call,error,word", [
    (lambda: sw.sample_scene(None), TypeError, "Generator"),
    (lambda: sw.render_image(None), TypeError, "shapeworld.Scene"),
    (lambda: sw.render_image(_SCENE, image_size=0), ValueError, "image_size"),
    (lambda: sw.render_image(_SCENE, image_size=10**9), ValueError, "image_size"),
    (lambda: sw.render_image(_SCENE, rng="x"), TypeError, "Generator"),
    (lambda: sw.render_sound("x"), TypeError, "shapeworld.Scene"),
    (lambda: sw.render_sound(_SCENE, sample_rate=10**9), ValueError, "sample_rate"),
    (lambda: sw.with_article(""), ValueError, "non-empty"),
    (lambda: sw.with_article(None), TypeError, "str"),
    (lambda: sw.relation_holds("above", None, 0.2, 0.5, 0.5), TypeError, "a_x"),
    (lambda: sw.relation_holds("above", 0.1, float("nan"), 0.5, 0.5), ValueError, "finite"),
    (lambda: sw.relation_holds("above", 0.1, 0.2, 0.5, 0.5, margin=-1.0), ValueError, "margin"),
    (lambda: sw.relations_between(None, _SCENE.objects[0]), TypeError, "ShapeObject"),
    (lambda: sw.make_caption(_SCENE, None), TypeError, "Generator"),
    (lambda: sw.make_caption(_SCENE, np.random.default_rng(0), relations=[5]), ValueError, "relations"),
    (lambda: sw.make_caption(_SCENE, np.random.default_rng(0), relation_probability=1.5), ValueError,
     "relation_probability"),
    (lambda: sw.count_objects(_SCENE, color="no-such-colour"), ValueError, "color"),
    (lambda: sw.count_objects(None, color="red"), TypeError, "shapeworld.Scene"),
    (lambda: sw.make_question(5, "count", np.random.default_rng(0)), TypeError, "shapeworld.Scene"),
    (lambda: sw.caption_is_true("there is a red circle", None), TypeError, "shapeworld.Scene"),
    (lambda: sw.generate(10**9), ValueError, "GiB"),
    (lambda: sw.generate(2, seed=-1), ValueError, "seed"),
    (lambda: sw.generate(2, seed="x"), TypeError, "seed"),
])
def test_bad_inputs_raise_clear_errors(call, error, word):
    with pytest.raises(error, match=word):
        call()
