"""Checks for lesson 07: a small decoder-only language model (the mask, the model, decoding, the cache)."""

from __future__ import annotations

import warnings

import keras
import numpy as np
from keras import ops

from mmlm_course import attention, language_model
from mmlm_course.exercises import Checker, exercise


def _softmax(x: np.ndarray) -> np.ndarray:
    shifted = np.exp(x - x.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


# --------------------------------------------------------------------------- 07.causal_mask


@exercise(
    "07.causal_mask",
    reference=lambda length: attention.causal_mask(length),
    mistakes={
        "excludes the diagonal (off by one)": lambda n: np.tril(np.ones((n, n), bool), k=-1),
        "lets queries see the future": lambda n: np.triu(np.ones((n, n), bool)),
        "one step into the future": lambda n: np.tril(np.ones((n, n), bool), k=1),
        "float 0/1 mask from np.tril(np.ones(...))": lambda n: np.tril(np.ones((n, n))),
        "additive 0/-inf mask": lambda n: np.where(np.tril(np.ones((n, n), bool)), 0.0, -np.inf),
    },
)
def _check_causal_mask(c: Checker) -> None:
    for length in (1, 2, 5, 8):
        got = c.call(length)
        array = c.expect_array(f"mask for length {length}", got, (length, length),
                               hint="one row per query position and one column per key position")
        if array.dtype != bool:
            c.fail(f"mask for length {length}", f"expected dtype bool, got {array.dtype}",
                   "return True where attention is allowed (compare positions, or .astype(bool)); the -inf "
                   "for blocked scores is added later, inside attention")
        expected = np.tril(np.ones((length, length), bool))
        if np.any(array & ~expected):
            i, j = np.argwhere(array & ~expected)[0]
            c.fail(f"mask for length {length}", f"query {i} may attend to key {j}, a future token",
                   "a token may only look at keys j <= i: the lower triangle")
        if np.any(~array & expected):
            i, j = np.argwhere(~array & expected)[0]
            what = "itself" if i == j else f"the earlier key {j}"
            c.fail(f"mask for length {length}", f"query {i} may not attend to {what}",
                   "the diagonal belongs to the mask: each position attends to itself and every earlier one")
        c.passed.append(f"causal mask of length {length}")


# --------------------------------------------------------------------------- 07.top_k_filter


def _logit_cases() -> list[tuple[np.ndarray, int]]:
    rng = np.random.default_rng(7)
    logits = rng.normal(size=(4, 12)).astype(np.float32) * 3
    shifted = logits + np.array([[0.0], [50.0], [-50.0], [5.0]], np.float32)   # rows on different scales
    return [(logits, 1), (logits, 3), (shifted, 5), (logits, 12), (rng.normal(size=(1, 6)).astype(np.float32), 2)]


def _top_k_mistake_threshold(logits, k, strict=False, extra=0):
    kth = -np.sort(-logits, axis=-1)[:, k - 1 + extra][:, None]
    keep = logits > kth if strict else logits >= kth
    return np.where(keep, logits, -np.inf).astype(np.float32)


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
    },
)
def _check_top_k_filter(c: Checker) -> None:
    for logits, k in _logit_cases():
        got = c.call(logits.copy(), k)
        array = c.expect_array(f"filtered logits (k={k})", got, logits.shape,
                               hint="return the logits with the same shape (batch, vocab_size)")
        array = np.asarray(array, np.float64)
        if np.all((array >= 0) & (array <= 1)) and np.allclose(array.sum(axis=-1), 1.0, atol=1e-4):
            c.fail(f"filtered logits (k={k})", "got probabilities (rows sum to 1)",
                   "return logits: the sampler applies the softmax after filtering")
        removed = array <= -1e9
        kept = ~removed
        counts = kept.sum(axis=-1)
        if np.any(counts != k):
            row = int(np.argmax(counts != k))
            c.fail(f"filtered logits (k={k})", f"row {row} keeps {counts[row]} tokens, expected {k}",
                   "keep every logit >= the k-th largest value of its own row; set the rest to -inf "
                   "(a logit of 0 is not removed: exp(0) = 1)")
        expected_kept = np.asarray(language_model.top_k_filter(logits, k)) > -np.inf
        if np.any(kept != expected_kept):
            row = int(np.argmax(np.any(kept != expected_kept, axis=-1)))
            c.fail(f"filtered logits (k={k})", f"row {row} keeps the wrong tokens",
                   "find the threshold per row (axis -1), not over the whole batch")
        if not np.allclose(array[kept], logits[kept], atol=1e-6):
            c.fail(f"filtered logits (k={k})", "the kept values changed",
                   "return logits, not probabilities: the kept entries stay exactly as they were")
        c.passed.append(f"top-{k} filter on {logits.shape}")


# --------------------------------------------------------------------------- 07.temperature_probabilities


@exercise(
    "07.temperature_probabilities",
    reference=language_model.temperature_probabilities,
    mistakes={
        "temperature after the softmax": lambda x, t: (_softmax(x) / t).astype(np.float32),
        "multiplies by the temperature": lambda x, t: _softmax(x * t).astype(np.float32),
        "softmax of the tempered probabilities": lambda x, t: _softmax(_softmax(x) / t).astype(np.float32),
        "exp without subtracting the max (overflows)": lambda x, t: (
            np.exp(x / t) / np.exp(x / t).sum(axis=-1, keepdims=True)).astype(np.float32),
    },
)
def _check_temperature_probabilities(c: Checker) -> None:
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(3, 9)).astype(np.float32) * 2
    large = np.array([[1000.0, 999.0, 0.0, -5.0], [80.0, 90.0, 100.0, 100.0]], np.float32)
    for x, temperature in ((logits, 1.0), (logits, 0.5), (logits, 2.0), (large, 0.5), (large, 3.0)):
        with np.errstate(over="ignore", invalid="ignore"):
            got = c.call(x.copy(), temperature)
        array = c.expect_array(f"probabilities (T={temperature})", got, x.shape,
                               hint="one probability per vocabulary entry, same shape as the logits")
        array = np.asarray(array, np.float64)
        if not np.all(np.isfinite(array)):
            c.fail(f"probabilities (T={temperature}) of logits up to {x.max():.0f}", "got inf or NaN",
                   "exp(1000) overflows: subtract each row's maximum before exponentiating (or use "
                   "keras.ops.softmax)")
        if not np.allclose(array.sum(axis=-1), 1.0, atol=1e-4):
            c.fail(f"probabilities (T={temperature})", f"rows sum to {np.round(array.sum(axis=-1), 3).tolist()}",
                   "divide the logits by the temperature first, then take one softmax over the last axis")
        expected = _softmax(x.astype(np.float64) / temperature)
        c.expect_close(f"probabilities (T={temperature})", array, expected, atol=1e-5,
                       hint="a low temperature must sharpen and a high one flatten: divide the logits "
                            "(not multiply) by the temperature before the softmax")


# --------------------------------------------------------------------------- 07.update_cache


def _cache_cases():
    rng = np.random.default_rng(11)
    cache = rng.normal(size=(2, 6, 3)).astype(np.float32)
    step = rng.normal(size=(2, 1, 3)).astype(np.float32)
    chunk = rng.normal(size=(2, 3, 3)).astype(np.float32)
    cache4 = rng.normal(size=(2, 5, 2, 2)).astype(np.float32)
    step4 = rng.normal(size=(2, 1, 2, 2)).astype(np.float32)
    return [(cache, step, 3), (cache, step, 0), (cache, step, 5), (cache, chunk, 2), (cache4, step4, 4)]


def _numpy_update(cache, new, position, shift=0):
    out = np.array(cache)
    out[:, position + shift:position + shift + new.shape[1]] = new
    return out


@exercise(
    "07.update_cache",
    reference=attention.update_cache,
    mistakes={
        "writes one step too late": lambda cache, new, p: _numpy_update(cache, new, p, shift=1),
        "concatenates (the cache grows)": lambda cache, new, p: np.concatenate([cache, new], axis=1),
        "always writes at the start": lambda cache, new, p: _numpy_update(cache, new, 0),
        "writes only the first new step": lambda cache, new, p: _numpy_update(cache, new[:, :1], p),
        "returns only the new entries": lambda cache, new, p: new,
    },
)
def _check_update_cache(c: Checker) -> None:
    for cache, new, position in _cache_cases():
        what = f"cache {cache.shape} after writing {new.shape[1]} step(s) at position {position}"
        got = c.call(cache.copy(), new.copy(), position)
        array = c.expect_array(what, got, cache.shape,
                               hint="the cache keeps its fixed size (batch, max_length, ...): write into it, "
                                    "do not concatenate")
        expected = _numpy_update(cache, new, position)
        array = np.asarray(array)
        time_ok = [np.allclose(array[:, t], expected[:, t]) for t in range(cache.shape[1])]
        if not all(time_ok):
            t = time_ok.index(False)
            inside = position <= t < position + new.shape[1]
            c.fail(what, f"time step {t} is wrong", "time steps position .. position + T_new - 1 hold the new "
                   "entries" if inside else "every time step outside position .. position + T_new - 1 keeps "
                   "its old value")
        c.passed.append(what)


# --------------------------------------------------------------------------- 07.decoder_lm


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


def _gpt_forward(model, token_ids, positions=True, final_norm=True, softmax=False, tied=False):
    x = model.token_embedding(token_ids)                                          # (B, T, d)
    if positions:
        x = x + model.position_embedding(ops.arange(ops.shape(token_ids)[1]))[None]
    for block in (model.blocks if isinstance(model.blocks, (list, tuple)) else [model.blocks]):
        x = block(x)
    x = model.final_norm(x) if final_norm else x
    logits = ops.matmul(x, ops.transpose(model.token_embedding.embeddings)) if tied else model.head(x)   # (B, T, V)
    return ops.softmax(logits) if softmax else logits


def _gpt_mistake(causal=True, **forward):
    return type("MistakenGPT", (_ReferenceGPT,), {
        "__init__": lambda self, *args, **kwargs: _ReferenceGPT.__init__(self, *args, causal=causal, **kwargs),
        "call": lambda self, token_ids: _gpt_forward(self, token_ids, **forward)})


_GPT_PARTS = ("token_embedding", "position_embedding", "final_norm", "head")


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
    },
)
def _check_decoder_lm(c: Checker) -> None:
    with warnings.catch_warnings():           # Keras' build warnings about a wrong answer's unused layers
        warnings.simplefilter("ignore")
        _check_gpt(c)


def _check_gpt(c: Checker) -> None:
    vocab, length = 11, 12
    model = c.call(vocab_size=vocab, max_length=length, dim=16, num_layers=2, num_heads=2)
    if not isinstance(model, keras.layers.Layer):
        c.fail("your answer", f"calling it gave {type(model).__name__}, not a Keras model",
               "pass the class itself: check(\"07.decoder_lm\", MiniGPT)")
    run = Checker(c.exercise_id, model)                  # calling the model: crashes become one line
    rng = np.random.default_rng(7)
    ids = rng.integers(1, vocab, size=(3, 8)).astype(np.int32)
    logits = c.expect_array("logits for token_ids (3, 8)", run.call(ids), (3, 8, vocab),
                            hint="one row of vocab_size logits per position: (batch, time, vocab_size)")
    if np.allclose(logits.sum(-1), 1.0, atol=1e-3) and logits.min() >= 0:
        c.fail("the output", "every row sums to 1: these are probabilities",
               "return the head's logits; the loss (from_logits=True) and sampling apply the softmax themselves")
    changed = ids.copy()
    changed[:, 5:] = rng.integers(1, vocab, size=(3, 3))
    early = c.expect_array("logits after changing tokens 5..7", run.call(changed), (3, 8, vocab))[:, :5]
    if not np.allclose(early, logits[:, :5], atol=1e-5):
        c.fail("causality", "the logits at positions 0..4 changed when only tokens 5..7 changed",
               "a language model may not read the future: build the blocks with causal=True")
    same = np.full((1, 6), 3, np.int32)
    constant = np.asarray(run.call(same))[0]
    if np.allclose(constant, constant[:1], atol=1e-5):
        c.fail("positions", "a sequence of one repeated token gets the same logits at every position",
               "add the position embedding of positions 0..T-1 to the token embeddings")
    blocks = getattr(model, "blocks", None)
    tied = not isinstance(getattr(model, "head", None), keras.layers.Layer)   # nanoGPT's tied head: logits = x E^T
    needed = [name for name in _GPT_PARTS if not (tied and name == "head")]
    missing = [name for name in needed if not isinstance(getattr(model, name, None), keras.layers.Layer)]
    if missing or not ((isinstance(blocks, (list, tuple)) and blocks) or isinstance(blocks, keras.layers.Layer)):
        c.fail("the model's layers", f"missing {missing or ['blocks']}",
               "create token_embedding, position_embedding, blocks (a list), final_norm and head in __init__")
    expected = np.asarray(_gpt_forward(model, ids, tied=tied))
    c.expect_close("logits (your layers, in the order of the notes)", logits, expected, atol=1e-4, rtol=1e-4,
                   hint="x = token_embedding(ids) + position_embedding(positions); every block in turn; "
                        "then head(final_norm(x))")
