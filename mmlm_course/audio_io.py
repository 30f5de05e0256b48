"""Lesson 02: sound files. Reading and writing 16-bit PCM WAV files with Python's `wave`
module, and loading any WAV (mono or stereo, any rate) at the course rate.

`read_wav` returns a file as it is stored; `load_wav` is what a lesson calls: mono, float32
in [-1, 1], resampled with `audio.resample` to 16 kHz. `save_wav` writes a float waveform.
The signal processing itself (resampling, spectrograms) lives in `audio`.
"""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np

from mmlm_course.audio import COURSE_SAMPLE_RATE, resample, validate_waveform
from mmlm_course.validation import positive_int

PCM16_SCALE = 32768.0  # int16 sample -> float, as tf.audio.decode_wav


def save_wav(path, signal, sample_rate: int = COURSE_SAMPLE_RATE) -> Path:
    """Write a waveform as a 16-bit PCM WAV file and return its path.

    ``signal``: float, shape (num_samples,) for mono or (num_samples, channels), values
    in [-1, 1] (anything outside raises: scale it first).
    """
    sample_rate = positive_int(sample_rate, "sample_rate")
    array = np.asarray(signal)
    if array.ndim == 2:
        array = validate_waveform(array.T, "signal", max_ndim=2).T
    else:
        array = validate_waveform(array, "signal")
    peak = float(np.max(np.abs(array))) if array.size else 0.0
    if peak > 1.0:
        raise ValueError(f"signal: expected values in [-1, 1] for 16-bit PCM, got a peak of {peak:.3g}; "
                         f"scale it first (signal / np.abs(signal).max()).")
    channels = 1 if array.ndim == 1 else array.shape[1]
    pcm = np.clip(np.round(array * PCM16_SCALE), -32768, 32767).astype("<i2")
    path = Path(path)
    with wave.open(str(path), "wb") as file:
        file.setnchannels(channels)
        file.setsampwidth(2)
        file.setframerate(sample_rate)
        file.writeframes(pcm.tobytes())
    return path


def read_wav(path) -> tuple[np.ndarray, int]:
    """Read a 16-bit PCM WAV file as it is stored.

    Returns ``(samples, sample_rate)``: float32 of shape (num_samples, channels), values
    in [-1, 1) (int16 / 32768). Raises FileNotFoundError for a missing file and
    ValueError for a file that is not a WAV, is truncated, or is not 16-bit PCM.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No WAV file at {path}.")
    with open(path, "rb") as file:
        head = file.read(12)
    if not (b"RIFF".startswith(head[:4]) and b"WAVE".startswith(head[8:12])):
        raise ValueError(f"{path} is not a WAV file: it does not start with a RIFF/WAVE header "
                         f"(first bytes {head[:12]!r}); expected 16-bit PCM WAV.")
    try:
        with wave.open(str(path), "rb") as file:
            channels, width = file.getnchannels(), file.getsampwidth()
            rate, frames = file.getframerate(), file.getnframes()
            data = file.readframes(frames)
    except wave.Error as error:
        message = str(error)
        if "RIFF" in message or "WAVE" in message:
            raise ValueError(f"{path} is not a WAV file ({message}); expected a RIFF/WAVE file "
                             f"with 16-bit PCM samples.") from None
        raise ValueError(f"{path}: unsupported WAV encoding ({message}); expected 16-bit PCM "
                         f"(convert it, e.g. `sox in.wav -b 16 -e signed out.wav`).") from None
    except EOFError:
        raise ValueError(f"{path} is truncated or empty: the WAV header is incomplete "
                         f"({path.stat().st_size} bytes).") from None
    if width != 2:
        raise ValueError(f"{path}: expected 16-bit PCM samples (2 bytes), got {8 * width}-bit; "
                         f"convert it, e.g. `sox in.wav -b 16 out.wav`.")
    if channels not in (1, 2):
        raise ValueError(f"{path}: expected a mono or stereo file, got {channels} channels.")
    expected_bytes = frames * channels * width
    if len(data) != expected_bytes:
        raise ValueError(f"{path} is truncated: its header announces {frames} frames "
                         f"({expected_bytes} bytes of audio) but the file holds only {len(data)} bytes.")
    samples = np.frombuffer(data, dtype="<i2").reshape(-1, channels)
    return (samples.astype(np.float32) / PCM16_SCALE), rate


def load_wav(path, sample_rate: int | None = COURSE_SAMPLE_RATE, mono: bool = True) -> np.ndarray:
    """Load a 16-bit PCM WAV file (mono or stereo, any rate) for the course.

    Returns float32 of shape (num_samples,) when ``mono`` (channels averaged), else
    (num_samples, channels); values in [-1, 1]. The file is resampled to
    ``sample_rate`` (default: the course rate, 16 kHz); ``None`` keeps the file's rate.
    Errors: see `read_wav`.
    """
    samples, rate = read_wav(path)
    if mono:
        samples = samples.mean(axis=1)
    if sample_rate is None:
        return samples
    sample_rate = positive_int(sample_rate, "sample_rate")
    if samples.shape[0] == 0 or rate == sample_rate:
        return samples
    if samples.ndim == 1:
        return resample(samples, rate, sample_rate)
    return np.stack([resample(samples[:, c], rate, sample_rate) for c in range(samples.shape[1])], axis=1)
