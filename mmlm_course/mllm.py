"""Lesson 08: a LLaVA-style multimodal language model.

The recipe of LLaVA (Liu et al., 2023) in miniature::

    image ─► image encoder ─► feature tokens (P, D_v) ─► projector ─► image tokens (P, dim) ─┐
    text  ─► token embeddings (T, dim) ──────────────────────────────────────────────────────┤
                                                                                             ▼
    language model (lesson 07) reads [image tokens ; text tokens] ─► next-token logits (T, V)

1. an **image encoder** turns the image into feature tokens: lesson 04's object detector,
   pretrained and frozen as LLaVA keeps CLIP (`detector.ObjectImageEncoder`,
   ``MLLMConfig(vision="objects")``, one token per object; ShapeWorld only), or a CNN
   trained with the model (`grid_encoder.GridImageEncoder`, ``vision="grid"``, one token
   per region; any images, photos too);
2. a **projector** (`ImageTokenProjector`: a two-layer MLP with GELU) maps each feature
   token into the word-embedding space of the language model;
3. the **language model** (lesson 07's `DecoderLM`) reads the projected image tokens *in
   front of* the text tokens (``prefix_embeddings``) and predicts the text (`LLaVAModel`);
4. the loss counts the **answer tokens only** (`instructions`: the prompt is given, never
   predicted).

The other classic design, `CrossAttentionMLLM` (``architecture="cross_attention"``,
Flamingo, Alayrac et al., 2022), keeps the text at positions 0.. and lets every decoder
block attend to the image tokens through a `GatedCrossAttention` layer.

Where the rest of lesson 08 lives: the instruction format and training rows in
`instructions`; the grid encoder in `grid_encoder`; the relation head
(``relation_head=True``) in `relation_head`; the two training stages in `stages`;
generation, evaluation and attention maps in `generation`; the step loop in `training`.

Models take NumPy dicts ``{"images": uint8 (N, H, W, 3), "token_ids": int32 (N, T)}``
(or ``"image_features"`` from `stages.cache_image_features` instead of the images) and
override ``compute_loss``, so the same code trains on every Keras backend. Model code uses
``keras.layers`` / ``keras.ops`` only.
"""

from __future__ import annotations

import dataclasses

import keras
from keras import ops

from mmlm_course import attention, detector, instructions, preprocessing, shapeworld
from mmlm_course import language_model as lm
from mmlm_course.grid_encoder import GridImageEncoder
from mmlm_course.relation_head import RelationHead
from mmlm_course.validation import (as_array, int_tuple, positive_int, require_choice, require_float,
                                    require_float_dtype, require_int, require_int_dtype, require_rank,
                                    require_rate, same_dim, static_shape)

__all__ = [
    "MLLMConfig", "ARCHITECTURES", "VISIONS", "ImageTokenProjector", "GatedCrossAttention", "MultimodalModel",
    "LLaVAModel", "CrossAttentionMLLM", "build_model", "prepend_image_tokens", "project_tokens",
]

ARCHITECTURES = ("prefix", "cross_attention")
VISIONS = ("grid", "objects")
_register = keras.saving.register_keras_serializable(package="mmlm_course")


# --------------------------------------------------------------------------- configuration


@dataclasses.dataclass(frozen=True)
class MLLMConfig:
    """Sizes of a multimodal model. ``dataclasses.asdict(config)`` round-trips through
    ``MLLMConfig(**d)`` (also after JSON, which turns tuples into lists).

    image_size: square input images (image_size, image_size, 3).
    vision: ``"grid"`` (`grid_encoder.GridImageEncoder`, trained with the model: any
        images) or ``"objects"`` (`detector.ObjectImageEncoder`: lesson 04's pretrained
        object detector, frozen, one token per object; ShapeWorld's 64x64 images only).
    stem, encoder_filters, vision_dim (``vision="grid"`` only; unused and unchecked for
        objects): the grid encoder's space-to-depth factor (1: none), one ``Conv2D ->
        MaxPool(2)`` per filter entry, and the width of its tokens. The image becomes
        ``grid_size**2`` tokens, ``grid_size = image_size / stem / 2**len(encoder_filters)``
        (64 / 2 / 8 = 4: 16 tokens).
    projector_hidden: the projector MLP's hidden width (None: dim).
    dim, num_layers, num_heads, mlp_dim (None: 4 * dim), dropout: the language model.
    max_text_length: text positions the model reads (prompt + answer, <eos> excluded).
    architecture: ``"prefix"`` (LLaVA: image tokens in front of the text) or
        ``"cross_attention"`` (Flamingo-style gated cross-attention in every block).
    image_mean, image_std: per-channel pixel statistics (of uint8 / 255) used to
        standardise the images for a grid encoder (ShapeWorld's by default; use
        ``preprocessing.IMAGENET_MEAN`` / ``IMAGENET_STD`` or your data's for photos).
    relation_head: add a `relation_head.RelationHead` whose scores are added to the
        logits; needs ``vision="objects"``.
    """

    image_size: int = 64
    stem: int = 2
    encoder_filters: tuple = (32, 64, 64)
    vision_dim: int = 64
    projector_hidden: int | None = None
    dim: int = 64
    num_layers: int = 4
    num_heads: int = 4
    mlp_dim: int | None = None
    max_text_length: int = 20
    dropout: float = 0.0
    architecture: str = "prefix"
    image_mean: tuple = preprocessing.SHAPEWORLD_MEAN
    image_std: tuple = preprocessing.SHAPEWORLD_STD
    vision: str = "grid"
    relation_head: bool = False

    def __post_init__(self):
        for name in ("encoder_filters", "image_mean", "image_std"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        for name in ("image_mean", "image_std"):
            if len(getattr(self, name)) != 3:
                raise ValueError(f"{name} must be 3 numbers (one per RGB channel), got {getattr(self, name)!r}.")
            for i, value in enumerate(getattr(self, name)):
                require_float(value, f"{name}[{i}]", low=0.0, low_open=name == "image_std")
        for name in ("image_size", "dim", "num_layers", "num_heads"):
            positive_int(getattr(self, name), name)
        require_int(self.max_text_length, "max_text_length (<bos>, a task token, one answer token)", low=3)
        for name in ("projector_hidden", "mlp_dim"):
            if getattr(self, name) is not None:
                positive_int(getattr(self, name), name)
        require_rate(self.dropout, "dropout")
        require_choice(self.architecture, ARCHITECTURES, "architecture")
        require_choice(self.vision, VISIONS, "vision")
        if self.dim % self.num_heads:
            raise ValueError(f"dim={self.dim} must be divisible by num_heads={self.num_heads}.")
        if not isinstance(self.relation_head, bool):
            raise TypeError(f"relation_head must be True or False, got {self.relation_head!r}.")
        if self.vision == "objects":
            if self.image_size != 64:
                raise ValueError(f"vision='objects' uses lesson 04's object detector, built for 64x64 images; got "
                                 f"image_size={self.image_size}. Use image_size=64 or vision='grid'.")
            return
        if self.relation_head:
            raise ValueError("relation_head=True reads object tokens (their centres and objectness): it needs "
                             "vision='objects'.")
        positive_int(self.stem, "stem")
        positive_int(self.vision_dim, "vision_dim")
        int_tuple(self.encoder_filters, "encoder_filters")
        cell = self.stem * 2 ** len(self.encoder_filters)
        if self.image_size % cell:
            raise ValueError(f"image_size={self.image_size} must be divisible by stem * 2**len(encoder_filters) = "
                             f"{cell} so the feature map is a whole grid.")

    @property
    def grid_size(self) -> int:
        """Side of the image-token grid (``vision="grid"``)."""
        if self.vision != "grid":
            raise ValueError(f"grid_size: a vision={self.vision!r} model has no grid; see num_image_tokens.")
        return self.image_size // self.stem // 2 ** len(self.encoder_filters)

    @property
    def num_image_tokens(self) -> int:
        """P: one token per grid cell, or one per object slot with ``vision="objects"``."""
        return shapeworld.MAX_OBJECTS if self.vision == "objects" else self.grid_size ** 2


# --------------------------------------------------------------------------- the exercises' functions


def project_tokens(features, w1, b1, w2, b2):
    """The projector's MLP on every token: ``gelu(features @ w1 + b1) @ w2 + b2``.

    features float (B, N, D_in), w1 (D_in, H), b1 (H,), w2 (H, D), b2 (D,). Returns float
    (B, N, D): each image token is mapped on its own (no mixing across tokens).
    """
    names, layouts = ("features", "w1", "b1", "w2", "b2"), ("(B, N, D_in)", "(D_in, H)", "(H,)", "(H, D)", "(D,)")
    features, w1, b1, w2, b2 = arrays = [as_array(v, n) for v, n in zip((features, w1, b1, w2, b2), names)]
    shapes = [require_rank(v, (rank,), n, lay) for v, n, lay, rank in zip(arrays, names, layouts, (3, 2, 1, 2, 1))]
    for v, n in zip(arrays, names):
        require_float_dtype(v, n)
    pairs = ((shapes[0][-1], shapes[1][0]), (shapes[1][1], shapes[2][0]), (shapes[2][0], shapes[3][0]),
             (shapes[3][1], shapes[4][0]))
    if not all(same_dim(a, b) for a, b in pairs):
        raise ValueError(f"project_tokens: the sizes do not chain: features {shapes[0]}, w1 {shapes[1]}, b1 "
                         f"{shapes[2]}, w2 {shapes[3]}, b2 {shapes[4]}; expected (B, N, D_in), (D_in, H), (H,), (H, D), (D,).")
    hidden = keras.activations.gelu(ops.matmul(features, w1) + b1)
    return ops.matmul(hidden, w2) + b2


def prepend_image_tokens(image_tokens, text_embeddings, position_table):
    """Put image tokens in front of the text and add positions.

    image_tokens float (B, P, D), text_embeddings float (B, T, D), position_table float
    (L, D) with L >= P + T. Returns float (B, P + T, D): ``concat([image, text], axis=1)
    + position_table[:P + T]``, so the text starts at position P.
    """
    for value, name in ((image_tokens, "image_tokens"), (text_embeddings, "text_embeddings"),
                        (position_table, "position_table")):
        require_float_dtype(as_array(value, name), name)
    image_tokens, text_embeddings = ops.convert_to_tensor(image_tokens), ops.convert_to_tensor(text_embeddings)
    table = ops.convert_to_tensor(position_table)
    image_shape = require_rank(image_tokens, (3,), "image_tokens", "(batch, P, D)")
    text_shape = require_rank(text_embeddings, (3,), "text_embeddings", "(batch, T, D)")
    table_shape = require_rank(table, (2,), "position_table", "(L, D)")
    if image_shape[0] != text_shape[0]:
        raise ValueError(f"image_tokens and text_embeddings must have the same batch size, got "
                         f"{image_shape[0]} and {text_shape[0]}.")
    if not image_shape[-1] == text_shape[-1] == table_shape[-1]:
        raise ValueError(f"image tokens, text embeddings and positions must share the width D, got "
                         f"{image_shape[-1]}, {text_shape[-1]} and {table_shape[-1]}.")
    length = image_shape[1] + text_shape[1]
    if length > table_shape[0]:
        raise ValueError(f"position_table has {table_shape[0]} positions, fewer than P + T = {length}.")
    sequence = ops.concatenate([image_tokens, ops.cast(text_embeddings, image_tokens.dtype)], axis=1)
    return sequence + ops.cast(table[:length], sequence.dtype)[None]


# --------------------------------------------------------------------------- the projector


@_register
class ImageTokenProjector(keras.layers.Layer):
    """Image feature tokens -> language-model embeddings.

    Input float (B, num_tokens, input_dim) from the image encoder; ``Dense(hidden_dim,
    gelu) -> Dense(dim)`` on every token on its own (LLaVA-1.5's MLP projector). Output
    float (B, num_tokens, dim). Parameters: ``input_dim * hidden_dim + hidden_dim +
    hidden_dim * dim + dim``.
    """

    def __init__(self, num_tokens: int, input_dim: int, dim: int, hidden_dim: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.num_tokens = positive_int(num_tokens, "num_tokens")
        self.input_dim = positive_int(input_dim, "input_dim")
        self.dim = positive_int(dim, "dim")
        self.hidden_dim = self.dim if hidden_dim is None else positive_int(hidden_dim, "hidden_dim")
        self.input_spec = keras.layers.InputSpec(shape=(None, self.num_tokens, self.input_dim))
        self.hidden = keras.layers.Dense(self.hidden_dim, activation="gelu", name="hidden", dtype=self.dtype_policy)
        self.output_layer = keras.layers.Dense(self.dim, name="output", dtype=self.dtype_policy)

    def build(self, input_shape):
        self.hidden.build(input_shape)
        self.output_layer.build(tuple(input_shape[:-1]) + (self.hidden_dim,))

    def call(self, tokens):
        return self.output_layer(self.hidden(tokens))

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.dim,)

    def get_config(self):
        return {**super().get_config(), "num_tokens": self.num_tokens, "input_dim": self.input_dim, "dim": self.dim,
                "hidden_dim": self.hidden_dim}


# --------------------------------------------------------------------------- models


class MultimodalModel(keras.Model):
    """What both architectures share: the config (stored once), the image encoder and
    projector (and the relation head), the input checks and the answer-only loss.

    ``model.config`` is the `MLLMConfig`; ``model.vocab_size`` the tokenizer's size.
    Subclasses add ``language_model`` and ``call``.
    """

    architecture = None
    num_prefix_tokens = 0    # tokens in front of the text (LLaVAModel: the image tokens)

    def __init__(self, config: MLLMConfig, vocab_size: int, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(config, MLLMConfig):
            raise TypeError(f"config must be an MLLMConfig, got {type(config).__name__}.")
        if config.architecture != self.architecture:
            raise ValueError(f"{type(self).__name__} is the architecture={self.architecture!r} model, got a config "
                             f"with architecture={config.architecture!r}; build_model picks the class for you.")
        self.config = config
        self.vocab_size = require_int(vocab_size, "vocab_size", low=2)
        policy = self.dtype_policy
        if config.vision == "objects":
            self.image_encoder = detector.ObjectImageEncoder(name="image_encoder", dtype=policy)
            self.feature_dim = len(detector.OBJECT_FEATURES)
        else:
            self.image_encoder = GridImageEncoder(config.image_size, config.encoder_filters, config.vision_dim,
                                                  config.stem, name="image_encoder", dtype=policy)
            self.feature_dim = config.vision_dim
        self.projector = ImageTokenProjector(config.num_image_tokens, self.feature_dim, config.dim,
                                             config.projector_hidden, name="projector", dtype=policy)
        self.relation_head = (RelationHead(self.vocab_size, config.max_text_length, config.dim,
                                           name="relation_head", dtype=policy) if config.relation_head else None)

    # -- inputs

    def _unpack(self, inputs, training=None):
        """The model's input dict -> (image features float (B, P, D_v), token_ids int (B, T)).

        The image side is ``"images"`` (B, H, W, 3), run through the image encoder, or
        ``"image_features"`` (B, P, D_v), a frozen encoder's output computed beforehand
        (`stages.cache_image_features`)."""
        keys = ({"images", "token_ids"}, {"image_features", "token_ids"})
        if not isinstance(inputs, dict) or set(inputs) not in keys:
            got = sorted(inputs) if isinstance(inputs, dict) else type(inputs).__name__
            raise ValueError(f"{self.name}: expected a dict {{'images': (B, H, W, 3), 'token_ids': int (B, T)}} "
                             f"(or 'image_features' (B, P, D_v) from stages.cache_image_features instead of "
                             f"'images'), got {got}.")
        token_ids = inputs["token_ids"]
        ids_shape = require_rank(token_ids, (2,), "token_ids", "(batch, time)")
        require_int_dtype(token_ids, "token_ids")
        if ids_shape[1] is not None and ids_shape[1] > self.config.max_text_length:
            raise ValueError(f"{self.name}: {ids_shape[1]} text tokens exceed max_text_length="
                             f"{self.config.max_text_length}.")
        if "image_features" in inputs:
            features = self._check_cached_features(inputs["image_features"])
            self._check_same_rows(features, ids_shape, "image feature rows")
            return features, token_ids
        images, size = inputs["images"], self.config.image_size
        if len(images.shape) != 4 or tuple(images.shape[1:]) != (size, size, 3):
            raise ValueError(f"{self.name}: images must have shape (batch, {size}, {size}, 3), got "
                             f"{tuple(images.shape)}.")
        self._check_same_rows(images, ids_shape, "images")
        return self.image_features(images, training=training), token_ids

    def _check_same_rows(self, image_side, ids_shape, what: str) -> None:
        if not same_dim(image_side.shape[0], ids_shape[0]):
            raise ValueError(f"{self.name}: images and token_ids must have the same batch size, got "
                             f"{image_side.shape[0]} {what} and {ids_shape[0]} token rows.")

    def _check_cached_features(self, features):
        """Only a frozen, pretrained encoder's output may stand in for the images: a grid
        encoder learns in stage 2, so features computed before would go stale."""
        if self.config.vision != "objects":
            raise ValueError(f"{self.name}: 'image_features' replace the images only for vision='objects' (a frozen, "
                             f"pretrained detector); this model's {self.config.vision!r} encoder learns with the "
                             "model, so pass 'images'.")
        expected = (self.config.num_image_tokens, self.feature_dim)
        if len(features.shape) != 3 or tuple(features.shape[1:]) != expected:
            raise ValueError(f"{self.name}: image_features must have shape (batch, {expected[0]}, {expected[1]}) "
                             f"(stages.cache_image_features), got {static_shape(features)}.")
        require_float_dtype(features, "image_features")
        return features

    # -- the image side

    def staged_encoders(self) -> list:
        """[(encoder, learns in stage 2)] for `stages.set_stage_trainable`: a grid encoder
        learns with the model, a pretrained detector stays frozen."""
        return [(self.image_encoder, self.config.vision == "grid")]

    def standardize(self, images):
        """uint8 (B, H, W, 3) in 0..255 or float in [0, 1] -> float ``(x - mean) / std`` per
        channel (lesson 01). The plain background becomes about 0, so from the first step the
        encoder's features differ between images instead of repeating the background."""
        is_float = "float" in keras.backend.standardize_dtype(images.dtype)
        images = ops.cast(images, self.compute_dtype)
        if not is_float:
            images = images / ops.cast(255.0, self.compute_dtype)
        mean = ops.cast(ops.convert_to_tensor(self.config.image_mean), self.compute_dtype)
        std = ops.cast(ops.convert_to_tensor(self.config.image_std), self.compute_dtype)
        return (images - mean) / std

    def image_features(self, images, training=None):
        """uint8 (B, H, W, 3) in 0..255 or float in [0, 1] -> the image encoder's tokens
        (B, P, feature_dim): grid features, or object tokens with ``vision="objects"``."""
        if self.config.vision == "objects":
            return self.image_encoder(images)                   # the detector standardises its input itself
        return self.image_encoder(self.standardize(images), training=training)

    def image_tokens(self, images, training=None):
        """uint8 (B, H, W, 3) in 0..255 or float in [0, 1] -> projected tokens (B, P, dim)."""
        return self.projector(self.image_features(images, training=training))

    def add_relation_scores(self, logits, features, token_ids):
        """logits (B, T, V) plus the `RelationHead`'s scores from the object tokens
        ``features`` (B, K, 14), when the model has one; else the logits unchanged."""
        if self.relation_head is None:
            return logits
        return logits + ops.cast(self.relation_head(features, token_ids), logits.dtype)

    def _build_vision(self):
        size = self.config.image_size
        self.image_encoder.build((None, size, size, 3))
        feature_shape = (None, self.config.num_image_tokens, self.feature_dim)
        self.projector.build(feature_shape)
        if self.relation_head is not None:
            self.relation_head.build(feature_shape)

    # -- training and saving

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        """Mean cross-entropy over the answer tokens (targets != 0), plus any layer losses."""
        loss = lm.next_token_loss(y, y_pred)
        if self.losses:
            loss = loss + ops.sum(ops.stack(self.losses))
        return loss

    def get_config(self):
        fields = {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self.config).items()}
        return {**super().get_config(), "config": fields, "vocab_size": self.vocab_size}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        fields = config.pop("config")
        return cls(fields if isinstance(fields, MLLMConfig) else MLLMConfig(**fields), **config)


@_register
class LLaVAModel(MultimodalModel):
    """Image encoder -> projector -> image tokens in front of the text of a `DecoderLM`.

    ``model({"images": (B, H, W, 3) uint8 or float, "token_ids": int (B, T)})`` returns
    next-token logits float32 (B, T, vocab_size) for the T text positions. The language
    model (``model.language_model``, lesson 07) has ``max_length = P + max_text_length``
    positions: P image tokens, then the text.
    """

    architecture = "prefix"

    def __init__(self, config: MLLMConfig, vocab_size: int, **kwargs):
        super().__init__(config, vocab_size, **kwargs)
        c = self.config
        self.language_model = lm.DecoderLM(self.vocab_size, max_length=c.num_image_tokens + c.max_text_length,
                                           dim=c.dim, num_layers=c.num_layers, num_heads=c.num_heads,
                                           mlp_dim=c.mlp_dim, dropout=c.dropout, name="language_model",
                                           dtype=self.dtype_policy)

    @property
    def num_prefix_tokens(self) -> int:
        return self.config.num_image_tokens

    def build(self, input_shape=None):
        self._build_vision()
        self.language_model.build()
        self.built = True

    def call(self, inputs, training=None):
        features, token_ids = self._unpack(inputs, training=training)                    # (B, P, D_v), (B, T)
        prefix = self.projector(features)                                                # (B, P, dim)
        logits = self.language_model(token_ids, prefix_embeddings=prefix, training=training)  # (B, T, V)
        return self.add_relation_scores(logits, features, token_ids)


# --------------------------------------------------------------------------- the cross-attention variant


@_register
class GatedCrossAttention(keras.layers.Layer):
    """Text attends to image tokens: ``x + tanh(gate) * CrossAttention(LayerNorm(x), image)``.

    x float (B, T, dim) (queries), image float (B, P, dim) (keys and values); output
    (B, T, dim). The attention is lesson 03's `attention.MultiHeadAttention` with
    ``context=image``. The gate starts at 0 (Flamingo), so a freshly inserted layer leaves
    a pretrained language model unchanged and opens as training finds the image useful.
    ``return_attention_scores=True`` also returns the weights (B, heads, T, P).
    """

    def __init__(self, dim: int, num_heads: int, dropout: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.dim = positive_int(dim, "dim")
        self.num_heads = positive_int(num_heads, "num_heads")
        if self.dim % self.num_heads:
            raise ValueError(f"dim={dim} must be divisible by num_heads={num_heads}.")
        self.dropout = require_rate(dropout)
        # the text side x; the attention layer checks the image side
        self.input_spec = keras.layers.InputSpec(ndim=3, axes={-1: self.dim})
        self.norm = keras.layers.LayerNormalization(epsilon=1e-5, name="norm", dtype=self.dtype_policy)
        self.attention = attention.MultiHeadAttention(self.num_heads, self.dim // self.num_heads,
                                                      dropout=self.dropout, name="attention", dtype=self.dtype_policy)

    def build(self, x_shape, image_shape=None):
        image_shape = x_shape if image_shape is None else image_shape
        self.norm.build(x_shape)
        self.attention.build(x_shape, image_shape)
        self.gate = self.add_weight(name="gate", shape=(), initializer="zeros")

    def call(self, x, image, training=None, return_attention_scores=False):
        attended, weights = self.attention(self.norm(x), context=image, return_attention_scores=True,
                                           training=training)
        x = x + ops.cast(ops.tanh(self.gate), attended.dtype) * attended
        return (x, weights) if return_attention_scores else x

    def get_config(self):
        return {**super().get_config(), "dim": self.dim, "num_heads": self.num_heads, "dropout": self.dropout}


@_register
class CrossAttentionMLLM(MultimodalModel):
    """The cross-attention variant: text at positions 0..T-1 of a `DecoderLM`, and before
    each decoder block a `GatedCrossAttention` from the text to the projected image tokens.

    Same inputs and outputs as `LLaVAModel`. The decoder blocks, embeddings and head are
    those of lesson 07's `DecoderLM` (``model.language_model``, ``max_length =
    max_text_length``), so a pretrained text model can be dropped in unchanged.
    """

    architecture = "cross_attention"

    def __init__(self, config: MLLMConfig, vocab_size: int, **kwargs):
        super().__init__(config, vocab_size, **kwargs)
        c = self.config
        self.language_model = lm.DecoderLM(self.vocab_size, max_length=c.max_text_length, dim=c.dim,
                                           num_layers=c.num_layers, num_heads=c.num_heads, mlp_dim=c.mlp_dim,
                                           dropout=c.dropout, name="language_model", dtype=self.dtype_policy)
        self.cross_attention = [GatedCrossAttention(c.dim, c.num_heads, c.dropout, name=f"cross_attention_{i}",
                                                    dtype=self.dtype_policy) for i in range(c.num_layers)]

    def build(self, input_shape=None):
        self._build_vision()
        self.language_model.build()
        for layer in self.cross_attention:
            layer.build((None, None, self.config.dim), (None, self.config.num_image_tokens, self.config.dim))
        self.built = True

    def decode(self, image, token_ids, training=None, return_attention_scores=False):
        """Projected image tokens (B, P, dim) and ids int (B, T) -> logits float32 (B, T, V)
        (and the cross-attention weights, a list of (B, heads, T, P), one per block)."""
        decoder = self.language_model
        x = decoder.embed(token_ids)                                                     # (B, T, dim)
        positions = ops.arange(ops.shape(token_ids)[1], dtype="int32")
        x = x + ops.cast(decoder.position_embedding(positions), x.dtype)[None]
        maps = []
        for cross, block in zip(self.cross_attention, decoder.blocks):
            x, weights = cross(x, ops.cast(image, x.dtype), training=training, return_attention_scores=True)
            maps.append(weights)
            x = block(x, training=training)
        logits = decoder.head(decoder.final_norm(x))
        return (logits, maps) if return_attention_scores else logits

    def call(self, inputs, training=None):
        features, token_ids = self._unpack(inputs, training=training)                    # (B, P, D_v), (B, T)
        logits = self.decode(self.projector(features), token_ids, training=training)     # (B, T, V)
        return self.add_relation_scores(logits, features, token_ids)


def build_model(config: MLLMConfig, tokenizer: preprocessing.Tokenizer) -> MultimodalModel:
    """A built, uncompiled model for ``config`` (`LLaVAModel` or, with
    ``architecture="cross_attention"``, `CrossAttentionMLLM`) with the tokenizer's
    vocabulary, which must hold `instructions.TASK_TOKENS`."""
    if not isinstance(config, MLLMConfig):
        raise TypeError(f"config must be an MLLMConfig, got {type(config).__name__}.")
    instructions.require_task_tokens(tokenizer)
    cls = LLaVAModel if config.architecture == "prefix" else CrossAttentionMLLM
    model = cls(config, len(tokenizer), name="llava" if cls is LLaVAModel else "cross_attention_mllm")
    model.build({"images": (None, config.image_size, config.image_size, 3), "token_ids": (None, None)})
    return model
