"""Lesson 01: turning images and text into tensors a model can use.

Images: validation, uint8 -> float32 in [0, 1], per-channel standardisation (the course's
one set of pixel statistics: `IMAGENET_MEAN` / `IMAGENET_STD` for photos,
`SHAPEWORLD_MEAN` / `SHAPEWORLD_STD` for ShapeWorld), resizing and a caption-preserving
horizontal flip. Text: a word-level `Tokenizer` with special tokens (the one tokenizer of
the course: `Tokenizer.for_shapeworld` for ShapeWorld, `Tokenizer.from_texts` for your own
data), encode / decode, `Tokenizer.encode_batch` for many texts, padding with a mask.
Sub-words: a small byte-pair-encoding learner (`learn_bpe`, `bpe_segment`) that shows how
large language models avoid unknown words. A `tf.data` pipeline puts them together.
"""

from __future__ import annotations

import json
import re
import warnings
from collections import Counter
from typing import Iterable, Sequence

import numpy as np

from mmlm_course.validation import (int_tuple, positive_int, require_array_budget, require_bool, require_choice,
                                    require_file, require_int, require_path, require_str, write_error)

PAD, UNK, BOS, EOS = "<pad>", "<unk>", "<bos>", "<eos>"
SPECIAL_TOKENS = (PAD, UNK, BOS, EOS)  # ids 0, 1, 2, 3, as in Keras TextVectorization (0 pad, 1 unk)

# Per-channel (R, G, B) pixel statistics of images in [0, 1]: the course's ONE place for them.
IMAGENET_MEAN = (0.485, 0.456, 0.406)   # photos: the statistics of ImageNet
IMAGENET_STD = (0.229, 0.224, 0.225)
SHAPEWORLD_MEAN = (0.896, 0.875, 0.863)  # ShapeWorld: mostly light background
SHAPEWORLD_STD = (0.13, 0.16, 0.204)
UNKNOWN_WORDS = ("error", "warn", "unk")  # what `Tokenizer.encode` does with a word outside its vocabulary


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
    if 0 in array.shape[-3:-1]:
        raise ValueError(f"{name}: expected an image at least 1 pixel high and wide, got shape {array.shape}.")
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
    stats = {}
    for name, value in (("mean", mean), ("std", std)):
        try:
            array = np.asarray(value, np.float32)
        except (TypeError, ValueError):
            raise TypeError(f"{name}: expected 3 numbers, one per channel, got {value!r}.") from None
        if array.shape != (3,) or not np.isfinite(array).all():
            raise ValueError(f"{name}: expected 3 finite numbers, one per channel (e.g. preprocessing.IMAGENET_"
                             f"{name.upper()}), got {value!r}.")
        stats[name] = array
    if ((stats["mean"] < 0) | (stats["mean"] > 1)).any():
        raise ValueError(f"mean: expected channel means in [0, 1] (images are scaled to [0, 1] first), got {mean!r}; "
                         "means of 0-255 pixels? divide them by 255.")
    if (stats["std"] <= 0).any():
        raise ValueError(f"std: every channel's standard deviation must be > 0, got {std!r}.")
    return (to_float_image(image) - stats["mean"]) / stats["std"]


def resize_image(image, size: int | tuple[int, int]) -> np.ndarray:
    """Resize one uint8 (H, W, 3) image to ``size`` (int or (height, width)), bilinear."""
    from PIL import Image

    array = validate_image(image)
    if array.ndim != 3 or array.dtype != np.uint8:
        raise ValueError(f"resize_image expects one uint8 image (H, W, 3), got shape {array.shape} dtype {array.dtype}.")
    size = int_tuple(size, "size")
    if len(size) > 2 or max(size) > 16384:
        raise ValueError(f"size: expected an int or (height, width), each in [1, 16384], got {size}.")
    height, width = size * 2 if len(size) == 1 else size
    return np.asarray(Image.fromarray(array).resize((width, height), Image.BILINEAR))


def load_image(path, size: int | tuple[int, int] | None = None) -> np.ndarray:
    """Decode an image file into uint8 (H, W, 3) RGB, optionally resized (bilinear).

    Every common mode is converted: greyscale and palette images become three equal or
    looked-up channels, CMYK and YCbCr are converted, transparent pixels (RGBA, LA, a
    palette with transparency) are laid over white, and 16-bit or 32-bit greyscale is scaled
    from its own range (0..65535) to 0..255 rather than clipped; a photo's EXIF orientation
    is applied and an animated image gives its first frame. Raises FileNotFoundError
    for a missing file and ValueError, naming the file, for a folder, an empty or truncated
    file, or anything that is not an image.
    """
    from PIL import Image, ImageOps

    path = require_file(path, "image")
    try:
        with Image.open(path) as img:
            img.load()
            array = _to_rgb(ImageOps.exif_transpose(img))       # a photo's EXIF orientation, as viewers show it
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:   # empty, truncated, no image
        raise ValueError(f"{path} is not a readable image ({type(error).__name__}: {error}); expected a complete "
                         "image file Pillow can open (PNG, JPEG, ...): copy or download it again.") from None
    return array if size is None else resize_image(array, size)


def _to_rgb(img) -> np.ndarray:
    """A Pillow image of any mode -> uint8 (H, W, 3)."""
    from PIL import Image

    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):       # 16 / 32-bit integer or float greyscale
        values = np.asarray(img, dtype=np.float64)
        if img.mode == "F":
            top = 1.0 if values.max(initial=0.0) <= 1.0 else 255.0
        else:
            top = 65535.0 if img.mode.startswith("I;16") or values.max(initial=0.0) > 255 else 255.0
        grey = np.clip(np.round(values / top * 255.0), 0, 255).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=-1)
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(white, rgba).convert("RGB"))
    return np.asarray(img.convert("RGB"))


FLIP_WORDS = {"left": "right", "right": "left"}


def flip_caption(caption: str) -> str:
    """Swap the words "left" and "right" so a caption stays true of a mirrored image."""
    if not isinstance(caption, str):
        raise TypeError(f"caption: expected a str, got {type(caption).__name__} {caption!r}.")
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
    tokens after them), then the words.

    ``unknown`` says what `encode` does with a word that is not in the vocabulary:
    ``"error"`` (the default for a vocabulary you give, such as `for_shapeworld`) raises a
    ValueError naming the words, so text from another dataset never turns into ``<unk>``
    without a word; ``"warn"`` maps them to ``<unk>`` with a warning naming them; ``"unk"``
    maps them to ``<unk>`` quietly (the default of `from_texts`, whose ``min_count`` leaves
    rare words out on purpose). Each `encode` / `encode_batch` call may override it.
    """

    pad_id, unk_id, bos_id, eos_id = 0, 1, 2, 3

    def __init__(self, words: Iterable[str], extra_special: Sequence[str] = (), unknown: str = "error"):
        if isinstance(words, str) or isinstance(extra_special, str):
            raise TypeError("words and extra_special must be lists of strings, got one str; wrap it in a list.")
        words, extra_special = list(words), list(extra_special)
        for i, token in enumerate(extra_special + words):
            require_str(token, f"extra_special[{i}]" if i < len(extra_special) else f"words[{i - len(extra_special)}]")
        if not words:
            raise ValueError("words is empty: a tokenizer needs at least one word (from_texts: lower min_count).")
        tokens = list(SPECIAL_TOKENS) + [t for t in extra_special if t not in SPECIAL_TOKENS]
        tokens += [w for w in words if w not in tokens]
        self.id_to_token: list[str] = tokens
        self.token_to_id: dict[str, int] = {t: i for i, t in enumerate(tokens)}
        self.special_ids = frozenset(range(len(SPECIAL_TOKENS) + len(extra_special)))
        self.unknown = require_choice(unknown, UNKNOWN_WORDS, "unknown")

    @classmethod
    def from_texts(cls, texts: Iterable[str], min_count: int = 1, extra_special: Sequence[str] = (),
                   unknown: str = "unk") -> "Tokenizer":
        """Build the vocabulary from a corpus (e.g. the captions and questions of your own
        dataset): words seen at least ``min_count`` times, most frequent first (ties
        alphabetical, so the result is deterministic). Rarer and unseen words encode as
        ``<unk>`` (``unknown="unk"``; pass ``"warn"`` or ``"error"`` to hear about them)."""
        if isinstance(texts, str):
            raise TypeError("texts must be a list of strings, got one str; wrap it in a list.")
        texts = list(texts)
        if not texts:
            raise ValueError("texts is empty: give the captions / questions / answers to build the vocabulary from.")
        min_count = require_int(min_count, "min_count", low=1)
        counts = Counter(word for text in texts for word in split_words(text))
        ranked = sorted((w for w, c in counts.items() if c >= min_count), key=lambda w: (-counts[w], w))
        if not ranked:
            raise ValueError(f"no word occurs at least min_count={min_count} times in the {len(texts)} texts; "
                             "lower min_count (or check that the texts are not empty).")
        return cls(ranked, extra_special, unknown)

    @classmethod
    def for_shapeworld(cls, extra_special: Sequence[str] = (), unknown: str = "error") -> "Tokenizer":
        """The closed vocabulary of the ShapeWorld grammar (the one tokenizer factory of the
        ShapeWorld lessons; pass a module's task tokens as ``extra_special``). A word the
        grammar never uses raises a ValueError naming it (see ``unknown``)."""
        from mmlm_course import shapeworld

        return cls(shapeworld.vocabulary(), extra_special, unknown)

    def __len__(self) -> int:
        return len(self.id_to_token)

    @property
    def vocab_size(self) -> int:
        return len(self.id_to_token)

    def unknown_words(self, texts: Sequence[str]) -> Counter:
        """The words of ``texts`` (a str or a list of them) that are not in the vocabulary,
        with their counts."""
        texts = [texts] if isinstance(texts, str) else texts
        return Counter(w for text in texts for w in split_words(text) if w not in self.token_to_id)

    def _handle_unknown(self, texts: Sequence[str], unknown: str | None) -> None:
        policy = self.unknown if unknown is None else require_choice(unknown, UNKNOWN_WORDS, "unknown")
        if policy == "unk":
            return
        missing = self.unknown_words(texts)
        if not missing:
            return
        total, count = sum(len(split_words(t)) for t in texts), sum(missing.values())
        shown = ", ".join(f"{w!r} ({c})" for w, c in missing.most_common(10))
        more = f" and {len(missing) - 10} more" if len(missing) > 10 else ""
        message = (f"{count} of the {total} words {'is' if count == 1 else 'are'} not in the vocabulary "
                   f"({len(self)} tokens): {shown}{more}.")
        if policy == "warn":
            warnings.warn(message + " They become <unk>.", stacklevel=3)
            return
        raise ValueError(message + " Build a vocabulary from your own texts (Tokenizer.from_texts(texts)) or map "
                         "them to <unk> on purpose with unknown='unk'.")

    def encode(self, text: str, add_bos: bool = False, add_eos: bool = False, unknown: str | None = None) -> list[int]:
        """Text -> list of int ids, with ``<bos>`` / ``<eos>`` around it if asked. Empty or
        blank text raises a ValueError; unknown words follow ``unknown`` (None: the
        tokenizer's own setting, see the class docstring)."""
        add_bos, add_eos = require_bool(add_bos, "add_bos"), require_bool(add_eos, "add_eos")
        words = split_words(text)
        if not words:
            raise ValueError(f"Cannot encode empty text {text!r}: give at least one word.")
        self._handle_unknown([text], unknown)
        ids = [self.token_to_id.get(word, self.unk_id) for word in words]
        return ([self.bos_id] if add_bos else []) + ids + ([self.eos_id] if add_eos else [])

    def encode_batch(self, texts: Sequence[str], max_length: int | None = None, add_bos: bool = False,
                     add_eos: bool = False, unknown: str | None = None) -> np.ndarray:
        """Encode many texts into one int32 array (N, L), right-padded with ``<pad>`` (0).

        L is ``max_length`` (longer texts are truncated at the end, ``<eos>`` included) or
        the longest text. The mask of real tokens is ``ids != tokenizer.pad_id``. Unknown
        words are reported for the whole batch at once (see ``unknown``).
        """
        if isinstance(texts, str):
            raise TypeError("texts: expected a list of strings, got one str; wrap it: [text].")
        texts = list(texts)
        if max_length is not None:
            max_length = positive_int(max_length, "max_length")
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"texts[{i}] must be a str, got {type(text).__name__}.")
        self._handle_unknown(texts, unknown)
        ids, _ = pad_sequences([self.encode(t, add_bos, add_eos, unknown="unk") for t in texts], max_length,
                               self.pad_id)
        return ids

    def decode(self, ids: Iterable[int], skip_special: bool = True) -> str:
        """Ids -> text; stops at the first ``<eos>`` when ``skip_special`` is True."""
        skip_special, words = require_bool(skip_special, "skip_special"), []
        for i in np.asarray(list(ids), dtype=np.int64).tolist():
            if not 0 <= i < len(self.id_to_token):
                raise ValueError(f"Token id {i} is outside the vocabulary [0, {len(self.id_to_token)}).")
            if skip_special and i == self.eos_id:
                break
            if skip_special and i in self.special_ids:
                continue
            words.append(self.id_to_token[i])
        return " ".join(words).replace(" ?", "?")

    def save(self, path) -> None:
        """Write the vocabulary and the ``unknown`` setting as JSON."""
        path = require_path(path)
        try:
            path.write_text(json.dumps({"tokens": self.id_to_token, "unknown": self.unknown}, indent=0))
        except OSError as error:
            raise write_error(path, error) from None

    @classmethod
    def load(cls, path) -> "Tokenizer":
        """Read a vocabulary written by `save` (a file without ``unknown`` maps unknown words to ``<unk>``)."""
        path = require_file(path, "vocabulary")
        try:
            saved = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ValueError(f"{path}: not a vocabulary written by Tokenizer.save ({error}).") from None
        tokens = saved.get("tokens") if isinstance(saved, dict) else None
        if (not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens)
                or tokens[: len(SPECIAL_TOKENS)] != list(SPECIAL_TOKENS)):
            raise ValueError(f"{path}: not a course vocabulary (it must start with {SPECIAL_TOKENS}).")
        n_special = next((i for i, t in enumerate(tokens) if not (t.startswith("<") and t.endswith(">"))), len(tokens))
        return cls(tokens[n_special:], tokens[len(SPECIAL_TOKENS):n_special], saved.get("unknown", "unk"))


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
    length = max(lengths) if max_length is None else positive_int(max_length, "max_length")
    pad_id = require_int(pad_id, "pad_id", -2**31, 2**31 - 1)             # ids are int32
    require_array_budget((len(sequences), length), 5, "sequences and max_length")
    ids = np.full((len(sequences), length), pad_id, np.int32)
    mask = np.zeros((len(sequences), length), bool)
    for row, seq in enumerate(sequences):
        kept = list(seq)[:length]
        ids[row, : len(kept)] = kept
        mask[row, : len(kept)] = True
    return ids, mask


# --------------------------------------------------------------------------- sub-words (BPE)

END_OF_WORD = "</w>"  # BPE's end-of-word marker: "est</w>" ends a word, "est" may not


def _check_word(word, name: str) -> str:
    if not isinstance(word, str):
        raise TypeError(f"{name}: expected a str (one word), got {type(word).__name__} {word!r}.")
    if not word or any(c.isspace() for c in word):
        raise ValueError(f"{name}: expected one non-empty word without spaces, got {word!r}; split texts "
                         "into words first with preprocessing.split_words(text).")
    return word


def _merge_pair(symbols: tuple[str, ...], pair: tuple[str, str]) -> tuple[str, ...]:
    """Replace every adjacent ``pair`` in ``symbols``, left to right, by its concatenation."""
    merged, i = [], 0
    while i < len(symbols):
        if symbols[i:i + 2] == pair:
            merged.append(pair[0] + pair[1])
            i += 2
        else:
            merged.append(symbols[i])
            i += 1
    return tuple(merged)


def learn_bpe(words: Sequence[str], num_merges: int) -> list[tuple[str, str]]:
    """Learn byte-pair-encoding merges from a corpus of words (Sennrich et al., 2016).

    Every word starts as its characters plus `END_OF_WORD` ("low" -> l o w </w>). Each
    step counts the pairs of adjacent symbols over the corpus (a word that occurs 5 times
    counts 5 times), merges the most frequent pair into one new symbol everywhere, and
    records it. **Ties** go to the pair seen first when the corpus is read from its start
    (words in the order they first occur, symbols left to right): the rule of the paper's
    reference code, so the result is deterministic. Learning stops early, with fewer
    merges, once every word is a single symbol.

    ``words``: list of str, one entry per occurrence, no spaces (``split_words(text)``).
    ``num_merges``: int >= 0. Returns the merges in the order learned, as ``(left, right)``
    pairs of str; the vocabulary is the characters, ``</w>`` and one symbol per merge.
    """
    if isinstance(words, str) or not isinstance(words, Iterable):
        raise TypeError(f"words: expected a list of words (str), got {type(words).__name__} {words!r:.40}; "
                        "split a text with preprocessing.split_words(text).")
    words = [_check_word(word, f"words[{i}]") for i, word in enumerate(words)]
    if not words:
        raise ValueError("words: expected at least one word, got an empty list; give the words of your corpus.")
    num_merges = require_int(num_merges, "num_merges", low=0)
    corpus = {tuple(word) + (END_OF_WORD,): count for word, count in Counter(words).items()}  # first-seen order
    merges: list[tuple[str, str]] = []
    for _ in range(num_merges):
        pairs: Counter = Counter()
        for symbols, count in corpus.items():
            for pair in zip(symbols, symbols[1:]):
                pairs[pair] += count
        if not pairs:  # every word is one symbol: nothing left to merge
            break
        best = max(pairs, key=pairs.get)  # the most frequent pair; on a tie, the first one seen
        merges.append(best)
        corpus = {_merge_pair(symbols, best): count for symbols, count in corpus.items()}
    return merges


def bpe_segment(word: str, merges: Sequence[tuple[str, str]]) -> list[str]:
    """Split one word into sub-words: its characters plus `END_OF_WORD`, then every merge
    of `learn_bpe` applied in the order it was learned. A word never seen in training
    still splits into known pieces ("lowest" -> ["low", "est</w>"]); only a character
    outside the training alphabet stays a piece of its own that the vocabulary lacks."""
    symbols = tuple(_check_word(word, "word")) + (END_OF_WORD,)
    for i, pair in enumerate(merges):
        if not (isinstance(pair, tuple) and len(pair) == 2 and all(isinstance(p, str) for p in pair)):
            raise TypeError(f"merges[{i}]: expected a pair of str (left, right) as learn_bpe returns, got {pair!r}.")
        symbols = _merge_pair(symbols, pair)
    return list(symbols)


# --------------------------------------------------------------------------- tf.data


def make_image_text_dataset(images: np.ndarray, token_ids: np.ndarray, batch_size: int = 64,
                            shuffle: bool = True, seed: int = 0, cache: bool = True):
    """A `tf.data.Dataset` of ``(image float32 (B, H, W, 3) in [0, 1], ids int32 (B, T))``.
    ``images`` are uint8 (scaled by 1/255) or float already in [0, 1] (kept as they are).

    Order matters: cache the decoded data, map the cheap per-example work, shuffle
    examples (not batches), batch, and prefetch so the next batch is ready while the
    model trains on this one.
    """
    import tensorflow as tf

    images = validate_image(images, "images")
    scale = 1.0 / 255.0 if images.dtype == np.uint8 else 1.0      # float images are already in [0, 1]
    try:
        ids = np.asarray(token_ids)
    except (TypeError, ValueError):                               # ragged rows
        ids = np.asarray(None)
    if ids.dtype.kind not in "iu" or ids.ndim != 2:
        raise TypeError(f"token_ids: expected an int array (N, T) as Tokenizer.encode_batch returns, got "
                        f"{type(token_ids).__name__} of dtype {ids.dtype} and shape {ids.shape}.")
    if ids.size and ids.min() < 0:
        raise ValueError(f"token_ids: ids are >= 0, got a minimum of {ids.min()}.")
    token_ids = ids
    if images.ndim != 4 or len(images) != len(token_ids):
        raise ValueError(f"images and token_ids must have the same batch size, got images of shape {images.shape} "
                         f"and {len(token_ids)} token rows.")
    batch_size, seed = positive_int(batch_size, "batch_size"), require_int(seed, "seed", 0)
    shuffle, cache = require_bool(shuffle, "shuffle"), require_bool(cache, "cache")
    dataset = tf.data.Dataset.from_tensor_slices((images, token_ids))
    if cache:
        dataset = dataset.cache()
    dataset = dataset.map(lambda image, ids: (tf.cast(image, tf.float32) * scale, tf.cast(ids, tf.int32)),
                          num_parallel_calls=tf.data.AUTOTUNE)
    if shuffle:
        dataset = dataset.shuffle(len(images), seed=seed, reshuffle_each_iteration=True)
    return dataset.batch(batch_size).prefetch(tf.data.AUTOTUNE)
