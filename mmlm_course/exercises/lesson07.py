"""Checks for lesson 07: a small decoder-only language model (the mask, the model, decoding, the cache).

Expected values come from float64 NumPy written here; the decoder's from the check's own forward pass
through layers it rebuilds from the settings and weights of the learner's sub-layers (`layers.rebuild_layer`,
which lesson 03's block and lesson 06's text tower checks use too).
"""

from __future__ import annotations

import types
import warnings

import keras
import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from keras import ops

from mmlm_course import attention, language_model
from mmlm_course.exercises import Checker, draw_cases, exercise
from mmlm_course.exercises.layers import (add_positions, expect_layer_class, instantiate, layer_output,
                                          layer_snapshot, output_data, randomise_weights, rebuild_layer)


def _softmax(x: np.ndarray) -> np.ndarray:
    shifted = np.exp(x - x.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def as_array_answer(c: Checker, what: str, value, hint: str) -> np.ndarray:
    """A returned array, tensor or (nested) list of numbers / booleans as a NumPy array: where a text asks
    for an array, a list of lists does what it asks too."""
    if isinstance(value, (list, tuple)):
        try:
            value = np.asarray(value)
        except ValueError:
            c.fail(what, "the rows have different lengths", hint)
        if value.dtype.kind not in "biuf":
            c.fail(what, f"expected numbers, got a list of {value.dtype}", hint)
    if not hasattr(value, "shape"):
        c.fail(what, f"expected an array, got {type(value).__name__} {value!r:.40}", hint)
    return c.expect_array(what, value, np.shape(value), hint=hint)


# --------------------------------------------------------------------------- 07.causal_mask


@exercise(
    "07.causal_mask",
    reference=lambda length: attention.causal_mask(length),
    mistakes={
        "excludes the diagonal (off by one)": lambda n: np.tril(np.ones((n, n), bool), k=-1),
        "lets queries see the future": lambda n: np.triu(np.ones((n, n), bool)),
        "one step into the future": lambda n: np.tril(np.ones((n, n), bool), k=1),
        "float 0/1 mask from np.tril(np.ones(...))": lambda n: np.tril(np.ones((n, n))),
        "int 0/1 mask": lambda n: np.tri(n, dtype=np.int32),
        "additive 0/-inf mask": lambda n: np.where(np.tril(np.ones((n, n), bool)), 0.0, -np.inf),
        "True where blocked (inverted)": lambda n: np.triu(np.ones((n, n), bool), k=1),
        "always the same size": lambda n: np.tril(np.ones((8, 8), bool)),
    },
)
def _check_causal_mask(c: Checker) -> None:
    for length in (1, 2, 3, 5, 8, 17):
        what = f"mask for length {length}"
        hint = "one row per query position and one column per key position: (length, length)"
        array = c.expect_array(what, as_array_answer(c, what, c.call(length), hint), (length, length), hint=hint)
        if array.dtype != bool:
            c.fail(what, f"expected dtype bool, got {array.dtype}",
                   "return True where attention is allowed (compare positions, or .astype(bool)); the -inf "
                   "for blocked scores is added later, inside attention")
        expected = np.tri(length, dtype=bool)
        if length > 1 and np.array_equal(array, ~expected):
            c.fail(what, "True marks the blocked pairs", "True means query i MAY attend to key j (j <= i)")
        if np.any(array & ~expected):
            i, j = np.argwhere(array & ~expected)[0]
            c.fail(what, f"query {i} may attend to key {j}, a future token",
                   "a token may only look at keys j <= i: the lower triangle")
        if np.any(~array & expected):
            i, j = np.argwhere(~array & expected)[0]
            c.fail(what, f"query {i} may not attend to {'itself' if i == j else f'the earlier key {j}'}",
                   "the diagonal belongs to the mask: each position attends to itself and every earlier one")
        c.passed.append(f"causal mask of length {length}")


# --------------------------------------------------------------------------- 07.top_k_filter

# ties at the k-th value: every entry equal to it stays ("every entry smaller than the k-th largest is -inf")
_TIED_LOGITS = ((3.0, 1.0, 2.0, 2.0, 0.0), (5.0, 5.0, 5.0, 1.0, 0.0), (0.0, 0.0, 0.0, 0.0, 0.0),
                (1.0, 2.0, 3.0, 4.0, 4.0))


def _logit_cases() -> list[tuple[str, np.ndarray, int]]:
    rng = np.random.default_rng(7)
    logits = rng.normal(size=(4, 12)).astype(np.float32) * 3
    shifted = logits + np.array([[0.0], [5e3], [-5e3], [5.0]], np.float32)     # rows on different scales
    ties = np.array(_TIED_LOGITS, np.float32)
    cases = [("random logits", logits, k) for k in (1, 3, 12)] + [("rows on different scales", shifted, 5)]
    cases += [("one row", rng.normal(size=(1, 6)).astype(np.float32), 2)]
    cases += [("rows with ties at the k-th value", ties, k) for k in (1, 2, 3, 5)]
    drawn = st.tuples(st.integers(1, 3), st.integers(1, 7)).flatmap(lambda s: st.tuples(
        hnp.arrays(np.int8, s, elements=st.integers(-2, 2)), st.integers(1, s[1])))
    cases += [("drawn logits with ties", x.astype(np.float32), k) for x, k in draw_cases(drawn, 10)]
    return cases


def _top_k_expected(logits: np.ndarray, k: int) -> np.ndarray:
    kth = np.sort(logits, axis=-1)[:, -k][:, None]
    return np.where(logits >= kth, logits.astype(np.float64), -np.inf)


def _top_k_mistake_threshold(logits, k, strict=False, extra=0):
    kth = -np.sort(-logits, axis=-1)[:, k - 1 + extra][:, None]
    keep = logits > kth if strict else logits >= kth
    return np.where(keep, logits, -np.inf).astype(np.float32)


def _top_k_indices(logits, k):
    """Mistake: keeps exactly k entries (argsort), so a tie at the k-th value loses some."""
    top = np.argsort(-logits, axis=-1, kind="stable")[:, :k]
    out = np.full(logits.shape, -np.inf, np.float32)
    np.put_along_axis(out, top, np.take_along_axis(logits, top, axis=-1), axis=-1)
    return out


def _top_k_distinct(logits, k):
    """Mistake: the k-th largest *distinct* value."""
    kth = np.array([np.unique(row)[::-1][min(k, len(np.unique(row))) - 1] for row in logits])[:, None]
    return np.where(logits >= kth, logits, -np.inf).astype(np.float32)


@exercise(
    "07.top_k_filter",
    reference=language_model.top_k_filter,
    mistakes={
        "keeps k - 1 (strict > the k-th value)": lambda x, k: _top_k_mistake_threshold(x, k, strict=True),
        "keeps k + 1": lambda x, k: _top_k_mistake_threshold(x, min(k, x.shape[-1] - 1), extra=1),
        "sets removed logits to 0 instead of -inf": lambda x, k: np.where(
            x >= -np.sort(-x, axis=-1)[:, k - 1:k], x, 0.0).astype(np.float32),
        "one threshold for the whole batch": lambda x, k: np.where(
            x >= -np.sort(-x.ravel())[k - 1], x, -np.inf).astype(np.float32),
        "returns probabilities, not logits": lambda x, k: _softmax(_top_k_mistake_threshold(x, k)),
        "exactly k entries by argsort (ties at the k-th value dropped)": _top_k_indices,
        "the k-th largest distinct value": _top_k_distinct,
        "the k-th smallest value as the threshold": lambda x, k: np.where(
            x >= np.sort(x, axis=-1)[:, k - 1:k], x, -np.inf).astype(np.float32),
        "-1e9 instead of -inf for the removed logits": lambda x, k: np.where(
            x >= np.sort(x, axis=-1)[:, -k][:, None], x, -1e9).astype(np.float32),
        "float32's lowest number instead of -inf": lambda x, k: np.where(
            x >= np.sort(x, axis=-1)[:, -k][:, None], x, np.finfo(np.float32).min).astype(np.float32),
        "sets the removed logits to -inf in place (logits[...] = -inf)": lambda x, k: np.putmask(
            x, x < np.sort(x, axis=-1)[:, -k][:, None], -np.inf) or x,
    },
)
def _check_top_k_filter(c: Checker) -> None:
    for name, logits, k in _logit_cases():
        what = f"top-{k} filter on {name} {logits.shape}"
        hint, got = "return the logits with the same shape (batch, vocab_size)", c.call(logits, k, read_only=True)
        array = c.expect_array(what, as_array_answer(c, what, got, hint), logits.shape, hint=hint)
        array = array.astype(np.float64)
        expected = _top_k_expected(logits, k)
        kept, expected_kept = array > -np.inf, expected > -np.inf   # -inf = removed
        if np.array_equal(kept, expected_kept) and np.array_equal(array[kept], expected[kept]):
            c.passed.append(what)
            continue
        stand_in = ~expected_kept & np.isfinite(array) & (array <= -1e4) & (array != logits)
        if stand_in.any():
            row, column = (int(i) for i in np.argwhere(stand_in)[0])
            c.fail(what, f"row {row}: the removed entry {column} is {array[row, column]:g}, not -inf",
                   "set the removed entries to -inf, as the text asks: a finite stand-in is only small next to "
                   "the logits it meets (large logits, or logits / T with a small T, bring it back into the "
                   "softmax, and float16 cannot hold -1e9 at all), while exp(-inf) is exactly 0")
        if np.all((array >= 0) & (array <= 1)) and np.allclose(array.sum(axis=-1), 1.0, atol=1e-4):
            c.fail(what, "got probabilities (rows sum to 1)",
                   "return logits: the sampler applies the softmax after filtering")
        counts, expected_counts = kept.sum(axis=-1), expected_kept.sum(axis=-1)
        if np.any(counts != expected_counts):
            row = int(np.argmax(counts != expected_counts))
            tied = expected_counts[row] > k
            c.fail(what, f"row {row} keeps {counts[row]} token(s), expected {expected_counts[row]}"
                   + (f" (logits tied with the k-th largest value, k={k})" if tied else ""),
                   "every entry equal to the k-th largest value stays: only entries smaller than it become -inf"
                   if tied and counts[row] < expected_counts[row] else
                   "keep every logit >= the k-th largest value of its own row; set the rest to -inf "
                   "(a logit of 0 is not removed: exp(0) = 1)")
        if np.any(kept != expected_kept):
            row = int(np.argmax(np.any(kept != expected_kept, axis=-1)))
            c.fail(what, f"row {row} keeps the wrong tokens",
                   "find the threshold per row (axis -1): the k-th largest value of that row")
        row = int(np.argmax(np.any(kept & (array != expected), axis=-1)))
        column = int(np.argmax(kept[row] & (array[row] != expected[row])))
        c.fail(what, f"row {row}: the kept entry {column} is {array[row, column]:g}, "
                     f"expected {expected[row, column]:g}",
               "the kept entries stay exactly as they were: no softmax, no scaling, no cast to a smaller float type")


# --------------------------------------------------------------------------- 07.temperature_probabilities


def _temperature_cases():
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(3, 9)).astype(np.float32) * 2
    large = np.array([[1000.0, 999.0, 0.0, -5.0], [80.0, 90.0, 100.0, 100.0]], np.float32)
    cases = [("random logits", logits, t) for t in (1.0, 0.5, 2.0)]
    cases += [("logits up to 1000", large, t) for t in (0.5, 3.0)]
    cases += [("rows of +1000 and -1000", np.array([[1000, 998, 990, 999], [-1000, -999, -1003, -1000]],
                                                      np.float32), 1.0),
              ("logits all near -1000", np.array([[-1000.0, -1001.0, -1002.0, -1000.5]], np.float32), 1.0),
              ("a tie at the top, T close to 0", np.array([[2, 2, 1, 0], [0.5, -1, 3, 2.9]], np.float32), 1e-4),
              ("random logits, a very high T", logits, 1000.0)]
    drawn = st.tuples(hnp.arrays(np.float32, st.tuples(st.integers(1, 3), st.integers(2, 6)),
                                 elements=st.floats(-1000, 1000, width=32)),
                      st.sampled_from((2.0 ** -6, 0.25, 1.0, 4.0, 100.0)))
    return cases + [("drawn logits", x, t) for x, t in draw_cases(drawn, 8)]


@exercise(
    "07.temperature_probabilities",
    reference=language_model.temperature_probabilities,
    mistakes={
        "temperature after the softmax": lambda x, t: (_softmax(x) / t).astype(np.float32),
        "multiplies by the temperature": lambda x, t: _softmax(x * t).astype(np.float32),
        "softmax of the tempered probabilities": lambda x, t: _softmax(_softmax(x) / t).astype(np.float32),
        "exp without subtracting the max (overflows)": lambda x, t: (
            np.exp(x / t) / np.exp(x / t).sum(axis=-1, keepdims=True)).astype(np.float32),
        "subtracts the batch's max, not each row's": lambda x, t: (
            np.exp(x / t - np.max(x / t)) / np.exp(x / t - np.max(x / t)).sum(axis=-1, keepdims=True)),
        "softmax over the batch axis": lambda x, t: (np.exp(x / t - (x / t).max(0)) / np.exp(
            x / t - (x / t).max(0)).sum(axis=0, keepdims=True)).astype(np.float32),
        "computes in float16": lambda x, t: _softmax(x.astype(np.float64) / t).astype(np.float16),
        "clips logits / T to [-50, 50] against overflow": lambda x, t: _softmax(
            np.clip(x.astype(np.float64) / t, -50, 50)).astype(np.float32),
        "ignores the temperature": lambda x, t: _softmax(x.astype(np.float64)).astype(np.float32),
    },
)
def _check_temperature_probabilities(c: Checker) -> None:
    for name, x, temperature in _temperature_cases():
        what = f"probabilities of {name} {x.shape} at T={temperature:g}"
        hint, got = "one probability per vocabulary entry: the logits' shape", c.call(x, temperature, read_only=True)
        array = c.expect_array(what, as_array_answer(c, what, got, hint), x.shape, hint=hint)
        dtype, array = array.dtype, array.astype(np.float64)
        expected = _softmax(x.astype(np.float64) / temperature)
        # float32 rounds logits / T (and a log-sum-exp of it) to about eps * |logits / T|: allow that per row
        rtol = 1e-5 + 4 * np.finfo(np.float32).eps * np.abs(x.astype(np.float64) / temperature).max(-1, keepdims=True)
        if np.all(np.abs(array - expected) <= 1e-5 + rtol * np.abs(expected)):
            c.passed.append(what)
            continue
        if dtype == np.float16:
            c.fail(what, "your probabilities are float16, which keeps about 3 significant digits",
                   "compute in float32 or float64")
        if not np.all(np.isfinite(array)):
            row = int(np.argmax(~np.isfinite(array).all(axis=-1)))
            c.fail(what, f"row {row} (logits from {x[row].min():g} to {x[row].max():g}) contains inf or NaN",
                   "exp(1000) overflows and exp(-1000) is 0: subtract each row's own maximum of logits / T before "
                   "exponentiating (or use keras.ops.softmax)")
        sums = array.sum(axis=-1)
        if not np.allclose(sums, 1.0, atol=1e-4):
            row = int(np.argmax(np.abs(sums - 1.0)))
            c.fail(what, f"row {row} sums to {sums[row]:.6g}, not 1",
                   "divide the logits by the temperature first, then take one softmax over the last axis")
        worst = np.unravel_index(np.argmax(np.abs(array - expected)), x.shape)
        where = (f"entry {tuple(int(i) for i in worst)} is {array[worst]:.6g}, expected {expected[worst]:.6g} "
                 f"(row {worst[0]}: logits / T from {x[worst[0]].min() / temperature:.6g} to "
                 f"{x[worst[0]].max() / temperature:.6g})")
        if temperature != 1 and np.allclose(array, _softmax(x.astype(np.float64) * temperature), atol=1e-5):
            c.fail(what, where, "this is softmax(logits * T): a low temperature must sharpen and a high one "
                   "flatten, so divide the logits by the temperature")
        if temperature != 1 and np.allclose(array, _softmax(x.astype(np.float64)), atol=1e-5):
            c.fail(what, where, "this is the softmax at T = 1: divide the logits by the temperature first")
        c.fail(what, where, "compute softmax(logits / T) exactly for every scale of logits: subtract each row's "
               "maximum for stability instead of clipping, capping or rounding values, in float32 or float64")


# --------------------------------------------------------------------------- 07.update_cache


def _cache_cases():
    rng = np.random.default_rng(11)
    cache = rng.normal(size=(2, 6, 3)).astype(np.float32)
    step = rng.normal(size=(2, 1, 3)).astype(np.float32)
    chunk = rng.normal(size=(2, 3, 3)).astype(np.float32)
    cache4 = rng.normal(size=(2, 5, 2, 2)).astype(np.float32)
    step4 = rng.normal(size=(2, 1, 2, 2)).astype(np.float32)
    cases = [(cache, step, 3), (cache, step, 0), (cache, step, 5), (cache, chunk, 2), (cache, chunk, 3),
             (cache4, step4, 4), (cache[:1], rng.normal(size=(1, 6, 3)).astype(np.float32), 0)]
    drawn = st.tuples(st.integers(1, 2), st.integers(1, 7), st.integers(0, 99), st.integers(0, 99),
                      st.lists(st.integers(1, 3), max_size=2), st.integers(0, 2 ** 16))
    for batch, length, new_at, position_at, rest, seed in draw_cases(drawn, 8):
        steps = 1 + new_at % length
        data = np.random.default_rng(seed)
        cases.append((data.normal(size=(batch, length, *rest)).astype(np.float32),
                      data.normal(size=(batch, steps, *rest)).astype(np.float32), position_at % (length - steps + 1)))
    return cases


def _numpy_update(cache, new, position, shift=0):
    out = np.array(cache)
    out[:, position + shift:position + shift + new.shape[1]] = new
    return out


def _assigns_into_cache(cache, new, position):
    cache[:, position:position + new.shape[1]] = new
    return cache


@exercise(
    "07.update_cache",
    reference=attention.update_cache,
    mistakes={
        "writes one step too late": lambda cache, new, p: _numpy_update(cache, new, p, shift=1),
        "concatenates (the cache grows)": lambda cache, new, p: np.concatenate([cache, new], axis=1),
        "always writes at the start": lambda cache, new, p: _numpy_update(cache, new, 0),
        "writes only the first new step": lambda cache, new, p: _numpy_update(cache, new[:, :1], p),
        "returns only the new entries": lambda cache, new, p: new,
        "slides a window (concatenates, keeps the last L)": lambda cache, new, p: np.concatenate(
            [cache, new], axis=1)[:, -cache.shape[1]:],
        "writes at the end of the cache": lambda cache, new, p: _numpy_update(
            cache, new, cache.shape[1] - new.shape[1]),
        "assigns into the cache (cache[:, p:p + T] = new: fails on a tensor)": _assigns_into_cache,
        "returns a float64 copy (np.array(cache, dtype=float))": lambda cache, new, p: _numpy_update(
            cache.astype(np.float64), new, p),
    },
)
def _check_update_cache(c: Checker) -> None:
    hint = "the cache keeps its fixed size (batch, max_length, ...): write into it, do not concatenate"
    cases = _cache_cases()
    for cache, new, position in cases:
        what = f"cache {cache.shape} after writing {new.shape[1]} step(s) at position {position}"
        array = c.expect_array(what, c.call(cache.copy(), new.copy(), position), cache.shape, hint=hint)
        _compare_cache(c, what, array, cache, new, position)
    results = c.scenario(_TENSOR_LABEL, _on_tensors(cases[:_TENSOR_CASES]))
    for (cache, new, position), result in zip(cases[:_TENSOR_CASES], results):
        what = f"Keras tensors: cache {cache.shape} after writing {new.shape[1]} step(s) at position {position}"
        if isinstance(result, dict):
            c.fail(what, f"your function raised {result.get('raised')}",
                   "in the model the cache is a Keras tensor, and a tensor cannot be assigned into "
                   "(cache[...] = new): return a new tensor, e.g. with keras.ops.slice_update")
        array = c.expect_array(what, result, cache.shape, hint=hint)
        _compare_cache(c, what, array, cache, new, position)


_TENSOR_CASES = 7              # the fixed cases, once more as Keras tensors
_TENSOR_LABEL = "update_cache called with Keras tensors (keras.ops.convert_to_tensor) for cache and new"


def _on_tensors(cases):
    """Scenario: the learner's function on backend tensors, as the model's attention calls it."""
    def steps(candidate):
        results = []
        for cache, new, position in cases:
            try:
                out = candidate(ops.convert_to_tensor(cache), ops.convert_to_tensor(new), position)
            except Exception as error:          # the learner's own error, reported with a hint
                message = str(error).strip().splitlines()[0][:200] if str(error).strip() else ""
                return results + [{"raised": f"{type(error).__name__}: {message}"}]
            results.append(output_data(out))
        return results
    return steps


def _compare_cache(c: Checker, what: str, array, cache, new, position) -> None:
    expected = _numpy_update(cache, new, position)
    time_ok = [np.allclose(np.asarray(array[:, t], np.float64), expected[:, t]) for t in range(cache.shape[1])]
    if not all(time_ok):
        t = time_ok.index(False)
        inside = position <= t < position + new.shape[1]
        c.fail(what, f"time step {t} is wrong", "time steps position .. position + T_new - 1 hold the new "
               "entries" if inside else "every time step outside position .. position + T_new - 1 keeps "
               "its old value")
    if array.dtype != cache.dtype:
        c.fail(what, f"expected the cache's dtype {cache.dtype}, got {array.dtype}",
               "the buffer keeps its dtype as well as its shape: start from the cache itself (a copy, or "
               "keras.ops.slice_update), not from a new array of another dtype")
    c.passed.append(what)


# --------------------------------------------------------------------------- 07.decoder_lm

_GPT_SIZES = (11, 12, 16, 2, 4)       # vocab_size, max_length, dim, num_layers, num_heads (num_layers != num_heads)
_GPT_LABEL = ("MiniGPT(vocab_size=11, max_length=12, dim=16, num_layers=2, num_heads=4) with random weights, called "
              "on token_ids (3, 8), on the same with tokens 5..7 changed, and on one token repeated (1, 6)")
_GPT_LAYERS = ("token_embedding", "position_embedding", "final_norm", "head")
_GPT_NEVER_CALLED = types.MappingProxyType({
    "token_embedding": "start from the token embeddings: self.token_embedding(token_ids)",
    "position_embedding": "add the position embeddings of the positions 0..T-1 (ops.arange) to the token embeddings",
    "blocks": "run every block of self.blocks in turn, each on the previous one's output",
    "final_norm": "apply self.final_norm to the last block's output, before the head",
})


class _ReferenceGPT(keras.Model):
    """The notebook's model: token + position embeddings, causal blocks, final norm, head."""

    def __init__(self, vocab_size, max_length, dim, num_layers, num_heads, causal=True, **kwargs):
        super().__init__(**kwargs)
        self.token_embedding = keras.layers.Embedding(vocab_size, dim)
        self.position_embedding = keras.layers.Embedding(max_length, dim)
        self.blocks = [attention.TransformerBlock(dim, num_heads, 4 * dim, causal=causal) for _ in range(num_layers)]
        self.final_norm = keras.layers.LayerNormalization(epsilon=1e-5)
        self.head = keras.layers.Dense(vocab_size)

    def call(self, token_ids):
        return _gpt_forward(self, token_ids)


def _gpt_built_as(shared=False, mlp=4, heads=None, position_rows="max_length", count="num_layers"):
    """The reference model with __init__ slips: sizes the text fixes, built otherwise (``heads`` and
    ``count``: a number, or the name of the argument used for it)."""
    def __init__(self, vocab_size, max_length, dim, num_layers, num_heads, **kwargs):
        _ReferenceGPT.__init__(self, vocab_size, max_length, dim, num_layers, num_heads, **kwargs)
        self.position_embedding = keras.layers.Embedding(vocab_size if position_rows == "vocab" else max_length, dim)
        sizes = {"num_layers": num_layers, "num_heads": num_heads}
        block_heads, blocks = sizes.get(heads, heads or num_heads), sizes[count]
        block = attention.TransformerBlock(dim, block_heads, mlp * dim, causal=True)
        self.blocks = [block] * blocks if shared else [
            attention.TransformerBlock(dim, block_heads, mlp * dim, causal=True) for _ in range(blocks)]
    return type("SizedGPT", (_ReferenceGPT,), {"__init__": __init__})


def _gpt_forward(model, token_ids, positions=True, final_norm=True, softmax=False, tied=False):
    x = model.token_embedding(token_ids)                                          # (B, T, d)
    if positions:
        x = add_positions(model.position_embedding, x)
    for block in model.blocks:
        x = block(x)
    x = model.final_norm(x) if final_norm else x
    logits = ops.matmul(x, ops.transpose(model.token_embedding.embeddings)) if tied else model.head(x)   # (B, T, V)
    return ops.softmax(logits) if softmax else logits


def _gpt_mistake(causal=True, **forward):
    return type("MistakenGPT", (_ReferenceGPT,), {
        "__init__": lambda self, *args, **kwargs: _ReferenceGPT.__init__(self, *args, causal=causal, **kwargs),
        "call": lambda self, token_ids: _gpt_forward(self, token_ids, **forward)})


def _gpt_inputs() -> dict:
    rng = np.random.default_rng(7)
    ids = rng.integers(1, _GPT_SIZES[0], size=(3, 8)).astype(np.int32)
    changed = ids.copy()
    changed[:, 5:] = ids[:, 5:] % (_GPT_SIZES[0] - 1) + 1          # every later token another one
    return {"ids": ids, "changed": changed, "same": np.full((1, 6), 3, np.int32)}


@exercise(
    "07.decoder_lm",
    reference=_ReferenceGPT,
    mistakes={
        "blocks without the causal mask: each position reads the future": _gpt_mistake(causal=False),
        "no position embedding": _gpt_mistake(positions=False),
        "no final LayerNorm before the head": _gpt_mistake(final_norm=False),
        "returns probabilities (softmax) instead of logits": _gpt_mistake(softmax=True),
        "only the first block is used": type("OneBlockGPT", (_ReferenceGPT,), {
            "call": lambda self, ids: self.head(self.final_norm(self.blocks[0](
                self.token_embedding(ids) + self.position_embedding(ops.arange(ops.shape(ids)[1]))[None])))}),
        "position embedding looked up by the token ids": type("TokenPositionGPT", (_ReferenceGPT,), {
            "call": lambda self, ids: self.head(self.final_norm(self.blocks[1](self.blocks[0](
                self.token_embedding(ids) + self.position_embedding(ids)))))}),
        "positions 1..T instead of 0..T-1": type("ShiftedPositionsGPT", (_ReferenceGPT,), {
            "call": lambda self, ids: self.head(self.final_norm(self.blocks[1](self.blocks[0](
                self.token_embedding(ids) + self.position_embedding(ops.arange(1, ops.shape(ids)[1] + 1))[None]))))}),
        "the final LayerNorm before the blocks": type("EarlyNormGPT", (_ReferenceGPT,), {
            "call": lambda self, ids: self.head(self.blocks[1](self.blocks[0](self.final_norm(
                self.token_embedding(ids) + self.position_embedding(ops.arange(ops.shape(ids)[1]))[None]))))}),
        "one block shared by every layer ([block] * num_layers)": _gpt_built_as(shared=True),
        "the MLP 2 * dim wide": _gpt_built_as(mlp=2),
        "num_heads ignored (one head)": _gpt_built_as(heads=1),
        "num_heads blocks (range(num_heads) instead of range(num_layers))": _gpt_built_as(count="num_heads"),
        "num_layers heads per block (the two sizes mixed up)": _gpt_built_as(heads="num_layers"),
        "a position table of vocab_size rows": _gpt_built_as(position_rows="vocab"),
        "the head before the final LayerNorm": type("LateNormGPT", (_ReferenceGPT,), {
            "call": lambda self, ids: self.final_norm(self.head(self.blocks[1](self.blocks[0](
                self.token_embedding(ids) + self.position_embedding(ops.arange(ops.shape(ids)[1]))[None]))))}),
    },
)
def _check_decoder_lm(c: Checker) -> None:
    result = c.scenario(_GPT_LABEL, _run_gpt)
    expect_layer_class(c, result, "MiniGPT", base="keras.Model")
    parts = result["parts"]
    missing = [name for name in ("token_embedding", "position_embedding", "blocks", "final_norm")
               if parts[name] is None]
    if missing:
        c.fail("the model's layers", f"missing {missing}", "create token_embedding, position_embedding, blocks (a "
               "list of TransformerBlock), final_norm and head in __init__, with these names")
    _expect_sizes(c, parts)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _compare_gpt(c, parts, result["outputs"])


def _expect_sizes(c: Checker, parts: dict) -> None:
    """The sizes the text fixes: num_layers separate blocks of (dim, num_heads, 4 * dim), a
    position table of max_length rows, LayerNormalization(epsilon=1e-5)."""
    vocab, max_length, dim, num_layers, num_heads = _GPT_SIZES
    blocks = parts["blocks"]
    if len(blocks) != num_layers:
        c.fail("self.blocks", f"holds {len(blocks)} blocks for num_layers={num_layers}",
               "create num_layers blocks: one TransformerBlock per layer")
    built = [block for block in blocks if block.get("built")]   # a block never called is reported later
    weights = [tuple(np.asarray(w).tobytes() for w in block.get("weights", [])) for block in built]
    if len(set(weights)) < len(weights):
        c.fail("self.blocks", "the same block appears more than once, so the layers share their weights",
               "create a new TransformerBlock for each layer (a list comprehension), not [block] * num_layers")
    for i, block in enumerate(blocks):
        if not block.get("built"):
            continue
        config = block.get("config") or {}
        wanted = {"embed_dim": dim, "num_heads": num_heads, "mlp_dim": 4 * dim}
        wrong = {key: config.get(key) for key, value in wanted.items() if config.get(key) != value}
        if wrong:
            c.fail(f"self.blocks[{i}]", f"was built with {wrong}, expected {wanted} for dim={dim}, "
                   f"num_heads={num_heads}", "build each block as attention.TransformerBlock(dim, num_heads, "
                   "4 * dim, causal=True)")
    sizes = {"token_embedding": ("input_dim", vocab), "position_embedding": ("input_dim", max_length)}
    for name, (key, value) in sizes.items():
        config = parts[name].get("config") or {}
        key = "max_length" if key == "input_dim" and "max_length" in config else key
        if config.get(key, value) != value:
            c.fail(f"self.{name}", f"has {config.get(key)} rows, expected {value}",
                   "the token table has one row per token (vocab_size), the position table one per position "
                   "(max_length)")
    norm_widths = {np.shape(w)[-1] for w in parts["final_norm"].get("weights") or [] if np.ndim(w)}
    if norm_widths and norm_widths != {dim}:
        c.fail("self.final_norm", f"normalises {sorted(norm_widths)[0]} features, not dim={dim}"
               + (": it is applied to the head's vocab_size logits" if norm_widths == {vocab} else ""),
               "the final LayerNormalization comes before the head: normalise the last block's output, "
               "then turn it into logits")
    epsilon = (parts["final_norm"].get("config") or {}).get("epsilon", 1e-5)
    if not np.isclose(epsilon, 1e-5, rtol=1e-3):
        c.fail("self.final_norm", f"has epsilon={epsilon:g}", "create it as LayerNormalization(epsilon=1e-5)")
    c.passed.append("sizes")


def _gpt_parts(model) -> dict:
    """The named sub-layers (None where absent); ``blocks`` a list (from a list, a tuple or a keras.Sequential)."""
    parts = {name: getattr(model, name, None) for name in _GPT_LAYERS}
    parts = {name: part if isinstance(part, keras.layers.Layer) else None for name, part in parts.items()}
    blocks = getattr(model, "blocks", None)
    blocks = blocks.layers if isinstance(blocks, keras.Sequential) else blocks
    blocks = [blocks] if isinstance(blocks, keras.layers.Layer) else blocks
    ok = isinstance(blocks, (list, tuple)) and blocks and all(isinstance(b, keras.layers.Layer) for b in blocks)
    return {**parts, "blocks": list(blocks) if ok else None}


def _run_gpt(candidate):
    """Scenario: build the learner's model, give its layers random weights, run it on three batches."""
    inputs = _gpt_inputs()
    with warnings.catch_warnings():              # Keras' build warnings about a wrong answer's unused layers
        warnings.simplefilter("ignore")
        model = instantiate(candidate, *_GPT_SIZES)
        if isinstance(model, str):
            return model
        model(inputs["ids"])                     # builds the layers that call() uses
        parts = _gpt_parts(model)
        layers = [part for part in parts.values() if isinstance(part, keras.layers.Layer)] + (parts["blocks"] or [])
        randomise_weights(layers, seed=7)
        snapshots = {name: None if part is None else layer_snapshot(part) for name, part in parts.items()
                     if name != "blocks"}
        snapshots["blocks"] = None if parts["blocks"] is None else [layer_snapshot(b) for b in parts["blocks"]]
        outputs = {key: output_data(model(x)) for key, x in inputs.items()}
    return {"parts": snapshots, "outputs": outputs}


def _compare_gpt(c: Checker, parts: dict, outputs: dict) -> None:
    inputs, vocab = _gpt_inputs(), _GPT_SIZES[0]
    hint = "one row of vocab_size logits per position: (batch, time, vocab_size)"
    got = {key: layer_output(c, f"logits for token_ids {x.shape}", outputs[key], (*x.shape, vocab), hint)
           for key, x in inputs.items()}
    logits = got["ids"]
    if np.allclose(logits.sum(-1), 1.0, atol=1e-3) and logits.min() >= 0:
        c.fail("the output", "every row sums to 1: these are probabilities",
               "return the head's logits; the loss (from_logits=True) and sampling apply the softmax themselves")
    if not np.allclose(got["changed"][:, :5], logits[:, :5], atol=1e-5):
        c.fail("causality", "the logits at positions 0..4 changed when only tokens 5..7 changed",
               "a language model may not read the future: build the blocks with causal=True")
    c.passed.append("causality")
    for name in ("token_embedding", "position_embedding", "final_norm"):
        if not parts[name].get("built"):
            c.fail(f"self.{name}", "is never called", _GPT_NEVER_CALLED[name])
    unused = [i for i, block in enumerate(parts["blocks"]) if not block.get("built")]
    if unused:
        c.fail(f"self.blocks[{unused[0]}]", "is never called", _GPT_NEVER_CALLED["blocks"])
    constant = got["same"][0]
    if np.allclose(constant, constant[:1], atol=1e-5):
        c.fail("positions", "a sequence of one repeated token gets the same logits at every position",
               "add the position embedding of positions 0..T-1 to the token embeddings")
    c.passed.append("positions")
    head = parts["head"]
    tied = head is None or not head.get("built")                  # nanoGPT's tied head: logits = x E^T
    model = types.SimpleNamespace(
        **{name: rebuild_layer(c, f"self.{name}", parts[name]) for name in _GPT_LAYERS
           if not (tied and name == "head")},
        blocks=[rebuild_layer(c, f"self.blocks[{i}]", block) for i, block in enumerate(parts["blocks"])])
    for key, x in inputs.items():
        expected = np.asarray(ops.convert_to_numpy(_gpt_forward(model, x, tied=tied)), np.float64)
        if tied and head is not None and not np.allclose(got[key], expected, atol=1e-4, rtol=1e-4):
            c.fail("self.head", "is never called", "turn the normalised output into logits with self.head")
        c.expect_close(f"logits for token_ids {x.shape} (your layers, in the order of the notes)", got[key], expected,
                       atol=1e-4, rtol=1e-4, hint="x = token_embedding(ids) + position_embedding(positions); every "
                       "block in turn; then head(final_norm(x))")
