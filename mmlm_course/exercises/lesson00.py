"""Checks for lesson 00: reading a ShapeWorld scene as data."""

from __future__ import annotations

import numpy as np

from mmlm_course import shapeworld
from mmlm_course.exercises import Checker, exercise
from mmlm_course.shapeworld import Scene, ShapeObject


def _sample_scenes(count: int = 20) -> list[Scene]:
    rng = np.random.default_rng(1234)
    scenes = [shapeworld.sample_scene(rng, "compositional") for _ in range(count)]
    # Edge case: two objects that differ only in size.
    scenes.append(Scene((ShapeObject("square", "orange", "small", 0.3, 0.3),
                         ShapeObject("square", "orange", "large", 0.7, 0.7))))
    return scenes


@exercise(
    "00.describe_object",
    reference=lambda obj: obj.noun_phrase(),
    mistakes={
        "forgets the article": lambda obj: f"{obj.size} {obj.color} {obj.shape}",
        "colour before size": lambda obj: shapeworld.with_article(f"{obj.color} {obj.size} {obj.shape}"),
        "forgets the size": lambda obj: shapeworld.with_article(f"{obj.color} {obj.shape}"),
    },
)
def _check_describe_object(c: Checker) -> None:
    for scene in _sample_scenes():
        for obj in scene.objects:
            got = c.call(obj)
            c.expect_type("description", got, str)
            expected = obj.noun_phrase()
            if got != expected:
                c.fail(f"description of {obj}", f"expected the words in the order article, size, colour, shape, "
                       f"got {got!r}", "the grammar is 'a SIZE COLOUR SHAPE', with the article first")
    c.passed.append("all objects described")


@exercise(
    "00.count_color",
    reference=lambda scene, color: shapeworld.count_objects(scene, color=color),
    mistakes={
        "counts every object": lambda scene, color: len(scene.objects),
        "answers whether the colour is present": lambda scene, color: any(o.color == color for o in scene.objects),
        "counts the distinct shapes of that colour": lambda scene, color: len({o.shape for o in scene.objects if o.color == color}),
    },
)
def _check_count_color(c: Checker) -> None:
    for scene in _sample_scenes():
        for color in shapeworld.COLOR_NAMES:
            got = c.call(scene, color)
            if isinstance(got, bool) or not isinstance(got, (int, np.integer)):
                c.fail("count", f"expected an int, got {type(got).__name__} {got!r}",
                       "return a number of objects, not True/False or a list")
            expected = shapeworld.count_objects(scene, color=color)
            if got != expected:
                c.fail(f"count of {color} objects in a scene of {len(scene.objects)}",
                       f"expected {expected}, got {got}", "look at each object's .color and count the matches")
    c.passed.append("counts on 21 scenes x 6 colours")
