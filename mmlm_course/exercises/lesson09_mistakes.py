"""Typical wrong answers for the checks of lesson 09 (`lesson09`): CTC decoding and the sound
verifier. Mistakes may use the package freely; the checks themselves never do."""

from __future__ import annotations

import itertools

import numpy as np

from mmlm_course import audio_lm, shapeworld

# --------------------------------------------------------------------------- 09.ctc_greedy_decode


def drop_blanks_then_merge(ids, blank=0):
    return [int(label) for label, _ in itertools.groupby(x for x in np.asarray(ids).tolist() if x != blank)]


def merge_keeping_blanks(ids, blank=0):
    return [int(label) for label, _ in itertools.groupby(np.asarray(ids).tolist())]


def skips_first_frame(ids, blank=0):
    ids = np.asarray(ids).tolist()
    return [ids[i] for i in range(1, len(ids)) if ids[i] != ids[i - 1] and ids[i] != blank]


def first_compared_with_last(ids, blank=0):
    ids = np.asarray(ids).tolist()
    return [ids[i] for i in range(len(ids)) if ids[i] != ids[i - 1] and ids[i] != blank]


def previous_zero(ids, blank=0):
    out, previous = [], 0
    for label in np.asarray(ids).tolist():
        if label != previous and label != blank:
            out.append(label)
        previous = label
    return out


# --------------------------------------------------------------------------- 09.caption_is_true_of_sound


def only_first_statement(caption, scene):
    try:
        statements = shapeworld.parse_caption(caption)
    except shapeworld.CaptionParseError:
        return False
    first = statements[0]
    audible = first[0] != "relation" or first[2] in audio_lm.SOUND_RELATIONS
    return audible and shapeworld.caption_is_true(caption, scene)


def mentions_left_or_right(caption, scene):
    if "to the left of" in caption or "to the right of" in caption:
        return shapeworld.caption_is_true(caption, scene)
    if "above" in caption or "below" in caption:
        return False
    return shapeworld.caption_is_true(caption, scene)


def statements_allowed(caption, scene, allowed):
    try:
        statements = shapeworld.parse_caption(caption)
    except shapeworld.CaptionParseError:
        return False
    return all(s[0] != "relation" or s[2] in allowed for s in statements) and shapeworld.caption_is_true(caption, scene)


def parse_error_escapes(caption, scene):
    statements = shapeworld.parse_caption(caption)
    return all(s[0] != "relation" or s[2] in audio_lm.SOUND_RELATIONS for s in statements) and \
        shapeworld.caption_is_true(caption, scene)


def ignores_the_scene(caption, scene):
    try:
        statements = shapeworld.parse_caption(caption)
    except shapeworld.CaptionParseError:
        return False
    return all(s[0] != "relation" or s[2] in audio_lm.SOUND_RELATIONS for s in statements)


def verifier_with(left_of, at_least: bool = False):
    """A verifier written by hand whose "a is to the left of b" is ``left_of(scene, a, b)`` (and whose "there
    are N objects" holds for N or more objects when ``at_least``)."""
    def fits(obj, attributes):
        return all(getattr(obj, key) == value for key, value in attributes.items())

    def holds(statement, scene):
        if statement[0] == "exists":
            return any(fits(o, statement[1]) for o in scene.objects)
        if statement[0] == "count":
            return len(scene.objects) >= statement[1] if at_least else len(scene.objects) == statement[1]
        _, first, relation, second = statement
        if relation not in audio_lm.SOUND_RELATIONS:
            return False
        before = (lambda a, b: left_of(scene, a, b)) if relation == "to the left of" else \
            (lambda a, b: left_of(scene, b, a))
        return any(before(a, b) for a in scene.objects if fits(a, first)
                   for b in scene.objects if b is not a and fits(b, second))

    def verify(caption, scene):
        try:
            statements = shapeworld.parse_caption(caption)
        except shapeworld.CaptionParseError:
            return False
        return all(holds(s, scene) for s in statements)
    return verify


def _played_order(scene):
    return sorted(range(len(scene.objects)), key=lambda i: scene.objects[i].x)


LISTED_ORDER = verifier_with(lambda scene, a, b: scene.objects.index(a) < scene.objects.index(b))
TIES_COUNT = verifier_with(lambda scene, a, b: a.x <= b.x)
WITH_MARGIN = verifier_with(lambda scene, a, b: a.x < b.x - shapeworld.RELATION_MARGIN)
LEFT_EDGES = verifier_with(lambda scene, a, b: a.x - a.radius < b.x - b.radius)
AT_LEAST_N = verifier_with(lambda scene, a, b: a.x < b.x, at_least=True)
PLAYED_ORDER = verifier_with(lambda scene, a, b: _played_order(scene).index(scene.objects.index(a))
                             < _played_order(scene).index(scene.objects.index(b)))
