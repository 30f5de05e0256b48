"""Lesson 04: the question-answering harness that compares fusion methods fairly.

One task, one budget, one model per fusion method of `fusion`: read an image and a
question, pick the answer from a closed set. The pieces, in the order a notebook uses
them:

=========================  ==============================================================
name                       what it does
=========================  ==============================================================
`build_qa_model`           the model of one fusion method (the core of the harness)
`QuestionEncoder`          token ids -> position-aware token features
`qa_arrays`                images, questions, answers, question types -> arrays
`shapeworld_qa_arrays`     the same for generated ShapeWorld data
`fit_qa_model`             compile and ``model.fit`` (validation data and callbacks too)
`predict_answers`          answer indices
`accuracy_by_type`         accuracy overall and per question type
=========================  ==============================================================

ShapeWorld is the default, not a requirement: the vocabulary (a
`preprocessing.Tokenizer`), the answer set, the question types and the image features
(the frozen `detector`'s object tokens, or any encoder's tokens) are arguments, and a
mismatch between data and model is an error, never a silent ``<unk>``, a dropped type or
extra logits. The model inputs are named ``token_ids`` int32 (batch, T), ``objects``
float32 (batch, K, F) (the frozen image encoder's tokens) and, for early fusion,
``image`` uint8 (batch, H, W, C).
"""

from __future__ import annotations

from typing import Sequence

import keras
import numpy as np

from mmlm_course import detector, encoders, shapeworld
from mmlm_course.fusion import (ConcatFusion, CrossAttentionFusion, FiLM, LateFusion, ProductFusion, RelationFusion,
                                TileConcat)
from mmlm_course.preprocessing import Tokenizer, split_words
from mmlm_course.validation import (dtype_name, is_float, positive_int, require_choice, require_instance, require_int,
                                    require_str)

__all__ = [
    "build_qa_model", "QuestionEncoder", "qa_arrays", "shapeworld_qa_arrays", "inputs_for", "fit_qa_model",
    "predict_answers", "accuracy_by_type", "Objectness", "TokenMask", "MaskedMean",
    "ANSWERS", "QUESTION_LENGTH", "FUSION_METHODS", "IMAGE_SHAPE",
]

_register = keras.saving.register_keras_serializable(package="mmlm_course")

ANSWERS = (shapeworld.COLOR_NAMES + shapeworld.SHAPES + shapeworld.SIZES + shapeworld.NUMBER_WORDS[1:]
           + ("yes", "no"))
"""Every answer a ShapeWorld question can have: a closed set of 17 classes."""
QUESTION_LENGTH = 14  # the longest ShapeWorld question has 14 tokens
IMAGE_SHAPE = (64, 64, 3)  # ShapeWorld images
FUSION_METHODS = ("question_only", "image_only", "early", "concat", "product", "film", "late", "cross_attention",
                  "relation")


# --------------------------------------------------------------------------- the model


def build_qa_model(method: str, num_objects: int = shapeworld.MAX_OBJECTS, width: int = 64,
                   question_length: int = QUESTION_LENGTH, text_encoder: str = "embedding", *,
                   vocab_size: int | None = None, answer_set: Sequence[str] | int = ANSWERS,
                   image_shape: tuple = IMAGE_SHAPE, token_features: int | None = None) -> keras.Model:
    """A question-answering model that fuses the modalities with ``method``.

    ``method`` is one of `FUSION_METHODS`. Inputs (by name, see `inputs_for`):
    ``token_ids`` int32 (batch, question_length) and either ``objects`` float32 (batch,
    num_objects, F), the frozen image encoder's tokens, or, for ``"early"``, ``image``
    uint8 (batch, *image_shape) raw pixels. Output: one logit per answer of
    ``answer_set``, (batch, len(answer_set)), for every method.

    - ``question_only`` / ``image_only``: one modality, the baselines;
    - ``early``: raw 16x16-pixel patches (lesson 03's `PatchEmbedding`) each concatenated with
      the question's raw word embeddings (`TileConcat`), then one network;
    - ``concat`` / ``product``: pooled object vector and question vector, concatenated
      (`ConcatFusion`) or multiplied (`ProductFusion`);
    - ``film``: two `FiLM` blocks modulate every object token with the question vector;
    - ``late``: an image-only and a question-only model combined by `LateFusion`;
    - ``cross_attention``: every object token attends to the question tokens
      (`CrossAttentionFusion`), then each object with what it read is scored;
    - ``relation``: a relation network (`RelationFusion`) scores every ordered pair of
      object tokens with the question, each object grounded in the question's words so
      the pair knows which object is named first.

    Your own data: ``vocab_size`` is the size of the tokenizer that encoded the questions
    (None: `Tokenizer.for_shapeworld`); ``answer_set`` the closed set of answers (or its
    size); ``image_shape`` the pixel input of ``early`` (height and width multiples of 16);
    ``token_features`` the feature size F of generic image tokens from any encoder
    (batch, num_objects, F), every token counting fully. None (the default) means the
    `detector`'s object tokens: F = 14, the last feature the objectness that weighs empty
    slots, the centre rescaled by `detector.CentredPositions` for ``relation``.
    ``text_encoder``: the `QuestionEncoder` kind, ``"embedding"`` or ``"gru"``.
    """
    require_choice(method, FUSION_METHODS, "method")
    vocab_size = Tokenizer.for_shapeworld().vocab_size if vocab_size is None else positive_int(vocab_size,
                                                                                              "vocab_size")
    num_answers = _answer_count(answer_set)
    width, question_length = positive_int(width, "width"), positive_int(question_length, "question_length")
    token_ids = keras.Input((question_length,), dtype="int32", name="token_ids")
    mask = TokenMask(name="question_mask")(token_ids)

    def head(x, prefix):
        x = keras.layers.Dense(2 * width, activation="relu", name=f"{prefix}_hidden")(x)
        return keras.layers.Dense(num_answers, name=f"{prefix}_logits")(x)

    if method == "early":
        image_shape = tuple(positive_int(s, f"image_shape[{i}]") for i, s in enumerate(image_shape))
        if len(image_shape) != 3:
            raise ValueError(f"image_shape must be (height, width, channels), got {image_shape}.")
        image = keras.Input(image_shape, dtype="uint8", name="image")
        pixels = keras.layers.Rescaling(1.0 / 255.0, name="to_float")(image)
        patches = encoders.PatchEmbedding(image_shape[:2], patch_size=16, embed_dim=width // 2,
                                          channels=image_shape[2], name="patches")(pixels)  # (B, N, w/2)
        words = keras.layers.Embedding(vocab_size, 8, name="words")(token_ids)
        words = keras.layers.Flatten(name="raw_question")(words)  # (B, T * 8): the question as data
        h = TileConcat(name="early_fusion")(patches, words)  # (B, N, w/2 + T * 8)
        h = keras.layers.Dense(width, activation="relu", name="joint1")(h)
        h = keras.layers.Dense(width, activation="relu", name="joint2")(h)
        pooled = keras.layers.Concatenate(name="pool")([keras.layers.GlobalAveragePooling1D(name="mean")(h),
                                                         keras.layers.GlobalMaxPooling1D(name="max")(h)])
        return keras.Model({"image": image, "token_ids": token_ids}, head(pooled, "answer"), name="early_fusion")

    detector_tokens = token_features is None
    features = len(detector.OBJECT_FEATURES) if detector_tokens else positive_int(token_features, "token_features")
    objects = keras.Input((positive_int(num_objects, "num_objects"), features), dtype="float32", name="objects")
    objectness = Objectness(name="objectness")(objects) if detector_tokens else None
    inputs = {"objects": objects, "token_ids": token_ids}

    def question_vector(prefix):
        tokens = QuestionEncoder(vocab_size, question_length, width, text_encoder,
                                 name=f"{prefix}_text_encoder")(token_ids)  # (B, T, w)
        vector = MaskedMean(name=f"{prefix}_text_pool")(tokens, mask)
        return tokens, keras.layers.Dense(width, activation="relu", name=f"{prefix}_text_vector")(vector)  # (B, w)

    def object_features(prefix):
        return keras.layers.Dense(width, activation="relu", name=f"{prefix}_object_features")(objects)  # (B, K, w)

    if method in ("question_only", "late"):
        _, q_vec = question_vector("q")
        q_logits = head(q_vec, "q")
    if method in ("image_only", "late"):
        i_logits = head(_pool_objects(object_features("i"), objectness, "i"), "i")
    if method == "question_only":
        return keras.Model({"token_ids": token_ids}, q_logits, name="question_only")
    if method == "image_only":
        return keras.Model({"objects": objects}, i_logits, name="image_only")
    if method == "late":
        return keras.Model(inputs, LateFusion(name="late_fusion")(i_logits, q_logits), name="late_fusion")

    q_tokens, q_vec = question_vector("q")
    h = object_features("i") if method != "relation" else None
    if method == "concat":
        fused = ConcatFusion(2 * width, name="concat_fusion")(h, q_tokens, mask)
    elif method == "product":
        pooled = keras.layers.Dense(width, name="image_vector")(_pool_objects(h, objectness, "i"))
        fused = ProductFusion(2 * width, name="product_fusion")(pooled, q_vec)
    elif method == "film":
        for i in range(2):
            h = FiLM(width, name=f"film{i + 1}")(h, q_vec)
        fused = keras.layers.Concatenate(name="with_question")([_pool_objects(h, objectness, "film"), q_vec])
    elif method == "cross_attention":
        read = CrossAttentionFusion(num_heads=2, key_dim=width // 2, name="cross_attention")(h, q_tokens, mask)
        h = keras.layers.Concatenate(name="object_and_text")([h, read])  # (B, K, 2w)
        h = keras.layers.Dense(width, activation="relu", name="joint")(h)
        fused = keras.layers.Concatenate(name="with_question")([_pool_objects(h, objectness, "attn"), q_vec])
    else:  # relation: the raw tokens, so the pair function sees the two centres directly
        tokens = detector.CentredPositions(name="centred_positions")(objects) if detector_tokens else objects
        fused = RelationFusion(width, key_dim=width // 2, name="relation_network")(
            tokens, q_tokens, q_vec, mask, objectness)  # (B, 2w)
    return keras.Model(inputs, head(fused, "answer"), name=f"{method}_fusion")


def _answer_count(answer_set) -> int:
    if isinstance(answer_set, (int, np.integer)) and not isinstance(answer_set, bool):
        return require_int(answer_set, "answer_set", low=2)
    if isinstance(answer_set, str) or not isinstance(answer_set, Sequence):
        raise TypeError(f"answer_set must be a sequence of answers or their number, got {type(answer_set).__name__}.")
    if len(set(answer_set)) != len(answer_set) or len(answer_set) < 2:
        raise ValueError(f"answer_set must hold at least two distinct answers, got {tuple(answer_set)}.")
    return len(answer_set)


def _pool_objects(h, objectness, prefix: str):
    """Mean (so counts survive) and max over object slots, empty slots weighted by objectness."""
    if objectness is not None:
        h = keras.layers.Multiply(name=f"{prefix}_weigh")([h, objectness])
    return keras.layers.Concatenate(name=f"{prefix}_pool")([
        keras.layers.GlobalAveragePooling1D(name=f"{prefix}_mean")(h),
        keras.layers.GlobalMaxPooling1D(name=f"{prefix}_max")(h)])


@_register
class QuestionEncoder(keras.layers.Layer):
    """Token-level question features: int token_ids (batch, T) -> float (batch, T, width).

    ``kind="embedding"`` (default, fast): word embedding plus a learned position embedding
    (lesson 03's `PositionEmbedding`), so the same word at a different place differs.
    ``kind="gru"``: a bidirectional GRU over the embeddings (lesson 03's
    `RecurrentTextEncoder`): every token also sees its context, e.g. which object of a
    relation it belongs to. Slower on a CPU.
    """

    def __init__(self, vocab_size: int, max_length: int = QUESTION_LENGTH, width: int = 64, kind: str = "embedding",
                 **kwargs):
        super().__init__(**kwargs)
        self.vocab_size = positive_int(vocab_size, "vocab_size")
        self.max_length = positive_int(max_length, "max_length")
        self.width = positive_int(width, "width")
        self.kind = require_choice(kind, ("embedding", "gru"), "kind")
        policy = self.dtype_policy
        if self.kind == "embedding":
            self.embedding = keras.layers.Embedding(self.vocab_size, self.width, name="embedding", dtype=policy)
            self.positions = encoders.PositionEmbedding(self.max_length, self.width, name="positions", dtype=policy)
        else:
            if self.width % 2:
                raise ValueError(f"width must be even for a bidirectional GRU (two halves), got {width}.")
            self.rnn = encoders.RecurrentTextEncoder(self.vocab_size, embed_dim=32, units=self.width // 2,
                                                     bidirectional=True, return_sequences=True, name="gru",
                                                     dtype=policy)
        self.input_spec = keras.layers.InputSpec(ndim=2)

    def build(self, token_ids_shape):
        if self.kind == "embedding":
            self.embedding.build(token_ids_shape)
            self.positions.build(tuple(token_ids_shape) + (self.width,))
        else:
            self.rnn.build(token_ids_shape)

    def call(self, token_ids):
        if self.kind == "embedding":
            return self.positions(self.embedding(token_ids))
        return self.rnn(token_ids)

    def compute_mask(self, token_ids, mask=None):
        return None

    def get_config(self):
        return {**super().get_config(), "vocab_size": self.vocab_size, "max_length": self.max_length,
                "width": self.width, "kind": self.kind}


@_register
class Objectness(keras.layers.Layer):
    """The last feature of the detector's object tokens, (batch, K, 14) -> (batch, K, 1)."""

    def call(self, objects):
        return objects[..., -1:]


@_register
class TokenMask(keras.layers.Layer):
    """Padding mask of token ids: (batch, T) int -> (batch, T) bool, ``token_ids != 0``
    (True on real tokens; 0 is ``<pad>``)."""

    def call(self, token_ids):
        return keras.ops.not_equal(token_ids, Tokenizer.pad_id)


@_register
class MaskedMean(keras.layers.Layer):
    """`encoders.masked_mean_pool` as a layer: ``layer(x, padding)`` with x (batch, T, D)
    and padding a bool (batch, T) mask -> (batch, D). A Keras mask attached to ``x`` is
    consumed (the explicit one is used)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.supports_masking = True

    def call(self, x, padding, mask=None):
        return encoders.masked_mean_pool(x, padding)

    def compute_mask(self, x, padding=None, mask=None):
        return None


# --------------------------------------------------------------------------- data


def qa_arrays(images, questions: Sequence[str], answers: Sequence[str], question_types: Sequence[str], *,
              tokenizer: Tokenizer | None = None, answer_set: Sequence[str] = ANSWERS,
              max_length: int = QUESTION_LENGTH, objects=None, image_encoder=None) -> dict:
    """Arrays for question answering from any dataset, by the names `build_qa_model` uses.

    images: uint8 (N, H, W, C); questions, answers, question_types: N strings each.
    ``tokenizer`` encodes the questions (None: `Tokenizer.for_shapeworld`; for your own
    data, ``Tokenizer.from_texts(questions)``): a word it does not know is an error (the
    tokenizer's ``unknown`` setting), and so is a question longer than ``max_length``
    tokens. Every answer must be in ``answer_set``. ``objects``: the image encoder's
    tokens float (N, K, F), or ``image_encoder`` (a Keras model, images -> tokens) to
    compute them.

    Returns a dict: ``image`` (N, H, W, C); ``token_ids`` int32 (N, max_length),
    right-padded with 0; ``answer`` int32 (N,) index into ``answer_set``;
    ``question_type`` str (N,); and ``objects`` float32 (N, K, F) when given or computed.
    """
    images = np.asarray(images)
    questions, answers, question_types = list(questions), list(answers), list(question_types)
    count = len(images)
    for name, values in (("questions", questions), ("answers", answers), ("question_types", question_types)):
        if len(values) != count:
            raise ValueError(f"{name}: expected one per image ({count}), got {len(values)}.")
    tokenizer = Tokenizer.for_shapeworld() if tokenizer is None else require_instance(tokenizer, Tokenizer, "tokenizer")
    if images.dtype.kind in "USO":
        raise TypeError(f"images: expected uint8 or float pixels, got dtype {images.dtype}.")
    for i, kind in enumerate(question_types):
        require_str(kind, f"question_types[{i}]")
    max_length = positive_int(max_length, "max_length")
    longest = max((len(split_words(q)) for q in questions), default=0)
    if longest > max_length:
        raise ValueError(f"questions: the longest has {longest} tokens, more than max_length={max_length}; pass "
                         f"max_length={longest} (and question_length={longest} to build_qa_model).")
    unknown = sorted(set(answers) - set(answer_set))
    if unknown:
        raise ValueError(f"answers {unknown[:10]} are not in the answer set {tuple(answer_set)}; pass answer_set="
                         "the closed set of your dataset's answers (and the same to build_qa_model).")
    index = {a: i for i, a in enumerate(answer_set)}
    arrays = {"image": images, "token_ids": tokenizer.encode_batch(questions, max_length=max_length),
              "answer": np.array([index[a] for a in answers], np.int32),
              "question_type": np.array(question_types, dtype=str)}
    if objects is None and image_encoder is not None:
        objects = image_encoder.predict(images, batch_size=256, verbose=0)
    if objects is not None:
        objects = np.asarray(objects)
        if objects.ndim != 3 or objects.shape[0] != count:
            raise ValueError(f"objects: expected shape ({count}, K, F) (one row of image tokens per example), got "
                             f"{objects.shape}.")
        arrays["objects"] = objects.astype(np.float32)
    return arrays


def shapeworld_qa_arrays(data: shapeworld.ShapeWorldData, objects=None, max_length: int = QUESTION_LENGTH,
                         image_encoder=None) -> dict:
    """`qa_arrays` for generated ShapeWorld data (its tokenizer and `ANSWERS`)."""
    if not isinstance(data, shapeworld.ShapeWorldData):
        raise TypeError(f"data: expected shapeworld.ShapeWorldData (from shapeworld.generate), got "
                        f"{type(data).__name__}; for other data call qa_arrays(images, questions, answers, "
                        "question_types, ...).")
    arrays = qa_arrays(data.images, data.questions, data.answers, data.question_types, max_length=max_length,
                       objects=objects, image_encoder=image_encoder)
    if "objects" in arrays and arrays["objects"].shape[-1] != len(detector.OBJECT_FEATURES):
        raise ValueError(f"objects: expected the detector's object tokens (N, K, {len(detector.OBJECT_FEATURES)}), "
                         f"got {arrays['objects'].shape}.")
    return arrays


def inputs_for(model: keras.Model, arrays: dict) -> dict:
    """The entries of ``arrays`` (from `qa_arrays`) that ``model`` takes, by input name.

    Checks that they fit the model: the shape of one example, integer vs float values,
    and token ids inside the model's vocabulary (an id past it would read another
    word's embedding, or garbage).
    """
    names = [t.name for t in model.inputs]
    missing = [n for n in names if n not in arrays]
    if missing:
        hint = " (compute the object tokens with the image encoder and pass them to qa_arrays)" \
            if "objects" in missing else ""
        raise KeyError(f"model {model.name!r} needs inputs {names}; {missing} missing from arrays with keys "
                       f"{sorted(arrays)}{hint}.")
    for tensor in model.inputs:
        value = arrays[tensor.name]
        expected, got = tuple(tensor.shape[1:]), tuple(np.shape(value)[1:])
        if len(expected) != len(got) or any(e is not None and e != g for e, g in zip(expected, got)):
            raise ValueError(f"{tensor.name}: model {model.name!r} takes examples of shape {expected}, got {got}; "
                             "build the model for this data (question_length, num_objects, token_features, "
                             "image_shape).")
        if is_float(tensor) != is_float(value):
            raise TypeError(f"{tensor.name}: model {model.name!r} takes {dtype_name(tensor)} values, got "
                            f"{dtype_name(value)}.")
    vocab = [layer.vocab_size for layer in model.layers if isinstance(layer, QuestionEncoder)]
    vocab += [layer.input_dim for layer in model.layers if isinstance(layer, keras.layers.Embedding)]
    if "token_ids" in names and vocab:
        largest = int(np.max(arrays["token_ids"])) if np.size(arrays["token_ids"]) else 0
        if largest >= min(vocab):
            raise ValueError(f"token_ids: id {largest} is outside the model's vocabulary of {min(vocab)} tokens; "
                             "build the model with vocab_size=tokenizer.vocab_size of the tokenizer that encoded "
                             "the questions.")
    return {n: arrays[n] for n in names}


def _require_answers_fit(model: keras.Model, answers, name: str) -> None:
    answers = np.asarray(answers)
    num_logits = model.outputs[0].shape[-1]
    if answers.size and (answers.min() < 0 or answers.max() >= num_logits):
        raise ValueError(f"{name}: answer index {int(answers.max())} but model {model.name!r} scores {num_logits} "
                         "answers; build it with the answer_set that qa_arrays used.")


# --------------------------------------------------------------------------- training and scoring


def fit_qa_model(model: keras.Model, train: dict, epochs: int = 6, batch_size: int = 64,
                 learning_rate: float = 2e-3, verbose: int = 0, jit_compile="auto", validation: dict | None = None,
                 callbacks=None):
    """Compile ``model`` (Adam, sparse cross-entropy on logits, accuracy) and fit it on
    ``train`` (a `qa_arrays` dict); ``validation``: another such dict, scored after every
    epoch (``val_loss``, ``val_accuracy``); ``callbacks``: Keras callbacks. Returns the
    Keras History. An answer index the model has no logit for is an error."""
    _require_answers_fit(model, train["answer"], "train")
    validation_data = None
    if validation is not None:
        _require_answers_fit(model, validation["answer"], "validation")
        validation_data = (inputs_for(model, validation), validation["answer"])
    model.compile(optimizer=keras.optimizers.Adam(learning_rate),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"],
                  jit_compile=jit_compile)
    return model.fit(inputs_for(model, train), train["answer"], batch_size=batch_size, epochs=epochs,
                     verbose=verbose, validation_data=validation_data, callbacks=callbacks)


def predict_answers(model: keras.Model, arrays: dict, batch_size: int = 512) -> np.ndarray:
    """Predicted answer indices, int (N,)."""
    inputs = inputs_for(model, arrays)
    count = len(next(iter(inputs.values())))
    logits = [keras.ops.convert_to_numpy(model({k: v[i:i + batch_size] for k, v in inputs.items()}, training=False))
              for i in range(0, count, batch_size)]  # eager calls: no retracing of a predict function per model
    return np.argmax(np.concatenate(logits), axis=-1)


def accuracy_by_type(predicted, answers, question_types, types: Sequence[str] | None = None) -> dict:
    """Accuracy overall and per question type.

    predicted, answers: int (N,) answer indices; question_types: str (N,). Returns
    ``{"overall": float, type: float, ...}`` for every type present in the data: in the
    order of ``types`` when given (a type present but not listed is an error), else
    ShapeWorld's `shapeworld.QUESTION_TYPES` first and any other type after them in
    order of first appearance.
    """
    predicted, answers, kinds = np.asarray(predicted), np.asarray(answers), np.asarray(question_types)
    if predicted.ndim != 1 or answers.ndim != 1 or kinds.ndim != 1:
        raise ValueError(f"expected three 1-D arrays (N,), got shapes {predicted.shape}, {answers.shape} and "
                         f"{kinds.shape}; take argmax(-1) of logits first.")
    if not len(predicted) == len(answers) == len(kinds):
        raise ValueError(f"predicted, answers and question_types must have one length, got {len(predicted)}, "
                         f"{len(answers)} and {len(kinds)}.")
    if len(answers) == 0:
        raise ValueError("no examples to score.")
    for i, kind in enumerate(kinds.tolist()):
        require_str(kind, f"question_types[{i}]")
    for values, name in ((predicted, "predicted"), (answers, "answers")):
        if values.dtype.kind not in "iu" or values.min() < 0:
            raise TypeError(f"{name}: expected answer indices (ints >= 0), got dtype {values.dtype} with values "
                            f"{values[:5].tolist()}; take argmax(-1) of logits first.")
    present = list(dict.fromkeys(kinds.tolist()))  # in order of first appearance
    if types is None:
        order = [t for t in shapeworld.QUESTION_TYPES if t in present] + [
            t for t in present if t not in shapeworld.QUESTION_TYPES]
    else:
        unlisted = [t for t in present if t not in types]
        if unlisted:
            raise ValueError(f"question_types holds {unlisted}, which are not in types {tuple(types)}; list every "
                             "type (or pass types=None to report all).")
        order = [t for t in types if t in present]
    correct = predicted == answers
    return {"overall": float(correct.mean()), **{t: float(correct[kinds == t].mean()) for t in order}}
