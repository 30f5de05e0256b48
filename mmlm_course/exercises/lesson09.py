"""Checks for lesson 09: audio-language models (stacking frames, CTC decoding, the sound verifier).

Every expected value is computed here: the stacked tokens and the decoded labels in plain
NumPy / Python, the verdicts of the sound verifier from the check's own scenes and statements
(tuples, rebuilt into fresh `shapeworld.Scene` objects for every call), never with the
package's `audio_lm` or `shapeworld` functions, which a learner's notebook can change. The
registered mistakes (most of them in `lesson09_mistakes`) use the package freely.
"""

from __future__ import annotations

import itertools

import numpy as np
from hypothesis import strategies as st

from mmlm_course import audio_lm, shapeworld
from mmlm_course.exercises import CheckFailed, Checker, draw_cases, exercise
from mmlm_course.exercises import lesson09_mistakes as mistake
from mmlm_course.exercises.checker import error_message

# --------------------------------------------------------------------------- 09.stack_frames


def _tokens_for(time: int, k: int) -> int:
    return -(-time // k)


def _padded(x, k: int, at_start: bool = False) -> np.ndarray:
    x = np.asarray(x)
    batch, time, width = x.shape
    zeros = np.zeros((batch, _tokens_for(time, k) * k - time, width), x.dtype)
    return np.concatenate([zeros, x] if at_start else [x, zeros], axis=1)


def _stack64(x: np.ndarray, k: int) -> np.ndarray:
    """What the text asks for: token j is frames jk .. jk + k - 1 side by side, zeros after the last frame."""
    batch, time, width = x.shape
    return _padded(x.astype(np.float64), k).reshape(batch, _tokens_for(time, k), k * width)


def _stack_floor(x, k):
    batch, time, width = x.shape
    return x[:, :time // k * k].reshape(batch, time // k, k * width)


def _stack_pad_start(x, k):
    batch, time, width = x.shape
    return _padded(x, k, at_start=True).reshape(batch, _tokens_for(time, k), k * width)


def _stack_interleaved(x, k):
    """Feature d of each of the k frames next to each other: (B, n, k, D) -> (B, n, D, k) -> (B, n, k * D)."""
    batch, time, width = x.shape
    n = _tokens_for(time, k)
    return _padded(x, k).reshape(batch, n, k, width).transpose(0, 1, 3, 2).reshape(batch, n, k * width)


def _stack_strided(x, k):
    """reshape(B, k, T / k, D): token j gets frames j, j + T/k, j + 2T/k, ... (not neighbours)."""
    batch, time, width = x.shape
    n = _tokens_for(time, k)
    return _padded(x, k).reshape(batch, k, n, width).transpose(0, 2, 1, 3).reshape(batch, n, k * width)


def _stack_channels_first(x, k):
    """Reshapes the (B, D, T) transpose: features and frames mixed."""
    batch, time, width = x.shape
    return _padded(x, k).transpose(0, 2, 1).reshape(batch, _tokens_for(time, k), k * width)


def _stack_mean(x, k):
    batch, time, width = x.shape
    return _padded(x, k).reshape(batch, _tokens_for(time, k), k, width).mean(axis=2)


def _stack_flat_batch(x, k):
    """Pads the flattened batch once, at its very end: every row after the first slides into the one before."""
    batch, time, width = x.shape
    n = _tokens_for(time, k)
    flat = np.asarray(x).reshape(-1)
    return np.pad(flat, (0, batch * n * k * width - flat.size)).reshape(batch, n, k * width)


def _stack_into_int_zeros(x, k):
    batch, time, width = x.shape
    n = _tokens_for(time, k)
    out = np.zeros((batch, n * k, width), int)
    out[:, :time] = x
    return out.reshape(batch, n, k * width)


def _ordered_frames(batch: int, time: int, width: int) -> np.ndarray:
    """Values 1, 2, 3, ...: every value names its row, frame and feature, and none is a padding zero."""
    return (np.arange(batch * time * width, dtype=np.float32) + 1).reshape(batch, time, width)


def _stack_cases() -> list[tuple[np.ndarray, int]]:
    rng = np.random.default_rng(9)
    cases = [(_ordered_frames(2, 8, 3), 2),              # T a multiple of k
             (_ordered_frames(2, 7, 3), 3),              # T not a multiple: the last token is padded
             (_ordered_frames(2, 5, 4), 1),              # k = 1: the frames as they are
             (_ordered_frames(2, 3, 2), 5),              # k > T: one token, mostly zeros
             (_ordered_frames(3, 6, 2), 6),              # k = T: one token, no padding
             (_ordered_frames(1, 10, 1), 4),             # one feature
             (_ordered_frames(3, 11, 3), 4),             # three rows, each padded
             (rng.normal(size=(2, 9, 5)).astype(np.float32), 4)]    # the lesson's kind of values
    drawn = st.tuples(st.integers(1, 3), st.integers(1, 12), st.integers(1, 4), st.integers(1, 6))
    return cases + [(_ordered_frames(b, t, d), k) for b, t, d, k in draw_cases(drawn, 8)]


def _as_array(c: Checker, what: str, value, shape: tuple, hint: str) -> np.ndarray:
    """A returned array or tensor (or a nested list of numbers) as a NumPy array of ``shape``."""
    if isinstance(value, (list, tuple)):
        try:
            value = np.asarray(value, dtype=float)
        except (ValueError, TypeError):
            c.fail(what, f"expected an array of shape {shape}, got a {type(value).__name__} that is not one",
                   "return a tensor (keras.ops) or a NumPy array")
    return c.expect_array(what, value, shape, hint=hint)


def _shape_hint(got, batch: int, time: int, width: int, k: int) -> str:
    shape = tuple(np.shape(got)) if hasattr(got, "shape") else None
    if shape == (batch, time // k, k * width) and time % k:
        return (f"{time} frames do not split into groups of {k}: the last frames still make a token, completed "
                "with zeros, so no frame is lost")
    if shape == (batch, _tokens_for(time, k), width):
        return "each token holds its k frames side by side, so it has k * D features; do not average them"
    unpadded = shape is not None and len(shape) == 3 and shape[0] == batch and shape[1] * shape[2] == time * width
    if time % k and unpadded:
        return (f"{time} frames do not split into groups of {k}: complete the last token with zeros, so the result "
                "has ceil(T / k) tokens")
    if shape == (batch, k * width, _tokens_for(time, k)):
        return "the tokens run along axis 1 and their features along axis 2: (batch, ceil(T / k), k * D)"
    return "the result is (batch, ceil(T / k), k * D): one token for every k frames, each k frames wide"


_STACK_DIAGNOSES = (
    (_stack_pad_start, "the zeros sit at the start of the time axis",
     "complete the *last* token: the zeros go after the last frame, and token 0 starts with frame 0"),
    (_stack_interleaved, "the features of the k frames are interleaved",
     "a token is whole frames one after the other: all D features of frame jk, then all D of frame jk + 1, ..."),
    (_stack_strided, "a token holds frames that lie far apart in time",
     "token j holds k *neighbouring* frames, jk .. jk + k - 1, not one frame from each part of the clip"),
    (_stack_channels_first, "the tokens mix features and frames",
     "keep the (batch, time, features) order: group the time axis, without transposing it behind the features"),
    (_stack_flat_batch, "a row holds values of the next row (the rows mix)",
     "stack each row on its own: pad the time axis of every row, and keep the batch size as the first dimension "
     "of the reshape"),
)


def _row_of(value: float, x: np.ndarray) -> int:
    """The row of the input that holds ``value`` (the check calls it on a value the input holds)."""
    return int(np.flatnonzero((x == value).any(axis=(1, 2)))[0])


@exercise(
    "09.stack_frames",
    reference=audio_lm.stack_frames,
    mistakes={
        "drops the frames that do not fill a token (floor instead of ceil)": _stack_floor,
        "reshapes without padding (T must be a multiple of k)":
            lambda x, k: np.reshape(x, (x.shape[0], -1, k * x.shape[2])),
        "pads at the start of time": _stack_pad_start,
        "interleaves the features of the k frames": _stack_interleaved,
        "reshapes to (B, k, T / k, D): frames T / k apart": _stack_strided,
        "reshapes the (B, D, T) transpose": _stack_channels_first,
        "averages the k frames (mean pooling)": _stack_mean,
        "pads the flattened batch once (the rows mix)": _stack_flat_batch,
        "pads into np.zeros(..., int) (int tokens)": _stack_into_int_zeros,
    },
)
def _check_stack_frames(c: Checker) -> None:
    for x, k in _stack_cases():
        batch, time, width = x.shape
        expected = _stack64(x, k)
        what = f"tokens of frames {x.shape} with k={k}"
        try:
            got = c.call(x, k, read_only=True)
        except CheckFailed as error:               # a reshape that needs T to be a multiple of k: say so
            message = str(error)
            if not (time % k and message.startswith("09.stack_frames: your function raised") and "reshape" in message):
                raise
            raise CheckFailed(f"{message} Hint: {time} frames do not split into groups of {k}: complete the last "
                              "token with zeros (pad the end of the time axis) before the reshape") from None
        array = _as_array(c, what, got, expected.shape, _shape_hint(got, batch, time, width, k))
        if array.dtype.kind != "f" or array.dtype.itemsize < 4:        # float16 rounds the frames' values
            c.fail(what, f"expected float values, got dtype {array.dtype}",
                   "the tokens are the frames' own float values (and zeros): keep the float dtype")
        array = array.astype(np.float64)
        if np.allclose(array, expected, atol=1e-6, rtol=1e-6):
            c.passed.append(what)
            continue
        for wrong_answer, problem, hint in _STACK_DIAGNOSES:
            wrong = wrong_answer(x, k).astype(np.float64)
            if wrong.shape == expected.shape and not np.allclose(wrong, expected) and np.allclose(array, wrong):
                c.fail(what, problem, hint)
        b, j = (int(i) for i in np.argwhere(~np.isclose(array, expected, atol=1e-6, rtol=1e-6).all(axis=2))[0])
        first, last = j * k, min(j * k + k, time) - 1
        holds = f"frames {first} .. {last}" if first < last else f"frame {first}"
        holds += f" then {j * k + k - time} frame(s) of zeros" if j * k + k > time else ""
        moved, values = np.sort(array[array != 0]), np.sort(x[x != 0].astype(np.float64))
        if np.array_equal(moved, values):              # the input's values, moved: did some cross into another row?
            foreign = [_row_of(v, x) for v in array[b, j] if v != 0 and not np.isin(v, x[b])]
        else:
            foreign = []
        if foreign:
            c.fail(what, f"token {j} of row {b} holds values of row {foreign[0]}",
                   "stack each row on its own: rows (clips) must not mix")
        c.fail(what, f"token {j} of row {b} differs (it should hold {holds}, side by side)",
               "token j is frames jk .. jk + k - 1 of its row, whole frames one after the other (frame jk first), "
               "and zeros after the last frame when T is not a multiple of k")


# --------------------------------------------------------------------------- 09.ctc_greedy_decode


def _decode(labels, blank: int) -> list[int]:
    """Best path: one label per run of equal frame labels, then the blanks dropped."""
    return [int(label) for label, _ in itertools.groupby(list(labels)) if label != blank]


def _ctc_cases() -> list[tuple[np.ndarray, int]]:
    fixed = [([0, 3, 3, 0, 3, 5, 5], 0),            # the lesson's example: a blank between two 3s keeps both
             ([3, 3, 3], 0), ([0, 0, 0, 0], 0), ([], 0), ([1, 2, 3, 4], 0), ([2, 2, 7, 7, 7, 2], 0),
             ([0, 0, 7, 7, 0, 0], 0),                  # blanks before and after
             ([4, 0, 4, 4, 0, 0, 4], 0),                # a label repeated across blanks, from the first frame
             ([5, 0, 5], 0), ([9], 0),
             ([11, 3, 3, 11, 3, 5, 5, 11], 11),         # another blank label ...
             ([0, 0, 11, 0, 5, 5, 11, 11, 0], 11),      # ... where 0 is an ordinary label
             ([6, 6, 2, 6, 6], 6)]
    cases = [(np.array(ids, dtype=np.int32 if i % 2 else np.int64), blank) for i, (ids, blank) in enumerate(fixed)]
    drawn = st.tuples(st.lists(st.integers(0, 5), max_size=40), st.sampled_from((0, 0, 3, 5)), st.booleans())
    return cases + [(np.array(ids, np.int32 if small else np.int64), blank)
                    for ids, blank, small in draw_cases(drawn, 12)]


def _labels(c: Checker, what: str, got) -> list[int]:
    """A list / tuple / 1-D integer array of labels as a list of Python ints."""
    if isinstance(got, (set, frozenset, dict)):
        c.fail(what, f"expected a list of labels, got a {type(got).__name__}",
               "return a list in the order the labels are spoken, repeats included (a set or a dict keeps each "
               "label once)")
    if isinstance(got, np.ndarray):
        if got.ndim != 1:
            c.fail(what, f"expected one label after another, got an array of shape {got.shape}",
                   "return a flat list of labels for the one clip")
        if got.size and got.dtype.kind not in "iu":
            c.fail(what, f"expected integer labels, got dtype {got.dtype}", "the labels are ints")
        return [int(v) for v in got]
    if not isinstance(got, (list, tuple)):
        c.fail(what, f"expected a list of labels, got {type(got).__name__}", "return a list of ints")
    bad = [v for v in got if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer))]
    if bad:
        c.fail(what, f"expected integer labels, got {type(bad[0]).__name__} {str(bad[0])[:40]}",
               "return the labels themselves, as ints")
    return [int(v) for v in got]


def _shown(labels: list) -> str:
    text = str(list(labels))
    return text if len(text) <= 160 else text[:150] + " ...]"


@exercise(
    "09.ctc_greedy_decode",
    reference=audio_lm.ctc_greedy_decode,
    mistakes={
        "drops the blanks before merging": mistake.drop_blanks_then_merge,
        "merges runs but keeps the blanks": mistake.merge_keeping_blanks,
        "ignores the blank argument (blank 0 hard-coded)": lambda ids, blank=0: audio_lm.ctc_greedy_decode(ids, 0),
        "returns the sorted distinct labels": lambda ids, blank=0: sorted(set(np.asarray(ids).tolist()) - {blank}),
        "keeps each label once (distinct, in order)":
            lambda ids, blank=0: list(dict.fromkeys(audio_lm.ctc_greedy_decode(ids, blank))),
        "loses the first frame's label": mistake.skips_first_frame,
        "compares frame 0 with the last frame (ids[i - 1] at i = 0)": mistake.first_compared_with_last,
        "starts with previous = 0 (a first frame of label 0 is lost when the blank is not 0)": mistake.previous_zero,
        "returns a set": lambda ids, blank=0: set(audio_lm.ctc_greedy_decode(ids, blank)),
        "another default blank (the last label, as tf.nn.ctc_greedy_decoder)":
            lambda ids, blank=11: audio_lm.ctc_greedy_decode(ids, blank),
    },
)
def _check_ctc_greedy_decode(c: Checker) -> None:
    for ids, blank in _ctc_cases():
        frames = ids.tolist()
        what = f"decoding of frame labels {_shown(frames)} ({ids.dtype} array, blank={blank})"
        got = _labels(c, what, c.call(ids, blank=blank, read_only=True))
        expected = _decode(frames, blank)
        if got == expected:
            c.passed.append(what)
            continue
        message = f"expected {_shown(expected)}, got {_shown(got)}"
        if blank != 0 and got == _decode(frames, 0):
            c.fail(what, message, "use the `blank` argument: the blank may be any label, and then 0 is an ordinary "
                   "label")
        if blank in got:
            c.fail(what, message, f"the blank ({blank}) is not a label: it never appears in the result")
        first_run = len(list(next(itertools.groupby(frames))[1])) if frames else 0
        if frames and frames[0] != blank and got == _decode(frames[first_run:], blank):
            c.fail(what, message, "the first frame starts a run too: its label counts")
        if got == _decode([x for x in frames if x != blank], blank) != expected:
            c.fail(what, message, "a blank between two equal labels separates them (it is how CTC spells a "
                   "letter twice): merge the runs of equal frame labels first, then drop the blanks")
        if sorted(got) == got and sorted(set(expected)) == got:
            c.fail(what, message, "keep the labels in the order they are spoken, with their repeats")
        c.fail(what, message, "each run of equal frame labels gives its label once, then the blanks are dropped")
    what = "decoding of frame labels [0, 3, 3, 0, 3, 5, 5] (int64 array, `blank` left out)"
    try:
        got = _labels(c, what, c.call(np.array([0, 3, 3, 0, 3, 5, 5], np.int64), read_only=True))
    except CheckFailed as error:               # no default at all: every call site passes the blank, so it is fine
        if "your function raised TypeError" in str(error) and "required" in str(error) \
                and "argument: 'blank'" in str(error):
            return
        raise
    if got != [3, 3, 5]:
        c.fail(what, f"expected [3, 3, 5], got {_shown(got)}",
               "the signature is ctc_greedy_decode(frame_ids, blank=0): without `blank`, the blank is label 0")
    c.passed.append(what)


# --------------------------------------------------------------------------- 09.caption_is_true_of_sound

_AUDIBLE = ("to the left of", "to the right of")    # the check's own copy of audio_lm.SOUND_RELATIONS
_INAUDIBLE = ("above", "below")

# (shape, colour, size, x, y); x grows to the right and y downwards
_SCENES = {
    "two": (("circle", "red", "large", 0.2, 0.7), ("square", "blue", "small", 0.7, 0.3)),
    "three": (("triangle", "green", "small", 0.15, 0.2), ("circle", "orange", "large", 0.5, 0.75),
              ("triangle", "yellow", "large", 0.85, 0.4)),
    "one": (("square", "purple", "small", 0.5, 0.5),),
    # listed out of left-to-right order, two centres only 0.05 apart
    "listed": (("triangle", "blue", "large", 0.8, 0.5), ("circle", "yellow", "small", 0.3, 0.4),
               ("square", "red", "small", 0.35, 0.6)),
    "column": (("circle", "red", "small", 0.4, 0.2), ("square", "green", "large", 0.4, 0.8),    # the same x
               ("triangle", "purple", "small", 0.75, 0.5)),
}

# the hint for a wrong verdict on a caption about left / right that only a wrong reading of position gets wrong
_ORDER = ("left and right come from the objects' x, not from their order in scene.objects (a scene may list "
          "its objects in any order)")
_MARGIN = "a relation holds for any difference in x, however small (no margin): the tones play in that order"
_TIE = ("two objects at the same x (one above the other) are neither to the left nor to the right of each other: "
        "compare the centres' x strictly")
_EDGES = ("a large shape's left edge lies further left than a small one's at the same x, yet the two are one above "
          "the other: compare the centres' x, not the edges")
_NOTES = {"a blue triangle is to the right of a yellow circle": _ORDER, "a square is to the left of a triangle": _ORDER,
          "a yellow circle is to the right of a blue triangle": _ORDER,
          "a red square is to the right of a yellow circle": _MARGIN,
          "a yellow circle is to the left of a red square": _MARGIN,
          "a red circle is to the left of a green square": _TIE, "a green square is to the right of a circle": _TIE,
          "a green square is to the left of a red circle": _EDGES}

# (caption, scene, true of the scene): the verdict for the sound is False as well when it states "above" / "below"
_CAPTIONS = (
    ("a large red circle is to the left of a small blue square", "two", True),
    ("a small blue square is to the right of a red circle", "two", True),
    ("a red circle is to the right of a blue square", "two", False),
    ("a blue square is to the left of a circle", "two", False),
    ("a blue square is above a red circle", "two", True),
    ("a red circle is below a blue square", "two", True),
    ("a red circle is above a blue square", "two", False),
    ("there is a large red circle", "two", True),
    ("there is a green triangle", "two", False),
    ("there are two objects", "two", True),
    ("there are three objects", "three", True),
    ("there are three objects", "two", False),
    ("there is a red circle and a red circle is to the left of a blue square", "two", True),
    ("a red circle is to the left of a blue square and a blue square is above a red circle", "two", True),
    ("a blue square is above a red circle and a red circle is to the left of a blue square", "two", True),
    ("A Large Red Circle Is To The Left Of A Small Blue Square.", "two", True),
    ("A BLUE SQUARE IS ABOVE A RED CIRCLE.", "two", True),
    ("a triangle is to the left of a triangle", "three", True),
    ("a triangle is to the right of an orange circle", "three", True),
    ("an orange circle is to the left of a green triangle", "three", False),
    ("a triangle is to the left of a circle and a circle is to the left of a triangle", "three", True),
    ("a yellow triangle is above an orange circle", "three", True),
    ("a large triangle is below a small triangle", "three", True),
    ("a green triangle is to the left of a yellow triangle and a green triangle is above a yellow triangle",
     "three", True),
    ("there is an orange circle and there is a small orange circle", "three", False),
    ("there is a small purple square", "one", True),
    ("a square is to the left of a square", "one", False),
    ("there is a square and a square is to the right of a square", "one", False),
    ("a blue triangle is to the right of a yellow circle", "listed", True),
    ("a square is to the left of a triangle", "listed", True),
    ("a yellow circle is to the right of a blue triangle", "listed", False),
    ("a red square is to the right of a yellow circle", "listed", True),
    ("a yellow circle is to the left of a red square", "listed", True),
    ("a blue triangle is above a red square", "listed", True),
    ("a red circle is to the left of a green square", "column", False),
    ("a green square is to the right of a circle", "column", False),
    ("a green square is to the left of a purple triangle", "column", True),
    ("a red circle is above a green square", "column", True),
    ("there are three objects", "column", True),
    ("a green square is to the left of a red circle", "column", False),      # its left edge is further left
    ("there are two objects", "column", False),
)

_UNPARSABLE = ("the red circle is left of the blue square", "a red circle is near a blue square", "",
               "an red circle is to the left of a blue square", "a red circle is to the left of a blue square and",
               "there is a red circle above a blue square", "a blue square is over a red circle")


def _scene(fields) -> shapeworld.Scene:
    return shapeworld.Scene(tuple(shapeworld.ShapeObject(*f) for f in fields))


def _scene_text(fields) -> str:
    return "a scene of " + " and ".join(f"a {size} {color} {shape} at x={x:g}, y={y:g}"
                                        for shape, color, size, x, y in fields)


def _inaudible(caption: str) -> bool:
    return any(word in caption.lower().split() for word in _INAUDIBLE)


# drawn cases: statements about the drawn scene's own objects, which the check renders as text and evaluates itself
_POSITION = st.sampled_from((0.1, 0.3, 0.5, 0.7, 0.9))
_OBJECT = st.tuples(st.sampled_from(tuple(shapeworld.SHAPES)), st.sampled_from(tuple(shapeworld.COLOR_NAMES)),
                    st.sampled_from(tuple(shapeworld.SIZES)), _POSITION, _POSITION)


@st.composite
def _phrase_for(draw, fields):
    """A noun phrase for the object ``fields``: its shape, maybe its colour and size, maybe a wrong colour."""
    color = draw(st.sampled_from((None, fields[1], fields[1], draw(st.sampled_from(tuple(shapeworld.COLOR_NAMES))))))
    return fields[0], color, draw(st.sampled_from((None, fields[2])))


@st.composite
def _caption_case(draw):
    scene = draw(st.lists(_OBJECT, min_size=1, max_size=4))
    statements = []
    for _ in range(draw(st.integers(1, 2))):
        kind = draw(st.sampled_from(("exists", "count", "relation", "relation", "relation")))
        if kind == "relation" and len(scene) > 1:
            i, j = draw(st.lists(st.integers(0, len(scene) - 1), min_size=2, max_size=2, unique=True))
            held = [r for r in _AUDIBLE + _INAUDIBLE if _related(scene[i], scene[j], r)]
            relation = draw(st.sampled_from(tuple(held) if held and draw(st.booleans()) else _AUDIBLE + _INAUDIBLE))
            statements.append(("relation", draw(_phrase_for(scene[i])), relation, draw(_phrase_for(scene[j]))))
        elif kind == "count":
            statements.append(("count", draw(st.sampled_from((len(scene), len(scene) % 4 + 1)))))
        else:
            statements.append(("exists", draw(_phrase_for(draw(st.sampled_from(scene))))))
    return tuple(scene), statements


def _phrase_text(phrase) -> str:
    shape, color, size = phrase
    words = " ".join(w for w in (size, color, shape) if w)
    return ("an " if words[0] in "aeiou" else "a ") + words


def _statement_text(statement) -> str:
    if statement[0] == "exists":
        return f"there is {_phrase_text(statement[1])}"
    if statement[0] == "count":
        return f"there are {('zero', 'one', 'two', 'three', 'four')[statement[1]]} objects"
    return f"{_phrase_text(statement[1])} is {statement[2]} {_phrase_text(statement[3])}"


def _fits(fields, phrase) -> bool:
    shape, color, size = phrase
    return fields[0] == shape and color in (None, fields[1]) and size in (None, fields[2])


def _related(a, b, relation: str) -> bool:
    return {"to the left of": a[3] < b[3], "to the right of": a[3] > b[3],
            "above": a[4] < b[4], "below": a[4] > b[4]}[relation]


def _statement_holds(statement, scene) -> bool:
    if statement[0] == "exists":
        return any(_fits(o, statement[1]) for o in scene)
    if statement[0] == "count":
        return len(scene) == statement[1]
    _, first, relation, second = statement
    return any(_fits(a, first) and _fits(b, second) and _related(a, b, relation)
               for i, a in enumerate(scene) for j, b in enumerate(scene) if i != j)


def _drawn_captions(count: int = 12) -> list[tuple[str, tuple, bool]]:
    return [(" and ".join(_statement_text(s) for s in statements), scene,
             all(_statement_holds(s, scene) for s in statements))
            for scene, statements in draw_cases(_caption_case(), count)]


def _verdict_hint(caption: str, true_of_scene: bool, got: bool) -> str:
    multiple = " and " in caption.lower()
    case = " (the grammar reads a caption in any case, with or without a final full stop)" \
        if caption != caption.lower() else ""
    if got and _inaudible(caption):
        return ("a sound plays its tones from left to right: it tells left from right, not above from below. A "
                "caption that states a relation outside audio_lm.SOUND_RELATIONS is not true of the sound, even when "
                "it is true of the scene" + (", wherever that statement sits in the caption" if multiple else "")
                + case)
    if caption in _NOTES:
        return _NOTES[caption]
    if caption.startswith("there are") and " and " not in caption:
        return "'there are N objects' counts every object of the scene, whatever its shape or colour: exactly N, " \
            "not at least N" + case
    if got:
        return "the caption must also be true of this scene: look at where the objects are" + case
    if any(relation in caption.lower() for relation in _AUDIBLE):
        return ("left and right can be heard (the order of the tones): a caption that states only those relations "
                "is true of the sound when it is true of the scene") + case
    return "a caption without a relation ('there is ...', 'there are N objects') is true of the sound when it is " \
        "true of the scene" + case


def _answer_or_error(caption: str, fields):
    """The scenario for a caption outside the grammar: the learner's verdict, or the error it raised."""
    def steps(candidate):
        try:
            return {"value": candidate(caption, _scene(fields))}
        except NotImplementedError:
            raise
        except Exception as error:             # reported with a hint, not as a crash
            return {"raised": f"{type(error).__name__}: {error_message(error)[:120]}"}
    return steps


def _expect_verdict(c: Checker, what: str, got) -> bool:
    if isinstance(got, np.ndarray) and got.shape == ():
        got = got[()]
    if not isinstance(got, (bool, np.bool_)):
        c.fail(what, f"expected True or False, got {type(got).__name__} {str(got)[:60]}",
               "return a bool: whether the sound can confirm the caption")
    return bool(got)


@exercise(
    "09.caption_is_true_of_sound",
    reference=audio_lm.caption_is_true_of_sound,
    mistakes={
        "forgets to refuse above and below (caption_is_true)": shapeworld.caption_is_true,
        "lets the CaptionParseError out": mistake.parse_error_escapes,
        "refuses every relation, left and right too":
            lambda caption, scene: mistake.statements_allowed(caption, scene, ()),
        "accepts only 'to the left of'":
            lambda caption, scene: mistake.statements_allowed(caption, scene, audio_lm.SOUND_RELATIONS[:1]),
        "looks for 'above' / 'below' in the raw caption (case-sensitive)": lambda caption, scene: (
            "above" not in caption and "below" not in caption and shapeworld.caption_is_true(caption, scene)),
        "accepts any caption that mentions left or right": mistake.mentions_left_or_right,
        "checks only the first statement": mistake.only_first_statement,
        "ignores the scene (every audible caption that parses is true)": mistake.ignores_the_scene,
        "reads left to right from the order of scene.objects": mistake.LISTED_ORDER,
        "counts objects at the same x as left / right (<= for <)": mistake.TIES_COUNT,
        "wants the centres shapeworld.RELATION_MARGIN apart": mistake.WITH_MARGIN,
        "compares the left edges of the shapes, not their centres": mistake.LEFT_EDGES,
        "reads 'there are N objects' as at least N": mistake.AT_LEAST_N,
        "compares places in the order the tones play (ties ordered too)": mistake.PLAYED_ORDER,
    },
)
def _check_caption_is_true_of_sound(c: Checker) -> None:
    cases = [(caption, _SCENES[name], true) for caption, name, true in _CAPTIONS] + _drawn_captions()
    for caption, fields, true_of_scene in cases:
        what = f"verdict on {caption!r} for {_scene_text(fields)}"
        got = _expect_verdict(c, what, c.call(caption, _scene(fields)))
        expected = true_of_scene and not _inaudible(caption)
        if got != expected:
            c.fail(what, f"expected {expected}, got {got}", _verdict_hint(caption, true_of_scene, got))
        c.passed.append(what)
    for caption in _UNPARSABLE:
        what = f"verdict on {caption!r}, which does not parse, for {_scene_text(_SCENES['two'])}"
        result = c.scenario(what, _answer_or_error(caption, _SCENES["two"]))
        if not isinstance(result, dict) or set(result) not in ({"value"}, {"raised"}):
            c.fail(what, "the check could not read your verdict", "return True or False")
        if "raised" in result:
            c.fail(what, f"your function raised {result['raised']}",
                   "a caption outside the grammar states nothing the sound can confirm: return False for it "
                   "(shapeworld.parse_caption raises shapeworld.CaptionParseError for such a caption)")
        if _expect_verdict(c, what, result["value"]):
            c.fail(what, "expected False, got True", "a caption that does not parse is never true")
        c.passed.append(what)
