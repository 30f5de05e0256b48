"""Checks for lesson 08: a LLaVA-style multimodal language model."""

from __future__ import annotations

import numpy as np

from mmlm_course import instructions, mllm, preprocessing, stages
from mmlm_course.exercises import Checker, exercise

# --------------------------------------------------------------------------- 08.answer_only_targets


def _targets_mistake(ids, lengths, keep_from_offset: int = -1, shift: bool = True):
    ids, lengths = np.asarray(ids), np.asarray(lengths)
    inputs = ids[:, :-1].astype(np.int32)
    targets = (ids[:, 1:] if shift else ids[:, :-1]).astype(np.int32).copy()
    targets[np.arange(targets.shape[1])[None] < lengths[:, None] + keep_from_offset] = 0
    return inputs, targets


def _instruction_batch() -> tuple[np.ndarray, np.ndarray]:
    """Two rows: a caption (prompt 2 tokens) and a question (prompt 7 tokens)."""
    ids = np.array([[2, 4, 11, 12, 13, 14, 3, 0, 0, 0],
                    [2, 5, 21, 22, 23, 24, 6, 31, 3, 0]], np.int32)
    return ids, np.array([2, 7])


@exercise(
    "08.answer_only_targets",
    reference=instructions.answer_only_targets,
    mistakes={
        "keeps the prompt in the loss": lambda ids, n: (np.asarray(ids)[:, :-1], np.asarray(ids)[:, 1:]),
        "masks the first answer token too (off by one)": lambda ids, n: _targets_mistake(ids, n, 0),
        "keeps the target of the token before the last prompt token": lambda ids, n: _targets_mistake(ids, n, -2),
        "does not shift the targets": lambda ids, n: _targets_mistake(ids, n, -1, shift=False),
    },
)
def _check_answer_only_targets(c: Checker) -> None:
    rng = np.random.default_rng(8)
    cases = [_instruction_batch()]
    random_ids = rng.integers(4, 40, size=(5, 12)).astype(np.int32)
    random_ids[:, -2:] = 0
    cases.append((random_ids, rng.integers(1, 9, size=5)))
    for ids, lengths in cases:
        got = c.call(ids.copy(), lengths.copy())
        if not (isinstance(got, tuple) and len(got) == 2):
            c.fail("result", f"expected a tuple (inputs, targets), got {type(got).__name__}",
                   "return both arrays: `return inputs, targets`")
        inputs, targets = instructions.answer_only_targets(ids, lengths)
        got_inputs = c.expect_array("inputs", got[0], inputs.shape,
                                    hint="inputs and targets both have length L - 1: drop one token")
        c.expect_equal("inputs", got_inputs.astype(np.int64), inputs.astype(np.int64),
                       "the inputs are every token but the last one")
        got_targets = c.expect_array("targets", got[1], targets.shape)
        kept, expected_kept = got_targets != 0, targets != 0
        both = kept & expected_kept
        unshifted = ids[:, :-1]
        if (both.any() and np.array_equal(got_targets[both], unshifted[both])
                and not np.array_equal(targets[both], unshifted[both])):
            c.fail("targets", "the targets equal the inputs at the kept positions",
                   "the target of position t is the *next* token, t + 1")
        for row in range(len(ids)):
            extra = np.flatnonzero(kept[row] & ~expected_kept[row])
            if extra.size:
                c.fail(f"targets of row {row} (prompt length {lengths[row]})",
                       f"position {extra[0]} is a prompt token but still counts in the loss",
                       "set the targets of prompt tokens to 0 (pad): the model reads the prompt, it does not "
                       "predict it")
            missing = np.flatnonzero(~kept[row] & expected_kept[row])
            if missing.size:
                c.fail(f"targets of row {row} (prompt length {lengths[row]})",
                       f"position {missing[0]} predicts an answer token but was masked",
                       "the last prompt position predicts the first answer token: keep it")
        c.expect_equal("targets", got_targets.astype(np.int64), targets.astype(np.int64),
                       "targets are the tokens shifted by one, 0 where the target is a prompt token")


# --------------------------------------------------------------------------- 08.project_tokens


def _gelu(x):
    from math import erf, sqrt

    return 0.5 * x * (1 + np.vectorize(erf)(x / sqrt(2)))


def _projector_case(seed: int, batch: int = 2, tokens: int = 4, d_in: int = 5, hidden: int = 7, d_out: int = 3):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(batch, tokens, d_in)).astype(np.float32),
            rng.normal(size=(d_in, hidden)).astype(np.float32), rng.normal(size=hidden).astype(np.float32),
            rng.normal(size=(hidden, d_out)).astype(np.float32), rng.normal(size=d_out).astype(np.float32))


@exercise(
    "08.project_tokens",
    reference=mllm.project_tokens,
    mistakes={
        "no activation (one linear map)": lambda f, w1, b1, w2, b2: (f @ w1 + b1) @ w2 + b2,
        "ReLU instead of GELU": lambda f, w1, b1, w2, b2: np.maximum(f @ w1 + b1, 0) @ w2 + b2,
        "averages the tokens into one vector": lambda f, w1, b1, w2, b2: _gelu(f.mean(1) @ w1 + b1) @ w2 + b2,
        "activation after the output layer too": lambda f, w1, b1, w2, b2: _gelu(_gelu(f @ w1 + b1) @ w2 + b2),
        "forgets the first bias": lambda f, w1, b1, w2, b2: _gelu(f @ w1) @ w2 + b2,
    },
)
def _check_project_tokens(c: Checker) -> None:
    for seed, sizes in ((0, {}), (1, {"batch": 1, "tokens": 16, "d_in": 8, "hidden": 6, "d_out": 8}),
                        (2, {"batch": 3, "tokens": 1})):
        features, w1, b1, w2, b2 = _projector_case(seed, **sizes)
        expected = _gelu(features.astype(np.float64) @ w1 + b1) @ w2 + b2
        got = c.call(features, w1, b1, w2, b2)
        c.expect_array(f"projected tokens for features {features.shape}", got, expected.shape,
                       hint="one output token per input token: (batch, tokens, D_out); project each token, "
                            "do not pool them")
        c.expect_close(f"projected tokens for features {features.shape}", got, expected, atol=2e-3, rtol=1e-3,
                       hint="Dense -> GELU -> Dense: keras.activations.gelu between the two matmuls, biases "
                            "in both, no activation at the end")


# --------------------------------------------------------------------------- 08.prepend_image_tokens


def _prepend_case(seed: int, batch: int = 2, p: int = 4, t: int = 3, d: int = 5, extra: int = 3):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(batch, p, d)).astype(np.float32), rng.normal(size=(batch, t, d)).astype(np.float32),
            rng.normal(size=(p + t + extra, d)).astype(np.float32))


def _restart_positions(image, text, table):
    return np.concatenate([image + table[:image.shape[1]], text + table[:text.shape[1]]], axis=1)


@exercise(
    "08.prepend_image_tokens",
    reference=mllm.prepend_image_tokens,
    mistakes={
        "puts the text before the image": lambda i, t, p: np.concatenate([t, i], 1) + p[:i.shape[1] + t.shape[1]],
        "forgets the positions": lambda i, t, p: np.concatenate([i, t], 1),
        "restarts the text positions at 0": _restart_positions,
        "adds positions to the text only": lambda i, t, p: np.concatenate([i, t + p[:t.shape[1]]], 1),
    },
)
def _check_prepend_image_tokens(c: Checker) -> None:
    for seed, sizes in ((0, {}), (1, {"batch": 1, "p": 16, "t": 6, "d": 8, "extra": 0}),
                        (2, {"batch": 3, "p": 2, "t": 1})):
        image, text, table = _prepend_case(seed, **sizes)
        expected = np.concatenate([image, text], axis=1) + table[:image.shape[1] + text.shape[1]]
        got = c.call(image, text, table)
        what = f"sequence for image tokens {image.shape} and text {text.shape}"
        c.expect_array(what, got, expected.shape,
                       hint="concatenate along the time axis (axis=1): (batch, P + T, D)")
        array = np.asarray(got)
        if np.allclose(array[:, :text.shape[1]], text + table[:text.shape[1]], atol=1e-5) \
                and not np.allclose(array, expected, atol=1e-5):
            c.fail(what, "the text comes first", "the image tokens go in front: the text is read after the image")
        if np.allclose(array[:, image.shape[1]:], text + table[:text.shape[1]], atol=1e-5):
            c.fail(what, "the text got positions 0..T-1 again",
                   "positions count the whole sequence: the first text token sits at position P")
        c.expect_close(what, got, expected,
                       hint="concatenate [image, text] on axis 1, then add position_table[:P + T] to every row")


# --------------------------------------------------------------------------- 08.set_stage_trainable


_TINY = mllm.MLLMConfig(image_size=16, encoder_filters=(4,), vision_dim=8, dim=8, num_layers=1, num_heads=2,
                        max_text_length=4)
_TINY_OBJECTS = mllm.MLLMConfig(vision="objects", dim=8, num_layers=1, num_heads=2, max_text_length=4)


def _tiny_models():
    """A grid model (its encoder learns in stage 2) and an object model (pretrained encoder, always frozen)."""
    tokenizer = preprocessing.Tokenizer.for_shapeworld(extra_special=instructions.TASK_TOKENS)
    return [mllm.build_model(_TINY, tokenizer), mllm.build_model(_TINY_OBJECTS, tokenizer)]


def _count(weights) -> int:
    return int(sum(np.prod(w.shape) for w in weights))


def _stage_mistake(model, stage, encoder=None, language=None, projector=None, whole=True):
    model.trainable = whole
    pretrained = model.config.vision == "objects"
    model.image_encoder.trainable = (stage == 2 and not pretrained) if encoder is None else encoder(stage)
    model.language_model.trainable = (stage == 2) if language is None else language(stage)
    model.projector.trainable = True if projector is None else projector(stage)
    return _count(model.trainable_weights)


@exercise(
    "08.set_stage_trainable",
    reference=stages.set_stage_trainable,
    mistakes={
        "inverted: trains everything but the projector in stage 1":
            lambda m, s: _stage_mistake(m, s, encoder=lambda s: True, language=lambda s: True,
                                        projector=lambda s: s == 2),
        "leaves the image encoder trainable in stage 1": lambda m, s: _stage_mistake(m, s, encoder=lambda s: True),
        "never unfreezes the image encoder": lambda m, s: _stage_mistake(m, s, encoder=lambda s: False),
        "unfreezes the pretrained detector in stage 2": lambda m, s: _stage_mistake(m, s, encoder=lambda s: s == 2),
        "freezes the whole model in stage 1": lambda m, s: _stage_mistake(m, s, whole=s == 2),
    },
)
def _check_set_stage_trainable(c: Checker) -> None:
    for model in _tiny_models():
        kind = f"{model.config.vision} model"
        pretrained = model.config.vision == "objects"
        projector = _count(model.projector.weights)
        total = _count(model.weights)
        encoder = _count(model.image_encoder.weights)
        expected = {1: projector, 2: total - encoder if pretrained else total}
        for stage in (1, 2, 1, 2):
            got = c.call(model, stage)
            c.expect_type(f"stage {stage} result", got, (int, np.integer),
                          hint="return the number of trainable parameters: sum of np.prod(w.shape) over "
                               "model.trainable_weights")
            frozen = [name for name, part in (("image_encoder", model.image_encoder),
                                              ("language_model", model.language_model)) if not part.trainable]
            actual = _count(model.trainable_weights)
            if stage == 1 and actual != projector:
                if actual == 0:
                    c.fail(f"stage 1 ({kind})", "nothing is trainable", "freeze the parts, not the whole model: a "
                           "frozen parent freezes every layer inside it, whatever their own flags say")
                still = sorted({"image_encoder", "language_model"} - set(frozen))
                c.fail(f"stage 1 ({kind})", f"{actual:,} trainable parameters, expected only the projector's "
                       f"{projector:,}" + (f" (still trainable: {still})" if still else ""),
                       "in stage 1 only the projector learns; the image encoder and language model are frozen")
            if stage == 2 and actual != expected[2]:
                if pretrained and "image_encoder" not in frozen:
                    c.fail(f"stage 2 ({kind})", f"{actual:,} trainable parameters: the pretrained detector is "
                           "trainable", "a pretrained encoder (model.config.vision == 'objects') stays frozen in "
                           "both stages, as LLaVA keeps CLIP frozen")
                c.fail(f"stage 2 ({kind})", f"{actual:,} trainable parameters, expected {expected[2]:,}"
                       + (f" (still frozen: {frozen})" if frozen else ""),
                       "stage 2 unfreezes the language model, and an image encoder trained from scratch "
                       "(vision 'grid')")
            c.expect_equal(f"stage {stage} trainable parameter count ({kind})", int(got), expected[stage],
                           "count the parameters of model.trainable_weights after setting the flags")
