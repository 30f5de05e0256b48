"""Lesson 08: the instruction format of the multimodal model, and its training rows.

One format covers every task; a task token says which (``[img]`` are the image tokens)::

    captioning:  [img] <bos> <caption>                                         -> caption words <eos>
    question:    [img] <bos> <question> what color is the circle ? <answer>   -> red <eos>

Everything left of ``->`` is the *prompt*: the model reads it but is never trained to write
it. The targets of the prompt positions are 0 (padding), so `language_model.next_token_loss`
counts the answer tokens only. The task tokens are lesson 07's ``<caption>`` and
``<question>`` plus ``<answer>``, which marks where the answer starts (so questions need not
end with "?", as on real VQA data).

The tokenizer is lesson 01's, with the task tokens after the four special ones::

    preprocessing.Tokenizer.for_shapeworld(extra_special=instructions.TASK_TOKENS)    # ShapeWorld
    preprocessing.Tokenizer.from_texts(texts, extra_special=instructions.TASK_TOKENS)  # your own texts

=============================  =============================================================
name                           what it does
=============================  =============================================================
`prompt_ids`                   a prompt (``""`` or a question) -> its token ids
`answer_only_targets`          full sequences -> (inputs, targets with 0 on the prompt)
`make_examples_from_texts`     images + captions and / or (question, answer) pairs -> rows
`make_examples`                the same for `shapeworld.ShapeWorldData`
`instruction_texts`            the rows as text only, to pretrain the language model
`require_task_tokens`          the check that a tokenizer knows the task tokens
=============================  =============================================================

Rows are NumPy: ``x = {"images": uint8 (N, H, W, 3), "token_ids": int32 (N, T)}`` and
targets ``y`` int32 (N, T).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from mmlm_course import language_model as lm
from mmlm_course import preprocessing, shapeworld
from mmlm_course.validation import require_choice, require_int, require_str

__all__ = ["CAPTION", "QUESTION", "ANSWER", "TASK_TOKENS", "TASKS", "prompt_ids", "answer_only_targets",
           "instruction_rows", "make_examples_from_texts", "make_examples", "instruction_texts", "require_task_tokens",
           "require_images"]

CAPTION, QUESTION = lm.CAPTION, lm.QUESTION
ANSWER = "<answer>"
TASK_TOKENS = tuple(lm.TASK_TOKENS) + (ANSWER,)
"""The special tokens of the format, ids 4, 5, 6 of the tokenizer: ``<caption> <question> <answer>``."""
TASKS = ("caption", "qa")


def require_task_tokens(tokenizer) -> None:
    """TypeError unless ``tokenizer`` is a `preprocessing.Tokenizer`; ValueError when it
    lacks one of `TASK_TOKENS`."""
    if not isinstance(tokenizer, preprocessing.Tokenizer):
        raise TypeError(f"tokenizer must be a preprocessing.Tokenizer, got {type(tokenizer).__name__}.")
    missing = [t for t in TASK_TOKENS if t not in tokenizer.token_to_id]
    if missing:
        raise ValueError(f"the tokenizer lacks the task tokens {missing}; build it with "
                         "preprocessing.Tokenizer.for_shapeworld(extra_special=instructions.TASK_TOKENS) (or "
                         "Tokenizer.from_texts(texts, extra_special=instructions.TASK_TOKENS)).")


def require_images(images, name: str = "images", size: int | None = None) -> np.ndarray:
    """A non-empty batch of RGB images (N, H, W, 3), uint8 or float in [0, 1], as NumPy;
    with ``size``, the images must be ``size`` x ``size``."""
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


def prompt_ids(prompt: str, tokenizer: preprocessing.Tokenizer) -> list[int]:
    """The prompt tokens of one row: ``""`` -> ``<bos> <caption>``; a question ->
    ``<bos> <question> question words <answer>``. Returns a list of int ids."""
    if not isinstance(prompt, str):
        raise TypeError(f"prompt must be a str ('' for a caption, else the question), got {type(prompt).__name__}.")
    require_task_tokens(tokenizer)
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
    ids, lengths = np.asarray(token_ids), np.asarray(prompt_lengths)
    pad_id = require_int(pad_id, "pad_id", 0, 2**31 - 1)
    if ids.size and np.issubdtype(ids.dtype, np.integer) and ids.min() < 0:
        raise ValueError(f"token_ids: ids are >= 0, got {ids.min()}.")
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


def instruction_rows(prompts: Sequence[str], answers: Sequence[str], tokenizer, max_text_length: int):
    """Encode (prompt, answer) pairs into (inputs, targets) int32 (N, max_text_length),
    targets 0 on the prompt (the answer-only loss). Lesson 09 builds its rows with it."""
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
    images = require_images(images)
    require_task_tokens(tokenizer)
    max_text_length = require_int(max_text_length, "max_text_length", low=3)
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
    inputs, targets = instruction_rows([p for p, _ in pairs], [a for _, a in pairs], tokenizer, max_text_length)
    return {"images": images[image_index], "token_ids": inputs}, targets


def make_examples(data: shapeworld.ShapeWorldData, tokenizer: preprocessing.Tokenizer, max_text_length: int,
                  tasks: Sequence[str] = TASKS):
    """Training rows from ShapeWorld: one row per (image, task), tasks ``"caption"``
    and / or ``"qa"``, so N examples give up to 2N rows. See `make_examples_from_texts`."""
    if not isinstance(data, shapeworld.ShapeWorldData):
        raise TypeError(f"data must be a shapeworld.ShapeWorldData, got {type(data).__name__}.")
    tasks = (tasks,) if isinstance(tasks, str) else tuple(tasks)
    if not tasks:
        raise ValueError(f"tasks must be a non-empty subset of {TASKS}, got ().")
    for task in tasks:
        require_choice(task, TASKS, "each of tasks")
    captions = data.captions if "caption" in tasks else None
    qa = list(zip(data.questions, data.answers)) if "qa" in tasks else None
    return make_examples_from_texts(data.images, captions, qa, tokenizer, max_text_length)


def instruction_texts(captions: Sequence[str] | None = None,
                      qa: Sequence[tuple[str, str] | None] | None = None) -> list[str]:
    """Text-only versions of the instruction rows, for `stages.pretrain_language_model`:
    ``"<caption> CAPTION"`` and ``"<question> QUESTION <answer> ANSWER"``, image by image
    (caption, then question), as `make_examples_from_texts` orders the rows. Empty
    captions and None pairs (an image without that text) are left out. For ShapeWorld:
    ``instruction_texts(data.captions, list(zip(data.questions, data.answers)))``."""
    if captions is None and qa is None:
        raise ValueError("give captions, qa or both: there is no text to format.")
    columns = [list(c) for c in (captions, qa) if c is not None]
    for i, caption in enumerate(captions or ()):
        if caption is not None:
            require_str(caption, f"captions[{i}]", allow_empty=True)  # "" or None: no caption
    if len({len(c) for c in columns}) > 1:
        raise ValueError(f"captions and qa must have one entry per image, got {len(columns[0])} captions and "
                         f"{len(columns[1])} qa pairs.")
    texts = []
    for row in zip(*columns):
        caption = row[0] if captions is not None else None
        pair = row[-1] if qa is not None else None
        if caption:
            texts.append(f"{CAPTION} {caption}")
        if pair:
            if isinstance(pair, str) or len(pair) != 2 or not all(isinstance(text, str) for text in pair):
                raise TypeError(f"qa: expected (question, answer) pairs of str (or None), got {pair!r:.60}.")
            texts.append(f"{QUESTION} {pair[0]} {ANSWER} {pair[1]}")
    return texts
