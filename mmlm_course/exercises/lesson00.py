"""Checks for lesson 00: reading a ShapeWorld scene as data.

The objects and scenes are rebuilt from the check's own tuples for every call, and the
expected answers are computed here from those tuples, so nothing the learner's code
changes (a ShapeWorld constant, an object it was given) can move the target.
"""

from __future__ import annotations

import itertools

import numpy as np

from mmlm_course import shapeworld
from mmlm_course.exercises import Checker, exercise
from mmlm_course.shapeworld import Scene, ShapeObject

_SIZES = tuple(shapeworld.SIZES)
_COLORS = tuple(shapeworld.COLOR_NAMES)
_SHAPES = tuple(shapeworld.SHAPES)

# (shape, colour, size, x, y): every combination of the three attributes, once each.
_EVERY_OBJECT = tuple((shape, color, size, 0.2 + 0.02 * i, 0.8 - 0.02 * i) for i, (size, color, shape)
                      in enumerate(itertools.product(_SIZES, _COLORS, _SHAPES)))


def _sampled_scenes(count: int = 20) -> list[tuple[tuple, ...]]:
    """Scenes as tuples of object fields: sampled ones, then edge cases."""
    rng = np.random.default_rng(1234)
    scenes = [tuple((o.shape, o.color, o.size, o.x, o.y) for o in shapeworld.sample_scene(rng, "compositional").objects)
              for _ in range(count)]
    scenes.append((("square", "orange", "small", 0.3, 0.3), ("square", "orange", "large", 0.7, 0.7)))  # sizes differ
    scenes.append(tuple((shape, "purple", "small", x, 0.5)                                           # one colour
                        for shape, x in zip(_SHAPES + ("circle",), (0.1, 0.35, 0.6, 0.85))))
    scenes.append((("triangle", "yellow", "large", 0.5, 0.5),))                                         # one object
    return scenes


def _scene(fields: tuple[tuple, ...]) -> Scene:
    return Scene(tuple(ShapeObject(*f) for f in fields))


# --------------------------------------------------------------------------- 00.describe_object


def _what_differs(got: str, size: str, color: str, shape: str) -> tuple[str, str]:
    """(what is wrong with ``got``, a hint) for a description that is not 'a SIZE COLOUR SHAPE'."""
    expected = ["a", size, color, shape]
    words = got.split()
    if got != got.strip() or "  " in got:
        return "it has extra spaces", "separate the words with one space each, with nothing before or after"
    if got.lower() == " ".join(expected):
        return "its capital letters differ", "write it in lower case, as the captions do"
    if got.rstrip(".!") == " ".join(expected):
        return "it ends with punctuation", "a noun phrase is part of a caption: no full stop at the end"
    if words == expected[1:]:
        return "the article is missing", "start with the article `a`"
    if len(words) == 4 and words[1:] == expected[1:]:
        return f"it starts with {words[0]!r} instead of the article 'a'", \
            "the article is always `a` here: the size comes right after it"
    if sorted(words) == sorted(expected):
        return "it has the right words in the wrong order", "the order is the article, then size, colour and shape"
    names = (("size", size), ("colour", color), ("shape", shape))
    missing = [f"the {name} {value!r}" for name, value in names if value not in words]
    if missing:
        return f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} missing", \
            "read each attribute from the object (obj.size, obj.color, obj.shape)"
    extra = [word for word in words if word not in expected]
    if extra:
        return f"it has words the object does not have: {extra}", \
            "use only the article `a` and the object's size, colour and shape"
    return f"it has {len(words)} words, not the 4 of 'a SIZE COLOUR SHAPE'", "use each word exactly once"


@exercise(
    "00.describe_object",
    reference=lambda obj: obj.noun_phrase(),
    mistakes={
        "forgets the article": lambda obj: f"{obj.size} {obj.color} {obj.shape}",
        "colour before size": lambda obj: shapeworld.with_article(f"{obj.color} {obj.size} {obj.shape}"),
        "forgets the size": lambda obj: shapeworld.with_article(f"{obj.color} {obj.shape}"),
        "capitalises the article": lambda obj: f"A {obj.size} {obj.color} {obj.shape}",
        "ends with a full stop": lambda obj: f"a {obj.size} {obj.color} {obj.shape}.",
        "'an' before a colour that starts with a vowel":
            lambda obj: f"{'an' if obj.color[0] in 'aeiou' else 'a'} {obj.size} {obj.color} {obj.shape}",
        "always the example phrase": lambda obj: "a large red circle",
        "the shape twice instead of the colour": lambda obj: f"a {obj.size} {obj.shape} {obj.shape}",
        "returns the list of words": lambda obj: ["a", obj.size, obj.color, obj.shape],
    },
)
def _check_describe_object(c: Checker) -> None:
    for shape, color, size, x, y in _EVERY_OBJECT:
        got = c.call(ShapeObject(shape, color, size, x, y))
        what = f"description of the object with size={size!r}, color={color!r}, shape={shape!r}"
        c.expect_type(what, got, str, hint="return the phrase as one string")
        if got != f"a {size} {color} {shape}":
            problem, hint = _what_differs(got, size, color, shape)
            c.fail(what, f"got {got!r}: {problem}", hint)
    c.passed.append(f"all {len(_EVERY_OBJECT)} size, colour and shape combinations described")


# --------------------------------------------------------------------------- 00.count_color


@exercise(
    "00.count_color",
    reference=lambda scene, color: shapeworld.count_objects(scene, color=color),
    mistakes={
        "counts every object": lambda scene, color: len(scene.objects),
        "answers whether the colour is present": lambda scene, color: any(o.color == color for o in scene.objects),
        "counts the distinct shapes of that colour":
            lambda scene, color: len({o.shape for o in scene.objects if o.color == color}),
        "returns the matching objects": lambda scene, color: [o for o in scene.objects if o.color == color],
        "counts the other colours": lambda scene, color: sum(o.color != color for o in scene.objects),
        "returns a float": lambda scene, color: float(sum(o.color == color for o in scene.objects)),
    },
)
def _check_count_color(c: Checker) -> None:
    scenes = _sampled_scenes()
    for fields in scenes:
        for color in _COLORS:
            got = c.call(_scene(fields), color)
            if isinstance(got, np.ndarray) and got.ndim == 0:    # a 0-d tensor (tf.reduce_sum) or array
                got = got[()]
            what = f"count of {color} objects in a scene of {len(fields)} ({', '.join(f[1] for f in fields)})"
            if isinstance(got, (bool, np.bool_)) or not isinstance(got, (int, np.integer)):
                shown = (f"an array of shape {got.shape}" if isinstance(got, np.ndarray)
                         else f"{type(got).__name__} {got!r}")
                c.fail(what, f"expected an int, got {shown}"[:200],
                       "return how many objects have that colour, as an int (not True/False, a float or a list)")
            expected = sum(f[1] == color for f in fields)
            if got != expected:
                c.fail(what, f"expected {expected}, got {got}", "look at each object's .color and count the matches")
    c.passed.append(f"counts on {len(scenes)} scenes x {len(_COLORS)} colours")
