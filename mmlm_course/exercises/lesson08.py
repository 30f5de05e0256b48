"""Checks for lesson 08: a LLaVA-style multimodal language model.

Every expected value is computed here (NumPy, or the parameter counts of a model this
module builds itself), never by calling the learner's objects: the learner's code runs only
inside `Checker.call`, and what comes back is plain data.
"""

from __future__ import annotations

from math import erf, sqrt

import numpy as np

from mmlm_course import instructions, mllm, preprocessing, stages
from mmlm_course.exercises import Checker, draw_cases, exercise

# --------------------------------------------------------------------------- 08.answer_only_targets


def _array(c: Checker, what: str, value, shape: tuple, hint: str) -> np.ndarray:
    """``value`` as an array of ``shape``; a list or a number fails as such, not as a wrong shape."""
    if not isinstance(value, np.ndarray):
        c.fail(what, f"expected an array of shape {shape}, got {type(value).__name__}",
               "return NumPy arrays or tensors, not lists (np.asarray or keras.ops give one)")
    return c.expect_array(what, value, shape, hint=hint)


def _expected_targets(ids: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """What the text asks for, in plain NumPy: target t is token t + 1, 0 when that is a prompt token."""
    targets = ids[:, 1:].astype(np.int64)
    targets[np.arange(targets.shape[1])[None, :] + 1 < lengths[:, None]] = 0
    return ids[:, :-1].astype(np.int64), targets


def _targets_mistake(ids, lengths, keep_from_offset: int = -1, shift: bool = True):
    ids, lengths = np.asarray(ids), np.asarray(lengths)
    inputs = ids[:, :-1].astype(np.int32)
    targets = (ids[:, 1:] if shift else ids[:, :-1]).astype(np.int32).copy()
    targets[np.arange(targets.shape[1])[None] < lengths[:, None] + keep_from_offset] = 0
    return inputs, targets


def _keeps_input_dtype(ids, lengths):
    ids = np.asarray(ids)
    targets = ids[:, 1:].copy()
    targets[np.arange(targets.shape[1])[None] < np.asarray(lengths)[:, None] - 1] = 0
    return ids[:, :-1], targets


def _ignore_index_minus_100(ids, lengths):
    inputs, targets = instructions.answer_only_targets(ids, lengths)
    return inputs, np.where((targets == 0) & (np.asarray(ids)[:, 1:] != 0), -100, targets).astype(np.int32)


def _first_row_length_for_all(ids, lengths):
    return instructions.answer_only_targets(ids, np.full(len(lengths), np.asarray(lengths)[0]))


def _masks_inputs_too(ids, lengths):
    inputs, targets = instructions.answer_only_targets(ids, lengths)
    inputs = inputs.copy()
    inputs[np.arange(inputs.shape[1])[None] < np.asarray(lengths)[:, None]] = 0
    return inputs, targets


def _masks_prompt_words(ids, lengths):
    inputs, targets = instructions.answer_only_targets(ids, lengths)
    prompt_words = [set(row[:n].tolist()) for row, n in zip(np.asarray(ids), np.asarray(lengths))]
    return inputs, np.array([[0 if t in words else t for t in row] for row, words in zip(targets, prompt_words)],
                            np.int32)


def _instruction_batch() -> tuple[np.ndarray, np.ndarray]:
    """Two rows: a caption (prompt 2 tokens) and a question (prompt 7 tokens), the longer row second."""
    ids = np.array([[2, 4, 11, 12, 13, 14, 3, 0, 0, 0],
                    [2, 5, 21, 22, 23, 24, 6, 31, 3, 0]], np.int32)
    return ids, np.array([2, 7])


def _drawn_batches(count: int = 6) -> list:
    """Deterministic property-based batches: 1 to 4 rows, each prompt + answer + padding."""
    from hypothesis import strategies as st

    @st.composite
    def batch(draw):
        size, length = draw(st.integers(1, 4)), draw(st.integers(3, 10))
        rows, lengths = [], []
        for _ in range(size):
            used = draw(st.integers(2, length))                      # tokens before the padding
            rows.append(draw(st.lists(st.integers(1, 60), min_size=used, max_size=used)) + [0] * (length - used))
            lengths.append(draw(st.integers(1, used - 1)))
        return np.array(rows, np.int64), np.array(lengths, np.int64)

    return draw_cases(batch(), count)


def _target_cases() -> list:
    ids, lengths = _instruction_batch()
    cases = [("the lesson's two rows", ids, lengths),
             ("int64 ids (the result is still int32)", ids.astype(np.int64), lengths.astype(np.int64)),
             ("one row whose prompt is all but <eos>", np.array([[2, 5, 9, 8, 7, 6, 3]]), np.array([6])),
             ("one row with a prompt of one token", np.array([[2, 17, 18, 3, 0]]), np.array([1])),
             ("an answer that repeats a word of its prompt", np.array([[2, 5, 21, 22, 23, 6, 30, 21, 3, 0]]),
              np.array([6]))]
    return cases + [(f"drawn batch {i} of shape {ids.shape}", ids, lengths)
                    for i, (ids, lengths) in enumerate(_drawn_batches())]


def _pads_through_a_view(token_ids, prompt_lengths):
    """Mistake: the right arrays, but the targets are a view of token_ids, padded in place."""
    inputs, targets = token_ids[:, :-1].astype(np.int32), token_ids[:, 1:]
    for row, length in enumerate(prompt_lengths):
        targets[row, :length - 1] = 0
    return inputs, targets.astype(np.int32)


@exercise(
    "08.answer_only_targets",
    reference=instructions.answer_only_targets,
    mistakes={
        "keeps the prompt in the loss": lambda ids, n: (np.asarray(ids)[:, :-1], np.asarray(ids)[:, 1:]),
        "masks the first answer token too (off by one)": lambda ids, n: _targets_mistake(ids, n, 0),
        "keeps the target of the token before the last prompt token": lambda ids, n: _targets_mistake(ids, n, -2),
        "does not shift the targets": lambda ids, n: _targets_mistake(ids, n, -1, shift=False),
        "keeps the input's dtype (int64 stays int64)": _keeps_input_dtype,
        "marks prompt targets with -100 (PyTorch's ignore index)": _ignore_index_minus_100,
        "uses the first row's prompt length for every row": _first_row_length_for_all,
        "zeroes the prompt in the inputs too": _masks_inputs_too,
        "drops the <eos> target": lambda ids, n: (lambda i, t: (i, np.where(t == 3, 0, t).astype(np.int32)))(
            *instructions.answer_only_targets(ids, n)),
        "masks every target that is a word of the prompt (by value, not position)": _masks_prompt_words,
        "pads the prompt's targets in token_ids itself (through a view)": _pads_through_a_view,
    },
)
def _check_answer_only_targets(c: Checker) -> None:
    for what, ids, lengths in _target_cases():
        got = c.call(ids, lengths, read_only=True)
        if not (isinstance(got, (tuple, list)) and len(got) == 2):
            got_what = f"a {type(got).__name__} of {len(got)}" if isinstance(got, (tuple, list)) else type(got).__name__
            c.fail(f"result for {what}", f"expected a tuple of two (inputs, targets), got {got_what}",
                   "return both arrays: `return inputs, targets`")
        inputs, targets = _expected_targets(ids, lengths)
        got_inputs = _array(c, f"inputs for {what}", got[0], inputs.shape,
                            hint="inputs and targets both have length L - 1: drop one token")
        got_targets = _array(c, f"targets for {what}", got[1], targets.shape,
                             hint="inputs and targets both have length L - 1: drop one token")
        for name, array in (("inputs", got_inputs), ("targets", got_targets)):
            if array.dtype.kind not in "iuf" or (array.dtype.kind == "f" and not np.all(np.mod(array, 1) == 0)):
                c.fail(f"{name} for {what}", f"expected whole token ids, got dtype {array.dtype}",
                       "the results are token ids: int32 arrays")
        _compare_inputs(c, what, got_inputs.astype(np.int64), inputs)
        _compare_targets(c, what, ids, lengths, got_targets.astype(np.int64), targets)
        for name, array in (("inputs", got_inputs), ("targets", got_targets)):
            if array.dtype != np.int32:
                c.fail(f"{name} for {what}", f"expected dtype int32, got {array.dtype}",
                       "the text asks for int32 arrays, whatever the dtype of token_ids: cast the results")
        c.passed.append(f"dtypes for {what}")


def _compare_inputs(c: Checker, what: str, got: np.ndarray, inputs: np.ndarray) -> None:
    for row in range(len(inputs)):
        wrong = np.flatnonzero(got[row] != inputs[row])
        if wrong.size:
            c.fail(f"inputs for {what}", f"row {row} differs at position {wrong[0]} (got {got[row, wrong[0]]}, "
                   f"expected {inputs[row, wrong[0]]})",
                   "the inputs are every token but the last one, prompt included: the model reads the prompt")
    c.passed.append(f"inputs for {what}")


def _compare_targets(c: Checker, what: str, ids, lengths, got: np.ndarray, targets: np.ndarray) -> None:
    kept, expected_kept = got != 0, targets != 0
    both = kept & expected_kept
    unshifted = ids[:, :-1]
    if (both.any() and np.array_equal(got[both], unshifted[both])
            and not np.array_equal(targets[both], unshifted[both])):
        c.fail(f"targets for {what}", "the targets equal the inputs at the kept positions",
               "the target of position t is the *next* token, t + 1")
    for row in range(len(ids)):
        where = f"targets for {what}, row {row} (prompt length {lengths[row]})"
        extra = np.flatnonzero(kept[row] & ~expected_kept[row])
        if extra.size:
            t = extra[0]
            if t + 1 < lengths[row]:
                c.fail(where, f"position {t} has target {got[row, t]}, yet the token it predicts, "
                       f"token_ids[{row}, {t + 1}], is a prompt token",
                       "set the targets of prompt tokens to 0 (the padding id): the model reads the prompt, it "
                       "does not predict it")
            c.fail(where, f"position {t} is padding but has target {got[row, t]}",
                   "a padding target stays 0")
        missing = np.flatnonzero(~kept[row] & expected_kept[row])
        if missing.size:
            t = int(missing[0])
            last = t + 1 == int(np.flatnonzero(ids[row])[-1])             # the row's last token: <eos>
            c.fail(where, f"position {t} has target 0, expected token_ids[{row}, {t + 1}] = {ids[row, t + 1]}, "
                   + ("the row's last token (<eos>), which belongs to the answer" if last else "an answer token"),
                   "the last prompt position predicts the first answer token: keep it" if t + 1 == lengths[row]
                   else "<eos> is part of the answer (the model must learn to stop): keep its target" if last
                   else "only targets that are prompt tokens become 0; every answer token stays"
                   + (" (this word also occurs in the prompt: the position decides, not the word)"
                      if ids[row, t + 1] in ids[row, :lengths[row]] else ""))
        wrong = np.flatnonzero(got[row] != targets[row])
        if wrong.size:
            c.fail(where, f"position {wrong[0]} has target {got[row, wrong[0]]}, expected {targets[row, wrong[0]]}",
                   "targets are the tokens shifted by one, 0 where the target is a prompt token")
    c.passed.append(f"targets for {what}")


# --------------------------------------------------------------------------- 08.project_tokens


def _gelu(x, approximate: bool = False):
    x = np.asarray(x, np.float64)
    if approximate:                                     # the tanh form (keras.ops.gelu's default)
        return 0.5 * x * (1 + np.tanh(sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))
    return 0.5 * x * (1 + np.vectorize(erf)(x / sqrt(2)))


def _projector_case(seed: int, batch: int = 2, tokens: int = 4, d_in: int = 5, hidden: int = 7, d_out: int = 3,
                    scale: float = 1.0):
    rng = np.random.default_rng(seed)
    return ((scale * rng.normal(size=(batch, tokens, d_in))).astype(np.float32),
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
        "the tanh approximation (keras.ops.gelu's default)":
            lambda f, w1, b1, w2, b2: _gelu(f @ w1 + b1, approximate=True) @ w2 + b2,
        "forgets the second bias": lambda f, w1, b1, w2, b2: _gelu(f @ w1 + b1) @ w2,
        "GELU on the input before the first layer": lambda f, w1, b1, w2, b2: (_gelu(f) @ w1 + b1) @ w2 + b2,
        "sums the hidden tokens (mixes them)":
            lambda f, w1, b1, w2, b2: _gelu(f @ w1 + b1).sum(1, keepdims=True) @ w2 + b2 + 0 * f[..., :1],
    },
)
def _check_project_tokens(c: Checker) -> None:
    for seed, sizes in ((0, {}), (1, {"batch": 1, "tokens": 16, "d_in": 8, "hidden": 6, "d_out": 8}),
                        (2, {"batch": 3, "tokens": 1}), (3, {"scale": 3.0, "hidden": 9})):
        features, w1, b1, w2, b2 = _projector_case(seed, **sizes)
        pre = features.astype(np.float64) @ w1 + b1
        exact, tanh_form = _gelu(pre) @ w2 + b2, _gelu(pre, approximate=True) @ w2 + b2
        what = f"projected tokens for features {features.shape}"
        got = c.call(features, w1, b1, w2, b2, read_only=True)
        array = _array(c, what, got, exact.shape,
                       hint="one output token per input token: (batch, tokens, D_out); project each token, "
                            "do not pool them")
        if array.dtype.kind != "f":
            c.fail(what, f"expected a float array, got dtype {array.dtype}", "keep the float values")
        if not np.isfinite(array).all():
            c.fail(what, "the result contains inf or NaN", "Dense -> GELU -> Dense: nothing here can overflow")
        if not np.allclose(array.astype(np.float64), exact, atol=1e-4, rtol=1e-4):
            if np.allclose(array.astype(np.float64), tanh_form, atol=1e-4, rtol=1e-4):
                c.fail(what, "the values match the tanh approximation of GELU, not the exact GELU",
                       "the text's keras.activations.gelu computes the exact x * Phi(x) by default; keras.ops.gelu "
                       "defaults to approximate=True, so pass approximate=False there")
            c.expect_close(what, array, exact, atol=1e-4, rtol=1e-4,
                           hint="Dense -> GELU -> Dense: keras.activations.gelu between the two matmuls, biases "
                                "in both, no activation at the end")
        c.passed.append(f"{what} values")


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
        "takes the last rows of the position table":
            lambda i, t, p: np.concatenate([i, t], 1) + p[-(i.shape[1] + t.shape[1]):],
        "concatenates along the feature axis": lambda i, t, p: np.concatenate([i, t], -1),
    },
)
def _check_prepend_image_tokens(c: Checker) -> None:
    for seed, sizes in ((0, {}), (1, {"batch": 1, "p": 16, "t": 6, "d": 8, "extra": 0}),
                        (2, {"batch": 3, "p": 2, "t": 1}), (3, {"p": 3, "t": 3, "d": 4, "extra": 5})):
        image, text, table = _prepend_case(seed, **sizes)
        p, t = image.shape[1], text.shape[1]
        expected = np.concatenate([image, text], axis=1).astype(np.float64) + table[:p + t]
        got = c.call(image, text, table, read_only=True)
        what = f"sequence for image tokens {image.shape} and text {text.shape}"
        array = _array(c, what, got, expected.shape,
                       hint="concatenate along the time axis (axis=1): (batch, P + T, D)")
        if array.dtype.kind != "f":
            c.fail(what, f"expected a float array, got dtype {array.dtype}", "keep the float values")
        if np.allclose(array[:, :t], text + table[:t], atol=1e-5) and not np.allclose(array, expected, atol=1e-5):
            c.fail(what, "the text comes first", "the image tokens go in front: the text is read after the image")
        if np.allclose(array[:, p:], text + table[:t], atol=1e-5) and not np.allclose(table[:t], table[p:p + t]):
            c.fail(what, "the text got positions 0..T-1 again",
                   "positions count the whole sequence: the first text token sits at position P")
        c.expect_close(what, array, expected, atol=1e-5, rtol=1e-5,
                       hint="concatenate [image, text] on axis 1, then add position_table[:P + T] to every row")


# --------------------------------------------------------------------------- 08.set_stage_trainable


_MODEL_KINDS = (        # (what the messages call it, MLLMConfig fields): tiny, so they build in a fraction of a second
    ("grid model", (("image_size", 16), ("encoder_filters", (4,)), ("vision_dim", 8), ("dim", 8), ("num_layers", 1),
                    ("num_heads", 2), ("max_text_length", 4))),
    ("object model with a relation head", (("vision", "objects"), ("relation_head", True), ("dim", 8),
                                           ("num_layers", 1), ("num_heads", 2), ("max_text_length", 4))),
    ("cross-attention grid model", (("architecture", "cross_attention"), ("image_size", 16),
                                    ("encoder_filters", (4,)), ("vision_dim", 8), ("dim", 8), ("num_layers", 1),
                                    ("num_heads", 2), ("max_text_length", 4))),
)
# "the function may be called in any order": stage 2 first, a stage twice; then on a model frozen whole
# (model.trainable = False) before the call, where the order of the flags shows on every backend
_CALL_ORDER = ((2, False), (1, False), (1, False), (2, False), (1, False), (1, True), (2, True), (1, False))
_MAIN_PARTS = ("image_encoder", "projector", "language_model")


def _count(weights) -> int:
    return int(sum(int(np.prod(w.shape)) for w in weights))


def _trainable_state(model):
    """The projection: what the learner's call left in ``model``, as plain data."""
    def project(result):
        return {"returned": result, "model_trainable": bool(model.trainable), "count": _count(model.trainable_weights),
                "tensors": len(model.trainable_weights),
                "parts": {layer.name: _count(layer.trainable_weights) for layer in model.layers}}
    return project


def _expected_parts(sizes: dict, pretrained: bool, stage: int) -> dict:
    """Trainable parameters per part: the projector and anything new always, the language model in
    stage 2, the image encoder in stage 2 unless pretrained."""
    learns = {"image_encoder": stage == 2 and not pretrained, "projector": True, "language_model": stage == 2}
    return {name: size if learns.get(name, True) else 0 for name, size in sizes.items()}


def _stage_mistake(model, stage, encoder=None, language=None, projector=None, whole=True):
    model.trainable = whole
    pretrained = model.config.vision == "objects"
    model.image_encoder.trainable = (stage == 2 and not pretrained) if encoder is None else encoder(stage)
    model.language_model.trainable = (stage == 2) if language is None else language(stage)
    model.projector.trainable = True if projector is None else projector(stage)
    return _count(model.trainable_weights)


def _only_changes_what_differs(model, stage):
    """Stage 1 freezes, stage 2 unfreezes: right after a stage 1, wrong on a fresh object model."""
    if stage == 1:
        model.image_encoder.trainable = model.language_model.trainable = False
    else:
        model.language_model.trainable = True
        if model.config.vision == "grid":
            model.image_encoder.trainable = True
    return _count(model.trainable_weights)


def _projector_alone(model, stage):
    """Freezes every layer but the projector in stage 1 (the relation head too) and never unfreezes the rest."""
    for layer in model.layers:
        if stage == 1:
            layer.trainable = layer is model.projector
    model.language_model.trainable = stage == 2
    model.image_encoder.trainable = stage == 2 and model.config.vision == "grid"
    return _count(model.trainable_weights)


def _freezes_new_parts_in_stage_1(model, stage):
    model.trainable = True
    for layer in model.layers:
        layer.trainable = stage == 2 or layer is model.projector
    if model.config.vision == "objects":
        model.image_encoder.trainable = False
    return _count(model.trainable_weights)


def _whole_model_last(model, stage):
    model.image_encoder.trainable = stage == 2 and model.config.vision == "grid"
    model.language_model.trainable = stage == 2
    model.projector.trainable = True
    model.trainable = True
    return _count(model.trainable_weights)


def _counts_before_setting(model, stage):
    count = _count(model.trainable_weights)
    stages.set_stage_trainable(model, stage)
    return count


def _set_and_count(model, stage, count):
    stages.set_stage_trainable(model, stage)
    return count(model)


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
        "sets only the flags that change from stage 1 to 2 (stage 2 first leaves the detector trainable)":
            _only_changes_what_differs,
        "freezes everything but the projector in stage 1, for good": _projector_alone,
        "freezes the relation head and cross-attention in stage 1": _freezes_new_parts_in_stage_1,
        "counts the parameters before setting the flags": _counts_before_setting,
        "returns the number of weight tensors": lambda m, s: _set_and_count(m, s, lambda m: len(m.trainable_weights)),
        "returns the count of all parameters": lambda m, s: _set_and_count(m, s, lambda m: _count(m.weights)),
        "sets model.trainable = True last (it unfreezes every part again)": _whole_model_last,
    },
)
def _check_set_stage_trainable(c: Checker) -> None:
    tokenizer = preprocessing.Tokenizer.for_shapeworld(extra_special=instructions.TASK_TOKENS)
    for kind, fields in _MODEL_KINDS:
        config = mllm.MLLMConfig(**dict(fields))
        model = mllm.build_model(config, tokenizer)              # a fresh model: every part trainable
        sizes = {layer.name: _count(layer.weights) for layer in model.layers}   # read before the learner's code runs
        pretrained = config.vision == "objects"
        history: list[int] = []
        for stage, frozen in _CALL_ORDER:
            if frozen:
                model.trainable = False                           # the check's own model, frozen whole
            state = c.call(model, stage, project=_trainable_state(model))
            what = f"stage {stage} on the {kind} (" + (
                "frozen whole before the call: model.trainable = False" if frozen else
                f"after stage{'s' * (len(history) > 1)} {', '.join(map(str, history))}" if history
                else "the first call, on a fresh model") + ")"
            repeated = stage in history                       # this stage passed before: the earlier call matters
            _compare_parts(c, what, state, _expected_parts(sizes, pretrained, stage), stage, pretrained,
                           repeated or frozen, sizes)
            _compare_count(c, what, state, sum(_expected_parts(sizes, pretrained, stage).values()))
            history.append(stage if not frozen else f"{stage} on the frozen model")


def _part_hint(name: str, got: int, expected: int, stage: int, pretrained: bool) -> str:
    if 0 < got < expected:
        return (f"only part of {name} is trainable: set the flag on {name} itself (a layer's flag covers every "
                "layer inside it)")
    if name not in _MAIN_PARTS:
        return (f"{name} is new, like the projector: anything the model holds besides the image encoder and the "
                "language model learns in both stages")
    if name == "projector":
        return "the projector learns in both stages"
    if name == "language_model":
        return ("stage 1 freezes the language model; only the new connector (the projector, and a relation head "
                "when there is one) learns") if stage == 1 else "stage 2 unfreezes the language model"
    if stage == 1:
        return "stage 1 freezes the image encoder"
    if pretrained:
        return ("a pretrained encoder (model.config.vision == 'objects') stays frozen in both stages, as LLaVA keeps "
                "CLIP frozen")
    return "an image encoder trained from scratch (vision 'grid') learns in stage 2"


def _compare_parts(c: Checker, what: str, state, expected: dict, stage: int, pretrained: bool, repeated: bool,
                   sizes: dict):
    if not isinstance(state, dict) or not isinstance(state.get("parts"), dict):
        c.fail(what, "the model could not be read after your call", "change only the trainable flags")
    order_note = (" The function may be called in any order and on any model: set every flag on each call, "
                  "whatever an earlier call left (model.trainable too)") if repeated else ""
    if expected and sum(expected.values()) and not state["model_trainable"]:
        c.fail(what, "nothing is trainable (model.trainable is False)",
               "the model came frozen whole, and a frozen parent freezes every layer inside it: set "
               "model.trainable = True first, then the parts" if "frozen whole" in what else
               "freeze the parts, not the whole model: a frozen parent freezes every layer inside it, whatever "
               "their own flags say." + order_note)
    parts = state["parts"]
    if set(parts) != set(expected):
        c.fail(what, f"the model's parts changed: {sorted(map(str, parts))}, expected {sorted(expected)}",
               "set the trainable flags of the parts; do not add or remove layers")
    wrong = [name for name in expected if parts[name] != expected[name]]
    if wrong and stage == 1 and set(parts) == set(sizes) \
            and all(parts[name] == size for name, size in sizes.items()):
        c.fail(what, "every part is trainable, the language model and the image encoder too",
               "model.trainable = True sets every layer inside the model, whatever their own flags: set it "
               "first, then freeze the parts." + order_note)
    if wrong:
        listed = "; ".join(f"{name} has {parts[name]:,} trainable parameters, expected {expected[name]:,}"
                           for name in wrong)
        name = min(wrong, key=lambda n: ("projector", "", "language_model", "image_encoder").index(
            n if n in _MAIN_PARTS else ""))                  # hint at the part the lesson stresses first
        c.fail(what, listed, _part_hint(name, parts[name], expected[name], stage, pretrained) + "." + order_note)
    c.passed.append(f"{what}: trainable parts")


def _compare_count(c: Checker, what: str, state, expected: int) -> None:
    returned = state["returned"]
    if isinstance(returned, np.ndarray) and returned.shape == ():
        returned = returned[()]
    if isinstance(returned, (bool, np.bool_)) or not isinstance(returned, (int, float, np.integer, np.floating)):
        c.fail(what, f"your function returned {type(returned).__name__}, not a number",
               "return the number of trainable parameters: an int")
    if returned != state["count"]:
        if returned == state["tensors"]:
            c.fail(what, f"returned {returned}, the number of trainable weight tensors, not of parameters",
                   "count the scalars: np.prod(w.shape) of each trainable weight, summed")
        c.fail(what, f"returned {returned}, but the model has {state['count']:,} trainable parameters after your call",
               "return the count after setting the flags: the sum of np.prod(w.shape) over "
               "model.trainable_weights")
    c.expect_equal(f"{what}: trainable parameter count", int(returned), expected,
                   "count the parameters of model.trainable_weights after setting the flags")
