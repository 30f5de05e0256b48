"""ShapeWorld: the course's embedded, synthetic image-text-audio data.

A *scene* holds 1 to 4 non-overlapping objects, each with a shape, a colour, a size and a
position. From a scene the generator renders an image, a caption from a small grammar, a
question / answer pair, and a sound. Because the scene is kept as data, any text a model
generates can be parsed and *verified* against it (`caption_is_true`).

Everything is deterministic from ``(split, seed)``: ``generate(1000, "train", seed=0)``
returns the same arrays on every machine. No download is ever needed.

Splits: ``train``, ``validation`` and ``test`` never contain the held-out colour-shape
combinations in `HELD_OUT` (no red triangles, blue circles or green squares);
``compositional`` scenes each contain at least one of them, so a model trained on
``train`` can be tested on combinations it has never seen.

Coordinates: ``x`` grows to the right and ``y`` grows downwards, both in [0, 1].
"""

from __future__ import annotations

import dataclasses
import functools
import json
from typing import Callable, Iterable, Sequence

import numpy as np

from mmlm_course.validation import (require_array_budget, require_choice, require_finite, require_float,
                                    require_instance, require_int, require_relations, require_rng, require_scene,
                                    require_str)

SHAPES = ("circle", "square", "triangle")
COLORS = {"red": (220, 40, 40), "green": (40, 160, 60), "blue": (40, 80, 220),   # name -> RGB
          "yellow": (230, 200, 20), "purple": (140, 60, 190), "orange": (245, 130, 20)}
COLOR_NAMES = tuple(COLORS)
SIZES = ("small", "large")
ATTRIBUTES = {"color": COLOR_NAMES, "shape": SHAPES, "size": SIZES}  # attribute -> its values
SIZE_RADIUS = {"small": 0.09, "large": 0.15}  # fraction of the image side
RELATIONS = ("to the left of", "to the right of", "above", "below")
OPPOSITE = {"to the left of": "to the right of", "to the right of": "to the left of",
            "above": "below", "below": "above"}
NUMBER_WORDS = ("zero", "one", "two", "three", "four")
QUESTION_TYPES = ("color", "shape", "size", "count", "exist", "relation")
HELD_OUT = (("red", "triangle"), ("blue", "circle"), ("green", "square"))
SPLITS = ("train", "validation", "test", "compositional")
MAX_OBJECTS = 4
BACKGROUND = 235
NOISE = 12  # pixel noise is uniform in [-NOISE, NOISE]
RELATION_MARGIN = 0.08  # a relation is only *stated* when the centres differ by this much
RELATION_CAPTION_PROBABILITY = 0.75  # share of captions that state a relation, where the scene has a clear one
SOUND_SAMPLE_RATE = 16_000


@dataclasses.dataclass(frozen=True)
class ShapeObject:
    """One object of a scene. ``x``, ``y``: centre in [0, 1] (y grows downwards)."""

    shape: str
    color: str
    size: str
    x: float
    y: float

    @property
    def radius(self) -> float:
        return SIZE_RADIUS[self.size]

    def describe(self) -> str:
        """The full description without article, e.g. ``"large red circle"``."""
        return f"{self.size} {self.color} {self.shape}"

    def noun_phrase(self) -> str:
        """The description with its article, e.g. ``"an orange square"``."""
        return with_article(self.describe())


@dataclasses.dataclass(frozen=True)
class Scene:
    """A list of objects: the ground truth that images, text and sounds are rendered from."""

    objects: tuple[ShapeObject, ...]

    def to_dict(self) -> dict:
        return {"objects": [dataclasses.asdict(o) for o in self.objects]}

    @classmethod
    def from_dict(cls, data: dict) -> "Scene":
        return cls(tuple(ShapeObject(**o) for o in data["objects"]))

    def to_json(self) -> str:
        return json.dumps(self.to_dict())


# --------------------------------------------------------------------------- scenes


def _allowed_for_split(split: str) -> Callable[[str, str], bool]:
    if split == "compositional":
        return lambda color, shape: True
    return lambda color, shape: (color, shape) not in HELD_OUT


def sample_scene(rng: np.random.Generator, split: str = "train",
                 num_objects: int | None = None) -> Scene:
    """Sample a random scene of 1-4 non-overlapping objects valid for ``split``."""
    _check_split(split), require_rng(rng)
    if num_objects is not None:                 # more would not fit without overlap: the loop would never end
        num_objects = require_int(num_objects, "num_objects", 1, MAX_OBJECTS)
    allowed = _allowed_for_split(split)
    while True:
        n = int(rng.integers(1, MAX_OBJECTS + 1)) if num_objects is None else num_objects
        objects: list[ShapeObject] = []
        for _ in range(n):
            placed = _place_object(rng, objects, allowed)
            if placed is None:
                break
            objects.append(placed)
        if len(objects) < n:
            continue
        if split == "compositional" and not any((o.color, o.shape) in HELD_OUT for o in objects):
            # Force one held-out combination so every compositional scene tests one.
            color, shape = HELD_OUT[int(rng.integers(len(HELD_OUT)))]
            objects[0] = dataclasses.replace(objects[0], color=color, shape=shape)
        return Scene(tuple(objects))


def _place_object(rng, others, allowed) -> ShapeObject | None:
    while True:
        color = COLOR_NAMES[int(rng.integers(len(COLOR_NAMES)))]
        shape = SHAPES[int(rng.integers(len(SHAPES)))]
        if allowed(color, shape):
            break
    size = SIZES[int(rng.integers(len(SIZES)))]
    radius = SIZE_RADIUS[size]
    for _ in range(50):
        x, y = rng.uniform(radius + 0.02, 1 - radius - 0.02, size=2)
        if all(np.hypot(x - o.x, y - o.y) > radius + o.radius + 0.04 for o in others):
            return ShapeObject(shape, color, size, round(float(x), 4), round(float(y), 4))
    return None


def rotate_scene_180(scene: Scene) -> Scene:
    """The scene an image rotated by 180 degrees about its centre shows: every object
    centre (x, y) moves to (1 - x, 1 - y), rounded to 4 decimals like sampled positions.

    Every relation turns into its `OPPOSITE`: "a circle is to the left of a square" is
    false of the rotated scene and "a circle is to the right of a square" true. (Shapes are
    kept as they are: a rotated image shows its triangles upside down, the re-rendered
    rotated scene draws them upright.) Rotating twice gives the scene back.
    """
    return Scene(tuple(dataclasses.replace(o, x=round(1.0 - o.x, 4), y=round(1.0 - o.y, 4))
                       for o in require_scene(scene).objects))


# --------------------------------------------------------------------------- images


def render_image(scene: Scene, image_size: int = 64, rng: np.random.Generator | None = None) -> np.ndarray:
    """Draw a scene. Returns uint8 array of shape (image_size, image_size, 3).

    With ``rng`` given, uniform pixel noise in [-NOISE, NOISE] is added.
    """
    require_scene(scene)
    image_size, rng = require_int(image_size, "image_size", 1, 4096), require_rng(rng, optional=True)
    canvas = np.full((image_size, image_size, 3), BACKGROUND, dtype=np.int16)
    for obj in scene.objects:
        _draw(canvas, obj)
    if rng is not None:
        canvas += rng.integers(-NOISE, NOISE + 1, size=canvas.shape, dtype=np.int16)
    return np.clip(canvas, 0, 255).astype(np.uint8)


def _draw(canvas: np.ndarray, obj: ShapeObject) -> None:
    side = canvas.shape[0]
    r = obj.radius * side
    cx, cy = obj.x * side, obj.y * side
    x0, x1 = max(int(cx - r), 0), min(int(np.ceil(cx + r)) + 1, side)
    y0, y1 = max(int(cy - r), 0), min(int(np.ceil(cy + r)) + 1, side)
    dy, dx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    dx, dy = dx + 0.5 - cx, dy + 0.5 - cy  # pixel centres, relative to the object centre
    if obj.shape == "circle":
        mask = dx**2 + dy**2 <= r**2
    elif obj.shape == "square":
        mask = (np.abs(dx) <= 0.8 * r) & (np.abs(dy) <= 0.8 * r)
    else:  # triangle pointing up: apex (0, -r), base at dy = 0.75 r
        mask = (dy <= 0.75 * r) & (np.abs(dx) <= (dy + r) / 1.75)
    canvas[y0:y1, x0:x1][mask] = COLORS[obj.color]


# --------------------------------------------------------------------------- sounds


def render_sound(scene: Scene, sample_rate: int = SOUND_SAMPLE_RATE) -> np.ndarray:
    """The scene as sound: float32 array of shape (num_samples,), values in [-1, 1].
    Objects play one after the other from left to right. Colour sets the pitch (`TONE_HZ`), shape
    the timbre (circle: pure sine; square: odd harmonics; triangle: all harmonics), size the
    duration (small 0.15 s, large 0.3 s). 50 ms of silence separates the tones.
    """
    if require_float(sample_rate, "sample_rate", high=384_000) < 2 * max(TONE_HZ.values()) * 6:
        raise ValueError(f"sample_rate must be at least {2 * max(TONE_HZ.values()) * 6} Hz so the "
                         f"highest harmonic stays below Nyquist; got {sample_rate}.")
    gap = np.zeros(int(0.05 * sample_rate), np.float32)
    pieces = [gap]
    for obj in sorted(require_scene(scene).objects, key=lambda o: o.x):
        pieces += [_tone(obj, sample_rate), gap]
    return np.concatenate(pieces)


TONE_HZ = {"red": 262.0, "orange": 330.0, "yellow": 392.0, "green": 440.0, "blue": 523.0, "purple": 659.0}
TIMBRE_HARMONICS = {  # harmonic number -> amplitude
    "circle": {1: 1.0},
    "square": {1: 1.0, 3: 1 / 3, 5: 1 / 5},
    "triangle": {1: 1.0, 2: 1 / 2, 3: 1 / 3, 4: 1 / 4, 5: 1 / 5, 6: 1 / 6},
}
TONE_SECONDS = {"small": 0.15, "large": 0.3}


def _tone(obj: ShapeObject, sample_rate: int) -> np.ndarray:
    t = np.arange(int(TONE_SECONDS[obj.size] * sample_rate)) / sample_rate
    harmonics = TIMBRE_HARMONICS[obj.shape]
    wave = sum(a * np.sin(2 * np.pi * k * TONE_HZ[obj.color] * t) for k, a in harmonics.items())
    wave = wave / sum(harmonics.values())
    fade = np.minimum(1.0, np.minimum(t, t[-1] - t) / 0.01)  # 10 ms fade in and out
    return (0.8 * wave * fade).astype(np.float32)


# --------------------------------------------------------------------------- text


def with_article(phrase: str) -> str:
    """Prefix 'a' or 'an': 'red circle' -> 'a red circle', 'orange square' -> 'an orange square'."""
    return ("an " if require_str(phrase, "phrase")[0] in "aeiou" else "a ") + phrase


def relation_holds(relation: str, a_x, a_y, b_x, b_y, margin: float = 0.0):
    """Does an object centred at (a_x, a_y) stand in ``relation`` to one at (b_x, b_y)?

    The one rule of the relations: they compare centres (x grows to the right, y
    downwards), which must differ by more than ``margin``. Works on floats (-> bool) and,
    elementwise with broadcasting, on NumPy arrays (-> bool array).
    """
    for value, name in ((a_x, "a_x"), (a_y, "a_y"), (b_x, "b_x"), (b_y, "b_y")):
        require_finite(value, name)
    return _relation_holds(relation, a_x, a_y, b_x, b_y, require_float(margin, "margin", low=0.0))


def _relation_holds(relation, a_x, a_y, b_x, b_y, margin):
    if relation == "to the left of":
        return a_x < b_x - margin
    if relation == "to the right of":
        return a_x > b_x + margin
    if relation == "above":
        return a_y < b_y - margin
    if relation == "below":
        return a_y > b_y + margin
    raise ValueError(f"Unknown relation {relation!r}; expected one of {RELATIONS}.")


def relations_between(a: ShapeObject, b: ShapeObject, margin: float = 0.0) -> list[str]:
    """The relations ``a REL b`` that hold, with centres more than ``margin`` apart."""
    a, b = (require_instance(o, ShapeObject, n, "take one from scene.objects") for o, n in ((a, "a"), (b, "b")))
    margin = require_float(margin, "margin", low=0.0)
    return [relation for relation in RELATIONS if _relation_holds(relation, a.x, a.y, b.x, b.y, margin)]


def make_caption(scene: Scene, rng: np.random.Generator, relations: Sequence[str] = RELATIONS,
                 relation_probability: float = RELATION_CAPTION_PROBABILITY) -> str:
    """One true caption: with probability ``relation_probability`` a spatial relation (one of
    ``relations``) between two objects when the scene allows a clear one, otherwise an
    existence statement. Example: ``"a large red circle is to the left of a small blue square"``."""
    require_scene(scene), require_rng(rng), require_relations(relations)
    require_float(relation_probability, "relation_probability", 0.0, 1.0)
    pairs = [(a, b) for a in scene.objects for b in scene.objects if a is not b]
    clear = [(a, b, rel) for a, b in pairs for rel in relations_between(a, b, RELATION_MARGIN) if rel in relations]
    if clear and rng.random() < relation_probability:
        a, b, rel = clear[int(rng.integers(len(clear)))]
        return f"{with_article(a.describe())} is {rel} {with_article(b.describe())}"
    obj = scene.objects[int(rng.integers(len(scene.objects)))]
    return f"there is {with_article(obj.describe())}"


def _matches(obj: ShapeObject, attributes: dict) -> bool:
    return all(getattr(obj, key) == value for key, value in attributes.items())


def count_objects(scene: Scene, **attributes) -> int:
    """How many objects match every given attribute, e.g. ``count_objects(scene, color="red")``."""
    if unknown := set(attributes) - {"shape", "color", "size"}:
        raise ValueError(f"count_objects: unknown attribute(s) {sorted(unknown)}; use shape, color or size.")
    for key, value in attributes.items():
        require_choice(value, ATTRIBUTES[key], key)
    return sum(_matches(o, attributes) for o in require_scene(scene).objects)


def _unique_reference(scene: Scene, obj: ShapeObject, keys_options: Iterable[tuple[str, ...]]) -> str | None:
    """The shortest description of ``obj`` from ``keys_options`` that fits no other object."""
    for keys in keys_options:
        attributes = {k: getattr(obj, k) for k in keys}
        if sum(_matches(o, attributes) for o in scene.objects) == 1:
            words = [attributes[k] for k in ("size", "color", "shape") if k in attributes]
            return " ".join(words) if "shape" in keys else " ".join(words + ["object"])
    return None


def make_question(scene: Scene, qtype: str, rng: np.random.Generator,
                  allowed: Callable[[str, str], bool] = lambda c, s: True,
                  relations: Sequence[str] = RELATIONS) -> tuple[str, str] | None:
    """A (question, answer) pair of type ``qtype`` about ``scene`` (relation questions ask
    only about ``relations``), or None if the scene cannot support that type (e.g. a
    relation question needs two objects)."""
    require_scene(scene), require_rng(rng), require_relations(relations)
    objects = list(scene.objects)
    order = rng.permutation(len(objects))
    if qtype == "count":
        return "how many objects are there?", NUMBER_WORDS[len(objects)]
    if qtype in ("color", "shape", "size"):
        options = {"color": [("shape",), ("size", "shape")],
                   "shape": [("color",), ("size", "color")],
                   "size": [("shape",), ("color", "shape")]}[qtype]
        for i in order:
            ref = _unique_reference(scene, objects[i], options)
            if ref is not None:
                verb = {"color": "what color is", "shape": "what shape is", "size": "what size is"}[qtype]
                return f"{verb} the {ref}?", getattr(objects[i], qtype)
        return None
    if qtype == "exist":
        present = {(o.color, o.shape) for o in objects}
        if rng.random() < 0.5:
            color, shape = sorted(present)[int(rng.integers(len(present)))]
            answer = "yes"
        else:
            absent = [(c, s) for c in COLOR_NAMES for s in SHAPES if (c, s) not in present and allowed(c, s)]
            color, shape = absent[int(rng.integers(len(absent)))]
            answer = "no"
        return f"is there {with_article(color + ' ' + shape)}?", answer
    if qtype == "relation":
        options = [("shape",), ("color", "shape"), ("size", "color", "shape")]
        for i in order:
            for j in order:
                if i == j:
                    continue
                a, b = objects[i], objects[j]
                held = [rel for rel in relations_between(a, b, RELATION_MARGIN) if rel in relations]
                ref_a, ref_b = _unique_reference(scene, a, options), _unique_reference(scene, b, options)
                if held and ref_a and ref_b:
                    rel = held[int(rng.integers(len(held)))]
                    if rng.random() < 0.5:
                        return f"is the {ref_a} {rel} the {ref_b}?", "yes"
                    return f"is the {ref_a} {OPPOSITE[rel]} the {ref_b}?", "no"
        return None
    raise ValueError(f"Unknown question type {qtype!r}; expected one of {QUESTION_TYPES}.")


# --------------------------------------------------------------------------- verifier


class CaptionParseError(ValueError):
    """A caption that the ShapeWorld grammar cannot parse."""


def _parse_noun_phrase(words: list[str], start: int) -> tuple[dict, int]:
    """Parse ``a|an [size] [color] shape`` from ``words[start:]``; return (attributes, next)."""
    if start >= len(words) or words[start] not in ("a", "an"):
        raise CaptionParseError(f"expected 'a' or 'an' at word {start}, got {words[start:start + 1]}")
    i, attributes = start + 1, {}
    for key, options in (("size", SIZES), ("color", COLORS)):
        if i < len(words) and words[i] in options:
            attributes[key], i = words[i], i + 1
    if i >= len(words) or words[i] not in SHAPES:
        raise CaptionParseError(f"expected a shape {SHAPES} at word {i}, got {words[i:i + 1]}")
    attributes["shape"] = words[i]
    expected_article = "an" if " ".join(words[start + 1:i + 1])[0] in "aeiou" else "a"
    if words[start] != expected_article:
        raise CaptionParseError(f"article {words[start]!r} should be {expected_article!r}")
    return attributes, i + 1


def parse_caption(caption: str) -> list[tuple]:
    """Parse a caption into statements.

    Grammar (statements may be joined by ``and``)::

        statement := "there is" NP | NP "is" RELATION NP | "there are" NUMBER "objects"
        NP        := ("a" | "an") [size] [color] shape

    Returns a list of ``("exists", attrs)``, ``("relation", attrs_a, relation, attrs_b)``
    or ``("count", n)`` tuples. Raises `CaptionParseError` for anything else.
    """
    words = require_str(caption, "caption", allow_empty=True).lower().strip().rstrip(".").split()
    if not words:
        raise CaptionParseError("empty caption")
    statements, i = [], 0
    while True:
        statement, i = _parse_statement(words, i)
        statements.append(statement)
        if i == len(words):
            return statements
        if words[i] != "and":
            raise CaptionParseError(f"unexpected words after a statement: {' '.join(words[i:])!r}")
        i += 1


def _parse_statement(words: list[str], i: int) -> tuple[tuple, int]:
    if words[i:i + 2] == ["there", "is"]:
        attributes, i = _parse_noun_phrase(words, i + 2)
        return ("exists", attributes), i
    if words[i:i + 2] == ["there", "are"]:
        if len(words) >= i + 4 and words[i + 2] in NUMBER_WORDS and words[i + 3] == "objects":
            return ("count", NUMBER_WORDS.index(words[i + 2])), i + 4
        raise CaptionParseError("expected 'there are NUMBER objects'")
    first, i = _parse_noun_phrase(words, i)
    if i >= len(words) or words[i] != "is":
        raise CaptionParseError(f"expected 'is' at word {i}")
    i += 1
    for relation in RELATIONS:
        rel_words = relation.split()
        if words[i:i + len(rel_words)] == rel_words:
            second, i = _parse_noun_phrase(words, i + len(rel_words))
            return ("relation", first, relation, second), i
    raise CaptionParseError(f"expected a relation {RELATIONS} at word {i}")


def caption_parses(caption: str) -> bool:
    """True when ``caption`` follows the ShapeWorld grammar."""
    try:
        parse_caption(caption)
    except CaptionParseError:
        return False
    return True


def caption_is_true(caption: str, scene: Scene) -> bool:
    """True when ``caption`` parses and every statement in it holds in ``scene``.

    A noun phrase is existential: "a red circle is above a square" is true when *some*
    red circle is above *some* (other) square. Relations compare object centres.
    """
    scene = require_scene(scene)
    try:
        statements = parse_caption(caption)
    except CaptionParseError:
        return False
    return all(_holds(statement, scene) for statement in statements)


def _holds(statement: tuple, scene: Scene) -> bool:
    kind = statement[0]
    if kind == "exists":
        return any(_matches(o, statement[1]) for o in scene.objects)
    if kind == "count":
        return len(scene.objects) == statement[1]
    _, first, relation, second = statement
    return any(relation in relations_between(a, b)
               for a in scene.objects if _matches(a, first)
               for b in scene.objects if b is not a and _matches(b, second))


def caption_truth_matrix(captions: Sequence[str], scenes: Sequence[Scene]) -> np.ndarray:
    """``truth[i, j] = caption_is_true(captions[i], scenes[j])`` for every pair: bool (Q, N).
    The same answers as a double loop over `caption_is_true`, hundreds of times faster: each distinct
    caption is parsed once and each of its statements is tested on all N scenes at once, with the scenes'
    objects laid out as NumPy arrays (N, M), padded to the largest scene's M objects. A caption that does
    not parse is false everywhere.
    """
    if isinstance(captions, str):
        raise TypeError("captions: expected a list of caption strings, got one str; wrap it: [caption].")
    captions, scenes = list(captions), list(scenes)
    if not captions or not scenes:
        raise ValueError(f"expected at least one caption and one scene, got {len(captions)} captions and "
                         f"{len(scenes)} scenes.")
    for i, caption in enumerate(captions):
        require_str(caption, f"captions[{i}]", allow_empty=True)
    for i, scene in enumerate(scenes):
        require_scene(scene, f"scenes[{i}] (the verifier needs the scene, not the image)")
    count = np.array([len(scene.objects) for scene in scenes])  # (N,)
    slots = max(1, int(count.max()))
    padded = [list(scene.objects) + [None] * (slots - len(scene.objects)) for scene in scenes]
    valid = np.arange(slots)[None, :] < count[:, None]  # (N, M): slot m holds an object
    values = {key: np.array([[getattr(o, key) if o else "" for o in row] for row in padded]) for key in ATTRIBUTES}
    x = np.array([[o.x if o else 0.0 for o in row] for row in padded])  # (N, M) centres
    y = np.array([[o.y if o else 0.0 for o in row] for row in padded])
    distinct = ~np.eye(slots, dtype=bool)  # a relation needs two different objects

    def matching(attributes: dict) -> np.ndarray:  # (N, M): objects with every given attribute
        match = valid.copy()
        for key, value in attributes.items():
            match &= values[key] == value
        return match

    def holds(statement: tuple) -> np.ndarray:  # (N,): the statement is true of each scene
        if statement[0] == "exists":
            return matching(statement[1]).any(axis=1)
        if statement[0] == "count":
            return count == statement[1]
        _, first, relation, second = statement  # pairs [n, a, b]: object a REL object b
        related = _relation_holds(relation, x[:, :, None], y[:, :, None], x[:, None, :], y[:, None, :], 0.0)
        return (matching(first)[:, :, None] & matching(second)[:, None, :] & related & distinct).any(axis=(1, 2))

    rows: dict[str, np.ndarray] = {}
    for caption in dict.fromkeys(captions):
        statements = _cached_statements(caption)
        row = np.full(len(scenes), statements is not None)
        for statement in statements or ():
            row &= holds(statement)
        rows[caption] = row
    return np.stack([rows[caption] for caption in captions])


@functools.lru_cache(maxsize=65536)
def _cached_statements(caption: str) -> tuple | None:
    """`parse_caption`, cached (training verifies the same captions again and again);
    None when the caption does not parse."""
    try:
        return tuple(parse_caption(caption))
    except CaptionParseError:
        return None


# --------------------------------------------------------------------------- datasets


@dataclasses.dataclass
class ShapeWorldData:
    """A generated split. ``images``: uint8 (N, H, W, 3); the lists all have length N."""

    images: np.ndarray
    scenes: list[Scene]
    captions: list[str]
    questions: list[str]
    answers: list[str]
    question_types: list[str]
    split: str
    seed: int

    def __len__(self) -> int:
        return len(self.scenes)

    def sounds(self, sample_rate: int = SOUND_SAMPLE_RATE) -> list[np.ndarray]:
        """Each scene as a float32 waveform (lengths differ with the number of objects)."""
        return [render_sound(scene, sample_rate) for scene in self.scenes]

    def subset(self, indices) -> "ShapeWorldData":
        """The examples at ``indices`` (any 1-D integer index), as a new ShapeWorldData."""
        idx = np.asarray(indices, dtype=np.int64)
        pick = lambda items: [items[i] for i in idx]  # noqa: E731 - tiny local helper
        return ShapeWorldData(self.images[idx], pick(self.scenes), pick(self.captions),
                              pick(self.questions), pick(self.answers), pick(self.question_types),
                              self.split, self.seed)


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"Unknown split {split!r}; expected one of {SPLITS}.")


def generate(num_examples: int, split: str = "train", seed: int = 0, image_size: int = 64,
             relations: Sequence[str] = RELATIONS) -> ShapeWorldData:
    """Generate ``num_examples`` examples of ``split``; same arguments, same data.
    Captions and questions state only ``relations`` (lesson 09's sounds carry left and right).
    Question types cycle through `QUESTION_TYPES`, so every type gets the same share.
    Different splits use different random streams, so they never share a sequence of scenes.
    """
    _check_split(split)
    num_examples = require_int(num_examples, "num_examples", 0)
    image_size = require_int(image_size, "image_size (>= 16 so shapes stay recognisable)", 16)
    require_array_budget((num_examples, image_size, image_size, 3), 3, "num_examples and image_size")
    require_relations(relations), require_int(seed, "seed", 0)
    rng = np.random.default_rng([SPLITS.index(split), seed])
    allowed = _allowed_for_split(split)
    scenes, captions, questions, answers, qtypes = [], [], [], [], []
    for i in range(num_examples):
        qtype = QUESTION_TYPES[i % len(QUESTION_TYPES)]
        while True:
            scene = sample_scene(rng, split)
            qa = make_question(scene, qtype, rng, allowed, relations)
            if qa is not None:
                break
        scenes.append(scene)
        captions.append(make_caption(scene, rng, relations))
        questions.append(qa[0])
        answers.append(qa[1])
        qtypes.append(qtype)
    images = np.empty((num_examples, image_size, image_size, 3), np.uint8)
    for i, scene in enumerate(scenes):
        images[i] = render_image(scene, image_size)
    noise = rng.integers(-NOISE, NOISE + 1, size=images.shape, dtype=np.int16)
    images = np.clip(images.astype(np.int16) + noise, 0, 255).astype(np.uint8)
    return ShapeWorldData(images, scenes, captions, questions, answers, qtypes, split, seed)


def vocabulary() -> list[str]:
    """Every word the ShapeWorld grammar can produce (captions, questions, answers), sorted."""
    words = set(SHAPES) | set(COLORS) | set(SIZES) | set(NUMBER_WORDS)
    words |= {w for r in RELATIONS for w in r.split()}
    words |= {"a", "an", "there", "is", "are", "objects", "object", "and", "the", "what", "color",
              "shape", "size", "how", "many", "yes", "no", "?"}
    return sorted(words)
