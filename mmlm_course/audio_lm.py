"""Lesson 09: audio-language models: sound in, words out.

Lesson 08's recipe with an ear instead of an eye (Qwen-Audio, SALMONN; Whisper's encoder)::

    sound ─► log-mel (F, 40) ─► audio encoder (lesson 03) ─► frames (F/4, D_a) ─► stack k ─► projector ─┐
    text  ─► token embeddings (T, dim) ─────────────────────────────────────────────────────────────────┤
                                                                                                        ▼
    language model (lesson 07) reads [audio tokens ; text tokens] ─► next-token logits (T, V)

- the data: ShapeWorld's sounds (each object a tone: pitch = colour, timbre = shape,
  duration = size, played from left to right). The sound carries left and right (the
  order of the tones) but not above and below, so captions and questions state only
  `SOUND_RELATIONS` and `caption_is_true_of_sound` refuses the rest;
- `sound_features`: lesson 02's log-mel spectrogram of a fixed-length clip, with lesson
  02's augmentation (a time shift and noise) on request;
- `AudioFrontEnd`: per-bin standardisation and lesson 03's `encoders.AudioEncoder`
  (strided 1-D convolutions over time), then `stack_frames`: k neighbouring frames become
  one token, which shortens the sequence the language model reads k times;
- `CTCTranscriber`: the front end and a per-frame classifier trained with CTC (Graves et
  al., 2006) to transcribe the notes ("small red circle large blue square"), with no
  alignment given. It pretrains the encoder, as a speech encoder is pretrained before an
  audio LLM uses it;
- `AudioLLaVA`: the pretrained front end (frozen), lesson 08's projector, and lesson 07's
  `DecoderLM` reading the audio tokens in front of the text; trained with the answer-only
  loss in lesson 08's two stages (`stages.compile_for_stage`). Its tokens are stacked
  frames, or (``tokens="notes"``) `note_tokens`: the transcriber's best path read as one
  token per note, with lesson 08's object features and the note's time for its place, so
  that lesson 08's `RelationHead` can compare where two notes are;
- `generate_texts` and `evaluate`: greedy captions and answers, scored with the sound
  verifier.

Model code uses ``keras.layers`` / ``keras.ops`` only.
"""

from __future__ import annotations

import dataclasses

import keras
import numpy as np
from keras import ops

from mmlm_course import audio, detector, encoders, generation, instructions, preprocessing, shapeworld
from mmlm_course import language_model as lm
from mmlm_course.mllm import ImageTokenProjector
from mmlm_course.relation_head import RelationHead
from mmlm_course.validation import (as_array, positive_int, require_array_budget, require_choice, require_float,
                                    require_float_dtype, require_int, require_int_dtype, require_rank, require_scene)

__all__ = ["SOUND_RELATIONS", "NOTE_WORDS", "CLIP_SAMPLES", "AUGMENT", "TOKENS", "SoundData", "generate",
           "sound_features", "note_labels", "note_label_rows", "caption_is_true_of_sound", "stack_frames",
           "ctc_greedy_decode", "note_tokens", "AudioFrontEnd", "CTCTranscriber", "AudioLLaVA", "pretrain_transcriber",
           "transcribe", "notes_text", "exact_transcriptions", "make_examples", "generate_texts", "evaluate"]

SOUND_RELATIONS = ("to the left of", "to the right of")    # what the order of the tones tells
NOTE_WORDS = shapeworld.SIZES + shapeworld.COLOR_NAMES + shapeworld.SHAPES   # CTC labels 1..11, 0 is the blank
MAX_SHIFT = 1600                                           # augmentation: up to 0.1 s later
CLIP_SAMPLES = 25_600                                      # 1.6 s: four large tones, the gaps and MAX_SHIFT
MAX_NOTES = shapeworld.MAX_OBJECTS * 3                     # three words a tone
AUGMENT = dict(snr_db=(5, 40), max_shift=MAX_SHIFT)        # training clips: noise at 5-40 dB, a delay up to 0.1 s
LOG_FLOOR = 1e-2                                           # log(power + 1e-2): silence looks like faint noise
_register = keras.saving.register_keras_serializable(package="mmlm_course")


# --------------------------------------------------------------------------- data


@dataclasses.dataclass
class SoundData:
    """A generated split of ShapeWorld as sound. ``log_mels`` float32 (N, frames, 40) of
    clips of `CLIP_SAMPLES`; ``labels`` int32 (N, MAX_NOTES), the note words (`note_labels`)
    padded with 0; the lists all have length N (captions and questions state only
    `SOUND_RELATIONS`)."""

    log_mels: np.ndarray
    labels: np.ndarray
    scenes: list
    captions: list
    questions: list
    answers: list
    question_types: list

    def __len__(self) -> int:
        return len(self.scenes)


def note_labels(scene: shapeworld.Scene) -> list[int]:
    """What the sound plays, as CTC labels: for each object from left to right its size,
    colour and shape word, each as ``1 + NOTE_WORDS.index(word)`` (0 is CTC's blank)."""
    ordered = sorted(require_scene(scene).objects, key=lambda o: o.x)
    return [1 + NOTE_WORDS.index(word) for o in ordered for word in (o.size, o.color, o.shape)]


def sound_features(waveforms, snr_db=None, max_shift: int = 0, seed: int = 0) -> np.ndarray:
    """Log-mel spectrograms (lesson 02) of clips padded to `CLIP_SAMPLES`: float32 (N, 158, 40).

    Augmentation (lesson 02), drawn per clip from ``seed``: a delay of 0..``max_shift``
    samples (`audio.time_shift`; a later start keeps the order of the tones, an earlier one
    could cut the first tone off) and, with ``snr_db`` = (low, high), white noise at a
    signal-to-noise ratio drawn uniformly in that range (a single number: that ratio for
    every clip). The noise covers the delayed sound, not the silence that then pads the
    clip to 1.6 s.
    """
    rng = np.random.default_rng(require_int(seed, "seed", 0))
    max_shift = require_int(max_shift, "max_shift", 0, MAX_SHIFT)
    if snr_db is not None:  # one number, or a (low, high) range
        pair = (snr_db,) * 2 if np.isscalar(snr_db) else tuple(snr_db) if hasattr(snr_db, "__len__") else ()
        low, high = (require_float(v, "snr_db", -300, 300) for v in pair) if len(pair) == 2 else (1, 0)
        if low > high:
            raise ValueError(f"snr_db: expected None, a number or a (low, high) pair with low <= high, got {snr_db!r}.")
    clips = []
    for wave in waveforms:
        if len(wave) + max_shift > CLIP_SAMPLES:
            raise ValueError(f"a sound of {len(wave)} samples shifted by up to {max_shift} does not fit a clip of "
                             f"{CLIP_SAMPLES} samples (1.6 s): ShapeWorld sounds are at most 23,200 samples.")
        delay = int(rng.integers(0, max_shift + 1))
        wave = audio.time_shift(np.concatenate([wave, np.zeros(delay, np.float32)]), delay)   # silence in front
        if snr_db is not None:
            low, high = (snr_db, snr_db) if np.isscalar(snr_db) else snr_db
            wave = audio.add_noise(wave, float(rng.uniform(low, high)), rng)
        clips.append(wave)
    chunks = [audio.log_mel_batch(clips[i:i + 256], length=CLIP_SAMPLES, eps=LOG_FLOOR)[0]  # silence pads to 1.6 s
              for i in range(0, len(clips), 256)]                                # 256 at a time: the STFT is large
    return np.concatenate(chunks).astype(np.float32)


def generate(num_examples: int, split: str = "train", seed: int = 0, snr_db=None, max_shift: int = 0) -> SoundData:
    """ShapeWorld's ``split`` as sound (same scenes as ``shapeworld.generate(num_examples,
    split, seed, relations=SOUND_RELATIONS)``); ``snr_db``, ``max_shift``: augmentation
    or a noisy test condition (`sound_features`)."""
    data = shapeworld.generate(num_examples, split, seed, relations=SOUND_RELATIONS)
    log_mels = sound_features(data.sounds(), snr_db, max_shift, seed=seed + 1_000 * shapeworld.SPLITS.index(split))
    return SoundData(log_mels, note_label_rows(data.scenes), data.scenes, data.captions, data.questions, data.answers,
                     data.question_types)


def note_label_rows(scenes) -> np.ndarray:
    """`note_labels` of every scene, int32 (N, MAX_NOTES), padded with 0 (CTC's blank)."""
    labels = np.zeros((len(scenes), MAX_NOTES), np.int32)
    for i, scene in enumerate(scenes):
        notes = note_labels(scene)
        labels[i, :len(notes)] = notes
    return labels


def caption_is_true_of_sound(caption: str, scene: shapeworld.Scene) -> bool:
    """The verifier for what a sound can tell: the caption parses, states no relation
    outside `SOUND_RELATIONS` ("above" cannot be heard), and is true of the scene
    (`shapeworld.caption_is_true`)."""
    require_scene(scene)
    try:
        statements = shapeworld.parse_caption(caption)
    except shapeworld.CaptionParseError:
        return False
    audible = all(s[0] != "relation" or s[2] in SOUND_RELATIONS for s in statements)
    return audible and shapeworld.caption_is_true(caption, scene)


# --------------------------------------------------------------------------- the exercises' functions


def stack_frames(frames, k: int):
    """k neighbouring frames become one token: float (B, T, D) -> (B, ceil(T / k), k * D).

    Token j is frames jk .. jk + k - 1 side by side (frame jk first); when T is not a
    multiple of k the last token is completed with zeros. Qwen-Audio pools and SALMONN
    windows its encoder frames the same way, so the language model reads fewer tokens.
    """
    k, frames = positive_int(k, "k"), as_array(frames, "frames")
    shape = require_rank(frames, (3,), "frames", "(batch, time, features)")
    time, width = shape[1], shape[2]
    if time is None or width is None:
        raise ValueError(f"stack_frames needs a known number of frames and features, got shape {shape}.")
    tokens = -(-time // k)
    require_array_budget((shape[0] or 1, tokens * k, width), 4, "frames and k")
    frames = ops.pad(frames, [[0, 0], [0, tokens * k - time], [0, 0]])          # (B, tokens * k, D)
    return ops.reshape(frames, (-1, tokens, k * width))                          # (B, tokens, k * D)


def ctc_greedy_decode(frame_ids, blank: int = 0) -> list[int]:
    """Best-path CTC decoding of one clip: the argmax label of every frame, int (T,) ->
    the labels it spells: merge runs of the same label, then drop the blanks
    (``[0, 3, 3, 0, 3, 5, 5] -> [3, 3, 5]``: a blank between two 3s keeps both)."""
    frame_ids, blank = as_array(frame_ids, "frame_ids"), require_int(blank, "blank", 0)
    require_int_dtype(frame_ids, "frame_ids", "integer labels (the arg-max of each frame)")
    frame_ids = np.asarray(frame_ids)
    if frame_ids.size and frame_ids.min() < 0:
        raise ValueError(f"frame_ids: labels are ids >= 0, got {frame_ids.min()}.")
    if frame_ids.ndim != 1:
        raise ValueError(f"frame_ids: expected the labels of one clip, shape (T,), got shape {frame_ids.shape}; "
                         "decode a batch row by row.")
    out, previous = [], None
    for label in frame_ids.tolist():
        if label != previous and label != blank:
            out.append(int(label))
        previous = label
    return out


def note_tokens(logits, num_notes: int = shapeworld.MAX_OBJECTS):
    """The ear's object tokens: CTC logits float (B, F, 12) -> note tokens float32 (B, K, 14)
    in `detector.OBJECT_FEATURES` order, so that lesson 08's projector and relation head
    read a note as they read an object the detector found.

    The best path of `ctc_greedy_decode`, for every clip at once in ``keras.ops``: a label
    is *emitted* at a frame whose arg-max is not the blank and differs from the frame
    before. Each three emitted labels are one note (its size, colour and shape, the order
    `note_labels` trains). Note k's ``p(word)`` features are the probabilities of its
    emitted labels at their frames; its ``x`` the mean time of those frames (0 at the
    clip's start, 1 at its end): *when* it sounds, which says where it lies; its ``y`` 0.5
    (a sound has no height); its objectness 1. A note not heard is all zeros.
    """
    logits = as_array(logits, "logits")
    shape = require_rank(logits, (3,), "logits", "(batch, frames, labels)")
    require_float_dtype(logits, "logits")
    if shape[2] != len(NOTE_WORDS) + 1:
        raise ValueError(f"logits: expected a score for the blank and each of the {len(NOTE_WORDS)} note words, "
                         f"shape (batch, frames, {len(NOTE_WORDS) + 1}) (a CTCTranscriber's output), got {shape}.")
    num_notes = require_int(num_notes, "num_notes", 1, 256)
    logits = ops.cast(logits, "float32")
    ids = ops.argmax(logits, axis=-1)                                              # (B, F)
    before = ops.pad(ids[:, :-1], [[0, 0], [1, 0]])                                # the frame before (a blank at 0)
    emitted = ops.logical_and(ids != 0, ids != before)                             # (B, F): a label starts here
    note = (ops.cumsum(ops.cast(emitted, "int32"), axis=1) - 1) // 3               # (B, F): the note it belongs to
    member = ops.cast(ops.logical_and(emitted[..., None], note[..., None] == ops.arange(num_notes)), "float32")
    probabilities = ops.softmax(logits, axis=-1)[..., 1:]                          # (B, F, 11): the words, no blank
    words = ops.einsum("bfk,bfw->bkw", member, probabilities)                      # (B, K, 11) in NOTE_WORDS order
    columns = [detector.OBJECT_FEATURES.index(f"p({word})") for word in NOTE_WORDS]
    attributes = ops.matmul(words, ops.convert_to_tensor(np.eye(len(NOTE_WORDS), dtype="float32")[columns]))
    heard = ops.sum(member, axis=1)                                                # (B, K): labels of each note
    time = ops.einsum("bfk,f->bk", member, ops.linspace(0.0, 1.0, ops.shape(logits)[1])) / ops.maximum(heard, 1.0)
    present = ops.cast(heard > 0, "float32")                                       # (B, K)
    return ops.concatenate([attributes, ops.stack([time, 0.5 * present, present], axis=-1)], axis=-1)   # (B, K, 14)


# --------------------------------------------------------------------------- models


@_register
class AudioFrontEnd(keras.layers.Layer):
    """Log-mel frames -> audio feature frames.

    Input float (B, frames, 40). A per-mel-bin standardisation (``normalization``, a
    `keras.layers.Normalization` whose statistics `adapt` learns from training clips), then
    lesson 03's `encoders.AudioEncoder` with ``output="tokens"``: three causal convolutions
    over time (kernel 9, the first with stride 2), so each output frame sees the last 410 ms,
    enough to hear whether a tone lasted 150 ms (small) or 300 ms (large). Output float
    (B, ceil(frames / 2), dim): one feature frame every 20 ms.
    """

    def __init__(self, frames: int = 158, mel_bins: int = audio.NUM_MEL_BINS, dim: int = 64, **kwargs):
        super().__init__(**kwargs)
        self.frames = positive_int(frames, "frames")
        self.mel_bins = positive_int(mel_bins, "mel_bins")
        self.dim = positive_int(dim, "dim")
        self.input_spec = keras.layers.InputSpec(shape=(None, self.frames, self.mel_bins))
        self.normalization = keras.layers.Normalization(axis=-1, name="normalization", dtype=self.dtype_policy)
        self.encoder = encoders.AudioEncoder(self.mel_bins, filters=(dim, dim, dim), strides=(2, 1, 1), kernel_size=9,
                                             embed_dim=dim, output="tokens", name="encoder", dtype=self.dtype_policy)
        self.output_frames = self.encoder.output_frames(self.frames)

    def build(self, input_shape):
        self.normalization.build(input_shape)
        self.encoder.build(input_shape)

    def adapt(self, log_mels) -> None:
        """Learn the per-bin mean and variance of training clips (before training)."""
        self.normalization.adapt(np.asarray(log_mels, np.float32))

    def set_weights(self, weights) -> None:
        """Copy weights in (``front_end.set_weights(other.get_weights())``), statistics included.

        A `keras.layers.Normalization` divides by a copy of its statistics made when it
        adapts or loads (``finalize_state``), not by the variables themselves: without the
        last line, a copied front end would keep the statistics it had before (mean 0,
        variance 1) and compute other features than the front end it copies."""
        super().set_weights(weights)
        self.normalization.finalize_state()

    def call(self, log_mels, training=None):
        return self.encoder(self.normalization(log_mels), training=training)     # (B, frames / 2, dim)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.output_frames, self.dim)

    def get_config(self):
        return {**super().get_config(), "frames": self.frames, "mel_bins": self.mel_bins, "dim": self.dim}


@_register
class CTCTranscriber(keras.Model):
    """`AudioFrontEnd` + ``Dense(len(NOTE_WORDS) + 1)``: a score for every note word and
    the blank (0) at each feature frame. ``model(log_mels)`` -> logits float32 (B, F', 12).
    Trained with CTC on the labels of `note_labels` (int (B, MAX_NOTES), 0-padded): the loss
    sums over every alignment of the labels to the frames, so no one says where a note
    starts."""

    def __init__(self, frames: int = 158, dim: int = 64, **kwargs):
        super().__init__(**kwargs)
        self.front_end = AudioFrontEnd(frames, dim=dim, name="front_end", dtype=self.dtype_policy)
        self.head = keras.layers.Dense(len(NOTE_WORDS) + 1, name="head", dtype=self.dtype_policy)

    def build(self, input_shape=None):
        self.front_end.build((None, self.front_end.frames, self.front_end.mel_bins))
        self.head.build((None, self.front_end.output_frames, self.front_end.dim))
        self.built = True

    def call(self, log_mels, training=None):
        return ops.cast(self.head(self.front_end(log_mels, training=training)), "float32")

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        """Mean CTC loss per clip; the label length is the count of non-zero labels."""
        labels = ops.cast(y, "int32")
        label_length = ops.sum(ops.cast(labels > 0, "int32"), axis=1)
        frames = ops.full((ops.shape(y_pred)[0],), ops.shape(y_pred)[1], dtype="int32")
        return ops.mean(ops.ctc_loss(labels, y_pred, label_length, frames, mask_index=0))

    def get_config(self):
        return {**super().get_config(), "frames": self.front_end.frames, "dim": self.front_end.dim}


def pretrain_transcriber(data: SoundData, steps: int, batch_size: int = 64, learning_rate: float = 2e-3,
                         seed: int = 0) -> CTCTranscriber:
    """A `CTCTranscriber` whose normalisation is adapted to ``data`` and which is trained
    with CTC for ``steps`` steps (Adam, gradients clipped to norm 1, lesson 05's step loop):
    stage 0 of an audio LLaVA, whose front end it becomes."""
    from mmlm_course import training

    keras.utils.set_random_seed(seed)
    transcriber = CTCTranscriber(frames=data.log_mels.shape[1])
    transcriber.build()
    transcriber.front_end.adapt(data.log_mels)
    transcriber.compile(optimizer=keras.optimizers.Adam(learning_rate, global_clipnorm=1.0))
    training.train_steps(transcriber, data.log_mels, data.labels, steps, batch_size=batch_size, seed=seed)
    return transcriber


def transcribe(transcriber: CTCTranscriber, log_mels, batch_size: int = 256) -> list[str]:
    """Best-path transcriptions: the note words each clip plays, e.g. "small red circle
    large blue square" (`ctc_greedy_decode` of the per-token argmax)."""
    logits = transcriber.predict(np.asarray(log_mels, np.float32), batch_size=batch_size, verbose=0)
    return [notes_text(ctc_greedy_decode(row)) for row in logits.argmax(-1)]


def notes_text(labels) -> str:
    """CTC labels (1..11; 0, the blank or padding, is skipped) -> the words, e.g. "small red circle"."""
    labels = [require_int(int(i) if isinstance(i, np.integer) else i, "labels[i]", 0, len(NOTE_WORDS)) for i in labels]
    return " ".join(NOTE_WORDS[int(i) - 1] for i in labels if i)


def exact_transcriptions(transcriber: CTCTranscriber, data: SoundData) -> float:
    """The share of clips whose best-path transcription is exactly the notes they play."""
    heard = transcribe(transcriber, data.log_mels)
    return float(np.mean([text == notes_text(row) for text, row in zip(heard, data.labels)]))


TOKENS = ("frames", "notes")


@_register
class AudioLLaVA(keras.Model):
    """Audio tokens in front of the text of a `DecoderLM`: lesson 08's `LLaVAModel` with an
    `AudioFrontEnd` for the image encoder.

    ``model({"log_mels": float (B, frames, 40), "token_ids": int (B, T)})`` -> next-token
    logits float32 (B, T, vocab_size) of the T text positions. Parts: ``encoder`` (the
    front end, pretrained by a `CTCTranscriber` and frozen: `staged_encoders`); the audio
    tokens, by ``tokens``:

    - ``"frames"``: `stack_frames` by ``stack``, P = ceil(feature frames / stack) tokens of
      k * audio_dim numbers (Qwen-Audio's and SALMONN's way);
    - ``"notes"``: the transcriber's CTC head too (``ctc_head``, frozen), its best path read
      as `note_tokens`, P = 4 tokens of lesson 08's 14 object features, centre rescaled
      (`detector.CentredPositions`), as lesson 08 reads the detector's objects;

    then lesson 08's `ImageTokenProjector` (a two-layer MLP per token) and ``language_model``
    (max_length = P + max_text_length). ``relation_head=True`` (notes only) adds lesson 08's
    `RelationHead`, reading the note tokens, to the logits.
    """

    def __init__(self, vocab_size: int, frames: int = 158, audio_dim: int = 64, stack: int = 8, dim: int = 64,
                 num_layers: int = 2, num_heads: int = 4, max_text_length: int = 20, tokens: str = "frames",
                 relation_head: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.vocab_size = require_int(vocab_size, "vocab_size", low=2)
        self.max_text_length = require_int(max_text_length, "max_text_length", low=3)
        self.stack = positive_int(stack, "stack")
        self.tokens = require_choice(tokens, TOKENS, "tokens")
        if relation_head not in (True, False) or (relation_head and tokens != "notes"):
            raise ValueError(f"relation_head=True reads note tokens: it needs tokens='notes', got "
                             f"relation_head={relation_head!r} with tokens={tokens!r}.")
        policy = self.dtype_policy
        self.encoder = AudioFrontEnd(frames, dim=audio_dim, name="encoder", dtype=policy)
        if self.tokens == "notes":
            self.ctc_head = keras.layers.Dense(len(NOTE_WORDS) + 1, name="ctc_head", dtype=policy)
            self.centred = detector.CentredPositions(name="centred_positions", dtype=policy)
            self.num_audio_tokens, self.token_width = shapeworld.MAX_OBJECTS, len(detector.OBJECT_FEATURES)
        else:
            self.ctc_head = None
            self.num_audio_tokens = -(-self.encoder.output_frames // self.stack)
            self.token_width = self.stack * audio_dim
        self.projector = ImageTokenProjector(self.num_audio_tokens, self.token_width, dim, name="projector",
                                             dtype=policy)
        self.language_model = lm.DecoderLM(self.vocab_size, max_length=self.num_audio_tokens + max_text_length,
                                           dim=dim, num_layers=num_layers, num_heads=num_heads,
                                           name="language_model", dtype=policy)
        self.relation_head = (RelationHead(self.vocab_size, max_text_length, dim, name="relation_head", dtype=policy)
                              if relation_head else None)

    @property
    def num_prefix_tokens(self) -> int:
        return self.num_audio_tokens

    def build(self, input_shape=None):
        self.encoder.build((None, self.encoder.frames, self.encoder.mel_bins))
        if self.ctc_head is not None:
            self.ctc_head.build((None, self.encoder.output_frames, self.encoder.dim))
        feature_shape = (None, self.num_audio_tokens, self.token_width)
        self.projector.build(feature_shape)
        self.language_model.build()
        if self.relation_head is not None:
            self.relation_head.build(feature_shape)
        self.built = True

    def staged_encoders(self) -> list:
        """[(encoder, learns in stage 2)] for `stages.set_stage_trainable`: the transcriber's
        parts, front end (and CTC head), stay frozen."""
        return [(self.encoder, False)] + ([(self.ctc_head, False)] if self.ctc_head is not None else [])

    def load_transcriber(self, transcriber: "CTCTranscriber") -> None:
        """Copy a pretrained `CTCTranscriber` in: its front end, and its head for note tokens."""
        if not isinstance(transcriber, CTCTranscriber):
            raise TypeError(f"transcriber must be a CTCTranscriber (pretrain_transcriber), got "
                            f"{type(transcriber).__name__}.")
        self.encoder.set_weights(transcriber.front_end.get_weights())
        if self.ctc_head is not None:
            self.ctc_head.set_weights(transcriber.head.get_weights())

    def audio_features(self, log_mels, training=None):
        """float (B, frames, 40) -> what the projector reads: stacked frames (B, P, k * audio_dim)
        or note tokens (B, 4, 14)."""
        frames = self.encoder(log_mels, training=training)                       # (B, F', audio_dim)
        if self.ctc_head is None:
            return stack_frames(frames, self.stack)                              # (B, P, k * audio_dim)
        return self.centred(note_tokens(self.ctc_head(frames)))                  # (B, 4, 14)

    def call(self, inputs, training=None):
        if not isinstance(inputs, dict) or set(inputs) != {"log_mels", "token_ids"}:
            got = sorted(inputs) if isinstance(inputs, dict) else type(inputs).__name__
            raise ValueError(f"{self.name}: expected a dict {{'log_mels': (B, frames, 40), 'token_ids': int (B, T)}}, "
                             f"got {got}.")
        features = self.audio_features(inputs["log_mels"], training=training)                   # (B, P, width)
        logits = self.language_model(inputs["token_ids"], prefix_embeddings=self.projector(features),
                                     training=training)                                         # (B, T, V)
        if self.relation_head is None:
            return logits
        return logits + ops.cast(self.relation_head(features, inputs["token_ids"]), logits.dtype)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        """Mean cross-entropy over the answer tokens (targets != 0)."""
        return lm.next_token_loss(y, y_pred)

    def get_config(self):
        d = self.language_model
        return {**super().get_config(), "vocab_size": self.vocab_size, "frames": self.encoder.frames,
                "audio_dim": self.encoder.dim, "stack": self.stack, "dim": d.dim, "num_layers": len(d.blocks),
                "num_heads": d.num_heads, "max_text_length": self.max_text_length, "tokens": self.tokens,
                "relation_head": self.relation_head is not None}


# --------------------------------------------------------------------------- training rows, generation, scores


def make_examples(data: SoundData, tokenizer: preprocessing.Tokenizer, max_text_length: int):
    """Lesson 08's instruction rows with the sound for the image: a caption row and a
    question row per clip. Returns ``({"log_mels", "token_ids"}, targets)``, targets 0 on
    the prompt (the answer-only loss)."""
    prompts = [prompt for question in data.questions for prompt in ("", question)]
    answers = [text for caption, answer in zip(data.captions, data.answers) for text in (caption, answer)]
    token_ids, targets = instructions.instruction_rows(prompts, answers, tokenizer, max_text_length)
    return {"log_mels": np.repeat(data.log_mels, 2, axis=0), "token_ids": token_ids}, targets


def generate_texts(model: AudioLLaVA, tokenizer: preprocessing.Tokenizer, log_mels, prompts,
                   batch_size: int = 64, max_new_tokens: int = 20) -> list[str]:
    """Greedy answers for each (clip, prompt); ``""`` asks for a caption. log_mels float
    (N, frames, 40). Decoded with `generation.greedy_recompute`, whose calls all have one
    shape, whatever the prompt's length."""
    if not isinstance(model, AudioLLaVA):
        raise TypeError(f"model must be an AudioLLaVA, got {type(model).__name__}.")
    log_mels = np.asarray(log_mels, np.float32)
    if log_mels.ndim != 3 or log_mels.shape[1:] != (model.encoder.frames, model.encoder.mel_bins):
        raise ValueError(f"log_mels: expected (N, {model.encoder.frames}, {model.encoder.mel_bins}) "
                         f"(audio_lm.sound_features), got {log_mels.shape}.")
    rows = min(positive_int(batch_size, "batch_size"), max(1, len(log_mels)))

    def decode(chunk, prompt, new_tokens):
        return generation.greedy_recompute(model, {"log_mels": log_mels[chunk]}, prompt, new_tokens,
                                           tokenizer.eos_id, rows, model.max_text_length)

    return generation.decode_prompts(decode, tokenizer, prompts, len(log_mels), model.max_text_length, batch_size,
                                     max_new_tokens)


def evaluate(model: AudioLLaVA, tokenizer: preprocessing.Tokenizer, data: SoundData, batch_size: int = 64) -> dict:
    """A caption and an answer for every clip, scored as lesson 08 scores images but with
    the sound verifier (`caption_is_true_of_sound`). Returns `generation.score`'s dict."""
    captions = generate_texts(model, tokenizer, data.log_mels, [""] * len(data), batch_size)
    answers = generate_texts(model, tokenizer, data.log_mels, data.questions, batch_size)
    return generation.score(captions, answers, data, caption_is_true_of_sound)
