"""The retrieval benchmark's towers: relation binding on top of a frozen object detector.

Lesson 06's `retrieval.DualEncoder` reads images with a CNN. The retrieval benchmark
(`quality.lesson06`) swaps both towers for ones built for relations:

- image side: lesson 04's object detector, pretrained and frozen (as LiT, "locked image
  tuning", keeps a pretrained image encoder locked: `detector.ObjectImageEncoder`, filled
  with `detector.load_detector`), read by `ObjectPairTower`, which binds every ordered pair
  of objects with their offset (`bind_roles`, a tensor product);
- text side: `RoleTextTower`, whose attention pools pick subject, reference and relation
  out of the caption and bind them the same way.

`ObjectDualEncoder` is the `DualEncoder` with these towers; it keeps the lesson model's
inputs, logits, loss and temperature, so `retrieval_training.train_dual_encoder` and the
evaluation functions of `retrieval` take it as they are.
"""

from __future__ import annotations

import keras
from keras import ops

from mmlm_course import detector, shapeworld
from mmlm_course.encoders import TransformerTextEncoder
from mmlm_course.losses import LearnedTemperature, l2_normalize
from mmlm_course.retrieval import MAX_CAPTION_LENGTH, DualEncoder
from mmlm_course.validation import as_array, positive_int, require_float, require_int_dtype, require_rank

_register = keras.saving.register_keras_serializable(package="mmlm_course")
IMAGE_SIZE = 64  # the detector's input size


def bind_roles(subject, reference, relation):
    """Tensor-product binding of three role vectors.

    subject float (..., R), reference float (..., R), relation float (..., Q) (the leading
    dimensions broadcast) -> float (..., R * R * Q): the flattened outer product
    ``subject ⊗ reference ⊗ relation``. Dot products of such tensors factorise,
    ``<a ⊗ b ⊗ r, a' ⊗ b' ⊗ r'> = (a . a') (b . b') (r . r')``, so an image and a caption
    score high together only when the subject *and* the reference *and* the relation match:
    the AND that a sum of word vectors cannot express (a sum scores "the circle left of the
    square" and "the square left of the circle" alike).
    """
    outer = (subject[..., :, None, None] * reference[..., None, :, None]
             * relation[..., None, None, :])  # (..., R, R, Q)
    lead = tuple(outer.shape[:-3])
    size = outer.shape[-3] * outer.shape[-2] * outer.shape[-1]
    return ops.reshape(outer, (-1,) + lead[1:] + (size,) if lead else (size,))


@_register
class ObjectPairTower(keras.layers.Layer):
    """Image tower of `ObjectDualEncoder`: object tokens -> one vector.

    ``layer(objects)`` with objects float (B, K, 14) (`detector.ObjectImageEncoder`; the
    last feature is the objectness w). Returns float (B, object_dim + role_dim**2 * relation_dim):

    - *what is there*: ``sum_k w_k MLP(o_k)``, (B, object_dim);
    - *how things are placed*: for every ordered pair (i, j) of different objects,
      `bind_roles` of a subject code of o_i, a reference code of o_j and a code of the
      offset ``centre_j - centre_i``, weighted by ``w_i w_j`` and summed over the pairs,
      (B, role_dim**2 * relation_dim).

    A caption "A is left of B" (`RoleTextTower`) then matches the sum through the one pair
    whose subject is like A, whose reference is like B and whose offset is like "left of".
    """

    def __init__(self, object_dim: int = 64, role_dim: int = 8, relation_dim: int = 4, hidden: int = 64, **kwargs):
        super().__init__(**kwargs)
        self.object_dim, self.role_dim = positive_int(object_dim, "object_dim"), positive_int(role_dim, "role_dim")
        self.relation_dim, self.hidden = positive_int(relation_dim, "relation_dim"), positive_int(hidden, "hidden")
        policy = self.dtype_policy
        self.object_hidden = keras.layers.Dense(self.hidden, activation="relu", name="object_hidden", dtype=policy)
        self.object_output = keras.layers.Dense(self.object_dim, name="object_output", dtype=policy)
        self.subject = keras.layers.Dense(self.role_dim, name="subject", dtype=policy)
        self.reference = keras.layers.Dense(self.role_dim, name="reference", dtype=policy)
        self.offset_hidden = keras.layers.Dense(self.hidden // 2, activation="relu", name="offset_hidden",
                                                dtype=policy)
        self.offset_output = keras.layers.Dense(self.relation_dim, name="offset_output", dtype=policy)
        self.input_spec = keras.layers.InputSpec(ndim=3, axes={-1: len(detector.OBJECT_FEATURES)})

    def build(self, objects_shape):
        if objects_shape[1] is None:
            raise ValueError(f"objects: expected a known number of object slots K in (batch, K, "
                             f"{len(detector.OBJECT_FEATURES)}), got shape {tuple(objects_shape)}.")
        features = objects_shape[-1]
        for layer, width in ((self.object_hidden, features), (self.object_output, self.hidden),
                             (self.subject, features), (self.reference, features), (self.offset_hidden, 2),
                             (self.offset_output, self.hidden // 2)):
            layer.build((None, width))

    def call(self, objects):
        k = objects.shape[1]
        weight = objects[..., -1:]  # (B, K, 1) objectness
        present = ops.sum(self.object_output(self.object_hidden(objects)) * weight, axis=1)  # (B, object_dim)
        x = detector.OBJECT_FEATURES.index("x")
        centres = objects[..., x:x + 2]  # (B, K, 2)
        offsets = centres[:, None, :, :] - centres[:, :, None, :]  # (B, K, K, 2): [i, j] = centre_j - centre_i
        relation = self.offset_output(self.offset_hidden(offsets))  # (B, K, K, Q)
        bound = bind_roles(self.subject(objects)[:, :, None, :], self.reference(objects)[:, None, :, :],
                           relation)  # (B, K, K, R * R * Q)
        others = ops.cast(1.0 - ops.eye(k), objects.dtype)[None, :, :, None]  # an object is not its own reference
        pair_weight = weight[:, :, None, :] * weight[:, None, :, :] * others  # (B, K, K, 1)
        return ops.concatenate([present, ops.sum(bound * pair_weight, axis=(1, 2))], axis=-1)

    def get_config(self):
        return {**super().get_config(), "object_dim": self.object_dim, "role_dim": self.role_dim,
                "relation_dim": self.relation_dim, "hidden": self.hidden}


@_register
class RoleTextTower(keras.layers.Layer):
    """Text tower of `ObjectDualEncoder`: token ids -> one vector.

    ``layer(token_ids)`` with token_ids int (B, T), 0 = padding. Lesson 03's Transformer
    (unpooled, position-aware) gives a vector per word; four softmax *attention pools* (one
    learned score per word and pool, padding masked) read out four summaries: the objects
    mentioned, the subject, the reference and the relation. Returns float
    (B, object_dim + role_dim**2 * relation_dim), laid out like `ObjectPairTower`'s
    output: ``[objects mentioned ; bind_roles(subject, reference, relation)]``. Which word
    is the subject is learned from the word order (the positions), not given.
    """

    def __init__(self, vocab_size: int, max_length: int, text_dim: int = 64, num_heads: int = 4,
                 num_layers: int = 2, object_dim: int = 64, role_dim: int = 8, relation_dim: int = 4, **kwargs):
        super().__init__(**kwargs)
        self.vocab_size = positive_int(vocab_size, "vocab_size")
        self.max_length = positive_int(max_length, "max_length")
        self.text_dim, self.num_heads = positive_int(text_dim, "text_dim"), positive_int(num_heads, "num_heads")
        self.num_layers = positive_int(num_layers, "num_layers")
        self.object_dim, self.role_dim = positive_int(object_dim, "object_dim"), positive_int(role_dim, "role_dim")
        self.relation_dim = positive_int(relation_dim, "relation_dim")
        policy = self.dtype_policy
        self.encoder = TransformerTextEncoder(self.vocab_size, self.max_length, embed_dim=self.text_dim,
                                              num_heads=self.num_heads, mlp_dim=2 * self.text_dim,
                                              num_layers=self.num_layers, pooling=None, name="encoder", dtype=policy)
        self.pool_scores = keras.layers.Dense(4, name="pool_scores", dtype=policy)  # objects, subject, ref., relation
        self.objects = keras.layers.Dense(self.object_dim, name="objects", dtype=policy)
        self.subject = keras.layers.Dense(self.role_dim, name="subject", dtype=policy)
        self.reference = keras.layers.Dense(self.role_dim, name="reference", dtype=policy)
        self.relation = keras.layers.Dense(self.relation_dim, name="relation", dtype=policy)
        self.input_spec = keras.layers.InputSpec(ndim=2)

    def build(self, token_ids_shape):
        self.encoder.build((None, self.max_length))
        self.pool_scores.build((None, None, self.text_dim))
        for layer in (self.objects, self.subject, self.reference, self.relation):
            layer.build((None, self.text_dim))

    def call(self, token_ids, training=None):
        words = self.encoder(token_ids, training=training)  # (B, T, text_dim)
        padding = ops.cast(ops.equal(token_ids, 0), words.dtype)[..., None]  # (B, T, 1)
        attention = ops.softmax(self.pool_scores(words) - 1e9 * padding, axis=1)  # (B, T, 4): each pool sums to 1
        pools = ops.einsum("btp,btd->bpd", attention, words)  # (B, 4, text_dim)
        bound = bind_roles(self.subject(pools[:, 1]), self.reference(pools[:, 2]), self.relation(pools[:, 3]))
        return ops.concatenate([self.objects(pools[:, 0]), bound], axis=-1)  # (B, object_dim + R * R * Q)

    def get_config(self):
        return {**super().get_config(), "vocab_size": self.vocab_size, "max_length": self.max_length,
                "text_dim": self.text_dim, "num_heads": self.num_heads, "num_layers": self.num_layers,
                "object_dim": self.object_dim, "role_dim": self.role_dim, "relation_dim": self.relation_dim}


@_register
class ObjectDualEncoder(DualEncoder):
    """`retrieval.DualEncoder` with the benchmark's towers, for 64x64 ShapeWorld images.

    Same inputs, logits, `compute_loss` and temperature as the lesson model (those methods
    are inherited); the towers differ: the image side is the frozen object detector
    (`object_encoder`, a `detector.ObjectImageEncoder`: fill it with
    `detector.load_detector` after `build()`) read by `ObjectPairTower` (`image_tower`), the
    text side is `RoleTextTower` (`text_tower`). Both give ``embed_dim + role_dim**2 *
    relation_dim`` numbers, L2-normalised, with no projection: the relation part is a
    `bind_roles` tensor on both sides, so it must keep its layout.
    """

    def __init__(self, vocab_size: int, max_length: int = MAX_CAPTION_LENGTH, embed_dim: int = 64,
                 text_dim: int = 64, text_layers: int = 2, num_heads: int = 4, initial_temperature: float = 0.1,
                 role_dim: int = 8, relation_dim: int = 4, **kwargs):
        # keras.Model's constructor, not DualEncoder's: the lesson's CNN and text towers are not wanted here
        keras.Model.__init__(self, **kwargs)
        self.vocab_size = positive_int(vocab_size, "vocab_size")
        self.max_length = positive_int(max_length, "max_length")
        self.image_size, self.embed_dim = IMAGE_SIZE, positive_int(embed_dim, "embed_dim")
        self.text_dim, self.text_layers = positive_int(text_dim, "text_dim"), positive_int(text_layers, "text_layers")
        self.num_heads = positive_int(num_heads, "num_heads")
        self.initial_temperature = require_float(initial_temperature, "initial_temperature", low=0.0, low_open=True)
        self.role_dim = positive_int(role_dim, "role_dim")
        self.relation_dim = positive_int(relation_dim, "relation_dim")
        self.temperature_layer = LearnedTemperature(self.initial_temperature, name="temperature")  # float32
        self.loss_tracker = keras.metrics.Mean(name="loss")
        policy = self.dtype_policy
        self.object_encoder = detector.ObjectImageEncoder(name="object_encoder", dtype=policy)
        self.object_encoder.trainable = False  # pretrained and frozen: fill it with detector.load_detector
        self.image_tower = ObjectPairTower(self.embed_dim, self.role_dim, self.relation_dim, name="image_tower",
                                           dtype=policy)
        self.text_tower = RoleTextTower(self.vocab_size, self.max_length, self.text_dim, self.num_heads,
                                        self.text_layers, self.embed_dim, self.role_dim, self.relation_dim,
                                        name="text_tower", dtype=policy)

    def build(self, input_shape=None):
        """Create every weight; sub-layers already built are left as they are."""
        shapes = [(self.object_encoder, (None, IMAGE_SIZE, IMAGE_SIZE, 3)),
                  (self.image_tower, (None, shapeworld.MAX_OBJECTS, len(detector.OBJECT_FEATURES))),
                  (self.text_tower, (None, self.max_length)), (self.temperature_layer, None)]
        for layer, shape in shapes:
            if not layer.built:
                layer.build(shape)
        self.built = True

    def encode_images(self, images, training=None):
        """images uint8 (B, 64, 64, 3) or float in [0, 1] -> L2-normalised
        (B, embed_dim + role_dim**2 * relation_dim)."""
        images = as_array(images, "images")
        shape = require_rank(images, (4,), "images", f"(batch, {IMAGE_SIZE}, {IMAGE_SIZE}, 3)")
        if None not in shape[1:3] and shape[1:3] != (IMAGE_SIZE, IMAGE_SIZE):
            raise ValueError(f"images: the object detector reads {IMAGE_SIZE}x{IMAGE_SIZE} images, got "
                             f"{shape[1]}x{shape[2]}.")
        return l2_normalize(self.image_tower(self.object_encoder(images)))  # (B, K, 14) -> (B, D)

    def encode_texts(self, token_ids, training=None):
        """token_ids int (B, T), 0 = padding -> L2-normalised (B, embed_dim + role_dim**2 * relation_dim)."""
        token_ids = as_array(token_ids, "token_ids")
        require_int_dtype(token_ids, "token_ids")
        return l2_normalize(self.text_tower(token_ids, training=training))  # (B, D)

    def get_config(self):
        return {**keras.Model.get_config(self), "vocab_size": self.vocab_size, "max_length": self.max_length,
                "embed_dim": self.embed_dim, "text_dim": self.text_dim, "text_layers": self.text_layers,
                "num_heads": self.num_heads, "initial_temperature": self.initial_temperature,
                "role_dim": self.role_dim, "relation_dim": self.relation_dim}
