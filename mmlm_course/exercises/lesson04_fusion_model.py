"""Checks for lesson 04, the fusion model (`04.fusion_model`): the learner's Keras model.

The scenario builds the model, calls it on probe inputs and trains it on a toy task; the check
reads only the logits it returns. The other checks of lesson 04 are in `lesson04`.
"""

from __future__ import annotations

import types

import keras
import numpy as np

from mmlm_course.exercises import Checker, exercise
from mmlm_course.exercises.checker import error_message


# --------------------------------------------------------------------------- 04.fusion_model
# The scenario builds the learner's model, calls it on probes and trains it on a toy task; the check
# reads only the logits (plain arrays) it returns.

_SIZES = (3, 6, 5, 6, 6)              # num_objects, num_features, question_length, vocab_size, num_answers
_HOW_MANY, _WHAT_COLOR = (1, 2, 0, 0, 0), (3, 4, 5, 0, 0)  # "how many objects ?", "what color are ..."
_REPEATED, _SINGLE = (4, 4, 4, 0, 0), (4, 0, 0, 0, 0)       # one word three times, and once
_PAIR, _PAIR_REPEATED = (3, 5, 0, 0, 0), (3, 5, 5, 0, 0)    # two words, then the second one again: a new mean
_FUSION_LABELS = ("fusion_model(3, 6, 5, 6, 6) called on {'objects': float32 (8, 3, 6), 'token_ids': int32 (8, 5)}",
                  "fusion_model(3, 6, 5, 6, 6) trained with fit on a toy task")
_STAGE_HINTS = types.MappingProxyType({
    "building": "fusion_model(num_objects, num_features, question_length, vocab_size, num_answers) returns a Keras "
                "model (or pass your keras.Model subclass)",
    "calling": "the model takes one dict with the keys 'objects' and 'token_ids' (name your keras.Input layers so)",
    "training": "build the model from Keras layers (keras.layers / keras.ops) so that fit can train it",
})


def _toy_task(seed: int, count: int) -> tuple[dict, np.ndarray]:
    """A scene question-answering task that needs the image *and* the question.

    Each scene holds 1-3 objects of one colour (features: colour one-hot (3), shape
    one-hot (2), objectness), in random slots of 3; the question asks "how many?"
    (answers 0-2: one, two, three) or "what colour?" (answers 3-5).
    """
    rng = np.random.default_rng(seed)
    slots, features = _SIZES[0], _SIZES[1]
    number = rng.integers(1, slots + 1, count)
    color = rng.integers(0, 3, count)
    objects = np.zeros((count, slots, features), np.float32)
    for i in range(count):
        for slot in rng.permutation(slots)[:number[i]]:
            objects[i, slot, [color[i], 3 + rng.integers(0, 2), 5]] = 1.0
    ask_number = rng.random(count) < 0.5
    token_ids = np.where(ask_number[:, None], _HOW_MANY, _WHAT_COLOR).astype(np.int32)
    answers = np.where(ask_number, number - 1, 3 + color).astype(np.int32)
    return {"objects": objects, "token_ids": token_ids}, answers


def _fusion_probes() -> dict:
    held_out, _ = _toy_task(1, 240)
    probe = {name: values[:8] for name, values in held_out.items()}
    other = np.where((probe["token_ids"] == _HOW_MANY).all(-1, keepdims=True), _WHAT_COLOR, _HOW_MANY)
    question = lambda ids: {"objects": probe["objects"], "token_ids": np.tile(np.int32(ids), (8, 1))}  # noqa: E731
    alone = np.zeros_like(probe["objects"])                 # one object per scene, in slot 0
    alone[:, 0] = probe["objects"][np.arange(8), probe["objects"][..., 5].argmax(-1)]
    twice = alone.copy()
    twice[:, 1] = alone[:, 0]                               # and the same object again in slot 1
    pair = np.zeros_like(probe["objects"])                  # two different objects in slots 0 and 1 ...
    pair[:, 0], pair[:, 1] = alone[:, 0], 0.5 * np.roll(alone[:, 0], 1, axis=0) + np.float32(0.25)
    blend = pair.copy()                                     # ... and twice their average: the same mean object
    blend[:, 0] = blend[:, 1] = 0.5 * (pair[:, 0] + pair[:, 1])
    scenes = np.roll(probe["objects"], 1, axis=0)
    empty = np.zeros_like(probe["objects"])                 # no object: every feature 0
    return {"probe": probe, "objects changed": {**probe, "objects": scenes},
            "question changed": {**probe, "token_ids": other.astype(np.int32)},
            "empty scene": {**probe, "objects": empty},
            "empty scene, question changed": {"objects": empty, "token_ids": other.astype(np.int32)},
            "both changed": {"objects": scenes, "token_ids": other.astype(np.int32)},
            "slots reordered": {**probe, "objects": probe["objects"][:, ::-1] + 0.0},
            "one object": {**probe, "objects": alone}, "the object twice": {**probe, "objects": twice},
            "two objects": {**probe, "objects": pair}, "their average twice": {**probe, "objects": blend},
            "repeated word": question(_REPEATED), "single word": question(_SINGLE),
            "two words": question(_PAIR), "second word repeated": question(_PAIR_REPEATED)}


def _wrapped(model, num_objects: int):
    """A Keras model as is; a layer that takes the dict, wrapped in one (to train it)."""
    if isinstance(model, keras.Model) or not isinstance(model, keras.layers.Layer):
        return model
    inputs = {"objects": keras.Input((num_objects, _SIZES[1]), name="objects"),
              "token_ids": keras.Input(_SIZES[2:3], dtype="int32", name="token_ids")}
    return keras.Model(inputs, model(inputs))


def _layer_kinds(layer) -> set[str]:
    """The class names of ``layer``'s layers, nested models' included."""
    kinds = set()
    for inner in getattr(layer, "layers", []):
        kinds |= {type(inner).__name__} | _layer_kinds(inner)
    return kinds


def _fusion_steps(train: bool):
    """The scenario (runs the learner's code): the model's logits on the probes, or before and after training."""
    def steps(build) -> dict:
        report, stage = {}, "building"
        try:
            keras.utils.set_random_seed(0)                # the same initial weights on every run
            model = build(*_SIZES)
            if not isinstance(model, keras.layers.Layer):
                return {"not a model": type(model).__name__}
            model = _wrapped(model, _SIZES[0])
            stage = "calling"
            if not train:
                report["logits"] = {name: model(inputs, training=False) for name, inputs in _fusion_probes().items()}
                report["layers"] = sorted(_layer_kinds(model))
                stage = "building"                        # the same weights for twice the slots
                keras.utils.set_random_seed(0)
                wide = _wrapped(build(2 * _SIZES[0], *_SIZES[1:]), 2 * _SIZES[0])
                stage = "calling"
                probe = _fusion_probes()["probe"]
                report["slots doubled"] = wide({**probe, "objects": np.tile(probe["objects"], (1, 2, 1))},
                                               training=False)
                return report
            (train_inputs, train_answers), (held_out, _) = _toy_task(0, 512), _toy_task(1, 240)
            report["before"] = model(held_out, training=False)
            stage = "training"
            model.compile(optimizer=keras.optimizers.Adam(5e-3),
                          loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), jit_compile=False)
            model.fit(train_inputs, train_answers, batch_size=32, epochs=10, verbose=0)
            report["after"] = model(held_out, training=False)
        except NotImplementedError:
            raise
        except Exception as error:                        # the learner's model: its error, in one line
            report["error"] = (stage, f"{type(error).__name__}: {error_message(error)}")
        return report
    return steps


def _fusion_answer(image: str = "mean", question: str = "masked mean", head: str | None = None,
                   answers: int | None = None, names=("objects", "token_ids"), object_activation="relu",
                   hidden_activation="relu", hidden: bool = True, fuse: str = "concatenate"):
    """The notebook's concatenation model; each argument other than its default names a mistake."""
    def fusion_model(num_objects, num_features, question_length, vocab_size, num_answers):
        objects = keras.Input((num_objects, num_features), name=names[0])
        token_ids = keras.Input((question_length,), dtype="int32", name=names[1])
        parts = []
        if image in ("mean", "max", "flatten"):
            pool = {"mean": keras.layers.GlobalAveragePooling1D, "max": keras.layers.GlobalMaxPooling1D,
                    "flatten": keras.layers.Flatten}[image]()
            parts.append(pool(keras.layers.Dense(32, activation=object_activation)(objects)))
        elif image == "sum":
            parts.append(keras.layers.Lambda(lambda x: keras.ops.sum(x, axis=1))(
                keras.layers.Dense(32, activation=object_activation)(objects)))
        elif image == "raw mean":
            parts.append(keras.layers.GlobalAveragePooling1D()(objects))
        elif image == "feature axis":  # one number per object slot: which colour is lost
            parts.append(keras.layers.Dense(32, activation="relu")(keras.layers.GlobalAveragePooling1D(
                data_format="channels_first")(objects)))
        elif image == "first object":
            parts.append(keras.layers.Dense(32, activation="relu")(keras.layers.Cropping1D((0, num_objects - 1))(
                objects))[:, 0])
        if question:
            words = keras.layers.Embedding(vocab_size, 32, mask_zero=question in ("masked mean", "max"))(token_ids)
            pool = {"flatten": keras.layers.Flatten, "max": keras.layers.GlobalMaxPooling1D}.get(
                question, keras.layers.GlobalAveragePooling1D)
            parts.append(pool()(words))
        join = {"concatenate": keras.layers.Concatenate, "multiply": keras.layers.Multiply,
                "add": keras.layers.Add}[fuse]
        fused = join()(parts) if len(parts) > 1 else parts[0]
        features = keras.layers.Dense(64, activation=hidden_activation)(fused) if hidden else fused
        output = keras.layers.Dense(answers or num_answers, activation=head)(features)
        if names != ("objects", "token_ids"):              # a list of inputs is matched to the dict by name
            return keras.Model([objects, token_ids], output)
        return keras.Model({"objects": objects, "token_ids": token_ids}, output)  # an unused input is allowed
    return fusion_model


def _cross_entropy(logits: np.ndarray, answers: np.ndarray) -> float:
    logits = logits.astype(np.float64) - logits.max(-1, keepdims=True)
    log_p = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    return float(-log_p[np.arange(len(answers)), answers].mean())


@exercise(
    "04.fusion_model",
    reference=_fusion_answer(),
    mistakes={
        "ignores the image (a question-only model)": _fusion_answer(image=""),
        "ignores the question (an image-only model)": _fusion_answer(question=""),
        "ends with a softmax: returns probabilities, not logits": _fusion_answer(head="softmax"),
        "ends with a ReLU: logits are never negative": _fusion_answer(head="relu"),
        "always returns 17 logits, whatever num_answers is": _fusion_answer(answers=17),
        "averages each object over its features instead of over the objects": _fusion_answer(image="feature axis"),
        "reads only the first object slot": _fusion_answer(image="first object"),
        "max-pools the objects (cannot count them)": _fusion_answer(image="max"),
        "averages the padding into the question vector (no mask_zero)": _fusion_answer(question="plain mean"),
        "flattens the word embeddings instead of averaging them": _fusion_answer(question="flatten"),
        "max-pools the real words instead of averaging them": _fusion_answer(question="max"),
        "a list of inputs named 'image' and 'question'": _fusion_answer(names=("image", "question")),
        "flattens the object tokens instead of averaging them": _fusion_answer(image="flatten"),
        "no ReLU on the object tokens' Dense layer": _fusion_answer(object_activation=None),
        "averages the raw objects (no Dense layer on the objects)": _fusion_answer(image="raw mean"),
        "no ReLU on the hidden layer": _fusion_answer(hidden_activation=None),
        "no hidden layer: the logits read the concatenation": _fusion_answer(hidden=False),
        "sums the object tokens instead of averaging them": _fusion_answer(image="sum"),
        "multiplies the image and question vectors instead of concatenating them": _fusion_answer(fuse="multiply"),
        "adds the image and question vectors instead of concatenating them": _fusion_answer(fuse="add"),
    },
)
def _check_fusion_model(c: Checker) -> None:
    report = _fusion_report(c, c.scenario(_FUSION_LABELS[0], _fusion_steps(train=False)))
    logits = report["logits"]
    num_answers = _SIZES[4]
    probe = c.expect_array("logits", logits["probe"], (8, num_answers),
                           hint="one logit per answer: the last Dense layer has num_answers units (here "
                                f"{num_answers}), and the batch axis stays")
    if probe.dtype.kind != "f":
        c.fail("logits", f"expected floating-point logits, got dtype {probe.dtype}", "end with a Dense layer")
    if np.all(probe >= 0) and np.allclose(probe.sum(-1), 1.0, atol=1e-4):
        c.fail("logits", "every row is non-negative and sums to 1, so these are probabilities",
               "end with a Dense layer without activation: the loss (from_logits=True) applies the softmax")
    c.passed.append("logits, not probabilities")
    for name, what, hint in (
            ("objects changed", "image input", "pool the object tokens into an image vector and concatenate it "
                                               "with the question vector"),
            ("question changed", "question input", "embed the token ids, average the real words into a question "
                                                   "vector and concatenate it")):
        changed = c.expect_array(f"logits when the {what} changes", logits[name], probe.shape)
        if np.allclose(changed, probe, atol=1e-6):
            c.fail(what, f"the logits do not change when the {what.split()[0]}s change", hint)
        c.passed.append(f"uses the {what}")
    both = c.expect_array("logits when the images and the questions change", logits["both changed"], probe.shape)
    interaction = probe - c.expect_array("logits", logits["objects changed"], probe.shape) \
        - c.expect_array("logits", logits["question changed"], probe.shape) + both
    if np.abs(interaction).max() <= 1e-5 * (1.0 + np.abs(probe).max()):
        c.fail("fusion", "changing the question shifts the logits by the same amount whatever the scene: the image "
                         "and the question only add up, so the answer to one cannot depend on the other",
               "after the concatenation, a hidden Dense layer with a ReLU, then the Dense layer of the logits")
    c.passed.append("the head mixes image and question non-linearly")
    empty = c.expect_array("logits for empty scenes (every object feature 0)", logits["empty scene"], probe.shape)
    if np.allclose(c.expect_array("logits", logits["empty scene, question changed"], probe.shape), empty, atol=1e-6):
        c.fail("fusion", "for an empty scene (every object feature 0, so a zero image vector) the logits do not "
                         "change with the question: the two vectors are multiplied, not concatenated",
               "concatenate the image vector and the question vector, so each reaches the hidden layer on its own")
    kinds = report.get("layers", [])
    if "Add" in kinds and "Concatenate" not in kinds:
        c.fail("fusion", "the model adds the image and question vectors (keras.layers.Add): the sum mixes them into "
                         "one vector before any layer can weigh them apart",
               "the exercise fuses by concatenation: keras.layers.Concatenate()([image_vector, question_vector])")
    c.passed.append("the image and question vectors are concatenated")
    once = c.expect_array("logits for scenes of one object", logits["one object"], probe.shape)
    if np.allclose(c.expect_array("logits", logits["the object twice"], probe.shape), once, atol=1e-6):
        c.fail("image vector", "the logits do not change when a copy of the scene's object fills an empty slot, so "
                               "the model cannot count the objects",
               "the image vector is the mean over the object slots (axis 1), which, unlike the max, changes with "
               "the number of objects")
    c.passed.append("the image vector counts the objects")
    reordered = c.expect_array("logits with the object slots in reverse order", logits["slots reordered"], probe.shape)
    if not np.allclose(reordered, probe, atol=1e-5, rtol=1e-5):
        c.fail("image vector", "the logits change when the same objects sit in other slots (slots reversed)",
               "pool the object tokens with a mean over the slots (axis 1), which does not depend on their order; "
               "Flatten or a fixed slot keeps the order")
    c.passed.append("the object order does not matter")
    doubled = c.expect_array(f"logits of fusion_model({2 * _SIZES[0]}, ...) for the scenes with their slots given "
                             "twice", report["slots doubled"], probe.shape)
    if not np.allclose(doubled, probe, atol=1e-5, rtol=1e-5):
        c.fail("image vector", f"built for {2 * _SIZES[0]} slots (the same weights) and given each scene's "
                               f"{_SIZES[0]} slots twice over, the model answers differently",
               "average over the object slots: a mean, unlike a sum or Flatten, is the same for a scene and for "
               "the scene repeated")
    c.passed.append("the image vector does not grow with the number of slots")
    pair = c.expect_array("logits for scenes of two different objects", logits["two objects"], probe.shape)
    if np.allclose(c.expect_array("logits", logits["their average twice"], probe.shape), pair, atol=1e-5, rtol=1e-5):
        c.fail("image vector", "two different objects give the same logits as two copies of their average, so the "
                               "objects are combined linearly before any non-linearity",
               "give every object token its own Dense layer with ReLU first, then take the mean over the objects")
    c.passed.append("a non-linear layer reads every object before the mean")
    repeated = c.expect_array("logits for a question of one repeated word", logits["repeated word"], probe.shape)
    if not np.allclose(repeated, c.expect_array("logits", logits["single word"], probe.shape), atol=1e-5, rtol=1e-5):
        c.fail("question vector", "the logits for the question 'w w w' differ from those for 'w' alone, whose mean "
                                  "of real words is the same",
               "the question vector is the mean over the real words only: the padding (id 0) must not count, "
               "and neither must word positions")
    pair = c.expect_array("logits for a question of two words", logits["two words"], probe.shape)
    if np.allclose(c.expect_array("logits", logits["second word repeated"], probe.shape), pair, atol=1e-6):
        c.fail("question vector", "the logits for 'x y y' equal those for 'x y', although their means of real "
                                  "words differ",
               "average the real words: a max over the words, or reading one word, does not change when a word "
               "is repeated")
    c.passed.append("the question is the mean of its real words")
    _check_training(c, _fusion_report(c, c.scenario(_FUSION_LABELS[1], _fusion_steps(train=True))))


def _fusion_report(c: Checker, report) -> dict:
    """The scenario's report, or the failure it describes (not a model, an error while building or calling)."""
    if not isinstance(report, dict):
        c.fail("your model", "it could not be read", _STAGE_HINTS["building"])
    if "not a model" in report:
        c.fail("your model", f"expected a Keras model, got {report['not a model']}",
               "return a Keras model: keras.Model(inputs, logits), or pass your keras.Model subclass itself")
    if "error" in report and report["error"][0] != "training":
        stage, message = report["error"]
        c.fail(f"{stage} your model", f"raised {message}", _STAGE_HINTS.get(stage, _STAGE_HINTS["building"]))
    return report


def _check_training(c: Checker, report: dict) -> None:
    if "error" in report:
        c.fail("training", f"model.fit raised {report['error'][1]}", _STAGE_HINTS["training"])
    _, answers = _toy_task(1, 240)
    before = c.expect_array("logits before training", report["before"], (len(answers), _SIZES[4]))
    after = c.expect_array("logits after training", report["after"], before.shape)
    if np.all(before >= 0) and np.all(after >= 0):
        c.fail("logits", "they are never negative, before or after training",
               "end with a Dense layer without activation: a logit can be any real number")
    loss_before, loss_after = _cross_entropy(before, answers), _cross_entropy(after, answers)
    accuracy = float(np.mean(after.argmax(-1) == answers))
    if not loss_after < loss_before:
        c.fail("training", f"the held-out loss did not go down ({loss_before:.3f} -> {loss_after:.3f})",
               "the model must be trainable: Dense / Embedding layers, no softmax at the end")
    c.passed.append("loss goes down")
    if accuracy < 0.85:
        c.fail("training", f"after training on 'how many?' / 'what colour?' it answers {accuracy:.0%} of the held-out "
                           "questions right, expected at least 85%",
               "mean-pool the object features over the objects (axis 1, so every slot counts and colours survive); "
               "concatenate with the question vector, then a hidden Dense layer with ReLU and the logits")
    c.passed.append("learns a task that needs both modalities")
