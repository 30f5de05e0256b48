"""Lesson 01: turning images and text into tensors a model can use.

Images: validation, uint8 -> float32 in [0, 1], per-channel standardisation, resizing and
a caption-preserving horizontal flip. Text: a word-level `Tokenizer` with special tokens,
encode / decode, padding with a mask. A `tf.data` pipeline puts them together.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

PAD, UNK, BOS, EOS = "<pad>", "<unk>", "<bos>", "<eos>"
SPECIAL_TOKENS = (PAD, UNK, BOS, EOS)  # ids 0, 1, 2, 3, as in Keras TextVectorization (0 pad, 1 unk)
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)


# --------------------------------------------------------------------------- images


def validate_image(image, name: str = "image") -> np.ndarray:
    """Check that ``image`` is an RGB image array: shape (H, W, 3) or a batch
    (N, H, W, 3), dtype uint8, or float in [0, 1]. Returns it as a NumPy array.

    Raises a ValueError / TypeError naming what was expected and what was received.
    """
    array = np.asarray(image)
    if array.ndim not in (3, 4):
        hint = " (a grayscale image? stack it to 3 channels: np.stack([img] * 3, axis=-1))" if array.ndim == 2 else ""
        raise ValueError(f"{name}: expected shape (H, W, 3) or (N, H, W, 3), got shape {array.shape}{hint}.")
    channels = array.shape[-1]
    if channels != 3:
        hint = {4: " (RGBA? drop alpha with image[..., :3] or PIL's .convert('RGB'))",
                1: " (grayscale? repeat it to 3 channels)"}.get(channels, " (channels must be last)")
        raise ValueError(f"{name}: expected 3 colour channels (RGB) in the last axis, got {channels}{hint}.")
    if array.dtype == np.uint8:
        return array
    if np.issubdtype(array.dtype, np.floating):
        if array.size and (np.nanmin(array) < 0.0 or np.nanmax(array) > 1.0):
            raise ValueError(f"{name}: a float image must hold values in [0, 1], got range "
                             f"[{np.nanmin(array):.3g}, {np.nanmax(array):.3g}] (divide uint8 pixels by 255).")
        if np.isnan(array).any():
            raise ValueError(f"{name}: contains NaN values.")
        return array
    raise TypeError(f"{name}: expected dtype uint8 (0-255) or float in [0, 1], got {array.dtype}.")


def to_float_image(image) -> np.ndarray:
    """uint8 (..., H, W, 3) in [0, 255] -> float32 in [0, 1]. Float input in [0, 1] passes."""
    array = validate_image(image)
    if array.dtype == np.uint8:
        return array.astype(np.float32) / 255.0
    return array.astype(np.float32)


def standardize_image(image, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> np.ndarray:
    """(image - mean) / std per channel. Input uint8 or float in [0, 1]; output float32,
    same shape; ``mean`` and ``std`` have shape (3,)."""
    return (to_float_image(image) - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)


def resize_image(image, size: int | tuple[int, int]) -> np.ndarray:
    """Resize one uint8 (H, W, 3) image to ``size`` (int or (height, width)), bilinear."""
    from PIL import Image

    array = validate_image(image)
    if array.ndim != 3 or array.dtype != np.uint8:
        raise ValueError(f"resize_image expects one uint8 image (H, W, 3), got shape {array.shape} dtype {array.dtype}.")
    height, width = (size, size) if isinstance(size, int) else size
    return np.asarray(Image.fromarray(array).resize((width, height), Image.BILINEAR))


def load_image(path, size: int | tuple[int, int] | None = None) -> np.ndarray:
    """Decode an image file into uint8 (H, W, 3), optionally resized.

    Only RGB files are accepted as they are: an RGBA, palette or grayscale file raises a
    ValueError that says how to convert it (``Image.open(path).convert("RGB")``).
    """
    from PIL import Image

    with Image.open(path) as img:
        if img.mode != "RGB":
            raise ValueError(f"{path}: expected an RGB image, got mode {img.mode!r}; convert it first "
                             f"with PIL: Image.open(path).convert('RGB').")
        array = np.asarray(img)
    return array if size is None else resize_image(array, size)


FLIP_WORDS = {"left": "right", "right": "left"}


def flip_caption(caption: str) -> str:
    """Swap the words "left" and "right" so a caption stays true of a mirrored image."""
    return " ".join(FLIP_WORDS.get(word, word) for word in caption.split(" "))


def hflip_with_caption(image, caption: str) -> tuple[np.ndarray, str]:
    """Mirror an (H, W, 3) image left-right and fix its caption to match."""
    array = validate_image(image)
    if array.ndim != 3:
        raise ValueError(f"hflip_with_caption expects one image (H, W, 3), got shape {array.shape}.")
    return array[:, ::-1, :], flip_caption(caption)


# --------------------------------------------------------------------------- text

_TOKEN_PATTERN = re.compile(r"<[a-z]+>|[a-z0-9]+|[^\sa-z0-9]")


def split_words(text: str) -> list[str]:
    """Lower-case and split into words and punctuation: "Is it red?" -> [is, it, red, ?].
    Special tokens such as ``<image>`` stay whole."""
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}.")
    return _TOKEN_PATTERN.findall(text.lower())


class Tokenizer:
    """A word-level tokenizer with a fixed vocabulary.

    Ids 0-3 are ``<pad>``, ``<unk>``, ``<bos>``, ``<eos>`` (plus any ``extra_special``
    tokens after them), then the words. Unknown words map to ``<unk>``.
    """

    def __init__(self, words: Iterable[str], extra_special: Sequence[str] = ()):
        tokens = list(SPECIAL_TOKENS) + [t for t in extra_special if t not in SPECIAL_TOKENS]
        tokens += [w for w in words if w not in tokens]
        self.id_to_token: list[str] = tokens
        self.token_to_id: dict[str, int] = {t: i for i, t in enumerate(tokens)}
        self.special_ids = frozenset(range(len(SPECIAL_TOKENS) + len(extra_special)))

    pad_id, unk_id, bos_id, eos_id = 0, 1, 2, 3

    @classmethod
    def from_texts(cls, texts: Iterable[str], min_count: int = 1, extra_special: Sequence[str] = ()) -> "Tokenizer":
        """Build the vocabulary from a corpus: words seen at least ``min_count`` times,
        most frequent first (ties alphabetical, so the result is deterministic)."""
        counts = Counter(word for text in texts for word in split_words(text))
        ranked = sorted((w for w, c in counts.items() if c >= min_count), key=lambda w: (-counts[w], w))
        return cls(ranked, extra_special)

    @classmethod
    def for_shapeworld(cls, extra_special: Sequence[str] = ()) -> "Tokenizer":
        """The closed vocabulary of the ShapeWorld grammar."""
        from mmlm_course import shapeworld

        return cls(shapeworld.vocabulary(), extra_special)

    def __len__(self) -> int:
        return len(self.id_to_token)

    @property
    def vocab_size(self) -> int:
        return len(self.id_to_token)

    def encode(self, text: str, add_bos: bool = False, add_eos: bool = False) -> list[int]:
        """Text -> list of int ids. Empty or blank text raises a ValueError."""
        words = split_words(text)
        if not words:
            raise ValueError(f"Cannot encode empty text {text!r}: give at least one word.")
        ids = [self.token_to_id.get(word, self.unk_id) for word in words]
        return ([self.bos_id] if add_bos else []) + ids + ([self.eos_id] if add_eos else [])

    def decode(self, ids: Iterable[int], skip_special: bool = True) -> str:
        """Ids -> text; stops at the first ``<eos>`` when ``skip_special`` is True."""
        words = []
        for i in np.asarray(list(ids), dtype=np.int64).tolist():
            if not 0 <= i < len(self.id_to_token):
                raise ValueError(f"Token id {i} is outside the vocabulary [0, {len(self.id_to_token)}).")
            if skip_special and i == self.eos_id:
                break
            if skip_special and i in self.special_ids:
                continue
            words.append(self.id_to_token[i])
        return " ".join(words).replace(" ?", "?")

    def encode_batch(self, texts: Sequence[str], max_length: int | None = None,
                     add_bos: bool = False, add_eos: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Encode and pad: returns ids int32 (B, T) and mask bool (B, T)."""
        return pad_sequences([self.encode(t, add_bos, add_eos) for t in texts], max_length, self.pad_id)

    def save(self, path) -> None:
        """Write the vocabulary as JSON (a list of tokens)."""
        Path(path).write_text(json.dumps({"tokens": self.id_to_token}, indent=0))

    @classmethod
    def load(cls, path) -> "Tokenizer":
        tokens = json.loads(Path(path).read_text())["tokens"]
        if tokens[: len(SPECIAL_TOKENS)] != list(SPECIAL_TOKENS):
            raise ValueError(f"{path}: not a course vocabulary (it must start with {SPECIAL_TOKENS}).")
        n_special = next((i for i, t in enumerate(tokens) if not (t.startswith("<") and t.endswith(">"))), len(tokens))
        return cls(tokens[n_special:], tokens[len(SPECIAL_TOKENS):n_special])


def pad_sequences(sequences: Sequence[Sequence[int]], max_length: int | None = None,
                  pad_id: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Right-pad (or truncate) integer sequences to one length.

    Returns ``ids`` int32 (B, T) and ``mask`` bool (B, T), True on real tokens. T is
    ``max_length`` or the longest sequence. An empty list of sequences or an empty
    sequence raises a ValueError (a zero-length row would make every later loss NaN).
    """
    if len(sequences) == 0:
        raise ValueError("pad_sequences got no sequences; expected a non-empty list of id lists.")
    lengths = [len(s) for s in sequences]
    if min(lengths) == 0:
        raise ValueError(f"sequence {lengths.index(0)} is empty; every sequence needs at least one token.")
    length = max(lengths) if max_length is None else max_length
    ids = np.full((len(sequences), length), pad_id, np.int32)
    mask = np.zeros((len(sequences), length), bool)
    for row, seq in enumerate(sequences):
        kept = list(seq)[:length]
        ids[row, : len(kept)] = kept
        mask[row, : len(kept)] = True
    return ids, mask


# --------------------------------------------------------------------------- tf.data


def make_image_text_dataset(images: np.ndarray, token_ids: np.ndarray, batch_size: int = 64,
                            shuffle: bool = True, seed: int = 0, cache: bool = True):
    """A `tf.data.Dataset` of ``(image float32 (B, H, W, 3) in [0, 1], ids int32 (B, T))``.

    Order matters: cache the decoded data, map the cheap per-example work, shuffle
    examples (not batches), batch, and prefetch so the next batch is ready while the
    model trains on this one.
    """
    import tensorflow as tf

    validate_image(images, "images")
    if len(images) != len(token_ids):
        raise ValueError(f"images and token_ids must have the same batch size, got {len(images)} images "
                         f"and {len(token_ids)} token rows.")
    dataset = tf.data.Dataset.from_tensor_slices((images, token_ids))
    if cache:
        dataset = dataset.cache()
    dataset = dataset.map(lambda image, ids: (tf.cast(image, tf.float32) / 255.0, ids),
                          num_parallel_calls=tf.data.AUTOTUNE)
    if shuffle:
        dataset = dataset.shuffle(len(images), seed=seed, reshuffle_each_iteration=True)
    return dataset.batch(batch_size).prefetch(tf.data.AUTOTUNE)
