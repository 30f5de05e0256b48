"""Lesson 03: encoders, one per modality, each mapping raw tensors to feature vectors or tokens.

An encoder turns one modality into numbers a fusion model can combine:

=========================  ==========================================  ===========================
encoder                    input                                       output
=========================  ==========================================  ===========================
`ConvImageEncoder`         float images (B, H, W, C)                   (B, D) or tokens (B, N, D)
`PatchEmbedding`           float images (B, H, W, C)                   patch tokens (B, N[+1], D)
`BagOfEmbeddings`          int token_ids (B, T)                        (B, D)
`RecurrentTextEncoder`     int token_ids (B, T)                        (B, units) or (B, T, units)
`TransformerTextEncoder`   int token_ids (B, T)                        (B, D) or (B, T, D)
`AudioEncoder`             log-mel spectrogram (B, frames, mel_bins)   (B, D) or (B, frames', D)
=========================  ==========================================  ===========================

Building blocks later lessons import: `PositionEmbedding`, `patchify` and
`masked_mean_pool` (padding-aware mean over time, (B, T, F) -> (B, F)). Attention and the
Transformer block live in `mmlm_course.attention`.

Every layer is written with `keras.ops` only (no TensorFlow), is registered for `.keras`
serialization under the package name ``mmlm_course`` and creates its sub-layers in
``__init__``. Masks are boolean and ``True`` marks a real (attendable) position, as in
`mmlm_course.preprocessing.pad_sequences`. Token id 0 is padding.
"""

from __future__ import annotations

from typing import Callable, Sequence

import keras
import numpy as np
from keras import ops

from mmlm_course import attention
from mmlm_course.validation import (as_array, concrete_values, dtype_name, int_tuple, is_int, positive_int,
                                    require_bool_mask, require_choice, require_float_dtype, require_int, require_rank,
                                    require_bool, require_rate, same_dim)

__all__ = [
    "masked_mean_pool", "patchify", "conv2d_param_count", "shape_trace", "PositionEmbedding",
    "ConvImageEncoder", "PatchEmbedding", "BagOfEmbeddings", "RecurrentTextEncoder",
    "TransformerTextEncoder", "AudioEncoder",
]

PAD_ID = 0
_register = keras.saving.register_keras_serializable(package="mmlm_course")

# --------------------------------------------------------------------------- functions


def conv2d_param_count(kernel_size: int, in_channels: int, filters: int, use_bias: bool = True) -> int:
    """Trainable parameters of a ``Conv2D(filters, kernel_size)`` on ``in_channels`` inputs.

    Each of the ``filters`` kernels has ``kernel_size * kernel_size * in_channels`` weights,
    plus one bias each: ``k*k*C_in*F + F``. The image size does not appear: a convolution
    shares its weights across positions.
    """
    k = positive_int(kernel_size, "kernel_size")
    c = positive_int(in_channels, "in_channels")
    f = positive_int(filters, "filters")
    return k * k * c * f + (f if require_bool(use_bias, "use_bias") else 0)


def masked_mean_pool(x, mask=None):
    """Mean over the time axis that ignores padding.

    x: float (batch, time, features); mask: bool (batch, time), True on real positions,
    or None (plain mean). Returns float (batch, features):
    ``sum_t m[b,t] x[b,t,:] / sum_t m[b,t]``. A row with no real position gives zeros
    (not NaN). (Lesson 05's `losses.masked_mean` is the other masked mean: per-token
    values (batch, time) to one scalar.)
    """
    x = as_array(x, "x")
    shape = require_rank(x, (3,), "x", "(batch, time, features)")
    require_float_dtype(x, "x")
    if mask is None:
        return ops.mean(x, axis=1)
    mask = as_array(mask, "mask")
    mask_shape = require_rank(mask, (2,), "mask", "(batch, time)")
    require_bool_mask(mask, "mask")
    if not (same_dim(mask_shape[0], shape[0]) and same_dim(mask_shape[1], shape[1])):
        raise ValueError(f"mask: expected shape (batch, time) = {shape[:2]} to match x {shape}, "
                         f"got {mask_shape}.")
    weights = ops.expand_dims(ops.cast(mask, x.dtype), -1)  # (B, T, 1)
    total = ops.sum(x * weights, axis=1)  # (B, F)
    count = ops.sum(weights, axis=1)  # (B, 1)
    return total / ops.maximum(count, ops.cast(1.0, x.dtype))


def patchify(images, patch_size: int):
    """Cut images into non-overlapping square patches and flatten each one.

    images: (batch, H, W, C), any dtype, H and W divisible by ``patch_size``.
    Returns (batch, num_patches, patch_size * patch_size * C) with the same dtype, where
    ``num_patches = (H // p) * (W // p)``. Patches are in reading order (left to right,
    then top to bottom); inside a patch the values are in the order (row, column,
    channel), exactly as ``image[i*p:(i+1)*p, j*p:(j+1)*p, :].reshape(-1)``.
    """
    images = as_array(images, "images")
    shape = require_rank(images, (4,), "images", "(batch, H, W, C)")
    p = positive_int(patch_size, "patch_size")
    _, height, width, channels = shape
    if height is None or width is None or channels is None:
        raise ValueError(f"patchify needs a known image size, got shape {shape}; give the Input a full shape "
                         "such as keras.Input((64, 64, 3)).")
    if height % p or width % p:
        raise ValueError(f"images: height and width must be divisible by patch_size={p}, got {height}x{width}; "
                         f"resize or crop to a multiple of {p} (e.g. {height - height % p}x{width - width % p}).")
    rows, cols = height // p, width // p
    x = ops.reshape(images, (-1, rows, p, cols, p, channels))  # (B, rows, p, cols, p, C)
    x = ops.transpose(x, (0, 1, 3, 2, 4, 5))  # (B, rows, cols, p, p, C)
    return ops.reshape(x, (-1, rows * cols, p * p * channels))


def shape_trace(inputs, steps: Sequence[tuple[str, Callable]], show: bool = True):
    """Apply ``steps`` (a list of ``(name, layer_or_function)``) one after another and
    print one row per step: output shape and the step's parameter count. Returns the last
    output. A teaching helper: it makes every intermediate shape visible."""
    x = inputs
    rows = [("input", tuple(as_array(inputs, "inputs").shape), 0)]
    for name, step in steps:
        x = step(x)
        params = step.count_params() if isinstance(step, keras.layers.Layer) and step.built else 0
        rows.append((name, tuple(int(d) for d in x.shape), params))
    if show:
        width = max(len(r[0]) for r in rows) + 2
        print(f"{'step':<{width}}{'output shape':<24}{'params':>10}")
        for name, shape, params in rows:
            print(f"{name:<{width}}{str(shape):<24}{params:>10,}")
        print(f"{'total':<{width}}{'':<24}{sum(r[2] for r in rows):>10,}")
    return x


# --------------------------------------------------------------------------- positions


@_register
class PositionEmbedding(keras.layers.Layer):
    """Learned position embeddings added to a sequence: ``x[:, t] + P[t]``.

    Input float (batch, time, dim) with ``time <= max_length`` and ``dim == embed_dim``;
    output the same shape. ``P`` has shape (max_length, embed_dim): ``max_length *
    embed_dim`` parameters.
    """

    def __init__(self, max_length: int, embed_dim: int, initializer="random_normal", **kwargs):
        super().__init__(**kwargs)
        self.max_length = positive_int(max_length, "max_length")
        self.embed_dim = positive_int(embed_dim, "embed_dim")
        self.initializer = keras.initializers.get(initializer)
        self.input_spec = keras.layers.InputSpec(ndim=3, axes={-1: self.embed_dim})   # (batch, time, embed_dim)
        self.supports_masking = True

    def build(self, input_shape):
        self.positions = self.add_weight(shape=(self.max_length, self.embed_dim), initializer=self.initializer,
                                         name="positions")

    def call(self, x):
        length = x.shape[1]
        if length is not None and length > self.max_length:
            raise ValueError(f"{self.name}: sequence length {length} is longer than max_length={self.max_length}; "
                             "truncate the input or build the layer with a larger max_length.")
        length = ops.shape(x)[1] if length is None else length
        return x + ops.cast(ops.expand_dims(self.positions[:length], 0), x.dtype)

    def compute_mask(self, x, mask=None):
        return mask

    def get_config(self):
        config = super().get_config()
        config.update(max_length=self.max_length, embed_dim=self.embed_dim,
                      initializer=keras.initializers.serialize(self.initializer))
        return config


# --------------------------------------------------------------------------- image encoders


def _check_images(images, name: str, channels: int | None = None, size: tuple | None = None):
    shape = require_rank(images, (4,), name, "(batch, H, W, C)")
    require_float_dtype(images, name, "convert uint8 pixels with mmlm_course.preprocessing.to_float_image "
                                 "(or keras.ops.cast(images, 'float32') / 255)")
    if channels is not None and shape[-1] is not None and shape[-1] != channels:
        raise ValueError(f"{name}: expected {channels} channels in the last axis (channels last), got shape {shape}.")
    if size is not None and shape[1:3] != size and None not in shape[1:3]:
        raise ValueError(f"{name}: this layer was built for {size[0]}x{size[1]} images, got {shape[1]}x{shape[2]}; "
                         "resize with mmlm_course.preprocessing.resize_image.")
    return shape


@_register
class ConvImageEncoder(keras.layers.Layer):
    """A small CNN: ``[Conv2D(f, k, same, relu) -> MaxPool2D(2)]`` per entry of ``filters``.

    Input float images (batch, H, W, channels) (in [0, 1] or standardised). Output:

    - ``output="vector"``: global pooling (``pooling="avg"`` or ``"max"``: "is it anywhere
      in the image?") then ``Dense(embed_dim)``: (batch, embed_dim);
    - ``output="tokens"``: ``Dense(embed_dim)`` at every position of the last feature map:
      (batch, H' * W', embed_dim) with ``H' = H / 2**len(filters)``, one token per region
      (what lesson 08 feeds a language model).

    ``feature_maps(images)`` returns each convolution's activations, (batch, H_i, W_i, f_i).
    """

    def __init__(self, filters: Sequence[int] = (16, 32, 64), embed_dim: int = 64, kernel_size: int = 3,
                 output: str = "vector", pooling: str = "avg", channels: int = 3, **kwargs):
        super().__init__(**kwargs)
        self.filters = int_tuple(filters, "filters")
        self.embed_dim = positive_int(embed_dim, "embed_dim")
        self.kernel_size = positive_int(kernel_size, "kernel_size")
        self.output_mode = require_choice(output, ("vector", "tokens"), "output")
        self.channels = positive_int(channels, "channels")
        policy = self.dtype_policy
        self.convs = [keras.layers.Conv2D(f, self.kernel_size, padding="same", activation="relu", name=f"conv{i + 1}",
                                          dtype=policy) for i, f in enumerate(self.filters)]
        self.pools = [keras.layers.MaxPooling2D(2, name=f"pool{i + 1}", dtype=policy) for i in range(len(self.filters))]
        self.pooling = require_choice(pooling, ("avg", "max"), "pooling")
        pool_class = keras.layers.GlobalAveragePooling2D if self.pooling == "avg" else keras.layers.GlobalMaxPooling2D
        self.global_pool = pool_class(name="global_pool", dtype=self.dtype_policy)
        self.project = keras.layers.Dense(self.embed_dim, name="project", dtype=self.dtype_policy)

    def build(self, input_shape):
        _check_images(keras.KerasTensor(input_shape), self.name, self.channels)
        shape = tuple(input_shape)
        for conv, pool in zip(self.convs, self.pools):
            conv.build(shape)
            shape = conv.compute_output_shape(shape)
            shape = pool.compute_output_shape(shape)
        for dim in shape[1:3]:
            if dim is not None and dim < 1:
                raise ValueError(f"{self.name}: {len(self.filters)} poolings halve {tuple(input_shape)[1:3]} to "
                                 f"nothing; use fewer filters or larger images.")
        self.project.build(shape[:1] + (shape[-1],))

    def feature_maps(self, images) -> list:
        """The activation of every convolution (after ReLU, before pooling): a list of
        float (batch, H / 2**i, W / 2**i, filters[i])."""
        images = as_array(images, "images")
        _check_images(images, "images", self.channels)
        maps, x = [], images
        for conv, pool in zip(self.convs, self.pools):
            x = conv(x)
            maps.append(x)
            x = pool(x)
        return maps

    def call(self, images):
        _check_images(images, "images", self.channels)
        x = images
        for conv, pool in zip(self.convs, self.pools):
            x = pool(conv(x))  # (B, H/2^i, W/2^i, f_i)
        if self.output_mode == "vector":
            return self.project(self.global_pool(x))  # (B, embed_dim)
        grid = self.project(x)  # (B, H', W', embed_dim)
        return ops.reshape(grid, (-1, grid.shape[1] * grid.shape[2], self.embed_dim))  # (B, H'*W', embed_dim)

    def get_config(self):
        config = super().get_config()
        config.update(filters=list(self.filters), embed_dim=self.embed_dim, kernel_size=self.kernel_size,
                      output=self.output_mode, pooling=self.pooling, channels=self.channels)
        return config


def _pair(value, name: str) -> tuple[int, int]:
    if isinstance(value, (int, np.integer)):
        value = (value, value)
    value = tuple(value)
    if len(value) != 2:
        raise ValueError(f"{name} must be an int or (height, width), got {value!r}.")
    return positive_int(value[0], f"{name}[0]"), positive_int(value[1], f"{name}[1]")


@_register
class PatchEmbedding(keras.layers.Layer):
    """ViT-style patch tokens: `patchify`, a shared linear projection, learned positions.

    Input float images (batch, H, W, channels) of exactly ``image_size``. Output
    (batch, num_patches [+ 1], embed_dim), ``num_patches = (H / p) * (W / p)``; with
    ``use_class_token=True`` a learned ``[CLS]`` token comes first. Parameters:
    ``p*p*C*D + D`` (projection) ``+ (num_patches [+1]) * D`` (positions) ``[+ D]`` (class
    token). The projection is the same as ``Conv2D(D, p, strides=p)``.
    """

    def __init__(self, image_size=64, patch_size: int = 8, embed_dim: int = 64, channels: int = 3,
                 use_class_token: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.image_size = _pair(image_size, "image_size")
        self.patch_size = positive_int(patch_size, "patch_size")
        self.embed_dim = positive_int(embed_dim, "embed_dim")
        self.channels = positive_int(channels, "channels")
        self.use_class_token = bool(use_class_token)
        height, width = self.image_size
        if height % self.patch_size or width % self.patch_size:
            raise ValueError(f"image_size {height}x{width} must be divisible by patch_size={self.patch_size}.")
        self.grid_size = (height // self.patch_size, width // self.patch_size)
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.projection = keras.layers.Dense(self.embed_dim, name="projection", dtype=self.dtype_policy)
        self.position_embedding = PositionEmbedding(self.num_patches + int(self.use_class_token), self.embed_dim,
                                                    initializer=keras.initializers.RandomNormal(stddev=0.02),
                                                    name="position_embedding", dtype=self.dtype_policy)

    def build(self, input_shape):
        _check_images(keras.KerasTensor(input_shape), self.name, self.channels, self.image_size)
        self.projection.build((None, self.num_patches, self.patch_size ** 2 * self.channels))
        self.position_embedding.build((None, self.num_patches + int(self.use_class_token), self.embed_dim))
        if self.use_class_token:
            self.class_token = self.add_weight(name="class_token", shape=(1, 1, self.embed_dim),
                                               initializer=keras.initializers.RandomNormal(stddev=0.02))

    def call(self, images):
        _check_images(images, "images", self.channels, self.image_size)
        tokens = self.projection(patchify(images, self.patch_size))  # (B, N, D)
        if self.use_class_token:
            batch = ops.shape(tokens)[0]
            cls = ops.broadcast_to(ops.cast(self.class_token, tokens.dtype), (batch, 1, self.embed_dim))
            tokens = ops.concatenate([cls, tokens], axis=1)  # (B, N + 1, D)
        return self.position_embedding(tokens)

    def get_config(self):
        config = super().get_config()
        config.update(image_size=list(self.image_size), patch_size=self.patch_size, embed_dim=self.embed_dim,
                      channels=self.channels, use_class_token=self.use_class_token)
        return config


# --------------------------------------------------------------------------- text encoders


def _check_token_ids(token_ids, vocab_size: int, max_length: int | None = None):
    """Integer ids (batch, time) in [0, vocab_size) (rank checked by each layer's InputSpec), at most
    ``max_length`` long. The range is checked where the values exist (eagerly, not in a traced graph)."""
    if not is_int(token_ids):
        raise TypeError(f"token_ids: expected integer token ids (batch, time), got dtype {dtype_name(token_ids)}; "
                        "use Tokenizer.encode_batch, which returns int32 ids.")
    values = concrete_values(token_ids)
    if values is not None and values.size and (values.min() < 0 or values.max() >= vocab_size):
        raise ValueError(f"token_ids must lie in [0, {vocab_size}) (vocab_size), got values in [{values.min()}, "
                         f"{values.max()}]; encode with the tokenizer the encoder was built for.")
    length = token_ids.shape[1]
    if max_length is not None and length is not None and length > max_length:
        raise ValueError(f"token_ids: {length} tokens is longer than max_length={max_length}; truncate with "
                         f"Tokenizer.encode_batch(texts, max_length={max_length}) or build a longer encoder.")


def _text_mask(token_ids, mask):
    """The given mask (validated) or ``token_ids != 0``."""
    if mask is None:
        return ops.not_equal(token_ids, PAD_ID)
    require_bool_mask(mask, "mask")
    m_shape = require_rank(mask, (2,), "mask", "(batch, time)")
    if not all(same_dim(a, b) for a, b in zip(m_shape, token_ids.shape)):
        raise ValueError(f"mask: expected the shape of token_ids {tuple(token_ids.shape)}, got {m_shape}.")
    return mask


@_register
class BagOfEmbeddings(keras.layers.Layer):
    """The simplest text encoder: the mean of the word embeddings of the real tokens.

    Input int token_ids (batch, time) (0 = padding) and an optional bool mask (batch, time)
    (default ``token_ids != 0``). Output float (batch, embed_dim). Word order is ignored:
    "a circle left of a square" and "a square left of a circle" get the same vector.
    Parameters: ``vocab_size * embed_dim``.
    """

    def __init__(self, vocab_size: int, embed_dim: int = 64, **kwargs):
        super().__init__(**kwargs)
        self.vocab_size = positive_int(vocab_size, "vocab_size")
        self.embed_dim = positive_int(embed_dim, "embed_dim")
        self.embedding = keras.layers.Embedding(self.vocab_size, self.embed_dim, name="embedding",
                                                dtype=self.dtype_policy)
        self.input_spec = keras.layers.InputSpec(ndim=2)

    def build(self, token_ids_shape):
        self.embedding.build(token_ids_shape)

    def call(self, token_ids, mask=None):
        _check_token_ids(token_ids, self.vocab_size)
        return masked_mean_pool(self.embedding(token_ids), _text_mask(token_ids, mask))  # (B, D)

    def compute_mask(self, token_ids, mask=None):
        return None

    def get_config(self):
        config = super().get_config()
        config.update(vocab_size=self.vocab_size, embed_dim=self.embed_dim)
        return config


@_register
class RecurrentTextEncoder(keras.layers.Layer):
    """Embedding then a GRU or LSTM that reads the tokens in order, skipping padding.

    Input int token_ids (batch, time), optional bool mask (default ``token_ids != 0``). Output the
    final hidden state float (batch, units) (``2 * units`` if bidirectional), or every
    state (batch, time, units) with ``return_sequences=True``. Parameters of the
    recurrent layer: GRU ``3 * (units * (embed_dim + units) + 2 * units)`` (Keras uses two
    biases, ``reset_after=True``), LSTM ``4 * (units * (embed_dim + units) + units)``.
    """

    def __init__(self, vocab_size: int, embed_dim: int = 32, units: int = 64, cell: str = "gru",
                 bidirectional: bool = False, return_sequences: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.vocab_size = positive_int(vocab_size, "vocab_size")
        self.embed_dim = positive_int(embed_dim, "embed_dim")
        self.units = positive_int(units, "units")
        self.cell = require_choice(cell, ("gru", "lstm"), "cell")
        self.bidirectional = bool(bidirectional)
        self.return_sequences = bool(return_sequences)
        self.embedding = keras.layers.Embedding(self.vocab_size, self.embed_dim, name="embedding",
                                                dtype=self.dtype_policy)
        self.input_spec = keras.layers.InputSpec(ndim=2)
        layer_class = keras.layers.GRU if self.cell == "gru" else keras.layers.LSTM
        rnn = layer_class(self.units, return_sequences=self.return_sequences, name=self.cell, dtype=self.dtype_policy)
        self.rnn = keras.layers.Bidirectional(rnn, name="bidirectional", dtype=self.dtype_policy) \
            if self.bidirectional else rnn
        self.supports_masking = True

    def build(self, token_ids_shape):
        self.embedding.build(token_ids_shape)
        self.rnn.build(tuple(token_ids_shape) + (self.embed_dim,))

    def call(self, token_ids, mask=None):
        _check_token_ids(token_ids, self.vocab_size)
        mask = _text_mask(token_ids, mask)
        return self.rnn(self.embedding(token_ids), mask=mask)

    def compute_mask(self, token_ids, mask=None):
        if not self.return_sequences:
            return None
        return ops.not_equal(token_ids, PAD_ID) if mask is None else mask

    def get_config(self):
        config = super().get_config()
        config.update(vocab_size=self.vocab_size, embed_dim=self.embed_dim, units=self.units, cell=self.cell,
                      bidirectional=self.bidirectional, return_sequences=self.return_sequences)
        return config


@_register
class TransformerTextEncoder(keras.layers.Layer):
    """Token embeddings + learned positions, ``num_layers`` `attention.TransformerBlock` s,
    a final LayerNorm, then padding-aware mean pooling.

    Input int token_ids (batch, time) with ``time <= max_length``, optional bool mask (default
    ``token_ids != 0``). Output float (batch, embed_dim), or (batch, time, embed_dim) with
    ``pooling=None``.
    """

    def __init__(self, vocab_size: int, max_length: int, embed_dim: int = 64, num_heads: int = 4,
                 mlp_dim: int = 128, num_layers: int = 2, dropout: float = 0.0, pooling: str | None = "mean",
                 **kwargs):
        super().__init__(**kwargs)
        self.vocab_size = positive_int(vocab_size, "vocab_size")
        self.max_length = positive_int(max_length, "max_length")
        self.embed_dim = positive_int(embed_dim, "embed_dim")
        self.num_heads = positive_int(num_heads, "num_heads")
        self.mlp_dim = positive_int(mlp_dim, "mlp_dim")
        self.num_layers = require_int(num_layers, "num_layers (blocks are built at once)", 1, 256)
        self.dropout = require_rate(dropout)
        self.pooling = require_choice(pooling, ("mean", None), "pooling")
        policy = self.dtype_policy
        self.token_embedding = keras.layers.Embedding(self.vocab_size, self.embed_dim, name="token_embedding",
                                                      dtype=policy)
        self.position_embedding = PositionEmbedding(self.max_length, self.embed_dim, name="position_embedding",
                                                    dtype=policy)
        self.blocks = [attention.TransformerBlock(self.embed_dim, self.num_heads, self.mlp_dim, self.dropout,
                                                  name=f"block{i + 1}", dtype=policy) for i in range(self.num_layers)]
        self.final_norm = keras.layers.LayerNormalization(epsilon=1e-5, name="final_norm", dtype=policy)
        self.input_spec = keras.layers.InputSpec(ndim=2)
        self.supports_masking = True

    def build(self, token_ids_shape):
        self.token_embedding.build(token_ids_shape)
        sequence_shape = tuple(token_ids_shape) + (self.embed_dim,)
        self.position_embedding.build(sequence_shape)
        for block in self.blocks:
            block.build(sequence_shape)
        self.final_norm.build(sequence_shape)

    def call(self, token_ids, mask=None, training=None):
        _check_token_ids(token_ids, self.vocab_size, self.max_length)
        mask = _text_mask(token_ids, mask)
        x = self.position_embedding(self.token_embedding(token_ids))  # (B, T, D)
        for block in self.blocks:
            x = block(x, mask=mask, training=training)
        x = self.final_norm(x)
        return masked_mean_pool(x, mask) if self.pooling == "mean" else x

    def compute_mask(self, token_ids, mask=None):
        if self.pooling == "mean":
            return None
        return ops.not_equal(token_ids, PAD_ID) if mask is None else mask

    def get_config(self):
        config = super().get_config()
        config.update(vocab_size=self.vocab_size, max_length=self.max_length, embed_dim=self.embed_dim,
                      num_heads=self.num_heads, mlp_dim=self.mlp_dim, num_layers=self.num_layers,
                      dropout=self.dropout, pooling=self.pooling)
        return config


# --------------------------------------------------------------------------- audio encoder


@_register
class AudioEncoder(keras.layers.Layer):
    """A 1-D CNN over time on a log-mel spectrogram (mel bins are the input channels).

    Input float (batch, frames, mel_bins) and an optional bool mask (batch, frames), True
    on real frames (clips of different lengths padded at the end to one length). Each
    entry of ``filters`` is ``Conv1D(f, kernel_size, strides=s, padding="causal", relu)``
    followed by a LayerNorm (over features, per frame), so time shrinks by
    ``prod(strides)``. Causal padding means a frame only sees the frames before it, so
    padding added at the end never leaks into the real frames: with the mask, the output
    does not depend on how much padding a clip got. Output:

    - ``output="vector"``: padding-aware mean over time then ``Dense(embed_dim)``:
      (batch, embed_dim);
    - ``output="tokens"``: ``Dense(embed_dim)`` per remaining frame:
      (batch, ceil(frames / prod(strides)), embed_dim) (audio tokens).
    """

    def __init__(self, mel_bins: int, filters: Sequence[int] = (64, 64), strides: Sequence[int] = (2, 2),
                 kernel_size: int = 5, embed_dim: int = 64, output: str = "vector", **kwargs):
        super().__init__(**kwargs)
        self.mel_bins = positive_int(mel_bins, "mel_bins")
        self.filters = int_tuple(filters, "filters")
        self.strides = int_tuple(strides, "strides")
        if len(self.strides) != len(self.filters):
            raise ValueError(f"strides must have one entry per conv layer ({len(self.filters)}), got {self.strides}.")
        self.kernel_size = positive_int(kernel_size, "kernel_size")
        self.embed_dim = positive_int(embed_dim, "embed_dim")
        self.output_mode = require_choice(output, ("vector", "tokens"), "output")
        policy = self.dtype_policy
        self.convs = [keras.layers.Conv1D(f, self.kernel_size, strides=s, padding="causal", activation="relu",
                                          name=f"conv{i + 1}", dtype=policy)
                      for i, (f, s) in enumerate(zip(self.filters, self.strides))]
        self.norms = [keras.layers.LayerNormalization(epsilon=1e-5, name=f"norm{i + 1}", dtype=policy)
                      for i in range(len(self.filters))]
        self.project = keras.layers.Dense(self.embed_dim, name="project", dtype=self.dtype_policy)

    def _check(self, spectrogram):
        shape = require_rank(spectrogram, (3,), "spectrogram", f"(batch, frames, mel_bins={self.mel_bins})")
        require_float_dtype(spectrogram, "spectrogram")
        if shape[-1] is not None and shape[-1] != self.mel_bins:
            hint = " (is it (batch, mel_bins, frames)? transpose to put time first)" \
                if shape[1] == self.mel_bins else ""
            raise ValueError(f"spectrogram: expected {self.mel_bins} mel bins in the last axis, got shape "
                             f"{shape}{hint}.")
        return shape

    def build(self, spectrogram_shape):
        self._check(keras.KerasTensor(spectrogram_shape))
        shape = tuple(spectrogram_shape)
        for conv, norm in zip(self.convs, self.norms):
            conv.build(shape)
            shape = conv.compute_output_shape(shape)
            norm.build(shape)
        self.project.build(shape)

    def output_frames(self, frames: int) -> int:
        """Number of frames left after the strided convolutions."""
        for s in self.strides:
            frames = -(-frames // s)
        return frames

    def call(self, spectrogram, mask=None):
        shape = self._check(spectrogram)
        if mask is not None:
            require_bool_mask(mask, "mask")
            m_shape = require_rank(mask, (2,), "mask", "(batch, frames)")
            if not (same_dim(m_shape[0], shape[0]) and same_dim(m_shape[1], shape[1])):
                raise ValueError(f"mask: expected (batch, frames) = {shape[:2]} to match the spectrogram, "
                                 f"got {m_shape}.")
        x = spectrogram
        for conv, norm, stride in zip(self.convs, self.norms, self.strides):
            x = norm(conv(x))  # (B, ceil(T / s), f)
            if mask is not None and stride > 1:
                mask = mask[:, ::stride]  # output frame i ends at input frame i * s: real when that one is
        if self.output_mode == "tokens":
            return self.project(x)  # (B, T', embed_dim)
        return self.project(masked_mean_pool(x, mask))  # (B, embed_dim)

    def compute_mask(self, spectrogram, mask=None):
        if self.output_mode == "vector" or mask is None:
            return None
        for stride in self.strides:
            mask = mask[:, ::stride]
        return mask

    def get_config(self):
        config = super().get_config()
        config.update(mel_bins=self.mel_bins, filters=list(self.filters), strides=list(self.strides),
                      kernel_size=self.kernel_size, embed_dim=self.embed_dim, output=self.output_mode)
        return config
