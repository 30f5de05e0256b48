"""Lesson 08: a LLaVA-style multimodal language model.

The recipe of LLaVA (Liu et al., 2023) in miniature:

1. an **image encoder** turns a 64x64 image into feature tokens: lesson 04's object
   detector, pretrained and frozen as LLaVA keeps CLIP (`ObjectImageEncoder`,
   ``MLLMConfig(vision="objects")``, one token per object; ShapeWorld only), or lesson
   03's `ConvImageEncoder` with ``output="tokens"`` trained with the model
   (`GridImageEncoder`, ``vision="grid"``, one token per region; any images, photos too);
2. a **projector** (`ImageTokenProjector`: a two-layer MLP with GELU, after learned grid
   positions for grid tokens) maps each feature token into the word-embedding space of
   the language model;
3. the **language model** (lesson 07's `DecoderLM`) reads the projected image tokens
   *in front of* the text tokens (``prefix_embeddings``) and predicts the text;
4. the loss counts the **answer tokens only**: the prompt is given, never predicted.

Instruction format (one row per (image, task); ``[img]`` are the image tokens)::

    captioning:  [img] <bos> <caption>                              -> caption words <eos>
    question:    [img] <bos> <question> what color is the circle ? <answer> -> red <eos>

Everything left of ``->`` is the prompt; the targets of the prompt positions are 0
(padding), so `language_model.next_token_loss` ignores them. The task tokens are lesson
07's ``<caption>`` and ``<question>`` plus ``<answer>``, which marks where the answer starts
(so questions need not end with "?", as on real VQA data).

Training has two stages (`compile_for_stage`), as in LLaVA:

- stage 1 (alignment): only the new parts learn (the projector, and a relation head or
  cross-attention layers when there are any); the image encoder and the language model
  are frozen. The language model is first pretrained on ShapeWorld text with lesson 07's
  next-token objective (`pretrain_language_model`), so stage 1 teaches the projector to
  speak the language the frozen model already understands;
- stage 2 (instruction tuning): the language model learns too, and a grid encoder (which
  starts from random weights); a pretrained detector stays frozen.

Keras reads the ``trainable`` flags when it builds the training step, at ``compile()``:
change the flags, then compile again (`compile_for_stage` does both and returns the number
of trainable parameters).

A second architecture, `CrossAttentionMLLM` (``MLLMConfig(architecture="cross_attention")``),
keeps the text at positions 0.. and lets every decoder block attend to the image tokens
through a gated cross-attention layer (Flamingo, Alayrac et al., 2022); stage 1 then
trains the projector and the cross-attention layers.

Relations ("is the circle to the left of the square?") are slow to learn in this recipe:
until attention has found the two objects a question names, comparing their positions
averages to nothing. ``relation_head=True`` (lesson 08's and the capstone's ShapeWorld
model) adds a `RelationHead`: lesson 04's relation network read at every text position with
the words so far, whose scores are added to the logits.

Data reaches the models as NumPy dicts ``{"images": uint8 (N, H, W, 3), "token_ids":
int32 (N, T)}`` with targets int32 (N, T), and the models override ``compute_loss``, so the
same code trains on every Keras backend. A frozen detector's tokens can be computed once
(`cache_image_features`) and passed as ``"image_features"`` instead of the images. Model
code uses ``keras.layers`` / ``keras.ops`` only.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Sequence

import keras
import numpy as np
from keras import ops

from mmlm_course import fusion
from mmlm_course.fusion import ObjectImageEncoder  # lesson 04's detector as a frozen vision tower
from mmlm_course import language_model as lm
from mmlm_course import preprocessing, shapeworld
from mmlm_course.encoders import (ConvImageEncoder, PositionEmbedding, ScratchMultiHeadAttention,
                                  TransformerEncoderBlock, patchify)
from mmlm_course.encoders import scaled_dot_product_attention
from mmlm_course.training import WarmupCosineDecay
from mmlm_course.validation import require_int

__all__ = [
    "TASK_TOKENS", "CAPTION", "QUESTION", "ANSWER", "TASKS", "MLLMConfig", "mllm_tokenizer", "prompt_ids",
    "answer_only_targets", "make_examples", "make_examples_from_texts", "instruction_texts",
    "GridImageEncoder", "ImageTokenProjector", "GatedCrossAttention", "LLaVAModel", "CrossAttentionMLLM",
    "build_model", "set_stage_trainable", "trainable_parameter_count", "compile_for_stage", "train_steps",
    "pretrain_language_model", "load_language_model_weights", "generate_texts", "evaluate", "image_attention",
    "prepend_image_tokens", "project_tokens", "grid_coordinate_features", "GridCoordinates",
    "ObjectImageEncoder", "RelationHead", "VISIONS", "load_object_encoder", "cache_image_features",
]

CAPTION, QUESTION = lm.CAPTION, lm.QUESTION
ANSWER = "<answer>"
TASK_TOKENS = tuple(lm.TASK_TOKENS) + (ANSWER,)
TASKS = ("caption", "qa")
ARCHITECTURES = ("prefix", "cross_attention")
VISIONS = ("grid", "objects")
# Per-channel pixel statistics of ShapeWorld (uint8 / 255), for standardising the input images.
SHAPEWORLD_MEAN = (0.896, 0.875, 0.863)
SHAPEWORLD_STD = (0.13, 0.16, 0.204)
_register = keras.saving.register_keras_serializable(package="mmlm_course")


# --------------------------------------------------------------------------- validation helpers


def _images(images, name: str = "images", size: int | None = None) -> np.ndarray:
    """A batch of RGB images (N, H, W, 3), uint8 or float in [0, 1], as NumPy."""
    array = preprocessing.validate_image(images, name)
    if array.ndim != 4:
        raise ValueError(f"{name}: expected a batch (N, H, W, 3), got shape {array.shape} "
                         f"(one image? add a batch axis: images[None]).")
    if len(array) == 0:
        raise ValueError(f"{name}: expected at least one image, got an empty batch of shape {array.shape}.")
    if size is not None and array.shape[1:3] != (size, size):
        raise ValueError(f"{name}: the model was built for {size}x{size} images, got {array.shape[1]}x"
                         f"{array.shape[2]}; resize them with preprocessing.resize_image.")
    return array


def _same_batch(images: np.ndarray, count: int, what: str) -> None:
    if len(images) != count:
        raise ValueError(f"images and {what} must have the same batch size (one {what[:-1]} per image), got "
                         f"{len(images)} images and {count} {what}.")


# --------------------------------------------------------------------------- tokens and instruction format


def mllm_tokenizer(texts: Sequence[str] | None = None, min_count: int = 1) -> preprocessing.Tokenizer:
    """The tokenizer with the task tokens ``<caption>``, ``<question>``, ``<answer>``.

    ``texts=None``: the closed ShapeWorld vocabulary. Otherwise a vocabulary built from
    ``texts`` (captions, questions and answers of a real dataset) with words seen at least
    ``min_count`` times. Ids: 0-3 ``<pad> <unk> <bos> <eos>``, 4-6 the task tokens, then words.
    """
    if texts is None:
        return preprocessing.Tokenizer.for_shapeworld(extra_special=TASK_TOKENS)
    if isinstance(texts, str):
        raise TypeError("texts must be a list of strings, got one str; wrap it in a list.")
    texts = list(texts)
    if not texts:
        raise ValueError("texts is empty: give the captions / questions / answers to build the vocabulary from.")
    return preprocessing.Tokenizer.from_texts(texts, min_count=require_int(min_count, "min_count", 1),
                                              extra_special=TASK_TOKENS)


def _check_tokenizer(tokenizer) -> None:
    if not isinstance(tokenizer, preprocessing.Tokenizer):
        raise TypeError(f"tokenizer must be a preprocessing.Tokenizer, got {type(tokenizer).__name__}.")
    missing = [t for t in TASK_TOKENS if t not in tokenizer.token_to_id]
    if missing:
        raise ValueError(f"the tokenizer lacks the task tokens {missing}; build it with mllm_tokenizer() "
                         f"(or Tokenizer(..., extra_special=mllm.TASK_TOKENS)).")


def prompt_ids(prompt: str, tokenizer: preprocessing.Tokenizer) -> list[int]:
    """The prompt tokens of one row: ``""`` -> ``<bos> <caption>``; a question ->
    ``<bos> <question> question words <answer>``. Returns a list of int ids."""
    if not isinstance(prompt, str):
        raise TypeError(f"prompt must be a str ('' for a caption, else the question), got {type(prompt).__name__}.")
    ids = tokenizer.token_to_id
    if not prompt.strip():
        return [tokenizer.bos_id, ids[CAPTION]]
    return [tokenizer.bos_id, ids[QUESTION]] + tokenizer.encode(prompt) + [ids[ANSWER]]


def answer_only_targets(token_ids, prompt_lengths, pad_id: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Inputs and answer-only targets of full instruction sequences.

    token_ids: int (B, L), each row ``prompt + answer + <eos>`` right-padded with
    ``pad_id``; prompt_lengths: int (B,), the number of prompt tokens of each row (>= 1).
    Returns ``(inputs, targets)``, both int32 (B, L - 1): ``inputs = ids[:, :-1]`` and
    ``targets = ids[:, 1:]`` with every target that is a *prompt* token set to ``pad_id``.
    Target ``t`` is token ``t + 1``, so row b keeps targets ``t >= prompt_lengths[b] - 1``:
    the last prompt position predicts the first answer token.
    """
    ids = np.asarray(token_ids)
    lengths = np.asarray(prompt_lengths)
    if ids.ndim != 2 or not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"token_ids: expected int (batch, length), got shape {ids.shape} dtype {ids.dtype}.")
    if ids.shape[1] < 2:
        raise ValueError(f"token_ids: need at least 2 tokens per row (a prompt and an answer), got shape {ids.shape}.")
    if lengths.shape != (ids.shape[0],) or not np.issubdtype(lengths.dtype, np.integer):
        raise ValueError(f"prompt_lengths: expected int ({ids.shape[0]},) (one length per row of token_ids), "
                         f"got shape {lengths.shape} dtype {lengths.dtype}.")
    if lengths.size and (lengths.min() < 1 or lengths.max() >= ids.shape[1]):
        raise ValueError(f"prompt_lengths must lie in [1, {ids.shape[1] - 1}] so each row keeps at least one "
                         f"answer token, got values in [{lengths.min()}, {lengths.max()}].")
    inputs, targets = ids[:, :-1].astype(np.int32), ids[:, 1:].astype(np.int32).copy()
    positions = np.arange(targets.shape[1])[None, :]
    targets[positions < (lengths[:, None] - 1)] = pad_id
    return inputs, targets


def _instruction_rows(prompts: Sequence[str], answers: Sequence[str], tokenizer, max_text_length: int):
    """Encode (prompt, answer) pairs into (inputs, targets) int32 (N, max_text_length)."""
    sequences, lengths = [], []
    for prompt, answer in zip(prompts, answers):
        head = prompt_ids(prompt, tokenizer)
        if len(head) > max_text_length:
            raise ValueError(f"the prompt {prompt!r} takes {len(head)} tokens, which leaves no room for an answer "
                             f"in max_text_length={max_text_length}; use a larger max_text_length.")
        full = head + tokenizer.encode(answer) + [tokenizer.eos_id]
        sequences.append(full[: max_text_length + 1])          # long answers are cut (without their <eos>)
        lengths.append(len(head))
    ids, _ = preprocessing.pad_sequences(sequences, max_text_length + 1, tokenizer.pad_id)
    return answer_only_targets(ids, np.asarray(lengths, np.int64), tokenizer.pad_id)


def make_examples_from_texts(images, captions: Sequence[str] | None, qa: Sequence[tuple[str, str]] | None,
                             tokenizer: preprocessing.Tokenizer, max_text_length: int):
    """Training rows from images and their texts (any dataset, e.g. Flickr8k, COCO, VQA).

    images: uint8 (N, H, W, 3) (or float in [0, 1]); captions: N strings or None; qa: N
    ``(question, answer)`` pairs or None. Each image gives one caption row and / or one
    question row, in the order image 0 caption, image 0 question, image 1 caption, ...
    Returns ``(x, y)``: ``x = {"images": (M, H, W, 3) same dtype as images, "token_ids":
    int32 (M, max_text_length)}``, ``y`` int32 (M, max_text_length), the next tokens with
    0 on prompt and padding positions. Answers longer than the room left are cut.
    """
    images = _images(images)
    _check_tokenizer(tokenizer)
    max_text_length = require_int(max_text_length, "max_text_length", 3)
    if captions is None and qa is None:
        raise ValueError("give captions, qa or both: there is nothing to train on.")
    columns = []
    if captions is not None:
        captions = list(captions)
        _same_batch(images, len(captions), "captions")
        if not all(isinstance(c, str) and c.strip() for c in captions):
            raise ValueError("captions must be non-empty strings.")
        columns.append([("", c) for c in captions])
    if qa is not None:
        qa = list(qa)
        _same_batch(images, len(qa), "qa pairs")
        if not all(isinstance(p, (tuple, list)) and len(p) == 2 and all(isinstance(s, str) and s.strip() for s in p)
                   for p in qa):
            raise ValueError("qa must be a list of (question, answer) pairs of non-empty strings.")
        columns.append([(q, a) for q, a in qa])
    pairs = [pair for row in zip(*columns) for pair in row]        # interleaved: image by image
    image_index = np.repeat(np.arange(len(images)), len(columns))
    inputs, targets = _instruction_rows([p for p, _ in pairs], [a for _, a in pairs], tokenizer, max_text_length)
    return {"images": images[image_index], "token_ids": inputs}, targets


def make_examples(data: shapeworld.ShapeWorldData, tokenizer: preprocessing.Tokenizer, max_text_length: int,
                  tasks: Sequence[str] = TASKS):
    """Training rows from ShapeWorld: one row per (image, task), tasks ``"caption"``
    and / or ``"qa"``, so N examples give up to 2N rows. See `make_examples_from_texts`."""
    if not isinstance(data, shapeworld.ShapeWorldData):
        raise TypeError(f"data must be a shapeworld.ShapeWorldData, got {type(data).__name__}.")
    if isinstance(tasks, str):
        tasks = (tasks,)
    unknown = [t for t in tasks if t not in TASKS]
    if unknown or not tasks:
        raise ValueError(f"tasks must be a non-empty subset of {TASKS}, got {tuple(tasks)}.")
    captions = data.captions if "caption" in tasks else None
    qa = list(zip(data.questions, data.answers)) if "qa" in tasks else None
    return make_examples_from_texts(data.images, captions, qa, tokenizer, max_text_length)


# --------------------------------------------------------------------------- exercise references


def prepend_image_tokens(image_tokens, text_embeddings, position_table):
    """Put image tokens in front of the text and add positions.

    image_tokens float (B, P, D), text_embeddings float (B, T, D), position_table float
    (L, D) with L >= P + T. Returns float (B, P + T, D): ``concat([image, text], axis=1)
    + position_table[:P + T]``, so the text starts at position P.
    """
    image_tokens, text_embeddings = ops.convert_to_tensor(image_tokens), ops.convert_to_tensor(text_embeddings)
    table = ops.convert_to_tensor(position_table)
    for name, x, rank in (("image_tokens", image_tokens, 3), ("text_embeddings", text_embeddings, 3),
                          ("position_table", table, 2)):
        if len(x.shape) != rank:
            raise ValueError(f"{name}: expected rank {rank}, got shape {tuple(x.shape)}.")
    if image_tokens.shape[0] != text_embeddings.shape[0]:
        raise ValueError(f"image_tokens and text_embeddings must have the same batch size, got "
                         f"{image_tokens.shape[0]} and {text_embeddings.shape[0]}.")
    if image_tokens.shape[-1] != text_embeddings.shape[-1] or table.shape[-1] != text_embeddings.shape[-1]:
        raise ValueError(f"image tokens, text embeddings and positions must share the width D, got "
                         f"{image_tokens.shape[-1]}, {text_embeddings.shape[-1]} and {table.shape[-1]}.")
    length = image_tokens.shape[1] + text_embeddings.shape[1]
    if length > table.shape[0]:
        raise ValueError(f"position_table has {table.shape[0]} positions, fewer than P + T = {length}.")
    sequence = ops.concatenate([image_tokens, ops.cast(text_embeddings, image_tokens.dtype)], axis=1)
    return sequence + ops.cast(table[:length], sequence.dtype)[None]


def project_tokens(features, w1, b1, w2, b2):
    """The projector's MLP on every token: ``gelu(features @ w1 + b1) @ w2 + b2``.

    features float (B, N, D_in), w1 (D_in, H), b1 (H,), w2 (H, D), b2 (D,). Returns float
    (B, N, D): each image token is mapped on its own (no mixing across tokens).
    """
    hidden = keras.activations.gelu(ops.matmul(features, w1) + b1)
    return ops.matmul(hidden, w2) + b2


# --------------------------------------------------------------------------- layers


def grid_coordinate_features(grid_size: int) -> np.ndarray:
    """float32 (grid_size**2, 6): for each cell in reading order its column x and row y
    in [-1, 1], then sin(pi x), sin(pi y), cos(pi x), cos(pi y)."""
    steps = np.linspace(-1.0, 1.0, require_int(grid_size, "grid_size", 1))
    rows, columns = np.meshgrid(steps, steps, indexing="ij")
    xy = np.stack([columns.ravel(), rows.ravel()], axis=1)
    return np.concatenate([xy, np.sin(np.pi * xy), np.cos(np.pi * xy)], axis=1).astype(np.float32)


@_register
class GridCoordinates(keras.initializers.Initializer):
    """Initial values for a grid's position table (``grid_size**2``, D) from which each
    cell's column and row can be read off linearly: `grid_coordinate_features` times a
    random (6, D) matrix, times ``scale``.

    Why not small random values? A relation such as "the circle is to the left of the
    square" compares two positions. With a random table the positions must first be
    learned, from the relational examples alone; with this one they are there from the
    first step (still trainable). ``scale=0.2`` gives rows of about the norm of the
    encoder's features at initialisation.
    """

    def __init__(self, grid_size: int, scale: float = 0.2, seed: int | None = None):
        self.grid_size = require_int(grid_size, "grid_size", 1)
        self.scale = float(scale)
        self.seed = seed

    def __call__(self, shape, dtype=None):
        cells = self.grid_size ** 2
        if len(shape) != 2 or shape[0] != cells:
            raise ValueError(f"GridCoordinates({self.grid_size}) makes a ({cells}, D) table, asked for {tuple(shape)}.")
        mixing = keras.random.normal((6, shape[1]), seed=self.seed, dtype=dtype or "float32")
        features = ops.convert_to_tensor(grid_coordinate_features(self.grid_size), dtype=mixing.dtype)
        return ops.matmul(features, mixing) * self.scale

    def get_config(self):
        return {"grid_size": self.grid_size, "scale": self.scale, "seed": self.seed}


@_register
class ImageTokenProjector(keras.layers.Layer):
    """Image feature tokens -> language-model embeddings.

    Input float (B, num_tokens, input_dim) from the image encoder; ``Dense(hidden_dim,
    gelu) -> Dense(dim)`` on every token on its own (LLaVA-1.5's MLP projector). Output
    float (B, num_tokens, dim). Parameters: ``input_dim * hidden_dim + hidden_dim +
    hidden_dim * dim + dim``.
    """

    def __init__(self, num_tokens: int, input_dim: int, dim: int, hidden_dim: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.num_tokens = require_int(num_tokens, "num_tokens", 1)
        self.input_dim = require_int(input_dim, "input_dim", 1)
        self.dim = require_int(dim, "dim", 1)
        self.hidden_dim = self.dim if hidden_dim is None else require_int(hidden_dim, "hidden_dim", 1)
        self.hidden = keras.layers.Dense(self.hidden_dim, activation="gelu", name="hidden", dtype=self.dtype_policy)
        self.output_layer = keras.layers.Dense(self.dim, name="output", dtype=self.dtype_policy)

    def build(self, input_shape):
        if len(input_shape) != 3 or input_shape[-1] != self.input_dim:
            raise ValueError(f"{self.name}: expected image tokens (batch, {self.num_tokens}, {self.input_dim}), "
                             f"got {tuple(input_shape)}.")
        self.hidden.build(input_shape)
        self.output_layer.build(tuple(input_shape[:-1]) + (self.hidden_dim,))

    def call(self, tokens):
        if tokens.shape[1] is not None and tokens.shape[1] != self.num_tokens:
            raise ValueError(f"{self.name}: expected {self.num_tokens} image tokens, got {tokens.shape[1]}.")
        return self.output_layer(self.hidden(tokens))

    def get_config(self):
        return {**super().get_config(), "num_tokens": self.num_tokens, "input_dim": self.input_dim, "dim": self.dim,
                "hidden_dim": self.hidden_dim}


@_register
class GridImageEncoder(keras.layers.Layer):
    """Images -> a grid of feature tokens, one per image region.

    1. a space-to-depth stem (lesson 03's `patchify` with ``stem x stem`` patches, reshaped
       back into a grid: (B, H, W, 3) -> (B, H/stem, W/stem, 3 stem^2), no pixel lost)
       makes every later convolution ``stem^2`` times cheaper;
    2. with ``coordinates=True`` two channels hold each pixel's column and row (CoordConv),
       so features can say where a shape is;
    3. lesson 03's `ConvImageEncoder` with ``output="tokens"``: one token per cell of the
       last feature map;
    4. a learned position per cell (lesson 03's `PositionEmbedding`, started from
       `GridCoordinates` so that column and row are readable from the first step), then ``blocks``
       `TransformerEncoderBlock` s in which every region attends to every other one (as in
       a ViT; 0 by default).

    Input float (B, H, W, 3) (standardised pixels); output float (B, grid * grid,
    embed_dim) with ``grid = H / stem / 2**len(filters)``, in reading order.
    """

    def __init__(self, image_size: int = 64, filters: Sequence[int] = (32, 64, 64), embed_dim: int = 64,
                 stem: int = 2, coordinates: bool = True, blocks: int = 0, num_heads: int = 4, **kwargs):
        super().__init__(**kwargs)
        self.image_size = require_int(image_size, "image_size", 1)
        self.filters = tuple(require_int(f, f"filters[{i}]", 1) for i, f in enumerate(filters))
        self.embed_dim = require_int(embed_dim, "embed_dim", 1)
        self.stem = require_int(stem, "stem", 1)
        side = self.image_size // self.stem
        if self.image_size % self.stem or side % 2 ** len(self.filters):
            raise ValueError(f"image_size={image_size} must be divisible by stem * 2**len(filters) = "
                             f"{self.stem * 2 ** len(self.filters)}.")
        self.grid_size = side // 2 ** len(self.filters)
        self.coordinates = bool(coordinates)
        self.channels = 3 * self.stem ** 2 + 2 * int(self.coordinates)
        self.convolutions = ConvImageEncoder(self.filters, embed_dim=self.embed_dim, output="tokens",
                                             channels=self.channels, name="convolutions",
                                             dtype=self.dtype_policy)
        self.num_tokens = self.grid_size ** 2
        self.num_blocks = require_int(blocks, "blocks", 0)
        self.num_heads = require_int(num_heads, "num_heads", 1)
        self.positions = PositionEmbedding(self.num_tokens, self.embed_dim, name="positions",
                                           initializer=GridCoordinates(self.grid_size),
                                           dtype=self.dtype_policy)
        self.blocks = [TransformerEncoderBlock(self.embed_dim, self.num_heads, 2 * self.embed_dim,
                                               name=f"block{i + 1}", dtype=self.dtype_policy)
                       for i in range(self.num_blocks)]

    def build(self, input_shape):
        side = self.image_size // self.stem
        self.convolutions.build((None, side, side, self.channels))
        token_shape = (None, self.num_tokens, self.embed_dim)
        self.positions.build(token_shape)
        for block in self.blocks:
            block.build(token_shape)

    def space_to_depth(self, images):
        """(B, H, W, 3) -> (B, H / stem, W / stem, 3 * stem^2): each stem x stem patch becomes one pixel."""
        if self.stem == 1:
            return images
        side = self.image_size // self.stem
        return ops.reshape(patchify(images, self.stem), (-1, side, side, 3 * self.stem ** 2))

    def add_coordinates(self, x):
        """(B, h, w, C) -> (B, h, w, C + 2): append each pixel's column and row, scaled to
        [-1, 1] (CoordConv), so the features can say *where* a shape is, not only *what*."""
        side = self.image_size // self.stem
        steps = ops.linspace(-1.0, 1.0, side)
        columns = ops.broadcast_to(ops.reshape(steps, (1, 1, side, 1)), (1, side, side, 1))
        rows = ops.broadcast_to(ops.reshape(steps, (1, side, 1, 1)), (1, side, side, 1))
        grid = ops.cast(ops.concatenate([columns, rows], axis=-1), x.dtype)          # (1, h, w, 2)
        return ops.concatenate([x, ops.broadcast_to(grid, (ops.shape(x)[0], side, side, 2))], axis=-1)

    def call(self, images, training=None):
        x = self.space_to_depth(images)
        if self.coordinates:
            x = self.add_coordinates(x)
        tokens = self.positions(self.convolutions(x))                   # (B, grid * grid, embed_dim)
        for block in self.blocks:
            tokens = block(tokens, training=training)                  # every region sees every other one
        return tokens

    def get_config(self):
        return {**super().get_config(), "image_size": self.image_size, "filters": list(self.filters),
                "embed_dim": self.embed_dim, "stem": self.stem, "coordinates": self.coordinates,
                "blocks": self.num_blocks, "num_heads": self.num_heads}


@_register
class RelationHead(keras.layers.Layer):
    """Lesson 04's relation network, read at every text position: next-token scores.

    ``head(objects, token_ids)`` with objects float (B, K, 14) (`ObjectImageEncoder`) and
    token_ids int (B, T), T <= max_text_length. For each position t, the words 0..t (the
    prompt and the text generated so far) ground the objects (`fusion.RelationFusion`:
    which object is named where), every ordered pair of objects is scored with them, and
    an MLP turns the pooled pair scores into float32 scores over the vocabulary, returned
    as (B, T, vocab_size). The model adds them to the language model's logits (a second
    reader whose scores are summed, like "shallow fusion" of two models).

    Why: a language model reading object tokens must *select* the two objects a relation
    names before it can compare them, and until it does, the comparison it reads averages
    to zero, so nothing tells it what to select (without the head, relation questions
    stayed at chance in every run we made, with grid tokens and with exact object tokens).
    The relation network scores every pair at once, with no selection to learn first.
    """

    def __init__(self, vocab_size: int, max_text_length: int, width: int = 64, pad_id: int = 0, **kwargs):
        super().__init__(**kwargs)
        self.vocab_size = require_int(vocab_size, "vocab_size", 2)
        self.max_text_length = require_int(max_text_length, "max_text_length", 1)
        self.width = require_int(width, "width", 2)
        self.pad_id = require_int(pad_id, "pad_id", 0)
        self.words = fusion.QuestionEncoder(self.vocab_size, self.max_text_length, self.width, name="words")
        self.context = keras.layers.Dense(self.width, activation="relu", name="context")
        self.relation = fusion.RelationFusion(self.width, key_dim=self.width // 2, name="relation_network")
        self.hidden = keras.layers.Dense(2 * self.width, activation="relu", name="hidden")
        self.scores = keras.layers.Dense(self.vocab_size, dtype="float32", name="scores")

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
        seen = ops.logical_and(lm.causal_mask(full)[None], ops.not_equal(ids, self.pad_id)[:, None, :])  # (B, L, L)
        seen = ops.cast(seen, words.dtype)                          # seen[b, t, s]: position t reads word s
        # The network at position t reads the words 0..t: the same word projections, masked
        # per position, so they are computed once and the rows (one per position) share them.
        # words_so_far is encoders.masked_mean of the words under each position's mask, all
        # positions in one matmul.
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


@_register
class GatedCrossAttention(keras.layers.Layer):
    """Text attends to image tokens: ``x + tanh(gate) * CrossAttention(LayerNorm(x), image)``.

    x float (B, T, dim) (queries), image float (B, P, dim) (keys and values); output
    (B, T, dim). The gate starts at 0 (Flamingo), so a freshly inserted layer leaves a
    pretrained language model unchanged and opens as training finds the image useful.
    ``return_attention_scores=True`` also returns the weights (B, heads, T, P).
    """

    def __init__(self, dim: int, num_heads: int, dropout: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.dim = require_int(dim, "dim", 1)
        self.num_heads = require_int(num_heads, "num_heads", 1)
        if self.dim % self.num_heads:
            raise ValueError(f"dim={dim} must be divisible by num_heads={num_heads}.")
        self.dropout = float(dropout)
        self.norm = keras.layers.LayerNormalization(epsilon=1e-5, name="norm", dtype=self.dtype_policy)
        self.attention = ScratchMultiHeadAttention(self.num_heads, self.dim // self.num_heads, dropout=self.dropout,
                                                   name="attention", dtype=self.dtype_policy)

    def build(self, x_shape, image_shape=None):
        image_shape = x_shape if image_shape is None else image_shape
        self.norm.build(x_shape)
        self.attention.build(x_shape, image_shape)
        self.gate = self.add_weight(name="gate", shape=(), initializer="zeros")

    def call(self, x, image, training=None, return_attention_scores=False):
        attended, weights = self.attention(self.norm(x), image, return_attention_scores=True, training=training)
        x = x + ops.cast(ops.tanh(self.gate), attended.dtype) * attended
        return (x, weights) if return_attention_scores else x

    def get_config(self):
        return {**super().get_config(), "dim": self.dim, "num_heads": self.num_heads, "dropout": self.dropout}


# --------------------------------------------------------------------------- configuration


@dataclasses.dataclass(frozen=True)
class MLLMConfig:
    """Sizes of a multimodal model. ``dataclasses.asdict(config)`` round-trips through
    ``MLLMConfig(**d)`` (also after JSON, which turns tuples into lists).

    image_size: square input images (image_size, image_size, 3).
    stem: space-to-depth factor of `GridImageEncoder` (1: none).
    encoder_filters: one ``Conv2D -> MaxPool(2)`` per entry; the image becomes a grid of
        ``grid_size**2`` tokens, ``grid_size = image_size / stem / 2**len(encoder_filters)``
        (64 / 2 / 8 = 4: 16 tokens).
    vision_dim: width of the image encoder's tokens; encoder_blocks: Transformer blocks
        over the image tokens (0: none). projector_hidden: the projector MLP's hidden width
        (None: dim).
    dim, num_layers, num_heads, mlp_dim (None: 4 * dim), dropout: the language model.
    max_text_length: text positions the model reads (prompt + answer, <eos> excluded).
    architecture: ``"prefix"`` (LLaVA: image tokens in front of the text) or
        ``"cross_attention"`` (Flamingo-style gated cross-attention in every block).
    image_mean, image_std: per-channel pixel statistics (of uint8 / 255) used to
        standardise the images (ShapeWorld's by default; use
        ``preprocessing.IMAGENET_MEAN`` / ``IMAGENET_STD`` or your data's for photos).
    vision: ``"grid"`` (`GridImageEncoder`, trained with the model: any images) or
        ``"objects"`` (`ObjectImageEncoder`: lesson 04's pretrained object detector, frozen,
        one token per object; ShapeWorld's 64x64 images only; the grid fields are unused).
    relation_head: add a `RelationHead` (lesson 04's relation network read at every text
        position) whose scores are added to the logits; needs ``vision="objects"``.
    """

    image_size: int = 64
    stem: int = 2
    encoder_filters: tuple = (32, 64, 64)
    vision_dim: int = 64
    encoder_blocks: int = 0
    projector_hidden: int | None = None
    dim: int = 64
    num_layers: int = 4
    num_heads: int = 4
    mlp_dim: int | None = None
    max_text_length: int = 20
    dropout: float = 0.0
    architecture: str = "prefix"
    image_mean: tuple = SHAPEWORLD_MEAN
    image_std: tuple = SHAPEWORLD_STD
    vision: str = "grid"
    relation_head: bool = False

    def __post_init__(self):
        for name in ("encoder_filters", "image_mean", "image_std"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        for name in ("image_mean", "image_std"):
            values = getattr(self, name)
            if len(values) != 3 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
                raise ValueError(f"{name} must be 3 numbers (one per RGB channel), got {values!r}.")
        if min(self.image_std) <= 0:
            raise ValueError(f"image_std must be positive, got {self.image_std}.")
        for name in ("image_size", "stem", "vision_dim", "dim", "num_layers", "num_heads", "max_text_length"):
            require_int(name, getattr(self, name), 1)
        require_int(self.encoder_blocks, "encoder_blocks", 0)
        if self.encoder_blocks and self.vision_dim % self.num_heads:
            raise ValueError(f"vision_dim={self.vision_dim} must be divisible by num_heads={self.num_heads} for the "
                             "image encoder's attention blocks (or use encoder_blocks=0).")
        for name in ("projector_hidden", "mlp_dim"):
            if getattr(self, name) is not None:
                require_int(name, getattr(self, name), 1)
        if not self.encoder_filters:
            raise ValueError("encoder_filters must name at least one convolution.")
        for i, f in enumerate(self.encoder_filters):
            require_int(f, f"encoder_filters[{i}]", 1)
        cell = self.stem * 2 ** len(self.encoder_filters)
        if self.image_size % cell:
            raise ValueError(f"image_size={self.image_size} must be divisible by stem * 2**len(encoder_filters) = "
                             f"{cell} so the feature map is a whole grid.")
        if self.dim % self.num_heads:
            raise ValueError(f"dim={self.dim} must be divisible by num_heads={self.num_heads}.")
        if self.max_text_length < 3:
            raise ValueError(f"max_text_length must be >= 3 (<bos>, a task token, one answer token), got "
                             f"{self.max_text_length}.")
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float)) or not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be a float in [0, 1), got {self.dropout!r}.")
        if self.architecture not in ARCHITECTURES:
            raise ValueError(f"architecture must be one of {ARCHITECTURES}, got {self.architecture!r}.")
        if self.vision not in VISIONS:
            raise ValueError(f"vision must be one of {VISIONS}, got {self.vision!r}.")
        if self.vision == "objects" and self.image_size != 64:
            raise ValueError(f"vision='objects' uses lesson 04's object detector, built for 64x64 images; got "
                             f"image_size={self.image_size}. Use image_size=64 or vision='grid'.")
        if not isinstance(self.relation_head, bool):
            raise TypeError(f"relation_head must be True or False, got {self.relation_head!r}.")
        if self.relation_head and self.vision != "objects":
            raise ValueError("relation_head=True reads object tokens (their centres and objectness): it needs "
                             "vision='objects'.")

    @property
    def grid_size(self) -> int:
        """Side of the image-token grid."""
        return self.image_size // self.stem // 2 ** len(self.encoder_filters)

    @property
    def num_image_tokens(self) -> int:
        """P: one token per grid cell, or one per object slot with ``vision="objects"``."""
        return shapeworld.MAX_OBJECTS if self.vision == "objects" else self.grid_size ** 2


# --------------------------------------------------------------------------- models


class _MultimodalBase(keras.Model):
    """Shared pieces: image encoder + projector, input checks, the answer-only loss."""

    def __init__(self, vocab_size: int, image_size: int = 64, stem: int = 2, encoder_filters=(32, 64, 64),
                 vision_dim: int = 64, encoder_blocks: int = 0,
                 projector_hidden: int | None = None, dim: int = 64, num_layers: int = 4, num_heads: int = 4,
                 mlp_dim: int | None = None, max_text_length: int = 20, dropout: float = 0.0,
                 image_mean=SHAPEWORLD_MEAN, image_std=SHAPEWORLD_STD, vision: str = "grid",
                 relation_head: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.config = MLLMConfig(image_size=image_size, stem=stem, encoder_filters=tuple(encoder_filters),
                                 vision_dim=vision_dim, encoder_blocks=encoder_blocks,
                                 projector_hidden=projector_hidden, dim=dim, num_layers=num_layers,
                                 num_heads=num_heads, mlp_dim=mlp_dim, max_text_length=max_text_length,
                                 dropout=dropout, architecture=self.architecture, image_mean=tuple(image_mean),
                                 image_std=tuple(image_std), vision=vision, relation_head=relation_head)
        self.vocab_size = require_int(vocab_size, "vocab_size", 2)
        if vision == "objects":
            self.image_encoder = ObjectImageEncoder(name="image_encoder")
            self.feature_dim = len(fusion.OBJECT_FEATURES)
        else:
            self.image_encoder = GridImageEncoder(image_size, self.config.encoder_filters, vision_dim, stem,
                                                  blocks=encoder_blocks, num_heads=num_heads, name="image_encoder")
            self.feature_dim = vision_dim
        self.projector = ImageTokenProjector(self.config.num_image_tokens, self.feature_dim, dim, projector_hidden,
                                             name="projector")
        self.relation_head = (RelationHead(self.vocab_size, max_text_length, dim, name="relation_head")
                              if relation_head else None)

    # -- inputs

    def _unpack(self, inputs, training=None):
        """The model's input dict -> (image features float (B, P, D_v), token_ids int (B, T)).

        The image side is ``"images"`` (B, H, W, 3), run through the image encoder, or
        ``"image_features"`` (B, P, D_v), a frozen encoder's output computed beforehand
        (`cache_image_features`)."""
        keys = ({"images", "token_ids"}, {"image_features", "token_ids"})
        if not isinstance(inputs, dict) or set(inputs) not in keys:
            got = sorted(inputs) if isinstance(inputs, dict) else type(inputs).__name__
            raise ValueError(f"{self.name}: expected a dict {{'images': (B, H, W, 3), 'token_ids': int (B, T)}} "
                             f"(or 'image_features' (B, P, D_v) from cache_image_features instead of 'images'), "
                             f"got {got}.")
        token_ids = inputs["token_ids"]
        if len(token_ids.shape) != 2:
            raise ValueError(f"{self.name}: token_ids must have shape (batch, time), got {tuple(token_ids.shape)}.")
        if "int" not in keras.backend.standardize_dtype(token_ids.dtype):
            raise TypeError(f"{self.name}: token_ids must be integer ids, got dtype {token_ids.dtype}.")
        if token_ids.shape[1] is not None and token_ids.shape[1] > self.config.max_text_length:
            raise ValueError(f"{self.name}: {token_ids.shape[1]} text tokens exceed max_text_length="
                             f"{self.config.max_text_length}.")
        if "image_features" in inputs:
            features = self._check_cached_features(inputs["image_features"])
            self._check_same_rows(features, token_ids, "image feature rows")
            return features, token_ids
        images, size = inputs["images"], self.config.image_size
        if len(images.shape) != 4 or tuple(images.shape[1:]) != (size, size, 3):
            raise ValueError(f"{self.name}: images must have shape (batch, {size}, {size}, 3), got "
                             f"{tuple(images.shape)}.")
        self._check_same_rows(images, token_ids, "images")
        return self.image_features(images, training=training), token_ids

    def _check_same_rows(self, image_side, token_ids, what: str) -> None:
        if None not in (image_side.shape[0], token_ids.shape[0]) and image_side.shape[0] != token_ids.shape[0]:
            raise ValueError(f"{self.name}: images and token_ids must have the same batch size, got "
                             f"{image_side.shape[0]} {what} and {token_ids.shape[0]} token rows.")

    def _check_cached_features(self, features):
        """Only a frozen, pretrained encoder's output may stand in for the images: a grid
        encoder learns in stage 2, so features computed before would go stale."""
        if self.config.vision != "objects":
            raise ValueError(f"{self.name}: 'image_features' replace the images only for vision='objects' (a frozen, "
                             f"pretrained detector); this model's {self.config.vision!r} encoder learns with the "
                             "model, so pass 'images'.")
        expected = (self.config.num_image_tokens, self.feature_dim)
        if len(features.shape) != 3 or tuple(features.shape[1:]) != expected:
            raise ValueError(f"{self.name}: image_features must have shape (batch, {expected[0]}, {expected[1]}) "
                             f"(cache_image_features), got {tuple(features.shape)}.")
        if "float" not in keras.backend.standardize_dtype(features.dtype):
            raise TypeError(f"{self.name}: image_features must be float, got dtype {features.dtype}.")
        return features

    def standardize(self, images):
        """uint8 (B, H, W, 3) in 0..255 or float in [0, 1] -> float ``(x - mean) / std`` per
        channel (lesson 01). The plain background becomes about 0, so from the first step the
        encoder's features differ between images instead of repeating the background."""
        dtype = keras.backend.standardize_dtype(images.dtype)
        images = ops.cast(images, self.compute_dtype)
        if "float" not in dtype:
            images = images / ops.cast(255.0, self.compute_dtype)
        mean = ops.cast(ops.convert_to_tensor(self.config.image_mean), self.compute_dtype)
        std = ops.cast(ops.convert_to_tensor(self.config.image_std), self.compute_dtype)
        return (images - mean) / std

    def image_features(self, images, training=None):
        """uint8 (B, H, W, 3) in 0..255 or float in [0, 1] -> the image encoder's tokens
        (B, P, feature_dim): grid features, or object tokens with ``vision="objects"``."""
        if self.config.vision == "objects":
            return self.image_encoder(images)                   # the detector standardises its input itself
        return self.image_encoder(self.standardize(images), training=training)

    def image_tokens(self, images, training=None):
        """uint8 (B, H, W, 3) in 0..255 or float in [0, 1] -> projected tokens (B, P, dim)."""
        return self.projector(self.image_features(images, training=training))

    def add_relation_scores(self, logits, features, token_ids):
        """logits (B, T, V) plus the `RelationHead`'s scores from the object tokens
        ``features`` (B, K, 14), when the model has one; else the logits unchanged."""
        if self.relation_head is None:
            return logits
        return logits + ops.cast(self.relation_head(features, token_ids), logits.dtype)

    def _build_vision(self):
        size = self.config.image_size
        self.image_encoder.build((None, size, size, 3))
        feature_shape = (None, self.config.num_image_tokens, self.feature_dim)
        self.projector.build(feature_shape)
        if self.relation_head is not None:
            self.relation_head.build(feature_shape)

    # -- training

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        """Mean cross-entropy over the answer tokens (targets != 0), plus any layer losses."""
        loss = lm.next_token_loss(y, y_pred)
        if self.losses:
            loss = loss + ops.sum(ops.stack(self.losses))
        return loss

    def get_config(self):
        config = {**super().get_config(), "vocab_size": self.vocab_size}
        config.update({k: v for k, v in dataclasses.asdict(self.config).items() if k != "architecture"})
        for name in ("encoder_filters", "image_mean", "image_std"):
            config[name] = list(getattr(self.config, name))
        return config

    @classmethod
    def from_config(cls, config):
        return cls(**config)


@_register
class LLaVAModel(_MultimodalBase):
    """Image encoder -> projector -> image tokens in front of the text of a `DecoderLM`.

    ``model({"images": (B, H, W, 3) uint8 or float, "token_ids": int (B, T)})`` returns
    next-token logits float32 (B, T, vocab_size) for the T text positions. The language
    model (``model.language_model``, lesson 07) has ``max_length = P + max_text_length``
    positions: P image tokens, then the text.
    """

    architecture = "prefix"

    def __init__(self, vocab_size: int, **kwargs):
        super().__init__(vocab_size, **kwargs)
        c = self.config
        self.language_model = lm.DecoderLM(self.vocab_size, max_length=c.num_image_tokens + c.max_text_length,
                                           dim=c.dim, num_layers=c.num_layers, num_heads=c.num_heads,
                                           mlp_dim=c.mlp_dim, dropout=c.dropout, name="language_model")

    def build(self, input_shape=None):
        self._build_vision()
        self.language_model.build()
        self.built = True

    def call(self, inputs, training=None):
        features, token_ids = self._unpack(inputs, training=training)                    # (B, P, D_v), (B, T)
        prefix = self.projector(features)                                                # (B, P, dim)
        logits = self.language_model(token_ids, prefix_embeddings=prefix, training=training)  # (B, T, V)
        return self.add_relation_scores(logits, features, token_ids)


@_register
class CrossAttentionMLLM(_MultimodalBase):
    """The cross-attention variant: text at positions 0..T-1 of a `DecoderLM`, and before
    each decoder block a `GatedCrossAttention` from the text to the projected image tokens.

    Same inputs and outputs as `LLaVAModel`. The decoder blocks, embeddings and head are
    those of lesson 07's `DecoderLM` (``model.language_model``, ``max_length =
    max_text_length``), so a pretrained text model can be dropped in unchanged.
    """

    architecture = "cross_attention"

    def __init__(self, vocab_size: int, **kwargs):
        super().__init__(vocab_size, **kwargs)
        c = self.config
        self.language_model = lm.DecoderLM(self.vocab_size, max_length=c.max_text_length, dim=c.dim,
                                           num_layers=c.num_layers, num_heads=c.num_heads, mlp_dim=c.mlp_dim,
                                           dropout=c.dropout, name="language_model")
        self.cross_attention = [GatedCrossAttention(c.dim, c.num_heads, c.dropout, name=f"cross_attention_{i}")
                                for i in range(c.num_layers)]

    def build(self, input_shape=None):
        self._build_vision()
        self.language_model.build()
        for layer in self.cross_attention:
            layer.build((None, None, self.config.dim), (None, self.config.num_image_tokens, self.config.dim))
        self.built = True

    def decode(self, image, token_ids, training=None, return_attention_scores=False):
        """Projected image tokens (B, P, dim) and ids int (B, T) -> logits float32 (B, T, V)
        (and the cross-attention weights, a list of (B, heads, T, P), one per block)."""
        decoder = self.language_model
        x = decoder.embed(token_ids)                                                     # (B, T, dim)
        positions = ops.arange(ops.shape(token_ids)[1], dtype="int32")
        x = x + ops.cast(decoder.position_embedding(positions), x.dtype)[None]
        maps = []
        for cross, block in zip(self.cross_attention, decoder.blocks):
            x, weights = cross(x, ops.cast(image, x.dtype), training=training, return_attention_scores=True)
            maps.append(weights)
            x = block(x, training=training)
        logits = decoder.head(decoder.final_norm(x))
        return (logits, maps) if return_attention_scores else logits

    def call(self, inputs, training=None):
        features, token_ids = self._unpack(inputs, training=training)                    # (B, P, D_v), (B, T)
        logits = self.decode(self.projector(features), token_ids, training=training)     # (B, T, V)
        return self.add_relation_scores(logits, features, token_ids)


def build_model(config: MLLMConfig, tokenizer: preprocessing.Tokenizer) -> keras.Model:
    """A built, uncompiled model for ``config`` (`LLaVAModel` or, with
    ``architecture="cross_attention"``, `CrossAttentionMLLM`) with the tokenizer's vocabulary."""
    if not isinstance(config, MLLMConfig):
        raise TypeError(f"config must be an MLLMConfig, got {type(config).__name__}.")
    _check_tokenizer(tokenizer)
    fields = {k: v for k, v in dataclasses.asdict(config).items() if k != "architecture"}
    cls = LLaVAModel if config.architecture == "prefix" else CrossAttentionMLLM
    model = cls(len(tokenizer), **fields, name="llava" if cls is LLaVAModel else "cross_attention_mllm")
    model.build({"images": (None, config.image_size, config.image_size, 3), "token_ids": (None, None)})
    return model


# --------------------------------------------------------------------------- two-stage training


def _check_model(model) -> None:
    if not isinstance(model, _MultimodalBase):
        raise TypeError(f"model must be an mllm model from build_model, got {type(model).__name__}.")


def set_stage_trainable(model, stage: int) -> int:
    """Set the trainable flags of a training stage; returns the number of trainable
    parameters. Keras reads the flags at ``compile()``: compile afterwards!

    Stage 1 (alignment): only the connector learns: the projector (and, in the
    cross-attention variant, the cross-attention layers; and a `RelationHead`, new like
    the projector); the image encoder and the language model are frozen. Stage 2:
    everything learns, except a pretrained `ObjectImageEncoder`, which stays frozen (as
    LLaVA keeps its CLIP encoder frozen). ``model.trainable = True``
    comes first: it sets every layer inside the model, and a frozen parent would freeze
    its children whatever their own flags say.
    """
    _check_model(model)
    if stage not in (1, 2):
        raise ValueError(f"stage must be 1 (projector only) or 2 (everything), got {stage!r}.")
    model.trainable = True
    model.image_encoder.trainable = stage == 2 and model.config.vision == "grid"
    model.language_model.trainable = stage == 2
    model.projector.trainable = True
    for layer in [*getattr(model, "cross_attention", []), model.relation_head]:
        if layer is None:
            continue
        layer.trainable = True
    return trainable_parameter_count(model)


def load_object_encoder(model, token_model) -> None:
    """Copy a pretrained object detector (the token model that
    `fusion.pretrain_object_encoder` returns) into a ``vision="objects"`` model."""
    _check_model(model)
    if model.config.vision != "objects":
        raise ValueError(f"the model's vision is {model.config.vision!r}: only a vision='objects' model has an object "
                         "encoder to load.")
    fusion.load_detector(model.image_encoder, token_model)


def cache_image_features(model, x: dict, batch_size: int = 256) -> dict:
    """Run a ``vision="objects"`` model's frozen detector once over the training rows.

    x: ``{"images": uint8 (N, H, W, 3), "token_ids": int32 (N, T)}`` (`make_examples`).
    Returns ``{"image_features": float32 (N, P, D_v), "token_ids": the same ids}``, which
    the model and `train_steps` accept instead of ``x``. The detector never learns
    (`set_stage_trainable` keeps it frozen in both stages) and runs in inference mode, so
    its tokens for an image are the same at every step: computing them once gives the
    same logits, and every training step skips the detector.
    """
    _check_model(model)
    if model.config.vision != "objects":
        raise ValueError(f"the model's vision is {model.config.vision!r}: its encoder learns in stage 2, so its "
                         "features change and cannot be cached; only vision='objects' (a frozen detector) can.")
    if not isinstance(x, dict) or set(x) != {"images", "token_ids"}:
        raise ValueError(f"x must be the dict from make_examples with keys 'images' and 'token_ids', got "
                         f"{sorted(x) if isinstance(x, dict) else type(x).__name__}.")
    images = _images(x["images"], size=model.config.image_size)
    batch_size = require_int(batch_size, "batch_size", 1)
    features = [ops.convert_to_numpy(model.image_features(ops.convert_to_tensor(images[i:i + batch_size])))
                for i in range(0, len(images), batch_size)]
    return {"image_features": np.concatenate(features).astype(np.float32), "token_ids": x["token_ids"]}


def trainable_parameter_count(model) -> int:
    """Number of scalars in the trainable weights (what the optimizer updates)."""
    return int(sum(np.prod(w.shape) for w in model.trainable_weights))


def compile_for_stage(model, stage: int, learning_rate: float, total_steps: int | None = None,
                      jit_compile="auto", weight_decay: float = 0.0) -> int:
    """Set the stage's trainable flags, then compile (Adam, or AdamW with
    ``weight_decay > 0``; warmup-cosine over ``total_steps`` when given, warmup 10%;
    gradients clipped to global norm 1). Returns the number of trainable parameters.

    The answer-only loss comes from the model's ``compute_loss``; compile takes no loss.
    """
    count = set_stage_trainable(model, stage)
    if not isinstance(learning_rate, (int, float)) or isinstance(learning_rate, bool) or not learning_rate > 0:
        raise ValueError(f"learning_rate must be a positive number, got {learning_rate!r}.")
    rate = float(learning_rate)
    if total_steps is not None:
        total_steps = require_int(total_steps, "total_steps", 2)
        rate = WarmupCosineDecay(rate, total_steps, warmup_steps=max(1, total_steps // 10))
    if weight_decay:
        optimizer = keras.optimizers.AdamW(rate, weight_decay=weight_decay, global_clipnorm=1.0)
    else:
        optimizer = keras.optimizers.Adam(rate, global_clipnorm=1.0)
    model.compile(optimizer=optimizer, jit_compile=jit_compile)
    return count


def train_steps(model, x: dict, y: np.ndarray, steps: int, batch_size: int = 64, log_every: int | None = None,
                seed: int = 0) -> dict:
    """Train a compiled model for exactly ``steps`` batches of NumPy rows.

    Batches are drawn from one shuffled pass over the rows after another (every row once
    per pass), so any number of steps works with any number of rows, and the data stays
    NumPy: the same loop trains on every Keras backend. Returns ``{"steps": [...],
    "loss": [...], "seconds": s, "rows_per_second": r}`` with the mean training loss of
    every ``log_every`` steps (default: 10 points).
    """
    _check_model(model)
    if not isinstance(x, dict) or set(x) not in ({"images", "token_ids"}, {"image_features", "token_ids"}):
        raise ValueError(f"x must be the dict from make_examples (keys 'images' and 'token_ids') or from "
                         f"cache_image_features (keys 'image_features' and 'token_ids'), got "
                         f"{sorted(x) if isinstance(x, dict) else type(x).__name__}.")
    image_key = "images" if "images" in x else "image_features"
    rows = len(y)
    if len(x[image_key]) != rows or len(x["token_ids"]) != rows:
        raise ValueError(f"x and y must have the same number of rows, got {len(x[image_key])} {image_key} rows, "
                         f"{len(x['token_ids'])} token rows and {rows} target rows.")
    steps = require_int(steps, "steps", 1)
    batch_size = require_int(batch_size, "batch_size", 1)
    if batch_size > rows:
        raise ValueError(f"batch_size={batch_size} is larger than the {rows} training rows.")
    log_every = max(1, steps // 10) if log_every is None else require_int(log_every, "log_every", 1)
    rng = np.random.default_rng(seed)
    order, cursor = rng.permutation(rows), 0
    logged_steps, logged_losses, window = [], [], []
    start = time.perf_counter()
    for step in range(1, steps + 1):
        if cursor + batch_size > rows:
            order, cursor = rng.permutation(rows), 0
        batch = np.sort(order[cursor:cursor + batch_size])
        cursor += batch_size
        loss = model.train_on_batch({key: value[batch] for key, value in x.items()}, y[batch])
        window.append(float(np.asarray(loss[0] if isinstance(loss, (list, tuple)) else loss)))
        if step % log_every == 0 or step == steps:
            logged_steps.append(step)
            logged_losses.append(float(np.mean(window)))
            window = []
    seconds = time.perf_counter() - start
    return {"steps": logged_steps, "loss": logged_losses, "seconds": seconds,
            "rows_per_second": steps * batch_size / seconds}


def pretrain_language_model(model, texts: Sequence[str], tokenizer: preprocessing.Tokenizer, epochs: int = 1,
                            batch_size: int = 64, learning_rate: float = 3e-3, verbose: int = 0):
    """Pretrain ``model.language_model`` on text alone with lesson 07's recipe
    (next-token loss over every token, Adam with warmup-cosine).

    For `LLaVAModel` each text sits behind ``num_image_tokens`` padding tokens, the slots
    the image tokens take later, so the text is learned at the positions it will have in
    the multimodal model (the padding plays a blank image). texts: e.g. ``"<caption> a red
    circle"``, ``"<question> is there a red circle? <answer> yes"``. Returns the History.
    """
    _check_model(model)
    texts = list(texts)
    if not texts:
        raise ValueError("texts is empty.")
    decoder = model.language_model
    ids = lm.encode_texts(texts, tokenizer, max_length=model.config.max_text_length + 1)
    if isinstance(model, LLaVAModel):
        blank = np.full((len(ids), model.config.num_image_tokens), tokenizer.pad_id, np.int32)
        ids = np.concatenate([blank, ids], axis=1)
    inputs, targets = lm.next_token_pairs(ids)
    decoder.trainable = True
    steps = require_int(epochs, "epochs", 1) * max(1, -(-len(inputs) // require_int(batch_size, "batch_size", 1)))
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
    _check_model(model)
    decoder = model.language_model
    weights = [np.asarray(w) for w in weights]
    if len(weights) != len(decoder.weights):
        raise ValueError(f"expected {len(decoder.weights)} weight arrays (DecoderLM.get_weights() of a model with "
                         f"{model.config.num_layers} layers), got {len(weights)}.")
    text_start = model.config.num_image_tokens if isinstance(model, LLaVAModel) else 0
    table = decoder.position_embedding.embeddings
    values = []
    for variable, value in zip(decoder.weights, weights):
        if variable is table:
            target = np.array(ops.convert_to_numpy(table))
            rows = min(len(value) - require_int(offset, "offset", 0), len(target) - text_start)
            target[text_start:text_start + rows] = value[offset:offset + rows]
            value = target
        if tuple(value.shape) != tuple(variable.shape):
            raise ValueError(f"weight {variable.path}: expected shape {tuple(variable.shape)}, got {value.shape} "
                             "(is the source language model of the same size?).")
        values.append(value)
    decoder.set_weights(values)


def instruction_texts(data: shapeworld.ShapeWorldData) -> list[str]:
    """Text-only versions of the instruction rows, for `pretrain_language_model`:
    ``"<caption> CAPTION"`` and ``"<question> QUESTION <answer> ANSWER"`` per example."""
    texts = []
    for caption, question, answer in zip(data.captions, data.questions, data.answers):
        texts += [f"{CAPTION} {caption}", f"{QUESTION} {question} {ANSWER} {answer}"]
    return texts


# --------------------------------------------------------------------------- generation and evaluation


def _prompt_groups(prompts: Sequence[str], tokenizer) -> dict[int, list[int]]:
    groups: dict[int, list[int]] = {}
    for i, prompt in enumerate(prompts):
        groups.setdefault(len(prompt_ids(prompt, tokenizer)), []).append(i)
    return groups


def _greedy_recompute(model, images, prompt: np.ndarray, new_tokens: int, eos: int, rows: int):
    """Greedy decoding without a cache: the whole text is recomputed at every step.

    Every call has one shape, ``rows`` x ``max_text_length`` (unfilled slots hold padding,
    which the causal mask hides from earlier positions; missing rows are blank), so Keras's
    compiled predict step is traced once for all prompt lengths and batch sizes."""
    batch, start = prompt.shape
    ids = np.zeros((rows, model.config.max_text_length), np.int32)
    ids[:batch, :start] = prompt
    padded_images = np.zeros((rows,) + images.shape[1:], images.dtype)
    padded_images[:batch] = images
    out = np.zeros((batch, new_tokens), np.int32)
    finished = np.zeros(batch, bool)
    for step in range(new_tokens):
        position = start + step - 1                               # the position that predicts this token
        logits = model.predict_on_batch({"images": padded_images, "token_ids": ids})  # (rows, L, V)
        token = np.asarray(logits)[:batch, position].argmax(-1).astype(np.int32)
        out[:, step] = np.where(finished, 0, token)
        finished |= token == eos
        if finished.all() or step == new_tokens - 1:
            break
        ids[:batch, position + 1] = token
    return out


def generate_texts(model, tokenizer: preprocessing.Tokenizer, images, prompts: Sequence[str],
                   max_new_tokens: int = 20, batch_size: int = 64) -> list[str]:
    """Greedy answers for each (image, prompt); a prompt is ``""`` for a caption or the
    question text. images uint8 (N, H, W, 3) (or float in [0, 1]), prompts N strings.

    `LLaVAModel` uses lesson 07's `generate` with the image tokens as
    ``prefix_embeddings`` and the key-value cache; the cross-attention variant and models
    with a `RelationHead` (whose scores need the whole text so far) recompute the text at
    every step. Generation stops at ``<eos>`` or when
    the text reaches ``max_text_length`` positions. Returns N decoded strings.
    """
    _check_model(model)
    _check_tokenizer(tokenizer)
    images = _images(images, size=model.config.image_size)
    if isinstance(prompts, str):
        raise TypeError("prompts must be a list of strings (one per image), got one str.")
    prompts = list(prompts)
    _same_batch(images, len(prompts), "prompts")
    max_new_tokens = require_int(max_new_tokens, "max_new_tokens", 1)
    batch_size = require_int(batch_size, "batch_size", 1)
    results: list[str] = [""] * len(prompts)
    for length, rows in _prompt_groups(prompts, tokenizer).items():
        room = model.config.max_text_length - length + 1
        if room < 1:
            raise ValueError(f"a prompt of {length} tokens does not fit in max_text_length="
                             f"{model.config.max_text_length}: shorten the question.")
        new_tokens = min(max_new_tokens, room)
        for first in range(0, len(rows), batch_size):
            chunk = rows[first:first + batch_size]
            prompt = np.array([prompt_ids(prompts[i], tokenizer) for i in chunk], np.int32)
            batch_images = images[chunk]
            if isinstance(model, LLaVAModel) and model.relation_head is None:
                prefix = model.image_tokens(ops.convert_to_tensor(batch_images))
                tokens = lm.generate(model.language_model, prompt, new_tokens, prefix_embeddings=prefix,
                                     stop_id=tokenizer.eos_id, pad_id=tokenizer.pad_id)
            else:
                tokens = _greedy_recompute(model, batch_images, prompt, new_tokens, tokenizer.eos_id,
                                           rows=min(batch_size, len(prompts)))
            for i, row in zip(chunk, tokens):
                results[i] = tokenizer.decode(row)
    return results


def evaluate(model, tokenizer: preprocessing.Tokenizer, data: shapeworld.ShapeWorldData,
             batch_size: int = 64) -> dict:
    """Generate a caption and an answer for every example of ``data`` and score them.

    Returns ``caption_truth`` (share of captions that `shapeworld.caption_is_true` finds
    wholly true of the scene), ``caption_parses`` (share that follow the grammar),
    ``qa_exact_match`` (answer == reference), ``qa_by_type`` (dict: question type ->
    exact match), ``captions`` and ``answers`` (the generated texts), ``seconds`` and
    ``examples_per_second`` (images per second, both tasks).
    """
    if not isinstance(data, shapeworld.ShapeWorldData):
        raise TypeError(f"data must be a shapeworld.ShapeWorldData, got {type(data).__name__}.")
    if len(data) == 0:
        raise ValueError("data is empty: nothing to evaluate.")
    start = time.perf_counter()
    captions = generate_texts(model, tokenizer, data.images, [""] * len(data), batch_size=batch_size)
    answers = generate_texts(model, tokenizer, data.images, data.questions, batch_size=batch_size)
    seconds = time.perf_counter() - start
    truth = [shapeworld.caption_is_true(c, s) for c, s in zip(captions, data.scenes)]
    correct = np.array([a == b for a, b in zip(answers, data.answers)])
    types = np.array(data.question_types)
    by_type = {t: float(correct[types == t].mean()) for t in shapeworld.QUESTION_TYPES if (types == t).any()}
    return {"caption_truth": float(np.mean(truth)),
            "caption_parses": float(np.mean([shapeworld.caption_parses(c) for c in captions])),
            "qa_exact_match": float(correct.mean()), "qa_by_type": by_type,
            "captions": captions, "answers": answers,
            "seconds": seconds, "examples_per_second": len(data) / seconds}


# --------------------------------------------------------------------------- attention over the image


def image_attention(model, images, token_ids) -> np.ndarray:
    """How much each text position attends to each image token, in every layer and head.

    images (B, H, W, 3), token_ids int (B, T) (prompt and generated tokens). Returns
    float32 (B, num_layers, num_heads, T, P): for `LLaVAModel` the causal self-attention
    weights from the text queries to the P image-token keys (each row of the full
    attention sums to 1 over image *and* earlier text keys); for `CrossAttentionMLLM` the
    cross-attention weights (each row sums to 1 over the image tokens). With a grid encoder,
    reshape P to (grid_size, grid_size) to lay it over the image; with object tokens, token k
    is the k-th detected object (its centre is in the token).
    """
    _check_model(model)
    images = _images(images, size=model.config.image_size)
    ids = lm._as_token_ids(token_ids, vocab_size=model.vocab_size)
    _same_batch(images, len(ids), "token rows")
    prefix = model.image_tokens(ops.convert_to_tensor(images))
    if isinstance(model, CrossAttentionMLLM):
        _, maps = model.decode(prefix, ops.convert_to_tensor(ids), return_attention_scores=True)
        return np.stack([ops.convert_to_numpy(m) for m in maps], axis=1).astype(np.float32)
    prefix_length = model.config.num_image_tokens
    weights = _self_attention_weights(model, images, ids)
    return np.stack([w[:, :, prefix_length:, :prefix_length] for w in weights], axis=1).astype(np.float32)


def _self_attention_weights(model, images, ids) -> list[np.ndarray]:
    """The causal self-attention weights of every block of a `LLaVAModel`, recomputed from
    the blocks' own layers: a list of float (B, heads, P + T, P + T)."""
    decoder = model.language_model
    prefix = model.image_tokens(ops.convert_to_tensor(images))
    x = ops.concatenate([prefix, decoder.embed(ops.convert_to_tensor(ids))], axis=1)   # (B, P + T, dim)
    batch, length = x.shape[0], x.shape[1]
    x = x + decoder.position_embedding(ops.arange(length, dtype="int32"))[None]
    mask = lm.causal_mask(length)[None, None]                                           # (1, 1, S, S)
    maps = []
    for block in decoder.blocks:
        attention = block.attention
        q, k, v = ops.split(attention.qkv(block.norm1(x)), 3, axis=-1)                 # each (B, S, dim)
        q, k, v = (ops.transpose(ops.reshape(t, (batch, length, attention.num_heads, attention.head_dim)),
                                 (0, 2, 1, 3)) for t in (q, k, v))                      # (B, H, S, hd)
        _, weights = scaled_dot_product_attention(q, k, v, mask)                        # (B, H, S, S)
        maps.append(np.asarray(ops.convert_to_numpy(weights)))
        x = block(x)
    return maps
