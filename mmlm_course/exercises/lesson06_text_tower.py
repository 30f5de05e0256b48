"""Checks for lesson 06, the text tower (`06.text_tower`): the learner's Keras layer.

The expected embeddings come from the check's own forward pass through layers it rebuilds
from the settings and weights of the learner's sub-layers (`layers.rebuild_layer`, which
the checks of lesson 03's block and lesson 07's decoder use too). The other checks of
lesson 06 are in `lesson06`.
"""

from __future__ import annotations

import re
import types
import warnings

import keras
import numpy as np
from keras import ops

from mmlm_course import attention, encoders, losses
from mmlm_course.exercises import Checker, exercise
from mmlm_course.exercises.checker import error_message
from mmlm_course.exercises.layers import (add_positions, expect_layer_class, instantiate, layer_output,
                                          layer_snapshot, output_data, randomise_weights, rebuild_layer)


# --------------------------------------------------------------------------- 06.text_tower

_TOWER_PARTS = ("token_embedding", "position_embedding", "block", "final_norm", "projection")
_VOCAB, _MAX_LENGTH, _WIDTH, _EMBED, _HEADS = 12, 8, 16, 6, 2
# five captions padded to T = 8 (0 = padding): 5, 3, 4, 8 and 1 real tokens; a word repeated in row 3
_TOWER_IDS = ((3, 7, 2, 9, 4, 0, 0, 0), (5, 11, 6, 0, 0, 0, 0, 0), (8, 2, 10, 3, 0, 0, 0, 0),
              (4, 4, 9, 1, 7, 2, 6, 11), (6, 0, 0, 0, 0, 0, 0, 0))
_TOWER_LABEL = ("TextTower(12, 8, width=16, embed_dim=6, num_heads=2) with random weights, called on token_ids "
                "(5, 8), on its first three rows cut to (3, 5) and on row 1 alone (1, 8)")
_NEVER_CALLED = types.MappingProxyType({
    "token_embedding": "start from the token embeddings: self.token_embedding(token_ids)",
    "position_embedding": "the embedding ignores word order: add the position embeddings (self.position_embedding) "
                          "to the token embeddings before the block",
    "block": "run the Transformer block (self.block) on the embeddings, with the padding mask",
    "final_norm": "a pre-norm block leaves its output un-normalised: apply self.final_norm before pooling",
    "projection": "project the pooled vector into the shared space with self.projection before normalising",
})


class _TowerParts(keras.layers.Layer):
    """The sub-layers of the text tower, exactly as the notebook's ``__init__`` creates them."""

    def __init__(self, vocab_size, max_length, width=64, embed_dim=128, num_heads=4, **kwargs):
        super().__init__(**kwargs)
        self.token_embedding = keras.layers.Embedding(vocab_size, width)
        self.position_embedding = encoders.PositionEmbedding(max_length, width)
        self.block = attention.TransformerBlock(width, num_heads, 2 * width)
        self.final_norm = keras.layers.LayerNormalization(epsilon=1e-5)
        self.projection = keras.layers.Dense(embed_dim)


def _tower_forward(t, token_ids, positions=True, block_mask=True, final_norm=True, pooling="real",
                   normalise="last"):
    """The text tower from ``t``'s sub-layers; the keywords switch on one typical mistake each."""
    mask = ops.not_equal(token_ids, 0)                                  # (B, T) True on real tokens
    x = t.token_embedding(token_ids)                                    # (B, T, width)
    if positions:
        x = add_positions(t.position_embedding, x)
    x = t.block(x, mask=mask if block_mask else None)
    if final_norm:
        x = t.final_norm(x)
    if pooling == "real":
        x = encoders.masked_mean_pool(x, mask)                          # (B, width)
    elif pooling == "all":
        x = ops.mean(x, axis=1)
    else:                                                               # "length": masked sum / T
        x = ops.sum(x * ops.expand_dims(ops.cast(mask, x.dtype), -1), axis=1) / x.shape[1]
    if normalise == "first":
        return t.projection(losses.l2_normalize(x))
    x = t.projection(x)                                                 # (B, embed_dim)
    return {"last": losses.l2_normalize, "none": lambda z: z,
            "batch": lambda z: losses.l2_normalize(z, axis=0)}[normalise](x)


class _ReferenceTower(_TowerParts):
    def call(self, token_ids):
        return _tower_forward(self, token_ids)


def _token_sequence(t, token_ids):
    """Mistake: no pooling, one unit vector per token (B, T, embed_dim)."""
    x = t.final_norm(t.block(t.position_embedding(t.token_embedding(token_ids)), mask=ops.not_equal(token_ids, 0)))
    return losses.l2_normalize(t.projection(x))


def _numpy_tower(t, token_ids):
    """Mistake: NumPy inside call (right values eagerly, fails on a symbolic input)."""
    mask = np.asarray(token_ids) != 0
    x = t.final_norm(t.block(add_positions(t.position_embedding, t.token_embedding(token_ids)), mask=mask))
    x = np.asarray(x)
    pooled = (x * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)
    z = np.asarray(t.projection(pooled))
    return z / np.linalg.norm(z, axis=-1, keepdims=True)


def _tower_mistake(**flags):
    forward = flags.pop("forward", None) or (lambda self, ids: _tower_forward(self, ids, **flags))
    return type("MistakenTower", (_TowerParts,), {"call": lambda self, token_ids: forward(self, token_ids)})


# (switches of _tower_forward, what the output then shows, hint): tried in order to explain a difference
_TOWER_DIAGNOSES = (
    (types.MappingProxyType(dict(normalise="none")), "the rows are not unit vectors",
     "divide each embedding by its own L2 norm (over its features, axis=-1) so that a dot product is a cosine"),
    (types.MappingProxyType(dict(normalise="batch")), "each column has length 1, not each row",
     "normalise every embedding over its features (axis=-1), not over the batch (axis=0)"),
    (types.MappingProxyType(dict(normalise="first")), "the rows are not unit vectors",
     "L2 normalisation is the last step: normalise the projection's output, not its input"),
    (types.MappingProxyType(dict(pooling="all")), "the embedding changes when padding is removed",
     "the mean includes the padding positions: average only the real tokens (token_ids != 0)"),
    (types.MappingProxyType(dict(pooling="length")), "the embedding changes when padding is removed",
     "divide the masked sum by each caption's number of real tokens, not by the padded length T"),
    (types.MappingProxyType(dict(block_mask=False)), "the embedding changes when padding is removed",
     "the block's attention reads the padding: pass the padding mask to self.block (mask=...)"),
)


@exercise(
    "06.text_tower",
    reference=_ReferenceTower,
    mistakes={
        "forgets the L2 normalisation": _tower_mistake(normalise="none"),
        "L2-normalises over the batch axis": _tower_mistake(normalise="batch"),
        "L2-normalises before the projection": _tower_mistake(normalise="first"),
        "pools over padding (plain mean over time)": _tower_mistake(pooling="all"),
        "divides by the padded length T, not the number of real tokens": _tower_mistake(pooling="length"),
        "the block ignores the padding mask": _tower_mistake(block_mask=False),
        "no position embeddings (order-blind)": _tower_mistake(positions=False),
        "skips the final LayerNorm": _tower_mistake(final_norm=False),
        "returns one vector per token (no pooling)": _tower_mistake(forward=_token_sequence),
        "NumPy inside call": _tower_mistake(forward=_numpy_tower),
        "the final LayerNorm after pooling": type("LateNormTower", (_TowerParts,), {"call": lambda self, ids: (
            losses.l2_normalize(self.projection(self.final_norm(encoders.masked_mean_pool(
                self.block(self.position_embedding(self.token_embedding(ids)), mask=ops.not_equal(ids, 0)),
                ops.not_equal(ids, 0))))))}),
    },
)
def _check_text_tower(c: Checker) -> None:
    result = c.scenario(_TOWER_LABEL, _run_tower)
    expect_layer_class(c, result, "TextTower")
    missing = [name for name in _TOWER_PARTS if result["parts"].get(name) is None]
    if missing:
        c.fail("the tower's layers", f"missing {missing}",
               "keep the layers that __init__ creates (" + ", ".join(_TOWER_PARTS) + ") and write call()")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _compare_tower(c, result)
    if result.get("symbolic"):
        c.fail("the tower called on a symbolic keras.Input (as in a functional model, or inside fit)",
               f"call failed: {result['symbolic']}",
               "write call with keras.ops (ops.not_equal, ops.cast, ops.sum, ...), not NumPy: a symbolic tensor "
               "has no values for NumPy to read")
    c.passed.append("works on a symbolic input")


def _run_tower(candidate):
    """Scenario: build the learner's tower, give its layers random weights, run it on three batches."""
    ids = np.array(_TOWER_IDS, np.int32)
    with warnings.catch_warnings():              # Keras' build warnings about a wrong answer's unused layers
        warnings.simplefilter("ignore")
        tower = instantiate(candidate, _VOCAB, _MAX_LENGTH, width=_WIDTH, embed_dim=_EMBED, num_heads=_HEADS)
        if isinstance(tower, str):
            return tower
        tower(ids[:, :6])                        # builds the layers that call() uses
        parts = {name: getattr(tower, name, None) for name in _TOWER_PARTS}
        parts = {name: part if isinstance(part, keras.layers.Layer) else None for name, part in parts.items()}
        randomise_weights([part for part in parts.values() if part is not None], seed=63)
        snapshots = {name: None if part is None else layer_snapshot(part) for name, part in parts.items()}
        outputs = {"full": tower(ids), "short": tower(ids[:3, :5]), "one": tower(ids[1:2])}
        report = {"parts": snapshots, "outputs": {key: output_data(value) for key, value in outputs.items()}}
        try:                                     # symbolic input, as in a functional model or fit's graph
            tower(keras.Input((_MAX_LENGTH,), dtype="int32"))
            report["symbolic"] = None
        except Exception as error:               # NumPy in call: a symbolic tensor has no values
            report["symbolic"] = _symbolic_error(error)
        return report


def _symbolic_error(error: Exception) -> str:
    """The cause of a failed symbolic call in one line, without Keras' wrapping (which names the layer)."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(error))
    if "Error encountered:" in text:             # Keras' "Could not automatically infer the output shape ..."
        cause = text.split("Error encountered:", 1)[1].split("Arguments received by", 1)[0]
        lines = [line.strip() for line in cause.splitlines() if line.strip()]
        if lines:
            return lines[0][:300]
    return f"{type(error).__name__}: {error_message(error)}"


def _compare_tower(c: Checker, result: dict) -> None:
    for name in _TOWER_PARTS:
        if not result["parts"][name].get("built"):
            c.fail(f"self.{name}", "is never called", _NEVER_CALLED[name])
    tower = types.SimpleNamespace(**{name: rebuild_layer(c, f"self.{name}", result["parts"][name])
                                     for name in _TOWER_PARTS})
    ids = np.array(_TOWER_IDS, np.int32)
    what = f"embeddings of token_ids {ids.shape} (random weights)"
    outputs = result["outputs"]
    got = layer_output(c, what, outputs["full"], (len(ids), _EMBED),
                       "one vector per caption: pool the tokens over the time axis (axis=1), then project: "
                       "(batch, embed_dim)")
    if not np.isfinite(got).all():
        c.fail(what, f"row {int(np.argmax(~np.isfinite(got).all(axis=1)))} contains NaN or inf",
               "divide only by quantities that cannot be 0: every caption here has at least one real token")
    lengths = np.linalg.norm(got, axis=1)
    if not np.allclose(lengths, 1.0, atol=1e-4):
        _diagnose(c, tower, ids, got, what, f"row lengths from {lengths.min():.3g} to {lengths.max():.3g}, not 1",
                  "end with an L2 normalisation of each row (axis=-1), after the projection")
    c.passed.append("every embedding has length 1")
    short = layer_output(c, "embeddings of token_ids (3, 5)", outputs["short"], (3, _EMBED),
                         "one vector per caption: (batch, embed_dim)")
    if not np.allclose(short, got[:3], atol=1e-4, rtol=1e-4):
        row = int(np.argmax(np.abs(short - got[:3]).max(axis=1)))
        _diagnose(c, tower, ids, got, "captions padded to T = 8 and to T = 5",
                  f"the embedding of caption {row} changes when padding is removed",
                  "padding must not change a caption's embedding: give the block the padding mask "
                  "(token_ids != 0) and average only the real tokens")
    c.passed.append("padding does not change an embedding")
    one = layer_output(c, "embedding of a batch of one caption", outputs["one"], (1, _EMBED),
                       "one vector per caption: (batch, embed_dim)")
    if not np.allclose(one[0], got[1], atol=1e-4, rtol=1e-4):
        _diagnose(c, tower, ids, got, "caption 1 alone and in a batch of five",
                  "the embedding depends on the other captions of the batch",
                  "every step works on one caption at a time: normalise and average within each row")
    c.passed.append("an embedding does not depend on the batch")
    expected = np.asarray(ops.convert_to_numpy(_tower_forward(tower, ids)), np.float64)
    if not np.allclose(got, expected, atol=1e-4, rtol=1e-4):
        _diagnose(c, tower, ids, got, what, f"values differ (caption {int(np.argmax(np.abs(got - expected).max(1)))})",
                  "token embeddings + positions -> self.block(x, mask=mask) -> self.final_norm -> mean over the "
                  "real tokens -> self.projection -> L2 normalisation; use each layer once, in this order")
    c.passed.append(f"{what} values")


def _diagnose(c: Checker, tower, token_ids, got: np.ndarray, what: str, message: str, hint: str) -> None:
    """Fail with the hint of the typical mistake that ``got`` equals, else with ``message`` and ``hint``."""
    for flags, seen, specific in _TOWER_DIAGNOSES:
        wrong = np.asarray(ops.convert_to_numpy(_tower_forward(tower, token_ids, **flags)), np.float64)
        if np.allclose(got, wrong, atol=1e-4, rtol=1e-4):
            c.fail(what, seen, specific)
    c.fail(what, message, hint)
