"""Lesson 06: contrastive image-text retrieval with a CLIP-style dual encoder.

A *dual encoder* maps images and texts into one shared space, each with its own tower:

    image (B, H, W, 3) --CNN regions + spatial moments + MLP--> (B, F) --linear--> (B, D) --L2--> u_i
    ids   (B, T)       --Transformer + mean pooling-----------> (B, E) --linear--> (B, D) --L2--> v_j

Training pulls each image towards its caption and pushes it away from the batch's other
captions: the logits ``cos(u_i, v_j) / T`` (T a learned, clipped temperature) go into the
symmetric InfoNCE loss of lesson 05 (`mmlm_course.losses`).

ShapeWorld captions are *ambiguous*: "there is a small red circle" is true of every image
holding a small red circle, not just the one it was written for. ShapeWorld's verifier
(`shapeworld.caption_is_true`; `caption_hit_matrix` gives the same answers for whole
matrices, fast) therefore decides both

- the metric: a retrieved item is a hit when the caption is true of the image, and
  recall@K asks whether *any* of the top K is a hit (`first_hit_ranks`,
  `recall_at_k_with_hits`);
- the training targets: every caption of a batch that is true of an image is a positive
  for it (`batch_positives`, `multi_positive_info_nce`), not a false negative.

Training also adds one *hard negative* caption per example (`perturb_caption`: one shape,
colour or size word changed, or the relation reversed) and redraws / mirrors captions each
epoch (`caption_training_set`). Zero-shot classification embeds one prompt per
size-colour-shape combination and gives each image the class of its best prompt
(`zero_shot_prompts`, `zero_shot_predict`). `relation_accuracy` tests whether a model reads
relations at all (0.5 = chance).

The benchmark's towers (``DualEncoder(tower="objects")``) are built for relations: lesson
04's object detector, pretrained and frozen (LiT), read by `ObjectPairTower`, which binds
every ordered pair of objects with their offset (`bind_roles`, a tensor product), and
`RoleTextTower`, whose attention pools pick subject, reference and relation out of the
caption and bind them the same way.

Model code uses `keras.ops` / `keras.layers` only; `DualEncoder` overrides
``compute_loss`` (not a TensorFlow ``train_step``) so it trains on any Keras backend.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Sequence

import keras
import numpy as np
from keras import ops

from mmlm_course import fusion, shapeworld
from mmlm_course.encoders import (BagOfEmbeddings, ConvImageEncoder, RecurrentTextEncoder,
                                  TransformerTextEncoder)
from mmlm_course.training import WarmupCosineDecay
from mmlm_course.losses import LearnedTemperature, info_nce_from_logits, l2_normalize, log_softmax, similarity_logits
from mmlm_course.preprocessing import Tokenizer, validate_image
from mmlm_course.validation import dtype_name, positive_int

__all__ = [
    "similarity_logits", "similarity_scores", "caption_hit_matrix", "first_hit_ranks", "recall_at_k_with_hits",
    "zero_shot_predict", "zero_shot_prompts", "single_object_data", "add_coordinate_channels", "spatial_moments",
    "bind_roles", "ObjectPairTower", "RoleTextTower", "DualEncoder",
    "make_tokenizer", "encode_captions", "embed_images", "embed_texts", "retrieval_scores", "retrieval_report",
    "zero_shot_accuracy", "reverse_relation", "relation_accuracy", "mirror_scene", "counterfactual_twin",
    "caption_training_set", "perturb_caption", "batch_positives",
    "multi_positive_info_nce", "train_dual_encoder",
]

_register = keras.saving.register_keras_serializable(package="mmlm_course")
ATTRIBUTES = {"color": shapeworld.COLOR_NAMES, "shape": shapeworld.SHAPES, "size": shapeworld.SIZES}
MAX_CAPTION_LENGTH = 16  # the longest ShapeWorld caption has 13 words
_SWAP_RELATION = {"left": "right", "right": "left", "above": "below", "below": "above"}
PIXEL_MEAN, PIXEL_STD = 0.87, 0.18  # ShapeWorld's pixel statistics in [0, 1] (mostly light background)


# --------------------------------------------------------------------------- validation helpers


def _as_array(x, name: str):
    """A tensor / array stays as it is; lists become NumPy arrays."""
    if x is None:
        raise TypeError(f"{name}: expected an array or tensor, got None.")
    if not (hasattr(x, "shape") and hasattr(x, "dtype")):
        x = np.asarray(x)
        if x.dtype == object:
            raise TypeError(f"{name}: expected numbers, got an array of Python objects (ragged lists?).")
    return x


def _float_matrix(x, name: str, layout: str):
    x = _as_array(x, name)
    if len(x.shape) != 2:
        raise ValueError(f"{name}: expected shape {layout}, got shape {tuple(x.shape)} (rank {len(x.shape)}).")
    if not dtype_name(x).startswith(("float", "bfloat")):
        raise TypeError(f"{name}: expected float values, got dtype {dtype_name(x)}; cast with x.astype('float32').")
    return x


def _values(x):
    """NumPy values of a concrete tensor, or None inside a traced graph."""
    try:
        return np.asarray(ops.convert_to_numpy(x))
    except Exception:  # symbolic tensor: no values yet
        return None


def _check_k(k, num_candidates) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise TypeError(f"k must be an int (how many top results count), got {type(k).__name__} {k!r}.")
    if k < 1 or (num_candidates is not None and k > num_candidates):
        raise ValueError(f"k must lie in [1, N] = [1, {num_candidates}] (N candidates per query), got k={k}.")
    return int(k)


# --------------------------------------------------------------------------- similarities


def similarity_scores(queries, candidates):
    """Cosine similarity of every query with every candidate: float32 (Q, N).

    queries: float (Q, D); candidates: float (N, D) (any norms: both are L2-normalised
    here). Unlike `similarity_logits` (a training batch, where Q must equal N and row i
    pairs with column i), Q and N may differ: a gallery of N images searched by Q captions.
    """
    queries = _float_matrix(queries, "queries", "(Q, D)")
    candidates = _float_matrix(candidates, "candidates", "(N, D)")
    if None not in (queries.shape[1], candidates.shape[1]) and queries.shape[1] != candidates.shape[1]:
        raise ValueError(f"queries have {queries.shape[1]} features but candidates have {candidates.shape[1]}: "
                         "both must live in the same embedding space (same D).")
    queries = l2_normalize(ops.cast(queries, "float32"))
    candidates = l2_normalize(ops.cast(candidates, "float32"))
    return ops.matmul(queries, ops.transpose(candidates))


# --------------------------------------------------------------------------- verifier-based hits


def _check_captions_and_scenes(captions, scenes):
    if isinstance(captions, str):
        raise TypeError("captions: expected a list of caption strings, got one str; wrap it: [caption].")
    captions, scenes = list(captions), list(scenes)
    if not captions or not scenes:
        raise ValueError(f"expected at least one caption and one scene, got {len(captions)} captions and "
                         f"{len(scenes)} scenes.")
    for i, caption in enumerate(captions):
        if not isinstance(caption, str):
            raise TypeError(f"captions[{i}]: expected a str, got {type(caption).__name__}.")
    for i, scene in enumerate(scenes):
        if not isinstance(scene, shapeworld.Scene):
            raise TypeError(f"scenes[{i}]: expected a shapeworld.Scene (data.scenes), got {type(scene).__name__}; "
                            "the verifier needs the scene, not the image.")
    return captions, scenes


class _SceneTable:
    """The objects of N scenes as arrays (N, MAX_OBJECTS), padded, for fast verification."""

    def __init__(self, scenes: Sequence[shapeworld.Scene]):
        n, m = len(scenes), shapeworld.MAX_OBJECTS
        self.valid = np.zeros((n, m), bool)
        self.attributes = {key: np.full((n, m), -1, np.int8) for key in ATTRIBUTES}  # value index, -1 = none
        self.x, self.y = np.zeros((n, m)), np.zeros((n, m))
        self.count = np.array([len(s.objects) for s in scenes])
        for i, scene in enumerate(scenes):
            if len(scene.objects) > m:
                raise ValueError(f"scenes[{i}] has {len(scene.objects)} objects; ShapeWorld scenes hold at most {m}.")
            for j, obj in enumerate(scene.objects):
                self.valid[i, j] = True
                for key, values in ATTRIBUTES.items():
                    self.attributes[key][i, j] = values.index(getattr(obj, key))
                self.x[i, j], self.y[i, j] = obj.x, obj.y
        # relation[r][i, a, b]: object a stands in relation r to object b of scene i (a != b)
        distinct = self.valid[:, :, None] & self.valid[:, None, :] & ~np.eye(m, dtype=bool)[None]
        x_a, x_b = self.x[:, :, None], self.x[:, None, :]
        y_a, y_b = self.y[:, :, None], self.y[:, None, :]
        self.relation = {"to the left of": (x_a < x_b) & distinct, "to the right of": (x_a > x_b) & distinct,
                         "above": (y_a < y_b) & distinct, "below": (y_a > y_b) & distinct}
        missing = set(shapeworld.RELATIONS) - set(self.relation)
        assert not missing, f"relations without a rule: {missing}"

    def matches(self, attributes: dict) -> np.ndarray:
        """(N, MAX_OBJECTS) bool: which objects have every given attribute."""
        match = self.valid.copy()
        for key, value in attributes.items():
            match &= self.attributes[key] == ATTRIBUTES[key].index(value)
        return match

    def holds(self, statement: tuple) -> np.ndarray:
        """(N,) bool: the statement is true of each scene (the rules of shapeworld._holds)."""
        kind = statement[0]
        if kind == "exists":
            return self.matches(statement[1]).any(axis=1)
        if kind == "count":
            return self.count == statement[1]
        _, first, relation, second = statement
        pairs = self.matches(first)[:, :, None] & self.matches(second)[:, None, :] & self.relation[relation]
        return pairs.any(axis=(1, 2))


def caption_hit_matrix(captions: Sequence[str], scenes: Sequence[shapeworld.Scene]) -> np.ndarray:
    """``hits[i, j] = shapeworld.caption_is_true(captions[i], scenes[j])``: bool (Q, N).

    The same answers as the double loop over `shapeworld.caption_is_true`, computed
    hundreds of times faster: each distinct caption is parsed once and its statements are
    evaluated on all N scenes at once with NumPy. A caption that does not parse is false
    everywhere (as with the verifier).
    """
    captions, scenes = _check_captions_and_scenes(captions, scenes)
    table = _SceneTable(scenes)
    rows: dict[str, np.ndarray] = {}
    hits = np.zeros((len(captions), len(scenes)), bool)
    for i, caption in enumerate(captions):
        if caption not in rows:
            statements = _parse(caption)
            row = np.full(len(scenes), statements is not None)
            for statement in statements or ():
                row &= table.holds(statement)
            rows[caption] = row
        hits[i] = rows[caption]
    return hits


@functools.lru_cache(maxsize=65536)
def _parse(caption: str):
    """`shapeworld.parse_caption`, cached (training verifies the same captions again and
    again); None when the caption does not parse."""
    try:
        return tuple(shapeworld.parse_caption(caption))
    except shapeworld.CaptionParseError:
        return None


def _check_scores_and_hits(scores, hits):
    scores = _float_matrix(scores, "scores", "(Q, N): one row of N candidate scores per query")
    hits = _as_array(hits, "hits")
    if dtype_name(hits) != "bool":
        raise TypeError(f"hits: expected a bool matrix (True where candidate j is a right answer for query i), "
                        f"got dtype {dtype_name(hits)}; build it with caption_hit_matrix or compare: hits = (x == y).")
    if tuple(hits.shape) != tuple(scores.shape):
        raise ValueError(f"hits: expected the shape of scores {tuple(scores.shape)} (queries x candidates), "
                         f"got {tuple(hits.shape)}; for image-to-text retrieval transpose the caption x image "
                         "hit matrix (hits.T).")
    values = _values(hits)
    if values is not None and values.size:
        without = np.flatnonzero(~values.any(axis=1))
        if without.size:
            raise ValueError(f"hits: {without.size} queries have no right answer among the candidates (rows "
                             f"{without[:5].tolist()}{' ...' if without.size > 5 else ''}); recall is undefined "
                             "for them. Drop those queries or add their own item to the gallery.")
    return scores, hits


def first_hit_ranks(scores, hits):
    """Rank (1 = best) of the best-scoring right answer of each query, ties counted against it.

    scores: float (Q, N), higher is better. hits: bool (Q, N), True where candidate j is
    a right answer for query i (several may be). The rank is one plus the number of
    *wrong* candidates whose score is at least the best right answer's score (a wrong
    candidate that ties goes first, as in `mmlm_course.metrics.retrieval_ranks`; NaN
    scores count against the query too). With one right answer per row this is exactly
    `metrics.retrieval_ranks`. Returns int32 (Q,) in [1, N].
    """
    scores, hits = _check_scores_and_hits(scores, hits)
    scores = ops.cast(scores, "float32")
    hits = ops.convert_to_tensor(hits)
    lowest = ops.cast(-np.inf, "float32")
    best_hit = ops.max(ops.where(hits, scores, lowest), axis=1, keepdims=True)  # (Q, 1)
    below = ops.less(scores, best_hit)  # NaN compares False: it counts against the query
    wrong_at_least_as_good = ops.logical_and(ops.logical_not(hits), ops.logical_not(below))
    return 1 + ops.sum(ops.cast(wrong_at_least_as_good, "int32"), axis=1)


def recall_at_k_with_hits(scores, hits, k: int = 1):
    """Fraction of queries with at least one right answer among their top ``k`` results.

    Arguments as in `first_hit_ranks` (scores float (Q, N), hits bool (Q, N)); ``k`` an
    int in [1, N]. Returns a float32 scalar tensor in [0, 1] (``float(...)`` for a number).
    Ties with a wrong candidate count against the query, so constant scores score 0 for
    every k below the number of wrong candidates.
    """
    scores = _as_array(scores, "scores")
    k = _check_k(k, scores.shape[-1] if len(scores.shape) == 2 else None)
    return ops.mean(ops.cast(first_hit_ranks(scores, hits) <= k, "float32"))


# --------------------------------------------------------------------------- zero-shot classification


def zero_shot_predict(image_embeddings, prompt_embeddings, prompt_classes=None):
    """Zero-shot classification: each image takes the class of its best-scoring prompt.

    image_embeddings: float (B, D); prompt_embeddings: float (P, D), one row per prompt;
    prompt_classes: int (P,), the class each prompt stands for (several prompts may share
    a class, e.g. every "there is a ... red ..." prompt is class "red"); None means prompt
    p is class p. Prompts are compared by cosine similarity, so norms do not matter.
    Returns int32 (B,): ``prompt_classes[argmax_p cos(image_b, prompt_p)]``.
    """
    images = _float_matrix(image_embeddings, "image_embeddings", "(B, D)")
    prompts = _float_matrix(prompt_embeddings, "prompt_embeddings", "(P, D): one embedding per prompt")
    best = ops.cast(ops.argmax(similarity_scores(images, prompts), axis=1), "int32")  # (B,) prompt index
    if prompt_classes is None:
        return best
    classes = _as_array(prompt_classes, "prompt_classes")
    if not dtype_name(classes).startswith(("int", "uint")):
        raise TypeError(f"prompt_classes: expected integer class ids, got dtype {dtype_name(classes)}.")
    if tuple(classes.shape) != (prompts.shape[0],):
        raise ValueError(f"prompt_classes: expected shape ({prompts.shape[0]},) (one class per prompt), got "
                         f"{tuple(classes.shape)}.")
    return ops.take(ops.cast(classes, "int32"), best)


def zero_shot_prompts(attribute: str) -> tuple[list[str], np.ndarray, tuple[str, ...]]:
    """Prompts in the captions' own words for classifying one attribute (color, shape or size).

    Every prompt is a complete caption "there is a(n) SIZE COLOR SHAPE", the only way the
    training captions name an object, so there is one prompt per combination (36, the
    held-out colour-shape pairs included: a zero-shot model must cope with them).
    Returns ``(prompts, prompt_classes int32 (P,), class_names)``, where
    ``class_names[prompt_classes[p]]`` is the attribute value prompt p names.
    """
    if attribute not in ATTRIBUTES:
        raise ValueError(f"attribute must be one of {tuple(ATTRIBUTES)}, got {attribute!r}.")
    names = tuple(ATTRIBUTES[attribute])
    prompts, classes = [], []
    for size in shapeworld.SIZES:
        for color in shapeworld.COLOR_NAMES:
            for shape in shapeworld.SHAPES:
                obj = shapeworld.ShapeObject(shape, color, size, 0.5, 0.5)
                prompts.append(f"there is {obj.noun_phrase()}")
                classes.append(names.index(getattr(obj, attribute)))
    return prompts, np.array(classes, np.int32), names


def single_object_data(num_examples: int, split: str = "test", seed: int = 0,
                       image_size: int = 64) -> shapeworld.ShapeWorldData:
    """ShapeWorld examples with exactly one object each (for zero-shot attribute
    classification): images uint8 (N, H, W, 3) with the usual pixel noise, scenes, captions.
    Deterministic from ``(split, seed)``; the compositional split gives held-out
    colour-shape pairs only."""
    if isinstance(num_examples, bool) or not isinstance(num_examples, (int, np.integer)) or num_examples < 1:
        raise ValueError(f"num_examples must be a positive int, got {num_examples!r}.")
    if split not in shapeworld.SPLITS:
        raise ValueError(f"Unknown split {split!r}; expected one of {shapeworld.SPLITS}.")
    rng = np.random.default_rng([shapeworld.SPLITS.index(split), seed, 6])
    scenes = [shapeworld.sample_scene(rng, split, num_objects=1) for _ in range(num_examples)]
    images = np.stack([shapeworld.render_image(scene, image_size, rng) for scene in scenes])
    captions = [shapeworld.make_caption(scene, rng) for scene in scenes]
    empty = [""] * num_examples
    return shapeworld.ShapeWorldData(images, scenes, captions, empty, empty, empty, split, seed)


# --------------------------------------------------------------------------- the dual encoder


TEXT_ENCODERS = ("transformer", "gru", "bag")
IMAGE_POOLINGS = ("flatten", "moments")
TOWERS = ("cnn", "objects")


def spatial_moments(tokens, side: int):
    """Position-weighted pooling of a square grid of region vectors.

    tokens: float (B, side * side, F) in reading order (row by row). Returns float
    (B, 3 * F): the mean of the tokens, the mean of ``x * token`` and the mean of
    ``y * token``, with x and y the region's centre in [-1, 1] (x to the right, y down).
    If feature f fires on one object, the second block holds that object's x position
    along f: a linear read-out of *where* each kind of thing is, which relations need.
    """
    shape = tuple(tokens.shape)
    if len(shape) != 3 or shape[1] != side * side:
        raise ValueError(f"tokens: expected shape (batch, {side * side}, features), got {shape}.")
    line = ops.linspace(-1.0, 1.0, side) if side > 1 else ops.zeros((1,))
    ys, xs = ops.meshgrid(line, line, indexing="ij")  # (side, side) each
    xs = ops.cast(ops.reshape(xs, (1, side * side, 1)), tokens.dtype)
    ys = ops.cast(ops.reshape(ys, (1, side * side, 1)), tokens.dtype)
    return ops.concatenate([ops.mean(tokens, axis=1), ops.mean(tokens * xs, axis=1), ops.mean(tokens * ys, axis=1)],
                           axis=-1)


def add_coordinate_channels(images):
    """Append two channels holding each pixel's x and y position in [-1, 1] (CoordConv).

    float (B, H, W, C) -> float (B, H, W, C + 2). A convolution is translation-invariant:
    it finds a red circle anywhere but cannot tell *where*; with the coordinates as input
    its features can say "red, and on the left", which spatial relations need.
    """
    shape = tuple(images.shape)
    if len(shape) != 4 or None in shape[1:]:
        raise ValueError(f"images: expected (batch, H, W, C) with known H, W, C, got {shape}.")
    height, width = shape[1], shape[2]
    ys, xs = ops.meshgrid(ops.linspace(-1.0, 1.0, height), ops.linspace(-1.0, 1.0, width), indexing="ij")
    grid = ops.cast(ops.stack([xs, ys], axis=-1), images.dtype)  # (H, W, 2)
    grid = ops.broadcast_to(ops.expand_dims(grid, 0), (ops.shape(images)[0], height, width, 2))
    return ops.concatenate([images, grid], axis=-1)


def bind_roles(subject, reference, relation):
    """Tensor-product binding of three role vectors.

    subject float (..., R), reference float (..., R), relation float (..., Q) (the leading
    dimensions broadcast) -> float (..., R * R * Q): the flattened outer product
    ``subject ⊗ reference ⊗ relation``. Dot products of such tensors factorise,
    ``<a ⊗ b ⊗ r, a' ⊗ b' ⊗ r'> = (a . a') (b . b') (r . r')``, so an image and a caption
    score high together only when the subject *and* the reference *and* the relation match:
    the AND that a sum of word vectors cannot express (a sum scores "the circle left of the
    square" and "the square left of the circle" alike).
    """
    outer = (subject[..., :, None, None] * reference[..., None, :, None]
             * relation[..., None, None, :])  # (..., R, R, Q)
    lead = tuple(outer.shape[:-3])
    size = outer.shape[-3] * outer.shape[-2] * outer.shape[-1]
    return ops.reshape(outer, (-1,) + lead[1:] + (size,) if lead else (size,))


@_register
class ObjectPairTower(keras.layers.Layer):
    """Image side of the ``tower="objects"`` dual encoder: object tokens -> one vector.

    ``layer(objects)`` with objects float (B, K, 14) (`fusion.ObjectImageEncoder`; the last
    feature is the objectness w). Returns float (B, object_dim + role_dim**2 * relation_dim):

    - *what is there*: ``sum_k w_k MLP(o_k)``, (B, object_dim);
    - *how things are placed*: for every ordered pair (i, j) of different objects,
      `bind_roles` of a subject code of o_i, a reference code of o_j and a code of the
      offset ``centre_j - centre_i``, weighted by ``w_i w_j`` and summed over the pairs,
      (B, role_dim**2 * relation_dim).

    A caption "A is left of B" (`RoleTextTower`) then matches the sum through the one pair
    whose subject is like A, whose reference is like B and whose offset is like "left of".
    """

    def __init__(self, object_dim: int = 64, role_dim: int = 8, relation_dim: int = 4, hidden: int = 64, **kwargs):
        super().__init__(**kwargs)
        self.object_dim, self.role_dim = positive_int(object_dim, "object_dim"), positive_int(role_dim, "role_dim")
        self.relation_dim, self.hidden = positive_int(relation_dim, "relation_dim"), positive_int(hidden, "hidden")
        self.object_hidden = keras.layers.Dense(self.hidden, activation="relu", name="object_hidden")
        self.object_output = keras.layers.Dense(self.object_dim, name="object_output")
        self.subject = keras.layers.Dense(self.role_dim, name="subject")
        self.reference = keras.layers.Dense(self.role_dim, name="reference")
        self.offset_hidden = keras.layers.Dense(self.hidden // 2, activation="relu", name="offset_hidden")
        self.offset_output = keras.layers.Dense(self.relation_dim, name="offset_output")

    def build(self, objects_shape):
        features = objects_shape[-1]
        for layer, width in ((self.object_hidden, features), (self.object_output, self.hidden),
                             (self.subject, features), (self.reference, features), (self.offset_hidden, 2),
                             (self.offset_output, self.hidden // 2)):
            layer.build((None, width))

    def call(self, objects):
        shape = tuple(objects.shape)
        if len(shape) != 3 or shape[-1] != len(fusion.OBJECT_FEATURES) or shape[1] is None:
            raise ValueError(f"objects: expected object tokens (batch, K, {len(fusion.OBJECT_FEATURES)}), got {shape}.")
        k = shape[1]
        weight = objects[..., -1:]  # (B, K, 1) objectness
        present = ops.sum(self.object_output(self.object_hidden(objects)) * weight, axis=1)  # (B, object_dim)
        x = fusion.OBJECT_FEATURES.index("x")
        centres = objects[..., x:x + 2]  # (B, K, 2)
        offsets = centres[:, None, :, :] - centres[:, :, None, :]  # (B, K, K, 2): [i, j] = centre_j - centre_i
        relation = self.offset_output(self.offset_hidden(offsets))  # (B, K, K, Q)
        bound = bind_roles(self.subject(objects)[:, :, None, :], self.reference(objects)[:, None, :, :],
                           relation)  # (B, K, K, R * R * Q)
        others = ops.cast(1.0 - ops.eye(k), objects.dtype)[None, :, :, None]  # an object is not its own reference
        pair_weight = weight[:, :, None, :] * weight[:, None, :, :] * others  # (B, K, K, 1)
        return ops.concatenate([present, ops.sum(bound * pair_weight, axis=(1, 2))], axis=-1)

    def get_config(self):
        return {**super().get_config(), "object_dim": self.object_dim, "role_dim": self.role_dim,
                "relation_dim": self.relation_dim, "hidden": self.hidden}


@_register
class RoleTextTower(keras.layers.Layer):
    """Text side of the ``tower="objects"`` dual encoder: token ids -> one vector.

    ``layer(ids)`` with ids int (B, T), 0 = padding. Lesson 03's Transformer (unpooled,
    position-aware) gives a vector per word; four softmax *attention pools* (one learned
    score per word and pool, padding masked) read out four summaries: the objects
    mentioned, the subject, the reference and the relation. Returns float
    (B, object_dim + role_dim**2 * relation_dim), laid out like `ObjectPairTower`'s
    output: ``[objects mentioned ; bind_roles(subject, reference, relation)]``. Which word
    is the subject is learned from the word order (the positions), not given.
    """

    def __init__(self, vocab_size: int, max_length: int, text_dim: int = 64, num_heads: int = 4,
                 num_layers: int = 2, object_dim: int = 64, role_dim: int = 8, relation_dim: int = 4, **kwargs):
        super().__init__(**kwargs)
        self.vocab_size = positive_int(vocab_size, "vocab_size")
        self.max_length = positive_int(max_length, "max_length")
        self.text_dim, self.num_heads = positive_int(text_dim, "text_dim"), positive_int(num_heads, "num_heads")
        self.num_layers = positive_int(num_layers, "num_layers")
        self.object_dim, self.role_dim = positive_int(object_dim, "object_dim"), positive_int(role_dim, "role_dim")
        self.relation_dim = positive_int(relation_dim, "relation_dim")
        self.encoder = TransformerTextEncoder(self.vocab_size, self.max_length, embed_dim=self.text_dim,
                                              num_heads=self.num_heads, mlp_dim=2 * self.text_dim,
                                              num_layers=self.num_layers, pooling=None, name="encoder")
        self.pool_scores = keras.layers.Dense(4, name="pool_scores")  # objects, subject, reference, relation
        self.objects = keras.layers.Dense(self.object_dim, name="objects")
        self.subject = keras.layers.Dense(self.role_dim, name="subject")
        self.reference = keras.layers.Dense(self.role_dim, name="reference")
        self.relation = keras.layers.Dense(self.relation_dim, name="relation")

    def build(self, ids_shape):
        self.encoder.build((None, self.max_length))
        self.pool_scores.build((None, None, self.text_dim))
        for layer in (self.objects, self.subject, self.reference, self.relation):
            layer.build((None, self.text_dim))

    def call(self, ids, training=None):
        words = self.encoder(ids, training=training)  # (B, T, text_dim)
        padding = ops.cast(ops.equal(ids, 0), words.dtype)[..., None]  # (B, T, 1)
        attention = ops.softmax(self.pool_scores(words) - 1e9 * padding, axis=1)  # (B, T, 4): each pool sums to 1
        pools = ops.einsum("btp,btd->bpd", attention, words)  # (B, 4, text_dim)
        bound = bind_roles(self.subject(pools[:, 1]), self.reference(pools[:, 2]), self.relation(pools[:, 3]))
        return ops.concatenate([self.objects(pools[:, 0]), bound], axis=-1)  # (B, object_dim + R * R * Q)

    def get_config(self):
        return {**super().get_config(), "vocab_size": self.vocab_size, "max_length": self.max_length,
                "text_dim": self.text_dim, "num_heads": self.num_heads, "num_layers": self.num_layers,
                "object_dim": self.object_dim, "role_dim": self.role_dim, "relation_dim": self.relation_dim}


@_register
class DualEncoder(keras.Model):
    """A CLIP-style dual encoder for ShapeWorld images and captions.

    Inputs: a dict ``{"images": uint8 (B, H, W, 3) or float in [0, 1], "ids": int32 (B, T)}``
    (or a tuple ``(images, ids)``), optionally with ``"negative_ids"`` int32 (B, T): one
    hard-negative caption per example. Token id 0 is padding. Output: logits float32
    (B, B) (or (B, 2B) with negatives), ``cos(image_i, text_j) / T`` with the learned,
    clipped temperature T (lesson 05's `LearnedTemperature`); row i pairs with column i.

    `compute_loss` is the symmetric InfoNCE on these logits: with targets ``y`` (B, C)
    from the verifier (`batch_positives`) the multi-positive form, without ``y`` the plain
    diagonal form of lesson 05.

    Image tower: standardisation, ``downsample`` x average pooling, optional coordinate
    channels (CoordConv), lesson 03's `ConvImageEncoder` with ``output="tokens"`` (one
    vector per region of the last feature map), then ``image_pooling``: ``"moments"``
    (`spatial_moments`: mean, x-weighted and y-weighted mean of the regions) or
    ``"flatten"``; both keep *where* things are, which relations need (global average
    pooling would not), followed by ``Dense(image_features, relu)``. Text tower: lesson 03's
    `TransformerTextEncoder` (default; position embeddings let it see word order), a GRU,
    or a bag of embeddings (order-blind, for comparison). Each tower ends in a linear
    projection to ``embed_dim`` and L2 normalisation.

    ``tower="objects"`` (64x64 images only) replaces both towers, as LiT ("locked image
    tuning") keeps a pretrained image encoder frozen: the image side is lesson 04's object
    detector, frozen (`fusion.ObjectImageEncoder`, filled with `fusion.load_detector`),
    read by `ObjectPairTower`; the text side is `RoleTextTower`. Both give
    ``embed_dim + role_dim**2 * relation_dim`` numbers, L2-normalised, with no projection:
    the relation part is a `bind_roles` tensor on both sides, so it must keep its layout.
    The CNN-tower options (image_filters, image_features, downsample, image_token_dim,
    coordinates, image_pooling, text_encoder) do not apply.
    """

    def __init__(self, vocab_size: int, max_length: int = MAX_CAPTION_LENGTH, image_size: int = 64,
                 embed_dim: int = 128, image_filters: Sequence[int] = (16, 32, 64), image_features: int = 256,
                 text_encoder: str = "transformer", text_dim: int = 64, text_layers: int = 2, num_heads: int = 4,
                 initial_temperature: float = 0.1, downsample: int = 2, pixel_mean: float = PIXEL_MEAN,
                 pixel_std: float = PIXEL_STD, image_token_dim: int = 64, coordinates: bool = False,
                 image_pooling: str = "moments", tower: str = "cnn", role_dim: int = 8, relation_dim: int = 4,
                 **kwargs):
        super().__init__(**kwargs)
        for name, value in (("vocab_size", vocab_size), ("max_length", max_length), ("image_size", image_size),
                            ("embed_dim", embed_dim), ("image_features", image_features), ("text_dim", text_dim),
                            ("text_layers", text_layers), ("num_heads", num_heads), ("downsample", downsample)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"DualEncoder: {name} must be a positive int, got {value!r}.")
        if text_encoder not in TEXT_ENCODERS:
            raise ValueError(f"DualEncoder: text_encoder must be one of {TEXT_ENCODERS}, got {text_encoder!r}.")
        self.vocab_size, self.max_length, self.image_size = int(vocab_size), int(max_length), int(image_size)
        self.embed_dim, self.image_features = int(embed_dim), int(image_features)
        self.image_filters = tuple(int(f) for f in image_filters)
        self.downsample = int(downsample)
        if image_size % (self.downsample * 2 ** len(self.image_filters)):
            raise ValueError(f"DualEncoder: image_size {image_size} must be divisible by downsample * "
                             f"2**len(image_filters) = {self.downsample * 2 ** len(self.image_filters)} (one 2x2 "
                             "pooling per convolution).")
        if not pixel_std > 0:
            raise ValueError(f"DualEncoder: pixel_std must be positive, got {pixel_std!r}.")
        self.pixel_mean, self.pixel_std = float(pixel_mean), float(pixel_std)
        self.image_token_dim = int(image_token_dim)
        self.coordinates = bool(coordinates)
        if image_pooling not in IMAGE_POOLINGS:
            raise ValueError(f"DualEncoder: image_pooling must be one of {IMAGE_POOLINGS}, got {image_pooling!r}.")
        self.image_pooling = image_pooling
        self.text_encoder_kind, self.text_dim = text_encoder, int(text_dim)
        self.text_layers, self.num_heads = int(text_layers), int(num_heads)
        self.initial_temperature = float(initial_temperature)
        if tower not in TOWERS:
            raise ValueError(f"DualEncoder: tower must be one of {TOWERS}, got {tower!r}.")
        self.tower = tower
        self.role_dim = positive_int(role_dim, "role_dim")
        self.relation_dim = positive_int(relation_dim, "relation_dim")
        self.temperature_layer = LearnedTemperature(self.initial_temperature, name="temperature")
        self.loss_tracker = keras.metrics.Mean(name="loss")
        if tower == "objects":
            if self.image_size != 64:
                raise ValueError(f"DualEncoder: tower='objects' reads 64x64 images (lesson 04's detector), got "
                                 f"image_size={image_size}.")
            self.object_encoder = fusion.ObjectImageEncoder(name="object_encoder")
            self.object_encoder.trainable = False  # pretrained and frozen: fill it with fusion.load_detector
            self.image_tower = ObjectPairTower(self.embed_dim, self.role_dim, self.relation_dim, name="image_tower")
            self.text_tower = RoleTextTower(self.vocab_size, self.max_length, self.text_dim, self.num_heads,
                                            self.text_layers, self.embed_dim, self.role_dim, self.relation_dim,
                                            name="text_tower")
            return

        self.image_downsample = keras.layers.AveragePooling2D(self.downsample, name="image_downsample")
        self.image_encoder = ConvImageEncoder(self.image_filters, embed_dim=self.image_token_dim, output="tokens",
                                              channels=3 + 2 * self.coordinates,
                                              name="image_encoder")
        self.image_flatten = keras.layers.Flatten(name="image_flatten")
        self.image_mlp = keras.layers.Dense(self.image_features, activation="relu", name="image_mlp")
        self.image_projection = keras.layers.Dense(self.embed_dim, name="image_projection")
        if text_encoder == "transformer":
            self.text_encoder = TransformerTextEncoder(self.vocab_size, self.max_length, embed_dim=self.text_dim,
                                                       num_heads=self.num_heads, mlp_dim=2 * self.text_dim,
                                                       num_layers=self.text_layers, name="text_encoder")
        elif text_encoder == "gru":
            self.text_encoder = RecurrentTextEncoder(self.vocab_size, embed_dim=self.text_dim, units=self.text_dim,
                                                     name="text_encoder")
        else:
            self.text_encoder = BagOfEmbeddings(self.vocab_size, self.text_dim, name="text_encoder")
        self.text_projection = keras.layers.Dense(self.embed_dim, name="text_projection")

    # ------------------------------------------------------------------ building and inputs

    def build(self, input_shape=None):
        """Create every weight (the input shapes follow from the config). Sub-layers that a
        direct call such as `encode_images` has already built are left as they are."""
        if self.tower == "objects":
            shapes = [(self.object_encoder, (None, 64, 64, 3)),
                      (self.image_tower, (None, shapeworld.MAX_OBJECTS, len(fusion.OBJECT_FEATURES))),
                      (self.text_tower, (None, self.max_length)), (self.temperature_layer, None)]
            for layer, shape in shapes:
                if not layer.built:
                    layer.build(shape)
            self.built = True
            return
        small = self.image_size // self.downsample
        side = small // 2 ** len(self.image_filters)  # the last feature map is side x side
        flat = (side * side if self.image_pooling == "flatten" else 3) * self.image_token_dim
        shapes = [(self.image_encoder, (None, small, small, 3 + 2 * self.coordinates)),
                  (self.image_mlp, (None, flat)), (self.image_projection, (None, self.image_features)),
                  (self.text_encoder, (None, self.max_length)), (self.text_projection, (None, self.text_dim)),
                  (self.temperature_layer, None)]
        for layer, shape in shapes:
            if not layer.built:
                layer.build(shape)
        self.built = True

    def _check_images(self, images):
        shape = tuple(images.shape)
        if len(shape) != 4 or shape[-1] != 3:
            raise ValueError(f"images: expected shape (batch, {self.image_size}, {self.image_size}, 3), got {shape}.")
        if None not in shape[1:3] and shape[1:3] != (self.image_size, self.image_size):
            raise ValueError(f"images: this model was built for {self.image_size}x{self.image_size} images, got "
                             f"{shape[1]}x{shape[2]}.")
        dtype = dtype_name(images)
        if dtype == "uint8":
            images = ops.cast(images, "float32") / 255.0
        elif not dtype.startswith(("float", "bfloat")):
            raise TypeError(f"images: expected uint8 pixels or floats in [0, 1], got dtype {dtype}.")
        return (ops.cast(images, "float32") - self.pixel_mean) / self.pixel_std

    def _check_ids(self, ids):
        shape = tuple(ids.shape)
        if len(shape) != 2:
            raise ValueError(f"ids: expected token ids of shape (batch, time), got {shape}.")
        if not dtype_name(ids).startswith(("int", "uint")):
            raise TypeError(f"ids: expected integer token ids, got dtype {dtype_name(ids)}; use "
                            "Tokenizer.encode_batch (int32).")
        if shape[1] is not None and shape[1] > self.max_length:
            raise ValueError(f"ids: {shape[1]} tokens is longer than max_length={self.max_length}; encode with "
                             f"max_length={self.max_length}.")
        return ids

    @staticmethod
    def _unpack(inputs):
        if isinstance(inputs, dict):
            missing = {"images", "ids"} - set(inputs)
            extra = set(inputs) - {"images", "ids", "negative_ids"}
            if missing or extra:
                raise ValueError(f"DualEncoder inputs: expected a dict with keys 'images', 'ids' (and optionally "
                                 f"'negative_ids'), got keys {sorted(inputs)}.")
            return inputs["images"], inputs["ids"], inputs.get("negative_ids")
        if isinstance(inputs, (tuple, list)) and len(inputs) in (2, 3):
            return inputs[0], inputs[1], (inputs[2] if len(inputs) == 3 else None)
        raise TypeError("DualEncoder inputs: expected {'images': (B, H, W, 3), 'ids': (B, T)} or a tuple "
                        f"(images, ids), got {type(inputs).__name__}.")

    # ------------------------------------------------------------------ the two towers

    def encode_images(self, images, training=None):
        """images uint8 (B, H, W, 3) or float in [0, 1] -> L2-normalised float32 (B, embed_dim)
        (``embed_dim + role_dim**2 * relation_dim`` with ``tower="objects"``)."""
        images = _as_array(images, "images")
        if self.tower == "objects":
            self._check_images(images)  # shape and dtype; the detector rescales the pixels itself
            return l2_normalize(self.image_tower(self.object_encoder(images)))  # (B, K, 14) -> (B, D)
        x = self._check_images(images)  # (B, H, W, 3) standardised
        if self.downsample > 1:
            x = self.image_downsample(x)  # (B, H / s, W / s, 3): average pooling, cheaper convolutions
        if self.coordinates:
            x = add_coordinate_channels(x)  # (B, h, w, 5): CoordConv, every pixel knows where it is
        x = self.image_encoder(x)  # (B, h' * w', image_token_dim): one vector per region
        if self.image_pooling == "flatten":
            x = self.image_flatten(x)  # (B, h' * w' * image_token_dim)
        else:
            x = spatial_moments(x, self.image_size // self.downsample // 2 ** len(self.image_filters))  # (B, 3 F)
        x = self.image_mlp(x)  # (B, image_features), position-aware
        return l2_normalize(self.image_projection(x))  # (B, embed_dim)

    def encode_texts(self, ids, training=None):
        """ids int (B, T), 0 = padding -> L2-normalised float32 (B, embed_dim)."""
        ids = self._check_ids(_as_array(ids, "ids"))
        if self.tower == "objects":
            return l2_normalize(self.text_tower(ids, training=training))  # (B, D)
        if self.text_encoder_kind == "transformer":
            features = self.text_encoder(ids, training=training)  # (B, text_dim)
        else:
            features = self.text_encoder(ids)
        return l2_normalize(self.text_projection(features))  # (B, embed_dim)

    @property
    def temperature(self):
        """The current (clipped) temperature T, a float32 scalar tensor."""
        return self.temperature_layer.temperature

    def call(self, inputs, training=None):
        """Logits float32 (B, B) = cos(image_i, text_j) / T, or (B, 2B) when ``inputs`` also
        holds ``negative_ids`` (B, T): one hard-negative caption per example, as extra columns."""
        images, ids, negative_ids = self._unpack(inputs)
        images, ids = _as_array(images, "images"), _as_array(ids, "ids")
        texts = [("captions", ids)] + ([] if negative_ids is None else
                                       [("negative captions", _as_array(negative_ids, "negative_ids"))])
        for what, tensor in texts:
            if len(images.shape) >= 1 and len(tensor.shape) >= 1 and None not in (images.shape[0], tensor.shape[0]) \
                    and images.shape[0] != tensor.shape[0]:
                raise ValueError(f"Image/text batch mismatch: got {images.shape[0]} images and {tensor.shape[0]} "
                                 f"{what}. Row i of each must belong to the same example.")
        image_embeddings = self.encode_images(images, training=training)  # (B, D)
        if negative_ids is not None:
            if tuple(texts[1][1].shape[1:]) != tuple(ids.shape[1:]):
                raise ValueError(f"negative_ids: expected the length of ids {tuple(ids.shape)}, got "
                                 f"{tuple(texts[1][1].shape)}.")
            ids = ops.concatenate([ids, ops.cast(texts[1][1], ids.dtype)], axis=0)  # (2B, T)
        text_embeddings = self.encode_texts(ids, training=training)  # (B or 2B, D)
        cosine = ops.matmul(image_embeddings, ops.transpose(text_embeddings))  # (B, B or 2B)
        return self.temperature_layer(cosine)  # logits = cos / T

    # ------------------------------------------------------------------ training

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        """Symmetric InfoNCE of the (B, B) logits (the pairs are on the diagonal; no ``y``)."""
        if y_pred is None:
            y_pred = self(x, training=training)
        loss = info_nce_from_logits(y_pred) if y is None else multi_positive_info_nce(y_pred, y)
        for extra in self.losses:
            loss = loss + ops.cast(extra, loss.dtype)
        self.loss_tracker.update_state(loss)
        return loss

    @property
    def metrics(self):
        return [self.loss_tracker]

    def get_config(self):
        config = super().get_config()
        config.update(vocab_size=self.vocab_size, max_length=self.max_length, image_size=self.image_size,
                      embed_dim=self.embed_dim, image_filters=list(self.image_filters),
                      image_features=self.image_features, text_encoder=self.text_encoder_kind,
                      text_dim=self.text_dim, text_layers=self.text_layers, num_heads=self.num_heads,
                      initial_temperature=self.initial_temperature, downsample=self.downsample,
                      pixel_mean=self.pixel_mean, pixel_std=self.pixel_std, image_token_dim=self.image_token_dim,
                      coordinates=self.coordinates, image_pooling=self.image_pooling, tower=self.tower,
                      role_dim=self.role_dim, relation_dim=self.relation_dim)
        return config


# --------------------------------------------------------------------------- data, embeddings, evaluation


def make_tokenizer() -> Tokenizer:
    """The closed ShapeWorld vocabulary (`Tokenizer.for_shapeworld`)."""
    return Tokenizer.for_shapeworld()


def encode_captions(tokenizer: Tokenizer, captions: Sequence[str], max_length: int = MAX_CAPTION_LENGTH) -> np.ndarray:
    """Captions -> token ids int32 (N, max_length), right-padded with 0 (no <bos>/<eos>)."""
    if isinstance(captions, str):
        raise TypeError("captions: expected a list of strings, got one str; wrap it: [caption].")
    ids, _ = tokenizer.encode_batch(list(captions), max_length=max_length)
    return ids


def embed_images(model: DualEncoder, images, batch_size: int = 250) -> np.ndarray:
    """L2-normalised image embeddings float32 (N, D) for uint8 images (N, H, W, 3)."""
    images = validate_image(images, "images")
    if images.ndim != 4:
        raise ValueError(f"images: expected a batch (N, H, W, 3), got shape {images.shape}.")
    parts = [ops.convert_to_numpy(model.encode_images(images[i:i + batch_size]))
             for i in range(0, len(images), batch_size)]
    return np.concatenate(parts).astype(np.float32)


def embed_texts(model: DualEncoder, tokenizer: Tokenizer, texts: Sequence[str], batch_size: int = 500) -> np.ndarray:
    """L2-normalised text embeddings float32 (N, D) for a list of captions or prompts."""
    ids = encode_captions(tokenizer, texts, model.max_length)
    parts = [ops.convert_to_numpy(model.encode_texts(ids[i:i + batch_size]))
             for i in range(0, len(ids), batch_size)]
    return np.concatenate(parts).astype(np.float32)


def retrieval_scores(model: DualEncoder, tokenizer: Tokenizer, data: shapeworld.ShapeWorldData):
    """Embed a gallery and its captions; return ``(scores, hits)``, both (captions x images):
    scores float32 cosine similarities, hits bool from the verifier. Text-to-image
    retrieval reads the rows; image-to-text reads the columns (use ``.T``)."""
    image_embeddings = embed_images(model, data.images)
    text_embeddings = embed_texts(model, tokenizer, data.captions)
    scores = np.asarray(ops.convert_to_numpy(similarity_scores(text_embeddings, image_embeddings)))
    return scores, caption_hit_matrix(data.captions, data.scenes)


def retrieval_report(model: DualEncoder, tokenizer: Tokenizer, data: shapeworld.ShapeWorldData,
                     ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """Verifier-based recall@K both ways on ``data`` (its images are the gallery, its
    captions the queries): ``{"t2i_recall@1": ..., "i2t_recall@1": ..., ...}``."""
    scores, hits = retrieval_scores(model, tokenizer, data)
    report = {}
    for direction, (s, h) in {"t2i": (scores, hits), "i2t": (scores.T, hits.T)}.items():
        ranks = np.asarray(ops.convert_to_numpy(first_hit_ranks(s, h)))
        for k in ks:
            report[f"{direction}_recall@{k}"] = float(np.mean(ranks <= k))
    return report


def zero_shot_accuracy(model: DualEncoder, tokenizer: Tokenizer, data: shapeworld.ShapeWorldData,
                       attribute: str) -> float:
    """Zero-shot accuracy on single-object ``data`` (see `single_object_data`) for one
    attribute (color, shape or size): the class of the best-scoring `zero_shot_prompts` prompt."""
    if any(len(scene.objects) != 1 for scene in data.scenes):
        raise ValueError("zero_shot_accuracy expects single-object scenes (single_object_data); a scene with "
                         "several objects has several colours.")
    prompts, classes, names = zero_shot_prompts(attribute)
    predicted = zero_shot_predict(embed_images(model, data.images), embed_texts(model, tokenizer, prompts), classes)
    truth = np.array([names.index(getattr(scene.objects[0], attribute)) for scene in data.scenes])
    return float(np.mean(np.asarray(ops.convert_to_numpy(predicted)) == truth))


def reverse_relation(caption: str) -> str:
    """The caption with its relation reversed: left <-> right, above <-> below."""
    return " ".join(_SWAP_RELATION.get(word, word) for word in caption.split())


def relation_accuracy(model: DualEncoder, tokenizer: Tokenizer, data: shapeworld.ShapeWorldData) -> float:
    """Does the model read relations? For every relational caption of ``data`` whose
    reversed form (`reverse_relation`) is false of the caption's own image, the fraction
    in which the image is more similar to the caption than to the reversed caption.
    0.5 is chance: a model that treats captions as bags of words cannot beat it."""
    pairs = [(i, c, reverse_relation(c)) for i, c in enumerate(data.captions) if reverse_relation(c) != c]
    pairs = [(i, c, r) for i, c, r in pairs if not shapeworld.caption_is_true(r, data.scenes[i])]
    if not pairs:
        raise ValueError("relation_accuracy: data has no relational caption whose reverse is false.")
    index = [i for i, _, _ in pairs]
    images = embed_images(model, data.images[index])
    own = np.sum(images * embed_texts(model, tokenizer, [c for _, c, _ in pairs]), axis=1)
    reversed_ = np.sum(images * embed_texts(model, tokenizer, [r for _, _, r in pairs]), axis=1)
    return float(np.mean(own > reversed_))


# --------------------------------------------------------------------------- augmentation, hard negatives, the loss


def mirror_scene(scene: shapeworld.Scene) -> shapeworld.Scene:
    """The scene a left-right flip of its image shows: every x becomes 1 - x."""
    return shapeworld.Scene(tuple(dataclasses.replace(o, x=round(1.0 - o.x, 4)) for o in scene.objects))


def counterfactual_twin(image: np.ndarray, caption: str, scene: shapeworld.Scene, rng: np.random.Generator):
    """A *minimal pair* for a training example: the same objects with the relation of the
    caption turned around, and the caption that describes it.

    - "left of" / "right of" captions: the image mirrored left-right (the scene too) and
      the caption with left and right swapped;
    - "above" / "below" captions: the scene mirrored top-bottom and re-rendered (so
      triangles still point up), the caption with above and below swapped;
    - "there is" captions: the mirrored image, same caption.

    Returns ``(image uint8 (H, W, 3), caption, scene)``. In a batch holding both, the
    original caption is (almost always) false of the twin and vice versa, and everything
    but the relation is shared: the cleanest signal there is for learning relations.
    """
    from mmlm_course.preprocessing import flip_caption

    words = caption.split()
    if "above" in words or "below" in words:
        flipped = shapeworld.Scene(tuple(dataclasses.replace(o, y=round(1.0 - o.y, 4)) for o in scene.objects))
        twin_image = shapeworld.render_image(flipped, image.shape[0], rng)
        swap = {"above": "below", "below": "above"}
        return twin_image, " ".join(swap.get(w, w) for w in words), flipped
    return image[:, ::-1], flip_caption(caption), mirror_scene(scene)


def caption_training_set(data: shapeworld.ShapeWorldData, rng: np.random.Generator,
                         flip: bool = True) -> tuple[np.ndarray, list[str], list[shapeworld.Scene]]:
    """One epoch of augmented training pairs: ``(images uint8 (N, H, W, 3), captions, scenes)``.

    Every scene gets a freshly sampled true caption (`shapeworld.make_caption`), so the
    model sees several descriptions of each image over the epochs; with ``flip`` a random
    half of the images is mirrored left-right, its caption has *left* and *right* swapped
    (lesson 01's caption-preserving flip) and its scene is mirrored (`mirror_scene`).
    """
    from mmlm_course.preprocessing import flip_caption

    captions = [shapeworld.make_caption(scene, rng) for scene in data.scenes]
    images, scenes = data.images, list(data.scenes)
    if flip:
        mirrored = rng.random(len(captions)) < 0.5
        images = images.copy()
        images[mirrored] = images[mirrored][:, :, ::-1]
        captions = [flip_caption(c) if m else c for c, m in zip(captions, mirrored)]
        scenes = [mirror_scene(s) if m else s for s, m in zip(scenes, mirrored)]
    return images, captions, scenes


def perturb_caption(caption: str, rng: np.random.Generator, relation_probability: float = 0.5,
                    avoid=shapeworld.HELD_OUT) -> str:
    """A *hard negative*: the caption with one detail changed, e.g. "a large red circle is
    to the left of a small blue square" -> "... of a small blue triangle" or "... is to the
    right of ...".

    A caption with a relation has it reversed (left <-> right, above <-> below) with
    probability ``relation_probability``; otherwise one shape, colour or size word of one
    object is replaced by another value. Articles are fixed ("a" / "an"). A change that
    would name a colour-shape pair in ``avoid`` (the held-out pairs) is not made, so
    training never mentions them. The result is usually false of the scene, but not
    always (the scene may hold that object too): ask the verifier.
    """
    if not isinstance(caption, str):
        raise TypeError(f"caption: expected a str, got {type(caption).__name__}.")
    words = caption.split()
    shape_positions = [i for i, w in enumerate(words) if w in shapeworld.SHAPES]
    if not shape_positions:
        raise ValueError(f"perturb_caption: {caption!r} names no shape; expected a ShapeWorld caption.")
    has_relation = any(w in _SWAP_RELATION for w in words)
    if has_relation and rng.random() < relation_probability:
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
        options = [v for v in ATTRIBUTES[kind] if v != words[index]]
        new[index] = options[int(rng.integers(len(options)))]
        if c is not None and (new[c], new[s]) in avoid:
            continue
        for i, w in enumerate(new[:-1]):
            if w in ("a", "an"):
                new[i] = "an" if new[i + 1][0] in "aeiou" else "a"
        return " ".join(new)
    raise ValueError(f"perturb_caption: found no change to {caption!r} that avoids {avoid}.")  # pragma: no cover


def batch_positives(captions: Sequence[str], scenes: Sequence[shapeworld.Scene], batch_size: int,
                    negatives: Sequence[str] | None = None) -> np.ndarray:
    """Verifier targets for contrastive batches of consecutive examples.

    Returns float32 (N, batch_size), or (N, 2 * batch_size) with hard ``negatives`` (one
    per example). Row i holds, for example i's batch, which of its captions (then which of
    its hard negatives) are true of example i's scene; its own caption always is. ``N``
    must be a multiple of ``batch_size``. ``fit`` slices the rows along with the inputs, so
    each batch gets its (B, B) or (B, 2B) matrix of positives.
    """
    if len(captions) != len(scenes) or (negatives is not None and len(negatives) != len(captions)):
        raise ValueError(f"expected one caption (and one negative) per scene, got {len(captions)} captions, "
                         f"{len(scenes)} scenes and {None if negatives is None else len(negatives)} negatives.")
    if len(captions) % batch_size:
        raise ValueError(f"the number of examples ({len(captions)}) must be a multiple of batch_size={batch_size}; "
                         "drop the remainder.")
    rows = []
    for i in range(0, len(captions), batch_size):
        texts = list(captions[i:i + batch_size]) + ([] if negatives is None else list(negatives[i:i + batch_size]))
        rows.append(caption_hit_matrix(texts, scenes[i:i + batch_size]).T)  # (images, texts) of one batch
    return np.concatenate(rows).astype(np.float32)


def multi_positive_info_nce(logits, positives):
    """Symmetric InfoNCE when several captions of a batch can be true of an image.

    logits: float (B, C), images x texts (``cos / T``), C >= B: the first B texts are the
    batch's captions (text i belongs to image i), any further columns are extra texts such
    as hard negatives. positives: (B, C), True / 1 where text j is true of image i (at
    least the diagonal of the first B columns).

    Image-to-text: row i's target spreads evenly over its positives among all C texts.
    Text-to-image: for each of the B captions, a softmax over the B images (extra texts
    have no image of their own) with its target spread over the images it is true of.
    The loss is the mean of the two soft-target cross-entropies; with only the diagonal
    positive and C = B it equals `losses.info_nce_from_logits`.
    """
    logits = ops.cast(_float_matrix(logits, "logits", "(B, C): images x texts"), "float32")
    positives = ops.cast(_as_array(positives, "positives"), "float32")
    if tuple(positives.shape) != tuple(logits.shape):
        raise ValueError(f"positives: expected the shape of logits {tuple(logits.shape)}, "
                         f"got {tuple(positives.shape)}.")
    batch, columns = logits.shape
    if None not in (batch, columns) and columns < batch:
        raise ValueError(f"logits: expected at least as many texts as images (B, C >= B), "
                         f"got shape {(batch, columns)}.")
    batch = ops.shape(logits)[0] if batch is None else batch
    row_targets = positives / ops.maximum(ops.sum(positives, axis=1, keepdims=True), 1.0)
    image_to_text = -ops.sum(row_targets * log_softmax(logits, axis=1), axis=1)  # (B,)
    caption_logits, caption_positives = logits[:, :batch], positives[:, :batch]  # (B, B)
    column_targets = caption_positives / ops.maximum(ops.sum(caption_positives, axis=0, keepdims=True), 1.0)
    text_to_image = -ops.sum(column_targets * log_softmax(caption_logits, axis=0), axis=0)  # (B,)
    return (ops.mean(image_to_text) + ops.mean(text_to_image)) / 2.0


# --------------------------------------------------------------------------- training


def train_dual_encoder(model: DualEncoder, tokenizer: Tokenizer, data: shapeworld.ShapeWorldData, epochs: int,
                       batch_size: int = 64, learning_rate: float = 3e-3, seed: int = 0, augment: bool = True,
                       loss_targets: str = "verifier", hard_negatives: bool = True,
                       relation_probability: float = 0.6, twins: bool = False, on_epoch_end=None,
                       verbose: int = 0) -> dict[str, list[float]]:
    """Train ``model`` on ``data`` with Adam, a warmup + cosine schedule and in-batch negatives.

    Each epoch draws new captions (and flips) with `caption_training_set`, shuffles with
    its own seeded generator, drops the last incomplete batch, adds one hard negative per
    caption (`perturb_caption`, if ``hard_negatives``) and runs ``model.fit`` for one epoch.
    The targets of `DualEncoder.compute_loss` come from the verifier (`batch_positives`):
    every caption of the batch that is true of an image is a positive for it. With
    ``loss_targets="diagonal"`` only each image's own caption is (plain InfoNCE).
    ``on_epoch_end(epoch, history)`` is called after every epoch (e.g. to evaluate).

    Returns ``{"loss": [...], "temperature": [...], "seconds": [...]}``, one entry per epoch.
    """
    if isinstance(epochs, bool) or not isinstance(epochs, (int, np.integer)) or epochs < 1:
        raise ValueError(f"epochs must be a positive int, got {epochs!r}.")
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 2:
        raise ValueError(f"batch_size must be an int >= 2 (a contrastive batch needs negatives), got {batch_size!r}.")
    if twins and batch_size % 2:
        raise ValueError(f"batch_size must be even with twins=True (each example and its twin share a batch), "
                         f"got {batch_size}.")
    if loss_targets not in ("verifier", "diagonal"):
        raise ValueError(f"loss_targets must be 'verifier' or 'diagonal', got {loss_targets!r}.")
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
        if augment:
            images, captions, scenes = caption_training_set(data, rng)
        else:
            images, captions, scenes = data.images, data.captions, data.scenes
        if twins:  # half the scenes, each followed by its counterfactual twin (same batch)
            chosen = rng.permutation(len(captions))[:steps_per_epoch * batch_size // 2]
            pairs = [counterfactual_twin(images[i], captions[i], scenes[i], rng) for i in chosen]
            order = np.arange(len(chosen) * 2)
            images = np.stack([im for i, twin in zip(chosen, pairs) for im in (images[i], twin[0])])
            captions = [c for i, twin in zip(chosen, pairs) for c in (captions[i], twin[1])]
            scenes = [sc for i, twin in zip(chosen, pairs) for sc in (scenes[i], twin[2])]
        else:
            order = rng.permutation(len(captions))[:steps_per_epoch * batch_size]  # whole batches only
            captions, scenes = [captions[i] for i in order], [scenes[i] for i in order]
        inputs = {"images": images[order], "ids": encode_captions(tokenizer, captions, model.max_length)}
        negatives = None
        if hard_negatives:
            negatives = [perturb_caption(c, rng, relation_probability) for c in captions]
            inputs["negative_ids"] = encode_captions(tokenizer, negatives, model.max_length)
        targets = None
        if loss_targets == "verifier" or hard_negatives:
            targets = batch_positives(captions, scenes, batch_size, negatives)
            if loss_targets == "diagonal":  # ignore what the verifier says about the other captions
                targets = np.concatenate([np.eye(batch_size, dtype=np.float32)] * (len(captions) // batch_size))
                targets = np.concatenate([targets, np.zeros_like(targets)], axis=1)
        result = model.fit(inputs, targets, batch_size=batch_size, epochs=epoch + 1,
                           initial_epoch=epoch, shuffle=False, verbose=verbose)
        history["loss"].append(float(result.history["loss"][-1]))
        history["temperature"].append(float(model.temperature))
        history["seconds"].append(time.perf_counter() - start)
        if on_epoch_end is not None:
            on_epoch_end(epoch, history)
    return history
