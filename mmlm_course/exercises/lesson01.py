"""Checks for lesson 01: image and text preprocessing.

The expected answers are computed here from the check's own constants (tuples, rebuilt
into dicts per run), never from module-level state the learner's code could change, such
as ``preprocessing.FLIP_WORDS``.
"""

from __future__ import annotations

import numpy as np

from mmlm_course import preprocessing, shapeworld
from mmlm_course.exercises import Checker, draw_cases, exercise


def _images(seed: int = 0) -> list[tuple[str, np.ndarray, str]]:
    """(what, uint8 image, hint if the values differ)."""
    rng = np.random.default_rng(seed)
    hint = "0 must map to 0.0 and 255 to exactly 1.0"
    return [("float image", rng.integers(0, 256, size=(8, 6, 3), dtype=np.uint8), hint),
            ("float image", np.array([[[0, 128, 255]]], np.uint8), hint),               # extremes and the middle
            ("float image", shapeworld.generate(2, "validation", seed=3).images, hint),  # a batch (2, 64, 64, 3)
            ("float image of a dark image (every value 0 or 1)", rng.integers(0, 2, size=(4, 5, 3), dtype=np.uint8),
             "a uint8 image always holds 0 to 255, even when it is dark: divide by 255 whatever its values")]


def _scales_if_above_one(img):
    img = img.astype(np.float32)
    return img / 255.0 if img.max() > 1 else img


@exercise(
    "01.to_float_image",
    reference=preprocessing.to_float_image,
    mistakes={
        "forgets to divide by 255": lambda img: img.astype(np.float32),
        "divides by 256": lambda img: img.astype(np.float32) / 256.0,
        "integer division": lambda img: (img // 255).astype(np.float32),
        "leaves float64": lambda img: img / 255.0,
        "divides only when a value is above 1": _scales_if_above_one,
    },
)
def _check_to_float_image(c: Checker) -> None:
    for what, image, hint in _images():
        got = c.call(image, read_only=True)
        c.expect_array(what, got, image.shape, np.float32,
                       hint="keep the shape and return float32: image.astype(np.float32)")
        c.expect_close(what, got, image.astype(np.float64) / 255.0, hint=hint)


# --------------------------------------------------------------------------- 01.hflip_with_caption

_SWAP = (("left", "right"), ("right", "left"))  # the check's own copy: preprocessing.FLIP_WORDS can be changed
_FLIP_CAPTIONS = ("a large red circle is to the left of a small blue square",
                  "a small green triangle is to the right of a large red square",
                  "there is a small yellow circle",
                  "a blue square is above a red circle",
                  "left of the red circle is a square and right of it a triangle",
                  "a red circle is to the right of a blue square and to the left of a green triangle")


def _flipped_caption(caption: str) -> str:
    swap = dict(_SWAP)
    return " ".join(swap.get(word, word) for word in caption.split(" "))


def _flip_both_axes(img, cap):
    return img[::-1, ::-1], preprocessing.flip_caption(cap)


def _replace_in_turn(img, cap):
    return img[:, ::-1], cap.replace("left", "right").replace("right", "left")


def _swaps_every_relation(img, cap):
    swap = {"left": "right", "right": "left", "above": "below", "below": "above"}
    return img[:, ::-1], " ".join(swap.get(w, w) for w in cap.split(" "))


@exercise(
    "01.hflip_with_caption",
    reference=preprocessing.hflip_with_caption,
    mistakes={
        "flips the image but not the caption": lambda img, cap: (img[:, ::-1], cap),
        "flips upside down": lambda img, cap: (img[::-1], preprocessing.flip_caption(cap)),
        "replaces left by right but not back": lambda img, cap: (img[:, ::-1], cap.replace("left", "right")),
        "replaces left by right, then right by left": _replace_in_turn,
        "flips both axes": _flip_both_axes,
        "reverses the colour channels": lambda img, cap: (img[..., ::-1], preprocessing.flip_caption(cap)),
        "also swaps above and below": _swaps_every_relation,
        "returns a list": lambda img, cap: [img[:, ::-1], preprocessing.flip_caption(cap)],
    },
)
def _check_hflip_with_caption(c: Checker) -> None:
    rng = np.random.default_rng(1)
    for caption in _FLIP_CAPTIONS:
        image = rng.integers(0, 256, size=(5, 7, 3), dtype=np.uint8)
        got = c.call(image, caption, read_only=True)
        if not (isinstance(got, tuple) and len(got) == 2):
            c.fail("result", f"expected a tuple (image, caption), got {type(got).__name__}",
                   "return both: `return flipped_image, new_caption`")
        c.expect_array("flipped image", got[0], image.shape)
        flipped = np.asarray(got[0])
        if flipped.dtype.kind not in "biufc":
            c.fail("flipped image", f"expected an image of numbers, got dtype {flipped.dtype}",
                   "return the mirrored pixel values themselves")
        expected_image = image[:, ::-1]
        for wrong, problem, hint in (
                (image[::-1], "is mirrored top-bottom", "a horizontal flip reverses the width axis"),
                (image[::-1, ::-1], "is mirrored along both axes", "reverse only the width axis"),
                (image[..., ::-1], "has its colour channels reversed", "reverse the width axis, not the channels")):
            if np.array_equal(flipped, wrong) and not np.array_equal(wrong, expected_image):
                c.fail("flipped image", f"the image {problem}", hint)
        if not np.array_equal(flipped, expected_image):
            row, column = (int(i) for i in np.argwhere((flipped != expected_image).any(axis=-1))[0])
            mirrored, pixel = image.shape[1] - 1 - column, flipped[row, column]
            shown = (np.round(pixel.astype(np.float64), 4) if pixel.dtype.kind == "f" else pixel).tolist()
            c.fail("flipped image", f"pixel (row {row}, column {column}) of your image is {shown}, not pixel "
                   f"(row {row}, column {mirrored}) of the input {image[row, mirrored].tolist()}",
                   "mirror left-right: reverse axis 1 of (H, W, 3)")
        c.expect_type(f"caption for {caption!r}", got[1], str, hint="return the new caption as a string")
        expected_caption = _flipped_caption(caption)
        if got[1] != expected_caption:
            words, expected_words = got[1].split(" "), expected_caption.split(" ")
            if len(words) != len(expected_words):
                c.fail(f"caption {caption!r}", f"got {got[1]!r}, which has {len(words)} words instead of "
                       f"{len(expected_words)}", "change only the words 'left' and 'right'; keep the others")
            i = next(i for i, (a, b) in enumerate(zip(words, expected_words)) if a != b)
            c.fail(f"caption {caption!r}", f"got {got[1]!r}: word {i} is {words[i]!r}, which is not the caption of "
                   "the mirrored image", "every 'left' becomes 'right' and every 'right' becomes 'left', both at "
                   "once; other words stay as they are")
        c.passed.append(f"caption {caption!r}")


# --------------------------------------------------------------------------- 01.encode

_TOKENS = ("<pad>", "<unk>", "<bos>", "<eos>", "a", "is", "red", "circle", "the", "?", "what", "color", "there")
_TEXTS = ("there is a red circle", "What color is the circle?", "a purple circle", "A RED Circle",
          "a red circle is a red circle", "a purple circle and a purple square", "", "there is a red circle, a square.")


def _vocabularies() -> list[tuple[str, dict]]:
    """The lesson's order (<unk> = 1), and the same words in another order (<unk> = 7)."""
    shuffled = _TOKENS[4:11] + ("<unk>",) + _TOKENS[11:] + _TOKENS[:1] + _TOKENS[2:4]
    return [("a vocabulary with <unk> = 1", {t: i for i, t in enumerate(_TOKENS)}),
            ("a vocabulary with <unk> = 7", {t: i for i, t in enumerate(shuffled)})]


def _reference_encode(text: str, token_to_id: dict) -> list[int]:
    return [token_to_id.get(w, token_to_id["<unk>"]) for w in preprocessing.split_words(text)]


@exercise(
    "01.encode",
    reference=_reference_encode,
    mistakes={
        "drops unknown words": lambda text, vocab: [vocab[w] for w in preprocessing.split_words(text) if w in vocab],
        "does not lower-case or split punctuation": lambda text, vocab: [vocab.get(w, 1) for w in text.split()],
        "maps unknown words to padding": lambda text, vocab: [vocab.get(w, 0) for w in preprocessing.split_words(text)],
        "<unk> hard-coded as 1": lambda text, vocab: [vocab.get(w, 1) for w in preprocessing.split_words(text)],
        "one id per distinct word (a set)": lambda text, vocab: [vocab.get(w, vocab["<unk>"]) for w in
                                                                 dict.fromkeys(preprocessing.split_words(text))],
        "adds <bos> and <eos>":
            lambda text, vocab: [vocab["<bos>"]] + _reference_encode(text, vocab) + [vocab["<eos>"]],
        "position of the word instead of its id": lambda text, vocab: list(range(len(preprocessing.split_words(text)))),
        "splits off the question mark only":
            lambda text, vocab: [vocab.get(w, vocab["<unk>"]) for w in text.lower().replace("?", " ?").split()],
    },
)
def _check_encode(c: Checker) -> None:
    split = {text: preprocessing.split_words(text) for text in _TEXTS}   # before the learner's code runs
    for name, vocabulary in _vocabularies():
        for text in _TEXTS:
            words = split[text]
            what = f"ids of {text!r} with {name}"
            got = c.call(text, dict(vocabulary), read_only=True)
            c.expect_type(what, got, (list, tuple, np.ndarray), hint="return a list of ints, one per word")
            got = list(got.reshape(-1)) if isinstance(got, np.ndarray) else list(got)
            if not all(isinstance(i, (int, np.integer)) and not isinstance(i, (bool, np.bool_)) for i in got):
                c.fail(what, f"expected ints, got {got!r}"[:200], "each id is an int from token_to_id")
            got = [int(i) for i in got]
            expected = [vocabulary.get(w, vocabulary["<unk>"]) for w in words]
            if len(got) != len(expected):
                hint = "one id per word or punctuation mark of preprocessing.split_words(text)"
                unknown = vocabulary["<unk>"]
                if sorted(got) == sorted(vocabulary.get(w, unknown) for w in set(words)) != sorted(expected):
                    hint += "; a word that repeats gets its id every time it occurs"
                elif sorted(got) == sorted(vocabulary[w] for w in words if w in vocabulary):
                    hint += "; unknown words still get an id (the id of <unk>)"
                c.fail(what, f"expected {len(expected)} ids, got {len(got)}", hint)
            i = next((i for i, (a, b) in enumerate(zip(got, expected)) if a != b), None)
            if i is not None:
                known = words[i] in vocabulary
                c.fail(what, f"at position {i}, the {'word' if known else 'unknown word'} {words[i]!r}, you gave "
                       f"id {got[i]}", "look each word up in token_to_id" if known else
                       "a word missing from token_to_id gets token_to_id['<unk>'], whatever that id is")
            c.passed.append(what)


# --------------------------------------------------------------------------- 01.pad_with_mask

_PAD_CASES = ([[5, 6, 7], [8], [9, 10]], [[4]], [[2, 4, 5, 6, 3], [2, 3]], [[1], [2, 3, 4], [5, 6]],
              [[7, 8], [9, 10, 11, 12]], [[1, 2], [3, 4]])


def _drawn_batches(count: int = 6) -> list[list[list[int]]]:
    from hypothesis import strategies as st
    row = st.lists(st.integers(1, 99), min_size=1, max_size=6)
    return draw_cases(st.lists(row, min_size=1, max_size=5), count)


def _padded(sequences):
    length = max(len(s) for s in sequences)
    ids = np.zeros((len(sequences), length), np.int32)
    mask = np.zeros((len(sequences), length), bool)
    for row, seq in enumerate(sequences):
        ids[row, :len(seq)] = seq
        mask[row, :len(seq)] = True
    return ids, mask


def _padded_then(change):
    return lambda seqs: change(*preprocessing.pad_sequences(seqs))


def _pad_to_first(seqs):
    length = len(seqs[0])
    ids = np.array([list(s[:length]) + [0] * (length - len(s[:length])) for s in seqs], np.int32)
    return ids, np.array([[t < len(s) for t in range(length)] for s in seqs])


@exercise(
    "01.pad_with_mask",
    reference=lambda sequences: preprocessing.pad_sequences(sequences),
    mistakes={
        "pads on the left":
            lambda seqs: tuple(a[:, ::-1] for a in preprocessing.pad_sequences([s[::-1] for s in seqs])),
        "mask is True on padding": _padded_then(lambda ids, mask: (ids, ~mask)),
        "mask as 0/1 integers": _padded_then(lambda ids, mask: (ids, mask.astype(np.int32))),
        "ids as int64 from np.array": _padded_then(lambda ids, mask: (ids.astype(np.int64), mask)),
        "pads to the length of the first sequence": _pad_to_first,
        "mask one position too short": _padded_then(lambda ids, mask: (ids, mask & np.roll(mask, -1, axis=1))),
        "pads with -1": _padded_then(lambda ids, mask: (np.where(mask, ids, -1).astype(np.int32), mask)),
        "returns a dict": _padded_then(lambda ids, mask: {"ids": ids, "mask": mask}),
    },
)
def _check_pad_with_mask(c: Checker) -> None:
    for sequences in list(_PAD_CASES) + _drawn_batches():
        what = f"padding of {sequences}"
        got = c.call([list(s) for s in sequences], read_only=True)
        if not (isinstance(got, tuple) and len(got) == 2):
            c.fail(what, f"expected a tuple (ids, mask), got {type(got).__name__}", "return `ids, mask`")
        ids, mask = _padded(sequences)
        longest = max(range(len(sequences)), key=lambda row: len(sequences[row]))
        for name, value, expected, dtype in (("ids", got[0], ids, np.int32), ("mask", got[1], mask, bool)):
            shape = tuple(np.shape(value)) if hasattr(value, "shape") else None
            hint = "the shape is (number of sequences, length of the longest one)"
            if shape is not None and len(shape) == 2 and shape[1] == len(sequences[0]) != ids.shape[1]:
                hint = (f"T is the length of the longest sequence, which here is row {longest}, not the first "
                        "row")
            array = c.expect_array(f"{name} of {what}", value, expected.shape, hint=hint)
            if array.dtype != np.dtype(dtype):
                c.fail(f"{name} of {what}", f"expected dtype {np.dtype(dtype)}, got {array.dtype}",
                       "ids are int32 (np.zeros(..., np.int32)); the mask is bool (True on real tokens)")
        for name, value, expected, hint in (
                ("mask", got[1], mask, "True where there is a real token, False on the padding after it"),
                ("ids", got[0], ids, "keep the tokens at the start of their row and pad on the right with 0")):
            array = np.asarray(value)
            if not np.array_equal(array, expected):
                row, column = (int(i) for i in np.argwhere(array != expected)[0])
                tokens = f"{len(sequences[row])} token{'s' if len(sequences[row]) > 1 else ''}"
                c.fail(f"{name} of {what}", f"at row {row}, position {column} (row {row} has {tokens}), expected "
                       f"{expected[row, column].item()!r}, got {array[row, column].item()!r}", hint)
            c.passed.append(f"{name} of {what}")
