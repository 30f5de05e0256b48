"""Checks for lesson 06: contrastive image-text retrieval.

Expected values come from the package (`mmlm_course.retrieval`, `mmlm_course.losses`,
ShapeWorld's verifier `shapeworld.caption_truth_matrix`) or from float64 NumPy written here;
the text tower's from a reference forward pass through the learner's own sub-layers.
"""

from __future__ import annotations

import warnings

import keras
import numpy as np
from keras import ops

from mmlm_course import attention, encoders, losses, retrieval, retrieval_training, shapeworld
from mmlm_course.exercises import Checker, exercise


def _unit64(x: np.ndarray, axis: int = 1) -> np.ndarray:
    x = np.asarray(x, np.float64)
    return x / np.linalg.norm(x, axis=axis, keepdims=True)


# --------------------------------------------------------------------------- 06.similarity_logits


def _logits64(images, texts, temperature):
    return _unit64(images) @ _unit64(texts).T / temperature


@exercise(
    "06.similarity_logits",
    reference=lambda images, texts, temperature: losses.similarity_logits(images, texts, temperature),
    mistakes={
        "forgets to L2-normalise (dot products)": lambda i, t, temp: (i @ t.T) / temp,
        "multiplies by the temperature": lambda i, t, temp: _unit64(i) @ _unit64(t).T * temp,
        "normalises over the batch axis": lambda i, t, temp: _unit64(i, 0) @ _unit64(t, 0).T / temp,
        "texts x images (transposed)": lambda i, t, temp: _unit64(t) @ _unit64(i).T / temp,
    },
)
def _check_similarity_logits(c: Checker) -> None:
    rng = np.random.default_rng(60)
    for batch, dim, temperature in ((4, 6, 0.07), (3, 8, 1.0), (5, 3, 0.5)):
        scale = rng.uniform(0.2, 5.0, size=(batch, 1))
        images = (rng.normal(size=(batch, dim)) * scale).astype(np.float32)
        texts = (rng.normal(size=(batch, dim)) * scale[::-1]).astype(np.float32)
        what = f"logits for B={batch}, D={dim}, T={temperature}"
        got = c.expect_array(what, c.call(images.copy(), texts.copy(), temperature), (batch, batch),
                             hint="one row per image and one column per text: (B, B)")
        expected = _logits64(images, texts, temperature)
        if not np.allclose(got.astype(np.float64), expected, rtol=1e-4, atol=1e-4):
            if np.allclose(got.astype(np.float64), expected.T, rtol=1e-4, atol=1e-4):
                c.fail(what, "the matrix is transposed", "entry [i, j] compares image i with text j: rows are images")
            if np.abs(got).max() > 1.0 / temperature + 1e-3:
                c.fail(what, f"a logit is larger than 1 / T = {1 / temperature:.3g} in size",
                       "cosine similarities lie in [-1, 1]: divide each embedding by its own length "
                       "(axis=-1) before the matrix product, then divide by T")
            c.fail(what, "values differ", "normalise each row to length 1, take all image-text dot products, "
                   "then divide (not multiply) by the temperature")
        c.passed.append(what)


# --------------------------------------------------------------------------- 06.caption_hits


def _bag_of_words_hits(captions, scenes):
    """Mistake: true when every colour / shape / size word names something in the scene."""
    words = [[w for w in c.split() if w in shapeworld.COLOR_NAMES + shapeworld.SHAPES + shapeworld.SIZES]
             for c in captions]
    present = [{getattr(o, a) for o in s.objects for a in ("color", "shape", "size")} for s in scenes]
    return np.array([[set(w) <= p for p in present] for w in words])


def _hit_cases():
    data = shapeworld.generate(7, "validation", seed=6)
    rng = np.random.default_rng(6)
    captions = list(data.captions[:5]) + [retrieval_training.perturb_caption(c, rng) for c in data.captions[:3]]
    captions += ["there is a small circle", "a square is above a triangle"]
    return captions, data.scenes


@exercise(
    "06.caption_hits",
    reference=shapeworld.caption_truth_matrix,
    mistakes={
        "only the caption's own image counts": lambda caps, scenes: np.eye(len(caps), len(scenes), dtype=bool),
        "scenes x captions (transposed)": lambda caps, scenes: np.array(
            [[shapeworld.caption_is_true(c, s) for c in caps] for s in scenes]),
        "0/1 integers instead of booleans": lambda caps, scenes: np.array(
            [[int(shapeworld.caption_is_true(c, s)) for s in scenes] for c in caps]),
        "checks the words, not the statement (bag of words)": _bag_of_words_hits,
    },
)
def _check_caption_hits(c: Checker) -> None:
    captions, scenes = _hit_cases()
    cases = (("10 captions x 7 scenes", captions, scenes), ("1 caption x 7 scenes", captions[:1], scenes))
    for what, caps, scs in cases:
        got = c.call(list(caps), list(scs))
        expected = shapeworld.caption_truth_matrix(caps, scs)
        array = c.expect_array(f"hits for {what}", got, expected.shape, hint="one row per caption, one column per "
                               "scene: (num_captions, num_scenes)")
        if array.dtype != bool:
            c.fail(f"hits for {what}", f"expected dtype bool, got {array.dtype}",
                   "store True / False (np.zeros((Q, N), dtype=bool))")
        wrong = np.argwhere(array != expected)
        if len(wrong):
            i, j = wrong[0]
            c.fail(f"hits for {what}", f"entry [{i}, {j}] is {bool(array[i, j])} for caption {caps[i]!r}",
                   "ask the verifier about every (caption, scene) pair: shapeworld.caption_is_true(caption, scene); "
                   "a caption can be true of many images, not only its own")
        c.passed.append(f"hits for {what}")


# --------------------------------------------------------------------------- 06.recall_with_hits


def _ranks64(scores, hits):
    scores = np.asarray(scores, np.float64)
    best = np.where(hits, scores, -np.inf).max(axis=1, keepdims=True)
    return 1 + ((scores >= best) & ~hits).sum(axis=1)


def _argsort_recall(scores, hits, k):
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return float(np.mean(np.take_along_axis(hits, top, axis=1).any(axis=1)))


def _precision_at_k(scores, hits, k):
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return float(np.mean(np.take_along_axis(hits, top, axis=1).mean(axis=1)))


# Ties: query 1 has a wrong candidate tied with its best hit; query 3 has two hits.
_TIE_SCORES = np.array([[0.9, 0.5, 0.1, 0.3, 0.2],
                        [0.2, 0.8, 0.8, 0.1, 0.0],
                        [0.4, 0.3, 0.7, 0.7, 0.6],
                        [0.6, 0.5, 0.4, 0.9, 0.95]], np.float32)
_TIE_HITS = np.array([[False, True, False, False, False],
                      [False, False, True, False, False],
                      [False, False, True, False, False],
                      [False, False, False, False, True]])


@exercise(
    "06.recall_with_hits",
    reference=lambda scores, hits, k: retrieval.recall_at_k_with_hits(scores, hits, k),
    mistakes={
        "only the paired item (the diagonal) counts": lambda s, h, k: float(np.mean(
            [i in np.argsort(-s[i], kind="stable")[:k] for i in range(len(s))])),
        "ties counted in favour": lambda s, h, k: float(np.mean(
            1 + ((s > np.where(h, s, -np.inf).max(1, keepdims=True)) & ~h).sum(1) <= k)),
        "top-k by argsort: ties broken by index": _argsort_recall,
        "precision@k (fraction of the top k that are hits)": _precision_at_k,
        "counts the queries instead of the fraction": lambda s, h, k: float(np.sum(_ranks64(s, h) <= k)),
    },
)
def _check_recall_with_hits(c: Checker) -> None:
    rng = np.random.default_rng(61)
    random_scores = rng.normal(size=(6, 6)).astype(np.float32)
    random_hits = rng.random((6, 6)) < 0.3
    random_hits[np.arange(6), np.arange(6)] = True  # every caption is true of its own image
    random_hits[0] = False
    random_hits[0, np.argmax(random_scores[0])] = True  # a hit that is not the paired item
    tie_scores = np.vstack([_TIE_SCORES[:, :4], [[0.1, 0.2, 0.3, 0.4]]])  # 5 x 4: Q != N
    tie_hits = np.vstack([_TIE_HITS[:, :4], [[True, False, False, False]]])
    tie_hits[3, 3] = True
    cases = [("random scores, several hits per query (6x6)", random_scores, random_hits, k) for k in (1, 2, 6)]
    cases += [("the 5x4 example with ties", tie_scores, tie_hits, k) for k in (1, 2, 3)]
    cases += [("constant scores", np.ones((3, 3), np.float32), np.eye(3, dtype=bool), k) for k in (1, 2)]
    for what, scores, hits, k in cases:
        label = f"recall@{k} on {what}"
        got = c.expect_number(label, c.call(scores.copy(), hits.copy(), k),
                      "return one number: the fraction of queries with a hit among their top k")
        expected = float(np.mean(_ranks64(scores, hits) <= k))
        if not abs(got - expected) < 1e-6:
            if len(scores) > 1 and abs(got - expected * len(scores)) < 1e-6:
                hint = (f"{got:g} is the number of queries with a hit; recall is that number divided by the "
                        f"{len(scores)} queries (a fraction between 0 and 1)")
            elif got > 1.0:
                hint = "recall is a fraction of the queries, between 0 and 1"
            elif got > expected:
                hint = ("a wrong candidate that ties with the best hit must count against the query: count scores "
                        "(how many wrong candidates score at least as high as the best hit), do not sort")
            else:
                hint = ("a query counts when ANY of its top k is a hit (hits[i, j] is True), not only its own item; "
                        "one hit is enough, so do not average the hits over the k candidates (that is precision@k)")
            c.fail(label, f"expected {expected:.4g}, got {got:.4g}", hint)
        c.passed.append(label)


# --------------------------------------------------------------------------- 06.zero_shot_predict


def _zero_shot_cases():
    rng = np.random.default_rng(62)
    prompts = rng.normal(size=(6, 4))
    prompts *= np.array([[0.2], [5.0], [1.0], [0.3], [3.0], [1.0]])  # very different norms
    classes = np.array([2, 0, 1, 2, 1, 0], np.int32)  # two prompts per class, not in order
    images = np.vstack([prompts[[0, 3, 2, 5]] / np.linalg.norm(prompts[[0, 3, 2, 5]], axis=1, keepdims=True) * 2.0
                        + 0.15 * rng.normal(size=(4, 4)), rng.normal(size=(3, 4))])
    yield "7 images, 6 prompts for 3 classes", images.astype(np.float32), prompts.astype(np.float32), classes
    yield "2 images, 3 prompts", images[:2].astype(np.float32), prompts[:3].astype(np.float32), np.array([0, 1, 2],
                                                                                                        np.int32)


def _reference_zero_shot(images, prompts, classes):
    return classes[np.argmax(_unit64(images) @ _unit64(prompts).T, axis=1)]


@exercise(
    "06.zero_shot_predict",
    reference=lambda images, prompts, classes: retrieval.zero_shot_predict(images, prompts, classes),
    mistakes={
        "dot products without normalising": lambda i, p, cl: cl[np.argmax(i @ p.T, axis=1)],
        "returns the best prompt's index, not its class": lambda i, p, cl: np.argmax(
            _unit64(i) @ _unit64(p).T, axis=1),
        "argmin (least similar prompt)": lambda i, p, cl: cl[np.argmin(_unit64(i) @ _unit64(p).T, axis=1)],
        "argmax over the images axis": lambda i, p, cl: cl[np.argmax(_unit64(i) @ _unit64(p).T, axis=0)],
    },
)
def _check_zero_shot_predict(c: Checker) -> None:
    for what, images, prompts, classes in _zero_shot_cases():
        got = c.call(images.copy(), prompts.copy(), classes.copy())
        expected = _reference_zero_shot(images, prompts, classes)
        array = c.expect_array(f"predictions for {what}", got, expected.shape,
                               hint="one class id per image: shape (B,)")
        if not np.issubdtype(array.dtype, np.integer):
            c.fail(f"predictions for {what}", f"expected integer class ids, got dtype {array.dtype}",
                   "return indices (np.argmax gives integers), not scores")
        if not np.array_equal(array, expected):
            wrong = int(np.flatnonzero(array != expected)[0])
            c.fail(f"predictions for {what}", f"image {wrong}: got class {array[wrong]}, expected another",
                   "compare by cosine similarity (normalise images and prompts), take each image's best prompt "
                   "(argmax over prompts) and return that prompt's class from prompt_classes")
        c.passed.append(f"predictions for {what}")


# --------------------------------------------------------------------------- 06.text_tower

_TOWER_PARTS = ("token_embedding", "position_embedding", "block", "final_norm", "projection")
_VOCAB, _MAX_LENGTH, _WIDTH, _EMBED, _HEADS = 12, 8, 16, 6, 2
# four captions padded to T = 8 (0 = padding): 5, 3, 4 and 8 real tokens
_TOWER_IDS = np.array([[3, 7, 2, 9, 4, 0, 0, 0],
                       [5, 11, 6, 0, 0, 0, 0, 0],
                       [8, 2, 10, 3, 0, 0, 0, 0],
                       [4, 4, 9, 1, 7, 2, 6, 11]], np.int32)


class _TowerParts(keras.layers.Layer):
    """The sub-layers of the text tower, exactly as the notebook's ``__init__`` creates them."""

    def __init__(self, vocab_size, max_length, width=64, embed_dim=128, num_heads=4, **kwargs):
        super().__init__(**kwargs)
        self.token_embedding = keras.layers.Embedding(vocab_size, width)
        self.position_embedding = encoders.PositionEmbedding(max_length, width)
        self.block = attention.TransformerBlock(width, num_heads, 2 * width)
        self.final_norm = keras.layers.LayerNormalization(epsilon=1e-5)
        self.projection = keras.layers.Dense(embed_dim)


def _tower_forward(t, token_ids, positions=True, block_mask=True, final_norm=True, pooling="real",
                   normalise="last"):
    """The text tower from ``t``'s sub-layers; the keywords switch on one typical mistake each."""
    mask = ops.not_equal(token_ids, 0)                                  # (B, T) True on real tokens
    x = t.token_embedding(token_ids)                                    # (B, T, width)
    if positions:
        x = t.position_embedding(x)
    x = t.block(x, mask=mask if block_mask else None)
    if final_norm:
        x = t.final_norm(x)
    if pooling == "real":
        x = encoders.masked_mean_pool(x, mask)                          # (B, width)
    elif pooling == "all":
        x = ops.mean(x, axis=1)
    else:                                                               # "length": masked sum / T
        x = ops.sum(x * ops.expand_dims(ops.cast(mask, x.dtype), -1), axis=1) / x.shape[1]
    if normalise == "first":
        return t.projection(losses.l2_normalize(x))
    x = t.projection(x)                                                 # (B, embed_dim)
    return {"last": losses.l2_normalize, "none": lambda z: z,
            "batch": lambda z: losses.l2_normalize(z, axis=0)}[normalise](x)


class _ReferenceTower(_TowerParts):
    def call(self, token_ids):
        return _tower_forward(self, token_ids)


def _token_sequence(t, token_ids):
    """Mistake: no pooling, one unit vector per token (B, T, embed_dim)."""
    x = t.final_norm(t.block(t.position_embedding(t.token_embedding(token_ids)), mask=ops.not_equal(token_ids, 0)))
    return losses.l2_normalize(t.projection(x))


def _tower_mistake(**flags):
    forward = flags.pop("forward", None) or (lambda self, ids: _tower_forward(self, ids, **flags))
    return type("MistakenTower", (_TowerParts,), {"call": lambda self, token_ids: forward(self, token_ids)})


# (switches of _tower_forward, what the output then shows, hint): tried in order to explain a difference
_TOWER_DIAGNOSES = (
    (dict(normalise="none"), "the rows are not unit vectors",
     "divide each embedding by its own L2 norm (over its features, axis=-1) so that a dot product is a cosine"),
    (dict(normalise="batch"), "each column has length 1, not each row",
     "normalise every embedding over its features (axis=-1), not over the batch (axis=0)"),
    (dict(normalise="first"), "the rows are not unit vectors",
     "L2 normalisation is the last step: normalise the projection's output, not its input"),
    (dict(pooling="all"), "the embedding changes when padding is removed",
     "the mean includes the padding positions: average only the real tokens (token_ids != 0)"),
    (dict(pooling="length"), "the embedding changes when padding is removed",
     "divide the masked sum by each caption's number of real tokens, not by the padded length T"),
    (dict(block_mask=False), "the embedding changes when padding is removed",
     "the block's attention reads the padding: pass the padding mask to self.block (mask=...)"),
    (dict(positions=False), "the embedding ignores word order",
     "add the position embeddings (self.position_embedding) to the token embeddings before the block"),
    (dict(final_norm=False), "values differ",
     "a pre-norm block leaves its output un-normalised: apply self.final_norm before pooling"),
)


@exercise(
    "06.text_tower",
    reference=_ReferenceTower,
    mistakes={
        "forgets the L2 normalisation": _tower_mistake(normalise="none"),
        "L2-normalises over the batch axis": _tower_mistake(normalise="batch"),
        "L2-normalises before the projection": _tower_mistake(normalise="first"),
        "pools over padding (plain mean over time)": _tower_mistake(pooling="all"),
        "divides by the padded length T, not the number of real tokens": _tower_mistake(pooling="length"),
        "the block ignores the padding mask": _tower_mistake(block_mask=False),
        "no position embeddings (order-blind)": _tower_mistake(positions=False),
        "skips the final LayerNorm": _tower_mistake(final_norm=False),
        "returns one vector per token (no pooling)": _tower_mistake(forward=_token_sequence),
    },
)
def _check_text_tower(c: Checker) -> None:
    with warnings.catch_warnings():              # Keras' build warnings about a wrong answer's unused layers
        warnings.simplefilter("ignore")
        _check_tower(c)


def _numpy(value) -> np.ndarray:
    return np.asarray(ops.convert_to_numpy(value), np.float64)


def _diagnose(c: Checker, tower, token_ids, got: np.ndarray, what: str, message: str, hint: str) -> None:
    """Fail with the hint of the typical mistake that ``got`` equals, else with ``message`` and ``hint``."""
    for flags, seen, specific in _TOWER_DIAGNOSES:
        if np.allclose(got, _numpy(_tower_forward(tower, token_ids, **flags)), atol=1e-4, rtol=1e-4):
            c.fail(what, seen, specific)
    c.fail(what, message, hint)


def _check_tower(c: Checker) -> None:
    # (the grader hands over a function that builds the learner's class, so test what it builds)
    if isinstance(c.candidate, keras.layers.Layer):
        c.fail("your answer", "expected the class itself, got an instance of it",
               "pass the class, not an instance: check(\"06.text_tower\", TextTower)")
    rng = np.random.default_rng(63)
    tower = c.call(_VOCAB, _MAX_LENGTH, width=_WIDTH, embed_dim=_EMBED, num_heads=_HEADS)
    if not isinstance(tower, keras.layers.Layer):
        c.fail("your answer", f"TextTower(...) returned a {type(tower).__name__} object, not a keras.layers.Layer",
               "pass the class that subclasses keras.layers.Layer: check(\"06.text_tower\", TextTower)")
    missing = [name for name in _TOWER_PARTS if not isinstance(getattr(tower, name, None), keras.layers.Layer)]
    if missing:
        c.fail("the tower's layers", f"missing {missing}",
               "keep the layers that __init__ creates (" + ", ".join(_TOWER_PARTS) + ") and write call()")
    run = Checker(c.exercise_id, tower)                     # calling the tower: crashes become one line
    ids = _TOWER_IDS
    what = f"embeddings of token_ids {ids.shape}"
    c.expect_array(what, run.call(ids.copy()), (len(ids), _EMBED),
                   hint="one vector per caption: pool the tokens over the time axis (axis=1), then project: "
                        "(batch, embed_dim)")
    for part in _TOWER_PARTS:                               # random weights: LayerNorm and biases now matter
        layer = getattr(tower, part)
        if layer.get_weights():
            layer.set_weights([rng.normal(scale=0.5, size=w.shape).astype(np.float32) for w in layer.get_weights()])
    got = _numpy(run.call(ids.copy()))
    if not np.isfinite(got).all():
        c.fail(f"{what} (random weights)", "contain NaN or inf",
               "divide only by quantities that cannot be 0: every caption has at least one real token")
    lengths = np.linalg.norm(got, axis=1)
    if not np.allclose(lengths, 1.0, atol=1e-4):
        _diagnose(c, tower, ids, got, f"{what} (random weights)",
                  f"row lengths from {lengths.min():.3g} to {lengths.max():.3g}, not 1",
                  "end with an L2 normalisation of each row (axis=-1), after the projection")
    c.passed.append("every embedding has length 1")
    short = _numpy(run.call(ids[:3, :5].copy()))            # the same three captions with less padding
    if not np.allclose(short, got[:3], atol=1e-4, rtol=1e-4):
        _diagnose(c, tower, ids, got, "captions padded to T = 8 and to T = 5",
                  "the embedding changes when padding is removed",
                  "padding must not change a caption's embedding: give the block the padding mask "
                  "(token_ids != 0) and average only the real tokens")
    c.passed.append("padding does not change an embedding")
    expected = _numpy(_tower_forward(tower, ids))
    if not np.allclose(got, expected, atol=1e-4, rtol=1e-4):
        _diagnose(c, tower, ids, got, f"{what} (random weights)", "values differ",
                  "token embeddings + positions -> self.block(x, mask=mask) -> self.final_norm -> mean over the "
                  "real tokens -> self.projection -> L2 normalisation; use each layer once, in this order")
    c.passed.append(f"{what} (random weights) values")
