"""Checks for lesson 04: fusing image and text features."""

from __future__ import annotations

import keras
import numpy as np

from mmlm_course import fusion, qa
from mmlm_course.exercises import Checker, exercise


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


def _mask(lengths, total: int) -> np.ndarray:
    return np.arange(total)[None, :] < np.asarray(lengths)[:, None]


# --------------------------------------------------------------------------- 04.concat_fusion


def _wrong_mean_concat(image_tokens, text_tokens, text_mask):
    return np.concatenate([image_tokens.mean(axis=1), text_tokens.mean(axis=1)], axis=-1)


def _text_first_concat(image_tokens, text_tokens, text_mask):
    text = (text_tokens * text_mask[..., None]).sum(1) / text_mask.sum(1, keepdims=True)
    return np.concatenate([text, image_tokens.mean(axis=1)], axis=-1)


def _feature_axis_concat(image_tokens, text_tokens, text_mask):
    text = (text_tokens * text_mask[..., None]).sum(-1) / text_mask.sum(1, keepdims=True)
    return np.concatenate([image_tokens.mean(axis=-1), text], axis=-1)


@exercise(
    "04.concat_fusion",
    reference=lambda image_tokens, text_tokens, text_mask: _numpy(
        fusion.concat_fusion(image_tokens, text_tokens, text_mask)),
    mistakes={
        "averages the padding tokens too": _wrong_mean_concat,
        "puts the text vector first": _text_first_concat,
        "averages over the feature axis instead of the positions": _feature_axis_concat,
    },
)
def _check_concat_fusion(c: Checker) -> None:
    cases = [(2, 5, 6, 4, 3, [4, 2]), (3, 4, 3, 7, 5, [7, 1, 3]), (1, 9, 8, 5, 8, [5])]
    for seed, (batch, n, d_image, t, d_text, lengths) in enumerate(cases):
        image = _tokens(seed, batch, n, d_image)
        text = _tokens(seed + 10, batch, t, d_text)
        mask = _mask(lengths, t)
        text[~mask] = 100.0  # padding rows hold junk that must not leak into the mean
        got = c.call(image, text, mask)
        expected = np.concatenate([image.mean(1), (text * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)], -1)
        c.expect_array("fused vector", got, (batch, d_image + d_text),
                       hint="pool each modality over its positions (axis 1), then concatenate the features: "
                            "(batch, D_image + D_text)")
        got = np.asarray(got)
        if np.allclose(got[:, :d_text], expected[:, d_image:], atol=1e-4) and d_text != d_image:
            c.fail("fused vector", "the text features come first", "put the image vector first, then the text vector")
        c.expect_close("image part (first D_image features)", got[:, :d_image], expected[:, :d_image],
                       hint="the image vector is the plain mean of the image tokens over the N positions", atol=1e-4)
        c.expect_close("text part (last D_text features)", got[:, d_image:], expected[:, d_image:],
                       hint="average only the real tokens: sum of mask-weighted tokens divided by the number of "
                            "real tokens (padding rows hold junk here)", atol=1e-4)


# --------------------------------------------------------------------------- 04.fusion_model

_SIZES = {"num_objects": 3, "num_features": 6, "question_length": 5, "vocab_size": 6, "num_answers": 6}
_HOW_MANY, _WHAT_COLOR = [1, 2, 0, 0, 0], [3, 4, 5, 0, 0]  # "how many objects ?", "what color are ..."


def _toy_task(seed: int, count: int) -> tuple[dict, np.ndarray]:
    """A scene question-answering task that needs the image *and* the question.

    Each scene holds 1-3 objects of one colour (features: colour one-hot (3), shape
    one-hot (2), objectness), in random slots of 3; the question asks "how many?"
    (answers 0-2: one, two, three) or "what colour?" (answers 3-5).
    """
    rng = np.random.default_rng(seed)
    slots, features = _SIZES["num_objects"], _SIZES["num_features"]
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


def _reference_fusion_model(num_objects, num_features, question_length, vocab_size, num_answers):
    return qa.build_qa_model("concat", num_objects=num_objects, token_features=num_features,
                             question_length=question_length, vocab_size=vocab_size, answer_set=num_answers)


def _fusion_mistake(image: str = "mean", question: bool = True, logits: str = "logits", answers: int | None = None):
    """A concatenation model with one typical mistake; the arguments name it."""
    def fusion_model(num_objects, num_features, question_length, vocab_size, num_answers):
        objects = keras.Input((num_objects, num_features), name="objects")
        token_ids = keras.Input((question_length,), dtype="int32", name="token_ids")
        parts = []
        if image == "mean":
            parts.append(keras.layers.GlobalAveragePooling1D()(keras.layers.Dense(32, activation="relu")(objects)))
        elif image == "feature axis":  # one number per object slot: which colour is lost
            parts.append(keras.layers.Dense(32, activation="relu")(keras.layers.GlobalAveragePooling1D(
                data_format="channels_first")(objects)))
        elif image == "first object":
            parts.append(keras.layers.Dense(32, activation="relu")(keras.layers.Cropping1D((0, num_objects - 1))(
                objects))[:, 0])
        if question:
            words = keras.layers.Embedding(vocab_size, 16, mask_zero=True)(token_ids)
            parts.append(keras.layers.GlobalAveragePooling1D()(words))
        fused = keras.layers.Concatenate()(parts) if len(parts) > 1 else parts[0]
        hidden = keras.layers.Dense(64, activation="relu")(fused)
        output = keras.layers.Dense(answers or num_answers, activation="softmax" if logits == "softmax" else None)(
            hidden)
        return keras.Model({"objects": objects, "token_ids": token_ids}, output)  # an unused input is allowed
    return fusion_model


def _model_logits(c: Checker, model, inputs: dict, what: str) -> np.ndarray:
    try:
        return np.asarray(model(inputs, training=False))
    except Exception as error:  # the learner's model: report its error in one line
        message = " ".join(str(error).split())[:200]
        c.fail(what, f"calling the model on {{'objects': float32 {inputs['objects'].shape}, 'token_ids': int32 "
                     f"{inputs['token_ids'].shape}}} raised {type(error).__name__}: {message}",
               "the model takes one dict with the keys 'objects' and 'token_ids' (name your keras.Input layers so)")


def _cross_entropy(logits: np.ndarray, answers: np.ndarray) -> float:
    logits = logits.astype(np.float64) - logits.max(-1, keepdims=True)
    log_p = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    return float(-log_p[np.arange(len(answers)), answers].mean())


@exercise(
    "04.fusion_model",
    reference=_reference_fusion_model,
    mistakes={
        "ignores the image (a question-only model)": _fusion_mistake(image=""),
        "ignores the question (an image-only model)": _fusion_mistake(question=False),
        "ends with a softmax: returns probabilities, not logits": _fusion_mistake(logits="softmax"),
        "always returns 17 logits, whatever num_answers is": _fusion_mistake(answers=17),
        "averages each object over its features instead of over the objects": _fusion_mistake(image="feature axis"),
        "reads only the first object slot": _fusion_mistake(image="first object"),
    },
)
def _check_fusion_model(c: Checker) -> None:
    model = c.call(*_SIZES.values())  # by position, in the order of the exercise's signature
    c.expect_type("your model", model, keras.layers.Layer,
                  hint="return a Keras model: keras.Model(inputs, logits), or an instance of your keras.Model subclass")
    if not isinstance(model, keras.Model):  # a layer that takes the dict: wrap it to train it
        inputs = {"objects": keras.Input((_SIZES["num_objects"], _SIZES["num_features"]), name="objects"),
                  "token_ids": keras.Input((_SIZES["question_length"],), dtype="int32", name="token_ids")}
        model = keras.Model(inputs, model(inputs))
    train, train_answers = _toy_task(0, 512)
    held_out, answers = _toy_task(1, 240)
    probe = {name: values[:8] for name, values in held_out.items()}
    logits = c.expect_array("logits", _model_logits(c, model, probe, "logits"), (8, _SIZES["num_answers"]),
                            hint="one logit per answer: the last Dense layer has num_answers units (here "
                                 f"{_SIZES['num_answers']}), and the batch axis stays")
    if logits.dtype != np.float32:
        c.fail("logits", f"expected dtype float32, got {logits.dtype}", "keep Keras' default float32 throughout")
    if np.all(logits >= 0) and np.allclose(logits.sum(-1), 1.0, atol=1e-4):
        c.fail("logits", "every row is non-negative and sums to 1, so these are probabilities",
               "end with a Dense layer without activation: the loss (from_logits=True) applies the softmax")
    c.passed.append("logits, not probabilities")
    shifted = {"objects": np.roll(probe["objects"], 1, axis=0), "token_ids": probe["token_ids"]}
    if np.allclose(_model_logits(c, model, shifted, "image input"), logits, atol=1e-6):
        c.fail("image input", "the logits do not change when the objects change",
               "pool the object tokens into an image vector and concatenate it with the question vector")
    c.passed.append("uses the image")
    other = np.where((probe["token_ids"] == _HOW_MANY).all(-1, keepdims=True), _WHAT_COLOR, _HOW_MANY)
    if np.allclose(_model_logits(c, model, {**probe, "token_ids": other.astype(np.int32)}, "question input"), logits,
                   atol=1e-6):
        c.fail("question input", "the logits do not change when the question changes",
               "embed the token ids, average the real words into a question vector and concatenate it")
    c.passed.append("uses the question")

    before = _cross_entropy(_model_logits(c, model, held_out, "training"), answers)
    try:
        model.compile(optimizer=keras.optimizers.Adam(5e-3),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), jit_compile=False)
        model.fit(train, train_answers, batch_size=32, epochs=10, verbose=0)
    except Exception as error:
        c.fail("training", f"model.fit raised {type(error).__name__}: {' '.join(str(error).split())[:200]}",
               "build the model from Keras layers (keras.layers / keras.ops) so that fit can train it")
    logits = _model_logits(c, model, held_out, "training")
    after, accuracy = _cross_entropy(logits, answers), float(np.mean(logits.argmax(-1) == answers))
    if not after < before:
        c.fail("training", f"the held-out loss did not go down ({before:.3f} -> {after:.3f})",
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
    },
)
def _check_film(c: Checker) -> None:
    cases = [(2, 4, 4), (3, 6, 5), (2, 3, 8)]  # (batch, N, C); the first has N == C
    for seed, (batch, n, channels) in enumerate(cases):
        rng = np.random.default_rng(seed)
        features = rng.normal(size=(batch, n, channels)).astype(np.float32)
        gamma = rng.normal(size=(batch, channels)).astype(np.float32)
        beta = rng.normal(size=(batch, channels)).astype(np.float32)
        got = c.call(features, gamma, beta)
        c.expect_array("modulated features", got, features.shape,
                       hint="FiLM keeps the shape of the features: (batch, N, C)")
        c.expect_close(f"modulated features (batch {batch}, N {n}, C {channels})", got,
                       features * gamma[:, None, :] + beta[:, None, :],
                       hint="scale then shift every channel: each example's gamma and beta (batch, C) need a "
                            "position axis inserted in the middle to broadcast over the N positions", atol=1e-5)
    identity = c.call(features, np.ones_like(gamma), np.zeros_like(beta))
    c.expect_close("gamma = 1, beta = 0", identity, features, hint="with gamma 1 and beta 0 FiLM changes nothing")


# --------------------------------------------------------------------------- 04.cross_attention


def _reference_attention(queries, context, context_mask):
    scores = queries.astype(np.float64) @ np.swapaxes(context.astype(np.float64), 1, 2) / np.sqrt(queries.shape[-1])
    scores = np.where(context_mask[:, None, :], scores, -1e9)
    weights = _softmax(scores, axis=-1)
    return weights @ context.astype(np.float64), weights


def _attention_mistake(scale: str = "sqrt", axis: int = -1, use_mask: bool = True, softmax: bool = True):
    def attention(queries, context, context_mask):
        d = queries.shape[-1]
        divisor = {"sqrt": np.sqrt(d), "none": 1.0, "d": float(d)}[scale]
        scores = queries @ np.swapaxes(context, 1, 2) / divisor
        if use_mask:
            scores = np.where(context_mask[:, None, :], scores, -1e9)
        weights = _softmax(scores, axis=axis) if softmax else scores
        return weights @ context, weights
    return attention


@exercise(
    "04.cross_attention",
    reference=lambda queries, context, context_mask: _numpy(fusion.cross_attention(queries, context, context_mask)),
    mistakes={
        "forgets the 1/sqrt(d) scaling": _attention_mistake(scale="none"),
        "divides by d instead of sqrt(d)": _attention_mistake(scale="d"),
        "takes the softmax over the queries axis": _attention_mistake(axis=-2),
        "ignores the padding mask": _attention_mistake(use_mask=False),
        "naive similarity weights (no softmax)": _attention_mistake(softmax=False),
    },
)
def _check_cross_attention(c: Checker) -> None:
    cases = [(2, 5, 4, 16, [4, 2]), (3, 3, 6, 9, [6, 1, 3]), (1, 7, 5, 4, [5])]  # (batch, q_len, k_len, d, lengths)
    for seed, (batch, q_len, k_len, d, lengths) in enumerate(cases):
        queries = _tokens(seed, batch, q_len, d)
        context = _tokens(seed + 20, batch, k_len, d)
        mask = _mask(lengths, k_len)
        result = c.call(queries, context, mask)
        if not (isinstance(result, tuple) and len(result) == 2):
            c.fail("result", f"expected a tuple (output, weights), got {type(result).__name__}",
                   "return both the fused output and the attention weights: `return output, weights`")
        output, weights = result
        expected_output, expected_weights = _reference_attention(queries, context, mask)
        c.expect_array("weights", weights, (batch, q_len, k_len),
                       hint="one weight per (query, context token) pair: queries @ context^T")
        c.expect_array("output", output, (batch, q_len, d), hint="output = weights @ context: (batch, q_len, D)")
        weights = np.asarray(weights, np.float64)
        if not np.allclose(weights.sum(-1), 1.0, atol=1e-4):
            c.fail("weights", "a query's weights over the context do not sum to 1",
                   "normalise over the context tokens: softmax over the last axis (k_len)")
        if np.abs(weights[~np.broadcast_to(mask[:, None, :], weights.shape)]).max(initial=0.0) > 1e-6:
            c.fail("weights", "padded context tokens get a non-zero weight",
                   "set the scores of padded tokens to a large negative number before the softmax")
        c.expect_close(f"weights (d = {d})", weights, expected_weights,
                       hint="divide the scores by sqrt(d), the square root of the feature size, before the softmax",
                       atol=1e-4)
        c.expect_close("output", output, expected_output, hint="output = weights @ context", atol=1e-4)


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
    },
)
def _check_object_pairs(c: Checker) -> None:
    cases = [(2, 4, 3), (3, 3, 5), (1, 1, 2)]  # (batch, K, D); K = 1 has a single pair, (0, 0)
    for seed, (batch, k, d) in enumerate(cases):
        objects = _tokens(seed + 30, batch, k, d)
        got = c.call(objects)
        c.expect_array(f"pairs (batch {batch}, K {k}, D {d})", got, (batch, k, k, 2 * d),
                       hint="one entry per ordered pair (i, j), both orders and i == j included: "
                            "(batch, K, K, 2 D)")
        got = np.asarray(got)
        c.expect_close(f"pairs[:, i, j, :D] (K {k})", got[..., :d], np.repeat(objects[:, :, None, :], k, axis=2),
                       hint="the first half of entry (i, j) is object i: repeat the objects along a new axis 2",
                       atol=1e-6)
        c.expect_close(f"pairs[:, i, j, D:] (K {k})", got[..., d:], np.repeat(objects[:, None, :, :], k, axis=1),
                       hint="the second half of entry (i, j) is object j: repeat the objects along a new axis 1",
                       atol=1e-6)
