"""Lesson 07: a small decoder-only language model (a GPT in miniature).

The pieces, in the order the lesson builds them:

- `DecoderLM`: token and position embeddings, a stack of causal pre-norm Transformer
  blocks (lesson 03's `attention.TransformerBlock` with ``causal=True``: each position
  attends to itself and the past, `attention.causal_mask`), a final norm and a head
  that scores every token of the vocabulary;
- the next-token objective: `next_token_pairs` shifts a batch by one position,
  `next_token_loss` is lesson 05's masked sequence loss, and `perplexity` is the
  exponential of that mean loss (`unigram_perplexity` is a baseline);
- decoding: `temperature_probabilities`, `top_k_filter`, `sample_next_token`;
- a key-value cache (`DecoderLM.init_cache`, written with `attention.update_cache`) and
  `generate`, which runs with or without the cache and gives the same tokens either way,
  only faster with it.

Lesson 08 puts image tokens in front of the text. `DecoderLM.call`, `generate`,
`perplexity` and `attention_weights` take an optional ``prefix_embeddings`` float tensor
(B, P, dim) that is placed before the token embeddings; `DecoderLM.embed` and
`DecoderLM.decode_embeddings` let a caller assemble the input sequence itself.

Cache layout: one ``(keys, values)`` pair per decoder block, each of shape
(batch, num_heads, cache_length, head_dim): time on axis 2, heads first as attention
wants them.
"""

from __future__ import annotations

import time
from typing import Sequence

import keras
import numpy as np
from keras import ops

from mmlm_course import attention, preprocessing, shapeworld
from mmlm_course.losses import masked_sequence_loss
from mmlm_course.validation import (as_array, concrete_values, dtype_name, is_float, is_int, require_array_budget,
                                    require_bool, require_float, require_instance, require_int, static_shape)

TASK_TOKENS = ("<caption>", "<question>")
CAPTION, QUESTION = TASK_TOKENS
NEG_INF = float("-inf")


@keras.saving.register_keras_serializable(package="mmlm_course")
class DecoderLM(keras.Model):
    """A decoder-only Transformer language model.

    ``model(token_ids)``: int (B, T) -> next-token logits float32 (B, T, vocab_size); the
    logits at position t score token t + 1. ``model(token_ids, prefix_embeddings=x)``
    puts ``x`` (B, P, dim) in front of the token embeddings (lesson 08's image tokens) and
    still returns the logits of the T token positions (the first of them is predicted by
    the last prefix position, which `decode_embeddings` returns too).

    Building blocks for callers (lesson 08): `embed` (ids -> embeddings),
    `decode_embeddings` (embeddings -> logits over every position, with an optional cache
    and the attention weights on request) and `init_cache`.
    """

    def __init__(self, vocab_size: int, max_length: int = 64, dim: int = 64, num_layers: int = 2,
                 num_heads: int = 4, mlp_dim: int | None = None, dropout: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.vocab_size = require_int(vocab_size, "vocab_size", 2)
        self.max_length = require_int(max_length, "max_length", 2)
        self.dim = require_int(dim, "dim", 1)
        self.num_layers = require_int(num_layers, "num_layers (blocks are built at once)", 1, 256)
        self.num_heads = require_int(num_heads, "num_heads", 1)
        vocab_size, max_length, dim, num_heads = self.vocab_size, self.max_length, self.dim, self.num_heads
        if dim % num_heads:
            raise ValueError(f"dim={dim} must be divisible by num_heads={num_heads} (each head gets dim // num_heads).")
        self.mlp_dim = 4 * dim if mlp_dim is None else require_int(mlp_dim, "mlp_dim", 1)
        self.dropout = float(dropout)
        self.head_dim = dim // num_heads
        policy = self.dtype_policy
        self.token_embedding = keras.layers.Embedding(vocab_size, dim, name="token_embedding", dtype=policy)
        self.position_embedding = keras.layers.Embedding(max_length, dim, name="position_embedding", dtype=policy)
        self.blocks = [attention.TransformerBlock(dim, num_heads, self.mlp_dim, dropout, causal=True,
                                                  name=f"block_{i}", dtype=policy) for i in range(num_layers)]
        self.final_norm = keras.layers.LayerNormalization(epsilon=1e-5, name="final_norm", dtype=policy)
        # Small initial logits (GPT-2 style): an untrained model predicts ~uniformly, loss ~ ln(vocab_size).
        self.head = keras.layers.Dense(vocab_size, kernel_initializer=keras.initializers.RandomNormal(stddev=0.02),
                                       dtype="float32", name="head")  # logits stay float32 under mixed precision
        self._generation_steps = {}   # compiled generation steps (functions, which Keras neither tracks nor saves)

    def build(self, token_ids_shape=None, prefix_embeddings_shape=None):
        shape = (None, None, self.dim)
        self.token_embedding.build((None, None))
        self.position_embedding.build((None,))
        for block in self.blocks:
            block.build(shape)
        self.final_norm.build(shape)
        self.head.build(shape)
        self.built = True

    # -- the pieces

    def embed(self, token_ids):
        """Token embeddings without positions: int (B, T) -> (B, T, dim)."""
        shape = static_shape(token_ids)
        if len(shape) != 2:
            raise ValueError(f"token_ids: expected shape (batch, time), got shape {shape}.")
        if not is_int(token_ids):
            raise TypeError(f"token_ids: expected integer ids, got dtype {dtype_name(token_ids)}.")
        values = concrete_values(token_ids)              # None while tracing a graph: values unknown
        if values is not None and values.size:
            check_token_ids(values, vocab_size=self.vocab_size)
        return self.token_embedding(token_ids)

    def decode_embeddings(self, embeddings, cache=None, start=0, training=None, return_attention_scores=False):
        """Run the decoder on embeddings (B, S, dim) whose first row sits at position ``start``.

        Adds the position embeddings of ``start .. start + S - 1``, runs the blocks and the
        head. Returns logits float32 (B, S, vocab_size). With ``cache`` (from `init_cache`)
        the blocks read and write it, and the call returns ``(logits, new_cache)``. With
        ``return_attention_scores=True`` it also returns each block's attention weights, a
        list of (B, heads, S, keys) read from the layers: ``(logits, weights)`` or
        ``(logits, weights, new_cache)``. ``start`` may be a scalar int tensor.
        """
        shape = static_shape(embeddings)
        if len(shape) != 3 or (shape[2] is not None and shape[2] != self.dim):
            raise ValueError(f"embeddings: expected shape (batch, time, {self.dim}), got shape {shape}.")
        length = shape[1]
        if isinstance(start, (int, np.integer)) and length is not None and start + length > self.max_length:
            raise ValueError(f"positions {start}..{start + length - 1} exceed the model's max_length="
                             f"{self.max_length}: shorten the prefix or prompt, or build a model with a larger max_length.")
        positions = ops.arange(ops.shape(embeddings)[1], dtype="int32") + ops.cast(start, "int32")
        x = embeddings + ops.cast(self.position_embedding(positions), embeddings.dtype)[None]   # (B, S, dim)
        weights, new_cache = [], []
        for i, block in enumerate(self.blocks):
            x, block_weights, *block_cache = block(x, cache=None if cache is None else cache[i], position=start,
                                                   return_attention_scores=True, training=training)
            weights.append(block_weights)                                     # (B, H, S, S or cache length)
            new_cache += block_cache
        logits = self.head(self.final_norm(x))                                # (B, S, V) float32
        results = (logits,) + ((weights,) if return_attention_scores else ()) + ((new_cache,) if cache is not None else ())
        return results[0] if len(results) == 1 else results

    def init_cache(self, batch_size: int, cache_length: int):
        """An empty key-value cache: a list of num_layers ``(keys, values)`` pairs, each
        zeros of shape (batch_size, num_heads, cache_length, head_dim)."""
        batch_size = require_int(batch_size, "batch_size", 1)
        cache_length = require_int(cache_length, "cache_length", 1, self.max_length)
        shape = (batch_size, self.num_heads, cache_length, self.head_dim)
        return [(ops.zeros(shape, self.compute_dtype), ops.zeros(shape, self.compute_dtype))
                for _ in range(self.num_layers)]

    def call(self, token_ids, prefix_embeddings=None, training=None):
        embeddings = self.embed(token_ids)                          # (B, T, dim)
        if prefix_embeddings is None:
            return self.decode_embeddings(embeddings, training=training)
        _check_prefix(prefix_embeddings, static_shape(token_ids)[0], self.dim)
        prefix_length = static_shape(prefix_embeddings)[1]
        full = ops.concatenate([ops.cast(prefix_embeddings, embeddings.dtype), embeddings], axis=1)
        logits = self.decode_embeddings(full, training=training)    # (B, P + T, V)
        return logits[:, prefix_length:]

    def get_config(self):
        return {**super().get_config(), "vocab_size": self.vocab_size, "max_length": self.max_length,
                "dim": self.dim, "num_layers": self.num_layers, "num_heads": self.num_heads,
                "mlp_dim": self.mlp_dim, "dropout": self.dropout}


def attention_weights(model: DecoderLM, token_ids, block_index: int = 0, prefix_embeddings=None):
    """The causal self-attention weights of one decoder block: float32 NumPy (B, heads, S, S).

    token_ids: int (B, T); prefix_embeddings: optional float (B, P, dim) in front, so
    S = P + T (positions 0..P-1 are the prefix). Row ``i`` of head ``h`` is the softmax
    over the keys query ``i`` attends to; everything above the diagonal is 0 (causal
    mask). The weights are those the block's attention layer computed
    (`DecoderLM.decode_embeddings` with ``return_attention_scores=True``).
    """
    require_instance(model, DecoderLM, "model", "build one with DecoderLM(vocab_size)")
    ids = check_token_ids(token_ids, vocab_size=model.vocab_size)
    block_index = require_int(block_index, "block_index", 0, model.num_layers - 1)
    x = model.embed(ids)                                                         # (B, T, dim)
    if prefix_embeddings is not None:
        _check_prefix(prefix_embeddings, ids.shape[0], model.dim)
        x = ops.concatenate([ops.cast(prefix_embeddings, x.dtype), x], axis=1)  # (B, S, dim)
    _, weights = model.decode_embeddings(x, return_attention_scores=True)       # num_layers x (B, H, S, S)
    return ops.convert_to_numpy(weights[block_index]).astype(np.float32)


# --------------------------------------------------------------------------- argument checks


def check_token_ids(token_ids, name: str = "token_ids", vocab_size: int | None = None) -> np.ndarray:
    """Check concrete token ids: int (B, T) with B, T >= 1 and values in [0, vocab_size).
    Returns them as int32 NumPy."""
    array = np.asarray(token_ids)
    if array.ndim != 2:
        hint = " (one sequence? add a batch axis: ids[None, :])" if array.ndim == 1 else ""
        raise ValueError(f"{name}: expected shape (batch, time), got shape {array.shape}{hint}.")
    if not np.issubdtype(array.dtype, np.integer):
        raise TypeError(f"{name}: expected integer token ids, got dtype {array.dtype}.")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f"{name}: expected at least one sequence of at least one token, got shape {array.shape}.")
    if array.min() < 0:
        raise ValueError(f"{name}: ids are >= 0, got {array.min()}.")
    if vocab_size is not None and (array.min() < 0 or array.max() >= vocab_size):
        raise ValueError(f"{name}: ids must lie in [0, {vocab_size}) (the model's vocab_size), "
                         f"got values in [{array.min()}, {array.max()}].")
    return array.astype(np.int32)


def _as_logits(logits, name: str = "logits"):
    """Check that ``logits`` is a float (B, V) array / tensor and return it as a tensor."""
    logits = as_array(logits, name)
    if len(logits.shape) != 2:
        raise ValueError(f"{name}: expected shape (batch, vocab_size), got shape {static_shape(logits)} "
                         f"(take the last position first: logits[:, -1, :]).")
    if not is_float(logits):
        raise TypeError(f"{name}: expected a float dtype, got {dtype_name(logits)}.")
    return ops.convert_to_tensor(logits)


def _check_prefix(prefix_embeddings, batch: int | None, dim: int):
    """Check a prefix of precomputed embeddings: float (B, P, dim) with the tokens' batch size."""
    shape = static_shape(prefix_embeddings)
    if len(shape) != 3:
        raise ValueError(f"prefix_embeddings: expected shape (batch, prefix_length, {dim}), got shape {shape}.")
    if not is_float(prefix_embeddings):
        raise TypeError(f"prefix_embeddings: expected a float dtype, got {dtype_name(prefix_embeddings)}.")
    if shape[2] is not None and shape[2] != dim:
        raise ValueError(f"prefix_embeddings: the last axis must equal the model width dim={dim}, got {shape[2]} "
                         f"(project the image features to {dim} first).")
    if batch is not None and shape[0] is not None and shape[0] != batch:
        raise ValueError(f"prefix_embeddings has batch size {shape[0]} but token_ids has batch size {batch}: "
                         "give one prefix per sequence.")


# --------------------------------------------------------------------------- data and objective


def shapeworld_texts(data, kinds: Sequence[str] = ("caption", "question")) -> list[str]:
    """Language-model texts from a `shapeworld.ShapeWorldData`: for every example,
    ``"<caption> CAPTION"`` and ``"<question> QUESTION ANSWER"`` (as chosen by ``kinds``).
    The task token tells the model (and the sampler) which kind of text follows."""
    require_instance(data, shapeworld.ShapeWorldData, "data", "make it with shapeworld.generate(...)")
    unknown = set(kinds) - {"caption", "question"}
    if unknown or not kinds:
        raise ValueError(f"kinds must be a non-empty subset of ('caption', 'question'), got {tuple(kinds)}.")
    texts = []
    for caption, question, answer in zip(data.captions, data.questions, data.answers):
        if "caption" in kinds:
            texts.append(f"{CAPTION} {caption}")
        if "question" in kinds:
            texts.append(f"{QUESTION} {question} {answer}")
    return texts


def next_token_pairs(token_ids):
    """Shift a batch by one: int (B, T) -> (inputs (B, T - 1), targets (B, T - 1)).

    ``inputs[:, t]`` is token t and ``targets[:, t]`` is token t + 1, the one the model
    must predict after reading tokens 0..t.
    """
    ids = check_token_ids(token_ids)
    if ids.shape[1] < 2:
        raise ValueError(f"token_ids: need at least 2 tokens per row to make a (input, target) pair, "
                         f"got shape {ids.shape}.")
    return ids[:, :-1], ids[:, 1:]


@keras.saving.register_keras_serializable(package="mmlm_course")
def next_token_loss(targets, logits):
    """The language-model loss for ``compile``: mean cross-entropy over real target tokens.

    targets int (B, T) (pad id 0 is ignored), logits float (B, T, V). It is lesson 05's
    `masked_sequence_loss` with ``mask = targets != 0``. Returns a float32 scalar.
    """
    targets = as_array(targets, "targets")
    if not (is_int(targets) or is_float(targets)):
        raise TypeError(f"targets: expected integer token ids, got dtype {dtype_name(targets)}.")
    targets = ops.cast(targets, "int32")  # Keras hands y_true to a loss as float; the ids are exact
    return masked_sequence_loss(targets, logits, ops.not_equal(targets, preprocessing.Tokenizer.pad_id))


def perplexity(model: DecoderLM, token_ids, prefix_embeddings=None, pad_id: int = 0, batch_size: int = 256) -> float:
    """exp(mean negative log-likelihood per predicted token) of padded sequences.

    token_ids int (N, T) starting with ``<bos>``, right-padded with ``pad_id``; every
    non-pad token after the first is predicted. ``prefix_embeddings`` float (N, P, dim)
    optionally conditions each row. A model that guesses uniformly scores vocab_size; a
    perfect one scores 1.
    """
    require_instance(model, DecoderLM, "model", "build one with DecoderLM(vocab_size)")
    ids = check_token_ids(token_ids, vocab_size=model.vocab_size)
    if prefix_embeddings is not None:
        prefix_embeddings = np.asarray(prefix_embeddings)
        _check_prefix(prefix_embeddings, ids.shape[0], model.dim)
    batch_size = require_int(batch_size, "batch_size", 1)
    pad_id = require_int(pad_id, "pad_id", 0, model.vocab_size - 1)
    inputs, targets = next_token_pairs(ids)
    total_nll, total_tokens = 0.0, 0
    for start in range(0, len(ids), batch_size):
        batch = slice(start, start + batch_size)
        prefix = None if prefix_embeddings is None else prefix_embeddings[batch]
        logits = model(inputs[batch], prefix_embeddings=prefix)                # (b, T-1, V)
        log_probs = ops.convert_to_numpy(ops.log_softmax(ops.cast(logits, "float32"), axis=-1))
        picked = np.take_along_axis(log_probs, targets[batch][..., None], axis=-1)[..., 0]
        real = targets[batch] != pad_id
        total_nll -= float(picked[real].astype(np.float64).sum())
        total_tokens += int(real.sum())
    if total_tokens == 0:
        raise ValueError("perplexity: no real target tokens (every target is padding).")
    return float(np.exp(total_nll / total_tokens))


def unigram_perplexity(train_ids, test_ids, vocab_size: int, pad_id: int = 0) -> float:
    """Baseline: the perplexity of a model that ignores the context and predicts every
    token with its training frequency (add-one smoothed). Both id arrays: int (N, T)
    starting with ``<bos>``; as in `perplexity`, every non-pad token after the first counts."""
    vocab_size = require_int(vocab_size, "vocab_size", 2, 10**7)
    pad_id = require_int(pad_id, "pad_id", 0, vocab_size - 1)
    train = check_token_ids(train_ids, "train_ids", vocab_size)[:, 1:]
    test = check_token_ids(test_ids, "test_ids", vocab_size)[:, 1:]
    counts = np.bincount(train[train != pad_id], minlength=vocab_size).astype(np.float64) + 1.0
    counts[pad_id] = 0.0
    probabilities = counts / counts.sum()
    return float(np.exp(-np.log(probabilities[test[test != pad_id]]).mean()))


# --------------------------------------------------------------------------- decoding


def temperature_probabilities(logits, temperature: float):
    """softmax(logits / temperature) along the last axis: float (B, V) -> float32 (B, V).

    Temperature below 1 sharpens the distribution (towards greedy), above 1 flattens it
    (towards uniform). It must be applied to the logits, *before* the softmax.
    """
    logits = _as_logits(logits)
    if isinstance(temperature, (int, float)) or not hasattr(temperature, "shape"):
        temperature = require_float(temperature, "temperature")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature} (use temperature=0 in sample_next_token "
                         "for greedy decoding).")
    return ops.softmax(ops.cast(logits, "float32") / temperature, axis=-1)


def top_k_filter(logits, k: int):
    """Keep the k largest logits of each row, set the others to -inf.

    float (B, V) -> float32 (B, V). Ties with the k-th largest value are kept. After a
    softmax only the k kept tokens have non-zero probability.
    """
    logits = ops.cast(_as_logits(logits), "float32")
    k = require_int(k, "k", 1, logits.shape[-1])
    kth_largest = ops.top_k(logits, k)[0][:, -1:]                  # (B, 1)
    return ops.where(logits >= kth_largest, logits, NEG_INF)


def sample_next_token(logits, temperature: float = 1.0, top_k: int | None = None, seed=None):
    """Pick the next token of each row: float (B, V) logits -> int32 (B,).

    ``temperature=0`` is greedy decoding (argmax). Otherwise the logits are divided by
    the temperature, optionally restricted to the ``top_k`` best, and one token is drawn;
    ``seed`` is an int or a `keras.random.SeedGenerator` (reproducible draws).
    """
    logits = ops.cast(_as_logits(logits), "float32")
    values = concrete_values(logits)
    if values is not None and (np.isnan(values).any() or np.isposinf(values).any()):
        raise ValueError("logits contain NaN or +inf (a diverged model?); no token can be sampled from them.")
    if isinstance(temperature, (int, float)) or not hasattr(temperature, "shape"):
        temperature = require_float(temperature, "temperature (0 = greedy)")
    if seed is not None and not isinstance(seed, keras.random.SeedGenerator):
        seed = require_int(seed, "seed", 0)
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature}.")
    if temperature == 0:
        return ops.cast(ops.argmax(logits, axis=-1), "int32")
    scaled = logits / temperature
    if top_k is not None:
        scaled = top_k_filter(scaled, top_k)
    return ops.cast(keras.random.categorical(scaled, 1, seed=seed)[:, 0], "int32")


# --------------------------------------------------------------------------- generation


class _DecodeStep(keras.Model):
    """One generation step of a `DecoderLM`, as a Keras model of its own so that Keras
    compiles it for the active backend: ``predict_on_batch`` runs it as a `tf.function`
    under TensorFlow and a `jax.jit` under JAX (eagerly under PyTorch), reading the
    decoder's current weights at every call.

    inputs: ``{"prefix": (B, P, dim), "token_ids": (B, T)}`` (P may be 0), plus
    ``"start"`` (a scalar int, the position of the first input) with a cache. Returns the
    logits of the last position (B, V).

    With ``batch_size`` the step keeps a key-value cache for that many sequences in its
    own variables, (batch_size, num_heads, max_length, head_dim) per block and for keys
    and values: each call runs only the new positions, writes their keys and values at
    ``start`` and attends to everything written before. The cache stays where the model
    runs, and only token ids and logits travel between steps. Slots after the current
    position may hold keys of an earlier generation: the causal mask hides them until
    they are overwritten. Without ``batch_size`` each call recomputes the whole sequence.
    """

    def __init__(self, decoder: DecoderLM, batch_size: int | None = None):
        super().__init__(name=f"{decoder.name}_step", dtype=decoder.dtype_policy)
        self.decoder = decoder
        self.cache = None
        if batch_size is not None:
            shape = (batch_size, decoder.num_heads, decoder.max_length, decoder.head_dim)
            self.cache = [tuple(self.add_weight(shape=shape, initializer="zeros", dtype=decoder.compute_dtype,
                                                trainable=False, name=f"{kind}_{i}") for kind in ("keys", "values"))
                          for i in range(decoder.num_layers)]

    def call(self, inputs):
        x = ops.concatenate([ops.cast(inputs["prefix"], self.decoder.compute_dtype),
                             self.decoder.embed(inputs["token_ids"])], axis=1)      # (B, P + T, dim)
        if self.cache is None:                   # recompute every position of the sequence so far
            return self.decoder.decode_embeddings(x)[:, -1]
        logits, cache = self.decoder.decode_embeddings(x, cache=self.cache, start=inputs["start"])
        for variables, values in zip(self.cache, cache):             # keep the new keys and values
            for variable, value in zip(variables, values):
                variable.assign(value)
        return logits[:, -1]


def _generation_step(model: DecoderLM, batch_size: int | None, compiled: bool):
    """The step function `generate` calls (with a cache for ``batch_size`` sequences, or
    none), built once per model and kept on it (as a function: a model stored there would
    become a part of the decoder)."""
    key = (batch_size, compiled)
    if key not in model._generation_steps:
        step = _DecodeStep(model, batch_size)
        model._generation_steps[key] = step.predict_on_batch if compiled else step.__call__
    return model._generation_steps[key]


def generate(model: DecoderLM, prompt_ids, max_new_tokens: int, *, prefix_embeddings=None,
             temperature: float = 0.0, top_k: int | None = None, seed: int | None = 0,
             use_cache: bool = True, stop_id: int | None = None, pad_id: int = 0,
             return_logits: bool = False, compiled: bool = True):
    """Continue ``prompt_ids`` by up to ``max_new_tokens`` tokens.

    prompt_ids: int (B, T0), e.g. ``[[bos, caption_id]] * B`` (rows of one batch share T0:
    group prompts by length). prefix_embeddings: optional float (B, P, dim) placed before
    the prompt (lesson 08's image tokens). temperature 0 is greedy; otherwise sampling
    with ``temperature`` and optional ``top_k``, reproducible from ``seed``.

    ``use_cache=True`` runs the prompt once and then feeds one token per step, reading the
    past keys and values from a fixed-size cache; ``use_cache=False`` recomputes the whole
    sequence at every step. Both give the same tokens and logits (up to float rounding).
    ``compiled=False`` runs the steps eagerly (for debugging) instead of compiled by Keras.

    With ``stop_id`` (e.g. ``<eos>``) generation ends once every row has produced it, and
    tokens after a row's stop token are ``pad_id``. Returns int32 NumPy tokens (B, n) with
    n <= max_new_tokens, or ``(tokens, logits)`` with float32 logits (B, n, vocab_size)
    when ``return_logits``.
    """
    require_instance(model, DecoderLM, "model", "build one with DecoderLM(vocab_size)")
    ids = check_token_ids(prompt_ids, "prompt_ids", model.vocab_size)
    batch, prompt_length = ids.shape
    max_new_tokens = require_int(max_new_tokens, "max_new_tokens", 1)
    use_cache, return_logits, compiled = (require_bool(v, n) for v, n in ((use_cache, "use_cache"),
                                          (return_logits, "return_logits"), (compiled, "compiled")))
    pad_id, seed = require_int(pad_id, "pad_id"), None if seed is None else require_int(seed, "seed", 0)
    stop_id = None if stop_id is None else require_int(stop_id, "stop_id", 0, model.vocab_size - 1)
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature}.")
    if top_k is not None:
        require_int(top_k, "top_k", 1, model.vocab_size)
    no_prefix = np.zeros((batch, 0, model.dim), model.compute_dtype)       # an empty (B, 0, dim) prefix
    if prefix_embeddings is None:
        prefix = no_prefix
    else:
        _check_prefix(prefix_embeddings, batch, model.dim)
        prefix = prefix_embeddings
    prefix_length = prefix.shape[1]
    length = prefix_length + prompt_length + max_new_tokens - 1    # positions the model ever reads
    if length > model.max_length:
        raise ValueError(f"prefix ({prefix_length}) + prompt ({prompt_length}) + max_new_tokens - 1 "
                         f"({max_new_tokens - 1}) = {length} positions exceed the model's max_length="
                         f"{model.max_length}: generate fewer tokens or use a shorter prompt.")
    if not model.built:
        model(ids[:, :1])
    step = _generation_step(model, batch if use_cache else None, compiled)
    seed_generator = keras.random.SeedGenerator(seed) if temperature > 0 else None

    tokens, all_logits = [], []
    finished = np.zeros(batch, bool)
    if use_cache:                                                  # the whole prompt, once
        logits = step({"prefix": prefix, "token_ids": ids, "start": np.int32(0)})
    else:
        sequence = ids                                             # (B, T0), grows by one per step
        logits = step({"prefix": prefix, "token_ids": sequence})
    for i in range(max_new_tokens):
        logits_np = ops.convert_to_numpy(logits)                   # (B, V)
        if temperature == 0:   # greedy: the argmax, on the host
            token = logits_np.argmax(axis=-1).astype(np.int32)    # (B,)
        else:
            token = ops.convert_to_numpy(sample_next_token(logits_np, temperature, top_k, seed_generator))
        tokens.append(np.where(finished, pad_id, token))
        if return_logits:
            all_logits.append(logits_np.astype(np.float32))
        if stop_id is not None:
            finished |= token == stop_id
            if finished.all():
                break
        if i == max_new_tokens - 1:
            break
        position = prefix_length + prompt_length + i               # where this token goes
        if use_cache:                                              # one token against the cache
            logits = step({"prefix": no_prefix, "token_ids": token[:, None], "start": np.int32(position)})
        else:
            sequence = np.concatenate([sequence, token[:, None]], axis=1)
            logits = step({"prefix": prefix, "token_ids": sequence})
    tokens = np.stack(tokens, axis=1)
    return (tokens, np.stack(all_logits, axis=1)) if return_logits else tokens


def sample_texts(model: DecoderLM, tokenizer: preprocessing.Tokenizer, task_token: str, count: int,
                 max_new_tokens: int = 24, temperature: float = 1.0, top_k: int | None = None,
                 seed: int = 0, batch_size: int = 64) -> list[str]:
    """Sample ``count`` texts that start with ``<bos> task_token`` (e.g. ``"<caption>"``),
    each decoded up to its first ``<eos>``; generated ``batch_size`` at a time."""
    require_instance(tokenizer, preprocessing.Tokenizer, "tokenizer", "make one with Tokenizer.for_shapeworld(...)")
    require_instance(model, DecoderLM, "model", "build one with DecoderLM(vocab_size)")
    if task_token not in tokenizer.token_to_id:
        raise ValueError(f"task_token {task_token!r} is not in the tokenizer's vocabulary; expected one of {TASK_TOKENS}.")
    count, seed = require_int(count, "count", 1), require_int(seed, "seed", 0)
    batch_size = require_int(batch_size, "batch_size", 1)
    max_new_tokens = require_int(max_new_tokens, "max_new_tokens", 1)
    require_array_budget((count, max_new_tokens), 64, "count and max_new_tokens")   # texts of max_new_tokens words
    texts = []
    for first in range(0, count, batch_size):
        rows = min(batch_size, count - first)
        prompt = np.tile(np.array([[tokenizer.bos_id, tokenizer.token_to_id[task_token]]], np.int32), (rows, 1))
        tokens = generate(model, prompt, max_new_tokens, temperature=temperature, top_k=top_k,
                          seed=seed + first, stop_id=tokenizer.eos_id, pad_id=tokenizer.pad_id)
        texts += [tokenizer.decode(row) for row in tokens]
    return texts


def time_generation(model: DecoderLM, prompt_ids, max_new_tokens: int = 64, repeats: int = 3,
                    warmup: bool = True) -> dict:
    """Seconds to generate ``max_new_tokens`` greedily with and without the cache, and the
    speed-up ``uncached_s / cached_s``.

    With ``warmup``, one untimed run each compiles the step functions first. The timed
    runs alternate (cached, uncached, cached, ...) so that a busy machine slows both
    alike, and the best of ``repeats`` counts.
    """
    repeats = require_int(repeats, "repeats", 1)
    if warmup:
        for use_cache in (True, False):
            generate(model, prompt_ids, max_new_tokens, use_cache=use_cache)
    best = {True: float("inf"), False: float("inf")}
    for _ in range(repeats):
        for use_cache in (True, False):
            start = time.perf_counter()
            generate(model, prompt_ids, max_new_tokens, use_cache=use_cache)
            best[use_cache] = min(best[use_cache], time.perf_counter() - start)
    return {"cached_s": best[True], "uncached_s": best[False], "speedup": best[False] / best[True]}
