"""Bad-input sweep over the lesson modules' public functions (issue #16). Not a pytest file.

Run:  .venv/bin/python tests/sweep_bad_inputs.py --out /tmp/sweep.json [--only MODULE ...]

For each public function / class constructor of mmlm_course/*.py (not exercises/, quality/,
tools/) it starts from one valid call written by hand below, then replaces one argument at a
time with bad values of each class (None, wrong type, negative, zero, huge, NaN / inf, empty,
wrong rank / shape, wrong dtype, out-of-range ids). Each module's calls run in a worker
process, each call under a 10 s alarm; a worker that stops answering for 30 s is killed, the
call counted as a hang and the worker restarted after it. Outcomes:

* clear:  ValueError / TypeError (or FileNotFoundError for a missing file) raised from a frame inside
          mmlm_course, non-empty message;
* raw:    any other exception, or one raised from inside NumPy / TF / Keras / the stdlib;
* silent: the call returned although the input is invalid (a value that is actually valid,
          e.g. 0 where 0 makes sense, is listed in VALID_BAD below with the reason: "fine");
* hang:   over the time limit.

A NaN / inf input whose result holds NaN / inf propagated visibly, so it is "fine" too; a
NaN / inf input that gives a finite result (e.g. an accuracy of 0.5) is silent.
"""

from __future__ import annotations

import argparse
import atexit
import json
import math
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections import Counter, defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "mmlm_course"
CALL_LIMIT_S = 10
WORKER_SILENCE_S = 25
TAG = "@@SWEEP "

# Public names deliberately not swept, with the reason (the sweep lists them in its report).
SKIPPED = {
    "env.*": "environment set-up and reporting (no data arguments; changes process state)",
    "audio.plot_waveform": "plotting", "audio.plot_spectrogram": "plotting",
    "capstone.train": "a full training run (minutes)", "capstone.load_trained": "needs a finished run folder",
    "capstone.generate_from_run": "needs a finished run folder",
    "run_data.save_samples": "needs a trained run", "run_data.save_photo_samples": "needs photo data",
    "capstone.describe_device": "no arguments", "capstone.RunFolder": "file-system helper for train()",
    "capstone.load_config": "needs a run folder",
    "run_data.load_run_data": "downloads / builds the capstone data", "run_data.evaluate_photos": "needs photos",
    "run_data.RunData": "plain record", "datasets.load_flickr8k": "needs a dataset folder",
    "datasets.load_coco_captions": "needs dataset files", "datasets.load_vqa": "needs dataset files",
    "datasets.safe_extract": "needs an archive",
    "datasets.load_records": "needs dataset files", "datasets.ImageTextRecord": "plain record",
    "datasets.LoadedImages": "plain record", "datasets.DatasetFormatError": "exception class",
    "shapeworld.CaptionParseError": "exception class", "metrics.BleuScore": "plain record (result type)",
    "audio_lm.SoundData": "plain record", "shapeworld.ShapeWorldData": "plain record",
    "audio_lm.pretrain_transcriber": "training loop", "audio_lm.exact_transcriptions": "needs a trained model",
    "audio_lm.evaluate": "needs a trained model", "audio_lm.generate_texts": "needs a trained model",
    "audio_lm.transcribe": "needs a trained model", "detector.pretrain_object_encoder": "training loop",
    "detector.attribute_accuracy": "needs a trained detector", "detector.load_detector": "needs a trained detector",
    "generation.generate_texts": "decoding with a trained MLLM", "generation.decode_prompts": "needs a trained MLLM",
    "generation.greedy_recompute": "needs a trained MLLM", "generation.evaluate": "needs a trained MLLM",
    "generation.object_hallucination": "covered by tests/test_mllm.py", "generation.image_attention": "needs an MLLM",
    "language_model.time_generation": "timing loop",
    "qa.fit_qa_model": "training loop", "qa.predict_answers": "needs a trained model",
    "qa.inputs_for": "needs a built QA model", "retrieval.embed_images": "needs a built dual encoder",
    "retrieval.embed_texts": "needs a built dual encoder", "retrieval.retrieval_scores": "needs a dual encoder",
    "retrieval.retrieval_report": "needs a dual encoder", "retrieval_training.train_dual_encoder": "training loop",
    "retrieval_training.twin_accuracy": "needs a dual encoder", "stages.*": "stage training of a built MLLM",
    "training.train_steps": "training loop", "mllm.MultimodalModel": "abstract base (LLaVAModel is swept)",
    "mllm.CrossAttentionMLLM": "builds a whole model (LLaVAModel is swept)", "mllm.build_model": "builds a whole model",
    "retrieval.DualEncoder": "builds a whole model (seconds per call)", "checkpoints.CheckpointStore": "file-system",
    "shapeworld.ShapeObject": "plain record", "shapeworld.Scene": "plain record",
    "detector.InkChannel": "no arguments", "fusion.TileConcat": "no arguments", "fusion.LateFusion": "no arguments",
    "qa.Objectness": "no arguments", "qa.TokenMask": "no arguments", "qa.MaskedMean": "no arguments",
    "encoders.shape_trace": "takes callables (display helper)",
    "language_model.attention_weights": "needs a built DecoderLM per call (covered by DecoderLM)",
    "capstone.build_run_model": "builds a whole model", "audiovisual.AudioVisualData": "plain record",
    "audiovisual.AudioVisualLLaVA": "builds a whole model", "audiovisual.build_model": "builds a whole model",
    "audiovisual.generate_texts": "needs a trained model", "audiovisual.evaluate": "needs a trained model",
    "audiovisual.make_examples": "needs AudioVisualData", "audiovisual.silence": "no arguments", "audio_lm.CTCTranscriber": "builds a whole model",
    "audio_lm.AudioLLaVA": "builds a whole model", "audio_lm.make_examples": "needs SoundData",
    "detector.build_object_encoder": "builds two models", "qa.build_qa_model": "builds a whole model",
    "grid_encoder.GridCoordinates": "initializer (swept through GridImageEncoder)",
}

# (function, argument, bad-value label) -> why the "bad" value is actually valid.
VALID_BAD = {
    ("instructions.instruction_texts", "captions", "empty_item"): "documented (and tested): '' marks an image "
                                                                  "without a caption",
    ("losses.check_labels", "logits", "strings"): "checks the labels; the logits give only their shape",
    ("losses.check_labels", "logits", "nan"): "checks the labels; the logits give only their shape",
    ("losses.check_labels", "logits", "inf"): "checks the labels; the logits give only their shape",
    ("metrics.sentence_bleu", "*", "item_type"): "BLEU counts n-grams of any hashable tokens (ids included)",
    ("metrics.sentence_bleu", "*", "empty_item"): "an empty-string token is a token",
    ("instructions.answer_only_targets", "pad_id", "huge"): "no vocabulary size is given: any pad id >= 0",
    ("audio_io.save_wav", "path", "unknown"): "a new file name is valid (the worker runs in a scratch folder)",
    ("audio_io.save_wav", "sample_rate", "huge"): "a WAV file stores any rate up to 2**32 - 1",
    ("audio_io.load_audio", "sample_rate", "none"): "documented: None keeps the file's own rate",
    ("preprocessing.load_image", "size", "none"): "documented: None keeps the image's own size",
    ("preprocessing.make_image_text_dataset", "token_ids", "out_of_range"): "no vocabulary is given: any id >= 0",
    ("preprocessing.make_image_text_dataset", "batch_size", "huge"): "a batch larger than the data is one batch",
    ("preprocessing.make_image_text_dataset", "seed", "zero"): "any seed >= 0 is valid",
    ("preprocessing.make_image_text_dataset", "seed", "huge"): "any seed >= 0 is valid",
    ("generation.score", "captions", "empty_item"): "an empty generated caption is a caption (one that is false)",
    ("generation.score", "answers", "empty_item"): "an empty generated answer is an answer (a wrong one)",
    ("language_model.perplexity", "pad_id", "zero"): "0 is the course's pad id",
    ("language_model.perplexity", "batch_size", "huge"): "a batch larger than the data is one batch",
    ("language_model.generate", "temperature", "zero"): "documented: temperature 0 is greedy decoding",
    ("language_model.generate", "temperature", "huge"): "a huge temperature samples uniformly: valid",
    ("language_model.generate", "seed", "none"): "documented: None draws a fresh seed",
    ("language_model.generate", "stop_id", "none"): "documented: None generates max_new_tokens tokens",
    ("language_model.generate", "stop_id", "zero"): "any id of the vocabulary can stop generation",
    ("language_model.*", "seed", "zero"): "any seed >= 0 is valid", ("language_model.*", "seed", "huge"): "any seed >= 0 is valid",
    ("language_model.sample_texts", "batch_size", "huge"): "a batch larger than count is one batch",
    ("encoders.ConvImageEncoder", "filters", "wrong_type"): "documented: one int is one layer",
    ("grid_encoder.GridImageEncoder", "filters", "wrong_type"): "documented: one int is one layer",
    ("detector.object_grid_targets", "scenes", "empty"): "no scenes give zero-row targets",
    ("qa.accuracy_by_type", "predicted", "out_of_range"): "no answer count is given: any index >= 0",
    ("qa.accuracy_by_type", "answers", "out_of_range"): "no answer count is given: any index >= 0",
    ("qa.qa_arrays", "tokenizer", "none"): "None: Tokenizer.for_shapeworld() (documented)",
    ("training.WarmupCosineDecay", "peak_learning_rate", "huge"): "a large (diverging) rate is still a schedule",
    ("losses.ClipValue", "max_value", "inf"): "no upper bound: clipping from below only",
    ("audio.validate_waveform", "min_length", "zero"): "min_length=0 accepts an empty signal (used internally)",
    ("audio.alias_frequency", "sample_rate", "float"): "a fractional sample rate is a rate",
    ("audio.alias_frequency", "sample_rate", "huge"): "a huge rate: the tone stays where it is",
    ("audio.lowpass_fir", "sample_rate", "huge"): "the cut-off is still below Nyquist: a valid filter",
    ("audio.frequency_response", "sample_rate", "float"): "a fractional sample rate is a rate",
    ("audio.frequency_response", "sample_rate", "huge"): "a huge rate only rescales the frequency axis",
    ("audio.decimate", "factor", "huge"): "keeps the first sample: a valid (if useless) decimation",
    ("audio.resample", "orig_rate", "huge"): "resampling down to a few samples is valid",
    ("audio.num_frames", "num_samples", "huge"): "arithmetic: a long signal has many frames",
    ("audio.num_frames", "frame_length", "huge"): "documented: 0 frames when the signal is shorter than a frame",
    ("audio.fft_frequencies", "sample_rate", "huge"): "a huge rate only rescales the bins",
    ("audio.mel_filterbank", "sample_rate", "huge"): "a huge rate is a valid (wide) filterbank",
    ("audio.log_mel_spectrogram", "sample_rate", "huge"): "a huge rate is a valid (wide) filterbank",
    ("audio.segment_tones", "sample_rate", "huge"): "only rescales the gap in samples",
    ("audio.segment_tones", "min_gap_s", "huge"): "a long minimum gap merges every tone: valid",
    ("audio.hz_to_mel", "frequencies_hz", "rank_up"): "any shape (elementwise)",
    ("audio.hz_to_mel", "frequencies_hz", "rank_down"): "a scalar frequency",
    ("audio.mel_to_hz", "mels", "rank_up"): "any shape (elementwise)", ("audio.mel_to_hz", "mels", "rank_down"): "a scalar",
    ("audio.log_mel", "spectrogram", "rank_up"): "documented: (..., frames, bins)",
    ("audio.log_mel", "eps", "huge"): "a large floor is a valid (flat) floor",
    ("audio.log_mel_spectrogram", "eps", "huge"): "a large floor is a valid (flat) floor",
    ("audio.log_mel_batch", "length", "none"): "None: the longest",
    ("metrics.retrieval_ranks", "scores", "nan"): "documented: NaN scores count against the true item",
    ("metrics.recall_at_k", "scores", "nan"): "documented: NaN scores count against the true item",
    ("retrieval.first_hit_ranks", "scores", "nan"): "documented: NaN scores count against the query",
    ("retrieval.recall_at_k_with_hits", "scores", "nan"): "documented: NaN scores count against the query",
    ("*", "scores", "inf"): "an infinite score is an ordered score (the best or worst); ranks stay defined",
    ("metrics.accuracy", "logits", "inf"): "an infinite score is still an arg-max",
    ("language_model.sample_next_token", "temperature", "zero"): "documented: 0 = greedy",
    ("language_model.sample_next_token", "temperature", "huge"): "a huge temperature samples near-uniformly",
    ("language_model.temperature_probabilities", "temperature", "huge"): "a huge temperature: near-uniform",
    ("losses.similarity_logits", "temperature", "huge"): "a huge temperature flattens the logits (valid)",
    ("losses.symmetric_info_nce", "temperature", "huge"): "a huge temperature flattens the logits (valid)",
    ("losses.ClipValue", "max_value", "huge"): "a loose upper bound is valid",
    ("losses.float_tensor", "x", "rank_up"): "any rank is accepted (a conversion helper)",
    ("losses.float_tensor", "x", "rank_down"): "any rank is accepted (a conversion helper)",
    ("losses.log_softmax", "logits", "rank_up"): "documented: (..., C), any leading axes",
    ("losses.log_softmax", "logits", "rank_down"): "documented: (..., C), one vector is fine",
    ("losses.l2_normalize", "x", "rank_up"): "any rank, normalised along axis",
    ("losses.l2_normalize", "x", "rank_down"): "any rank, normalised along axis",
    ("mllm.MLLMConfig", "dropout", "zero"): "no dropout", ("language_model.DecoderLM", "dropout", "zero"): "no dropout",
    ("language_model.check_token_ids", "vocab_size", "huge"): "a large vocabulary bound is valid",
    ("language_model.next_token_pairs", "token_ids", "out_of_range"): "no vocabulary size given: any id >= 0",
    ("instructions.answer_only_targets", "token_ids", "out_of_range"): "no vocabulary size given: any id >= 0",
    ("instructions.prompt_ids", "prompt", "empty"): "documented: '' is the caption task's prompt",
    ("instructions.instruction_rows", "prompts", "empty_item"): "documented: '' is the caption task's prompt",
    ("retrieval.zero_shot_predict", "prompt_classes", "out_of_range"): "class ids are labels: any id >= 0",
    ("retrieval_training.reverse_relation", "caption", "unknown"): "documented: a caption without a relation is "
                                                                   "returned as it is",
    ("training.schedule_values", "steps", "out_of_range"): "a schedule is defined past total_steps (final rate)",
    ("training.WarmupCosineDecay", "total_steps", "huge"): "a long schedule is valid",
    ("mllm.MLLMConfig", "*", "huge"): "a config is a plain record; the model built from it is lazy (see layers)",
    ("audio_lm.sound_features", "snr_db", "none"): "None: no noise (the default)",
    ("audio_lm.sound_features", "snr_db", "negative"): "a negative SNR is valid (noise louder than the sound)",
    ("audio_lm.sound_features", "snr_db", "zero"): "0 dB is valid",
    ("audio_lm.generate", "snr_db", "none"): "None: no noise (the default)",
    ("audio_lm.generate", "snr_db", "wrong_type"): "5 (dB) is a valid SNR",
    ("audio_lm.caption_is_true_of_sound", "caption", "empty"): "documented: False when the caption does not parse",
    ("audio_lm.caption_is_true_of_sound", "caption", "unknown"): "documented: False when the caption does not parse",
    ("audio_lm.ctc_greedy_decode", "frame_ids", "out_of_range"): "no label count is given: any id >= 0 is a label",
    ("audio_lm.ctc_greedy_decode", "blank", "huge"): "no label count is given: any id >= 0 can be the blank",
    ("*", "*", "label_none"): "a name used only in messages", ("*", "*", "label_wrong_type"): "a name used only in messages",
    ("*", "*", "shape"): "reviewed: one fewer feature on the last axis is a valid input for every function that "
                         "returned (where two sizes must agree the function raised)",
    ("encoders.conv2d_param_count", "*", "huge"): "the count of a huge layer is a (huge) int",
    ("*", "*", "flag_none"): "a flag: None reads as False, as everywhere in Python",
    ("preprocessing.*", "image", "rank_up"): "a batch (N, H, W, 3) of images is accepted",
    ("preprocessing.flip_caption", "caption", "empty"): "the flip of an empty caption is empty",
    ("preprocessing.flip_caption", "caption", "unknown"): "any text can be flipped",
    ("preprocessing.hflip_with_caption", "caption", "empty"): "the flip of an empty caption is empty",
    ("preprocessing.hflip_with_caption", "caption", "unknown"): "any text can be flipped",
    ("preprocessing.split_words", "text", "empty"): "no words", ("preprocessing.split_words", "text", "unknown"): "any text",
    ("preprocessing.Tokenizer.decode", "ids", "empty"): "no ids decode to ''",
    ("preprocessing.pad_sequences", "max_length", "none"): "None pads to the longest",
    ("preprocessing.learn_bpe", "num_merges", "huge"): "at most num_merges: stops when no pair is left",
    ("preprocessing.bpe_segment", "word", "unknown"): "any word can be segmented",
    # audio: waveforms may carry leading batch axes, have any length and any sign; a hop longer
    # than the signal gives one frame.
    ("audio.*", "signal", "rank_up"): "a batch of one waveform (..., num_samples) is accepted",
    ("audio.*", "signal", "shape"): "a waveform one sample shorter is still a waveform",
    ("audio.*", "signal", "negative"): "negative samples are ordinary",
    ("audio.*", "hop_length", "huge"): "a hop longer than the signal gives one frame",
    ("shapeworld.caption_parses", "caption", "empty"): "documented: False for a non-grammatical caption",
    ("shapeworld.caption_parses", "caption", "unknown"): "documented: False for a non-grammatical caption",
    ("shapeworld.caption_is_true", "caption", "empty"): "documented: False when the caption does not parse",
    ("shapeworld.caption_is_true", "caption", "unknown"): "documented: False when the caption does not parse",
    ("shapeworld.caption_truth_matrix", "captions", "empty_item"): "documented: a caption that does not parse is "
                                                                   "false everywhere",
    ("shapeworld.with_article", "phrase", "unknown"): "any noun phrase takes an article",
    ("shapeworld.relation_holds", "*", "negative"): "coordinates are compared, any finite value works",
    ("shapeworld.relation_holds", "*", "zero"): "coordinates are compared, any finite value works",
    ("shapeworld.relation_holds", "*", "huge"): "coordinates (and margins) are compared, any finite value works",
    ("shapeworld.relations_between", "margin", "huge"): "a margin wider than the image: no relation holds",
    ("shapeworld.generate", "num_examples", "zero"): "an empty data set (e.g. a split's empty subset)",
    ("audio.num_frames", "num_samples", "zero"): "0 samples give 0 frames",
    ("audio.time_shift", "shift", "zero"): "a shift of 0 is the identity",
    ("audio.time_shift", "shift", "negative"): "a negative shift moves the signal left",
    ("audio.random_time_shift", "max_shift", "zero"): "0 means no shift",
    ("audio.alias_frequency", "frequency_hz", "zero"): "0 Hz (DC) is a frequency",
    ("audio.alias_frequency", "frequency_hz", "negative"): "negative frequencies alias too",
    ("audio.alias_frequency", "frequency_hz", "huge"): "any frequency aliases into [0, fs/2]",
    ("audio.hz_to_mel", "frequencies_hz", "zero"): "0 Hz is 0 mel",
    ("audio.hz_to_mel", "frequencies_hz", "negative"): "the formula is defined below 0 (mirror)",
    ("audio.hz_to_mel", "frequencies_hz", "huge"): "a large frequency has a mel value",
    ("audio.mel_to_hz", "mels", "zero"): "0 mel is 0 Hz",
    ("audio.mel_to_hz", "mels", "negative"): "the formula is defined below 0",
    ("audio.add_noise", "snr_db", "negative"): "a negative SNR (more noise than signal) is valid",
    ("audio.add_noise", "snr_db", "zero"): "0 dB is equal powers",
    ("audio.add_noise", "snr_db", "huge"): "a huge SNR adds almost no noise",
    ("audio.segment_tones", "threshold", "zero"): "threshold 0 is allowed",
    ("audio.segment_tones", "min_gap_s", "zero"): "no minimum gap",
    ("audio.mel_filterbank", "lower_hz", "zero"): "0 Hz lower edge",
    ("audio.log_mel_spectrogram", "lower_hz", "zero"): "0 Hz lower edge",
    ("audio.apply_fir", "taps", "negative"): "negative taps are ordinary filter coefficients",
    ("audio.frequency_response", "taps", "negative"): "negative taps are ordinary filter coefficients",
    ("audio.log_mel", "spectrogram", "zero"): "silence gives log(eps)",
    ("audio_lm.sound_features", "max_shift", "zero"): "0 means no shift",
    ("audio_lm.sound_features", "seed", "zero"): "seed 0", ("audio_lm.sound_features", "seed", "huge"): "any seed",
    ("audio_lm.generate", "seed", "zero"): "seed 0", ("audio_lm.generate", "seed", "huge"): "any seed",
    ("audio_lm.generate", "max_shift", "zero"): "no shift",
    ("audiovisual.generate", "seed", "zero"): "seed 0", ("audiovisual.generate", "seed", "huge"): "any seed",
    ("audiovisual.split_fields", "fields", "empty"): "{}: every size at its default",
    ("audio_lm.ctc_greedy_decode", "blank", "zero"): "blank id 0 is the default",
    ("attention.causal_mask", "offset", "zero"): "offset 0 is the default",
    ("attention.update_cache", "position", "zero"): "position 0 is the first slot",
    ("attention.MultiHeadAttention", "seed", "zero"): "seed 0", ("attention.MultiHeadAttention", "seed", "huge"): "any seed",
    ("attention.MultiHeadAttention", "dropout", "zero"): "no dropout",
    ("attention.TransformerBlock", "seed", "zero"): "seed 0", ("attention.TransformerBlock", "seed", "huge"): "any seed",
    ("attention.TransformerBlock", "dropout", "zero"): "no dropout",
    ("encoders.TransformerTextEncoder", "dropout", "zero"): "no dropout",
    ("mllm.GatedCrossAttention", "dropout", "zero"): "no dropout",
    ("losses.sparse_cross_entropy", "label_smoothing", "zero"): "no smoothing",
    ("losses.negative_log_likelihood", "label_smoothing", "zero"): "no smoothing",
    ("losses.masked_sequence_loss", "label_smoothing", "zero"): "no smoothing",
    ("losses.l2_normalize", "axis", "zero"): "axis 0 is an axis",
    ("losses.l2_normalize", "axis", "negative"): "axis -1 counts from the end",
    ("losses.log_softmax", "axis", "zero"): "axis 0 is an axis",
    ("losses.log_softmax", "axis", "negative"): "axis -1 counts from the end",
    ("losses.ClipValue", "min_value", "zero"): "0 is a bound", ("losses.ClipValue", "min_value", "negative"): "a bound",
    ("fusion.late_fusion", "image_weight", "zero"): "weight 0 uses the text only",
    ("shapeworld.relation_holds", "margin", "zero"): "no margin",
    ("shapeworld.relations_between", "margin", "zero"): "no margin",
    ("shapeworld.generate", "seed", "zero"): "seed 0", ("shapeworld.generate", "seed", "huge"): "any seed",
    ("retrieval.single_object_data", "seed", "zero"): "seed 0", ("retrieval.single_object_data", "seed", "huge"): "any seed",
    ("training.color_classification_data", "seed", "zero"): "seed 0",
    ("training.color_classification_data", "seed", "huge"): "any seed",
    ("training.batch_indices", "seed", "zero"): "seed 0", ("training.batch_indices", "seed", "huge"): "any seed",
    ("training.batch_indices", "step", "zero"): "step 0", ("training.batch_indices", "step", "huge"): "any step",
    ("training.WarmupCosineDecay", "warmup_steps", "zero"): "no warm-up",
    ("training.WarmupCosineDecay", "final_learning_rate", "zero"): "decay to 0",
    ("training.schedule_values", "steps", "zero"): "step 0 of a schedule",
    ("instructions.answer_only_targets", "pad_id", "zero"): "pad id 0 is the default",
    ("language_model.unigram_perplexity", "pad_id", "zero"): "pad id 0",
    ("preprocessing.pad_sequences", "pad_id", "zero"): "pad id 0 is the default",
    ("preprocessing.pad_sequences", "pad_id", "negative"): "any pad id (e.g. -1 for 'no token')",
    ("preprocessing.pad_sequences", "pad_id", "huge"): "any pad id",
    ("preprocessing.learn_bpe", "num_merges", "zero"): "0 merges: characters only",
    ("preprocessing.bpe_segment", "merges", "empty"): "no merges: characters only",
    ("relation_head.RelationHead", "pad_id", "zero"): "pad id 0",
    ("retrieval.zero_shot_predict", "prompt_classes", "none"): "None is the default",
    ("metrics.accuracy", "mask", "none"): "None is the default",
    ("shapeworld.make_caption", "relations", "empty"): "no relation phrases: attribute captions only",
    ("shapeworld.make_question", "relations", "empty"): "no relation phrases allowed",
    ("retrieval_training.perturb_caption", "relation_probability", "zero"): "never perturb the relation",
    ("shapeworld.make_caption", "relation_probability", "zero"): "never a relation: existence captions only",
    ("retrieval_training.swap_negative", "swap_probability", "zero"): "never swap",
    ("retrieval_training.perturb_caption", "avoid", "empty"): "nothing to avoid",
    ("retrieval_training.swap_negative", "avoid", "empty"): "nothing to avoid",
    ("preprocessing.Tokenizer", "extra_special", "empty"): "no extra tokens is the default",
    ("preprocessing.Tokenizer.encode_batch", "max_length", "none"): "None pads to the longest",
    ("instructions.make_examples_from_texts", "captions", "none"): "None: no caption task",
    ("instructions.make_examples_from_texts", "qa", "none"): "None: no QA task",
    ("instructions.instruction_texts", "captions", "none"): "None is the default",
    ("instructions.instruction_texts", "qa", "none"): "None is the default",
    ("instructions.instruction_texts", "captions", "empty"): "no captions",
    ("instructions.instruction_texts", "qa", "empty"): "no QA pairs",
    ("qa.qa_arrays", "objects", "none"): "None is the default",
    ("shapeworld.render_image", "rng", "none"): "None: no noise (documented)",
    ("audio.add_noise", "rng", "none"): "None: a fresh generator", ("audio.random_time_shift", "rng", "none"): "default",
    ("detector.ObjectTokens", "nms_radius", "zero"): "no suppression",
    ("language_model.sample_next_token", "seed", "none"): "None is the default",
    ("language_model.sample_next_token", "top_k", "none"): "None: no filter",
    ("language_model.sample_next_token", "seed", "zero"): "seed 0", ("language_model.sample_next_token", "seed", "huge"): "any seed",
    ("audio.mel_filterbank", "upper_hz", "none"): "None: Nyquist",
    ("audio.log_mel_spectrogram", "upper_hz", "none"): "None: Nyquist",
    ("encoders.TransformerTextEncoder", "pooling", "none"): "None: return the sequence",
    ("mllm.ImageTokenProjector", "hidden_dim", "none"): "None: the default",
    ("audio.pad_waveforms", "length", "none"): "None: the longest",
    ("losses.masked_sequence_loss", "mask", "none"): "None: every position",
    ("encoders.masked_mean_pool", "mask", "none"): "None: every position",
    ("fusion.concat_fusion", "text_mask", "none"): "None: every token",
    ("fusion.cross_attention", "context_mask", "none"): "None: every token",
    ("attention.scaled_dot_product_attention", "mask", "none"): "None: every key",
    ("metrics.retrieval_ranks", "targets", "none"): "None: the diagonal",
    ("metrics.recall_at_k", "targets", "none"): "None: the diagonal",
    ("attention.causal_mask", "key_length", "none"): "None: square",
    ("shapeworld.sample_scene", "num_objects", "none"): "None: random count",
    ("language_model.check_token_ids", "vocab_size", "none"): "None: no upper bound",
    ("attention.MultiHeadAttention", "value_dim", "none"): "None: key_dim",
    ("attention.MultiHeadAttention", "output_dim", "none"): "None: input size",
    ("attention.MultiHeadAttention", "seed", "none"): "None: unseeded",
    ("attention.TransformerBlock", "seed", "none"): "None: unseeded",
    ("fusion.CrossAttentionFusion", "output_dim", "none"): "None: the query size",
    ("instructions.require_images", "size", "none"): "None: any size",
    ("language_model.DecoderLM", "mlp_dim", "none"): "None: 4 * dim",
    ("training.schedule_values", "steps", "empty"): "no steps: no values",
    ("metrics.sentence_bleu", "hypothesis", "empty"): "an empty hypothesis scores 0",
    ("metrics.corpus_bleu", "hypotheses", "empty_item"): "an empty hypothesis scores 0",
    ("metrics.corpus_cider", "sigma", "huge"): "a huge sigma turns the length penalty off",
}

NUMERIC_SKIP_KEYS = {"name", "title", "what", "of", "first_name", "second_name"}  # message labels, not data


# --------------------------------------------------------------------------- valid calls (worker side)

def build_cases():
    """[(qualified name, callable, kwargs factory)]: one valid call per public function."""
    import numpy as np
    from mmlm_course import (attention, audio, audio_lm, audiovisual, capstone, datasets, detector, encoders, fusion,
                             grid_encoder, instructions, language_model, losses, metrics, mllm, preprocessing, qa,
                             relation_head, retrieval, retrieval_training, shapeworld, training)

    rng = lambda: np.random.default_rng(0)  # noqa: E731
    f32 = lambda *s: np.random.default_rng(1).normal(size=s).astype("float32")  # noqa: E731
    scene = shapeworld.sample_scene(rng(), num_objects=2)
    data = shapeworld.generate(6, seed=0)
    tok = preprocessing.Tokenizer.for_shapeworld(extra_special=instructions.TASK_TOKENS)
    wave = np.sin(np.arange(800) / 5.0).astype("float32")
    caption = data.captions[0]
    ids = np.array([[1, 5, 6, 2, 0], [1, 7, 8, 9, 2]], dtype="int32")
    C = []

    def case(name, fn, factory):
        C.append((name, fn, factory))

    m = shapeworld
    case("shapeworld.sample_scene", m.sample_scene, lambda: dict(rng=rng(), split="train", num_objects=2))
    case("shapeworld.rotate_scene_180", m.rotate_scene_180, lambda: dict(scene=scene))
    case("shapeworld.render_image", m.render_image, lambda: dict(scene=scene, image_size=32, rng=rng()))
    case("shapeworld.render_sound", m.render_sound, lambda: dict(scene=scene, sample_rate=8000))
    case("shapeworld.with_article", m.with_article, lambda: dict(phrase="red circle"))
    case("shapeworld.relation_holds", m.relation_holds,
         lambda: dict(relation="above", a_x=0.2, a_y=0.2, b_x=0.5, b_y=0.7, margin=0.05))
    case("shapeworld.relations_between", m.relations_between,
         lambda: dict(a=scene.objects[0], b=scene.objects[1], margin=0.05))
    case("shapeworld.make_caption", m.make_caption,
         lambda: dict(scene=scene, rng=rng(), relations=shapeworld.RELATIONS, relation_probability=0.75))
    case("shapeworld.count_objects", m.count_objects, lambda: dict(scene=scene, color="red"))
    case("shapeworld.make_question", m.make_question, lambda: dict(scene=scene, qtype="count", rng=rng()))
    case("shapeworld.parse_caption", m.parse_caption, lambda: dict(caption=caption))
    case("shapeworld.caption_parses", m.caption_parses, lambda: dict(caption=caption))
    case("shapeworld.caption_is_true", m.caption_is_true, lambda: dict(caption=caption, scene=data.scenes[0]))
    case("shapeworld.caption_truth_matrix", m.caption_truth_matrix,
         lambda: dict(captions=data.captions[:3], scenes=data.scenes[:3]))
    case("shapeworld.generate", m.generate, lambda: dict(num_examples=3, split="train", seed=0, image_size=32))
    case("shapeworld.vocabulary", m.vocabulary, lambda: dict())

    m = preprocessing
    img = (data.images[0]).copy()
    case("preprocessing.validate_image", m.validate_image, lambda: dict(image=img))
    case("preprocessing.to_float_image", m.to_float_image, lambda: dict(image=img))
    case("preprocessing.standardize_image", m.standardize_image,
         lambda: dict(image=img, mean=(0.5, 0.5, 0.5), std=(0.2, 0.2, 0.2)))
    case("preprocessing.resize_image", m.resize_image, lambda: dict(image=img, size=16))
    case("preprocessing.flip_caption", m.flip_caption, lambda: dict(caption="a red circle to the left of a square"))
    case("preprocessing.hflip_with_caption", m.hflip_with_caption,
         lambda: dict(image=img, caption="a red circle to the left of a square"))
    case("preprocessing.split_words", m.split_words, lambda: dict(text="a red circle ."))
    case("preprocessing.Tokenizer", m.Tokenizer, lambda: dict(words=["a", "red", "circle"], extra_special=["<x>"],
                                                             unknown="error"))
    case("preprocessing.Tokenizer.encode", tok.encode, lambda: dict(text="a red circle", add_bos=True))
    case("preprocessing.Tokenizer.encode_batch", tok.encode_batch,
         lambda: dict(texts=["a red circle", "a square"], max_length=6))
    case("preprocessing.Tokenizer.decode", tok.decode, lambda: dict(ids=[1, 5, 6, 2]))
    case("preprocessing.Tokenizer.from_texts", m.Tokenizer.from_texts,
         lambda: dict(texts=["a red circle", "a square"], min_count=1))
    case("preprocessing.pad_sequences", m.pad_sequences, lambda: dict(sequences=[[1, 2, 3], [4]], max_length=4, pad_id=0))
    case("preprocessing.learn_bpe", m.learn_bpe, lambda: dict(words=["lower", "lowest", "low"], num_merges=3))
    case("preprocessing.bpe_segment", m.bpe_segment, lambda: dict(word="lowest", merges=[("l", "o"), ("lo", "w")]))

    m = audio
    case("audio.validate_waveform", m.validate_waveform, lambda: dict(signal=wave, max_ndim=1, min_length=1))
    case("audio.alias_frequency", m.alias_frequency, lambda: dict(frequency_hz=900.0, sample_rate=1000))
    case("audio.lowpass_fir", m.lowpass_fir, lambda: dict(cutoff_hz=1000.0, sample_rate=8000, num_taps=21))
    case("audio.apply_fir", m.apply_fir, lambda: dict(signal=wave, taps=np.ones(5, "float32") / 5))
    case("audio.frequency_response", m.frequency_response,
         lambda: dict(taps=np.ones(5, "float32") / 5, sample_rate=8000, num_points=64))
    case("audio.decimate", m.decimate, lambda: dict(signal=wave, factor=2, num_taps=21))
    case("audio.resample", m.resample, lambda: dict(signal=wave, orig_rate=8000, target_rate=4000, num_zeros=4,
                                                     rolloff=0.9))
    case("audio.num_frames", m.num_frames, lambda: dict(num_samples=800, frame_length=100, hop_length=50))
    case("audio.frame_signal", m.frame_signal, lambda: dict(signal=wave, frame_length=100, hop_length=50))
    case("audio.hann_window", m.hann_window, lambda: dict(frame_length=16))
    case("audio.stft", m.stft, lambda: dict(signal=wave, frame_length=100, hop_length=50, fft_length=128))
    case("audio.magnitude_spectrogram", m.magnitude_spectrogram,
         lambda: dict(signal=wave, frame_length=100, hop_length=50, fft_length=128))
    case("audio.power_spectrogram", m.power_spectrogram,
         lambda: dict(signal=wave, frame_length=100, hop_length=50, fft_length=128))
    case("audio.fft_frequencies", m.fft_frequencies, lambda: dict(fft_length=128, sample_rate=8000))
    case("audio.hz_to_mel", m.hz_to_mel, lambda: dict(frequencies_hz=np.array([100.0, 1000.0])))
    case("audio.mel_to_hz", m.mel_to_hz, lambda: dict(mels=np.array([100.0, 1000.0])))
    case("audio.mel_filterbank", m.mel_filterbank,
         lambda: dict(num_mel_bins=8, num_spectrogram_bins=65, sample_rate=8000, lower_hz=20.0, upper_hz=3000.0))
    spec = np.abs(np.random.default_rng(0).normal(size=(15, 65))).astype("float32")
    mel = audio.mel_filterbank(8, 65, 8000)
    case("audio.log_mel", m.log_mel, lambda: dict(spectrogram=spec, mel_matrix=mel, eps=1e-6))
    case("audio.log_mel_spectrogram", m.log_mel_spectrogram,
         lambda: dict(signal=wave, sample_rate=8000, frame_length=100, hop_length=50, fft_length=128, num_mel_bins=8,
                      lower_hz=20.0, upper_hz=3000.0, power=2.0, eps=1e-6))
    case("audio.add_noise", m.add_noise, lambda: dict(signal=wave, snr_db=10.0, rng=rng()))
    case("audio.time_shift", m.time_shift, lambda: dict(signal=wave, shift=10))
    case("audio.random_time_shift", m.random_time_shift, lambda: dict(signal=wave, max_shift=10, rng=rng()))
    case("audio.pad_waveforms", m.pad_waveforms, lambda: dict(waveforms=[wave, wave[:500]], length=900))
    case("audio.log_mel_batch", m.log_mel_batch, lambda: dict(waveforms=[wave, wave[:500]], length=900))
    case("audio.segment_tones", m.segment_tones, lambda: dict(signal=wave, sample_rate=8000, threshold=0.02,
                                                               min_gap_s=0.01))

    m = audio_lm
    sound = shapeworld.render_sound(scene)
    case("audio_lm.note_labels", m.note_labels, lambda: dict(scene=scene))
    case("audio_lm.sound_features", m.sound_features, lambda: dict(waveforms=[sound], snr_db=20.0, max_shift=10, seed=0))
    case("audio_lm.generate", m.generate, lambda: dict(num_examples=2, split="train", seed=0, snr_db=None, max_shift=0))
    case("audio_lm.caption_is_true_of_sound", m.caption_is_true_of_sound, lambda: dict(caption=caption, scene=scene))
    case("audio_lm.stack_frames", m.stack_frames, lambda: dict(frames=f32(2, 8, 4), k=2))
    case("audio_lm.ctc_greedy_decode", m.ctc_greedy_decode, lambda: dict(frame_ids=np.array([0, 3, 3, 0, 4]), blank=0))
    case("audio_lm.notes_text", m.notes_text, lambda: dict(labels=[1, 2, 3]))
    case("audio_lm.AudioFrontEnd", m.AudioFrontEnd, lambda: dict(frames=16, mel_bins=8, dim=8))
    case("audio_lm.note_label_rows", m.note_label_rows, lambda: dict(scenes=[scene, scene]))
    case("audio_lm.note_tokens", m.note_tokens, lambda: dict(logits=f32(2, 10, 12), num_notes=4))

    m = audiovisual
    case("audiovisual.generate", m.generate, lambda: dict(num_examples=2, split="train", seed=0, image_size=64,
                                                            augment=False))
    case("audiovisual.split_fields", m.split_fields, lambda: dict(fields=dict(image_size=32, dim=16, stack=8)))

    m = attention
    case("attention.MultiHeadAttention", m.MultiHeadAttention,
         lambda: dict(num_heads=2, key_dim=4, value_dim=4, output_dim=8, dropout=0.1, seed=1))
    case("attention.TransformerBlock", m.TransformerBlock,
         lambda: dict(embed_dim=8, num_heads=2, mlp_dim=16, dropout=0.1, seed=1))
    case("attention.scaled_dot_product_attention", m.scaled_dot_product_attention,
         lambda: dict(query=f32(2, 3, 4), key=f32(2, 5, 4), value=f32(2, 5, 4), mask=np.ones((2, 3, 5), bool)))
    case("attention.causal_mask", m.causal_mask, lambda: dict(query_length=3, key_length=5, offset=2))
    case("attention.update_cache", m.update_cache, lambda: dict(cache=f32(2, 6, 4), new=f32(2, 1, 4), position=2))

    m = encoders
    case("encoders.conv2d_param_count", m.conv2d_param_count, lambda: dict(kernel_size=3, in_channels=3, filters=8))
    case("encoders.masked_mean_pool", m.masked_mean_pool, lambda: dict(x=f32(2, 5, 4), mask=np.ones((2, 5), bool)))
    case("encoders.patchify", m.patchify, lambda: dict(images=f32(2, 8, 8, 3), patch_size=4))
    case("encoders.PositionEmbedding", m.PositionEmbedding, lambda: dict(max_length=8, embed_dim=4))
    case("encoders.ConvImageEncoder", m.ConvImageEncoder,
         lambda: dict(filters=(4, 8), embed_dim=8, kernel_size=3, output="vector", pooling="avg", channels=3))
    case("encoders.PatchEmbedding", m.PatchEmbedding, lambda: dict(image_size=16, patch_size=4, embed_dim=8, channels=3))
    case("encoders.BagOfEmbeddings", m.BagOfEmbeddings, lambda: dict(vocab_size=20, embed_dim=8))
    case("encoders.RecurrentTextEncoder", m.RecurrentTextEncoder,
         lambda: dict(vocab_size=20, embed_dim=8, units=8, cell="gru"))
    case("encoders.TransformerTextEncoder", m.TransformerTextEncoder,
         lambda: dict(vocab_size=20, max_length=8, embed_dim=8, num_heads=2, mlp_dim=16, num_layers=1, dropout=0.1,
                      pooling="mean"))
    case("encoders.AudioEncoder", m.AudioEncoder,
         lambda: dict(mel_bins=8, filters=(8, 8), strides=(2, 2), kernel_size=3, embed_dim=8, output="vector"))

    m = fusion
    case("fusion.require_same_batch", m.require_same_batch,
         lambda: dict(first=(2, 3), second=(2, 4), first_name="a", second_name="b"))
    case("fusion.require_token_mask", m.require_token_mask,
         lambda: dict(mask=np.ones((2, 5), bool), tokens_shape=(2, 5, 4), name="mask", of="tokens"))
    case("fusion.early_fusion", m.early_fusion, lambda: dict(image=f32(2, 4, 4, 3), text=f32(2, 5)))
    case("fusion.concat_fusion", m.concat_fusion,
         lambda: dict(image_tokens=f32(2, 6, 4), text_tokens=f32(2, 5, 3), text_mask=np.ones((2, 5), bool)))
    case("fusion.product_fusion", m.product_fusion, lambda: dict(image_vector=f32(2, 4), text_vector=f32(2, 4)))
    case("fusion.film", m.film, lambda: dict(features=f32(2, 6, 4), gamma=f32(2, 4), beta=f32(2, 4)))
    case("fusion.late_fusion", m.late_fusion,
         lambda: dict(image_logits=f32(2, 5), text_logits=f32(2, 5), image_weight=0.3))
    case("fusion.naive_similarity_fusion", m.naive_similarity_fusion,
         lambda: dict(queries=f32(2, 3, 4), context=f32(2, 5, 4)))
    case("fusion.cross_attention", m.cross_attention,
         lambda: dict(queries=f32(2, 3, 4), context=f32(2, 5, 4), context_mask=np.ones((2, 5), bool)))
    case("fusion.object_pairs", m.object_pairs, lambda: dict(objects=f32(2, 3, 4)))
    case("fusion.ConcatFusion", m.ConcatFusion, lambda: dict(units=8))
    case("fusion.ProductFusion", m.ProductFusion, lambda: dict(units=8))
    case("fusion.FiLM", m.FiLM, lambda: dict(channels=8, mode="film"))
    case("fusion.CrossAttentionFusion", m.CrossAttentionFusion, lambda: dict(num_heads=2, key_dim=4, output_dim=8))
    case("fusion.RelationFusion", m.RelationFusion, lambda: dict(units=8, key_dim=4))

    m = losses
    case("losses.float_tensor", m.float_tensor, lambda: dict(x=f32(2, 3), name="x"))
    case("losses.check_labels", m.check_labels, lambda: dict(labels=np.array([0, 2]), logits=f32(2, 3)))
    case("losses.check_mask", m.check_mask, lambda: dict(mask=np.ones((2, 5), bool), shape=(2, 5)))
    case("losses.log_softmax", m.log_softmax, lambda: dict(logits=f32(2, 3), axis=-1))
    case("losses.sparse_cross_entropy", m.sparse_cross_entropy,
         lambda: dict(labels=np.array([0, 2]), logits=f32(2, 3), label_smoothing=0.1))
    case("losses.negative_log_likelihood", m.negative_log_likelihood,
         lambda: dict(labels=np.array([0, 2]), logits=f32(2, 3), reduction="mean", label_smoothing=0.1))
    case("losses.masked_mean", m.masked_mean, lambda: dict(values=f32(2, 5), mask=np.ones((2, 5), bool)))
    case("losses.masked_sequence_loss", m.masked_sequence_loss,
         lambda: dict(labels=np.array([[0, 1, 2], [2, 1, 0]]), logits=f32(2, 3, 4), mask=np.ones((2, 3), bool),
                      label_smoothing=0.1))
    case("losses.l2_normalize", m.l2_normalize, lambda: dict(x=f32(2, 4), axis=-1, epsilon=1e-12))
    case("losses.similarity_logits", m.similarity_logits,
         lambda: dict(image_embeddings=f32(3, 4), text_embeddings=f32(3, 4), temperature=0.07))
    case("losses.info_nce_from_logits", m.info_nce_from_logits, lambda: dict(logits=f32(3, 3)))
    case("losses.symmetric_info_nce", m.symmetric_info_nce,
         lambda: dict(image_embeddings=f32(3, 4), text_embeddings=f32(3, 4), temperature=0.07))
    case("losses.ClipValue", m.ClipValue, lambda: dict(min_value=0.1, max_value=1.0))
    case("losses.LearnedTemperature", m.LearnedTemperature,
         lambda: dict(initial_temperature=0.07, min_temperature=0.01, max_temperature=1.0))

    m = metrics
    case("metrics.accuracy", m.accuracy, lambda: dict(labels=np.array([0, 2]), logits=f32(2, 3), mask=None))
    case("metrics.retrieval_ranks", m.retrieval_ranks, lambda: dict(scores=f32(3, 3), targets=np.array([0, 1, 2])))
    case("metrics.recall_at_k", m.recall_at_k, lambda: dict(scores=f32(3, 3), targets=np.array([0, 1, 2]), k=2))
    refs = [["a red circle".split()], ["a blue square".split()]]
    hyps = ["a red circle".split(), "a blue circle".split()]
    case("metrics.corpus_bleu_details", m.corpus_bleu_details,
         lambda: dict(references=refs, hypotheses=hyps, max_order=2, smoothing="none"))
    case("metrics.corpus_bleu", m.corpus_bleu, lambda: dict(references=refs, hypotheses=hyps, max_order=2))
    case("metrics.corpus_cider", m.corpus_cider, lambda: dict(references=refs, hypotheses=hyps, sigma=6.0))
    case("metrics.sentence_bleu", m.sentence_bleu,
         lambda: dict(reference="a red circle".split(), hypothesis="a red square".split(), max_order=2))

    m = language_model
    case("language_model.DecoderLM", m.DecoderLM,
         lambda: dict(vocab_size=20, max_length=8, dim=8, num_layers=1, num_heads=2, mlp_dim=16, dropout=0.1))
    case("language_model.check_token_ids", m.check_token_ids, lambda: dict(token_ids=ids, vocab_size=20))
    case("language_model.shapeworld_texts", m.shapeworld_texts, lambda: dict(data=data, kinds=("caption",)))
    case("language_model.next_token_pairs", m.next_token_pairs, lambda: dict(token_ids=ids))
    case("language_model.next_token_loss", m.next_token_loss,
         lambda: dict(targets=ids[:, 1:], logits=f32(2, 4, 20)))
    case("language_model.unigram_perplexity", m.unigram_perplexity,
         lambda: dict(train_ids=ids, test_ids=ids, vocab_size=20, pad_id=0))
    case("language_model.temperature_probabilities", m.temperature_probabilities,
         lambda: dict(logits=f32(2, 5), temperature=0.7))
    case("language_model.top_k_filter", m.top_k_filter, lambda: dict(logits=f32(2, 5), k=2))
    case("language_model.sample_next_token", m.sample_next_token,
         lambda: dict(logits=f32(2, 5), temperature=0.7, top_k=3, seed=1))

    m = instructions
    case("instructions.require_task_tokens", m.require_task_tokens, lambda: dict(tokenizer=tok))
    case("instructions.require_images", m.require_images, lambda: dict(images=data.images[:2], size=64))
    case("instructions.prompt_ids", m.prompt_ids, lambda: dict(prompt="what color is the circle ?", tokenizer=tok))
    case("instructions.answer_only_targets", m.answer_only_targets,
         lambda: dict(token_ids=ids, prompt_lengths=np.array([2, 3]), pad_id=0))
    case("instructions.instruction_rows", m.instruction_rows,
         lambda: dict(prompts=[data.questions[0]], answers=[data.answers[0]], tokenizer=tok, max_text_length=20))
    case("instructions.make_examples_from_texts", m.make_examples_from_texts,
         lambda: dict(images=data.images[:2], captions=data.captions[:2], qa=list(zip(data.questions[:2],
                                                                                       data.answers[:2])),
                      tokenizer=tok, max_text_length=20))
    case("instructions.make_examples", m.make_examples,
         lambda: dict(data=data, tokenizer=tok, max_text_length=20, tasks=("caption", "qa")))
    case("instructions.instruction_texts", m.instruction_texts,
         lambda: dict(captions=data.captions[:2], qa=list(zip(data.questions[:2], data.answers[:2]))))

    m = mllm
    case("mllm.MLLMConfig", m.MLLMConfig,
         lambda: dict(image_size=32, encoder_filters=(8, 8), vision_dim=8, dim=8, num_layers=1, num_heads=2,
                      max_text_length=8, dropout=0.1, architecture="prefix", vision="grid"))
    case("mllm.project_tokens", m.project_tokens,
         lambda: dict(features=f32(2, 4, 6), w1=f32(6, 8), b1=f32(8), w2=f32(8, 5), b2=f32(5)))
    case("mllm.prepend_image_tokens", m.prepend_image_tokens,
         lambda: dict(image_tokens=f32(2, 3, 4), text_embeddings=f32(2, 5, 4), position_table=f32(10, 4)))
    case("mllm.ImageTokenProjector", m.ImageTokenProjector, lambda: dict(num_tokens=4, input_dim=6, dim=8, hidden_dim=8))
    case("mllm.GatedCrossAttention", m.GatedCrossAttention, lambda: dict(dim=8, num_heads=2, dropout=0.1))
    small = m.MLLMConfig(image_size=32, encoder_filters=(8, 8), vision_dim=8, dim=8, num_layers=1, num_heads=2,
                         max_text_length=8)
    case("mllm.LLaVAModel", m.LLaVAModel, lambda: dict(config=small, vocab_size=20))

    m = grid_encoder
    case("grid_encoder.GridImageEncoder", m.GridImageEncoder,
         lambda: dict(image_size=32, filters=(8, 8), embed_dim=8, stem=2))
    case("grid_encoder.grid_coordinate_features", m.grid_coordinate_features, lambda: dict(grid_size=4))

    m = detector
    case("detector.ObjectImageEncoder", m.ObjectImageEncoder, lambda: dict(num_objects=3, streams="factorised"))
    case("detector.object_grid_targets", m.object_grid_targets, lambda: dict(scenes=data.scenes[:2], grid=8))
    case("detector.ObjectTokens", m.ObjectTokens, lambda: dict(num_objects=3, grid=8, nms_radius=0.11))
    case("detector.CentredPositions", m.CentredPositions, lambda: dict(scale=5.0))

    m = qa
    case("qa.QuestionEncoder", m.QuestionEncoder, lambda: dict(vocab_size=20, max_length=8, width=8, kind="embedding"))
    case("qa.qa_arrays", m.qa_arrays,
         lambda: dict(images=data.images[:2], questions=data.questions[:2], answers=data.answers[:2],
                      question_types=data.question_types[:2], tokenizer=tok, max_length=14))
    case("qa.shapeworld_qa_arrays", m.shapeworld_qa_arrays, lambda: dict(data=data, max_length=14))
    case("qa.accuracy_by_type", m.accuracy_by_type,
         lambda: dict(predicted=np.array([0, 1, 2]), answers=np.array([0, 1, 1]),
                      question_types=data.question_types[:3]))

    m = relation_head
    case("relation_head.RelationHead", m.RelationHead, lambda: dict(vocab_size=20, max_text_length=8, width=8, pad_id=0))

    m = retrieval
    case("retrieval.spatial_moments", m.spatial_moments, lambda: dict(tokens=f32(2, 16, 4), side=4))
    case("retrieval.add_coordinate_channels", m.add_coordinate_channels, lambda: dict(images=f32(2, 8, 8, 3)))
    case("retrieval.multi_positive_info_nce", m.multi_positive_info_nce,
         lambda: dict(logits=f32(3, 3), positives=np.eye(3, dtype=bool)))
    case("retrieval.similarity_scores", m.similarity_scores, lambda: dict(queries=f32(3, 4), candidates=f32(5, 4)))
    case("retrieval.first_hit_ranks", m.first_hit_ranks, lambda: dict(scores=f32(3, 3), hits=np.eye(3, dtype=bool)))
    case("retrieval.recall_at_k_with_hits", m.recall_at_k_with_hits,
         lambda: dict(scores=f32(3, 3), hits=np.eye(3, dtype=bool), k=2))
    case("retrieval.zero_shot_predict", m.zero_shot_predict,
         lambda: dict(image_embeddings=f32(3, 4), prompt_embeddings=f32(5, 4), prompt_classes=np.array([0, 0, 1, 1, 2])))
    case("retrieval.zero_shot_prompts", m.zero_shot_prompts, lambda: dict(attribute="color"))
    case("retrieval.single_object_data", m.single_object_data,
         lambda: dict(num_examples=2, split="test", seed=0, image_size=32))

    m = retrieval_training
    case("retrieval_training.batch_positives", m.batch_positives,
         lambda: dict(captions=data.captions[:3], scenes=data.scenes[:3], batch_size=3))
    case("retrieval_training.perturb_caption", m.perturb_caption,
         lambda: dict(caption=caption, rng=rng(), relation_probability=0.6))
    case("retrieval_training.reverse_relation", m.reverse_relation,
         lambda: dict(caption="a red circle to the left of a blue square"))
    case("retrieval_training.swapped_twins", m.swapped_twins,
         lambda: dict(caption="a red circle is to the left of a blue square"))
    case("retrieval_training.swap_negative", m.swap_negative,
         lambda: dict(caption="a red circle is to the left of a blue square", rng=rng(), swap_probability=0.5))
    case("retrieval_training.caption_training_set", m.caption_training_set, lambda: dict(data=data, rng=rng()))
    case("retrieval_training.mirror_scene", m.mirror_scene, lambda: dict(scene=scene))
    case("retrieval_training.two_object_subset", m.two_object_subset, lambda: dict(data=data))
    case("retrieval_training.relation_negative", m.relation_negative,
         lambda: dict(caption="a red circle is to the left of a blue square", rng=rng()))

    m = training
    case("training.WarmupCosineDecay", m.WarmupCosineDecay,
         lambda: dict(peak_learning_rate=1e-3, total_steps=10, warmup_steps=2, final_learning_rate=1e-5))
    sched = training.WarmupCosineDecay(1e-3, 10, 2)
    case("training.schedule_values", m.schedule_values, lambda: dict(schedule=sched, steps=np.arange(5)))
    case("training.batch_indices", m.batch_indices, lambda: dict(num_rows=10, batch_size=4, seed=0, step=1))
    case("training.color_classification_data", m.color_classification_data,
         lambda: dict(num_examples=4, split="train", seed=0, image_size=16))

    m = capstone
    case("capstone.RunConfig", m.RunConfig, lambda: dict(preset="cpu", train_examples=100, batch_size=8))
    case("capstone.resolve_config", m.resolve_config, lambda: dict(preset="cpu", data="shapeworld", modality="image"))

    m = datasets
    case("datasets.parse_data_spec", m.parse_data_spec, lambda: dict(spec="shapeworld"))

    # Files, tf.data and decoding (issue #16, part 2: the reviewer's fuzzer found raw errors here).
    from PIL import Image

    from mmlm_course import audio_io, generation
    folder = Path(tempfile.mkdtemp(prefix="sweep16-"))
    atexit.register(shutil.rmtree, folder, True)
    sound_file, image_file = str(audio_io.save_wav(folder / "tone.wav", wave)), str(folder / "image.png")
    Image.fromarray(data.images[0]).save(image_file)
    case("audio_io.load_audio", audio_io.load_audio, lambda: dict(path=sound_file, sample_rate=8000, mono=True))
    case("audio_io.save_wav", audio_io.save_wav, lambda: dict(path=str(folder / "out.wav"), signal=wave, sample_rate=8000))
    case("preprocessing.load_image", preprocessing.load_image, lambda: dict(path=image_file, size=16))
    case("preprocessing.make_image_text_dataset", preprocessing.make_image_text_dataset,
         lambda: dict(images=data.images[:2], token_ids=ids, batch_size=2, shuffle=True, seed=0, cache=True))
    case("datasets.read_images", datasets.read_images,
         lambda: dict(records=[datasets.ImageTextRecord(Path(image_file), ["a caption"])], size=16))
    lm = language_model.DecoderLM(len(tok), max_length=12, dim=16, num_layers=1, num_heads=2)
    case("language_model.perplexity", language_model.perplexity,
         lambda: dict(model=lm, token_ids=ids, pad_id=0, batch_size=8))
    case("language_model.generate", lambda **kw: language_model.generate(**kw),
         lambda: dict(model=lm, prompt_ids=ids[:, :2], max_new_tokens=3, temperature=0.5, seed=0, stop_id=2,
                      use_cache=True, compiled=False))
    case("language_model.sample_texts", language_model.sample_texts,
         lambda: dict(model=lm, tokenizer=tok, task_token="<caption>", count=2, max_new_tokens=3, seed=0, batch_size=2))
    case("generation.score", generation.score, lambda: dict(captions=data.captions, answers=data.answers, data=data))
    return C


# --------------------------------------------------------------------------- bad values


def bad_values(key, value):
    """[(label, bad value)] for one argument, chosen by the kind of its valid value."""
    import numpy as np
    if key in NUMERIC_SKIP_KEYS:
        return [("label_none", None), ("label_wrong_type", 5)]
    out = [("none", None)]
    if isinstance(value, bool):
        return [("flag_none", None)]
    if isinstance(value, (int, np.integer)):
        return out + [("wrong_type", "3"), ("float", 2.5), ("negative", -1), ("zero", 0), ("huge", 10**9)]
    if isinstance(value, (float, np.floating)):
        return out + [("wrong_type", "x"), ("negative", -1.0), ("zero", 0.0), ("huge", 1e9), ("nan", float("nan")),
                      ("inf", float("inf"))]
    if isinstance(value, str):
        return out + [("wrong_type", 5), ("empty", ""), ("unknown", "no-such-value")]
    if isinstance(value, np.random.Generator):
        return out + [("wrong_type", "x")]
    if isinstance(value, np.ndarray):
        out += [("wrong_type", "x"), ("empty", value[:0]), ("strings", value.astype(str))]
        out.append(("rank_up", value[None]))
        if value.ndim >= 1:
            out.append(("rank_down", value[0]))
        if value.ndim >= 1 and value.shape[-1] > 1:
            out.append(("shape", value[..., :-1]))
        if value.dtype.kind == "f":  # (negative floats are ordinary features / logits: not swept)
            out += [("nan", np.full_like(value, np.nan)), ("inf", np.full_like(value, np.inf))]
        if value.dtype.kind == "i":
            out += [("out_of_range", value + 10**6), ("negative", value - 10**6)]
        return out
    if isinstance(value, (list, tuple)):
        out += [("wrong_type", 5), ("empty", type(value)())]
        if value and isinstance(value[0], str):
            out += [("item_type", type(value)([5] * len(value))), ("empty_item", type(value)([""] * len(value)))]
        elif value and isinstance(value[0], (int, float, np.integer, np.floating)) and not isinstance(value[0], bool):
            out += [("item_type", type(value)(["a"] * len(value))), ("negative", type(value)([-1] * len(value))),
                    ("nan", type(value)([float("nan")] * len(value)))]
        elif value:
            out += [("item_type", type(value)([5] * len(value)))]
        return out
    if isinstance(value, dict):
        return out + [("wrong_type", 5), ("empty", {})]
    return out + [("wrong_type", 5), ("wrong_type_str", "x")]


def _has_nonfinite(x) -> bool:
    import numpy as np
    try:
        if isinstance(x, (tuple, list)):
            return any(_has_nonfinite(v) for v in x)
        if isinstance(x, dict):
            return any(_has_nonfinite(v) for v in x.values())
        if isinstance(x, (float, int)) and not isinstance(x, bool):
            return not math.isfinite(x)
        a = np.asarray(x)
        return a.dtype.kind == "f" and not np.all(np.isfinite(a))
    except Exception:
        return False


def _is_empty(x) -> bool:
    import numpy as np
    try:
        if isinstance(x, tuple):
            return all(_is_empty(v) for v in x)
        return len(x) == 0 if isinstance(x, (str, list, dict)) else np.asarray(x).size == 0
    except Exception:
        return False


def _layer_types():
    import keras
    return (keras.layers.Layer,)


def classify_exception(exc) -> tuple[str, str]:
    tb = traceback.extract_tb(exc.__traceback__)
    where = tb[-1].filename if tb else ""
    inside = str(PACKAGE) in str(Path(where).resolve()) if where else False
    message = str(exc).strip()
    kind = type(exc).__name__
    if isinstance(exc, (ValueError, TypeError, FileNotFoundError)) and inside and message:   # a missing file: documented
        return "clear", f"{kind}: {message[:160]}"
    short = where.replace(str(ROOT) + "/", "")
    return "raw", f"{kind} at {short}:{tb[-1].lineno if tb else '?'}: {message[:160]}"


class _Alarm(BaseException):
    pass


def _on_alarm(signum, frame):
    raise _Alarm()


def worker(module: str, skip: int) -> None:
    """Run the calls of one module from index ``skip``, printing a tagged JSON line per step."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import warnings
    warnings.filterwarnings("ignore")
    calls = [c for c in enumerate_calls() if c[0].split(".")[0] == module]
    os.chdir(tempfile.mkdtemp(prefix="sweep-cwd-"))          # a file name such as "no-such-value" is written here
    atexit.register(shutil.rmtree, os.getcwd(), True)
    signal.signal(signal.SIGALRM, _on_alarm)
    for index, (name, arg, label, fn, kwargs) in enumerate(calls):
        if index < skip:
            continue
        print(TAG + json.dumps({"start": index}), flush=True)
        t0 = time.time()
        signal.alarm(CALL_LIMIT_S)
        try:
            result = fn(**kwargs())
            outcome, detail = "returned", type(result).__name__
            if label in ("nan", "inf") and _has_nonfinite(result):
                outcome, detail = "fine", "NaN / inf propagated to the result"
            elif label == "empty" and _is_empty(result):
                outcome, detail = "fine", "empty in, empty out"
            elif label == "huge" and isinstance(result, _layer_types()):
                outcome, detail = "fine", "a Keras layer / model is built lazily: a huge size is legal until built"
        except _Alarm:
            outcome, detail = "hang", f"over {CALL_LIMIT_S} s"
        except BaseException as exc:  # noqa: BLE001 - a sweep records everything
            outcome, detail = classify_exception(exc)
        finally:
            signal.alarm(0)
        if label == "valid":
            outcome = "valid_ok" if outcome in ("returned", "fine") else "valid_failed"
        elif outcome == "returned":
            reason = (VALID_BAD.get((name, arg, label)) or VALID_BAD.get((name, "*", label)) or VALID_BAD.get((name.split(".")[0] + ".*", arg, label))
                      or VALID_BAD.get(("*", arg, label)) or VALID_BAD.get(("*", "*", label)))
            outcome, detail = ("fine", reason) if reason else ("silent", detail)
        print(TAG + json.dumps({"index": index, "function": name, "arg": arg, "label": label, "outcome": outcome,
                                "detail": detail, "seconds": round(time.time() - t0, 2)}), flush=True)


def enumerate_calls():
    """[(function, argument, label, callable, kwargs factory)] in a fixed order."""
    calls = []
    for name, fn, factory in build_cases():
        calls.append((name, "-", "valid", fn, factory))
        for key, value in factory().items():
            for label, bad in bad_values(key, value):
                calls.append((name, key, label, fn, (lambda f=factory, k=key, b=bad: {**f(), k: b})))
    return calls


# --------------------------------------------------------------------------- driver


MODULES = ["shapeworld", "preprocessing", "audio", "audio_lm", "audiovisual", "attention", "encoders", "fusion", "losses", "metrics",
           "language_model", "instructions", "mllm", "grid_encoder", "detector", "qa", "relation_head", "retrieval",
           "retrieval_training", "training", "capstone", "datasets", "audio_io", "generation"]


def run_module(module: str) -> list[dict]:
    records, skip = [], 0
    while True:
        proc = subprocess.Popen([sys.executable, __file__, "--worker", module, "--skip", str(skip)],
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=ROOT)
        current, finished = None, False
        while True:
            ready, _, _ = select.select([proc.stdout], [], [], WORKER_SILENCE_S if current is not None else 300)
            if not ready:
                break
            line = proc.stdout.readline()
            if not line:
                finished = True
                break
            if not line.startswith(TAG):
                continue
            msg = json.loads(line[len(TAG):])
            if "start" in msg:
                current = msg["start"]
            else:
                records.append(msg)
                current = None
        if current is None and finished:
            if proc.wait() != 0:
                records.append({"index": skip, "function": module, "arg": "-", "label": "worker", "outcome": "raw",
                                "detail": f"worker exited with status {proc.returncode}"})
            return records
        proc.kill()
        proc.wait()
        if current is None:  # died between calls (or during start-up)
            records.append({"index": skip, "function": module, "arg": "-", "label": "worker", "outcome": "raw",
                            "detail": "worker exited before finishing"})
            return records
        records.append({"index": current, "function": f"{module}.?", "arg": "?", "label": "?", "outcome": "hang",
                        "detail": f"worker killed after {WORKER_SILENCE_S} s (or crashed)"})
        skip = current + 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="sweep_bad_inputs.json")
    parser.add_argument("--only", nargs="*", default=None, help="modules to sweep (default: all)")
    parser.add_argument("--jobs", type=int, default=2, help="modules swept at once (one worker process each)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--skip", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--show", default="raw,silent,hang,valid_failed", help="outcomes to list one by one")
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.skip)
        return
    from concurrent.futures import ThreadPoolExecutor

    def one(module):
        t0 = time.time()
        got = run_module(module)
        print(f"# {module}: {len(got)} calls in {time.time() - t0:.0f} s", file=sys.stderr, flush=True)
        return got

    with ThreadPoolExecutor(args.jobs) as pool:
        records = [r for got in pool.map(one, args.only or MODULES) for r in got]
    outcomes = ("clear", "raw", "silent", "hang", "fine")
    per_fn = defaultdict(Counter)
    for r in records:
        per_fn[r["function"]][r["outcome"]] += 1
    print(f"{'function':48s} " + " ".join(f"{o:>6s}" for o in outcomes))
    for fn in sorted(per_fn):
        print(f"{fn:48s} " + " ".join(f"{per_fn[fn][o]:6d}" for o in outcomes)
              + ("  VALID CALL FAILED" if per_fn[fn]["valid_failed"] else ""))
    bad = [r for r in records if r["label"] != "valid"]
    totals = Counter(r["outcome"] for r in bad)
    print(f"\n{len(per_fn)} functions, {len(bad)} bad-input calls (+ {len(records) - len(bad)} valid calls): "
          + ", ".join(f"{o} {totals[o]}" for o in outcomes))
    show = set(args.show.split(","))
    for r in records:
        if r["outcome"] in show:
            print(f"  {r['outcome']:6s} {r['function']}({r['arg']}={r['label']}): {r['detail']}")
    Path(args.out).write_text(json.dumps({"functions": len(per_fn), "calls": len(bad), "totals": dict(totals),
                                          "skipped": SKIPPED, "records": records}, indent=1))


if __name__ == "__main__":
    main()
