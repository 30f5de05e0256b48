"""Checks for lesson 06: contrastive image-text retrieval.

Expected values come from the package (`mmlm_course.retrieval`, `mmlm_course.losses`,
ShapeWorld's verifier `shapeworld.caption_truth_matrix`) or from float64 NumPy written here.
"""

from __future__ import annotations

import numpy as np

from mmlm_course import losses, retrieval, retrieval_training, shapeworld
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
