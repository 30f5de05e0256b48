"""Lesson 06: training the dual encoder on ShapeWorld with the verifier's help.

`train_dual_encoder` runs ``model.fit`` one epoch at a time on a `retrieval.DualEncoder`;
each epoch it

- redraws a true caption for every scene and mirrors half of the images, swapping *left*
  and *right* in their captions (`caption_training_set`, `mirror_scene`);
- adds one *hard negative* caption per example, made by ``make_negative``: by default
  `perturb_caption` (one shape, colour or size word changed, or the relation reversed),
  or `swap_negative` (NegCLIP: the caption's own words in another order, `swapped_twins`);
- asks the verifier which texts of each batch are true of which images
  (`batch_positives`): those are the positives of `retrieval.multi_positive_info_nce`,
  not false negatives.

`twin_accuracy` measures the bag-of-words failure: does an image prefer its caption to the
caption's `swapped_twins`, the same words in another order? `two_object_subset` and
``relational=True`` make the easy first stage of a curriculum, with `relation_negative` as
its hard negative.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Callable, Sequence

import keras
import numpy as np

from mmlm_course import shapeworld
from mmlm_course.preprocessing import Tokenizer, flip_caption
from mmlm_course.retrieval import DualEncoder, embed_images, embed_texts
from mmlm_course.training import WarmupCosineDecay
from mmlm_course.validation import (positive_int, require_float, require_instance, require_int, require_rng,
                                    require_scene, require_str)

__all__ = ["train_dual_encoder", "batch_positives", "perturb_caption", "reverse_relation", "swapped_twins",
           "swap_negative", "twin_accuracy", "caption_training_set", "mirror_scene", "two_object_subset",
           "relation_negative"]

TWIN_KINDS = ("relation", "color", "shape", "size")
_SWAP_RELATION = {"left": "right", "right": "left", "above": "below", "below": "above"}


def train_dual_encoder(model: DualEncoder, tokenizer: Tokenizer, data: shapeworld.ShapeWorldData, epochs: int,
                       batch_size: int = 64, learning_rate: float = 3e-3, seed: int = 0,
                       make_negative: Callable[[str, np.random.Generator], str] | None = None,
                       relational: bool = False, verbose: int = 0) -> dict[str, list[float]]:
    """Train ``model`` on ``data`` with Adam, a warmup + cosine schedule and in-batch negatives.

    Each epoch draws new captions (and flips) with `caption_training_set`, shuffles with
    its own seeded generator, drops the last incomplete batch, adds one hard negative per
    caption, ``make_negative(caption, rng) -> str`` (default `perturb_caption`; NegCLIP's
    `swap_negative`, or any function of that form), and runs ``model.fit`` for one epoch.
    The targets of `DualEncoder.compute_loss` come from the verifier (`batch_positives`):
    every text of the batch that is true of an image is a positive for it, a hard negative
    that happens to be true included. With ``relational`` every scene
    that allows a clear relation gets a relational caption (no "there is ..."). Called
    again on a trained model it fine-tunes it (a new optimizer and schedule).

    Returns ``{"loss": [...], "temperature": [...], "seconds": [...]}``, one entry per epoch.
    """
    epochs = positive_int(epochs, "epochs")
    batch_size = require_int(batch_size, "batch_size", low=2)  # a contrastive batch needs negatives
    make_negative = perturb_caption if make_negative is None else make_negative
    if not callable(make_negative):
        raise TypeError(f"make_negative: expected a function (caption, rng) -> str, got "
                        f"{type(make_negative).__name__}.")
    steps_per_epoch = len(data) // batch_size
    if steps_per_epoch < 1:
        raise ValueError(f"need at least batch_size={batch_size} examples, got {len(data)}.")
    total = epochs * steps_per_epoch
    schedule = WarmupCosineDecay(learning_rate, total, warmup_steps=min(total // 10, 200),
                                 final_learning_rate=learning_rate / 50)
    optimizer = keras.optimizers.Adam(schedule)
    model.compile(optimizer=optimizer)
    if not model.built:
        model.build()
    optimizer.build(model.trainable_variables)  # now, not inside the first step: saves a second trace
    rng = np.random.default_rng(seed)
    history = {"loss": [], "temperature": [], "seconds": []}
    for epoch in range(epochs):
        start = time.perf_counter()
        images, captions, scenes = caption_training_set(data, rng, relational=relational)
        order = rng.permutation(len(captions))[:steps_per_epoch * batch_size]  # whole batches only
        captions, scenes = [captions[i] for i in order], [scenes[i] for i in order]
        negatives = [make_negative(c, rng) for c in captions]
        wrong = next((n for n in negatives if not isinstance(n, str)), None)
        if wrong is not None:
            raise TypeError(f"make_negative must return one caption (a str), got {type(wrong).__name__} {wrong!r}.")
        inputs = {"images": images[order], "token_ids": tokenizer.encode_batch(captions, model.max_length),
                  "negative_token_ids": tokenizer.encode_batch(negatives, model.max_length)}
        targets = batch_positives(captions, scenes, batch_size, negatives)
        result = model.fit(inputs, targets, batch_size=batch_size, epochs=epoch + 1,
                           initial_epoch=epoch, shuffle=False, verbose=verbose)
        history["loss"].append(float(result.history["loss"][-1]))
        history["temperature"].append(float(model.temperature))
        history["seconds"].append(time.perf_counter() - start)
    return history


def batch_positives(captions: Sequence[str], scenes: Sequence[shapeworld.Scene], batch_size: int,
                    negatives: Sequence[str] | None = None) -> np.ndarray:
    """Verifier targets for contrastive batches of consecutive examples.

    Returns float32 (N, batch_size), or (N, 2 * batch_size) with hard ``negatives`` (one
    per example). Row i holds, for example i's batch, which of its captions (then which of
    its hard negatives) are true of example i's scene; its own caption always is. ``N``
    must be a multiple of ``batch_size``. ``fit`` slices the rows along with the inputs, so
    each batch gets its (B, B) or (B, 2B) matrix of positives.
    """
    batch_size = positive_int(batch_size, "batch_size")
    for i, caption in enumerate(captions):
        require_str(caption, f"captions[{i}]")
    if len(captions) != len(scenes) or (negatives is not None and len(negatives) != len(captions)):
        raise ValueError(f"expected one caption (and one negative) per scene, got {len(captions)} captions, "
                         f"{len(scenes)} scenes and {None if negatives is None else len(negatives)} negatives.")
    if len(captions) % batch_size:
        raise ValueError(f"the number of examples ({len(captions)}) must be a multiple of batch_size={batch_size}; "
                         "drop the remainder.")
    rows = []
    for i in range(0, len(captions), batch_size):
        texts = list(captions[i:i + batch_size]) + ([] if negatives is None else list(negatives[i:i + batch_size]))
        rows.append(shapeworld.caption_truth_matrix(texts, scenes[i:i + batch_size]).T)  # (images, texts)
    return np.concatenate(rows).astype(np.float32)


# --------------------------------------------------------------------------- hard negatives and swapped twins


def perturb_caption(caption: str, rng: np.random.Generator, relation_probability: float = 0.6,
                    avoid=shapeworld.HELD_OUT) -> str:
    """A *hard negative*: the caption with one detail changed, e.g. "a large red circle is
    to the left of a small blue square" -> "... of a small blue triangle" or "... is to the
    right of ...".

    A caption with a relation has it reversed (`reverse_relation`) with probability
    ``relation_probability``; otherwise one shape, colour or size word of one object is
    replaced by another value. Articles are fixed ("a" / "an"). A change that would name a
    colour-shape pair in ``avoid`` (the held-out pairs) is not made, so training never
    mentions them. The result is usually false of the scene, but not always (the scene may
    hold that object too): ask the verifier.
    """
    if not isinstance(caption, str):
        raise TypeError(f"caption: expected a str, got {type(caption).__name__}.")
    words = caption.split()
    shape_positions = [i for i, w in enumerate(words) if w in shapeworld.SHAPES]
    if not shape_positions:
        raise ValueError(f"perturb_caption: {caption!r} names no shape; expected a ShapeWorld caption.")
    require_rng(rng), require_float(relation_probability, "relation_probability", 0.0, 1.0)
    if reverse_relation(caption) != caption and rng.random() < relation_probability:
        return reverse_relation(caption)
    for _ in range(20):
        kind = ("shape", "color", "size")[int(rng.integers(3))]
        s = shape_positions[int(rng.integers(len(shape_positions)))]
        c = s - 1 if words[s - 1] in shapeworld.COLORS else None
        z = next((i for i in (s - 1, s - 2) if words[i] in shapeworld.SIZES), None)
        index = {"shape": s, "color": c, "size": z}[kind]
        if index is None:
            continue
        new = list(words)
        options = [v for v in shapeworld.ATTRIBUTES[kind] if v != words[index]]
        new[index] = options[int(rng.integers(len(options)))]
        if c is not None and (new[c], new[s]) in avoid:
            continue
        for i, w in enumerate(new[:-1]):
            if w in ("a", "an"):
                new[i] = "an" if new[i + 1][0] in "aeiou" else "a"
        return " ".join(new)
    raise ValueError(f"perturb_caption: found no change to {caption!r} that avoids {avoid}.")  # pragma: no cover


def reverse_relation(caption: str) -> str:
    """The caption with its relation reversed: left <-> right, above <-> below."""
    if not isinstance(caption, str):
        raise TypeError(f"caption: expected a str, got {type(caption).__name__}.")
    return " ".join(_SWAP_RELATION.get(word, word) for word in caption.split())


def swapped_twins(caption: str) -> dict[str, str]:
    """The caption's *swapped twins*: the same words in another order, each (usually) false.

    For "a large red circle is to the left of a small blue square":

    - ``"relation"``: the two noun phrases swapped, "a small blue square is to the left of
      a large red circle" (ARO's relation test, SugarCrepe's swap-obj);
    - ``"color"``, ``"shape"``, ``"size"``: that attribute swapped between the two objects,
      e.g. colour: "a large blue circle is to the left of a small red square" (swap-att).

    Articles are fixed ("a orange" becomes "an orange"). A twin equal to the caption (both
    objects share the colour, say) is left out; two kinds may give the same sentence (objects
    that differ in one attribute only); a "there is ..." or "there are ..." caption has
    none: ``{}``. Every twin holds exactly the caption's words (one bag of
    words), so a model that reads captions as bags of words cannot tell them apart. Twins
    are written as the grammar's parser reads them (lower case, no full stop).

    Raises TypeError for a non-str and ValueError for a caption that does not parse or
    holds more than one statement.
    """
    if not isinstance(caption, str):
        raise TypeError(f"caption: expected a str, got {type(caption).__name__}.")
    try:
        statements = shapeworld.parse_caption(caption)
    except shapeworld.CaptionParseError as error:
        raise ValueError(f"swapped_twins: {caption!r} is not a ShapeWorld caption ({error}).") from None
    if len(statements) != 1:
        raise ValueError(f"swapped_twins: expected one statement, got {len(statements)} in {caption!r}.")
    if statements[0][0] != "relation":
        return {}
    _, first, relation, second = statements[0]

    def sentence(a: dict, b: dict) -> str:
        return f"{_noun_phrase(a)} is {relation} {_noun_phrase(b)}"

    twins = {"relation": sentence(second, first)}
    for kind in TWIN_KINDS[1:]:
        if kind in first and kind in second:
            twins[kind] = sentence({**first, kind: second[kind]}, {**second, kind: first[kind]})
    own = sentence(first, second)
    return {kind: twin for kind, twin in twins.items() if twin != own}


def _noun_phrase(attributes: dict) -> str:
    return shapeworld.with_article(" ".join(attributes[k] for k in ("size", "color", "shape") if k in attributes))


def swap_negative(caption: str, rng: np.random.Generator, swap_probability: float = 0.5,
                  avoid=shapeworld.HELD_OUT) -> str:
    """NegCLIP's hard negative: with probability ``swap_probability`` one of the caption's
    `swapped_twins` (chosen at random among those that name no colour-shape pair in
    ``avoid``), otherwise, and for captions without such a twin, `perturb_caption`'s
    one-word change. A ``make_negative`` for `train_dual_encoder`."""
    swap_probability = require_float(swap_probability, "swap_probability", low=0.0, high=1.0)
    require_rng(rng)
    twins = [twin for twin in swapped_twins(caption).values()
             if not any(pair in avoid for pair in zip(twin.split(), twin.split()[1:]))]
    if twins and rng.random() < swap_probability:
        return twins[int(rng.integers(len(twins)))]
    return perturb_caption(caption, rng, avoid=avoid)


def relation_negative(caption: str, rng: np.random.Generator) -> str:
    """The hard negative of a relation curriculum: the caption's relation twin (its two noun
    phrases swapped, each whole, so it names no colour-shape pair the caption does not) when
    it has one, otherwise `swap_negative`. Every such example asks the one question a bag of
    words cannot answer: which object is where?"""
    require_rng(rng)
    twin = swapped_twins(caption).get("relation")
    return swap_negative(caption, rng) if twin is None else twin


def twin_accuracy(model: DualEncoder, tokenizer: Tokenizer, data: shapeworld.ShapeWorldData) -> dict:
    """Does the model read word order? For every caption of ``data`` and each of its
    `swapped_twins` that the verifier calls false of the caption's own image: is the image
    more similar to the caption than to the twin? A tie (within 1e-6) counts one half, so a
    model that reads captions as bags of words scores exactly 0.5 on every kind.

    Returns ``{"accuracy": {kind: float}, "count": {kind: int}}`` for each kind of
    `TWIN_KINDS` that occurs, plus ``"attribute"`` (colour, shape and size pooled) and
    ``"all"`` (every twin pooled). Raises ValueError when ``data`` has no such twin.
    """
    pairs = [(i, kind, caption, twin) for i, (caption, scene) in enumerate(zip(data.captions, data.scenes))
             for kind, twin in swapped_twins(caption).items() if not shapeworld.caption_is_true(twin, scene)]
    if not pairs:
        raise ValueError("twin_accuracy: data has no relational caption with a swapped twin that is false of its "
                         "image.")
    index, kinds, captions, twins = (list(column) for column in zip(*pairs))
    images = embed_images(model, data.images)[index]
    own = np.sum(images * embed_texts(model, tokenizer, captions), axis=1)
    other = np.sum(images * embed_texts(model, tokenizer, twins), axis=1)
    wins = np.where(np.abs(own - other) <= 1e-6, 0.5, (own > other).astype(np.float64))
    kinds = np.array(kinds)
    groups = {kind: kinds == kind for kind in TWIN_KINDS if np.any(kinds == kind)}
    if any(kind != "relation" for kind in groups):
        groups["attribute"] = kinds != "relation"
    groups["all"] = np.ones(len(kinds), bool)
    return {"accuracy": {name: float(np.mean(wins[mask])) for name, mask in groups.items()},
            "count": {name: int(np.sum(mask)) for name, mask in groups.items()}}


# --------------------------------------------------------------------------- augmentation


def caption_training_set(data: shapeworld.ShapeWorldData, rng: np.random.Generator, flip: bool = True,
                         relational: bool = False) -> tuple[np.ndarray, list[str], list[shapeworld.Scene]]:
    """One epoch of augmented training pairs: ``(images uint8 (N, H, W, 3), captions, scenes)``.

    Every scene gets a freshly sampled true caption (`shapeworld.make_caption`), so the
    model sees several descriptions of each image over the epochs; with ``relational`` it
    is a relation whenever the scene allows a clear one. With ``flip`` a random
    half of the images is mirrored left-right, its caption has *left* and *right* swapped
    (lesson 01's caption-preserving flip) and its scene is mirrored (`mirror_scene`).
    """
    require_instance(data, shapeworld.ShapeWorldData, "data", "make it with shapeworld.generate(...)")
    require_instance(flip, bool, "flip"), require_instance(relational, bool, "relational")
    share = 1.0 if relational else shapeworld.RELATION_CAPTION_PROBABILITY
    captions = [shapeworld.make_caption(scene, rng, relation_probability=share) for scene in data.scenes]
    images, scenes = data.images, list(data.scenes)
    if flip:
        mirrored = rng.random(len(captions)) < 0.5
        images = images.copy()
        images[mirrored] = images[mirrored][:, :, ::-1]
        captions = [flip_caption(c) if m else c for c, m in zip(captions, mirrored)]
        scenes = [mirror_scene(s) if m else s for s, m in zip(scenes, mirrored)]
    return images, captions, scenes


def mirror_scene(scene: shapeworld.Scene) -> shapeworld.Scene:
    """The scene a left-right flip of its image shows: every x becomes 1 - x."""
    return shapeworld.Scene(tuple(dataclasses.replace(o, x=round(1.0 - o.x, 4)) for o in require_scene(scene).objects))


def two_object_subset(data: shapeworld.ShapeWorldData) -> shapeworld.ShapeWorldData:
    """The easy first stage of a curriculum: the scenes of ``data`` with exactly two objects
    and a clear relation between them (`shapeworld.RELATION_MARGIN`), so a relational
    caption can only be about that one pair. Raises ValueError when there is none."""
    require_instance(data, shapeworld.ShapeWorldData, "data", "make it with shapeworld.generate(...)")
    keep = [i for i, scene in enumerate(data.scenes) if len(scene.objects) == 2
            and shapeworld.relations_between(*scene.objects, shapeworld.RELATION_MARGIN)]
    if not keep:
        raise ValueError(f"two_object_subset: none of the {len(data)} scenes has two objects with a clear relation; "
                         "generate more data.")
    return data.subset(keep)
