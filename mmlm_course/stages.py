"""Lesson 08: training a multimodal model in stages, as LLaVA does.

- **stage 0, the parts alone.** The vision encoder and the language model are pretrained
  before they meet: lesson 04's object detector on the scenes (`load_object_encoder` copies
  it in), lesson 07's language model on text alone (`pretrain_language_model`, which puts
  the text behind blank image slots, at the positions it will have later).
  `load_language_model_weights` moves a pretrained text model between architectures.
- **stage 1, alignment.** Only the new parts learn (the projector, and a relation head or
  cross-attention layers when there are any); the image encoder and the language model are
  frozen, so the projector learns to speak the language the frozen model already knows.
- **stage 2, instruction tuning.** The language model learns too, and a grid encoder (which
  starts from random weights); a pretrained detector stays frozen.

Keras reads the ``trainable`` flags when it builds the training step, at ``compile()``:
change the flags (`set_stage_trainable`), then compile again (`compile_for_stage` does
both). A frozen encoder's output is a constant: `cache_image_features` computes it once.
The steps themselves run in `training.train_steps`.
"""

from __future__ import annotations

from typing import Sequence

import keras
import numpy as np
from keras import ops

from mmlm_course import detector, instructions, preprocessing
from mmlm_course import language_model as lm
from mmlm_course.mllm import MultimodalModel
from mmlm_course.training import WarmupCosineDecay
from mmlm_course.validation import positive_int, require_float, require_int

__all__ = ["set_stage_trainable", "trainable_parameter_count", "compile_for_stage", "load_object_encoder",
           "cache_image_features", "pretrain_language_model", "load_language_model_weights", "require_model"]

STAGES = (1, 2)


def require_model(model) -> None:
    """TypeError unless ``model`` is a multimodal model of `mllm.build_model`."""
    if not isinstance(model, MultimodalModel):
        raise TypeError(f"model must be an mllm model from mllm.build_model, got {type(model).__name__}.")


def _staged_parts(model) -> list:
    """[(encoder, learns in stage 2)] of a model trained in stages, as the model lists them
    (``model.staged_encoders()``): an `mllm` model's image encoder (a grid encoder learns, a
    pretrained detector does not); lesson 09's `audio_lm.AudioLLaVA`'s CTC-pretrained front
    end (and CTC head), frozen; both kinds in lesson 10's `audiovisual.AudioVisualLLaVA`."""
    if not isinstance(model, keras.Model) or not callable(getattr(model, "staged_encoders", None)):
        raise TypeError(f"model must be an mllm model from mllm.build_model or an audio_lm.AudioLLaVA, got "
                        f"{type(model).__name__}.")
    return model.staged_encoders()


def trainable_parameter_count(model) -> int:
    """Number of scalars in the trainable weights (what the optimizer updates)."""
    return int(sum(np.prod(w.shape) for w in model.trainable_weights))


def set_stage_trainable(model, stage: int) -> int:
    """Set the trainable flags of a training stage; returns the number of trainable
    parameters. Keras reads the flags at ``compile()``: compile afterwards!

    Stage 1 (alignment): only the connector learns: the projector (and, in the
    cross-attention variant, the cross-attention layers; and a `RelationHead`, new like
    the projector); the image encoder and the language model are frozen. Stage 2:
    everything learns, except a pretrained `ObjectImageEncoder`, which stays frozen (as
    LLaVA keeps its CLIP encoder frozen). ``model.trainable = True`` comes first: it sets
    every layer inside the model, and a frozen parent would freeze its children whatever
    their own flags say. Lesson 09's `audio_lm.AudioLLaVA` trains in the same two stages.
    """
    encoders = _staged_parts(model)
    if stage not in STAGES:
        raise ValueError(f"stage must be 1 (projector only) or 2 (everything), got {stage!r}.")
    model.trainable = True                     # every part, the new ones (projectors, heads) included
    for encoder, learns in encoders:
        encoder.trainable = stage == 2 and learns
    model.language_model.trainable = stage == 2
    return trainable_parameter_count(model)


def compile_for_stage(model, stage: int, learning_rate: float, total_steps: int | None = None,
                      jit_compile="auto") -> int:
    """Set the stage's trainable flags, then compile: Adam (warmup-cosine over
    ``total_steps`` when given, warmup 10%; gradients clipped to global norm 1). Returns
    the number of trainable parameters.

    The answer-only loss comes from the model's ``compute_loss``; compile takes no loss.
    """
    count = set_stage_trainable(model, stage)
    rate = require_float(learning_rate, "learning_rate", low=0.0, low_open=True)
    if total_steps is not None:
        total_steps = require_int(total_steps, "total_steps", low=2)
        rate = WarmupCosineDecay(rate, total_steps, warmup_steps=max(1, total_steps // 10))
    model.compile(optimizer=keras.optimizers.Adam(rate, global_clipnorm=1.0), jit_compile=jit_compile)
    return count


def load_object_encoder(model, token_model) -> None:
    """Copy a pretrained object detector (the token model that
    `detector.pretrain_object_encoder` returns) into a ``vision="objects"`` model."""
    require_model(model)
    if model.config.vision != "objects":
        raise ValueError(f"the model's vision is {model.config.vision!r}: only a vision='objects' model has an object "
                         "encoder to load.")
    detector.load_detector(model.image_encoder, token_model)


def cache_image_features(model, x: dict, batch_size: int = 256) -> dict:
    """Run a ``vision="objects"`` model's frozen detector once over the training rows.

    x: ``{"images": uint8 (N, H, W, 3), "token_ids": int32 (N, T)}`` (`instructions.make_examples`).
    Returns ``{"image_features": float32 (N, P, D_v), "token_ids": the same ids}``, which
    the model and `training.train_steps` accept instead of ``x``. The detector never learns
    (`set_stage_trainable` keeps it frozen in both stages) and runs in inference mode, so
    its tokens for an image are the same at every step: computing them once gives the
    same logits, and every training step skips the detector. An image that several rows
    share (a caption row and a question row) is encoded once.
    """
    require_model(model)
    if model.config.vision != "objects":
        raise ValueError(f"the model's vision is {model.config.vision!r}: its encoder learns in stage 2, so its "
                         "features change and cannot be cached; only vision='objects' (a frozen detector) can.")
    if not isinstance(x, dict) or set(x) != {"images", "token_ids"}:
        raise ValueError(f"x must be the dict from make_examples with keys 'images' and 'token_ids', got "
                         f"{sorted(x) if isinstance(x, dict) else type(x).__name__}.")
    images = instructions.require_images(x["images"], size=model.config.image_size)
    batch_size = positive_int(batch_size, "batch_size")
    index_of, row_image = {}, np.empty(len(images), np.int64)     # an image's bytes -> its index among the unique
    for row, image in enumerate(images):
        row_image[row] = index_of.setdefault(image.tobytes(), len(index_of))
    unique = images[np.unique(row_image, return_index=True)[1]]     # (U, H, W, 3): the first row of each image
    features = [ops.convert_to_numpy(model.image_features(ops.convert_to_tensor(unique[i:i + batch_size])))
                for i in range(0, len(unique), batch_size)]
    features = np.concatenate(features).astype(np.float32)                      # (U, P, D_v)
    return {"image_features": features[row_image], "token_ids": x["token_ids"]}


def pretrain_language_model(model, texts: Sequence[str], tokenizer: preprocessing.Tokenizer, epochs: int = 1,
                            batch_size: int = 64, learning_rate: float = 3e-3, verbose: int = 0):
    """Pretrain ``model.language_model`` on text alone with lesson 07's recipe
    (next-token loss over every token, Adam with warmup-cosine, ``model.fit``).

    Each text sits behind ``model.num_prefix_tokens`` padding tokens, the slots the image
    (or audio) tokens take later (none in the cross-attention variant), so the text is
    learned at the positions it will have in the multimodal model (the padding plays a
    blank image). texts: e.g. ``"<caption> a red circle"``, ``"<question> is there a red
    circle? <answer> yes"`` (`instructions.instruction_texts`).
    Returns the History.
    """
    _staged_parts(model)
    texts = list(texts)
    if not texts:
        raise ValueError("texts is empty: give the instruction texts to pretrain on (instructions.instruction_texts).")
    decoder = model.language_model
    slots = model.num_prefix_tokens
    max_text_length = model.config.max_text_length if isinstance(model, MultimodalModel) else model.max_text_length
    ids = tokenizer.encode_batch(texts, max_length=max_text_length + 1)
    if slots:
        blank = np.full((len(ids), slots), tokenizer.pad_id, np.int32)
        ids = np.concatenate([blank, ids], axis=1)
    inputs, targets = lm.next_token_pairs(ids)
    decoder.trainable = True
    steps = positive_int(epochs, "epochs") * max(1, -(-len(inputs) // positive_int(batch_size, "batch_size")))
    schedule = WarmupCosineDecay(learning_rate, max(steps, 2), warmup_steps=max(1, steps // 10))
    decoder.compile(optimizer=keras.optimizers.Adam(schedule, global_clipnorm=1.0), loss=lm.next_token_loss)
    return decoder.fit(inputs, targets, batch_size=batch_size, epochs=epochs, verbose=verbose)


def load_language_model_weights(model, weights: Sequence[np.ndarray], offset: int = 0) -> None:
    """Load a language model's weights (``DecoderLM.get_weights()``) into ``model.language_model``.

    ``offset``: the position where the text started in the source model (a `LLaVAModel`
    puts it behind ``num_image_tokens`` image slots). The position table is re-indexed so
    the text keeps its pretrained positions: source rows ``offset ..`` go to the target's
    text positions (``offset`` rows are added in front for a `LLaVAModel` target). Use it
    to share one pretrained text model between architectures.
    """
    require_model(model)
    offset = require_int(offset, "offset", low=0)
    decoder = model.language_model
    weights = [np.asarray(w) for w in weights]
    if len(weights) != len(decoder.weights):
        raise ValueError(f"expected {len(decoder.weights)} weight arrays (DecoderLM.get_weights() of a model with "
                         f"{model.config.num_layers} layers), got {len(weights)}.")
    text_start = model.num_prefix_tokens
    table = decoder.position_embedding.embeddings
    values = []
    for variable, value in zip(decoder.weights, weights):
        if variable is table:
            target = np.array(ops.convert_to_numpy(table))
            rows = min(len(value) - offset, len(target) - text_start)
            target[text_start:text_start + rows] = value[offset:offset + rows]
            value = target
        if tuple(value.shape) != tuple(variable.shape):
            raise ValueError(f"weight {variable.path}: expected shape {tuple(variable.shape)}, got {value.shape} "
                             "(is the source language model of the same size?).")
        values.append(value)
    decoder.set_weights(values)
