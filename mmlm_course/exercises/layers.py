"""A learner's Keras layers as plain data, and rebuilt by a check.

Where an exercise asks for a layer or a model class (03's block, 06's text tower, 07's decoder), the
check may not touch the learner's objects (see `Checker`). Its scenario therefore makes the learner's
class (`instantiate`), gives the sub-layers seeded random weights (`randomise_weights`) and hands
back each sub-layer as plain data (`layer_snapshot`: its class, whether it was called, its settings and
weights) with the outputs (`output_data`). The check side rebuilds the sub-layers from those snapshots
(`rebuild_layer`, known classes only) and computes the expected forward pass itself, so any sizes the
learner picks pass, and the learner's code never runs there.
"""

from __future__ import annotations

import types

import keras
import numpy as np
from keras import ops

from mmlm_course import attention, encoders
from mmlm_course.exercises import plain
from mmlm_course.exercises.checker import Checker, error_message


def _class_name(cls) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _shown(cls) -> str:
    """A class as the notes write it: keras.layers.Dense, attention.MultiHeadAttention."""
    if cls.__module__.split(".")[0] == "keras":
        return f"keras.layers.{cls.__qualname__}"
    return f"{cls.__module__.rsplit('.', 1)[-1]}.{cls.__qualname__}"


# The classes a check rebuilds, with the settings that change what a layer computes (initialisers,
# regularisers and names do not: the weights are set) and the width of the features it reads, from
# its settings and weights (None: an embedding, built without an input shape).
_REBUILDABLE = types.MappingProxyType({_class_name(cls): (cls, keys, width) for cls, keys, width in (
    (keras.layers.Embedding, ("input_dim", "output_dim", "mask_zero"), None),
    (encoders.PositionEmbedding, ("max_length", "embed_dim"), None),
    (keras.layers.Dense, ("units", "activation", "use_bias"), lambda config, weights: weights[0].shape[0]),
    (keras.layers.LayerNormalization, ("axis", "epsilon", "center", "scale", "rms_scaling"),
     lambda config, weights: weights[0].shape[-1] if weights else 1),
    (attention.MultiHeadAttention, ("num_heads", "key_dim", "value_dim", "output_dim", "use_bias", "use_causal_mask"),
     lambda config, weights: weights[0].shape[0]),
    (attention.TransformerBlock, ("embed_dim", "num_heads", "mlp_dim", "causal"),
     lambda config, weights: config["embed_dim"]),
)})
_ACTIVATIONS = frozenset({"linear", "relu", "gelu", "silu", "swish", "tanh", "sigmoid", "elu", "selu", "softplus",
                          "leaky_relu", "relu6", "mish"})


# --------------------------------------------------------------------------- scenario side (the learner's code runs)


def instantiate(candidate, *args, **kwargs):
    """The learner's class called with ``args``: the layer it makes, or in words what came instead
    ("an instance" where the answer is a layer already); `expect_layer_class` reads the words."""
    if isinstance(candidate, keras.layers.Layer):
        return "an instance"
    layer = candidate(*args, **kwargs)
    return layer if isinstance(layer, keras.layers.Layer) else f"a {type(layer).__name__}"


def randomise_weights(layers, seed: int) -> None:
    """Seeded random weights (scale 0.5) on every built layer of a known class, so that LayerNorm and
    the biases matter."""
    rng = np.random.default_rng(seed)
    for layer in layers:
        if _class_name(type(layer)) in _REBUILDABLE and layer.built:
            layer.set_weights([rng.normal(scale=0.5, size=np.shape(w)).astype(np.asarray(w).dtype)
                               for w in layer.get_weights()])


def layer_snapshot(layer) -> dict:
    """A sub-layer as plain data: its class, whether it was ever called (built) and, for a class the
    check can rebuild, its settings and weights (settings that are not plain data: None)."""
    name = _class_name(type(layer))
    snapshot = {"class": name, "built": bool(layer.built)}
    if name in _REBUILDABLE and layer.built:
        config = layer.get_config()
        try:
            snapshot["config"] = plain.to_plain({key: config[key] for key in _REBUILDABLE[name][1] if key in config})
        except plain.NotPlain:
            snapshot["config"] = None
        snapshot["dtype"] = str(layer.dtype_policy.name)
        snapshot["weights"] = [np.array(w) for w in layer.get_weights()]
    return snapshot


def output_data(value):
    """A layer's output as an array, or what it was instead."""
    if hasattr(value, "shape") and hasattr(value, "dtype"):
        return np.asarray(ops.convert_to_numpy(value))
    return f"a {type(value).__name__}"


# --------------------------------------------------------------------------- check side (plain data only)


def expect_layer_class(c: Checker, result, name: str, base: str = "keras.layers.Layer") -> None:
    """Fail in one line where the scenario's `instantiate` gave words instead of a layer."""
    if result == "an instance":
        c.fail("your answer", "expected the class itself, got an instance of it",
               f"pass the class, not an instance: check(\"{c.exercise_id}\", {name})")
    if isinstance(result, str):
        c.fail("your answer", f"{name}(...) returned {result}, not a {base}",
               f"pass the class that subclasses {base}: check(\"{c.exercise_id}\", {name})")


def _setting(key: str, value) -> bool:
    """Whether a recorded setting is one the check passes on to a layer: numbers, flags, an activation by name."""
    if key == "activation":
        return type(value) is str and value in _ACTIVATIONS
    if key == "axis":
        return type(value) is int or (type(value) in (list, tuple) and all(type(v) is int for v in value))
    return value is None or type(value) in (bool, int, float)


def _readable(snapshot: dict, keys: tuple) -> bool:
    config, weights, dtype = snapshot.get("config"), snapshot.get("weights"), snapshot.get("dtype")
    return (isinstance(config, dict) and not set(config) - set(keys) and all(_setting(*kv) for kv in config.items())
            and (dtype is None or type(dtype) is str) and isinstance(weights, list)
            and all(isinstance(w, np.ndarray) and w.dtype.kind == "f" for w in weights))


def rebuild_layer(c: Checker, what: str, snapshot, hint: str = "create it as the notes do and leave its weights "
                  "to Keras", reads: int | None = None, classes: tuple | None = None) -> keras.layers.Layer:
    """A new layer of a known class (one of ``classes`` where given) with a snapshot's settings and
    weights, built to read ``reads`` features where given (else as wide as its weights). Fails in one
    line: for a class it cannot rebuild, for settings it does not pass on, and (with ``hint``) where
    the weights do not fit."""
    known = [_class_name(cls) for cls in classes] if classes else list(_REBUILDABLE)
    name = snapshot.get("class", "?") if isinstance(snapshot, dict) else "?"
    if name not in known:
        shown = [_shown(_REBUILDABLE[k][0]) for k in known]
        c.fail(what, f"is a {str(name).rsplit('.', 1)[-1]} ({name}), which the check cannot rebuild",
               f"create it from the course's layers as the notes do ({', '.join(shown[:-1])} or {shown[-1]})")
    cls, keys, width = _REBUILDABLE[name]
    if not _readable(snapshot, keys):
        c.fail(what, "could not be rebuilt: the check reads numbers, flags and an activation given by name "
               f"({', '.join(sorted(_ACTIVATIONS))}), and float weights",
               "create it as the notes do, with activation=\"gelu\" (a name, not a function) where it has one")
    try:
        layer = cls(**snapshot["config"], dtype=snapshot.get("dtype"))
        layer.build(None if width is None else (None, None, reads or width(snapshot["config"], snapshot["weights"])))
        layer.set_weights(snapshot["weights"])
    except Exception as error:
        reading = f" to read {reads} features" if reads else ""
        c.fail(what, f"could not be rebuilt from its settings and weights{reading} ({type(error).__name__}: "
               f"{error_message(error)[:150]})", hint)
    return layer


def add_positions(layer, x):
    """x (B, T, d) plus the position embeddings of 0..T-1: a PositionEmbedding adds them itself, an
    Embedding looks them up."""
    if isinstance(layer, encoders.PositionEmbedding):
        return layer(x)
    return x + layer(ops.arange(ops.shape(x)[1]))[None]


def layer_output(c: Checker, what: str, value, shape: tuple, hint: str) -> np.ndarray:
    """A scenario's `output_data` as a float64 array of ``shape``, or a one-line failure."""
    if isinstance(value, str):
        c.fail(what, f"your call returned {value}, not an array", hint)
    return c.expect_array(what, value, shape, hint=hint).astype(np.float64)
