"""Lesson 08: the relation head, a second reader of the image whose scores join the logits.

"Is the circle to the left of the square?" is slow to learn for a language model that
reads object tokens: it must *select* the two objects a question names before it can
compare them, and until it does, the comparison it reads averages to nothing, so nothing
tells it what to select. Lesson 04's relation network scores every *pair* of objects with
the question at once, with no selection to learn first. `RelationHead` reads it at every
text position with the words seen so far and turns the pooled pair scores into a score per
vocabulary word; the multimodal model adds them to the language model's logits (like
"shallow fusion" of two models). ``MLLMConfig(relation_head=True)`` (lesson 08's and the
capstone's ShapeWorld model, with ``vision="objects"``).
"""

from __future__ import annotations

import keras
from keras import ops

from mmlm_course import attention, fusion, qa
from mmlm_course.validation import positive_int, require_int

__all__ = ["RelationHead"]


@keras.saving.register_keras_serializable(package="mmlm_course")
class RelationHead(keras.layers.Layer):
    """Lesson 04's relation network, read at every text position: next-token scores.

    ``head(objects, token_ids)`` with objects float (B, K, 14) (`detector.ObjectImageEncoder`)
    and token_ids int (B, T), T <= max_text_length. For each position t, the words 0..t (the
    prompt and the text generated so far) ground the objects (`fusion.RelationFusion`:
    which object is named where), every ordered pair of objects is scored with them, and
    an MLP turns the pooled pair scores into float32 scores over the vocabulary, returned
    as (B, T, vocab_size).

    Without the head, relation questions stayed at chance in every run we made, with grid
    tokens and with exact object tokens.
    """

    def __init__(self, vocab_size: int, max_text_length: int, width: int = 64, pad_id: int = 0, **kwargs):
        super().__init__(**kwargs)
        self.vocab_size = require_int(vocab_size, "vocab_size", low=2)
        self.max_text_length = positive_int(max_text_length, "max_text_length")
        self.width = require_int(width, "width", low=2)
        self.pad_id = require_int(pad_id, "pad_id", low=0)
        policy = self.dtype_policy
        self.words = qa.QuestionEncoder(self.vocab_size, self.max_text_length, self.width, name="words",
                                        dtype=policy)
        self.context = keras.layers.Dense(self.width, activation="relu", name="context", dtype=policy)
        self.relation = fusion.RelationFusion(self.width, key_dim=self.width // 2, name="relation_network",
                                              dtype=policy)
        self.hidden = keras.layers.Dense(2 * self.width, activation="relu", name="hidden", dtype=policy)
        self.scores = keras.layers.Dense(self.vocab_size, dtype="float32", name="scores")   # logits stay float32

    def build(self, objects_shape, token_ids_shape=None):
        length, width = self.max_text_length, self.width
        self.words.build((None, length))
        self.context.build((None, width))
        self.relation.build(tuple(objects_shape), (None, length, width), (None, width), (None, length),
                            tuple(objects_shape[:-1]) + (1,))
        self.hidden.build((None, 2 * width))
        self.scores.build((None, 2 * width))

    def call(self, objects, token_ids):
        length, full = token_ids.shape[1], self.max_text_length
        if length is not None and length > full:
            raise ValueError(f"{self.name}: {length} text tokens exceed max_text_length={full}.")
        batch, length = ops.shape(token_ids)[0], ops.shape(token_ids)[1]
        ids = ops.pad(token_ids, [[0, 0], [0, full - length]], constant_values=self.pad_id)
        ids = ops.reshape(ids, (-1, full))                            # (B, L), L known even while tracing
        words = self.words(ids)                                                           # (B, L, w)
        seen = ops.logical_and(attention.causal_mask(full)[None], ops.not_equal(ids, self.pad_id)[:, None, :])
        seen = ops.cast(seen, words.dtype)                   # (B, L, L): seen[b, t, s]: position t reads word s
        # The network at position t reads the words 0..t: the same word projections, masked
        # per position, so they are computed once and the rows (one per position) share them.
        # words_so_far is encoders.masked_mean_pool of the words under each position's mask,
        # all positions in one matmul.
        grounding = self.relation.ground(objects, words)[:, None] * seen[:, :, None, :]  # (B, L, K, L)
        words_so_far = ops.matmul(seen, words) / ops.maximum(ops.sum(seen, axis=-1, keepdims=True), 1.0)  # (B, L, w)
        objects_rows = ops.reshape(ops.repeat(objects[:, None], full, axis=1), (-1,) + tuple(objects.shape[1:]))
        fused = self.relation.score_pairs(objects_rows, ops.reshape(grounding, (-1,) + tuple(grounding.shape[2:])),
                                          self.context(ops.reshape(words_so_far, (-1, self.width))),
                                          objects_rows[..., -1:])                         # (B L, 2w)
        scores = self.scores(self.hidden(fused))                                          # (B L, V)
        return ops.reshape(scores, (batch, full, self.vocab_size))[:, :length]

    def get_config(self):
        return {**super().get_config(), "vocab_size": self.vocab_size, "max_text_length": self.max_text_length,
                "width": self.width, "pad_id": self.pad_id}
