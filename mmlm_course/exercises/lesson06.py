"""Checks for lesson 06: contrastive image-text retrieval.

Expected values come from float64 NumPy written here, or from the package's verifier
(`shapeworld.caption_truth_matrix`). The text tower's come from the check's own forward pass
through layers it rebuilds from the settings and weights of the learner's sub-layers
(`layers.rebuild_layer`, which the checks of lesson 03's block and lesson 07's decoder use too).
"""

from __future__ import annotations

import types
import warnings

import keras
import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from keras import ops

from mmlm_course import attention, encoders, losses, retrieval, shapeworld
from mmlm_course.exercises import Checker, draw_cases, exercise
from mmlm_course.exercises.layers import (add_positions, expect_layer_class, instantiate, layer_output,
                                          layer_snapshot, output_data, randomise_weights, rebuild_layer)
from mmlm_course.exercises.lesson07 import as_array_answer


def _unit64(x: np.ndarray, axis: int = 1) -> np.ndarray:
    x = np.asarray(x, np.float64)
    return x / np.linalg.norm(x, axis=axis, keepdims=True)


# --------------------------------------------------------------------------- 06.similarity_logits


def _logits64(images, texts, temperature):
    return _unit64(images) @ _unit64(texts).T / temperature


def _embedding_pairs():
    """(what, images, texts, temperature): rows of lengths from 0.001 to 1000, T from CLIP's clip limit
    0.01 (logits up to 100) to 1, a square batch, a batch of one, texts equal to the images."""
    rng = np.random.default_rng(60)
    cases = []
    for batch, dim, temperature in ((4, 6, 0.07), (3, 8, 1.0), (5, 3, 0.5), (6, 6, 0.01), (1, 4, 0.07)):
        scale = 10.0 ** rng.uniform(-3, 3, size=(batch, 1))
        images = (rng.normal(size=(batch, dim)) * scale).astype(np.float32)
        texts = (rng.normal(size=(batch, dim)) * scale[::-1]).astype(np.float32)
        cases.append((f"B={batch}, D={dim}, T={temperature}", images, texts, temperature))
    same = cases[0][1]
    cases.append(("texts equal to the images, T=0.01", same, same * np.float32(3.0), 0.01))
    rows = hnp.arrays(np.float32, st.tuples(st.integers(1, 4), st.integers(1, 5)),
                      elements=st.floats(-100, 100, width=32, allow_subnormal=False))
    drawn = st.tuples(rows, st.sampled_from((0.01, 0.07, 1.0)), st.integers(0, 2 ** 16))
    for x, temperature, seed in draw_cases(drawn, 6):
        x = np.where(np.linalg.norm(x, axis=1, keepdims=True) < 0.1, np.float32(1.0), x)   # rows of length > 0
        y = np.random.default_rng(seed).normal(size=x.shape).astype(np.float32) * 7
        cases.append((f"drawn embeddings {x.shape}, T={temperature}", x, y, temperature))
    return cases


@exercise(
    "06.similarity_logits",
    reference=lambda images, texts, temperature: losses.similarity_logits(images, texts, temperature),
    mistakes={
        "forgets to L2-normalise (dot products)": lambda i, t, temp: (i @ t.T) / temp,
        "multiplies by the temperature": lambda i, t, temp: _unit64(i) @ _unit64(t).T * temp,
        "normalises over the batch axis": lambda i, t, temp: _unit64(i, 0) @ _unit64(t, 0).T / temp,
        "texts x images (transposed)": lambda i, t, temp: _unit64(t) @ _unit64(i).T / temp,
        "one norm for the whole matrix (no axis)": lambda i, t, temp: (
            (i / np.linalg.norm(i)) @ (t / np.linalg.norm(t)).T / temp),
        "norms without keepdims (divides the columns)": lambda i, t, temp: (
            (i / np.linalg.norm(i, axis=1)) @ (t / np.linalg.norm(t, axis=1)).T / temp),
        "normalises only the images": lambda i, t, temp: _unit64(i) @ np.asarray(t, np.float64).T / temp,
        "computes in float16": lambda i, t, temp: (
            _unit64(i).astype(np.float16) @ _unit64(t).astype(np.float16).T / np.float16(temp)),
        "cosine distance (1 - cos) / T": lambda i, t, temp: (1.0 - _unit64(i) @ _unit64(t).T) / temp,
    },
)
def _check_similarity_logits(c: Checker) -> None:
    for what, images, texts, temperature in _embedding_pairs():
        what = f"logits for {what}"
        batch = len(images)
        got = as_array_answer(c, what, c.call(images.copy(), texts.copy(), temperature),
                              "return the (B, B) matrix: one row per image and one column per text")
        got = c.expect_array(what, got, (batch, batch), hint="one row per image and one column per text: (B, B)")
        expected = _logits64(images, texts, temperature)
        dtype, got = got.dtype, got.astype(np.float64)
        if np.allclose(got, expected, rtol=1e-4, atol=1e-4):
            c.passed.append(what)
            continue
        i, j = np.unravel_index(np.argmax(np.abs(np.nan_to_num(got - expected, nan=np.inf))), expected.shape)
        where = f"entry [{i}, {j}] is {got[i, j]:.6g}, expected {expected[i, j]:.6g}"
        if dtype == np.float16:
            c.fail(what, f"{where}: your logits are float16, which keeps about 3 significant digits",
                   "compute in float32 or float64")
        if batch > 1 and np.allclose(got, expected.T, rtol=1e-4, atol=1e-4):
            c.fail(what, "the matrix is transposed", "entry [i, j] compares image i with text j: rows are images")
        if not np.isfinite(got).all():
            c.fail(what, f"{where}: not a finite number", "divide each embedding by its own length; every row "
                   "given here has a length above 0")
        if np.abs(got).max() > 1.0 / temperature * (1 + 1e-3):
            c.fail(what, f"{where}, larger than 1 / T = {1 / temperature:.3g} in size",
                   "cosine similarities lie in [-1, 1]: divide each embedding by its own length "
                   "(axis=-1) before the matrix product, then divide by T")
        if temperature <= 0.01 and np.allclose(got, expected, rtol=1e-2, atol=1e-2):
            c.fail(what, f"{where}: close, but not to 4 digits",
                   "at T = 0.01 the logits reach 100, so rounding shows: compute in float32 or float64")
        c.fail(what, where, "normalise each row to length 1, take all image-text dot products, "
               "then divide (not multiply) by the temperature")


# --------------------------------------------------------------------------- 06.caption_hits


def _bag_of_words_hits(captions, scenes):
    """Mistake: true when every colour / shape / size word names something in the scene."""
    words = [[w for w in c.split() if w in shapeworld.COLOR_NAMES + shapeworld.SHAPES + shapeworld.SIZES]
             for c in captions]
    present = [{getattr(o, a) for o in s.objects for a in ("color", "shape", "size")} for s in scenes]
    return np.array([[set(w) <= p for p in present] for w in words])


def _rows_by_index(captions, scenes):
    """Mistake: finds a caption's row with captions.index, so a repeated caption's own row stays False."""
    hits = np.zeros((len(captions), len(scenes)), dtype=bool)
    for caption in captions:
        for j, scene in enumerate(scenes):
            hits[captions.index(caption), j] = shapeworld.caption_is_true(caption, scene)
    return hits


def _first_true_scene(captions, scenes):
    """Mistake: stops at the first scene the caption is true of."""
    hits = np.zeros((len(captions), len(scenes)), dtype=bool)
    for i, caption in enumerate(captions):
        for j, scene in enumerate(scenes):
            if shapeworld.caption_is_true(caption, scene):
                hits[i, j] = True
                break
    return hits


def _hit_cases():
    """Fresh on every run: captions (some with a repeated word, one repeated, one a hard negative) and
    scenes (one repeated), so nothing the learner's code changes can reach the expected values."""
    data = shapeworld.generate(7, "validation", seed=6)
    captions = list(data.captions[:5]) + [
        "a large orange square is above a large red square",            # a one-word change of caption 0
        "a small purple circle is above a small yellow square",
        "there is a small circle", "a square is above a triangle",
        "a circle is above a circle", "there is a small circle"]        # the same caption twice
    scenes = list(data.scenes) + [data.scenes[1]]                       # the same scene twice
    return captions, scenes


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
        "finds each caption's row with captions.index (a repeated caption)": _rows_by_index,
        "one row per distinct caption (a set)": lambda caps, scenes: shapeworld.caption_truth_matrix(
            sorted(set(caps)), scenes),
        "stops at the first true scene": _first_true_scene,
    },
)
def _check_caption_hits(c: Checker) -> None:
    captions, scenes = _hit_cases()
    cases = ((captions, scenes), (captions[-2:-1], scenes), (captions, scenes[1:2]))
    hint = "one row per caption, one column per scene: (len(captions), len(scenes))"
    for caps, scs in cases:
        what = f"hits for {len(caps)} caption(s) x {len(scs)} scene(s)"
        expected = shapeworld.caption_truth_matrix(caps, scs)
        array = as_array_answer(c, what, c.call(list(caps), list(scs)), hint)
        array = c.expect_array(what, array, expected.shape, hint=hint)
        if array.dtype != bool:
            c.fail(what, f"expected dtype bool, got {array.dtype}",
                   "store True / False (np.zeros((Q, N), dtype=bool))")
        wrong = np.argwhere(array != expected)
        if len(wrong):
            i, j = wrong[0]
            repeated = caps.index(caps[i]) != i
            c.fail(what, f"entry [{i}, {j}] is {bool(array[i, j])} for caption {i} {caps[i]!r}"
                   + (" (a caption that appears twice in the list)" if repeated else ""),
                   "fill row i from captions[i] and column j from scenes[j] by their positions, even when a "
                   "caption appears twice" if repeated else
                   "ask the verifier about every (caption, scene) pair: shapeworld.caption_is_true(caption, scene); "
                   "a caption can be true of many images, not only its own")
        c.passed.append(what)


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


def _first_hit_recall(scores, hits, k):
    """Mistake: ranks the first hit (lowest index), not the best-scoring one."""
    first = scores[np.arange(len(scores)), np.argmax(hits, axis=1)][:, None]
    return float(np.mean(1 + ((scores >= first) & ~hits).sum(axis=1) <= k))


# Ties: query 1 has a wrong candidate tied with its best hit; query 3 has two hits.
_TIE_SCORES = ((0.9, 0.5, 0.1, 0.3), (0.2, 0.8, 0.8, 0.1), (0.4, 0.3, 0.7, 0.7), (0.6, 0.5, 0.4, 0.9),
               (0.1, 0.2, 0.3, 0.4))
_TIE_HITS = ((False, True, False, False), (False, False, True, False), (False, False, True, False),
             (False, False, False, True), (True, False, False, False))
# Several hits tied at the top (query 0: three of them), and below a wrong candidate (query 1)
_HIT_TIE_SCORES = ((0.7, 0.7, 0.2, 0.7, 0.5), (0.4, 0.9, 0.6, 0.6, 0.6), (0.3, 0.3, 0.3, 0.3, 0.3))
_HIT_TIE_HITS = ((True, True, False, True, False), (False, False, True, True, False),
                 (True, True, True, True, True))

_BASIC_HINT = ("the rank of a query is 1 + the number of wrong candidates (not hits) that score at least as high "
               "as its best-scoring hit; recall@k is the fraction of queries whose rank is at most k, so ANY hit in "
               "the top k is enough (do not average the hits over the k: that is precision@k)")
_TIE_HINT = ("a wrong candidate that ties with the best hit must count against the query: count the wrong "
             "candidates that score at least as high as the best hit, do not sort")
_HIT_TIE_HINT = ("other hits that tie with the best hit do not push it down: count only the wrong candidates "
                 "(hits[i, j] is False) that score at least as high")


def _recall_cases():
    """(what, scores, hits, k, (hint when too high, hint when too low)), the plain cases first."""
    rng = np.random.default_rng(61)
    scores = rng.normal(size=(6, 6)).astype(np.float32)
    hits = rng.random((6, 6)) < 0.3
    hits[np.arange(6), np.arange(6)] = True                     # every caption is true of its own image
    hits[0] = False
    hits[0, np.argmax(scores[0])] = True                        # a hit that is not the paired item
    basic, ties, hit_ties = (_BASIC_HINT, _BASIC_HINT), (_TIE_HINT, _BASIC_HINT), (_TIE_HINT, _HIT_TIE_HINT)
    cases = [("random scores, several hits per query (6x6)", scores, hits, k, basic) for k in (1, 2, 6)]
    cases += [("one query (1x6)", scores[2:3], hits[2:3], k, basic) for k in (1, 3)]
    cases.append(("a query whose first hit is not its best one", np.array([[0.2, 0.9, 0.5, 0.3, 0.0]], np.float32),
                  np.array([[True, False, True, False, False]]), 2, basic))
    cases.append(("negative scores (cosine similarities below 0)", np.array([[-0.5, -0.2, -0.9], [-0.1, -0.7, -0.3]],
                                                                            np.float32),
                  np.array([[True, False, False], [False, True, True]]), 1, basic))
    example = np.array(_TIE_SCORES, np.float32), np.array(_TIE_HITS)
    cases += [("the 5x4 example with a wrong candidate tied with a hit", *example, k, ties) for k in (1, 2, 3)]
    cases += [("constant scores", np.ones((3, 3), np.float32), np.eye(3, dtype=bool), k, ties) for k in (1, 2)]
    example = np.array(_HIT_TIE_SCORES, np.float32), np.array(_HIT_TIE_HITS)
    cases += [("the 3x5 example with several hits tied at the top", *example, k, hit_ties) for k in (1, 2)]
    shape = st.tuples(st.integers(1, 4), st.integers(1, 5))
    drawn = shape.flatmap(lambda s: st.tuples(
        hnp.arrays(np.int8, s, elements=st.integers(0, 3)), hnp.arrays(np.bool_, s), st.integers(1, s[1])))
    for small, hits, k in draw_cases(drawn, 10):               # small integer scores: many ties
        hits = hits.copy()
        hits[~hits.any(axis=1), 0] = True                       # every row has a hit
        cases.append((f"drawn scores with ties {small.shape}", small.astype(np.float32), hits, k, hit_ties))
    return cases


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
        "hits tied with the best hit count against it": lambda s, h, k: float(np.mean(
            (s >= np.where(h, s, -np.inf).max(1, keepdims=True)).sum(1) <= k)),
        "ranks the first hit, not the best one": _first_hit_recall,
        "rank < k (off by one)": lambda s, h, k: float(np.mean(_ranks64(s, h) < k)),
        "best hit read as scores * hits (a negative best hit becomes 0)": lambda s, h, k: float(np.mean(
            1 + ((s >= (s * h).max(1, keepdims=True)) & ~h).sum(1) <= k)),
    },
)
def _check_recall_with_hits(c: Checker) -> None:
    for what, scores, hits, k, (too_high, too_low) in _recall_cases():
        label = f"recall@{k} on {what}"
        got = c.expect_number(label, c.call(scores.copy(), hits.copy(), k),
                              "return one number: the fraction of queries with a hit among their top k")
        expected = float(np.mean(_ranks64(scores, hits) <= k))
        if not abs(got - expected) < 1e-6:
            if len(scores) > 1 and abs(got - expected * len(scores)) < 1e-6:
                hint = (f"{got:g} is the number of queries with a hit; recall is that number divided by the "
                        f"{len(scores)} queries (a fraction between 0 and 1)")
            elif not 0.0 <= got <= 1.0:
                hint = "recall is a fraction of the queries, between 0 and 1"
            else:
                hint = too_high if got > expected else too_low
            c.fail(label, f"expected {expected:.4g}, got {got:.4g}", hint)
        c.passed.append(label)


# --------------------------------------------------------------------------- 06.zero_shot_predict


def _zero_shot_cases():
    rng = np.random.default_rng(62)
    prompts = rng.normal(size=(6, 4))
    prompts *= np.array([[0.2], [5.0], [1.0], [0.3], [3.0], [1.0]])  # very different norms
    classes = np.array([2, 0, 1, 2, 1, 0], np.int32)  # two prompts per class, not in order
    images = np.vstack([prompts[[0, 3, 2, 5]] / np.linalg.norm(prompts[[0, 3, 2, 5]], axis=1, keepdims=True) * 2.0
                        + 0.15 * rng.normal(size=(4, 4)), rng.normal(size=(3, 4)) * [[0.01], [1.0], [50.0]]])
    yield "7 images, 6 prompts for 3 classes", images, prompts, classes
    yield "2 images, 3 prompts", images[:2], prompts[:3], np.array([0, 1, 2], np.int32)
    yield "1 image", images[4:5], prompts, classes
    yield "1 prompt", images, prompts[1:2], np.array([4], np.int32)
    # class 7's best prompt matches image 0, but its other prompt points away: the best prompt decides, not a
    # class average (of prompts or of similarities); class ids need not be 0..C-1
    e = np.eye(3)
    yield ("prompts whose class average points elsewhere", np.array([e[0] * 3, e[0] + e[1], e[2] * 0.5]),
           np.array([e[0] * 2, -e[0] + e[1], e[0] + 0.5 * e[1], e[0] + 0.5 * e[2], e[2] * 9]),
           np.array([7, 7, 3, 3, 5], np.int32))


def _reference_zero_shot(images, prompts, classes):
    return classes[np.argmax(_unit64(images) @ _unit64(prompts).T, axis=1)]


def _class_average_zero_shot(images, prompts, classes):
    """Mistake: averages each class's cosine similarities, then takes the best class."""
    cos = _unit64(images) @ _unit64(prompts).T
    labels = np.unique(classes)
    return labels[np.argmax([cos[:, classes == label].mean(axis=1) for label in labels], axis=0)]


@exercise(
    "06.zero_shot_predict",
    reference=lambda images, prompts, classes: retrieval.zero_shot_predict(images, prompts, classes),
    mistakes={
        "dot products without normalising": lambda i, p, cl: cl[np.argmax(i @ p.T, axis=1)],
        "returns the best prompt's index, not its class": lambda i, p, cl: np.argmax(
            _unit64(i) @ _unit64(p).T, axis=1),
        "argmin (least similar prompt)": lambda i, p, cl: cl[np.argmin(_unit64(i) @ _unit64(p).T, axis=1)],
        "argmax over the images axis": lambda i, p, cl: cl[np.argmax(_unit64(i) @ _unit64(p).T, axis=0)],
        "averages each class's similarities": _class_average_zero_shot,
        "normalises the prompts over the batch axis": lambda i, p, cl: cl[np.argmax(i @ _unit64(p, 0).T, axis=1)],
        "returns the class as a float": lambda i, p, cl: _reference_zero_shot(i, p, cl).astype(np.float32),
    },
)
def _check_zero_shot_predict(c: Checker) -> None:
    hint = "one class id per image: shape (B,)"
    for what, images, prompts, classes in _zero_shot_cases():
        what = f"predictions for {what}"
        images, prompts = images.astype(np.float32), prompts.astype(np.float32)
        expected = _reference_zero_shot(images, prompts, classes)
        array = as_array_answer(c, what, c.call(images.copy(), prompts.copy(), classes.copy()), hint)
        array = c.expect_array(what, array, expected.shape, hint=hint)
        if not np.issubdtype(array.dtype, np.integer):
            c.fail(what, f"expected integer class ids, got dtype {array.dtype}",
                   "return entries of prompt_classes (integers), not scores")
        if not np.array_equal(array, expected):
            wrong = int(np.flatnonzero(array != expected)[0])
            c.fail(what, f"image {wrong}: got class {array[wrong]}, expected class {expected[wrong]}",
                   "compare by cosine similarity (normalise images and prompts), take each image's single best "
                   "prompt (argmax over prompts) and return that prompt's class from prompt_classes")
        c.passed.append(what)


# --------------------------------------------------------------------------- 06.text_tower

_TOWER_PARTS = ("token_embedding", "position_embedding", "block", "final_norm", "projection")
_VOCAB, _MAX_LENGTH, _WIDTH, _EMBED, _HEADS = 12, 8, 16, 6, 2
# five captions padded to T = 8 (0 = padding): 5, 3, 4, 8 and 1 real tokens; a word repeated in row 3
_TOWER_IDS = ((3, 7, 2, 9, 4, 0, 0, 0), (5, 11, 6, 0, 0, 0, 0, 0), (8, 2, 10, 3, 0, 0, 0, 0),
              (4, 4, 9, 1, 7, 2, 6, 11), (6, 0, 0, 0, 0, 0, 0, 0))
_TOWER_LABEL = ("TextTower(12, 8, width=16, embed_dim=6, num_heads=2) with random weights, called on token_ids "
                "(5, 8), on its first three rows cut to (3, 5) and on row 1 alone (1, 8)")
_NEVER_CALLED = types.MappingProxyType({
    "token_embedding": "start from the token embeddings: self.token_embedding(token_ids)",
    "position_embedding": "the embedding ignores word order: add the position embeddings (self.position_embedding) "
                          "to the token embeddings before the block",
    "block": "run the Transformer block (self.block) on the embeddings, with the padding mask",
    "final_norm": "a pre-norm block leaves its output un-normalised: apply self.final_norm before pooling",
    "projection": "project the pooled vector into the shared space with self.projection before normalising",
})


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
        x = add_positions(t.position_embedding, x)
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
    (types.MappingProxyType(dict(normalise="none")), "the rows are not unit vectors",
     "divide each embedding by its own L2 norm (over its features, axis=-1) so that a dot product is a cosine"),
    (types.MappingProxyType(dict(normalise="batch")), "each column has length 1, not each row",
     "normalise every embedding over its features (axis=-1), not over the batch (axis=0)"),
    (types.MappingProxyType(dict(normalise="first")), "the rows are not unit vectors",
     "L2 normalisation is the last step: normalise the projection's output, not its input"),
    (types.MappingProxyType(dict(pooling="all")), "the embedding changes when padding is removed",
     "the mean includes the padding positions: average only the real tokens (token_ids != 0)"),
    (types.MappingProxyType(dict(pooling="length")), "the embedding changes when padding is removed",
     "divide the masked sum by each caption's number of real tokens, not by the padded length T"),
    (types.MappingProxyType(dict(block_mask=False)), "the embedding changes when padding is removed",
     "the block's attention reads the padding: pass the padding mask to self.block (mask=...)"),
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
        "the final LayerNorm after pooling": type("LateNormTower", (_TowerParts,), {"call": lambda self, ids: (
            losses.l2_normalize(self.projection(self.final_norm(encoders.masked_mean_pool(
                self.block(self.position_embedding(self.token_embedding(ids)), mask=ops.not_equal(ids, 0)),
                ops.not_equal(ids, 0))))))}),
    },
)
def _check_text_tower(c: Checker) -> None:
    result = c.scenario(_TOWER_LABEL, _run_tower)
    expect_layer_class(c, result, "TextTower")
    missing = [name for name in _TOWER_PARTS if result["parts"].get(name) is None]
    if missing:
        c.fail("the tower's layers", f"missing {missing}",
               "keep the layers that __init__ creates (" + ", ".join(_TOWER_PARTS) + ") and write call()")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _compare_tower(c, result)


def _run_tower(candidate):
    """Scenario: build the learner's tower, give its layers random weights, run it on three batches."""
    ids = np.array(_TOWER_IDS, np.int32)
    with warnings.catch_warnings():              # Keras' build warnings about a wrong answer's unused layers
        warnings.simplefilter("ignore")
        tower = instantiate(candidate, _VOCAB, _MAX_LENGTH, width=_WIDTH, embed_dim=_EMBED, num_heads=_HEADS)
        if isinstance(tower, str):
            return tower
        tower(ids[:, :6])                        # builds the layers that call() uses
        parts = {name: getattr(tower, name, None) for name in _TOWER_PARTS}
        parts = {name: part if isinstance(part, keras.layers.Layer) else None for name, part in parts.items()}
        randomise_weights([part for part in parts.values() if part is not None], seed=63)
        snapshots = {name: None if part is None else layer_snapshot(part) for name, part in parts.items()}
        outputs = {"full": tower(ids), "short": tower(ids[:3, :5]), "one": tower(ids[1:2])}
        return {"parts": snapshots, "outputs": {key: output_data(value) for key, value in outputs.items()}}


def _compare_tower(c: Checker, result: dict) -> None:
    for name in _TOWER_PARTS:
        if not result["parts"][name].get("built"):
            c.fail(f"self.{name}", "is never called", _NEVER_CALLED[name])
    tower = types.SimpleNamespace(**{name: rebuild_layer(c, f"self.{name}", result["parts"][name])
                                     for name in _TOWER_PARTS})
    ids = np.array(_TOWER_IDS, np.int32)
    what = f"embeddings of token_ids {ids.shape} (random weights)"
    outputs = result["outputs"]
    got = layer_output(c, what, outputs["full"], (len(ids), _EMBED),
                       "one vector per caption: pool the tokens over the time axis (axis=1), then project: "
                       "(batch, embed_dim)")
    if not np.isfinite(got).all():
        c.fail(what, f"row {int(np.argmax(~np.isfinite(got).all(axis=1)))} contains NaN or inf",
               "divide only by quantities that cannot be 0: every caption here has at least one real token")
    lengths = np.linalg.norm(got, axis=1)
    if not np.allclose(lengths, 1.0, atol=1e-4):
        _diagnose(c, tower, ids, got, what, f"row lengths from {lengths.min():.3g} to {lengths.max():.3g}, not 1",
                  "end with an L2 normalisation of each row (axis=-1), after the projection")
    c.passed.append("every embedding has length 1")
    short = layer_output(c, "embeddings of token_ids (3, 5)", outputs["short"], (3, _EMBED),
                         "one vector per caption: (batch, embed_dim)")
    if not np.allclose(short, got[:3], atol=1e-4, rtol=1e-4):
        row = int(np.argmax(np.abs(short - got[:3]).max(axis=1)))
        _diagnose(c, tower, ids, got, "captions padded to T = 8 and to T = 5",
                  f"the embedding of caption {row} changes when padding is removed",
                  "padding must not change a caption's embedding: give the block the padding mask "
                  "(token_ids != 0) and average only the real tokens")
    c.passed.append("padding does not change an embedding")
    one = layer_output(c, "embedding of a batch of one caption", outputs["one"], (1, _EMBED),
                       "one vector per caption: (batch, embed_dim)")
    if not np.allclose(one[0], got[1], atol=1e-4, rtol=1e-4):
        _diagnose(c, tower, ids, got, "caption 1 alone and in a batch of five",
                  "the embedding depends on the other captions of the batch",
                  "every step works on one caption at a time: normalise and average within each row")
    c.passed.append("an embedding does not depend on the batch")
    expected = np.asarray(ops.convert_to_numpy(_tower_forward(tower, ids)), np.float64)
    if not np.allclose(got, expected, atol=1e-4, rtol=1e-4):
        _diagnose(c, tower, ids, got, what, f"values differ (caption {int(np.argmax(np.abs(got - expected).max(1)))})",
                  "token embeddings + positions -> self.block(x, mask=mask) -> self.final_norm -> mean over the "
                  "real tokens -> self.projection -> L2 normalisation; use each layer once, in this order")
    c.passed.append(f"{what} values")


def _diagnose(c: Checker, tower, token_ids, got: np.ndarray, what: str, message: str, hint: str) -> None:
    """Fail with the hint of the typical mistake that ``got`` equals, else with ``message`` and ``hint``."""
    for flags, seen, specific in _TOWER_DIAGNOSES:
        wrong = np.asarray(ops.convert_to_numpy(_tower_forward(tower, token_ids, **flags)), np.float64)
        if np.allclose(got, wrong, atol=1e-4, rtol=1e-4):
            c.fail(what, seen, specific)
    c.fail(what, message, hint)
