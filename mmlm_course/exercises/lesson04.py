"""Checks for lesson 04: fusing image and text features.

The fusion model's check is in `lesson04_fusion_model`.
"""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

from mmlm_course import fusion
from mmlm_course.exercises import Checker, draw_cases, exercise
from mmlm_course.exercises.lesson03 import masked_after_softmax


def _numpy(result):
    """Tensors (or tuples of them) from the package functions -> NumPy."""
    if isinstance(result, tuple):
        return tuple(np.asarray(r) for r in result)
    return np.asarray(result)


def _softmax(x, axis=-1):
    x = x - x.max(axis=axis, keepdims=True)
    e = np.exp(x)
    return e / e.sum(axis=axis, keepdims=True)


def _tokens(seed: int, batch: int, length: int, dim: int, scale: float = 1.0) -> np.ndarray:
    return (scale * np.random.default_rng(seed).normal(size=(batch, length, dim))).astype(np.float32)


_GAP_MASK = ((True, False, True, True, False), (False, True, False, False, True))   # True need not come first


def _mask(lengths, total: int) -> np.ndarray:
    return np.arange(total)[None, :] < np.asarray(lengths)[:, None]


def _drawn_lengths(count: int, min_length: int = 1, max_length: int = 6):
    """Deterministic (seed, batch, length, lengths) cases, every row with at least one real token."""
    shapes = st.tuples(st.integers(0, 2 ** 16), st.integers(1, 3), st.integers(min_length, max_length))
    cases = []
    for seed, batch, length in draw_cases(shapes, count):
        lengths = np.random.default_rng(seed).integers(1, length + 1, size=batch)
        cases.append((seed, batch, length, [int(n) for n in lengths]))
    return cases


# --------------------------------------------------------------------------- 04.concat_fusion


def _masked_text_mean(text_tokens, text_mask, count=None):
    total = (text_tokens * text_mask[..., None]).sum(1)
    return total / (text_mask.sum(1, keepdims=True) if count is None else count)


def _concat_mistake(image="mean", text="masked", order="image first"):
    def concat_fusion(image_tokens, text_tokens, text_mask):
        image_vector = image_tokens.mean(axis=1) if image == "mean" else image_tokens.mean(axis=-1)
        text_vector = {"masked": lambda: _masked_text_mean(text_tokens, text_mask),
                       "plain mean": lambda: text_tokens.mean(axis=1),
                       "padded length": lambda: _masked_text_mean(text_tokens, text_mask, text_tokens.shape[1]),
                       "batch count": lambda: _masked_text_mean(text_tokens, text_mask, text_mask.sum()),
                       "prefix": lambda: _masked_text_mean(text_tokens, np.arange(text_mask.shape[1])[None, :]
                                                           < text_mask.sum(1, keepdims=True)),
                       "feature axis": lambda: (text_tokens * text_mask[..., None]).sum(-1)
                       / text_mask.sum(1, keepdims=True)}[text]()
        parts = [image_vector, text_vector] if order == "image first" else [text_vector, image_vector]
        return np.concatenate(parts, axis=-1)
    return concat_fusion


def _concat_in_place(image_tokens, text_tokens, text_mask):
    text_tokens *= text_mask[..., None]
    return np.concatenate([image_tokens.mean(axis=1), _masked_text_mean(text_tokens, text_mask)], axis=-1)


@exercise(
    "04.concat_fusion",
    reference=lambda image_tokens, text_tokens, text_mask: _numpy(
        fusion.concat_fusion(image_tokens, text_tokens, text_mask)),
    mistakes={
        "averages the padding tokens too": _concat_mistake(text="plain mean"),
        "puts the text vector first": _concat_mistake(order="text first"),
        "averages over the feature axis instead of the positions": _concat_mistake(image="features",
                                                                                   text="feature axis"),
        "divides the text sum by the padded length": _concat_mistake(text="padded length"),
        "divides by the real tokens of the whole batch": _concat_mistake(text="batch count"),
        "averages the first `mask.sum()` tokens (assumes real tokens come first)": _concat_mistake(text="prefix"),
        "zeroes the padding of text_tokens in place": _concat_in_place,
    },
)
def _check_concat_fusion(c: Checker) -> None:
    cases = [(0, 2, 5, 6, 4, 3, [4, 2]), (1, 3, 4, 3, 7, 5, [7, 1, 3]), (2, 1, 9, 8, 5, 8, [5]),
             (3, 2, 3, 4, 6, 2, [2, 6])]            # a batch of one, all real, the longest row not first
    for seed, batch, length, lengths in _drawn_lengths(6):
        cases.append((seed, batch, 1 + seed % 4, 1 + seed % 5, length, 1 + seed % 3, lengths))
    for seed, batch, n, d_image, t, d_text, lengths in cases:
        image = _tokens(seed, batch, n, d_image)
        text = _tokens(seed + 10, batch, t, d_text)
        mask = _mask(lengths, t)
        text[~mask] = 100.0  # padding rows hold junk that must not leak into the mean
        got = c.call(image, text, mask, read_only=True)
        expected = np.concatenate([image.astype(np.float64).mean(1), _masked_text_mean(text.astype(np.float64), mask)],
                                  -1)
        what = f"fused vector (image {image.shape}, text {text.shape}, lengths {lengths})"
        got = c.expect_array(what, got, (batch, d_image + d_text),
                             hint="pool each modality over its positions (axis 1), then concatenate the features: "
                                  "(batch, D_image + D_text)")
        if d_text != d_image and np.allclose(got[:, :d_text], expected[:, d_image:], atol=1e-4):
            c.fail(what, "the text features come first", "put the image vector first, then the text vector")
        c.expect_close(f"{what}, image part (first D_image features)", got[:, :d_image], expected[:, :d_image],
                       hint="the image vector is the plain mean of the image tokens over the N positions", atol=1e-4)
        c.expect_close(f"{what}, text part (last D_text features)", got[:, d_image:], expected[:, d_image:],
                       hint="average only the real tokens of each row: its mask-weighted sum divided by its "
                            "number of real tokens (padding rows hold junk here)", atol=1e-4)
    image, text = _tokens(7, 2, 3, 4), _tokens(17, 2, 5, 3)
    mask = np.array(_GAP_MASK)                    # real tokens need not come first
    text[~mask] = 100.0
    got = c.expect_array("fused vector with a mask that has gaps", c.call(image, text, mask, read_only=True), (2, 7))
    c.expect_close("fused vector with a mask that has gaps (text part)", got[:, 4:],
                   _masked_text_mean(text.astype(np.float64), mask), atol=1e-4,
                   hint="use the mask itself (True on real tokens, wherever they are), not a length: real tokens "
                        "need not come first")


# --------------------------------------------------------------------------- 04.film


def _film_in_place(features, gamma, beta):
    features *= gamma[:, None, :]
    features += beta[:, None, :]
    return features


@exercise(
    "04.film",
    reference=lambda features, gamma, beta: _numpy(fusion.film(features, gamma, beta)),
    mistakes={
        "swaps gamma and beta": lambda features, gamma, beta: features * beta[:, None, :] + gamma[:, None, :],
        "modulates positions instead of channels": lambda features, gamma, beta: (
            features * gamma[:, :, None] + beta[:, :, None]),
        "adds gamma instead of multiplying": lambda features, gamma, beta: (
            features + gamma[:, None, :] + beta[:, None, :]),
        "uses the first example's gamma and beta for the whole batch": lambda features, gamma, beta: (
            features * gamma[:1, None, :] + beta[:1, None, :]),
        "shifts before scaling: gamma * (features + beta)": lambda features, gamma, beta: (
            gamma[:, None, :] * (features + beta[:, None, :])),
        "scales by (1 + gamma)": lambda features, gamma, beta: features * (1 + gamma[:, None, :]) + beta[:, None, :],
        "modulates the features in place": _film_in_place,
    },
)
def _check_film(c: Checker) -> None:
    cases = [(0, 2, 4, 4), (1, 3, 6, 5), (2, 2, 3, 8)]  # (seed, batch, N, C); the first has N == C
    shapes = st.tuples(st.integers(3, 2 ** 16), st.integers(1, 3), st.integers(1, 6), st.integers(1, 6))
    for seed, batch, n, channels in cases + draw_cases(shapes, 6):
        rng = np.random.default_rng(seed)
        features = rng.normal(size=(batch, n, channels)).astype(np.float32)
        gamma = rng.normal(size=(batch, channels)).astype(np.float32)
        beta = rng.normal(size=(batch, channels)).astype(np.float32)
        got = c.call(features, gamma, beta, read_only=True)
        what = f"modulated features (batch {batch}, N {n}, C {channels})"
        got = c.expect_array(what, got, features.shape, hint="FiLM keeps the shape of the features: (batch, N, C)")
        expected = features.astype(np.float64) * gamma[:, None, :] + beta[:, None, :]
        if not np.allclose(got.astype(np.float64), expected, atol=1e-5, rtol=1e-5):
            _film_formula(c, features)
        c.expect_close(what, got, expected,
                       hint="the formula is right when every example and channel share one gamma and one beta; "
                            "here each example's gamma and beta (batch, C) need a position axis inserted in the "
                            "middle to broadcast over the N positions", atol=1e-5)
    identity = c.call(features, np.ones_like(gamma), np.zeros_like(beta), read_only=True)
    c.expect_close("gamma = 1, beta = 0", identity, features, hint="with gamma 1 and beta 0 FiLM changes nothing")


def _film_formula(c: Checker, features: np.ndarray) -> None:
    """A wrong result: blame the formula if it is wrong even where no broadcasting can go astray."""
    for g, b in ((1.5, -0.5), (0.0, 2.0), (-2.0, 0.0)):     # one gamma and one beta for every example and channel
        gamma = np.full(features.shape[::2], g, np.float32)
        beta = np.full(features.shape[::2], b, np.float32)
        what = f"modulated features with gamma = {g} and beta = {b} everywhere"
        got = c.expect_array(what, c.call(features, gamma, beta, read_only=True), features.shape,
                             hint="FiLM keeps the shape of the features: (batch, N, C)")
        if not np.allclose(got.astype(np.float64), g * features.astype(np.float64) + b, atol=1e-5, rtol=1e-5):
            c.fail(what, "values differ, so the formula itself is wrong (with one gamma and one beta everywhere, "
                         "broadcasting cannot be the cause)",
                   "reread FiLM's formula: which of gamma and beta multiplies the features, which is added, and "
                   "in which order")


# --------------------------------------------------------------------------- 04.cross_attention


def _reference_attention(queries, context, context_mask):
    scores = queries.astype(np.float64) @ np.swapaxes(context.astype(np.float64), 1, 2) / np.sqrt(queries.shape[-1])
    scores = np.where(context_mask[:, None, :], scores, -np.inf)
    weights = _softmax(scores, axis=-1)
    return weights @ context.astype(np.float64), weights


def _attention_mistake(scale: str = "sqrt", axis: int = -1, mask: str = "keys", softmax: str = "stable",
                       swap: bool = False, in_place: bool = False):
    def attention(queries, context, context_mask):
        d = queries.shape[-1]
        if in_place:
            queries /= queries.dtype.type(np.sqrt(d))         # scales the caller's array
        divisor = 1.0 if in_place else {"sqrt": np.sqrt(d), "none": 1.0, "d": float(d)}[scale]
        scores = queries @ np.swapaxes(context, 1, 2) / divisor
        if mask == "keys":
            scores = np.where(context_mask[:, None, :], scores, -1e9)
        elif mask == "inverted":
            scores = np.where(context_mask[:, None, :], -1e9, scores)
        elif mask == "queries axis":
            scores = np.where(context_mask[:, :, None], scores, -1e9)
        elif mask == "small fill":
            scores = np.where(context_mask[:, None, :], scores, -30.0)
        elif mask.startswith("after"):
            scores = scores + 0.0                          # the mask is applied to the weights below
        elif mask == "prefix":
            prefix = np.arange(context_mask.shape[1])[None, :] < context_mask.sum(1, keepdims=True)
            scores = np.where(prefix[:, None, :], scores, -1e9)
        if softmax == "stable":
            weights = _softmax(scores, axis=axis)
        elif softmax == "unstable":
            weights = np.exp(scores) / np.exp(scores).sum(axis=axis, keepdims=True)
        else:
            weights = scores
        if mask.startswith("after"):
            weights = weights * context_mask[:, None, :]
            if mask == "after, renormalised":
                weights = weights / weights.sum(-1, keepdims=True)
        output = weights @ context
        return (weights, output) if swap else (output, weights)
    return attention


@exercise(
    "04.cross_attention",
    reference=lambda queries, context, context_mask: _numpy(fusion.cross_attention(queries, context, context_mask)),
    mistakes={
        "forgets the 1/sqrt(d) scaling": _attention_mistake(scale="none"),
        "divides by d instead of sqrt(d)": _attention_mistake(scale="d"),
        "takes the softmax over the queries axis": _attention_mistake(axis=-2),
        "ignores the padding mask": _attention_mistake(mask=""),
        "mask inverted": _attention_mistake(mask="inverted"),
        "mask broadcast along the queries axis": _attention_mistake(mask="queries axis"),
        "naive similarity weights (no softmax)": _attention_mistake(softmax=""),
        "softmax without subtracting the maximum": _attention_mistake(softmax="unstable"),
        "returns (weights, output)": _attention_mistake(swap=True),
        "masks the weights after the softmax": _attention_mistake(mask="after"),
        "masks the weights after the softmax, then renormalises": _attention_mistake(mask="after, renormalised"),
        "masks with a fill of -30 (not large enough)": _attention_mistake(mask="small fill"),
        "attends to the first `mask.sum()` tokens (assumes real tokens come first)": _attention_mistake(mask="prefix"),
        "scales the queries in place": _attention_mistake(in_place=True),
    },
)
def _check_cross_attention(c: Checker) -> None:
    # (seed, batch, q_len, k_len, d, lengths, scale); q_len == k_len once, large scores once
    cases = [(0, 2, 5, 4, 16, [4, 2], 1.0), (1, 3, 3, 6, 9, [6, 1, 3], 1.0), (2, 1, 7, 5, 4, [5], 1.0),
             (3, 2, 4, 4, 6, [2, 4], 1.0), (4, 2, 3, 5, 8, [3, 5], 20.0)]
    for seed, batch, length, lengths in _drawn_lengths(6, min_length=2):
        cases.append((seed, batch, 1 + seed % 4, length, 1 + seed % 7, lengths, 1.0))
    for seed, batch, q_len, k_len, d, lengths, scale in cases:
        queries = _tokens(seed, batch, q_len, d, scale)
        context = _tokens(seed + 20, batch, k_len, d, scale)
        mask = _mask(lengths, k_len)
        got = c.call(queries, context, mask, read_only=True)
        _expect_cross_attention(c, got, queries, context, mask, large=scale > 1)
    queries, context = _tokens(5, 2, 3, 4), _tokens(25, 2, 5, 4)
    mask = np.array(_GAP_MASK)                      # real context tokens need not come first
    _expect_cross_attention(c, c.call(queries, context, mask, read_only=True), queries, context, mask, large=False)
    queries = 8.0 + 0.1 * _tokens(6, 2, 3, 16)      # every real score near -256: a padded token must still get 0
    context = -8.0 + 0.1 * _tokens(26, 2, 5, 16)
    mask = _mask([3, 2], 5)
    _expect_cross_attention(c, c.call(queries, context, mask, read_only=True), queries, context, mask, large=True)
    queries, context = 3.0 + 0.1 * _tokens(9, 2, 3, 8), _tokens(29, 2, 5, 8)
    mask = _mask([2, 4], 5)
    context[~mask] = 250.0                          # a padded token scores thousands above the real ones
    _expect_cross_attention(c, c.call(queries, context, mask, read_only=True), queries, context, mask, large=True)


def _expect_cross_attention(c: Checker, result, queries, context, mask, large: bool) -> None:
    (batch, q_len, d), k_len = queries.shape, context.shape[1]
    what = f"queries {queries.shape}, context {context.shape}" + (" with large scores (hundreds)" if large else "")
    if not (isinstance(result, (tuple, list)) and len(result) == 2):
        c.fail(what, f"expected a tuple (output, weights), got {type(result).__name__}",
               "return both the fused output and the attention weights: `return output, weights`")
    output, weights = result
    if np.shape(output) == (batch, q_len, k_len) != (batch, q_len, d) and np.shape(weights) == (batch, q_len, d):
        c.fail(what, "the first item has the shape of the weights and the second that of the output",
               "return them in the order the exercise asks: `return output, weights`")
    expected_output, expected_weights = _reference_attention(queries, context, mask)
    weights = c.expect_array(f"{what}: weights", weights, (batch, q_len, k_len),
                             hint="one weight per (query, context token) pair: queries @ context^T").astype(float)
    c.expect_array(f"{what}: output", output, (batch, q_len, d), hint="output = weights @ context: (batch, q_len, D)")
    if not (np.isfinite(weights).all() and np.allclose(weights.sum(-1), 1.0, atol=1e-4)):
        scores = queries.astype(np.float64) @ np.swapaxes(context.astype(np.float64), 1, 2) / np.sqrt(d)
        if masked_after_softmax(weights, scores, np.broadcast_to(mask[:, None, :], weights.shape)):
            c.fail(f"{what}: weights", "they are the softmax of the unmasked scores, masked afterwards",
                   "apply the mask to the scores, before the softmax: masking the weights after it leaves real "
                   "weights that do not sum to 1 (and lost to underflow when a padded token has by far the largest "
                   "score)")
    if not np.isfinite(weights).all():
        c.fail(f"{what}: weights", "contain NaN or inf",
               "subtract each row's largest score before np.exp (exp overflows for scores of a few hundred)")
    if not np.allclose(weights.sum(-1), 1.0, atol=1e-4):
        c.fail(f"{what}: weights", "a query's weights over the context do not sum to 1",
               "normalise over the context tokens: softmax over the last axis (k_len)")
    if np.abs(weights[~np.broadcast_to(mask[:, None, :], weights.shape)]).max(initial=0.0) > 1e-6:
        c.fail(f"{what}: weights", "padded context tokens get a non-zero weight",
               "context_mask is True on real tokens: set the scores of padded tokens (one per column of the "
               "scores) to a large negative number before the softmax")
    atol = 1e-3 if large else 1e-4             # float32 scores of a few hundred carry rounding errors of ~1e-4
    c.expect_close(f"{what}: weights (d = {d})", weights, expected_weights,
                   hint="divide the scores by sqrt(d), the square root of the feature size, before the softmax",
                   atol=atol)
    c.expect_close(f"{what}: output", output, expected_output, hint="output = weights @ context", atol=atol)


# --------------------------------------------------------------------------- 04.object_pairs


def _pairs_mistake(order: str):
    def object_pairs(objects):
        k = objects.shape[1]
        first = np.repeat(objects[:, :, None, :], k, axis=2)  # (B, K, K, D): o_i
        second = np.repeat(objects[:, None, :, :], k, axis=1)  # (B, K, K, D): o_j
        if order == "swapped":
            return np.concatenate([second, first], axis=-1)
        if order == "self":
            return np.concatenate([first, first], axis=-1)
        if order == "flat":
            return np.concatenate([first, second], axis=-1).reshape(objects.shape[0], k * k, -1)
        upper = np.triu_indices(k, 1)  # unordered pairs i < j only
        return np.concatenate([first, second], axis=-1)[:, upper[0], upper[1]]
    return object_pairs


@exercise(
    "04.object_pairs",
    reference=lambda objects: _numpy(fusion.object_pairs(objects)),
    mistakes={
        "puts object j first": _pairs_mistake("swapped"),
        "pairs every object with itself": _pairs_mistake("self"),
        "keeps each unordered pair once (i < j)": _pairs_mistake("unordered"),
        "flattens the pairs to (batch, K * K, 2 D)": _pairs_mistake("flat"),
    },
)
def _check_object_pairs(c: Checker) -> None:
    cases = [(2, 4, 3), (3, 3, 5), (1, 1, 2)]  # (batch, K, D); K = 1 has a single pair, (0, 0)
    cases += draw_cases(st.tuples(st.integers(1, 3), st.integers(1, 5), st.integers(1, 4)), 6)
    for seed, (batch, k, d) in enumerate(cases):
        objects = _tokens(seed + 30, batch, k, d)
        got = c.call(objects, read_only=True)
        what = f"pairs (batch {batch}, K {k}, D {d})"
        got = c.expect_array(what, got, (batch, k, k, 2 * d),
                             hint="one entry per ordered pair (i, j), both orders and i == j included: "
                                  "(batch, K, K, 2 D)")
        c.expect_close(f"{what}: pairs[:, i, j, :D]", got[..., :d], np.repeat(objects[:, :, None, :], k, axis=2),
                       hint="the first half of entry (i, j) is object i: repeat the objects along a new axis 2",
                       atol=1e-6)
        c.expect_close(f"{what}: pairs[:, i, j, D:]", got[..., d:], np.repeat(objects[:, None, :, :], k, axis=1),
                       hint="the second half of entry (i, j) is object j: repeat the objects along a new axis 1",
                       atol=1e-6)
