"""Lesson 08: using a trained multimodal model: generate, score, and look at its attention.

- `generate_texts`: greedy captions and answers for (image, prompt) pairs. A `LLaVAModel`
  without a relation head hands its image tokens to lesson 07's `language_model.generate`
  as ``prefix_embeddings`` and decodes with the key-value cache; the cross-attention
  variant and models with a relation head (whose scores need the whole text so far)
  recompute the text at every step.
- `evaluate`: caption truth (is what the model said true of the scene? `shapeworld`'s
  verifier decides) and question-answering exact match, in total and per question type.
- `object_hallucination`: CHAIR (Rohrbach et al., 2018), the share of the objects a caption
  mentions that are not in the image at all (lesson 10's open problems).
- `image_attention`: how much each text position attends to each image token, read from
  the attention layers themselves (``return_attention_scores=True``).
"""

from __future__ import annotations

import time
from typing import Sequence

import numpy as np
from keras import ops

from mmlm_course import language_model as lm
from mmlm_course import preprocessing, shapeworld
from mmlm_course.instructions import prompt_ids, require_images, require_task_tokens
from mmlm_course.mllm import CrossAttentionMLLM, LLaVAModel
from mmlm_course.stages import require_model
from mmlm_course.validation import positive_int

__all__ = ["generate_texts", "decode_prompts", "greedy_recompute", "evaluate", "score", "object_hallucination", "image_attention"]


def _prompt_groups(prompts: Sequence[str], tokenizer) -> dict[int, list[int]]:
    """Row indices grouped by prompt length: each group decodes as one batch."""
    groups: dict[int, list[int]] = {}
    for i, prompt in enumerate(prompts):
        groups.setdefault(len(prompt_ids(prompt, tokenizer)), []).append(i)
    return groups


def greedy_recompute(model, inputs: dict, prompt: np.ndarray, new_tokens: int, eos: int, rows: int,
                     max_text_length: int) -> np.ndarray:
    """Greedy decoding without a cache: the whole text is recomputed at every step.

    ``inputs``: the model's non-text inputs for the b rows of ``prompt`` int32 (b, t0)
    (images, a frozen detector's ``image_features``, lesson 09's ``log_mels``). Every call
    has one shape, ``rows`` x ``max_text_length`` (unfilled slots hold padding, which the
    causal mask hides from earlier positions; missing rows are blank), so Keras's compiled
    predict step is traced once for all prompt lengths and batch sizes. Returns int32 (b, n)."""
    batch, start = prompt.shape
    ids = np.zeros((rows, max_text_length), np.int32)
    ids[:batch, :start] = prompt
    padded = {}
    for key, value in inputs.items():
        padded[key] = np.zeros((rows,) + value.shape[1:], value.dtype)
        padded[key][:batch] = value
    out = np.zeros((batch, new_tokens), np.int32)
    finished = np.zeros(batch, bool)
    for step in range(new_tokens):
        position = start + step - 1                               # the position that predicts this token
        logits = model.predict_on_batch({**padded, "token_ids": ids})      # (rows, L, V)
        token = np.asarray(logits)[:batch, position].argmax(-1).astype(np.int32)
        out[:, step] = np.where(finished, 0, token)
        finished |= token == eos
        if finished.all() or step == new_tokens - 1:
            break
        ids[:batch, position + 1] = token
    return out


def decode_prompts(decode, tokenizer: preprocessing.Tokenizer, prompts: Sequence[str], count: int,
                   max_text_length: int, batch_size: int = 64, max_new_tokens: int = 20) -> list[str]:
    """Greedy texts for ``count`` inputs and their prompts, a batch of equal-length prompts
    at a time: ``decode(rows, prompt_ids int32 (b, t0), new_tokens)`` returns the new
    tokens (b, n) of the inputs at ``rows``. Returns the decoded strings, one per prompt.
    The loop of `generate_texts` and of lesson 09's audio model."""
    if isinstance(prompts, str):
        raise TypeError("prompts must be a list of strings (one per input), got one str.")
    prompts = list(prompts)
    if count != len(prompts):
        raise ValueError(f"inputs and prompts must have the same batch size (one prompt per input), got "
                         f"{count} inputs and {len(prompts)} prompts.")
    max_new_tokens = positive_int(max_new_tokens, "max_new_tokens")
    batch_size = positive_int(batch_size, "batch_size")
    results: list[str] = [""] * len(prompts)
    for length, rows in _prompt_groups(prompts, tokenizer).items():
        room = max_text_length - length + 1
        if room < 1:
            raise ValueError(f"a prompt of {length} tokens does not fit in max_text_length={max_text_length}: "
                             "shorten the question.")
        for first in range(0, len(rows), batch_size):
            chunk = rows[first:first + batch_size]
            prompt = np.array([prompt_ids(prompts[i], tokenizer) for i in chunk], np.int32)
            for i, row in zip(chunk, decode(chunk, prompt, min(max_new_tokens, room))):
                results[i] = tokenizer.decode(row)
    return results


def generate_texts(model, tokenizer: preprocessing.Tokenizer, images, prompts: Sequence[str],
                   max_new_tokens: int = 20, batch_size: int = 64) -> list[str]:
    """Greedy answers for each (image, prompt); a prompt is ``""`` for a caption or the
    question text. images uint8 (N, H, W, 3) (or float in [0, 1]), prompts N strings.

    Generation stops at ``<eos>`` or when the text reaches ``max_text_length`` positions.
    Returns N decoded strings.
    """
    require_model(model)
    require_task_tokens(tokenizer)
    images = require_images(images, size=model.config.image_size)
    if isinstance(prompts, str):
        raise TypeError("prompts must be a list of strings (one per image), got one str.")
    rows_per_call = min(positive_int(batch_size, "batch_size"), len(prompts))

    def decode(rows, prompt, new_tokens):
        # Every call gets rows_per_call rows (the chunk's last row repeated), so each compiled
        # step sees one batch size and is built once; the copies finish with that row.
        fill = np.minimum(np.arange(rows_per_call), len(rows) - 1)          # positions in the chunk
        chunk_images, prompt = images[np.asarray(rows)[fill]], prompt[fill]
        if isinstance(model, LLaVAModel) and model.relation_head is None:
            prefix = model.image_tokens(ops.convert_to_tensor(chunk_images))
            tokens = lm.generate(model.language_model, prompt, new_tokens, prefix_embeddings=prefix,
                                 stop_id=tokenizer.eos_id, pad_id=tokenizer.pad_id)
        else:
            if model.config.vision == "objects":   # a frozen detector: its tokens are the same at every step
                inputs = {"image_features": ops.convert_to_numpy(model.image_features(chunk_images))}
            else:
                inputs = {"images": chunk_images}
            tokens = greedy_recompute(model, inputs, prompt, new_tokens, tokenizer.eos_id, rows_per_call,
                                      model.config.max_text_length)
        return tokens[:len(rows)]

    return decode_prompts(decode, tokenizer, prompts, len(images), model.config.max_text_length, batch_size,
                          max_new_tokens)


def evaluate(model, tokenizer: preprocessing.Tokenizer, data: shapeworld.ShapeWorldData,
             batch_size: int = 64) -> dict:
    """Generate a caption and an answer for every example of ``data`` and score them
    (`score`, with `shapeworld.caption_is_true`); adds ``seconds`` and
    ``examples_per_second`` (images per second, both tasks)."""
    if not isinstance(data, shapeworld.ShapeWorldData):
        raise TypeError(f"data must be a shapeworld.ShapeWorldData, got {type(data).__name__}.")
    if len(data) == 0:
        raise ValueError("data is empty: nothing to evaluate.")
    start = time.perf_counter()
    captions = generate_texts(model, tokenizer, data.images, [""] * len(data), batch_size=batch_size)
    answers = generate_texts(model, tokenizer, data.images, data.questions, batch_size=batch_size)
    seconds = time.perf_counter() - start
    return {**score(captions, answers, data), "seconds": seconds, "examples_per_second": len(data) / seconds}


def score(captions: Sequence[str], answers: Sequence[str], data, verifier=shapeworld.caption_is_true) -> dict:
    """Score generated captions and answers against ``data`` (its ``scenes``, ``answers``
    and ``question_types``). Returns ``caption_truth`` (share of captions ``verifier``
    finds wholly true of the scene), ``caption_parses`` (share that follow the grammar),
    ``qa_exact_match`` (answer == reference), ``qa_by_type`` (dict: every question type
    of ``data`` -> exact match), ``captions`` and ``answers``."""
    if not all(hasattr(data, field) for field in ("scenes", "answers", "question_types")):
        raise TypeError(f"data must be a dataset with scenes, answers and question_types (shapeworld.generate(...)), "
                        f"got {type(data).__name__}.")
    for name, texts, size in (("captions", captions, len(data.scenes)), ("answers", answers, len(data.answers))):
        length = len(texts) if hasattr(texts, "__len__") and not isinstance(texts, (str, dict)) else None
        if length != size or not size or not all(isinstance(text, str) for text in texts):
            raise ValueError(f"{name} must be a list of {size} str, one per example of data (at least one), "
                             f"got {type(texts).__name__} of length {length}.")
    truth = [verifier(c, s) for c, s in zip(captions, data.scenes)]
    correct = np.array([a == b for a, b in zip(answers, data.answers)])
    types = np.array(data.question_types)
    present = set(data.question_types)
    order = [t for t in shapeworld.QUESTION_TYPES if t in present] + sorted(present - set(shapeworld.QUESTION_TYPES))
    return {"caption_truth": float(np.mean(truth)),
            "caption_parses": float(np.mean([shapeworld.caption_parses(c) for c in captions])),
            "qa_exact_match": float(correct.mean()),
            "qa_by_type": {t: float(correct[types == t].mean()) for t in order},
            "captions": list(captions), "answers": list(answers)}


def object_hallucination(captions: Sequence[str], scenes: Sequence[shapeworld.Scene]) -> dict:
    """CHAIR, the object-hallucination rates of Rohrbach et al. (2018), for ShapeWorld captions.

    Every noun phrase a caption mentions ("a large red circle", in a "there is" or either
    side of a relation) is one *mention*; it is *hallucinated* when no object of the scene
    has its attributes. A caption that is false only because of a wrong relation or count
    hallucinates nothing. Returns ``chair_i`` (hallucinated mentions / mentions),
    ``chair_s`` (captions with at least one hallucinated mention / captions that parse),
    ``mentions`` and ``unparsed`` (captions outside the grammar, left out of both rates).
    """
    captions, scenes = list(captions), list(scenes)
    if len(captions) != len(scenes):
        raise ValueError(f"need one scene per caption, got {len(captions)} captions and {len(scenes)} scenes.")
    if not captions:
        raise ValueError("no captions: nothing to measure.")
    for caption, scene in zip(captions, scenes):
        if not isinstance(caption, str) or not isinstance(scene, shapeworld.Scene):
            raise TypeError(f"expected str captions and shapeworld.Scene scenes, got {type(caption).__name__} "
                            f"and {type(scene).__name__}.")
    mentions = hallucinated = parsed = captions_with = 0
    for caption, scene in zip(captions, scenes):
        try:
            statements = shapeworld.parse_caption(caption)
        except shapeworld.CaptionParseError:
            continue
        parsed += 1
        phrases = [part for statement in statements for part in statement[1:] if isinstance(part, dict)]
        missing = sum(shapeworld.count_objects(scene, **attributes) == 0 for attributes in phrases)
        mentions, hallucinated = mentions + len(phrases), hallucinated + missing
        captions_with += missing > 0
    return {"chair_i": hallucinated / max(mentions, 1), "chair_s": captions_with / max(parsed, 1),
            "mentions": mentions, "unparsed": len(captions) - parsed}


def image_attention(model, images, token_ids) -> np.ndarray:
    """How much each text position attends to each image token, in every layer and head.

    images (B, H, W, 3), token_ids int (B, T) (prompt and generated tokens). Returns
    float32 (B, num_layers, num_heads, T, P), read from the attention layers: for
    `LLaVAModel` the causal self-attention weights from the text queries to the P
    image-token keys (each row of the full attention sums to 1 over image *and* earlier
    text keys); for `CrossAttentionMLLM` the cross-attention weights (each row sums to 1
    over the image tokens). With a grid encoder, reshape P to (grid_size, grid_size) to lay
    it over the image; with object tokens, token k is the k-th detected object.
    """
    require_model(model)
    images = require_images(images, size=model.config.image_size)
    ids = lm.check_token_ids(token_ids, vocab_size=model.vocab_size)
    if len(images) != len(ids):
        raise ValueError(f"images and token_ids must have the same batch size (one token row per image), got "
                         f"{len(images)} images and {len(ids)} token rows.")
    ids = ops.convert_to_tensor(ids)
    prefix = model.image_tokens(ops.convert_to_tensor(images))                            # (B, P, dim)
    if isinstance(model, CrossAttentionMLLM):
        _, maps = model.decode(prefix, ids, return_attention_scores=True)                # each (B, H, T, P)
        return np.stack([ops.convert_to_numpy(m) for m in maps], axis=1).astype(np.float32)
    decoder, length = model.language_model, model.config.num_image_tokens
    sequence = ops.concatenate([prefix, ops.cast(decoder.embed(ids), prefix.dtype)], axis=1)   # (B, P + T, dim)
    _, maps = decoder.decode_embeddings(sequence, return_attention_scores=True)          # each (B, H, P+T, P+T)
    return np.stack([ops.convert_to_numpy(m)[:, :, length:, :length] for m in maps], axis=1).astype(np.float32)
