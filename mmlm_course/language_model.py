"""Lesson 07: a small decoder-only language model (a GPT in miniature).

The pieces, in the order the lesson builds them:

- `causal_mask`: which key positions each query position may attend to (itself and the past);
- `CausalSelfAttention`, `DecoderBlock`, `DecoderLM`: a pre-norm Transformer decoder with
  learned positions, written with ``keras.layers`` / ``keras.ops`` only; attention itself is
  lesson 03's `mmlm_course.encoders.scaled_dot_product_attention`;
- the next-token objective: `next_token_pairs` shifts a batch by one position,
  `next_token_loss` is lesson 05's masked sequence loss, and `perplexity` is the
  exponential of that mean loss (`unigram_perplexity` is a baseline);
- decoding: `temperature_probabilities`, `top_k_filter`, `sample_next_token`;
- a key-value cache (`update_cache`, `DecoderLM.init_cache`) and `generate`, which runs with
  or without the cache and gives the same tokens either way, only faster with it.

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
import weakref
from typing import Sequence

import keras
import numpy as np
from keras import ops

from mmlm_course import preprocessing
from mmlm_course.encoders import scaled_dot_product_attention
from mmlm_course.losses import masked_sequence_loss
from mmlm_course.validation import dtype_name, require_int, static_shape

TASK_TOKENS = ("<caption>", "<question>")
CAPTION, QUESTION = TASK_TOKENS
NEG_INF = float("-inf")


# --------------------------------------------------------------------------- validation helpers


def _concrete(x) -> np.ndarray | None:
    """The values of ``x`` as NumPy when they exist now (not inside a traced graph), else None."""
    if isinstance(x, np.ndarray):
        return x
    if isinstance(x, keras.KerasTensor):
        return None
    try:
        return np.asarray(ops.convert_to_numpy(x))
    except Exception:  # a symbolic / traced tensor has no values yet
        return None


def _as_logits(logits, name: str = "logits"):
    """Check that ``logits`` is a float (B, V) array / tensor and return it as a tensor."""
    if not hasattr(logits, "shape"):
        logits = np.asarray(logits)
    if len(logits.shape) != 2:
        raise ValueError(f"{name}: expected shape (batch, vocab_size), got shape {static_shape(logits)} "
                         f"(take the last position first: logits[:, -1, :]).")
    if "float" not in dtype_name(logits):
        raise TypeError(f"{name}: expected a float dtype, got {dtype_name(logits)}.")
    return ops.convert_to_tensor(logits)


def _as_token_ids(token_ids, name: str = "token_ids", vocab_size: int | None = None) -> np.ndarray:
    """Check concrete token ids: int (B, T), values in [0, vocab_size). Returns int32 NumPy."""
    array = np.asarray(token_ids)
    if array.ndim != 2:
        hint = " (one sequence? add a batch axis: ids[None, :])" if array.ndim == 1 else ""
        raise ValueError(f"{name}: expected shape (batch, time), got shape {array.shape}{hint}.")
    if not np.issubdtype(array.dtype, np.integer):
        raise TypeError(f"{name}: expected integer token ids, got dtype {array.dtype}.")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f"{name}: expected at least one sequence of at least one token, got shape {array.shape}.")
    if vocab_size is not None and (array.min() < 0 or array.max() >= vocab_size):
        raise ValueError(f"{name}: ids must lie in [0, {vocab_size}) (the model's vocab_size), "
                         f"got values in [{array.min()}, {array.max()}].")
    return array.astype(np.int32)


def _check_prefix(prefix_embeddings, batch: int | None, dim: int):
    """Check a prefix of precomputed embeddings: float (B, P, dim) with the tokens' batch size."""
    shape = static_shape(prefix_embeddings)
    if len(shape) != 3:
        raise ValueError(f"prefix_embeddings: expected shape (batch, prefix_length, {dim}), got shape {shape}.")
    if "float" not in dtype_name(prefix_embeddings):
        raise TypeError(f"prefix_embeddings: expected a float dtype, got {dtype_name(prefix_embeddings)}.")
    if shape[2] is not None and shape[2] != dim:
        raise ValueError(f"prefix_embeddings: the last axis must equal the model width dim={dim}, got {shape[2]} "
                         f"(project the image features to {dim} first).")
    if batch is not None and shape[0] is not None and shape[0] != batch:
        raise ValueError(f"prefix_embeddings has batch size {shape[0]} but token_ids has batch size {batch}: "
                         "give one prefix per sequence.")


# --------------------------------------------------------------------------- masks and the cache


def causal_mask(query_length: int, key_length: int | None = None, offset=0):
    """The causal attention mask: bool (query_length, key_length), True where allowed.

    Query ``i`` sits at absolute position ``offset + i`` and may attend to key ``j`` when
    ``j <= offset + i``: itself and the past, never the future. With the defaults
    (``key_length = query_length``, ``offset = 0``) this is the lower triangle including
    the diagonal. With a fixed-size key-value cache of length L, one new query at position
    ``p`` uses ``causal_mask(1, L, offset=p)``: the empty slots after ``p`` are masked.
    (`mmlm_course.encoders.causal_mask` is the special case ``offset = key_length -
    query_length``.) ``offset`` may be a scalar int tensor.
    """
    query_length = require_int(query_length, "query_length", 1)
    key_length = query_length if key_length is None else require_int(key_length, "key_length", 1)
    if isinstance(offset, (int, np.integer)):
        require_int(offset, "offset", 0)
        if key_length < offset + query_length:
            raise ValueError(f"key_length={key_length} is shorter than offset + query_length = "
                             f"{offset} + {query_length}: the keys must include every query position.")
    return _causal_mask(query_length, key_length, offset)


def _causal_mask(query_length, key_length, offset):
    """`causal_mask` without validation; lengths may be dynamic (traced) scalars."""
    queries = ops.expand_dims(ops.arange(query_length, dtype="int32") + ops.cast(offset, "int32"), 1)
    keys = ops.expand_dims(ops.arange(key_length, dtype="int32"), 0)
    return ops.less_equal(keys, queries)


def update_cache(cache, new, position, axis: int = 1):
    """Write ``new`` into ``cache`` at time ``position``; return the updated cache.

    cache: a buffer (B, L, ...) with time on ``axis`` (1 by default); new: (B, T_new, ...)
    with the same rank, the same size on every other axis, and T_new on ``axis``;
    position: int (or scalar int tensor) with 0 <= position <= L - T_new. The result has
    the cache's shape and dtype: time steps ``position .. position + T_new - 1`` hold
    ``new``, all others are unchanged. Fixed-size buffers keep every generation step the
    same shape, so a compiled step is traced only once.
    """
    cache_shape, new_shape = static_shape(cache), static_shape(new)
    if len(cache_shape) < 2 or len(new_shape) != len(cache_shape):
        raise ValueError(f"update_cache: cache and new need the same rank >= 2, got cache shape {cache_shape} "
                         f"and new shape {new_shape}.")
    axis = require_int(axis, "axis", 1, len(cache_shape) - 1)
    others = [i for i in range(len(cache_shape)) if i != axis]
    if any(None not in (new_shape[i], cache_shape[i]) and new_shape[i] != cache_shape[i] for i in others):
        raise ValueError(f"update_cache: new {new_shape} must match cache {cache_shape} on every axis but the "
                         f"time axis {axis}.")
    if isinstance(position, (int, np.integer)) and None not in (cache_shape[axis], new_shape[axis]):
        require_int(position, "position", 0, cache_shape[axis] - new_shape[axis])
    start = [0] * len(cache_shape)
    start[axis] = ops.cast(position, "int32")
    return ops.slice_update(cache, start, ops.cast(new, cache.dtype))


# --------------------------------------------------------------------------- layers


@keras.saving.register_keras_serializable(package="mmlm_course")
class CausalSelfAttention(keras.layers.Layer):
    """Multi-head causal self-attention with an optional key-value cache.

    Input (B, T, dim) float; output (B, T, dim). With ``cache=(keys, values)``, each
    (B, num_heads, L, dim // num_heads), the new keys / values are written at time
    ``position`` (`update_cache` on axis 2) and the queries attend to the whole cache with
    ``causal_mask(T, L, offset=position)`` (empty future slots are masked); the call then
    returns ``(output, (keys, values))``.
    """

    def __init__(self, dim: int, num_heads: int, dropout: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.dim = require_int(dim, "dim", 1)
        self.num_heads = require_int(num_heads, "num_heads", 1)
        if dim % num_heads:
            raise ValueError(f"dim={dim} must be divisible by num_heads={num_heads} (each head gets dim // num_heads).")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}.")
        self.head_dim = dim // num_heads
        self.dropout = float(dropout)
        self.qkv = keras.layers.Dense(3 * dim, name="qkv")   # queries, keys and values in one matmul
        self.out = keras.layers.Dense(dim, name="out")
        self.drop = keras.layers.Dropout(dropout)

    def build(self, input_shape):
        if input_shape[-1] is not None and input_shape[-1] != self.dim:
            raise ValueError(f"CausalSelfAttention(dim={self.dim}) got inputs with {input_shape[-1]} features.")
        self.qkv.build(input_shape)
        self.out.build(input_shape)

    def _heads(self, x):
        """(B, T, dim) -> (B, num_heads, T, head_dim)."""
        x = ops.reshape(x, (ops.shape(x)[0], ops.shape(x)[1], self.num_heads, self.head_dim))
        return ops.transpose(x, (0, 2, 1, 3))

    def call(self, inputs, cache=None, position=0, training=None):
        qkv = self.qkv(inputs)                                          # (B, T, 3 * dim)
        q, k, v = (self._heads(t) for t in ops.split(qkv, 3, axis=-1))  # each (B, H, T, hd)
        if cache is not None:
            k = update_cache(cache[0], k, position, axis=2)             # (B, H, L, hd)
            v = update_cache(cache[1], v, position, axis=2)
            mask = _causal_mask(ops.shape(q)[2], ops.shape(k)[2], position)  # (T, L)
        else:
            mask = _causal_mask(ops.shape(q)[2], ops.shape(q)[2], 0)         # (T, T)
        attended, _ = scaled_dot_product_attention(q, k, v, mask=mask[None, None])  # (B, H, T, hd)
        attended = ops.reshape(ops.transpose(attended, (0, 2, 1, 3)), ops.shape(inputs))  # (B, T, dim)
        output = self.drop(self.out(attended), training=training)
        return output if cache is None else (output, (k, v))

    def get_config(self):
        return {**super().get_config(), "dim": self.dim, "num_heads": self.num_heads, "dropout": self.dropout}


@keras.saving.register_keras_serializable(package="mmlm_course")
class DecoderBlock(keras.layers.Layer):
    """A pre-norm decoder block: x + attention(norm(x)), then x + mlp(norm(x)).

    Input and output (B, T, dim) float. ``cache`` / ``position`` go to the attention; with
    a cache the call returns ``(output, new_cache)``.
    """

    def __init__(self, dim: int, num_heads: int, mlp_dim: int, dropout: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.dim, self.num_heads, self.dropout = dim, num_heads, float(dropout)
        self.mlp_dim = require_int(mlp_dim, "mlp_dim", 1)
        self.norm1 = keras.layers.LayerNormalization(epsilon=1e-5, name="norm1")
        self.attention = CausalSelfAttention(dim, num_heads, dropout, name="attention")
        self.norm2 = keras.layers.LayerNormalization(epsilon=1e-5, name="norm2")
        self.mlp_in = keras.layers.Dense(mlp_dim, activation="gelu", name="mlp_in")
        self.mlp_out = keras.layers.Dense(dim, name="mlp_out")
        self.drop = keras.layers.Dropout(dropout)

    def build(self, input_shape):
        for layer in (self.norm1, self.attention, self.norm2, self.mlp_in):
            layer.build(input_shape)
        self.mlp_out.build(tuple(input_shape[:-1]) + (self.mlp_dim,))

    def call(self, inputs, cache=None, position=0, training=None):
        attended = self.attention(self.norm1(inputs), cache=cache, position=position, training=training)
        if cache is not None:
            attended, cache = attended
        x = inputs + attended
        x = x + self.drop(self.mlp_out(self.mlp_in(self.norm2(x))), training=training)
        return x if cache is None else (x, cache)

    def get_config(self):
        return {**super().get_config(), "dim": self.dim, "num_heads": self.num_heads, "mlp_dim": self.mlp_dim,
                "dropout": self.dropout}


@keras.saving.register_keras_serializable(package="mmlm_course")
class DecoderLM(keras.Model):
    """A decoder-only Transformer language model.

    ``model(token_ids)``: int (B, T) -> next-token logits float32 (B, T, vocab_size); the
    logits at position t score token t + 1. ``model(token_ids, prefix_embeddings=x)``
    puts ``x`` (B, P, dim) in front of the token embeddings (lesson 08's image tokens) and
    still returns the logits of the T token positions (the first of them is predicted by
    the last prefix position, which `decode_embeddings` returns too).

    Building blocks for callers (lesson 08): `embed` (ids -> embeddings), and
    `decode_embeddings` (embeddings -> logits over every position, with an optional cache),
    `init_cache`.
    """

    def __init__(self, vocab_size: int, max_length: int = 64, dim: int = 64, num_layers: int = 2,
                 num_heads: int = 4, mlp_dim: int | None = None, dropout: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.vocab_size = require_int(vocab_size, "vocab_size", 2)
        self.max_length = require_int(max_length, "max_length", 2)
        self.dim = require_int(dim, "dim", 1)
        self.num_layers = require_int(num_layers, "num_layers", 1)
        self.num_heads = require_int(num_heads, "num_heads", 1)
        if dim % num_heads:
            raise ValueError(f"dim={dim} must be divisible by num_heads={num_heads} (each head gets dim // num_heads).")
        self.mlp_dim = 4 * dim if mlp_dim is None else require_int(mlp_dim, "mlp_dim", 1)
        self.dropout = float(dropout)
        self.head_dim = dim // num_heads
        self.token_embedding = keras.layers.Embedding(vocab_size, dim, name="token_embedding")
        self.position_embedding = keras.layers.Embedding(max_length, dim, name="position_embedding")
        self.blocks = [DecoderBlock(dim, num_heads, self.mlp_dim, dropout, name=f"block_{i}") for i in range(num_layers)]
        self.final_norm = keras.layers.LayerNormalization(epsilon=1e-5, name="final_norm")
        # Small initial logits (GPT-2 style): an untrained model predicts ~uniformly, loss ~ ln(vocab_size).
        self.head = keras.layers.Dense(vocab_size, kernel_initializer=keras.initializers.RandomNormal(stddev=0.02),
                                       dtype="float32", name="head")  # logits stay float32 under mixed precision

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
        if "int" not in dtype_name(token_ids):
            raise TypeError(f"token_ids: expected integer ids, got dtype {dtype_name(token_ids)}.")
        values = _concrete(token_ids)                 # None while tracing a graph: values unknown
        if values is not None and values.size:
            _as_token_ids(values, vocab_size=self.vocab_size)
        return self.token_embedding(token_ids)

    def decode_embeddings(self, embeddings, cache=None, start=0, training=None):
        """Run the decoder on embeddings (B, S, dim) whose first row sits at position ``start``.

        Adds the position embeddings of ``start .. start + S - 1``, runs the blocks and the
        head. Returns logits float32 (B, S, vocab_size); with ``cache`` (from `init_cache`)
        returns ``(logits, new_cache)``. ``start`` may be a scalar int tensor.
        """
        shape = static_shape(embeddings)
        if len(shape) != 3 or (shape[2] is not None and shape[2] != self.dim):
            raise ValueError(f"embeddings: expected shape (batch, time, {self.dim}), got shape {shape}.")
        length = shape[1]
        if isinstance(start, (int, np.integer)) and length is not None and start + length > self.max_length:
            raise ValueError(f"positions {start}..{start + length - 1} exceed the model's max_length="
                             f"{self.max_length}: shorten the prefix or prompt, or build a model with a larger max_length.")
        positions = ops.arange(ops.shape(embeddings)[1], dtype="int32") + ops.cast(start, "int32")
        x = embeddings + ops.cast(self.position_embedding(positions), embeddings.dtype)[None]
        new_cache = []
        for i, block in enumerate(self.blocks):
            if cache is None:
                x = block(x, training=training)
            else:
                x, layer_cache = block(x, cache=cache[i], position=start, training=training)
                new_cache.append(layer_cache)
        logits = self.head(self.final_norm(x))
        return logits if cache is None else (logits, new_cache)

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
    over the keys query ``i`` attends to; everything above the diagonal is 0 (causal mask).
    """
    if not isinstance(model, DecoderLM):
        raise TypeError(f"model must be a DecoderLM, got {type(model).__name__}.")
    ids = _as_token_ids(token_ids, vocab_size=model.vocab_size)
    block_index = require_int(block_index, "block_index", 0, model.num_layers - 1)
    x = model.embed(ids)                                                         # (B, T, dim)
    if prefix_embeddings is not None:
        _check_prefix(prefix_embeddings, ids.shape[0], model.dim)
        x = ops.concatenate([ops.cast(prefix_embeddings, x.dtype), x], axis=1)  # (B, S, dim)
    length = x.shape[1]
    if length > model.max_length:
        raise ValueError(f"{length} positions exceed the model's max_length={model.max_length}.")
    x = x + ops.cast(model.position_embedding(ops.arange(length, dtype="int32")), x.dtype)[None]
    for block in model.blocks[:block_index]:
        x = block(x)
    block = model.blocks[block_index]
    q, k, _ = (block.attention._heads(t) for t in ops.split(block.attention.qkv(block.norm1(x)), 3, axis=-1))
    _, weights = scaled_dot_product_attention(q, k, k, mask=causal_mask(length)[None, None])
    return ops.convert_to_numpy(weights).astype(np.float32)


# --------------------------------------------------------------------------- data and objective


def lm_tokenizer() -> preprocessing.Tokenizer:
    """The ShapeWorld tokenizer plus the task tokens ``<caption>`` and ``<question>``."""
    return preprocessing.Tokenizer.for_shapeworld(extra_special=TASK_TOKENS)


def shapeworld_texts(data, kinds: Sequence[str] = ("caption", "question")) -> list[str]:
    """Language-model texts from a `shapeworld.ShapeWorldData`: for every example,
    ``"<caption> CAPTION"`` and ``"<question> QUESTION ANSWER"`` (as chosen by ``kinds``).
    The task token tells the model (and the sampler) which kind of text follows."""
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
    ids = _as_token_ids(token_ids)
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
    targets = ops.cast(targets, "int32")  # Keras hands y_true to a loss as float; the ids are exact
    return masked_sequence_loss(targets, logits, ops.not_equal(targets, preprocessing.Tokenizer.pad_id))


def perplexity(model: DecoderLM, token_ids, prefix_embeddings=None, pad_id: int = 0, batch_size: int = 256) -> float:
    """exp(mean negative log-likelihood per predicted token) of padded sequences.

    token_ids int (N, T) starting with ``<bos>``, right-padded with ``pad_id``; every
    non-pad token after the first is predicted. ``prefix_embeddings`` float (N, P, dim)
    optionally conditions each row. A model that guesses uniformly scores vocab_size; a
    perfect one scores 1.
    """
    ids = _as_token_ids(token_ids, vocab_size=model.vocab_size)
    if prefix_embeddings is not None:
        prefix_embeddings = np.asarray(prefix_embeddings)
        _check_prefix(prefix_embeddings, ids.shape[0], model.dim)
    batch_size = require_int(batch_size, "batch_size", 1)
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


def encode_texts(texts: Sequence[str], tokenizer: preprocessing.Tokenizer, max_length: int | None = None) -> np.ndarray:
    """``<bos> text <eos>`` for each text, right-padded: int32 (N, T)."""
    ids, _ = tokenizer.encode_batch(list(texts), max_length=max_length, add_bos=True, add_eos=True)
    return ids


def unigram_perplexity(train_ids, test_ids, vocab_size: int, pad_id: int = 0) -> float:
    """Baseline: the perplexity of a model that ignores the context and predicts every
    token with its training frequency (add-one smoothed). Both id arrays: int (N, T)
    starting with ``<bos>``; as in `perplexity`, every non-pad token after the first counts."""
    train = _as_token_ids(train_ids, "train_ids", vocab_size)[:, 1:]
    test = _as_token_ids(test_ids, "test_ids", vocab_size)[:, 1:]
    counts = np.bincount(train[train != pad_id], minlength=vocab_size).astype(np.float64) + 1.0
    counts[pad_id] = 0.0
    probabilities = counts / counts.sum()
    return float(np.exp(-np.log(probabilities[test[test != pad_id]]).mean()))


def train_shapeworld_lm(num_examples: int = 3072, epochs: int = 3, batch_size: int = 64,
                        learning_rate: float = 6e-3, dim: int = 64, num_layers: int = 2, num_heads: int = 4,
                        max_length: int = 96, seed: int = 0, verbose: int = 0):
    """Train a `DecoderLM` on ShapeWorld captions and question/answer texts (the recipe of
    lesson 07): Adam with a linear warm-up over the first 10% of the steps, then cosine
    decay. Returns ``(model, tokenizer, history)``."""
    from mmlm_course import shapeworld

    keras.utils.set_random_seed(seed)
    tokenizer = lm_tokenizer()
    data = shapeworld.generate(require_int(num_examples, "num_examples", 1), "train", seed=seed)
    inputs, targets = next_token_pairs(encode_texts(shapeworld_texts(data), tokenizer))
    model = DecoderLM(len(tokenizer), max_length=max_length, dim=dim, num_layers=num_layers, num_heads=num_heads)
    steps = require_int(epochs, "epochs", 1) * max(1, len(inputs) // require_int(batch_size, "batch_size", 1))
    schedule = keras.optimizers.schedules.CosineDecay(0.0, steps, warmup_target=learning_rate,
                                                      warmup_steps=max(1, steps // 10))
    model.compile(optimizer=keras.optimizers.Adam(schedule), loss=next_token_loss)
    model(inputs[:1])                                      # create the weights ...
    model.optimizer.build(model.trainable_variables)       # ... and Adam's slots: fit then traces its step once
    history = model.fit(inputs, targets, batch_size=batch_size, epochs=epochs, verbose=verbose)
    return model, tokenizer, history


# --------------------------------------------------------------------------- decoding


def temperature_probabilities(logits, temperature: float):
    """softmax(logits / temperature) along the last axis: float (B, V) -> float32 (B, V).

    Temperature below 1 sharpens the distribution (towards greedy), above 1 flattens it
    (towards uniform). It must be applied to the logits, *before* the softmax.
    """
    logits = _as_logits(logits)
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
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature}.")
    if temperature == 0:
        return ops.cast(ops.argmax(logits, axis=-1), "int32")
    scaled = logits / temperature
    if top_k is not None:
        scaled = top_k_filter(scaled, top_k)
    return ops.cast(keras.random.categorical(scaled, 1, seed=seed)[:, 0], "int32")


_COMPILED: "weakref.WeakKeyDictionary[DecoderLM, dict]" = weakref.WeakKeyDictionary()


def _compile(function, signature=None, dynamic_shapes: bool = False):
    """Compile a step function for the active backend.

    ``signature``: the arguments as nested ``(shape, dtype)`` pairs, None for any size.
    On TensorFlow the function is then traced once for that general signature, so every
    batch size, prompt and cache length reuses one graph. Without a signature it is
    traced per input shape, or (``dynamic_shapes``) relaxed to unknown sizes after the
    second shape. Other backends run the function eagerly (a `jax.jit` would bake the
    current weights into the compiled function, and the model may still be trained).
    """
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf  # compilation only; the step itself is keras.ops

        if signature is None:
            return tf.function(function, reduce_retracing=dynamic_shapes)
        is_spec = lambda x: isinstance(x, tuple) and len(x) == 2 and isinstance(x[1], str)  # noqa: E731
        specs = [_map_specs(arg, is_spec, lambda spec: tf.TensorSpec(*spec)) for arg in signature]
        return tf.function(function, input_signature=specs)
    return function


def _map_specs(structure, is_leaf, fn):
    if is_leaf(structure):
        return fn(structure)
    return type(structure)(_map_specs(item, is_leaf, fn) for item in structure)


def _step_functions(model: DecoderLM, compiled: bool) -> dict:
    """The two functions `generate` calls, compiled once per model and kept."""
    key = "compiled" if compiled else "eager"
    functions = _COMPILED.setdefault(model, {})
    if key in functions:
        return functions[key]

    def embed_all(prefix, ids):
        """(B, P, dim) prefix (P may be 0) and (B, T) ids -> (B, P + T, dim)."""
        return ops.concatenate([prefix, model.embed(ids)], axis=1)

    def cached_step(prefix, ids, cache, start):
        """Run prefix + ids (starting at position ``start``) against the cache and write
        their keys and values into it. The prompt goes through once (start 0), then one
        token per step with an empty prefix. Returns (last logits (B, V), new cache)."""
        logits, cache = model.decode_embeddings(embed_all(prefix, ids), cache=cache, start=start)
        return logits[:, -1], cache

    def uncached_step(prefix, ids):
        """Recompute every position of the sequence so far; return the last logits (B, V)."""
        return model.decode_embeddings(embed_all(prefix, ids))[:, -1]

    if compiled:
        dtype = model.compute_dtype
        prefix = ((None, None, model.dim), dtype)
        ids = ((None, None), "int32")
        cache = [(((None, model.num_heads, None, model.head_dim), dtype),) * 2 for _ in range(model.num_layers)]
        functions[key] = {"cached_step": _compile(cached_step, (prefix, ids, cache, ((), "int32"))),
                          "uncached_step": _compile(uncached_step, (prefix, ids))}
    else:
        functions[key] = {"cached_step": cached_step, "uncached_step": uncached_step}
    return functions[key]


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

    With ``stop_id`` (e.g. ``<eos>``) generation ends once every row has produced it, and
    tokens after a row's stop token are ``pad_id``. Returns int32 NumPy tokens (B, n) with
    n <= max_new_tokens, or ``(tokens, logits)`` with float32 logits (B, n, vocab_size)
    when ``return_logits``.
    """
    if not isinstance(model, DecoderLM):
        raise TypeError(f"model must be a DecoderLM, got {type(model).__name__}.")
    ids = _as_token_ids(prompt_ids, "prompt_ids", model.vocab_size)
    batch, prompt_length = ids.shape
    max_new_tokens = require_int(max_new_tokens, "max_new_tokens", 1)
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature}.")
    if top_k is not None:
        require_int(top_k, "top_k", 1, model.vocab_size)
    no_prefix = ops.zeros((batch, 0, model.dim), model.compute_dtype)      # an empty (B, 0, dim) prefix
    if prefix_embeddings is None:
        prefix = no_prefix
    else:
        _check_prefix(prefix_embeddings, batch, model.dim)
        prefix = ops.cast(ops.convert_to_tensor(prefix_embeddings), model.compute_dtype)
    prefix_length = prefix.shape[1]
    length = prefix_length + prompt_length + max_new_tokens - 1    # positions the model ever reads
    if length > model.max_length:
        raise ValueError(f"prefix ({prefix_length}) + prompt ({prompt_length}) + max_new_tokens - 1 "
                         f"({max_new_tokens - 1}) = {length} positions exceed the model's max_length="
                         f"{model.max_length}: generate fewer tokens or use a shorter prompt.")
    if not model.built:
        model(ids[:, :1])
    steps = _step_functions(model, compiled)
    seed_generator = keras.random.SeedGenerator(seed) if temperature > 0 else None

    tokens, all_logits = [], []
    finished = np.zeros(batch, bool)
    if use_cache:
        cache = model.init_cache(batch, length)
        logits, cache = steps["cached_step"](prefix, ids, cache, np.int32(0))   # the whole prompt, once
    else:
        sequence = ids                                                   # (B, T0), grows by one per step
        logits = steps["uncached_step"](prefix, sequence)
    for step in range(max_new_tokens):
        if temperature == 0:   # greedy: the argmax, on the host (one transfer per step)
            logits_np = ops.convert_to_numpy(logits)
            token = logits_np.argmax(axis=-1).astype(np.int32)          # (B,)
        else:
            token = ops.convert_to_numpy(sample_next_token(logits, temperature, top_k, seed_generator))
            logits_np = ops.convert_to_numpy(logits) if return_logits else None
        tokens.append(np.where(finished, pad_id, token))
        if return_logits:
            all_logits.append(logits_np.astype(np.float32))
        if stop_id is not None:
            finished |= token == stop_id
            if finished.all():
                break
        if step == max_new_tokens - 1:
            break
        position = prefix_length + prompt_length + step                # where this token goes
        if use_cache:
            logits, cache = steps["cached_step"](no_prefix, token[:, None], cache, np.int32(position))
        else:
            sequence = np.concatenate([sequence, token[:, None]], axis=1)
            logits = steps["uncached_step"](prefix, sequence)
    tokens = np.stack(tokens, axis=1)
    return (tokens, np.stack(all_logits, axis=1)) if return_logits else tokens


def sample_texts(model: DecoderLM, tokenizer: preprocessing.Tokenizer, task_token: str, count: int,
                 max_new_tokens: int = 24, temperature: float = 1.0, top_k: int | None = None,
                 seed: int = 0, batch_size: int = 64) -> list[str]:
    """Sample ``count`` texts that start with ``<bos> task_token`` (e.g. ``"<caption>"``),
    each decoded up to its first ``<eos>``; generated ``batch_size`` at a time."""
    if task_token not in tokenizer.token_to_id:
        raise ValueError(f"task_token {task_token!r} is not in the tokenizer's vocabulary; expected one of {TASK_TOKENS}.")
    count = require_int(count, "count", 1)
    batch_size = require_int(batch_size, "batch_size", 1)
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
