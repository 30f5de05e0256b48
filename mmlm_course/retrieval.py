"""Lesson 06: contrastive image-text retrieval with a CLIP-style dual encoder.

A *dual encoder* maps images and texts into one shared space, each with its own tower:

    image     (B, H, W, 3) --CNN regions + spatial moments + MLP--> (B, F) --linear--> (B, D) --L2--> u_i
    token_ids (B, T)       --Transformer + mean pooling-----------> (B, E) --linear--> (B, D) --L2--> v_j

Training pulls each image towards its caption and pushes it away from the batch's other
captions: the logits ``cos(u_i, v_j) / T`` (T a learned, clipped temperature) go into the
symmetric InfoNCE loss of lesson 05 (`mmlm_course.losses`).

ShapeWorld captions are *ambiguous*: "there is a small red circle" is true of every image
holding a small red circle, not just the one it was written for. ShapeWorld's verifier
(`shapeworld.caption_is_true`, or `shapeworld.caption_truth_matrix` for whole matrices,
fast) therefore decides both

- the metric: a retrieved item is a hit when the caption is true of the image, and
  recall@K asks whether *any* of the top K is a hit (`first_hit_ranks`,
  `recall_at_k_with_hits`);
- the training targets: every caption of a batch that is true of an image is a positive
  for it (`multi_positive_info_nce`), not a false negative.

`mmlm_course.retrieval_training` trains the model that way, with hard negative captions
and flips, and tests whether it reads word order at all (`twin_accuracy`). Zero-shot
classification embeds one prompt per size-colour-shape combination and gives each image
the class of its best prompt (`zero_shot_prompts`, `zero_shot_predict`).

Model code uses `keras.ops` / `keras.layers` only; `DualEncoder` overrides
``compute_loss`` (not a TensorFlow ``train_step``) so it trains on any Keras backend.
"""

from __future__ import annotations

from typing import Sequence

import keras
import numpy as np
from keras import ops

from mmlm_course import shapeworld
from mmlm_course.encoders import (BagOfEmbeddings, ConvImageEncoder, RecurrentTextEncoder,
                                  TransformerTextEncoder)
from mmlm_course.losses import LearnedTemperature, info_nce_from_logits, l2_normalize, log_softmax
from mmlm_course.preprocessing import SHAPEWORLD_MEAN, SHAPEWORLD_STD, Tokenizer, validate_image
from mmlm_course.validation import (as_array, concrete_values, dtype_name, int_tuple, positive_int, require_array_budget,
                                    require_choice,
                                    require_float, require_float_dtype, require_int, require_int_dtype, require_rank,
                                    same_dim)

__all__ = [
    "DualEncoder", "spatial_moments", "add_coordinate_channels", "multi_positive_info_nce",
    "similarity_scores", "first_hit_ranks", "recall_at_k_with_hits", "embed_images", "embed_texts",
    "retrieval_scores", "retrieval_report", "zero_shot_predict", "zero_shot_prompts", "single_object_data",
]

_register = keras.saving.register_keras_serializable(package="mmlm_course")
MAX_CAPTION_LENGTH = 16  # the longest ShapeWorld caption has 13 words
TEXT_ENCODERS = ("transformer", "gru", "bag")
IMAGE_POOLINGS = ("flatten", "moments")


# --------------------------------------------------------------------------- the dual encoder


@_register
class DualEncoder(keras.Model):
    """A CLIP-style dual encoder for ShapeWorld images and captions.

    Inputs: a dict ``{"images": uint8 (B, H, W, 3) or float in [0, 1], "token_ids": int32
    (B, T)}`` (or a tuple ``(images, token_ids)``), optionally with ``"negative_token_ids"``
    int32 (B, T): one hard-negative caption per example. Token id 0 is padding. Output:
    logits float32 (B, B) (or (B, 2B) with negatives), ``cos(image_i, text_j) / T`` with the
    learned, clipped temperature T (lesson 05's `LearnedTemperature`); row i pairs with
    column i.

    `compute_loss` is the symmetric InfoNCE on these logits: with targets ``y`` (B, C)
    from the verifier (`retrieval_training.batch_positives`) the multi-positive form,
    without ``y`` the plain diagonal form of lesson 05.

    Image tower: per-channel standardisation (``pixel_mean`` / ``pixel_std``, ShapeWorld's
    by default), ``downsample`` x average pooling, optional coordinate channels (CoordConv),
    lesson 03's `ConvImageEncoder` with ``output="tokens"`` (one vector per region of the
    last feature map), then ``image_pooling``: ``"moments"`` (`spatial_moments`: mean,
    x-weighted and y-weighted mean of the regions) or ``"flatten"``; both keep *where*
    things are, which relations need (global average pooling would not), followed by
    ``Dense(image_features, relu)``. Text tower: lesson 03's `TransformerTextEncoder`
    (default; position embeddings let it see word order), a GRU, or a bag of embeddings
    (order-blind, for comparison). Each tower ends in a linear projection to ``embed_dim``
    and L2 normalisation.
    """

    def __init__(self, vocab_size: int, max_length: int = MAX_CAPTION_LENGTH, image_size: int = 64,
                 embed_dim: int = 128, image_filters: Sequence[int] = (16, 32, 64), image_features: int = 256,
                 text_encoder: str = "transformer", text_dim: int = 64, text_layers: int = 2, num_heads: int = 4,
                 initial_temperature: float = 0.1, downsample: int = 2, pixel_mean=SHAPEWORLD_MEAN,
                 pixel_std=SHAPEWORLD_STD, image_token_dim: int = 64, coordinates: bool = False,
                 image_pooling: str = "moments", **kwargs):
        super().__init__(**kwargs)
        self.vocab_size = positive_int(vocab_size, "vocab_size")
        self.max_length = positive_int(max_length, "max_length")
        self.image_size, self.embed_dim = positive_int(image_size, "image_size"), positive_int(embed_dim, "embed_dim")
        self.image_filters = int_tuple(image_filters, "image_filters")
        self.image_features = positive_int(image_features, "image_features")
        self.text_encoder_kind = require_choice(text_encoder, TEXT_ENCODERS, "text_encoder")
        self.text_dim, self.text_layers = positive_int(text_dim, "text_dim"), positive_int(text_layers, "text_layers")
        self.num_heads = positive_int(num_heads, "num_heads")
        self.initial_temperature = require_float(initial_temperature, "initial_temperature", low=0.0, low_open=True)
        self.downsample = positive_int(downsample, "downsample")
        if self.image_size % (self.downsample * 2 ** len(self.image_filters)):
            raise ValueError(f"DualEncoder: image_size {image_size} must be divisible by downsample * "
                             f"2**len(image_filters) = {self.downsample * 2 ** len(self.image_filters)} (one 2x2 "
                             "pooling per convolution).")
        self.pixel_mean = tuple(require_float(v, "pixel_mean") for v in np.broadcast_to(pixel_mean, 3).tolist())
        self.pixel_std = tuple(require_float(v, "pixel_std", low=0.0, low_open=True)
                               for v in np.broadcast_to(pixel_std, 3).tolist())
        self.image_token_dim = positive_int(image_token_dim, "image_token_dim")
        self.coordinates = bool(coordinates)
        self.image_pooling = require_choice(image_pooling, IMAGE_POOLINGS, "image_pooling")
        # the temperature computes in float32 under every policy (see LearnedTemperature)
        self.temperature_layer = LearnedTemperature(self.initial_temperature, name="temperature")
        self.loss_tracker = keras.metrics.Mean(name="loss")
        policy = self.dtype_policy
        self.image_downsample = keras.layers.AveragePooling2D(self.downsample, name="image_downsample", dtype=policy)
        self.image_encoder = ConvImageEncoder(self.image_filters, embed_dim=self.image_token_dim, output="tokens",
                                              channels=3 + 2 * self.coordinates, name="image_encoder", dtype=policy)
        self.image_flatten = keras.layers.Flatten(name="image_flatten", dtype=policy)
        self.image_mlp = keras.layers.Dense(self.image_features, activation="relu", name="image_mlp", dtype=policy)
        self.image_projection = keras.layers.Dense(self.embed_dim, name="image_projection", dtype=policy)
        if self.text_encoder_kind == "transformer":
            self.text_encoder = TransformerTextEncoder(self.vocab_size, self.max_length, embed_dim=self.text_dim,
                                                       num_heads=self.num_heads, mlp_dim=2 * self.text_dim,
                                                       num_layers=self.text_layers, name="text_encoder", dtype=policy)
        elif self.text_encoder_kind == "gru":
            self.text_encoder = RecurrentTextEncoder(self.vocab_size, embed_dim=self.text_dim, units=self.text_dim,
                                                     name="text_encoder", dtype=policy)
        else:
            self.text_encoder = BagOfEmbeddings(self.vocab_size, self.text_dim, name="text_encoder", dtype=policy)
        self.text_projection = keras.layers.Dense(self.embed_dim, name="text_projection", dtype=policy)

    def build(self, input_shape=None):
        """Create every weight (the input shapes follow from the config). Sub-layers that a
        direct call such as `encode_images` has already built are left as they are."""
        small = self.image_size // self.downsample
        side = small // 2 ** len(self.image_filters)  # the last feature map is side x side
        flat = (side * side if self.image_pooling == "flatten" else 3) * self.image_token_dim
        shapes = [(self.image_encoder, (None, small, small, 3 + 2 * self.coordinates)),
                  (self.image_mlp, (None, flat)), (self.image_projection, (None, self.image_features)),
                  (self.text_encoder, (None, self.max_length)), (self.text_projection, (None, self.text_dim)),
                  (self.temperature_layer, None)]
        for layer, shape in shapes:
            if not layer.built:
                layer.build(shape)
        self.built = True

    # ------------------------------------------------------------------ the two towers

    def encode_images(self, images, training=None):
        """images uint8 (B, H, W, 3) or float in [0, 1] -> L2-normalised (B, embed_dim)."""
        images = self._check_images(images)
        mean = ops.convert_to_tensor(self.pixel_mean, dtype=self.compute_dtype)
        std = ops.convert_to_tensor(self.pixel_std, dtype=self.compute_dtype)
        x = (ops.cast(images, self.compute_dtype) - mean) / std  # (B, H, W, 3) standardised per channel
        if self.downsample > 1:
            x = self.image_downsample(x)  # (B, H / s, W / s, 3): average pooling, cheaper convolutions
        if self.coordinates:
            x = add_coordinate_channels(x)  # (B, h, w, 5): CoordConv, every pixel knows where it is
        x = self.image_encoder(x)  # (B, h' * w', image_token_dim): one vector per region
        if self.image_pooling == "flatten":
            x = self.image_flatten(x)  # (B, h' * w' * image_token_dim)
        else:
            x = spatial_moments(x, self.image_size // self.downsample // 2 ** len(self.image_filters))  # (B, 3 F)
        x = self.image_mlp(x)  # (B, image_features), position-aware
        return l2_normalize(self.image_projection(x))  # (B, embed_dim)

    def encode_texts(self, token_ids, training=None):
        """token_ids int (B, T), 0 = padding -> L2-normalised (B, embed_dim)."""
        token_ids = self._check_token_ids(token_ids)
        if self.text_encoder_kind == "transformer":
            features = self.text_encoder(token_ids, training=training)  # (B, text_dim)
        else:
            features = self.text_encoder(token_ids)
        return l2_normalize(self.text_projection(features))  # (B, embed_dim)

    @property
    def temperature(self):
        """The current (clipped) temperature T, a float32 scalar tensor."""
        return self.temperature_layer.temperature

    def call(self, inputs, training=None):
        """Logits float32 (B, B) = cos(image_i, text_j) / T, or (B, 2B) when ``inputs`` also
        holds ``negative_token_ids`` (B, T): one hard-negative caption per example, as extra columns."""
        images, token_ids, negatives = self._unpack(inputs)
        for what, tensor in (("captions", token_ids), ("negative captions", negatives)):
            if tensor is not None and images.shape[:1] and tensor.shape[:1] \
                    and not same_dim(images.shape[0], tensor.shape[0]):
                raise ValueError(f"Image/text batch mismatch: got {images.shape[0]} images and {tensor.shape[0]} "
                                 f"{what}. Row i of each must belong to the same example.")
        image_embeddings = self.encode_images(images, training=training)  # (B, D)
        if negatives is not None:
            if tuple(negatives.shape[1:]) != tuple(token_ids.shape[1:]):
                raise ValueError(f"negative_token_ids: expected the length of token_ids {tuple(token_ids.shape)}, "
                                 f"got {tuple(negatives.shape)}.")
            token_ids = ops.concatenate([token_ids, ops.cast(negatives, token_ids.dtype)], axis=0)  # (2B, T)
        text_embeddings = self.encode_texts(token_ids, training=training)  # (B or 2B, D)
        cosine = ops.matmul(image_embeddings, ops.transpose(text_embeddings))  # (B, B or 2B)
        return self.temperature_layer(cosine)  # logits = cos / T

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        """Symmetric InfoNCE of the logits: multi-positive with verifier targets ``y``
        (`multi_positive_info_nce`), the plain diagonal form without."""
        if y_pred is None:
            y_pred = self(x, training=training)
        loss = info_nce_from_logits(y_pred) if y is None else multi_positive_info_nce(y_pred, y)
        for extra in self.losses:
            loss = loss + ops.cast(extra, loss.dtype)
        self.loss_tracker.update_state(loss)
        return loss

    @property
    def metrics(self):
        return [self.loss_tracker]

    def get_config(self):
        config = super().get_config()
        config.update(vocab_size=self.vocab_size, max_length=self.max_length, image_size=self.image_size,
                      embed_dim=self.embed_dim, image_filters=list(self.image_filters),
                      image_features=self.image_features, text_encoder=self.text_encoder_kind,
                      text_dim=self.text_dim, text_layers=self.text_layers, num_heads=self.num_heads,
                      initial_temperature=self.initial_temperature, downsample=self.downsample,
                      pixel_mean=list(self.pixel_mean), pixel_std=list(self.pixel_std),
                      image_token_dim=self.image_token_dim, coordinates=self.coordinates,
                      image_pooling=self.image_pooling)
        return config

    # ------------------------------------------------------------------ input checks

    def _check_images(self, images):
        images = as_array(images, "images")
        shape = require_rank(images, (4,), "images", f"(batch, {self.image_size}, {self.image_size}, 3)")
        if shape[-1] != 3:
            raise ValueError(f"images: expected 3 colour channels in the last axis, got shape {shape}.")
        if None not in shape[1:3] and shape[1:3] != (self.image_size, self.image_size):
            raise ValueError(f"images: this model was built for {self.image_size}x{self.image_size} images, got "
                             f"{shape[1]}x{shape[2]}.")
        if dtype_name(images) == "uint8":
            return ops.cast(images, "float32") / 255.0
        require_float_dtype(images, "images", fix="pass uint8 pixels or floats in [0, 1]")
        return images

    def _check_token_ids(self, token_ids):
        token_ids = as_array(token_ids, "token_ids")
        shape = require_rank(token_ids, (2,), "token_ids", "(batch, time)")
        require_int_dtype(token_ids, "token_ids")
        if shape[1] is not None and shape[1] > self.max_length:
            raise ValueError(f"token_ids: {shape[1]} tokens is longer than max_length={self.max_length}; encode "
                             f"with tokenizer.encode_batch(texts, max_length={self.max_length}).")
        return token_ids

    @staticmethod
    def _unpack(inputs):
        """(images, token_ids, negative_token_ids or None) from a dict or a tuple."""
        if isinstance(inputs, dict):
            if not {"images", "token_ids"} <= set(inputs) <= {"images", "token_ids", "negative_token_ids"}:
                raise ValueError("DualEncoder inputs: expected a dict with keys 'images', 'token_ids' (and "
                                 f"optionally 'negative_token_ids'), got keys {sorted(inputs)}.")
            inputs = (inputs["images"], inputs["token_ids"], inputs.get("negative_token_ids"))
        elif not (isinstance(inputs, (tuple, list)) and len(inputs) in (2, 3)):
            raise TypeError("DualEncoder inputs: expected {'images': (B, H, W, 3), 'token_ids': (B, T)} or a "
                            f"tuple (images, token_ids), got {type(inputs).__name__}.")
        images, token_ids = as_array(inputs[0], "images"), as_array(inputs[1], "token_ids")
        negatives = inputs[2] if len(inputs) == 3 else None
        return images, token_ids, None if negatives is None else as_array(negatives, "negative_token_ids")


def spatial_moments(tokens, side: int):
    """Position-weighted pooling of a square grid of region vectors.

    tokens: float (B, side * side, F) in reading order (row by row). Returns float
    (B, 3 * F): the mean of the tokens, the mean of ``x * token`` and the mean of
    ``y * token``, with x and y the region's centre in [-1, 1] (x to the right, y down).
    If feature f fires on one object, the second block holds that object's x position
    along f: a linear read-out of *where* each kind of thing is, which relations need.
    """
    tokens, side = as_array(tokens, "tokens"), positive_int(side, "side")
    require_float_dtype(tokens, "tokens")
    shape = tuple(tokens.shape)
    if len(shape) != 3 or shape[1] != side * side:
        raise ValueError(f"tokens: expected shape (batch, {side * side}, features), got {shape}.")
    line = ops.linspace(-1.0, 1.0, side) if side > 1 else ops.zeros((1,))
    ys, xs = ops.meshgrid(line, line, indexing="ij")  # (side, side) each
    xs = ops.cast(ops.reshape(xs, (1, side * side, 1)), tokens.dtype)
    ys = ops.cast(ops.reshape(ys, (1, side * side, 1)), tokens.dtype)
    return ops.concatenate([ops.mean(tokens, axis=1), ops.mean(tokens * xs, axis=1), ops.mean(tokens * ys, axis=1)],
                           axis=-1)


def add_coordinate_channels(images):
    """Append two channels holding each pixel's x and y position in [-1, 1] (CoordConv).

    float (B, H, W, C) -> float (B, H, W, C + 2). A convolution is translation-invariant:
    it finds a red circle anywhere but cannot tell *where*; with the coordinates as input
    its features can say "red, and on the left", which spatial relations need.
    """
    images = as_array(images, "images")
    require_float_dtype(images, "images")
    shape = tuple(images.shape)
    if len(shape) != 4 or None in shape[1:]:
        raise ValueError(f"images: expected (batch, H, W, C) with known H, W, C, got {shape}.")
    height, width = shape[1], shape[2]
    ys, xs = ops.meshgrid(ops.linspace(-1.0, 1.0, height), ops.linspace(-1.0, 1.0, width), indexing="ij")
    grid = ops.cast(ops.stack([xs, ys], axis=-1), images.dtype)  # (H, W, 2)
    grid = ops.broadcast_to(ops.expand_dims(grid, 0), (ops.shape(images)[0], height, width, 2))
    return ops.concatenate([images, grid], axis=-1)


# --------------------------------------------------------------------------- the loss


def multi_positive_info_nce(logits, positives):
    """Symmetric InfoNCE when several captions of a batch can be true of an image.

    logits: float (B, C), images x texts (``cos / T``), C >= B: the first B texts are the
    batch's captions (text i belongs to image i), any further columns are extra texts such
    as hard negatives. positives: (B, C), True / 1 where text j is true of image i (at
    least the diagonal of the first B columns).

    Image-to-text: row i's target spreads evenly over its positives among all C texts.
    Text-to-image: for each of the B captions, a softmax over the B images (extra texts
    have no image of their own) with its target spread over the images it is true of.
    The loss is the mean of the two soft-target cross-entropies; with only the diagonal
    positive and C = B it equals `losses.info_nce_from_logits`.
    """
    logits = as_array(logits, "logits")
    batch, columns = require_rank(logits, (2,), "logits", "(B, C): images x texts")
    require_float_dtype(logits, "logits")
    logits = ops.cast(logits, "float32")
    positives = ops.cast(as_array(positives, "positives"), "float32")
    if tuple(positives.shape) != tuple(logits.shape):
        raise ValueError(f"positives: expected the shape of logits {tuple(logits.shape)}, "
                         f"got {tuple(positives.shape)}.")
    if None not in (batch, columns) and columns < batch:
        raise ValueError(f"logits: expected at least as many texts as images (B, C >= B), "
                         f"got shape {(batch, columns)}.")
    batch = ops.shape(logits)[0] if batch is None else batch
    row_targets = positives / ops.maximum(ops.sum(positives, axis=1, keepdims=True), 1.0)
    image_to_text = -ops.sum(row_targets * log_softmax(logits, axis=1), axis=1)  # (B,)
    caption_logits, caption_positives = logits[:, :batch], positives[:, :batch]  # (B, B)
    column_targets = caption_positives / ops.maximum(ops.sum(caption_positives, axis=0, keepdims=True), 1.0)
    text_to_image = -ops.sum(column_targets * log_softmax(caption_logits, axis=0), axis=0)  # (B,)
    return (ops.mean(image_to_text) + ops.mean(text_to_image)) / 2.0


# --------------------------------------------------------------------------- retrieval and recall with the verifier


def similarity_scores(queries, candidates):
    """Cosine similarity of every query with every candidate: float32 (Q, N).

    queries: float (Q, D); candidates: float (N, D) (any norms: both are L2-normalised
    here). Unlike `losses.similarity_logits` (a training batch, where Q must equal N and
    row i pairs with column i), Q and N may differ: a gallery of N images searched by Q
    captions.
    """
    queries, candidates = as_array(queries, "queries"), as_array(candidates, "candidates")
    _, dim = require_rank(queries, (2,), "queries", "(Q, D)")
    _, other = require_rank(candidates, (2,), "candidates", "(N, D)")
    require_float_dtype(queries, "queries")
    require_float_dtype(candidates, "candidates")
    if None not in (dim, other) and dim != other:
        raise ValueError(f"queries have {dim} features but candidates have {other}: "
                         "both must live in the same embedding space (same D).")
    queries = l2_normalize(ops.cast(queries, "float32"))
    candidates = l2_normalize(ops.cast(candidates, "float32"))
    return ops.matmul(queries, ops.transpose(candidates))


def first_hit_ranks(scores, hits):
    """Rank (1 = best) of the best-scoring right answer of each query, ties counted against it.

    scores: float (Q, N), higher is better. hits: bool (Q, N), True where candidate j is
    a right answer for query i (several may be; `shapeworld.caption_truth_matrix`). The
    rank is one plus the number of *wrong* candidates whose score is at least the best
    right answer's score (a wrong candidate that ties goes first, as in
    `mmlm_course.metrics.retrieval_ranks`; NaN scores count against the query too). With
    one right answer per row this is exactly `metrics.retrieval_ranks`. Returns int32
    (Q,) in [1, N]. A query without any right answer is an error: recall is undefined.
    """
    scores, hits = as_array(scores, "scores"), as_array(hits, "hits")
    require_rank(scores, (2,), "scores", "(Q, N): one row of N candidate scores per query")
    require_float_dtype(scores, "scores")
    if dtype_name(hits) != "bool":
        raise TypeError(f"hits: expected a bool matrix (True where candidate j is a right answer for query i), got "
                        f"dtype {dtype_name(hits)}; build it with shapeworld.caption_truth_matrix or compare: x == y.")
    if tuple(hits.shape) != tuple(scores.shape):
        raise ValueError(f"hits: expected the shape of scores {tuple(scores.shape)} (queries x candidates), "
                         f"got {tuple(hits.shape)}; for image-to-text retrieval transpose the caption x image "
                         "hit matrix (hits.T).")
    values = concrete_values(hits)
    if values is not None and values.size and not values.any(axis=1).all():
        without = np.flatnonzero(~values.any(axis=1))
        raise ValueError(f"hits: {without.size} queries have no right answer among the candidates (rows "
                         f"{without[:5].tolist()}{' ...' if without.size > 5 else ''}); recall is undefined "
                         "for them. Drop those queries or add their own item to the gallery.")
    scores, hits = ops.cast(scores, "float32"), ops.convert_to_tensor(hits)
    best_hit = ops.max(ops.where(hits, scores, ops.cast(-np.inf, "float32")), axis=1, keepdims=True)  # (Q, 1)
    below = ops.less(scores, best_hit)  # NaN compares False: it counts against the query
    wrong_at_least_as_good = ops.logical_and(ops.logical_not(hits), ops.logical_not(below))
    return 1 + ops.sum(ops.cast(wrong_at_least_as_good, "int32"), axis=1)


def recall_at_k_with_hits(scores, hits, k: int = 1):
    """Fraction of queries with at least one right answer among their top ``k`` results.

    Arguments as in `first_hit_ranks` (scores float (Q, N), hits bool (Q, N)); ``k`` an
    int in [1, N]. Returns a float32 scalar tensor in [0, 1] (``float(...)`` for a number).
    Ties with a wrong candidate count against the query, so constant scores score 0 for
    every k below the number of wrong candidates.
    """
    scores = as_array(scores, "scores")
    k = require_int(k, "k", low=1, high=scores.shape[-1] if len(scores.shape) == 2 else None)
    return ops.mean(ops.cast(first_hit_ranks(scores, hits) <= k, "float32"))


def embed_images(model: DualEncoder, images, batch_size: int = 250) -> np.ndarray:
    """L2-normalised image embeddings float32 (N, D) for uint8 images (N, H, W, 3)."""
    images = validate_image(images, "images")
    if images.ndim != 4:
        raise ValueError(f"images: expected a batch (N, H, W, 3), got shape {images.shape}.")
    parts = [ops.convert_to_numpy(model.encode_images(images[i:i + batch_size]))
             for i in range(0, len(images), batch_size)]
    return np.concatenate(parts).astype(np.float32)


def embed_texts(model: DualEncoder, tokenizer: Tokenizer, texts: Sequence[str], batch_size: int = 500) -> np.ndarray:
    """L2-normalised text embeddings float32 (N, D) for a list of captions or prompts."""
    token_ids = tokenizer.encode_batch(texts, model.max_length)
    parts = [ops.convert_to_numpy(model.encode_texts(token_ids[i:i + batch_size]))
             for i in range(0, len(token_ids), batch_size)]
    return np.concatenate(parts).astype(np.float32)


def retrieval_scores(model: DualEncoder, tokenizer: Tokenizer, data: shapeworld.ShapeWorldData):
    """Embed a gallery and its captions; return ``(scores, hits)``, both (captions x images):
    scores float32 cosine similarities, hits bool from the verifier. Text-to-image
    retrieval reads the rows; image-to-text reads the columns (use ``.T``)."""
    image_embeddings = embed_images(model, data.images)
    text_embeddings = embed_texts(model, tokenizer, data.captions)
    scores = np.asarray(ops.convert_to_numpy(similarity_scores(text_embeddings, image_embeddings)))
    return scores, shapeworld.caption_truth_matrix(data.captions, data.scenes)


def retrieval_report(model: DualEncoder, tokenizer: Tokenizer, data: shapeworld.ShapeWorldData,
                     ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """Verifier-based recall@K both ways on ``data`` (its images are the gallery, its
    captions the queries): ``{"t2i_recall@1": ..., "i2t_recall@1": ..., ...}``."""
    scores, hits = retrieval_scores(model, tokenizer, data)
    report = {}
    for direction, (s, h) in {"t2i": (scores, hits), "i2t": (scores.T, hits.T)}.items():
        ranks = np.asarray(ops.convert_to_numpy(first_hit_ranks(s, h)))
        for k in ks:
            report[f"{direction}_recall@{k}"] = float(np.mean(ranks <= k))
    return report


# --------------------------------------------------------------------------- zero-shot classification


def zero_shot_predict(image_embeddings, prompt_embeddings, prompt_classes=None):
    """Zero-shot classification: each image takes the class of its best-scoring prompt.

    image_embeddings: float (B, D); prompt_embeddings: float (P, D), one row per prompt;
    prompt_classes: int (P,), the class each prompt stands for (several prompts may share
    a class, e.g. every "there is a ... red ..." prompt is class "red"); None means prompt
    p is class p. Prompts are compared by cosine similarity, so norms do not matter.
    Returns int32 (B,): ``prompt_classes[argmax_p cos(image_b, prompt_p)]``.
    """
    images, prompts = as_array(image_embeddings, "image_embeddings"), as_array(prompt_embeddings, "prompt_embeddings")
    require_rank(images, (2,), "image_embeddings", "(B, D)")
    require_rank(prompts, (2,), "prompt_embeddings", "(P, D): one embedding per prompt")
    if prompts.shape[0] == 0:
        raise ValueError("prompt_embeddings: expected at least one prompt, got shape (0, D).")
    for values, name in ((concrete_values(images), "image_embeddings"), (concrete_values(prompts), "prompt_embeddings")):
        if values is not None and not np.isfinite(values).all():
            raise ValueError(f"{name}: contains NaN or inf (a diverged encoder?); no prompt can be chosen.")
    best = ops.cast(ops.argmax(similarity_scores(images, prompts), axis=1), "int32")  # (B,) prompt index
    if prompt_classes is None:
        return best
    classes = as_array(prompt_classes, "prompt_classes")
    require_int_dtype(classes, "prompt_classes", what="integer class ids")
    if tuple(classes.shape) != (prompts.shape[0],):
        raise ValueError(f"prompt_classes: expected shape ({prompts.shape[0]},) (one class per prompt), got "
                         f"{tuple(classes.shape)}.")
    values = concrete_values(classes)
    if values is not None and values.size and values.min() < 0:
        raise ValueError(f"prompt_classes: class ids are >= 0, got {values.min()}.")
    return ops.take(ops.cast(classes, "int32"), best)


def zero_shot_prompts(attribute: str) -> tuple[list[str], np.ndarray, tuple[str, ...]]:
    """Prompts in the captions' own words for classifying one attribute (color, shape or size).

    Every prompt is a complete caption "there is a(n) SIZE COLOR SHAPE", the only way the
    training captions name an object, so there is one prompt per combination (36, the
    held-out colour-shape pairs included: a zero-shot model must cope with them).
    Returns ``(prompts, prompt_classes int32 (P,), class_names)``, where
    ``class_names[prompt_classes[p]]`` is the attribute value prompt p names.
    """
    names = tuple(shapeworld.ATTRIBUTES[require_choice(attribute, tuple(shapeworld.ATTRIBUTES), "attribute")])
    prompts, classes = [], []
    for size in shapeworld.SIZES:
        for color in shapeworld.COLOR_NAMES:
            for shape in shapeworld.SHAPES:
                obj = shapeworld.ShapeObject(shape, color, size, 0.5, 0.5)
                prompts.append(f"there is {obj.noun_phrase()}")
                classes.append(names.index(getattr(obj, attribute)))
    return prompts, np.array(classes, np.int32), names


def single_object_data(num_examples: int, split: str = "test", seed: int = 0,
                       image_size: int = 64) -> shapeworld.ShapeWorldData:
    """ShapeWorld examples with exactly one object each (for zero-shot attribute
    classification): images uint8 (N, H, W, 3) with the usual pixel noise, scenes, captions.
    Deterministic from ``(split, seed)``; the compositional split gives held-out
    colour-shape pairs only."""
    num_examples = positive_int(num_examples, "num_examples")
    split, seed = require_choice(split, shapeworld.SPLITS, "split"), require_int(seed, "seed", 0)
    image_size = require_int(image_size, "image_size", 1)
    require_array_budget((num_examples, image_size, image_size, 3), 40, "num_examples and image_size")
    rng = np.random.default_rng([shapeworld.SPLITS.index(split), seed, 6])
    scenes = [shapeworld.sample_scene(rng, split, num_objects=1) for _ in range(num_examples)]
    images = np.stack([shapeworld.render_image(scene, image_size, rng) for scene in scenes])
    captions = [shapeworld.make_caption(scene, rng) for scene in scenes]
    empty = [""] * num_examples
    return shapeworld.ShapeWorldData(images, scenes, captions, empty, empty, empty, split, seed)
