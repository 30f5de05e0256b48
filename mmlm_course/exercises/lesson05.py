"""Checks for lesson 05: losses and metrics.

Every expected value is computed here in float64 NumPy, independently of the package. The
inputs include the extremes the lesson teaches: logits of +-1000, rows whose logits are all
large and negative, the temperature at its clip limit (1/T = 100), ties in recall, a real
token whose loss is exactly 0, and fully padded rows.
"""

from __future__ import annotations

import numpy as np

from mmlm_course import losses, metrics
from mmlm_course.exercises import Checker, draw_cases, exercise
from mmlm_course.exercises.lesson07 import as_array_answer

_MIN_TEMPERATURE = 0.01        # LearnedTemperature's clip: the logit scale 1/T never exceeds 100


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


def _global_max_log_softmax(z):
    m = z.max()
    return z - m - np.log(np.exp(z - m).sum(axis=-1, keepdims=True))


def _clipped_log_softmax(z):
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return np.log(np.clip(e / e.sum(axis=-1, keepdims=True), 1e-7, 1.0))


def _epsilon_log_softmax(z):
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return np.log(e / e.sum(axis=-1, keepdims=True) + 1e-9)


def _drawn_logits(count: int = 8) -> list[np.ndarray]:
    from hypothesis import strategies as st
    from hypothesis.extra import numpy as hnp
    shapes = st.tuples(st.integers(1, 4), st.integers(1, 6))
    values = st.floats(-1e4, 1e4, allow_nan=False, allow_infinity=False, width=32)
    return draw_cases(shapes.flatmap(lambda shape: hnp.arrays(np.float32, shape, elements=values)), count)


def _clip_floor(got: np.ndarray, expected: np.ndarray) -> float | None:
    """The floor of a clipped result (max(expected, floor), or log(exp(expected) + exp(floor))), else None."""
    wrong = ~np.isclose(got, expected, atol=1e-4, rtol=1e-5)
    if not wrong.any() or not (got[wrong] > expected[wrong]).all():
        return None
    floor = float(got[wrong].min())
    with np.errstate(all="ignore"):
        smooth = np.logaddexp(expected, floor)
    if np.allclose(got, np.maximum(expected, floor), atol=1e-3, rtol=1e-4) or np.allclose(got, smooth, atol=1e-3,
                                                                                          rtol=1e-4):
        return floor
    return None


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
        "subtracts the largest logit of the whole batch, not of each row": _global_max_log_softmax,
        "clips the probabilities before the log": _clipped_log_softmax,
        "adds a small epsilon to the probabilities before the log": _epsilon_log_softmax,
        "clips the result at -100": lambda z: np.maximum(_log_softmax64(z), -100.0).astype(np.float32),
        "subtracts the mean instead of the max": lambda z: z - z.mean(-1, keepdims=True)
            - np.log(np.exp(z - z.mean(-1, keepdims=True)).sum(-1, keepdims=True)),
        "subtracts the max in place (logits -= ...)": lambda z: np.subtract(z, z.max(-1, keepdims=True), out=z)
            - np.log(np.exp(z).sum(-1, keepdims=True)),
    },
)
def _check_log_softmax(c: Checker) -> None:
    rng = np.random.default_rng(5)
    cases = [
        ("random logits (4, 6)", (3 * rng.normal(size=(4, 6))).astype(np.float32)),
        ("equal logits (2, 5)", np.zeros((2, 5), np.float32)),
        ("large logits [1000, 0, -1000]", np.array([[1000.0, 0.0, -1000.0], [0.0, -200.0, -400.0]], np.float32)),
        ("logits shifted by +500", (rng.normal(size=(3, 4)) + 500).astype(np.float32)),
        ("a row of large negative logits [-1000, -1001, -1003]",
         np.array([[-1000.0, -1001.0, -1003.0], [0.5, 1.0, -0.5]], np.float32)),
        ("one example of one class", np.array([[3.0]], np.float32)),
    ]
    cases += [(f"logits of shape {z.shape} with values up to {float(np.abs(z).max()):.4g}", z) for z in _drawn_logits()]
    for what, logits in cases:
        label = f"log_softmax of {what}"
        hint = "keep the shape (B, C): normalise each row over the class axis (axis=-1)"
        got = c.call(logits, read_only=True)
        got = as_array_answer(c, label, got, hint) if isinstance(got, (list, tuple)) else got   # rows as lists
        array = c.expect_array(label, got, logits.shape, hint=hint)
        bad = np.argwhere(~np.isfinite(array.astype(np.float64)))
        if len(bad):
            c.fail(label, f"row {int(bad[0][0])} contains inf or NaN",
                   "exp() of a large logit overflows float32 and log() of a probability that rounded to 0 "
                   "is -inf; use the log-sum-exp trick so you never exponentiate a positive number or take "
                   "the log of a probability")
        expected = _log_softmax64(logits)
        floor = _clip_floor(array.astype(np.float64), expected)
        if floor is not None:
            c.fail(label, f"values that should lie below {floor:.4g} come out at about {floor:.4g}",
                   "the result is clipped (or a small constant was added to the probabilities before the log): "
                   "a log-probability of -1000 is a valid answer; compute it without going through the "
                   "probabilities")
        c.expect_close(label, array, expected, atol=1e-4, rtol=1e-5,
                       hint="each row must satisfy sum(exp(result)) == 1, and subtracting each row's maximum is "
                            "only allowed if you account for it in the result")


# --------------------------------------------------------------------------- 05.masked_mean


def _per_row_mean(values, mask):
    rows = [v[m].mean() for v, m in zip(values, mask) if m.any()]
    return float(np.mean(rows)) if rows else 0.0


def _masked_cases() -> list[tuple[str, np.ndarray, np.ndarray]]:
    from hypothesis import strategies as st
    rng = np.random.default_rng(7)

    def case(lengths, time, zero_at=None):
        values = rng.uniform(0.5, 3.0, size=(len(lengths), time)).astype(np.float32)
        mask = np.arange(time)[None, :] < np.asarray(lengths)[:, None]
        values[~mask] = rng.uniform(20, 40, size=(~mask).sum())  # padding holds large garbage losses
        if zero_at is not None:
            values[zero_at] = 0.0                                 # a real token predicted perfectly
        return values, mask

    cases = [("lengths [5, 2, 3]", [5, 2, 3], 5, None), ("a fully padded row, lengths [4, 0, 1]", [4, 0, 1], 5, None),
             ("one token, lengths [1]", [1], 5, None),
             ("a real token whose loss is exactly 0, lengths [3, 2]", [3, 2], 5, (1, 1)),
             ("the only real token has loss 0, lengths [0, 1, 0]", [0, 1, 0], 4, (1, 0))]
    drawn = draw_cases(st.tuples(st.integers(1, 6), st.lists(st.integers(0, 6), min_size=1, max_size=4)), 6)
    cases += [(f"lengths {[min(n, t) for n in lengths]} ({t} positions per row)", [min(n, t) for n in lengths], t,
               None) for t, lengths in drawn]
    return [(what, *case(lengths, time, zero_at)) for what, lengths, time, zero_at in cases]


@exercise(
    "05.masked_mean",
    reference=lambda values, mask: losses.masked_mean(values, mask),
    mistakes={
        "averages over padding too": lambda values, mask: float(np.mean(values * mask)),
        "divides by the number of real tokens without a guard (NaN for an empty batch)":
            lambda values, mask: np.float32((values * mask).sum()) / np.float32(mask.sum()),
        "mean of per-sequence means": _per_row_mean,
        "sum over tokens, mean over sequences": lambda values, mask: float((values * mask).sum() / len(values)),
        "counts the non-zero losses instead of the real tokens":
            lambda values, mask: float((values * mask).sum() / max(np.count_nonzero(values * mask), 1)),
        "np.mean(values[mask]): NaN without real tokens": lambda values, mask: float(np.mean(values[mask])),
        "returns the per-sequence sums": lambda values, mask: (values * mask).sum(axis=1),
        "zeroes the padding in place (values *= mask)": lambda values, mask: float(
            np.multiply(values, mask, out=values).sum() / max(mask.sum(), 1)),
    },
)
def _check_masked_mean(c: Checker) -> None:
    hint = "average over the real tokens only: padded positions must not count in the sum or in the count"
    for what, values, mask in _masked_cases():
        label = f"masked mean with {what}"
        got = c.expect_number(label, c.call(values, mask, read_only=True),
                              "return one number: the mean loss over all real tokens of the batch")
        if not np.isfinite(got):
            c.fail(label, f"got {got}", "a row or a batch without real tokens must not produce NaN or inf: "
                   "guard the division")
        expected = values.astype(np.float64)[mask].sum() / max(int(mask.sum()), 1)
        extra = "; a real token counts even when its loss is 0" if (values[mask] == 0).any() else \
            "; every real token has the same weight, whatever its sequence length"
        if not abs(got - expected) <= 1e-4 + 1e-5 * abs(expected):
            c.fail(label, f"expected {expected:.6g}, got {got:.6g}", hint + extra)
        c.passed.append(label)
    values = np.full((2, 4), 30.0, np.float32)
    got = c.expect_number("masked mean of a fully padded batch", c.call(values, np.zeros((2, 4), bool), read_only=True),
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


def _similarity32(image, text, temperature, axis=1):
    u = image / np.sqrt((image ** 2).sum(axis=axis, keepdims=True))
    v = text / np.sqrt((text ** 2).sum(axis=axis, keepdims=True))
    return (u @ v.T / np.float32(temperature)).astype(np.float32)


def _naive_info_nce(image, text, temperature):
    e = np.exp(_similarity32(image, text, temperature))
    diagonal = np.diag(e)
    return float(-(np.mean(np.log(diagonal / e.sum(1))) + np.mean(np.log(diagonal / e.sum(0)))) / 2)


def _global_max_info_nce(image, text, temperature):
    s = _similarity32(image, text, temperature)
    shifted = s - s.max()
    row = shifted - np.log(np.exp(shifted).sum(1, keepdims=True))
    column = shifted - np.log(np.exp(shifted).sum(0, keepdims=True))
    return float(-(np.mean(np.diag(row)) + np.mean(np.diag(column))) / 2)


def _info_nce_axis0(image, text, temperature):
    s = _similarity32(image, text, temperature, axis=0).astype(np.float64)
    return float(-(np.mean(np.diag(_log_softmax64(s))) + np.mean(np.diag(_log_softmax64(s.T)))) / 2)


def _info_nce_cases() -> list[tuple[str, np.ndarray, np.ndarray, float]]:
    rng = np.random.default_rng(11)
    cases = []
    for batch, dim, temperature in ((5, 8, 0.07), (3, 4, 0.5), (6, 16, 1.0), (1, 4, 0.07)):
        image = (rng.normal(size=(batch, dim)) * rng.uniform(0.5, 4.0, size=(batch, 1))).astype(np.float32)
        text = (0.6 * image + rng.normal(size=(batch, dim))).astype(np.float32)
        cases.append((f"B={batch}, D={dim}, T={temperature}", image, text, temperature))
    shared = rng.normal(size=8)
    image = (shared + 0.2 * rng.normal(size=(4, 8))).astype(np.float32)
    text = (3.0 * image + 0.1 * rng.normal(size=(4, 8))).astype(np.float32)      # every cosine above 0.9
    cases.append((f"similar pairs at the clip limit T={_MIN_TEMPERATURE} (logits near 100)", image, text,
                  _MIN_TEMPERATURE))
    direction = rng.normal(size=8)
    text = (direction + 0.05 * rng.normal(size=(4, 8))).astype(np.float32)
    image = (direction + 0.05 * rng.normal(size=(4, 8))).astype(np.float32)
    image[0] = -direction + 0.05 * rng.normal(size=8)                             # opposite to every caption
    cases.append((f"an image whose logits are all near -100 (T={_MIN_TEMPERATURE})", image, text, _MIN_TEMPERATURE))
    cases.append(("the same batch at T=0.001 (logits near +-1000)", image, text, 0.001))
    return cases


@exercise(
    "05.symmetric_info_nce",
    reference=lambda image, text, temperature: losses.symmetric_info_nce(image, text, temperature),
    mistakes={
        "only the image-to-text direction": lambda i, t, temp: _info_nce64(i, t, temp, directions=("i2t",)),
        "multiplies by the temperature instead of dividing": lambda i, t, temp: _info_nce64(i, t, temp,
                                                                                            scale="multiply"),
        "forgets to L2-normalise the embeddings": lambda i, t, temp: _info_nce64(i, t, temp, normalize=False),
        "adds the two directions instead of averaging": lambda i, t, temp: _info_nce64(i, t, temp, average=False),
        "naive exp / sum exp in float32 (overflows at the clip limit)": _naive_info_nce,
        "subtracts the largest logit of the whole matrix, not of each row": _global_max_info_nce,
        "normalises over the batch axis": _info_nce_axis0,
        "returns the per-pair losses": lambda i, t, temp: np.full(len(i), _info_nce64(i, t, temp)),
        "L2-normalises the embeddings in place (image /= ...)": lambda i, t, temp: _info_nce64(
            np.divide(i, np.linalg.norm(i, axis=1, keepdims=True), out=i), t, temp),
    },
)
def _check_symmetric_info_nce(c: Checker) -> None:
    for name, image, text, temperature in _info_nce_cases():
        what = f"InfoNCE for {name}"
        got = c.expect_number(what, c.call(image, text, temperature, read_only=True),
                              "return one number: the mean of the two directions' mean cross-entropies")
        if not np.isfinite(got):
            c.fail(what, f"got {got}", "the logits reach 1/T: exp() of them overflows (float32 above 88, "
                   "float64 above 709) and exp() of large negative ones rounds to 0; use a stable log-softmax "
                   "(losses.log_softmax) for both directions")
        expected = _info_nce64(image, text, temperature)
        if abs(got - expected) > 1e-3 * max(1.0, abs(expected)):
            one_way = [_info_nce64(image, text, temperature, directions=(d,)) for d in ("i2t", "t2i")]
            if any(abs(got - v) < 1e-3 * max(1.0, abs(v)) for v in one_way) and len(image) > 1:
                c.fail(what, f"got {got:.4f}, which is one direction only",
                       "CLIP's loss is symmetric: images choose among texts AND texts choose among images")
            c.fail(what, f"expected {expected:.4f}, got {got:.4f}",
                   "compare cosine similarities (normalise each row to length 1), scale them by 1/T, "
                   "then average the row-wise and column-wise cross-entropies with the diagonal as targets; "
                   "keep every step stable for logits as large as 1/T")
        c.passed.append(what)


# --------------------------------------------------------------------------- 05.recall_at_k

_TIE_SCORES = ((0.9, 0.5, 0.1, 0.3),
               (0.2, 0.8, 0.8, 0.1),
               (0.4, 0.3, 0.7, 0.7),
               (0.6, 0.5, 0.4, 0.9))
_TIE_TARGETS = (0, 1, 3, 2)  # ranks (ties counted against): 1, 2, 2, 4
_SEVERAL_TIED = ((0.5, 0.9, 0.9, 0.9, 0.1),  # three candidates tied at the top with the true one
                 (0.9, 0.9, 0.2, 0.3, 0.9),
                 (0.1, 0.2, 0.3, 0.3, 0.3))
_SEVERAL_TIED_TARGETS = (2, 0, 4)           # ranks 3, 3, 3


def _recall64(scores, targets, k):
    scores = np.asarray(scores, np.float64)
    true = scores[np.arange(len(scores)), targets][:, None]
    ranks = (scores >= true).sum(axis=1)
    return float(np.mean(ranks <= k))


def _stable_top_k(scores, targets, k):
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return float(np.mean([t in row for t, row in zip(targets, top)]))


def _bottom_k(scores, targets, k):
    top = np.argsort(scores, axis=1, kind="stable")[:, :k]
    return float(np.mean([t in row for t, row in zip(targets, top)]))


def _tie_free_cases() -> list[tuple[str, np.ndarray, np.ndarray, int]]:
    rng = np.random.default_rng(13)
    random_scores = rng.normal(size=(6, 10)).astype(np.float32)
    random_targets = rng.integers(0, 10, size=6)
    square = rng.normal(size=(5, 5)).astype(np.float32)
    permuted = np.array([3, 0, 4, 1, 2])
    square[np.arange(5), permuted] += np.array([2.0, 0.1, 2.0, -0.5, 2.0], np.float32)  # some hits, some misses
    cases = [("random scores (6 queries, 10 candidates)", random_scores, random_targets, k) for k in (1, 3, 10)]
    cases += [("5 queries whose true candidates are not the diagonal", square, permuted, k) for k in (1, 2)]
    cases += [("one query", random_scores[:1], random_targets[:1], 4)]
    return cases


def _tie_cases() -> list[tuple[str, np.ndarray, np.ndarray, int]]:
    from hypothesis import strategies as st

    cases = [("the 4x4 example with ties", np.array(_TIE_SCORES, np.float32), np.array(_TIE_TARGETS), k)
             for k in (1, 2, 3, 4)]
    cases += [("several candidates tied with the true one", np.array(_SEVERAL_TIED, np.float32),
               np.array(_SEVERAL_TIED_TARGETS), k) for k in (2, 3)]
    cases += [("constant scores", np.ones((3, 5), np.float32), np.array([0, 2, 4]), k) for k in (1, 5)]

    @st.composite
    def coarse(draw):                                             # scores in {0, 1, 2, 3}: ties everywhere
        queries, candidates = draw(st.integers(1, 5)), draw(st.integers(1, 6))
        scores = draw(st.lists(st.lists(st.integers(0, 3), min_size=candidates, max_size=candidates),
                               min_size=queries, max_size=queries))
        targets = draw(st.lists(st.integers(0, candidates - 1), min_size=queries, max_size=queries))
        return np.array(scores, np.float32), np.array(targets), draw(st.integers(1, candidates))

    cases += [(f"coarse scores {scores.shape}", scores, targets, k) for scores, targets, k in draw_cases(coarse(), 10)]
    return cases


def _ranks(scores, targets) -> tuple[np.ndarray, np.ndarray]:
    """(number of candidates scoring >= the true one, number scoring strictly more), per query."""
    scores = np.asarray(scores, np.float64)
    true = scores[np.arange(len(scores)), targets][:, None]
    return (scores >= true).sum(axis=1), (scores > true).sum(axis=1)


def _diagonal_recall(scores, targets, k):
    return _recall64(scores, np.arange(len(scores)), k) if len(scores) <= scores.shape[1] else np.nan


# What an answer computes when it makes one of these mistakes, and the hint that names it. A hint
# is given only when the answer matches the mistake on every case of a phase, so a coincidence on
# one case cannot mislead; the tie hints only come once the tie-free cases have passed.
_RECALL_DIAGNOSES = (
    (lambda s, t, k: float(np.sum(_ranks(s, t)[0] <= k)),
     "recall is the fraction of the queries that are hits (between 0 and 1), not their number"),
    (lambda s, t, k: 100 * _recall64(s, t, k), "recall is a fraction between 0 and 1, not a percentage"),
    (_diagonal_recall, "the true candidate of query i is targets[i], not candidate i: use the targets"),
    (lambda s, t, k: float(np.mean(_ranks(s, t)[0] < k)),
     "check the boundary: the best rank is 1 (not 0), and a true item at rank exactly k is a hit"),
    (_bottom_k, "the top k are the k highest scores, not the lowest"),
)
_TIE_DIAGNOSES = (
    (lambda s, t, k: float(np.mean(1 + _ranks(s, t)[1] <= k)),
     "a candidate that ties with the true item must count against it (pessimistic): only a strictly lower "
     "score is beaten"),
    (_stable_top_k, "ties must count against the true item; sorting breaks ties by position, counting the "
                    "scores at least as high does not"),
)


def _recall_hint(cases, answers, ties_checked: bool) -> str:
    diagnoses = _RECALL_DIAGNOSES + (_TIE_DIAGNOSES if ties_checked else ())
    for model, hint in diagnoses:
        if all(abs(got - model(s, t, k)) < 1e-6 for (_, s, t, k), got in zip(cases, answers)):
            return hint
    wrong = [case for case, got in zip(cases, answers) if not abs(got - _recall64(*case[1:])) < 1e-6]
    _, scores, targets, _ = wrong[0]
    at_least, above = _ranks(scores, targets)
    if ties_checked and (at_least - above > 1).any():
        return "ties must count against the true item: its rank counts every candidate whose score is at least as high"
    return ("a query is a hit when its true candidate scores[i, targets[i]] is among the k highest scores of "
            "row i: its rank is the number of candidates whose score is at least as high")


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
        "ignores the targets: takes candidate i as query i's true one":
            lambda s, t, k: _recall64(s, np.arange(len(s)), k),
        "top k of the lowest scores": _bottom_k,
        "returns a percentage (x 100)": lambda s, t, k: 100 * _recall64(s, t, k),
        "ranks the query among the queries (axis 0)":
            lambda s, t, k: float(np.mean((s[:, t] >= s[np.arange(len(s)), t][None, :]).sum(0) <= k)),
    },
)
def _check_recall_at_k(c: Checker) -> None:
    for ties_checked, cases in ((False, _tie_free_cases()), (True, _tie_cases())):
        answers = [c.expect_number(f"recall@{k} on {what}", c.call(scores, targets, k, read_only=True),
                                   "return one number: the fraction of queries whose true item is in the top k")
                   for what, scores, targets, k in cases]
        for (what, scores, targets, k), got in zip(cases, answers):
            expected = _recall64(scores, targets, k)
            if not abs(got - expected) < 1e-6:
                c.fail(f"recall@{k} on {what}", f"expected {expected:.4g}, got {got:.4g}",
                       _recall_hint(cases, answers, ties_checked))
            c.passed.append(f"recall@{k} on {what}")


# --------------------------------------------------------------------------- 05.adam_step


def _adam64(param, grad, m, v, t, learning_rate=1e-3, beta_1=0.9, beta_2=0.999, epsilon=1e-8):
    """Kingma & Ba's Algorithm 1, one step, in float64."""
    param, grad, m, v = (np.asarray(a, np.float64) for a in (param, grad, m, v))
    m = beta_1 * m + (1 - beta_1) * grad
    v = beta_2 * v + (1 - beta_2) * grad ** 2
    m_hat, v_hat = m / (1 - beta_1 ** t), v / (1 - beta_2 ** t)
    return param - learning_rate * m_hat / (np.sqrt(v_hat) + epsilon), m, v


def _adam64_folded(param, grad, m, v, t, learning_rate=1e-3, beta_1=0.9, beta_2=0.999, epsilon=1e-8):
    """The same step with the bias correction folded into the learning rate (Kingma & Ba, section 2;
    Keras): epsilon then acts on sqrt(v), not on sqrt(v_hat)."""
    _, m, v = _adam64(param, grad, m, v, t, learning_rate, beta_1, beta_2, epsilon)
    alpha = learning_rate * np.sqrt(1 - beta_2 ** t) / (1 - beta_1 ** t)
    return np.asarray(param, np.float64) - alpha * m / (np.sqrt(v) + epsilon), m, v


def _adam_without_bias_correction(param, grad, m, v, t, learning_rate=1e-3, beta_1=0.9, beta_2=0.999, epsilon=1e-8):
    m = beta_1 * m + (1 - beta_1) * grad
    v = beta_2 * v + (1 - beta_2) * grad ** 2
    return param - learning_rate * m / (np.sqrt(v) + epsilon), m, v


def _adam_variant(**change):
    def step(param, grad, m, v, t, learning_rate=1e-3, beta_1=0.9, beta_2=0.999, epsilon=1e-8):
        if change.get("defaults"):
            learning_rate, beta_1, beta_2, epsilon = 1e-3, 0.9, 0.999, 1e-8
        g2 = np.abs(grad) if change.get("abs_grad") else grad ** 2
        b1, b2 = (beta_2, beta_1) if change.get("swap_betas") else (beta_1, beta_2)
        m_new = b1 * m + (1 - b1) * grad
        v_new = b2 * v + (1 - b2) * g2
        m_step, v_step = (m, v) if change.get("old_moments") else (m_new, v_new)
        m_hat, v_hat = m_step / (1 - beta_1 ** t), v_step / (1 - beta_2 ** t)
        if change.get("no_sqrt"):
            denominator = v_hat + epsilon
        elif change.get("eps_inside"):
            denominator = np.sqrt(v_hat + epsilon)
        else:
            denominator = np.sqrt(v_hat) + epsilon
        sign = 1 if change.get("ascent") else -1
        new = param + sign * learning_rate * m_hat / denominator
        if change.get("return_hats"):
            return new, m_new / (1 - beta_1 ** t), v_new / (1 - beta_2 ** t)
        return new, m_new, v_new
    return step


def _adam_cases():
    rng = np.random.default_rng(8)
    shape = (3, 4)
    param = rng.normal(size=shape).astype(np.float32)
    grad = (rng.normal(size=shape) * rng.choice([0.1, 1.0, 3.0], size=shape)).astype(np.float32)
    zeros = np.zeros(shape, np.float32)
    m_old = (0.1 * rng.normal(size=shape)).astype(np.float32)
    v_old = (0.1 * rng.random(size=shape) + 0.01).astype(np.float32)
    tiny = (1e-5 * rng.normal(size=shape)).astype(np.float32)
    tiny[0, :2] = 0.0                                             # weights with no gradient at all
    vector, cube = rng.normal(size=5).astype(np.float32), rng.normal(size=(2, 3, 2)).astype(np.float32)
    return [
        ("the first step (t=1, zero moments)", (param, grad, zeros, zeros, 1), {}),
        ("step t=5 with moments from earlier steps", (param, grad, m_old, v_old, 5), {}),
        ("step t=1000", (param, grad, m_old, v_old, 1000), {}),
        ("t=3 with learning_rate=0.1, beta_1=0.5, beta_2=0.9", (param, grad, m_old, v_old, 3),
         dict(learning_rate=0.1, beta_1=0.5, beta_2=0.9)),
        ("t=2 with epsilon=0.1", (param, grad, m_old, v_old, 2), dict(epsilon=0.1)),
        ("the first step with gradients of about 1e-5", (param, tiny, zeros, zeros, 1), {}),
        ("a vector of 5 weights at t=2", (vector, 0.5 * vector, 0.1 * vector, 0.01 + 0 * vector, 2), {}),
        ("a (2, 3, 2) array at t=1", (cube, cube[::-1].copy(), 0 * cube, 0 * cube, 1), {}),
    ]


def _step_close(got: np.ndarray, param: np.ndarray, expected: np.ndarray) -> bool:
    """The step taken (got - param) within 1e-4 of the expected step, beyond float32 rounding."""
    rounding = 4 * np.spacing(np.maximum(np.abs(param), np.abs(expected)).astype(np.float32)).astype(np.float64)
    return bool(np.all(np.abs(got - expected) <= rounding + 1e-4 * np.abs(expected - param)))


def _same(got, expected: np.ndarray) -> bool:
    array = np.asarray(got) if hasattr(got, "shape") else None
    return array is not None and array.shape == expected.shape and array.dtype.kind in "iuf" and \
        np.allclose(array.astype(np.float64), expected, rtol=1e-4, atol=1e-6 * float(np.abs(expected).max(initial=0)))


_ADAM_RESULTS = ("new_param", "new_m", "new_v")


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
        "epsilon inside the square root": _adam_variant(eps_inside=True),
        "returns the bias-corrected moments m_hat, v_hat": _adam_variant(return_hats=True),
        "steps with the old moments": _adam_variant(old_moments=True),
        "ignores the keyword arguments": _adam_variant(defaults=True),
        "returns (new_m, new_v, new_param)": lambda *args, **kw: (lambda p, m, v: (m, v, p))(*_adam64(*args, **kw)),
    },
)
def _check_adam_step(c: Checker) -> None:
    hint_for = {
        "param": "param - learning_rate * m_hat / (sqrt(v_hat) + epsilon), with m_hat = m / (1 - beta_1**t) and "
                 "v_hat = v / (1 - beta_2**t) computed from the new moments; epsilon goes outside the square root",
        "m": "m = beta_1 * m + (1 - beta_1) * grad",
        "v": "v = beta_2 * v + (1 - beta_2) * grad**2 (the square of the gradient, element by element)",
    }
    for what, args, kwargs in _adam_cases():
        got = c.call(*args, **kwargs)
        c.expect_type(f"result of {what}", got, (tuple, list), hint="return the tuple (new_param, new_m, new_v)")
        if len(got) != 3:
            c.fail(f"result of {what}", f"expected 3 values (new_param, new_m, new_v), got {len(got)}",
                   "return all three: the caller keeps m and v for the next step")
        expected = _adam64(*args, **kwargs)
        order = [next((name for name, e in zip(_ADAM_RESULTS, expected) if _same(g, e)), None) for g in got]
        if None not in order and order != list(_ADAM_RESULTS):
            c.fail(f"result of {what}", f"the right values, in the order ({', '.join(order)})",
                   "return them in the order (new_param, new_m, new_v)")
        defaults = _adam64(*args)
        if kwargs and not all(_same(e, d) for e, d in zip(expected, defaults)) and \
                all(_same(g, d) for g, d in zip(got, defaults)):
            c.fail(f"result of {what}", "it is the step with the default hyperparameters",
                   "use the learning_rate, beta_1, beta_2 and epsilon you are given, not fixed values")
        for index in (1, 2):                      # the moments first: their hints are the most precise
            name = ("param", "m", "v")[index]
            scale = max(float(np.abs(expected[index]).max()), 1e-30)
            beta = kwargs.get("beta_1", 0.9) if index == 1 else kwargs.get("beta_2", 0.999)
            if _same(got[index], expected[index] / (1 - beta ** args[4])) and args[4] < 100:
                c.fail(f"new {name} after {what}", f"you returned the bias-corrected {name}_hat",
                       f"return the new {name} itself: the caller keeps it for the next step, and the bias "
                       "correction is applied afresh at every step")
            c.expect_close(f"new {name} after {what}", got[index], expected[index], atol=1e-6 * scale, rtol=1e-4,
                           hint=hint_for[name])
        param = np.asarray(args[0], np.float64)
        array = c.expect_array(f"new param after {what}", got[0], param.shape).astype(np.float64)
        forms = (expected[0], _adam64_folded(*args, **kwargs)[0])
        if not any(_step_close(array, param, form) for form in forms):
            worst = np.unravel_index(np.argmax(np.abs(array - expected[0])), param.shape)
            c.fail(f"new param after {what}", f"the step differs (largest difference at index "
                   f"{tuple(int(i) for i in worst)}: you moved it by {array[worst] - param[worst]:.4g}, "
                   f"expected {expected[0][worst] - param[worst]:.4g})", hint_for["param"])
        c.passed.append(f"new param after {what}")
