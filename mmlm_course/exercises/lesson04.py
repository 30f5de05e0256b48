"""Checks for lesson 04: fusing image and text features."""

from __future__ import annotations

import types

import keras
import numpy as np
from hypothesis import strategies as st

from mmlm_course import fusion
from mmlm_course.exercises import Checker, draw_cases, exercise
from mmlm_course.exercises.checker import _message


def _numpy(result):
    """Tensors (or tuples of them) from the package functions -> NumPy."""
    if isinstance(result, tuple):
        return tuple(np.asarray(r) for r in result)
    return np.asarray(result)


def _softmax(x, axis=-1):
    x = x - x.max(axis=axis, keepdims=True)
    e = np.exp(x)
    return e / e.sum(axis=axis, keepdims=True)


def _tokens(seed: int, batch: int, length: int, dim: int, scale: float = 1.0) -> np.ndarray:
    return (scale * np.random.default_rng(seed).normal(size=(batch, length, dim))).astype(np.float32)


_GAP_MASK = ((True, False, True, True, False), (False, True, False, False, True))   # True need not come first


def _mask(lengths, total: int) -> np.ndarray:
    return np.arange(total)[None, :] < np.asarray(lengths)[:, None]


def _drawn_lengths(count: int, min_length: int = 1, max_length: int = 6):
    """Deterministic (seed, batch, length, lengths) cases, every row with at least one real token."""
    shapes = st.tuples(st.integers(0, 2 ** 16), st.integers(1, 3), st.integers(min_length, max_length))
    cases = []
    for seed, batch, length in draw_cases(shapes, count):
        lengths = np.random.default_rng(seed).integers(1, length + 1, size=batch)
        cases.append((seed, batch, length, [int(n) for n in lengths]))
    return cases


# --------------------------------------------------------------------------- 04.concat_fusion


def _masked_text_mean(text_tokens, text_mask, count=None):
    total = (text_tokens * text_mask[..., None]).sum(1)
    return total / (text_mask.sum(1, keepdims=True) if count is None else count)


def _concat_mistake(image="mean", text="masked", order="image first"):
    def concat_fusion(image_tokens, text_tokens, text_mask):
        image_vector = image_tokens.mean(axis=1) if image == "mean" else image_tokens.mean(axis=-1)
        text_vector = {"masked": lambda: _masked_text_mean(text_tokens, text_mask),
                       "plain mean": lambda: text_tokens.mean(axis=1),
                       "padded length": lambda: _masked_text_mean(text_tokens, text_mask, text_tokens.shape[1]),
                       "batch count": lambda: _masked_text_mean(text_tokens, text_mask, text_mask.sum()),
                       "prefix": lambda: _masked_text_mean(text_tokens, np.arange(text_mask.shape[1])[None, :]
                                                           < text_mask.sum(1, keepdims=True)),
                       "feature axis": lambda: (text_tokens * text_mask[..., None]).sum(-1)
                       / text_mask.sum(1, keepdims=True)}[text]()
        parts = [image_vector, text_vector] if order == "image first" else [text_vector, image_vector]
        return np.concatenate(parts, axis=-1)
    return concat_fusion


@exercise(
    "04.concat_fusion",
    reference=lambda image_tokens, text_tokens, text_mask: _numpy(
        fusion.concat_fusion(image_tokens, text_tokens, text_mask)),
    mistakes={
        "averages the padding tokens too": _concat_mistake(text="plain mean"),
        "puts the text vector first": _concat_mistake(order="text first"),
        "averages over the feature axis instead of the positions": _concat_mistake(image="features",
                                                                                   text="feature axis"),
        "divides the text sum by the padded length": _concat_mistake(text="padded length"),
        "divides by the real tokens of the whole batch": _concat_mistake(text="batch count"),
        "averages the first `mask.sum()` tokens (assumes real tokens come first)": _concat_mistake(text="prefix"),
    },
)
def _check_concat_fusion(c: Checker) -> None:
    cases = [(0, 2, 5, 6, 4, 3, [4, 2]), (1, 3, 4, 3, 7, 5, [7, 1, 3]), (2, 1, 9, 8, 5, 8, [5]),
             (3, 2, 3, 4, 6, 2, [2, 6])]            # a batch of one, all real, the longest row not first
    for seed, batch, length, lengths in _drawn_lengths(6):
        cases.append((seed, batch, 1 + seed % 4, 1 + seed % 5, length, 1 + seed % 3, lengths))
    for seed, batch, n, d_image, t, d_text, lengths in cases:
        image = _tokens(seed, batch, n, d_image)
        text = _tokens(seed + 10, batch, t, d_text)
        mask = _mask(lengths, t)
        text[~mask] = 100.0  # padding rows hold junk that must not leak into the mean
        got = c.call(image, text, mask)
        expected = np.concatenate([image.astype(np.float64).mean(1), _masked_text_mean(text.astype(np.float64), mask)],
                                  -1)
        what = f"fused vector (image {image.shape}, text {text.shape}, lengths {lengths})"
        got = c.expect_array(what, got, (batch, d_image + d_text),
                             hint="pool each modality over its positions (axis 1), then concatenate the features: "
                                  "(batch, D_image + D_text)")
        if d_text != d_image and np.allclose(got[:, :d_text], expected[:, d_image:], atol=1e-4):
            c.fail(what, "the text features come first", "put the image vector first, then the text vector")
        c.expect_close(f"{what}, image part (first D_image features)", got[:, :d_image], expected[:, :d_image],
                       hint="the image vector is the plain mean of the image tokens over the N positions", atol=1e-4)
        c.expect_close(f"{what}, text part (last D_text features)", got[:, d_image:], expected[:, d_image:],
                       hint="average only the real tokens of each row: its mask-weighted sum divided by its "
                            "number of real tokens (padding rows hold junk here)", atol=1e-4)
    image, text = _tokens(7, 2, 3, 4), _tokens(17, 2, 5, 3)
    mask = np.array(_GAP_MASK)                    # real tokens need not come first
    text[~mask] = 100.0
    got = c.expect_array("fused vector with a mask that has gaps", c.call(image, text, mask), (2, 7))
    c.expect_close("fused vector with a mask that has gaps (text part)", got[:, 4:],
                   _masked_text_mean(text.astype(np.float64), mask), atol=1e-4,
                   hint="use the mask itself (True on real tokens, wherever they are), not a length: real tokens "
                        "need not come first")


# --------------------------------------------------------------------------- 04.fusion_model
# The scenario builds the learner's model, calls it on probes and trains it on a toy task; the check
# reads only the logits (plain arrays) it returns.

_SIZES = (3, 6, 5, 6, 6)              # num_objects, num_features, question_length, vocab_size, num_answers
_HOW_MANY, _WHAT_COLOR = (1, 2, 0, 0, 0), (3, 4, 5, 0, 0)  # "how many objects ?", "what color are ..."
_REPEATED, _SINGLE = (4, 4, 4, 0, 0), (4, 0, 0, 0, 0)       # one word three times, and once
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
    return {"probe": probe, "objects changed": {**probe, "objects": np.roll(probe["objects"], 1, axis=0)},
            "question changed": {**probe, "token_ids": other.astype(np.int32)},
            "one object": {**probe, "objects": alone}, "the object twice": {**probe, "objects": twice},
            "repeated word": question(_REPEATED), "single word": question(_SINGLE)}


def _fusion_steps(train: bool):
    """The scenario (runs the learner's code): the model's logits on the probes, or before and after training."""
    def steps(build) -> dict:
        report, stage = {}, "building"
        try:
            keras.utils.set_random_seed(0)                # the same initial weights on every run
            model = build(*_SIZES)
            if not isinstance(model, keras.layers.Layer):
                return {"not a model": type(model).__name__}
            if not isinstance(model, keras.Model):        # a layer that takes the dict: wrap it to train it
                inputs = {"objects": keras.Input(_SIZES[:2], name="objects"),
                          "token_ids": keras.Input(_SIZES[2:3], dtype="int32", name="token_ids")}
                model = keras.Model(inputs, model(inputs))
            stage = "calling"
            if not train:
                report["logits"] = {name: model(inputs, training=False) for name, inputs in _fusion_probes().items()}
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
            report["error"] = (stage, f"{type(error).__name__}: {_message(error)}")
        return report
    return steps


def _fusion_answer(image: str = "mean", question: str = "masked mean", head: str | None = None,
                   answers: int | None = None, names=("objects", "token_ids")):
    """The notebook's concatenation model; each argument other than its default names a mistake."""
    def fusion_model(num_objects, num_features, question_length, vocab_size, num_answers):
        objects = keras.Input((num_objects, num_features), name=names[0])
        token_ids = keras.Input((question_length,), dtype="int32", name=names[1])
        parts = []
        if image in ("mean", "max"):
            pool = keras.layers.GlobalAveragePooling1D() if image == "mean" else keras.layers.GlobalMaxPooling1D()
            parts.append(pool(keras.layers.Dense(32, activation="relu")(objects)))
        elif image == "feature axis":  # one number per object slot: which colour is lost
            parts.append(keras.layers.Dense(32, activation="relu")(keras.layers.GlobalAveragePooling1D(
                data_format="channels_first")(objects)))
        elif image == "first object":
            parts.append(keras.layers.Dense(32, activation="relu")(keras.layers.Cropping1D((0, num_objects - 1))(
                objects))[:, 0])
        if question:
            words = keras.layers.Embedding(vocab_size, 16, mask_zero=question == "masked mean")(token_ids)
            parts.append(keras.layers.GlobalAveragePooling1D()(words) if question != "flatten"
                         else keras.layers.Flatten()(words))
        fused = keras.layers.Concatenate()(parts) if len(parts) > 1 else parts[0]
        hidden = keras.layers.Dense(64, activation="relu")(fused)
        output = keras.layers.Dense(answers or num_answers, activation=head)(hidden)
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
        "a list of inputs named 'image' and 'question'": _fusion_answer(names=("image", "question")),
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
    once = c.expect_array("logits for scenes of one object", logits["one object"], probe.shape)
    if np.allclose(c.expect_array("logits", logits["the object twice"], probe.shape), once, atol=1e-6):
        c.fail("image vector", "the logits do not change when a copy of the scene's object fills an empty slot, so "
                               "the model cannot count the objects",
               "the image vector is the mean over the object slots (axis 1), which, unlike the max, changes with "
               "the number of objects")
    c.passed.append("the image vector counts the objects")
    repeated = c.expect_array("logits for a question of one repeated word", logits["repeated word"], probe.shape)
    if not np.allclose(repeated, c.expect_array("logits", logits["single word"], probe.shape), atol=1e-5, rtol=1e-5):
        c.fail("question vector", "the logits for the question 'w w w' differ from those for 'w' alone, whose mean "
                                  "of real words is the same",
               "the question vector is the mean over the real words only: the padding (id 0) must not count, "
               "and neither must word positions")
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


# --------------------------------------------------------------------------- 04.film


@exercise(
    "04.film",
    reference=lambda features, gamma, beta: _numpy(fusion.film(features, gamma, beta)),
    mistakes={
        "swaps gamma and beta": lambda features, gamma, beta: features * beta[:, None, :] + gamma[:, None, :],
        "modulates positions instead of channels": lambda features, gamma, beta: (
            features * gamma[:, :, None] + beta[:, :, None]),
        "adds gamma instead of multiplying": lambda features, gamma, beta: (
            features + gamma[:, None, :] + beta[:, None, :]),
        "uses the first example's gamma and beta for the whole batch": lambda features, gamma, beta: (
            features * gamma[:1, None, :] + beta[:1, None, :]),
        "shifts before scaling: gamma * (features + beta)": lambda features, gamma, beta: (
            gamma[:, None, :] * (features + beta[:, None, :])),
        "scales by (1 + gamma)": lambda features, gamma, beta: features * (1 + gamma[:, None, :]) + beta[:, None, :],
    },
)
def _check_film(c: Checker) -> None:
    cases = [(0, 2, 4, 4), (1, 3, 6, 5), (2, 2, 3, 8)]  # (seed, batch, N, C); the first has N == C
    shapes = st.tuples(st.integers(3, 2 ** 16), st.integers(1, 3), st.integers(1, 6), st.integers(1, 6))
    for seed, batch, n, channels in cases + draw_cases(shapes, 6):
        rng = np.random.default_rng(seed)
        features = rng.normal(size=(batch, n, channels)).astype(np.float32)
        gamma = rng.normal(size=(batch, channels)).astype(np.float32)
        beta = rng.normal(size=(batch, channels)).astype(np.float32)
        got = c.call(features, gamma, beta)
        what = f"modulated features (batch {batch}, N {n}, C {channels})"
        c.expect_array(what, got, features.shape, hint="FiLM keeps the shape of the features: (batch, N, C)")
        c.expect_close(what, got, features * gamma[:, None, :] + beta[:, None, :],
                       hint="scale then shift every channel: each example's gamma and beta (batch, C) need a "
                            "position axis inserted in the middle to broadcast over the N positions", atol=1e-5)
    identity = c.call(features, np.ones_like(gamma), np.zeros_like(beta))
    c.expect_close("gamma = 1, beta = 0", identity, features, hint="with gamma 1 and beta 0 FiLM changes nothing")


# --------------------------------------------------------------------------- 04.cross_attention


def _reference_attention(queries, context, context_mask):
    scores = queries.astype(np.float64) @ np.swapaxes(context.astype(np.float64), 1, 2) / np.sqrt(queries.shape[-1])
    scores = np.where(context_mask[:, None, :], scores, -np.inf)
    weights = _softmax(scores, axis=-1)
    return weights @ context.astype(np.float64), weights


def _attention_mistake(scale: str = "sqrt", axis: int = -1, mask: str = "keys", softmax: str = "stable",
                       swap: bool = False):
    def attention(queries, context, context_mask):
        d = queries.shape[-1]
        divisor = {"sqrt": np.sqrt(d), "none": 1.0, "d": float(d)}[scale]
        scores = queries @ np.swapaxes(context, 1, 2) / divisor
        if mask == "keys":
            scores = np.where(context_mask[:, None, :], scores, -1e9)
        elif mask == "inverted":
            scores = np.where(context_mask[:, None, :], -1e9, scores)
        elif mask == "queries axis":
            scores = np.where(context_mask[:, :, None], scores, -1e9)
        elif mask == "small fill":
            scores = np.where(context_mask[:, None, :], scores, -30.0)
        elif mask == "prefix":
            prefix = np.arange(context_mask.shape[1])[None, :] < context_mask.sum(1, keepdims=True)
            scores = np.where(prefix[:, None, :], scores, -1e9)
        if softmax == "stable":
            weights = _softmax(scores, axis=axis)
        elif softmax == "unstable":
            weights = np.exp(scores) / np.exp(scores).sum(axis=axis, keepdims=True)
        else:
            weights = scores
        output = weights @ context
        return (weights, output) if swap else (output, weights)
    return attention


@exercise(
    "04.cross_attention",
    reference=lambda queries, context, context_mask: _numpy(fusion.cross_attention(queries, context, context_mask)),
    mistakes={
        "forgets the 1/sqrt(d) scaling": _attention_mistake(scale="none"),
        "divides by d instead of sqrt(d)": _attention_mistake(scale="d"),
        "takes the softmax over the queries axis": _attention_mistake(axis=-2),
        "ignores the padding mask": _attention_mistake(mask=""),
        "mask inverted": _attention_mistake(mask="inverted"),
        "mask broadcast along the queries axis": _attention_mistake(mask="queries axis"),
        "naive similarity weights (no softmax)": _attention_mistake(softmax=""),
        "softmax without subtracting the maximum": _attention_mistake(softmax="unstable"),
        "returns (weights, output)": _attention_mistake(swap=True),
        "masks with a fill of -30 (not large enough)": _attention_mistake(mask="small fill"),
        "attends to the first `mask.sum()` tokens (assumes real tokens come first)": _attention_mistake(mask="prefix"),
    },
)
def _check_cross_attention(c: Checker) -> None:
    # (seed, batch, q_len, k_len, d, lengths, scale); q_len == k_len once, large scores once
    cases = [(0, 2, 5, 4, 16, [4, 2], 1.0), (1, 3, 3, 6, 9, [6, 1, 3], 1.0), (2, 1, 7, 5, 4, [5], 1.0),
             (3, 2, 4, 4, 6, [2, 4], 1.0), (4, 2, 3, 5, 8, [3, 5], 20.0)]
    for seed, batch, length, lengths in _drawn_lengths(6, min_length=2):
        cases.append((seed, batch, 1 + seed % 4, length, 1 + seed % 7, lengths, 1.0))
    for seed, batch, q_len, k_len, d, lengths, scale in cases:
        queries = _tokens(seed, batch, q_len, d, scale)
        context = _tokens(seed + 20, batch, k_len, d, scale)
        mask = _mask(lengths, k_len)
        _expect_cross_attention(c, c.call(queries, context, mask), queries, context, mask, large=scale > 1)
    queries, context = _tokens(5, 2, 3, 4), _tokens(25, 2, 5, 4)
    mask = np.array(_GAP_MASK)                      # real context tokens need not come first
    _expect_cross_attention(c, c.call(queries, context, mask), queries, context, mask, large=False)
    queries = 8.0 + 0.1 * _tokens(6, 2, 3, 16)      # every real score near -256: a padded token must still get 0
    context = -8.0 + 0.1 * _tokens(26, 2, 5, 16)
    mask = _mask([3, 2], 5)
    _expect_cross_attention(c, c.call(queries, context, mask), queries, context, mask, large=True)


def _expect_cross_attention(c: Checker, result, queries, context, mask, large: bool) -> None:
    (batch, q_len, d), k_len = queries.shape, context.shape[1]
    what = f"queries {queries.shape}, context {context.shape}" + (" with large scores (hundreds)" if large else "")
    if not (isinstance(result, (tuple, list)) and len(result) == 2):
        c.fail(what, f"expected a tuple (output, weights), got {type(result).__name__}",
               "return both the fused output and the attention weights: `return output, weights`")
    output, weights = result
    if np.shape(output) == (batch, q_len, k_len) != (batch, q_len, d) and np.shape(weights) == (batch, q_len, d):
        c.fail(what, "the first item has the shape of the weights and the second that of the output",
               "return them in the order the exercise asks: `return output, weights`")
    expected_output, expected_weights = _reference_attention(queries, context, mask)
    weights = c.expect_array(f"{what}: weights", weights, (batch, q_len, k_len),
                             hint="one weight per (query, context token) pair: queries @ context^T").astype(float)
    c.expect_array(f"{what}: output", output, (batch, q_len, d), hint="output = weights @ context: (batch, q_len, D)")
    if not np.isfinite(weights).all():
        c.fail(f"{what}: weights", "contain NaN or inf",
               "subtract each row's largest score before np.exp (exp overflows for scores of a few hundred)")
    if not np.allclose(weights.sum(-1), 1.0, atol=1e-4):
        c.fail(f"{what}: weights", "a query's weights over the context do not sum to 1",
               "normalise over the context tokens: softmax over the last axis (k_len)")
    if np.abs(weights[~np.broadcast_to(mask[:, None, :], weights.shape)]).max(initial=0.0) > 1e-6:
        c.fail(f"{what}: weights", "padded context tokens get a non-zero weight",
               "context_mask is True on real tokens: set the scores of padded tokens (one per column of the "
               "scores) to a large negative number before the softmax")
    atol = 1e-3 if large else 1e-4             # float32 scores of a few hundred carry rounding errors of ~1e-4
    c.expect_close(f"{what}: weights (d = {d})", weights, expected_weights,
                   hint="divide the scores by sqrt(d), the square root of the feature size, before the softmax",
                   atol=atol)
    c.expect_close(f"{what}: output", output, expected_output, hint="output = weights @ context", atol=atol)


# --------------------------------------------------------------------------- 04.object_pairs


def _pairs_mistake(order: str):
    def object_pairs(objects):
        k = objects.shape[1]
        first = np.repeat(objects[:, :, None, :], k, axis=2)  # (B, K, K, D): o_i
        second = np.repeat(objects[:, None, :, :], k, axis=1)  # (B, K, K, D): o_j
        if order == "swapped":
            return np.concatenate([second, first], axis=-1)
        if order == "self":
            return np.concatenate([first, first], axis=-1)
        if order == "flat":
            return np.concatenate([first, second], axis=-1).reshape(objects.shape[0], k * k, -1)
        upper = np.triu_indices(k, 1)  # unordered pairs i < j only
        return np.concatenate([first, second], axis=-1)[:, upper[0], upper[1]]
    return object_pairs


@exercise(
    "04.object_pairs",
    reference=lambda objects: _numpy(fusion.object_pairs(objects)),
    mistakes={
        "puts object j first": _pairs_mistake("swapped"),
        "pairs every object with itself": _pairs_mistake("self"),
        "keeps each unordered pair once (i < j)": _pairs_mistake("unordered"),
        "flattens the pairs to (batch, K * K, 2 D)": _pairs_mistake("flat"),
    },
)
def _check_object_pairs(c: Checker) -> None:
    cases = [(2, 4, 3), (3, 3, 5), (1, 1, 2)]  # (batch, K, D); K = 1 has a single pair, (0, 0)
    cases += draw_cases(st.tuples(st.integers(1, 3), st.integers(1, 5), st.integers(1, 4)), 6)
    for seed, (batch, k, d) in enumerate(cases):
        objects = _tokens(seed + 30, batch, k, d)
        got = c.call(objects)
        what = f"pairs (batch {batch}, K {k}, D {d})"
        got = c.expect_array(what, got, (batch, k, k, 2 * d),
                             hint="one entry per ordered pair (i, j), both orders and i == j included: "
                                  "(batch, K, K, 2 D)")
        c.expect_close(f"{what}: pairs[:, i, j, :D]", got[..., :d], np.repeat(objects[:, :, None, :], k, axis=2),
                       hint="the first half of entry (i, j) is object i: repeat the objects along a new axis 2",
                       atol=1e-6)
        c.expect_close(f"{what}: pairs[:, i, j, D:]", got[..., d:], np.repeat(objects[:, None, :, :], k, axis=1),
                       hint="the second half of entry (i, j) is object j: repeat the objects along a new axis 1",
                       atol=1e-6)
