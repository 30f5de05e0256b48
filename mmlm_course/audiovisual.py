"""Lesson 10's ``--modality both``: one language model that sees and hears.

Lesson 08's image tokens and lesson 09's audio tokens, each through a projector of its own,
side by side in front of the text (the recipe of Video-LLaMA and of Qwen2.5-Omni)::

    image ─► detector (lesson 04, frozen) ─► object tokens (P_i, 14) ─► projector ───────┐
    sound ─► log-mel ─► audio front end (lesson 09, frozen) ─► stack k ─► audio projector ┤
    text  ─► token embeddings (T, dim) ──────────────────────────────────────────────────┤
                                                                                          ▼
    language model (lesson 07) reads [image tokens ; audio tokens ; text tokens] ─► logits (T, V)

- `AudioVisualData`: a ShapeWorld split as pictures *and* sounds of the same scenes; its
  captions and questions state every relation (the picture shows "above");
- `make_examples`: lesson 08's training rows with the sound beside the picture, and
  *modality dropout*: a row may lose its picture (black) or its sound (`silence`), so the
  model learns to use each input alone instead of leaning on the easier one;
- `AudioVisualLLaVA`: lesson 08's model (`mllm.MultimodalModel`: image encoder, projector,
  relation head) plus lesson 09's `audio_lm.AudioFrontEnd` and a second
  `mllm.ImageTokenProjector` for the stacked audio frames; it trains in lesson 08's two
  stages (`stages.compile_for_stage` freezes both pretrained encoders);
- `generate_texts` and `evaluate`: greedy captions and answers, scored with the full
  `shapeworld.caption_is_true`; ``evaluate(..., senses="image")`` mutes the sound (or
  ``"sound"`` blacks out the picture) to measure what each input contributes.

Model code uses ``keras.layers`` / ``keras.ops`` only.
"""

from __future__ import annotations

import dataclasses

import keras
import numpy as np
from keras import ops

from mmlm_course import audio_lm, generation, instructions, preprocessing, shapeworld
from mmlm_course import language_model as lm
from mmlm_course.mllm import ImageTokenProjector, MLLMConfig, MultimodalModel
from mmlm_course.validation import positive_int, require_choice, require_float, require_int, require_rank, same_dim

__all__ = ["AUDIO_FIELDS", "SENSES", "INAUDIBLE", "AudioVisualData", "generate", "make_examples", "silence",
           "AudioVisualLLaVA", "split_fields", "build_model", "generate_texts", "evaluate"]

AUDIO_FIELDS = ("frames", "audio_dim", "stack")     # of a run's model dict, the audio side's (the rest: MLLMConfig's)
SENSES = ("both", "image", "sound")                  # what `evaluate` lets the model perceive
INAUDIBLE = tuple(r for r in shapeworld.RELATIONS if r not in audio_lm.SOUND_RELATIONS)   # "above", "below"
_register = keras.saving.register_keras_serializable(package="mmlm_course")


@dataclasses.dataclass
class AudioVisualData:
    """A ShapeWorld split seen and heard. ``world``: the `shapeworld.ShapeWorldData` (images,
    scenes, captions, questions, answers); ``log_mels`` float32 (N, frames, 40), the same
    scenes' sounds (`audio_lm.sound_features`); ``labels`` int32 (N, MAX_NOTES), their notes
    for CTC pretraining (`audio_lm.note_label_rows`)."""

    world: shapeworld.ShapeWorldData
    log_mels: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.world)


def generate(num_examples: int, split: str = "train", seed: int = 0, image_size: int = 64,
             augment: bool = False) -> AudioVisualData:
    """ShapeWorld's ``split`` (``shapeworld.generate(num_examples, split, seed, image_size)``)
    with every scene's sound; ``augment``: lesson 09's training augmentation of the sound
    (`audio_lm.AUGMENT`: a delay and noise)."""
    world = shapeworld.generate(num_examples, split, seed, image_size)
    log_mels = audio_lm.sound_features(world.sounds(), **(audio_lm.AUGMENT if augment else {}),
                                       seed=seed + 1_000 * shapeworld.SPLITS.index(split))
    return AudioVisualData(world, log_mels, audio_lm.note_label_rows(world.scenes))


def make_examples(data: AudioVisualData, tokenizer: preprocessing.Tokenizer, max_text_length: int,
                  dropout: float = 0.0, seed: int = 0):
    """Lesson 08's instruction rows (a caption row and a question row per scene) with the
    scene's log-mels beside its image: ``({"images", "log_mels", "token_ids"}, targets)``.

    ``dropout``: modality dropout (ModDrop, Neverova et al., 2015). Each row loses one input
    with this probability, the picture or the sound at even odds (drawn from ``seed``): a
    black picture, or a silent clip. The picture is never dropped from a row whose text
    says "above" or "below", which the sound cannot tell; that row loses its sound instead.
    A model trained so must use each input alone, and then answers from either or both.
    """
    dropout = require_float(dropout, "dropout", 0.0, 1.0)
    x, y = instructions.make_examples(data.world, tokenizer, max_text_length)   # rows: caption, question, ...
    x = {**x, "log_mels": np.repeat(data.log_mels, 2, axis=0)}
    rng = np.random.default_rng(require_int(seed, "seed", 0))
    dropped = rng.random(len(y)) < dropout
    texts = [text for caption, question in zip(data.world.captions, data.world.questions)
             for text in (caption, question)]
    audible = np.array([not any(word in text.split() for word in INAUDIBLE) for text in texts])
    blind = dropped & (rng.random(len(y)) < 0.5) & audible                 # rows that hear but do not see
    deaf = dropped & ~blind                                                 # rows that see but do not hear
    x["images"][blind] = 0
    x["log_mels"][deaf] = silence()
    return x, y


def silence() -> np.ndarray:
    """The log-mel spectrogram of a silent clip, float32 (frames, 40): what a muted input
    looks like to the audio encoder."""
    return audio_lm.sound_features([np.zeros(1, np.float32)])[0]


@_register
class AudioVisualLLaVA(MultimodalModel):
    """Image tokens, then audio tokens, in front of the text of a `DecoderLM`.

    ``model({"images": uint8 (B, H, W, 3), "log_mels": float (B, frames, 40), "token_ids":
    int (B, T)})`` -> next-token logits float32 (B, T, vocab_size); a frozen detector's
    ``"image_features"`` may stand in for the images (`mllm.MultimodalModel`). The language
    model has ``num_prefix_tokens + max_text_length`` positions: P_i image tokens, P_a =
    ceil(feature frames / ``stack``) audio tokens, then the text.
    """

    architecture = "prefix"

    def __init__(self, config: MLLMConfig, vocab_size: int, frames: int = 158, audio_dim: int = 64, stack: int = 8,
                 **kwargs):
        super().__init__(config, vocab_size, **kwargs)
        c, policy = self.config, self.dtype_policy
        self.stack = positive_int(stack, "stack")
        self.audio_encoder = audio_lm.AudioFrontEnd(frames, dim=audio_dim, name="audio_encoder", dtype=policy)
        self.num_audio_tokens = -(-self.audio_encoder.output_frames // self.stack)
        self.audio_projector = ImageTokenProjector(self.num_audio_tokens, self.stack * audio_dim, c.dim,
                                                   c.projector_hidden, name="audio_projector", dtype=policy)
        self.language_model = lm.DecoderLM(self.vocab_size, max_length=self.num_prefix_tokens + c.max_text_length,
                                           dim=c.dim, num_layers=c.num_layers, num_heads=c.num_heads,
                                           mlp_dim=c.mlp_dim, dropout=c.dropout, name="language_model", dtype=policy)

    @property
    def num_prefix_tokens(self) -> int:
        return self.config.num_image_tokens + self.num_audio_tokens

    def build(self, input_shape=None):
        self._build_vision()
        self.audio_encoder.build((None, self.audio_encoder.frames, self.audio_encoder.mel_bins))
        self.audio_projector.build((None, self.num_audio_tokens, self.stack * self.audio_encoder.dim))
        self.language_model.build()
        self.built = True

    def staged_encoders(self) -> list:
        """The image side's encoder, and the CTC-pretrained audio front end (frozen)."""
        return super().staged_encoders() + [(self.audio_encoder, False)]

    def load_transcriber(self, transcriber: audio_lm.CTCTranscriber) -> None:
        """Copy a pretrained `audio_lm.CTCTranscriber`'s front end in (lesson 09)."""
        if not isinstance(transcriber, audio_lm.CTCTranscriber):
            raise TypeError(f"transcriber must be a CTCTranscriber (audio_lm.pretrain_transcriber), got "
                            f"{type(transcriber).__name__}.")
        self.audio_encoder.set_weights(transcriber.front_end.get_weights())

    def audio_tokens(self, log_mels, training=None):
        """float (B, frames, 40) -> projected audio tokens (B, P_a, dim) (lesson 09)."""
        frames = self.audio_encoder(log_mels, training=training)                  # (B, F', audio_dim)
        return self.audio_projector(audio_lm.stack_frames(frames, self.stack))     # (B, P_a, dim)

    def call(self, inputs, training=None):
        if not isinstance(inputs, dict) or "log_mels" not in inputs:
            got = sorted(inputs) if isinstance(inputs, dict) else type(inputs).__name__
            raise ValueError(f"{self.name}: expected a dict {{'images': (B, H, W, 3), 'log_mels': (B, frames, 40), "
                             f"'token_ids': int (B, T)}}, got {got}.")
        log_mels = inputs["log_mels"]
        require_rank(log_mels, (3,), "log_mels", "(batch, frames, mel bins)")
        features, token_ids = self._unpack({k: v for k, v in inputs.items() if k != "log_mels"}, training=training)
        if not same_dim(log_mels.shape[0], token_ids.shape[0]):
            raise ValueError(f"{self.name}: log_mels and token_ids must have the same batch size, got "
                             f"{log_mels.shape[0]} and {token_ids.shape[0]}.")
        prefix = ops.concatenate([self.projector(features),                           # (B, P_i, dim)
                                  self.audio_tokens(log_mels, training=training)], 1)  # (B, P_i + P_a, dim)
        logits = self.language_model(token_ids, prefix_embeddings=prefix, training=training)    # (B, T, V)
        return self.add_relation_scores(logits, features, token_ids)

    def get_config(self):
        return {**super().get_config(), "frames": self.audio_encoder.frames, "audio_dim": self.audio_encoder.dim,
                "stack": self.stack}


def split_fields(fields: dict) -> tuple[MLLMConfig, dict]:
    """A run's ``model`` dict -> (the `mllm.MLLMConfig` of the image side and the language
    model, the audio side's `AUDIO_FIELDS`)."""
    if not isinstance(fields, dict):
        raise TypeError(f"fields must be a dict of model sizes (a run's config.model), got {type(fields).__name__}.")
    config = MLLMConfig(**{k: v for k, v in fields.items() if k not in AUDIO_FIELDS})
    return config, {k: v for k, v in fields.items() if k in AUDIO_FIELDS}


def build_model(fields: dict, tokenizer: preprocessing.Tokenizer) -> AudioVisualLLaVA:
    """The built model of a run's ``model`` dict (`split_fields`)."""
    config, audio = split_fields(fields)
    model = AudioVisualLLaVA(config, len(tokenizer), **audio)
    model.build()
    return model


def generate_texts(model: AudioVisualLLaVA, tokenizer: preprocessing.Tokenizer, images, log_mels, prompts,
                   batch_size: int = 64, max_new_tokens: int = 20) -> list[str]:
    """Greedy answers for each (image, sound, prompt); ``""`` asks for a caption. images
    uint8 (N, H, W, 3), log_mels float (N, frames, 40) of the same scenes."""
    if not isinstance(model, AudioVisualLLaVA):
        raise TypeError(f"model must be an AudioVisualLLaVA, got {type(model).__name__}.")
    images = instructions.require_images(images, size=model.config.image_size)
    log_mels = np.asarray(log_mels, np.float32)
    expected = (len(images), model.audio_encoder.frames, model.audio_encoder.mel_bins)
    if log_mels.shape != expected:
        raise ValueError(f"log_mels: expected {expected}, one clip per image (audio_lm.sound_features), "
                         f"got {log_mels.shape}.")
    rows = min(positive_int(batch_size, "batch_size"), len(images))

    def decode(chunk, prompt, new_tokens):
        if model.config.vision == "objects":   # a frozen detector: its tokens are the same at every step
            seen = {"image_features": ops.convert_to_numpy(model.image_features(images[chunk]))}
        else:
            seen = {"images": images[chunk]}
        return generation.greedy_recompute(model, {**seen, "log_mels": log_mels[chunk]}, prompt, new_tokens,
                                           tokenizer.eos_id, rows, model.config.max_text_length)

    return generation.decode_prompts(decode, tokenizer, prompts, len(images), model.config.max_text_length,
                                     batch_size, max_new_tokens)


def evaluate(model: AudioVisualLLaVA, tokenizer: preprocessing.Tokenizer, data: AudioVisualData,
             senses: str = "both", batch_size: int = 64) -> dict:
    """A caption and an answer for every scene, scored as lesson 08 scores images
    (`generation.score`). ``senses``: ``"both"``; ``"image"`` plays silence for every sound
    (the log-mel of a silent clip); ``"sound"`` shows a black picture for every image."""
    require_choice(senses, SENSES, "senses")
    images, log_mels = data.world.images, data.log_mels
    if senses == "image":
        log_mels = np.broadcast_to(silence(), log_mels.shape)
    if senses == "sound":
        images = np.zeros_like(images)
    captions = generate_texts(model, tokenizer, images, log_mels, [""] * len(data), batch_size)
    answers = generate_texts(model, tokenizer, images, log_mels, data.world.questions, batch_size)
    return generation.score(captions, answers, data.world)
