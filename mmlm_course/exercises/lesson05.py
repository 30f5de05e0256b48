"""Checks for lesson 05: losses and metrics.

Every expected value is computed here in float64 NumPy, independently of the package.
"""

from __future__ import annotations

import numpy as np

from mmlm_course import losses, metrics
from mmlm_course.exercises import Checker, exercise


def _log_softmax64(z: np.ndarray) -> np.ndarray:
    z = np.asarray(z, np.float64)
    m = z.max(axis=-1, keepdims=True)
    return z - m - np.log(np.exp(z - m).sum(axis=-1, keepdims=True))


# --------------------------------------------------------------------------- 05.log_softmax


def _naive_log_softmax(z):
    e = np.exp(z)
    return np.log(e / e.sum(axis=-1, keepdims=True))


def _softmax_then_log(z):
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return np.log(e / e.sum(axis=-1, keepdims=True))


@exercise(
    "05.log_softmax",
    reference=lambda logits: losses.log_softmax(logits),
    mistakes={
        "naive log(exp / sum exp): overflows": _naive_log_softmax,
        "stable softmax, then log: log(0) underflows to -inf": _softmax_then_log,
        "subtracts the max but forgets to add it back":
            lambda z: z - np.log(np.exp(z - z.max(-1, keepdims=True)).sum(-1, keepdims=True)),
        "normalises over the batch axis": lambda z: z - z.max(0, keepdims=True)
            - np.log(np.exp(z - z.max(0, keepdims=True)).sum(0, keepdims=True)),
    },
)
def _check_log_softmax(c: Checker) -> None:
    rng = np.random.default_rng(5)
    cases = [
        ("random logits (4, 6)", (3 * rng.normal(size=(4, 6))).astype(np.float32)),
        ("equal logits (2, 5)", np.zeros((2, 5), np.float32)),
        ("large logits [1000, 0, -1000]", np.array([[1000.0, 0.0, -1000.0], [0.0, -200.0, -400.0]], np.float32)),
        ("logits shifted by +500", (rng.normal(size=(3, 4)) + 500).astype(np.float32)),
    ]
    for what, logits in cases:
        got = c.call(logits.copy())
        array = c.expect_array(f"log_softmax of {what}", got, logits.shape,
                               hint="keep the shape (B, C): normalise each row over the class axis (axis=-1)")
        if not np.isfinite(array).all():
            c.fail(f"log_softmax of {what}", "the result contains inf or NaN",
                   "exp() of a large logit overflows float32 and log() of a probability that rounded to 0 "
                   "is -inf; use the log-sum-exp trick so you never exponentiate a positive number or take "
                   "the log of a probability")
        c.expect_close(f"log_softmax of {what}", array, _log_softmax64(logits), atol=1e-4, rtol=1e-5,
                       hint="each row must satisfy sum(exp(result)) == 1, and subtracting the maximum is only "
                            "allowed if you account for it in the result")


# --------------------------------------------------------------------------- 05.masked_mean


def _per_row_mean(values, mask):
    rows = [v[m].mean() for v, m in zip(values, mask) if m.any()]
    return float(np.mean(rows)) if rows else 0.0


@exercise(
    "05.masked_mean",
    reference=lambda values, mask: losses.masked_mean(values, mask),
    mistakes={
        "averages over padding too": lambda values, mask: float(np.mean(values * mask)),
        "divides by the number of real tokens without a guard (NaN for an empty batch)":
            lambda values, mask: np.float32((values * mask).sum()) / np.float32(mask.sum()),
        "mean of per-sequence means": _per_row_mean,
        "sum over tokens, mean over sequences": lambda values, mask: float((values * mask).sum() / len(values)),
    },
)
def _check_masked_mean(c: Checker) -> None:
    rng = np.random.default_rng(7)

    def case(lengths, time=5):
        values = rng.uniform(0.5, 3.0, size=(len(lengths), time)).astype(np.float32)
        mask = np.arange(time)[None, :] < np.asarray(lengths)[:, None]
        values[~mask] = rng.uniform(20, 40, size=(~mask).sum())  # padding holds large garbage losses
        return values, mask

    hint = "average over the real tokens only: padded positions must not count in the sum or in the count"
    for what, lengths in (("lengths [5, 2, 3]", [5, 2, 3]), ("a fully padded row, lengths [4, 0, 1]", [4, 0, 1]),
                          ("one token, lengths [1]", [1])):
        values, mask = case(lengths)
        got = c.expect_number(f"masked mean with {what}", c.call(values.copy(), mask.copy()),
                      "return one number: the mean loss over all real tokens of the batch")
        if not np.isfinite(got):
            c.fail(f"masked mean with {what}", f"got {got}", "a row without real tokens must not produce NaN")
        expected = values.astype(np.float64)[mask].sum() / mask.sum()
        c.expect_close(f"masked mean with {what}", np.float64(got), expected, atol=1e-4, rtol=1e-5,
                       hint=hint + "; every real token has the same weight, whatever its sequence length")
    values, mask = case([0, 0])
    got = c.expect_number("masked mean of a fully padded batch", c.call(values.copy(), mask.copy()),
                  "return one number")
    if got != 0.0:
        c.fail("masked mean of a fully padded batch", f"expected 0.0, got {got}",
               "with no real token there is nothing to average: guard the division so the result is 0, not NaN")
    c.passed.append("fully padded batch gives 0")


# --------------------------------------------------------------------------- 05.symmetric_info_nce


def _info_nce64(image, text, temperature, directions=("i2t", "t2i"), normalize=True, scale="divide", average=True):
    image, text = np.asarray(image, np.float64), np.asarray(text, np.float64)
    if normalize:
        image = image / np.linalg.norm(image, axis=1, keepdims=True)
        text = text / np.linalg.norm(text, axis=1, keepdims=True)
    logits = image @ text.T
    logits = logits / temperature if scale == "divide" else logits * temperature
    terms = []
    if "i2t" in directions:
        terms.append(-np.mean(np.diag(_log_softmax64(logits))))
    if "t2i" in directions:
        terms.append(-np.mean(np.diag(_log_softmax64(logits.T))))
    return float(np.mean(terms) if average else np.sum(terms))


@exercise(
    "05.symmetric_info_nce",
    reference=lambda image, text, temperature: losses.symmetric_info_nce(image, text, temperature),
    mistakes={
        "only the image-to-text direction": lambda i, t, temp: _info_nce64(i, t, temp, directions=("i2t",)),
        "multiplies by the temperature instead of dividing": lambda i, t, temp: _info_nce64(i, t, temp,
                                                                                            scale="multiply"),
        "forgets to L2-normalise the embeddings": lambda i, t, temp: _info_nce64(i, t, temp, normalize=False),
        "adds the two directions instead of averaging": lambda i, t, temp: _info_nce64(i, t, temp, average=False),
    },
)
def _check_symmetric_info_nce(c: Checker) -> None:
    rng = np.random.default_rng(11)
    for batch, dim, temperature in ((5, 8, 0.07), (3, 4, 0.5), (6, 16, 1.0)):
        image = (rng.normal(size=(batch, dim)) * rng.uniform(0.5, 4.0, size=(batch, 1))).astype(np.float32)
        text = (0.6 * image + rng.normal(size=(batch, dim))).astype(np.float32)
        what = f"InfoNCE for B={batch}, D={dim}, T={temperature}"
        got = c.expect_number(what, c.call(image.copy(), text.copy(), temperature),
                      "return one number: the mean of the two directions' mean cross-entropies")
        expected = _info_nce64(image, text, temperature)
        if abs(got - expected) > 1e-3 * max(1.0, abs(expected)):
            one_way = [_info_nce64(image, text, temperature, directions=(d,)) for d in ("i2t", "t2i")]
            if any(abs(got - v) < 1e-3 * max(1.0, abs(v)) for v in one_way):
                c.fail(what, f"got {got:.4f}, which is one direction only",
                       "CLIP's loss is symmetric: images choose among texts AND texts choose among images")
            c.fail(what, f"expected {expected:.4f}, got {got:.4f}",
                   "compare cosine similarities (normalise each row to length 1), scale them by 1/T, "
                   "then average the row-wise and column-wise cross-entropies with the diagonal as targets")
        c.passed.append(what)


# --------------------------------------------------------------------------- 05.recall_at_k

_TIE_SCORES = np.array([[0.9, 0.5, 0.1, 0.3],
                        [0.2, 0.8, 0.8, 0.1],
                        [0.4, 0.3, 0.7, 0.7],
                        [0.6, 0.5, 0.4, 0.9]], np.float32)
_TIE_TARGETS = np.array([0, 1, 3, 2])  # ranks (ties counted against): 1, 2, 2, 4


def _recall64(scores, targets, k):
    scores = np.asarray(scores, np.float64)
    true = scores[np.arange(len(scores)), targets][:, None]
    ranks = (scores >= true).sum(axis=1)
    return float(np.mean(ranks <= k))


def _stable_top_k(scores, targets, k):
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return float(np.mean([t in row for t, row in zip(targets, top)]))


@exercise(
    "05.recall_at_k",
    reference=lambda scores, targets, k: metrics.recall_at_k(scores, targets, k),
    mistakes={
        "off by one: rank < k": lambda s, t, k: float(np.mean((s >= s[np.arange(len(s)), t][:, None]).sum(1) < k)),
        "ties counted in favour (rank = 1 + number strictly better)":
            lambda s, t, k: float(np.mean(1 + (s > s[np.arange(len(s)), t][:, None]).sum(1) <= k)),
        "top-k by argsort: ties broken by index": _stable_top_k,
        "counts hits instead of the fraction": lambda s, t, k: float(np.sum(
            (s >= s[np.arange(len(s)), t][:, None]).sum(1) <= k)),
    },
)
def _check_recall_at_k(c: Checker) -> None:
    rng = np.random.default_rng(13)
    random_scores = rng.normal(size=(6, 10)).astype(np.float32)
    random_targets = rng.integers(0, 10, size=6)
    cases = [("the 4x4 example with ties", _TIE_SCORES, _TIE_TARGETS, k) for k in (1, 2, 3, 4)]
    cases += [("random scores (6 queries, 10 candidates)", random_scores, random_targets, k) for k in (1, 3, 10)]
    cases += [("constant scores", np.ones((3, 5), np.float32), np.array([0, 2, 4]), k) for k in (1, 5)]
    for what, scores, targets, k in cases:
        label = f"recall@{k} on {what}"
        got = c.expect_number(label, c.call(scores.copy(), targets.copy(), k),
                      "return one number: the fraction of queries whose true item is in the top k")
        expected = _recall64(scores, targets, k)
        if not abs(got - expected) < 1e-6:
            true = np.asarray(scores, np.float64)[np.arange(len(scores)), targets][:, None]
            optimistic = float(np.mean(1 + (scores > true).sum(1) <= k))
            strict = float(np.mean((scores >= true).sum(1) < k))
            if got > 1.0 or (len(scores) > 1 and abs(got - expected * len(scores)) < 1e-6):
                hint = "recall is the fraction of the queries that are hits, between 0 and 1"
            elif abs(got - optimistic) < 1e-6:
                hint = ("a candidate that ties with the true item must count against it (pessimistic): "
                        "only a strictly lower score is beaten")
            elif abs(got - strict) < 1e-6:
                hint = "check the boundary: the best rank is 1 (not 0), and a true item at rank exactly k is a hit"
            elif got > expected:
                hint = "ties must count against the true item; sorting breaks ties arbitrarily, counting scores does not"
            else:
                hint = "the rank of the true item is the number of candidates whose score is at least as high"
            c.fail(label, f"expected {expected}, got {got}", hint)
        c.passed.append(label)


# --------------------------------------------------------------------------- 05.adam_step


def _adam64(param, grad, m, v, t, learning_rate=1e-3, beta_1=0.9, beta_2=0.999, epsilon=1e-8):
    """Kingma & Ba's Algorithm 1, one step, in float64."""
    param, grad, m, v = (np.asarray(a, np.float64) for a in (param, grad, m, v))
    m = beta_1 * m + (1 - beta_1) * grad
    v = beta_2 * v + (1 - beta_2) * grad ** 2
    m_hat, v_hat = m / (1 - beta_1 ** t), v / (1 - beta_2 ** t)
    return param - learning_rate * m_hat / (np.sqrt(v_hat) + epsilon), m, v


def _adam_without_bias_correction(param, grad, m, v, t, learning_rate=1e-3, beta_1=0.9, beta_2=0.999, epsilon=1e-8):
    m = beta_1 * m + (1 - beta_1) * grad
    v = beta_2 * v + (1 - beta_2) * grad ** 2
    return param - learning_rate * m / (np.sqrt(v) + epsilon), m, v


def _adam_variant(**change):
    def step(param, grad, m, v, t, learning_rate=1e-3, beta_1=0.9, beta_2=0.999, epsilon=1e-8):
        g2 = np.abs(grad) if change.get("abs_grad") else grad ** 2
        b1, b2 = (beta_2, beta_1) if change.get("swap_betas") else (beta_1, beta_2)
        m = b1 * m + (1 - b1) * grad
        v = b2 * v + (1 - b2) * g2
        m_hat, v_hat = m / (1 - beta_1 ** t), v / (1 - beta_2 ** t)
        denominator = v_hat + epsilon if change.get("no_sqrt") else np.sqrt(v_hat) + epsilon
        sign = 1 if change.get("ascent") else -1
        return param + sign * learning_rate * m_hat / denominator, m, v
    return step


@exercise(
    "05.adam_step",
    reference=_adam64,
    mistakes={
        "no bias correction: the first steps are far too large": _adam_without_bias_correction,
        "beta_1 and beta_2 swapped in the moment updates": _adam_variant(swap_betas=True),
        "|g| instead of g**2 in the second moment": _adam_variant(abs_grad=True),
        "divides by v_hat instead of its square root": _adam_variant(no_sqrt=True),
        "adds the update: gradient ascent": _adam_variant(ascent=True),
        "returns only the new parameters": lambda param, grad, m, v, t, **kw: _adam64(param, grad, m, v, t, **kw)[0],
    },
)
def _check_adam_step(c: Checker) -> None:
    rng = np.random.default_rng(8)
    shape = (3, 4)
    param = rng.normal(size=shape).astype(np.float32)
    grad = (rng.normal(size=shape) * rng.choice([0.1, 1.0, 3.0], size=shape)).astype(np.float32)
    zeros = np.zeros(shape, np.float32)
    m_old = (0.1 * rng.normal(size=shape)).astype(np.float32)
    v_old = (0.1 * rng.random(size=shape) + 0.01).astype(np.float32)
    cases = [
        ("the first step (t=1, zero moments)", (param, grad, zeros, zeros, 1), {}),
        ("step t=5 with moments from earlier steps", (param, grad, m_old, v_old, 5), {}),
        ("step t=1000", (param, grad, m_old, v_old, 1000), {}),
        ("t=3 with learning_rate=0.1, beta_1=0.5, beta_2=0.9", (param, grad, m_old, v_old, 3),
         dict(learning_rate=0.1, beta_1=0.5, beta_2=0.9)),
    ]
    hint_for = {
        "param": "param - learning_rate * m_hat / (sqrt(v_hat) + epsilon), with m_hat = m / (1 - beta_1**t) and "
                 "v_hat = v / (1 - beta_2**t): the bias correction matters most in the first steps",
        "m": "m = beta_1 * m + (1 - beta_1) * grad",
        "v": "v = beta_2 * v + (1 - beta_2) * grad**2 (the square of the gradient, element by element)",
    }
    for what, args, kwargs in cases:
        got = c.call(*args, **kwargs)
        c.expect_type(f"result of {what}", got, (tuple, list),
                      hint="return the tuple (new_param, new_m, new_v)")
        if len(got) != 3:
            c.fail(f"result of {what}", f"expected 3 values (new_param, new_m, new_v), got {len(got)}",
                   "return all three: the caller keeps m and v for the next step")
        expected = _adam64(*args, **kwargs)
        for index in (1, 2, 0):                   # the moments first: their hints are the most precise
            name = ("param", "m", "v")[index]
            c.expect_close(f"new {name} after {what}", got[index], expected[index], atol=1e-6, rtol=1e-4,
                           hint=hint_for[name])
