"""Checks for lesson 01: image and text preprocessing."""

from __future__ import annotations

import numpy as np

from mmlm_course import preprocessing, shapeworld
from mmlm_course.exercises import Checker, exercise


def _images(seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    images = [rng.integers(0, 256, size=(8, 6, 3), dtype=np.uint8)]
    images.append(np.array([[[0, 128, 255]]], np.uint8))  # extremes and the middle
    images.append(shapeworld.generate(2, "validation", seed=3).images)  # a batch (2, 64, 64, 3)
    return images


@exercise(
    "01.to_float_image",
    reference=preprocessing.to_float_image,
    mistakes={
        "forgets to divide by 255": lambda img: img.astype(np.float32),
        "divides by 256": lambda img: img.astype(np.float32) / 256.0,
        "integer division": lambda img: (img // 255).astype(np.float32),
        "leaves float64": lambda img: img / 255.0,
    },
)
def _check_to_float_image(c: Checker) -> None:
    for image in _images():
        got = c.call(image)
        c.expect_array("float image", got, image.shape, np.float32,
                       hint="keep the shape and return float32: image.astype(np.float32)")
        c.expect_close("float image", got, image.astype(np.float64) / 255.0,
                       hint="0 must map to 0.0 and 255 to exactly 1.0")


_FLIP_CAPTIONS = ["a large red circle is to the left of a small blue square",
                  "a small green triangle is to the right of a large red square",
                  "there is a small yellow circle",
                  "a blue square is above a red circle"]


@exercise(
    "01.hflip_with_caption",
    reference=preprocessing.hflip_with_caption,
    mistakes={
        "flips the image but not the caption": lambda img, cap: (img[:, ::-1], cap),
        "flips upside down": lambda img, cap: (img[::-1], preprocessing.flip_caption(cap)),
        "replaces left by right but not back": lambda img, cap: (img[:, ::-1], cap.replace("left", "right")),
    },
)
def _check_hflip_with_caption(c: Checker) -> None:
    rng = np.random.default_rng(1)
    for caption in _FLIP_CAPTIONS:
        image = rng.integers(0, 256, size=(5, 7, 3), dtype=np.uint8)
        got = c.call(image, caption)
        if not (isinstance(got, tuple) and len(got) == 2):
            c.fail("result", f"expected a tuple (image, caption), got {type(got).__name__}",
                   "return both: `return flipped_image, new_caption`")
        expected_image, expected_caption = preprocessing.hflip_with_caption(image, caption)
        c.expect_array("flipped image", got[0], image.shape)
        if np.array_equal(np.asarray(got[0]), image[::-1]):
            c.fail("flipped image", "the image is mirrored top-bottom", "a horizontal flip reverses the width axis (axis 1)")
        c.expect_equal("flipped image", np.asarray(got[0]), expected_image,
                       "mirror left-right: reverse axis 1 of (H, W, 3)")
        if got[1] != expected_caption:
            c.fail(f"caption {caption!r}", f"got {got[1]!r}, which is not the caption of the mirrored image",
                   "swap 'left' and 'right' both ways at once, word by word; other words stay")
        c.passed.append("caption")


_VOCAB = {token: i for i, token in enumerate(
    ["<pad>", "<unk>", "<bos>", "<eos>", "a", "is", "red", "circle", "the", "?", "what", "color", "there"])}


def _reference_encode(text: str, token_to_id: dict) -> list[int]:
    return [token_to_id.get(w, token_to_id["<unk>"]) for w in preprocessing.split_words(text)]


@exercise(
    "01.encode",
    reference=_reference_encode,
    mistakes={
        "drops unknown words": lambda text, vocab: [vocab[w] for w in preprocessing.split_words(text) if w in vocab],
        "does not lower-case or split punctuation": lambda text, vocab: [vocab.get(w, 1) for w in text.split()],
        "maps unknown words to padding": lambda text, vocab: [vocab.get(w, 0) for w in preprocessing.split_words(text)],
    },
)
def _check_encode(c: Checker) -> None:
    cases = ["there is a red circle", "What color is the circle?", "a purple circle", "A RED Circle"]
    for text in cases:
        got = c.call(text, dict(_VOCAB))
        c.expect_type(f"ids of {text!r}", got, (list, tuple, np.ndarray))
        got = [int(i) for i in got]
        expected = _reference_encode(text, _VOCAB)
        if len(got) != len(expected):
            c.fail(f"ids of {text!r}", f"expected {len(expected)} ids, got {len(got)}",
                   "one id per word or punctuation mark; unknown words still get an id (<unk> = 1)")
        c.expect_equal(f"ids of {text!r}", got, expected,
                       "lower-case and split with preprocessing.split_words; unknown words map to <unk>")


@exercise(
    "01.pad_with_mask",
    reference=lambda sequences: preprocessing.pad_sequences(sequences),
    mistakes={
        "pads on the left": lambda seqs: tuple(a[:, ::-1] for a in preprocessing.pad_sequences([s[::-1] for s in seqs])),
        "mask is True on padding": lambda seqs: (preprocessing.pad_sequences(seqs)[0], ~preprocessing.pad_sequences(seqs)[1]),
        "mask as 0/1 integers": lambda seqs: (preprocessing.pad_sequences(seqs)[0], preprocessing.pad_sequences(seqs)[1].astype(np.int32)),
        "ids as int64 from np.array": lambda seqs: (preprocessing.pad_sequences(seqs)[0].astype(np.int64), preprocessing.pad_sequences(seqs)[1]),
    },
)
def _check_pad_with_mask(c: Checker) -> None:
    cases = [[[5, 6, 7], [8], [9, 10]], [[4]], [[2, 4, 5, 6, 3], [2, 3]]]
    for sequences in cases:
        got = c.call([list(s) for s in sequences])
        if not (isinstance(got, tuple) and len(got) == 2):
            c.fail("result", f"expected a tuple (ids, mask), got {type(got).__name__}", "return `ids, mask`")
        ids, mask = preprocessing.pad_sequences(sequences)
        c.expect_array("ids", got[0], ids.shape, np.int32, hint="pad to the longest sequence; ids are int32")
        c.expect_array("mask", got[1], mask.shape, bool, hint="the mask is boolean: True on real tokens")
        c.expect_equal("mask", np.asarray(got[1]), mask, "True where there is a real token, False on padding")
        c.expect_equal("ids", np.asarray(got[0]), ids, "keep the tokens at the start and pad on the right with pad_id 0")
