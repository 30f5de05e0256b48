"""Checks for lesson 06: contrastive image-text retrieval.

Expected values come from float64 NumPy written here, or from the package's verifier
(`shapeworld.caption_truth_matrix`) and caption tools (`retrieval_training.swapped_twins`).
The text tower's check is in `lesson06_text_tower`.
"""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from mmlm_course import losses, retrieval, retrieval_training, shapeworld
from mmlm_course.exercises import Checker, draw_cases, exercise
from mmlm_course.exercises.lesson07 import as_array_answer


def _unit64(x: np.ndarray, axis: int = 1) -> np.ndarray:
    x = np.asarray(x, np.float64)
    return x / np.linalg.norm(x, axis=axis, keepdims=True)


# --------------------------------------------------------------------------- 06.similarity_logits


def _logits64(images, texts, temperature):
    return _unit64(images) @ _unit64(texts).T / temperature


def _normalised_in_place(images, texts, temperature):
    images /= np.linalg.norm(images, axis=1, keepdims=True)  # changes the caller's embeddings
    texts /= np.linalg.norm(texts, axis=1, keepdims=True)
    return images @ texts.T / temperature


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
        "L2-normalises the embeddings in place (images /= ...)": _normalised_in_place,
    },
)
def _check_similarity_logits(c: Checker) -> None:
    for what, images, texts, temperature in _embedding_pairs():
        what = f"logits for {what}"
        batch = len(images)
        got = as_array_answer(c, what, c.call(images, texts, temperature, read_only=True),
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
        array = as_array_answer(c, what, c.call(list(caps), list(scs), read_only=True), hint)
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


def _non_hits_dropped_in_place(scores, hits, k):
    """Mistake: overwrites the caller's scores to find the best hit."""
    best = scores.copy()
    scores[~hits] = -np.inf
    return float(np.mean(1 + ((best >= scores.max(axis=1, keepdims=True)) & ~hits).sum(axis=1) <= k))


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
        "writes -inf into the scores in place to find the best hit": _non_hits_dropped_in_place,
    },
)
def _check_recall_with_hits(c: Checker) -> None:
    for what, scores, hits, k, (too_high, too_low) in _recall_cases():
        label = f"recall@{k} on {what}"
        got = c.expect_number(label, c.call(scores, hits, k, read_only=True),
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
        array = as_array_answer(c, what, c.call(images, prompts, classes, read_only=True), hint)
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


# --------------------------------------------------------------------------- 06.swapped_twins

_KINDS = retrieval_training.TWIN_KINDS
_ARTICLES = ("a", "an")
# in this order: all four twins; then a "there is" caption (a dict shared between calls shows here); a kind
# whose swap changes nothing; noun phrases without a size, so the article must change; an attribute named
# by one object only; a relation twin equal to the size twin; two equal objects (no twin at all)
_TWIN_CAPTIONS = (
    "a large red circle is to the left of a small blue square",
    "there is a small green triangle",
    "a small yellow square is above a large yellow circle",
    "a large purple triangle is below a small orange triangle",
    "an orange circle is to the right of a red square",
    "a circle is above an orange triangle",
    "a large circle is below a small circle",
    "a small red circle is to the left of a small red circle",
)
_NOUN_PHRASES = st.builds(lambda size, color, shape: shapeworld.with_article(" ".join(w for w in (size, color, shape)
                                                                                     if w)),
                          st.sampled_from((None,) + shapeworld.SIZES),
                          st.sampled_from((None,) + shapeworld.COLOR_NAMES), st.sampled_from(shapeworld.SHAPES))


def _twin_cases() -> list[str]:
    drawn = st.builds(lambda a, relation, b: f"{a} is {relation} {b}", _NOUN_PHRASES,
                      st.sampled_from(shapeworld.RELATIONS), _NOUN_PHRASES)
    generated = shapeworld.generate(6, "validation", seed=16).captions
    return list(_TWIN_CAPTIONS) + draw_cases(drawn, 8) + list(generated)


def _split_caption(caption: str):
    """(first noun phrase, relation words with "is", second noun phrase), the phrases without articles."""
    words = caption.split()
    i = words.index("is")
    j = next(k for k in range(i + 1, len(words)) if words[k] in _ARTICLES)
    return words[1:i], words[i:j], words[j + 1:]


def _sentence(first, relation, second, fix_articles=True) -> str:
    phrase = shapeworld.with_article if fix_articles else (lambda p: "a " + p)
    return " ".join([phrase(" ".join(first)), *relation, phrase(" ".join(second))])


def _attribute_swap(first, second, kind, one_object=False):
    values = shapeworld.ATTRIBUTES[kind]
    x, y = next((w for w in first if w in values), None), next((w for w in second if w in values), None)
    if x is None or y is None:
        return None
    swapped_first = [y if w == x else w for w in first]
    return swapped_first, second if one_object else [x if w == y else w for w in second]


def _twins_made(keep_same=False, fix_articles=True, relation="objects", one_object=False):
    """A typical wrong answer: the reference's steps with one of them changed."""
    def twins(caption):
        if caption.startswith("there"):
            return {}
        first, words, second = _split_caption(caption)
        if relation == "nouns":
            result = {"relation": _sentence(first[:-1] + second[-1:], words, second[:-1] + first[-1:], fix_articles)}
        elif relation == "words":
            result = {"relation": retrieval_training.reverse_relation(caption)}
        else:
            result = {"relation": _sentence(second, words, first, fix_articles)}
            if relation == "both":
                result["relation"] = retrieval_training.reverse_relation(result["relation"])
        for kind in ("color", "shape", "size"):
            swapped = _attribute_swap(first, second, kind, one_object)
            if swapped is not None:
                result[kind] = _sentence(swapped[0], words, swapped[1], fix_articles)
        return {k: t for k, t in result.items() if keep_same or t != caption}
    return twins


def _fixed_positions(caption):
    """Mistake: reads size, colour and shape at fixed word positions (every phrase has all three)."""
    words = caption.split()
    if words[0] == "there":
        return {}
    first, second = words[1:4], words[-3:]
    relation = words[4:-4]
    twins = {"relation": " ".join(["a", *second, *relation, "a", *first])}
    for position, kind in enumerate(("size", "color", "shape")):
        a, b = list(first), list(second)
        a[position], b[position] = second[position], first[position]
        twins[kind] = " ".join(["a", *a, *relation, "a", *b])
    return {k: t for k, t in twins.items() if t != caption}


_SHARED: dict = {}


def _shared_dict(caption):
    """Mistake: fills one dict that every call shares."""
    _SHARED.update(retrieval_training.swapped_twins(caption))
    return _SHARED


def _bag(caption: str) -> list[str]:
    return sorted(w for w in caption.split() if w not in _ARTICLES)


@exercise(
    "06.swapped_twins",
    reference=retrieval_training.swapped_twins,
    mistakes={
        "only the relation twin": lambda caption: {k: t for k, t in retrieval_training.swapped_twins(caption).items()
                                                   if k == "relation"},
        "changes the attribute of the first object only": _twins_made(one_object=True),
        "forgets to fix the articles ('a orange')": _twins_made(fix_articles=False),
        "keeps twins equal to the caption": _twins_made(keep_same=True),
        "reverses the relation words instead of swapping the objects": _twins_made(relation="words"),
        "swaps the objects and reverses the relation (the same meaning)": _twins_made(relation="both"),
        "swaps only the shape words for the relation twin": _twins_made(relation="nouns"),
        "reads the words at fixed positions (every phrase with a size and a colour)": _fixed_positions,
        "returns a list of twins": lambda caption: list(retrieval_training.swapped_twins(caption).values()),
        "'colour' as a key": lambda caption: {("colour" if k == "color" else k): t
                                              for k, t in retrieval_training.swapped_twins(caption).items()},
        "one dict shared by every call": _shared_dict,
    },
)
def _check_swapped_twins(c: Checker) -> None:
    earlier: set[str] = set()                    # the twins of the captions checked before this one
    for caption in _twin_cases():
        what = f"twins of {caption!r}"
        expected = retrieval_training.swapped_twins(caption)
        got = c.call(caption)
        if not isinstance(got, dict):
            c.fail(what, f"expected a dict, got {type(got).__name__}",
                   "return a dict {kind: twin}, e.g. {'relation': '...', 'color': '...'}, with only the kinds "
                   "that have a twin")
        unknown = sorted(map(repr, set(got) - set(_KINDS)))
        if unknown:
            c.fail(what, f"unknown keys {', '.join(unknown)}", "the keys are 'relation', 'color', 'shape' and 'size'")
        if not expected and got:
            stale = any(t in earlier for t in got.values())
            c.fail(what, f"expected {{}}, got {len(got)} twin(s)",
                   "build a new dict inside the function on every call: a dict shared by all calls keeps the twins "
                   "of earlier captions" if stale else "a 'there is ...' caption has no twins: return {}")
        for kind in _KINDS:
            if kind in got or kind in expected:
                _compare_twin(c, what, caption, kind, got.get(kind), expected, earlier)
        c.passed.append(what)
        earlier.update(expected.values())


def _compare_twin(c: Checker, what: str, caption: str, kind: str, got, twins: dict, earlier: set) -> None:
    expected = twins.get(kind)
    if got == expected:
        return
    what = f"{what}, {kind!r}"
    if got is not None and not isinstance(got, str):
        c.fail(what, f"expected a str, got {type(got).__name__}", "each twin is one caption, a str")
    if got in earlier and got != caption:
        c.fail(what, f"got {got!r}, a twin of an earlier caption",
               "build a new dict inside the function on every call: a dict shared by all calls keeps the twins of "
               "earlier captions")
    if expected is None:
        named = "both objects name the same" if got == caption else "only one object names a"
        c.fail(what, f"expected no {kind!r} twin ({named} {kind}), got {got!r}",
               "leave out a twin that equals the caption, and a kind that one of the objects does not name"
               if kind != "relation" else "leave out a twin that equals the caption")
    if got is None:
        c.fail(what, f"missing (expected {expected!r})",
               "every swap that changes the caption gives a twin: the two noun phrases (relation), and each "
               "attribute that both objects name with different values")
    try:
        shapeworld.parse_caption(got)
    except shapeworld.CaptionParseError as error:
        c.fail(what, f"{got!r} is not a ShapeWorld caption ({error})",
               "fix the articles after a swap: 'an' before a vowel ('an orange'), 'a' otherwise"
               if str(error).startswith("article") else
               "a noun phrase is 'a|an [size] [color] shape': the size and the colour may be missing, so find the "
               "words by what they are (shapeworld.SIZES, COLOR_NAMES, SHAPES), not by their position")
    other = next((k for k, twin in twins.items() if twin == got and k != kind), None)
    if other is not None:
        c.fail(what, f"got {got!r}, the caption's {other!r} twin",
               "the relation twin swaps whole noun phrases (article, size, colour and shape), not one attribute"
               if kind == "relation" else f"the {kind!r} twin swaps the two {kind} words, and only those")
    if kind == "relation" and got == retrieval_training.reverse_relation(expected):
        c.fail(what, f"got {got!r}, which says the same as the caption",
               "swap the two noun phrases and keep the relation words as they are: reversing the relation as well "
               "gives the caption's meaning back")
    if kind == "relation" and _bag(got) != _bag(caption):
        c.fail(what, f"got {got!r}: its words are not the caption's words",
               "swap the two noun phrases (article, size, colour and shape), not the relation words")
    if _bag(got) != _bag(caption):
        c.fail(what, f"got {got!r}: its words are not the caption's words",
               "a twin swaps words between the two objects, it never adds, drops or repeats one: change both "
               "objects at once (one str.replace after another turns both into the same value)")
    c.fail(what, f"expected {expected!r}, got {got!r}",
           "swap whole noun phrases for the relation twin (article, size, colour and shape), one attribute's two "
           "values for an attribute twin")
