"""The data of a capstone run (`capstone.train`): ShapeWorld images or sounds, or a real
image-text dataset, turned into training rows, evaluation sets and texts for pretraining.

- `load_run_data`: ShapeWorld (lesson 08's instruction rows; with ``modality="audio"``
  lesson 09's sounds), or Flickr8k / COCO / VQA folders (`datasets`), every caption and
  question-answer pair a row, a seeded `HELD_OUT_SHARE` of the images kept for evaluation;
- `evaluate_photos`: BLEU-4, CIDEr-D and exact match on those held-out photos.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from mmlm_course import shapeworld

__all__ = ["RunData", "HELD_OUT_SHARE", "load_run_data", "evaluate_photos"]


@dataclasses.dataclass
class RunData:
    """Training arrays plus what evaluation needs. ``x``/``y``: dicts of NumPy arrays."""

    x: dict
    y: object
    texts: list                # text-only rows for pretraining the language model
    tokenizer: object
    eval_sets: dict            # name -> ShapeWorldData, or audio_lm.SoundData for sound (ShapeWorld only)
    report: str
    scenes: object = None      # the training data (ShapeWorld only): the detector or the transcriber learns from it
    held_out: object = None    # photos: datasets.LoadedImages kept out of training, evaluated at the end
    skipped: list = dataclasses.field(default_factory=list)   # photos: (path, reason) of every unreadable image


HELD_OUT_SHARE = 0.1  # photos: the share of the images held out for evaluation (none below 10 images)


def load_run_data(config) -> RunData:
    """Build the training arrays of a `capstone.RunConfig`: ``config.data`` (ShapeWorld or a
    real dataset) in ``config.modality`` (``"image"``, or ``"audio"``: ShapeWorld's sounds).

    A real dataset trains on every caption and every question-answer pair of its images,
    except a random `HELD_OUT_SHARE` of the images (seeded), which `evaluate_photos` scores
    at the end of the run."""
    from mmlm_course import audio_lm, datasets, instructions, mllm, preprocessing

    if config.modality == "audio":                   # lesson 09: ShapeWorld's sounds, augmented for training
        tokenizer = preprocessing.Tokenizer.for_shapeworld(extra_special=instructions.TASK_TOKENS)
        train = audio_lm.generate(config.train_examples, "train", seed=config.seed, **audio_lm.AUGMENT)
        x, y = audio_lm.make_examples(train, tokenizer, config.model.get("max_text_length", 20))
        eval_sets = {split: audio_lm.generate(config.eval_examples, split, seed=config.seed)
                     for split in ("test", "compositional")}
        texts = instructions.instruction_texts(train.captions, list(zip(train.questions, train.answers)))
        return RunData(x, y, texts, tokenizer, eval_sets, f"ShapeWorld sounds: {len(train)} training clips "
                       "(augmented: delay and noise)", train)
    model_config = mllm.MLLMConfig(**config.model)
    image_size, max_text_length = model_config.image_size, model_config.max_text_length
    if config.data == "shapeworld":
        tokenizer = preprocessing.Tokenizer.for_shapeworld(extra_special=instructions.TASK_TOKENS)
        train = shapeworld.generate(config.train_examples, "train", seed=config.seed, image_size=image_size)
        x, y = instructions.make_examples(train, tokenizer, max_text_length)
        eval_sets = {split: shapeworld.generate(config.eval_examples, split, seed=config.seed, image_size=image_size)
                     for split in ("test", "compositional")}
        texts = instructions.instruction_texts(train.captions, list(zip(train.questions, train.answers)))
        return RunData(x, y, texts, tokenizer, eval_sets, f"ShapeWorld: {len(train)} training scenes", train)
    if model_config.vision == "objects":
        raise ValueError(f"data {config.data!r}: vision='objects' pretrains lesson 04's object detector on ShapeWorld "
                         "scenes, which photos do not have; use vision='grid' (resolve_config does this for you).")
    records = datasets.load_records(config.data)
    loaded = datasets.read_images(records[: config.train_examples], image_size)
    count = len(loaded.records)
    order = np.random.default_rng(config.seed).permutation(count)
    hold = int(count * HELD_OUT_SHARE) if count >= 10 else 0
    held_out = datasets.LoadedImages(loaded.images[np.sort(order[:hold])],
                                     [loaded.records[i] for i in np.sort(order[:hold])], []) if hold else None
    train_index = np.sort(order[hold:])
    # every caption and every question-answer pair is a row of its own
    caption_rows = [(i, c) for i in train_index for c in loaded.records[i].captions]
    qa_rows = [(i, pair) for i in train_index for pair in loaded.records[i].qa]
    texts = [c for _, c in caption_rows] + [f"{q} {a}" for _, (q, a) in qa_rows]
    tokenizer = preprocessing.Tokenizer.from_texts(texts, extra_special=instructions.TASK_TOKENS)
    parts = []
    if caption_rows:
        parts.append(instructions.make_examples_from_texts(loaded.images[[i for i, _ in caption_rows]],
                                                           [c for _, c in caption_rows], None, tokenizer,
                                                           max_text_length))
    if qa_rows:
        parts.append(instructions.make_examples_from_texts(loaded.images[[i for i, _ in qa_rows]], None,
                                                           [pair for _, pair in qa_rows], tokenizer, max_text_length))
    if not parts:
        raise ValueError(f"data {config.data!r}: the {len(train_index)} training images have no caption and no "
                         "question-answer pair to learn from.")
    x = {key: np.concatenate([part[0][key] for part in parts]) for key in parts[0][0]}
    y = np.concatenate([part[1] for part in parts])
    report = (f"{config.data}: {loaded.report()}; {len(y)} training rows from {len(train_index)} images"
              + (f", {hold} images held out for evaluation" if hold else
                 ", no images held out (fewer than 10)"))
    texts = ((instructions.instruction_texts([c for _, c in caption_rows], None) if caption_rows else [])
             + (instructions.instruction_texts(None, [pair for _, pair in qa_rows]) if qa_rows else []))
    return RunData(x, y, texts, tokenizer, {}, report, held_out=held_out, skipped=loaded.skipped)


def evaluate_photos(model, tokenizer, held_out) -> dict:
    """Score a model on held-out photos (`datasets.LoadedImages`): corpus BLEU-4 (add-one
    smoothing, lesson 05) and CIDEr-D of the generated captions against every reference
    caption of their image, and the exact match of the generated answers (VQA). Returns
    ``{"images": N, "bleu4": float, "cider": float, "qa_exact_match": float}``, the scores
    only where the data has captions or questions."""
    from mmlm_course import generation, instructions, metrics, preprocessing

    figures = {"images": len(held_out.records)}
    captioned = [i for i, r in enumerate(held_out.records) if r.captions]
    if captioned:
        generated = generation.generate_texts(model, tokenizer, held_out.images[captioned], [""] * len(captioned))
        references = [held_out.records[i].captions for i in captioned]
        figures["bleu4"] = metrics.corpus_bleu(references, generated, smoothing="add1")
        figures["cider"] = metrics.corpus_cider(references, generated)
    # questions whose prompt leaves no room for an answer cannot be asked (training cut them too)
    asked = [(i, pair) for i, r in enumerate(held_out.records) for pair in r.qa
             if len(instructions.prompt_ids(pair[0], tokenizer)) < model.config.max_text_length]
    if asked:
        answers = generation.generate_texts(model, tokenizer, held_out.images[[i for i, _ in asked]],
                                            [question for _, (question, _) in asked])
        words = preprocessing.split_words  # the tokenizer's lower-case words
        figures["qa_exact_match"] = float(np.mean([words(answer) == words(truth)
                                                   for answer, (_, (_, truth)) in zip(answers, asked)]))
    return figures
