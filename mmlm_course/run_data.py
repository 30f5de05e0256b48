"""The data of a capstone run (`capstone.train`): ShapeWorld images or sounds, or a real
image-text dataset, turned into training rows, evaluation sets and texts for pretraining.

- `load_run_data`: ShapeWorld (lesson 08's instruction rows; with ``modality="audio"``
  lesson 09's sounds; with ``"both"`` pictures and sounds of the same scenes), or Flickr8k / COCO / VQA folders (`datasets`), every caption and
  question-answer pair a row, a seeded `HELD_OUT_SHARE` of the images kept for evaluation;
- `evaluate_photos`: BLEU-4, CIDEr-D and exact match on those held-out photos;
- `save_samples`, `save_photo_samples`: the run's ``samples.png``, what the model says
  about a few test scenes or held-out photos.
"""

from __future__ import annotations

import dataclasses
import textwrap

import numpy as np

from mmlm_course import shapeworld

__all__ = ["RunData", "HELD_OUT_SHARE", "load_run_data", "evaluate_photos", "save_samples", "save_photo_samples"]


@dataclasses.dataclass
class RunData:
    """Training arrays plus what evaluation needs. ``x``/``y``: dicts of NumPy arrays."""

    x: dict
    y: object
    texts: list                # text-only rows for pretraining the language model
    tokenizer: object
    eval_sets: dict            # name -> ShapeWorldData, audio_lm.SoundData or audiovisual.AudioVisualData
    report: str
    scenes: object = None      # the training data (ShapeWorld only): the detector and the transcriber learn from it
    held_out: object = None    # photos: datasets.LoadedImages kept out of training, evaluated at the end
    skipped: list = dataclasses.field(default_factory=list)   # photos: (path, reason) of every unreadable image
    sample_photos: object = None  # photos for samples.png: the held-out ones, or the training ones if none is held out


HELD_OUT_SHARE = 0.1  # photos: the share of the images held out for evaluation (none below 10 images)


def load_run_data(config) -> RunData:
    """Build the training arrays of a `capstone.RunConfig`: ``config.data`` (ShapeWorld or a
    real dataset) in ``config.modality`` (``"image"``; ``"audio"``: ShapeWorld's sounds;
    ``"both"``: its pictures and sounds).

    A real dataset trains on every caption and every question-answer pair of its images,
    except a random `HELD_OUT_SHARE` of the images (seeded), which `evaluate_photos` scores
    at the end of the run."""
    from mmlm_course import audio_lm, audiovisual, datasets, instructions, mllm, preprocessing

    if config.modality == "audio":                   # lesson 09: ShapeWorld's sounds, augmented for training
        tokenizer = preprocessing.Tokenizer.for_shapeworld(extra_special=instructions.TASK_TOKENS)
        train = audio_lm.generate(config.train_examples, "train", seed=config.seed, **audio_lm.AUGMENT)
        x, y = audio_lm.make_examples(train, tokenizer, config.model.get("max_text_length", 20))
        eval_sets = {split: audio_lm.generate(config.eval_examples, split, seed=config.seed)
                     for split in ("test", "compositional")}
        texts = instructions.instruction_texts(train.captions, list(zip(train.questions, train.answers)))
        return RunData(x, y, texts, tokenizer, eval_sets, f"ShapeWorld sounds: {len(train)} training clips "
                       "(augmented: delay and noise)", train)
    if config.modality == "both":                    # lesson 10: the scenes seen and heard, the sounds augmented
        seeing, _ = audiovisual.split_fields(config.model)
        tokenizer = preprocessing.Tokenizer.for_shapeworld(extra_special=instructions.TASK_TOKENS)
        size, length = seeing.image_size, seeing.max_text_length
        train = audiovisual.generate(config.train_examples, "train", config.seed, size, augment=True)
        x, y = audiovisual.make_examples(train, tokenizer, length, config.modality_dropout, config.seed)
        eval_sets = {split: audiovisual.generate(config.eval_examples, split, config.seed, size)
                     for split in ("test", "compositional")}
        texts = instructions.instruction_texts(train.world.captions, list(zip(train.world.questions,
                                                                              train.world.answers)))
        return RunData(x, y, texts, tokenizer, eval_sets, f"ShapeWorld seen and heard: {len(train)} training scenes "
                       f"(sounds augmented: delay and noise; modality dropout {config.modality_dropout})", train)
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
                 ", no images held out (fewer than 10): no evaluation, samples.png shows training photos"))
    texts = ((instructions.instruction_texts([c for _, c in caption_rows], None) if caption_rows else [])
             + (instructions.instruction_texts(None, [pair for _, pair in qa_rows]) if qa_rows else []))
    return RunData(x, y, texts, tokenizer, {}, report, held_out=held_out, skipped=loaded.skipped,
                   sample_photos=loaded if held_out is None else held_out)


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


def save_samples(model, tokenizer, data, path, count: int = 8) -> None:
    """Plot ``count`` images (or, for sound alone, log-mel spectrograms) with their generated
    caption and answer into ``path``.

    Draws on a `matplotlib.figure.Figure` of its own, never through pyplot, so it neither
    changes the backend nor shows up in (or hides figures from) a notebook."""
    from matplotlib.figure import Figure

    from mmlm_course import audio_lm, audiovisual, generation

    hears = isinstance(data, audio_lm.SoundData)
    if isinstance(data, audiovisual.AudioVisualData):     # both: the picture is shown, the sound is heard too
        clips, data = data.log_mels[:count], data.world

        def generate(model, tokenizer, images, prompts):
            return audiovisual.generate_texts(model, tokenizer, images, clips, prompts)
    else:
        generate = audio_lm.generate_texts if hears else generation.generate_texts
    inputs = data.log_mels[:count] if hears else data.images[:count]
    captions = generate(model, tokenizer, inputs, [""] * len(inputs))
    answers = generate(model, tokenizer, inputs, data.questions[:count])
    verifier = audio_lm.caption_is_true_of_sound if hears else shapeworld.caption_is_true
    fig = Figure(figsize=(3 * ((count + 1) // 2), 8))
    axes = fig.subplots(2, (count + 1) // 2)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i >= len(inputs):
            continue
        if hears:
            ax.imshow(inputs[i].T, origin="lower", aspect="auto", cmap="magma")   # time across, mel bins up
        else:
            ax.imshow(inputs[i])
        verdict = "true" if verifier(captions[i], data.scenes[i]) else "FALSE"
        title = textwrap.fill(f"{captions[i]} ({verdict})", 34)
        ax.set_title(f"{title}\nQ: {data.questions[i]}\nA: {answers[i]} (truth: {data.answers[i]})", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def save_photo_samples(model, tokenizer, held_out, path, count: int = 8) -> None:
    """Plot up to ``count`` held-out photos with the model's caption (or answer) and a
    reference into ``path``, on a figure of its own like `save_samples`."""
    from matplotlib.figure import Figure

    from mmlm_course import generation

    records, images = held_out.records[:count], held_out.images[:count]
    prompts = ["" if r.captions else r.qa[0][0] for r in records]
    said = generation.generate_texts(model, tokenizer, images, prompts)
    columns = max(1, (len(records) + 1) // 2)
    fig = Figure(figsize=(3 * columns, 8))
    axes = np.atleast_1d(fig.subplots(2, columns)).ravel()
    for i, ax in enumerate(axes):
        ax.axis("off")
        if i >= len(records):
            continue
        ax.imshow(images[i])
        if records[i].captions:
            text = f"{said[i]}\n(reference: {records[i].captions[0]})"
        else:
            text = f"Q: {prompts[i]}\nA: {said[i]} (truth: {records[i].qa[0][1]})"
        ax.set_title("\n".join(textwrap.fill(line, 34) for line in text.split("\n")), fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
