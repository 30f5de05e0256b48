"""Lesson 02: sound files. `save_wav` writes a float waveform as a 16-bit PCM WAV file
with Python's `wave` module; `load_audio` reads any common sound file (WAV in every
encoding, FLAC, OGG, MP3) with the `soundfile` library and returns what a lesson needs:
mono, float32 in [-1, 1], resampled with `audio.resample` to 16 kHz. The signal processing
itself (resampling, spectrograms) lives in `audio`.
"""

from __future__ import annotations

import warnings
import wave
from pathlib import Path

import numpy as np

from mmlm_course.audio import COURSE_SAMPLE_RATE, resample, validate_waveform
from mmlm_course.validation import positive_int, require_bool, require_file, require_int, require_path, write_error

PCM16_SCALE = 32768.0  # float -> int16 sample (and back, as tf.audio.decode_wav and soundfile)


def save_wav(path, signal, sample_rate: int = COURSE_SAMPLE_RATE) -> Path:
    """Write a waveform as a 16-bit PCM WAV file and return its path.

    ``signal``: float, shape (num_samples,) for mono or (num_samples, channels), values
    in [-1, 1] (anything outside raises: scale it first).
    """
    path, sample_rate = require_path(path), require_int(sample_rate, "sample_rate", 1, 2**32 - 1)   # a 32-bit field
    array = np.asarray(signal)
    if array.ndim == 2:
        if array.shape[1] > 16:
            raise ValueError(f"signal: expected (num_samples, channels) with at most 16 channels, got shape "
                             f"{array.shape}; channels first? pass signal.T.")
        array = validate_waveform(array.T, "signal", max_ndim=2).T
    else:
        array = validate_waveform(array, "signal")
    peak = float(np.max(np.abs(array))) if array.size else 0.0
    if peak > 1.0:
        raise ValueError(f"signal: expected values in [-1, 1] for 16-bit PCM, got a peak of {peak:.3g}; "
                         f"scale it first (signal / np.abs(signal).max()).")
    channels = 1 if array.ndim == 1 else array.shape[1]
    pcm = np.clip(np.round(array * PCM16_SCALE), -32768, 32767).astype("<i2")
    try:
        with open(path, "wb") as raw, wave.open(raw, "wb") as file:
            file.setnchannels(channels)
            file.setsampwidth(2)
            file.setframerate(sample_rate)
            file.writeframes(pcm.tobytes())
    except OSError as error:
        raise write_error(path, error) from None
    return path


def load_audio(path, sample_rate: int | None = COURSE_SAMPLE_RATE, mono: bool = True) -> np.ndarray:
    """Load a sound file for the course: WAV in any encoding (8/16/24/32-bit, float,
    WAVE_FORMAT_EXTENSIBLE), FLAC, OGG/Vorbis, MP3 and the other formats of libsndfile,
    read with the well-kept `soundfile` library.

    Returns float32 of shape (num_samples,) when ``mono`` (channels averaged), else
    (num_samples, channels); values in [-1, 1]. The file is resampled to ``sample_rate``
    (default: the course rate, 16 kHz) with `audio.resample`; ``None`` keeps the file's rate.
    Raises FileNotFoundError for a missing file, and ValueError, naming the file, for a
    folder, a file that is no audio, a WAV file cut short (libsndfile would silently
    return the part that is there) or NaN samples. Float samples past full scale are divided
    by their peak, with a warning.
    """
    import soundfile

    path, mono = require_file(path, "sound"), require_bool(mono, "mono")
    if sample_rate is not None:
        sample_rate = positive_int(sample_rate, "sample_rate")
    try:
        samples, rate = soundfile.read(str(path), dtype="float32", always_2d=True)   # (num_samples, channels)
    except (soundfile.LibsndfileError, RuntimeError, TypeError) as error:
        raise ValueError(f"{path} is not a readable sound file ({error}); expected WAV, FLAC, OGG or MP3: "
                         "convert it to WAV (for example `ffmpeg -i FILE out.wav`) or copy it again.") from None
    _check_wav_complete(path)
    if not np.isfinite(samples).all():
        raise ValueError(f"{path} holds NaN or infinite samples: it is no usable sound; write it again.")
    peak = float(np.abs(samples).max(initial=0.0))
    if peak > 1.0:                             # a float file may go past full scale; the course needs [-1, 1]
        warnings.warn(f"{path}: float samples reach {peak:.3g}, past full scale; divided by {peak:.3g} "
                      "to fit [-1, 1].", stacklevel=2)
        samples = samples / peak
    if mono:
        samples = samples.mean(axis=1)
    if sample_rate is None:
        return samples
    if samples.shape[0] == 0 or rate == sample_rate:
        return samples
    if samples.ndim == 1:
        return resample(samples, rate, sample_rate)
    return np.stack([resample(samples[:, c], rate, sample_rate) for c in range(samples.shape[1])], axis=1)


def _check_wav_complete(path: Path) -> None:
    """A RIFF/WAVE file whose ``data`` chunk announces more bytes than the file holds was cut
    short (a failed download): refuse it instead of returning the part that is there."""
    size = path.stat().st_size
    with open(path, "rb") as file:
        if file.read(12)[8:12] != b"WAVE":
            return
        while True:
            header = file.read(8)
            if len(header) < 8:
                return
            chunk, length = header[:4], int.from_bytes(header[4:], "little")
            if chunk == b"data":
                present = size - file.tell()
                if length > present and length != 0xFFFFFFFF:       # 0xFFFFFFFF: a streamed file of unknown length
                    raise ValueError(f"{path} is truncated: its header announces {length} bytes of audio but the "
                                     f"file holds only {present}.")
                return
            file.seek(length + (length & 1), 1)                    # chunks are padded to an even length
