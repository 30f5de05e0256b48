"""Lesson 02: turning sound into features a model can use.

A waveform is a 1-D float array of samples in [-1, 1] taken ``sample_rate`` times a
second. This module goes from there to the log-mel spectrogram that audio encoders read:

- aliasing (`alias_frequency`), an FIR low-pass filter (`lowpass_fir`, `apply_fir`) and
  what happens without it (`decimate` with ``antialias=False`` aliases), resampling to
  the course rate (`resample`); WAV files are read and written in `audio_io`;
- framing (`frame_signal`), windows (`hann_window`), the short-time Fourier transform
  (`stft`, `magnitude_spectrogram`, `power_spectrogram`);
- the mel scale (`hz_to_mel`, `mel_to_hz`), the mel filterbank (`mel_filterbank`) and
  log-mel spectrograms (`log_mel`, `log_mel_spectrogram`);
- augmentation (`add_noise`, `time_shift`, `random_time_shift`), batching
  (`pad_waveforms`, `log_mel_batch`), tone segmentation (`segment_tones`) and plots.

Conventions follow `tf.signal` so results can be compared with it: a periodic Hann
window, frames without end padding unless asked, ``fft_length // 2 + 1`` frequency bins,
the HTK mel scale ``1127 ln(1 + f / 700)`` and filterbank matrices of shape
(num_spectrogram_bins, num_mel_bins). Everything here is NumPy; no TensorFlow is needed.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from mmlm_course.shapeworld import SOUND_SAMPLE_RATE
from mmlm_course.validation import (positive_int, require_array_budget, require_bool, require_choice, require_float,
                                    require_int)

COURSE_SAMPLE_RATE = SOUND_SAMPLE_RATE  # 16 kHz, the rate every lesson works at
FRAME_LENGTH = 400  # 25 ms at 16 kHz
HOP_LENGTH = 160  # 10 ms at 16 kHz
FFT_LENGTH = 512
NUM_MEL_BINS = 40
LOWER_HZ = 20.0
LOG_EPS = 1e-6
MEL_BREAK_HZ = 700.0
MEL_HIGH_Q = 1127.0


# --------------------------------------------------------------------------- validation


def validate_waveform(signal, name: str = "signal", max_ndim: int = 1, min_length: int = 1) -> np.ndarray:
    """Check that ``signal`` is a real, finite, floating-point waveform and return it
    as a float32 array.

    Shape: (num_samples,), or with ``max_ndim`` > 1 any leading batch axes
    (..., num_samples). ``min_length``: the fewest samples accepted.
    Raises TypeError for a non-float dtype and ValueError for a wrong rank, too few
    samples or NaN / inf values; each message says what was expected and received.
    """
    max_ndim, min_length = require_int(max_ndim, "max_ndim", 1, 32), require_int(min_length, "min_length", 0)
    array = np.asarray(signal)
    if array.dtype == object:
        raise TypeError(f"{name}: expected a float array, got a ragged or object array "
                        f"(waveforms of different lengths? pad them with pad_waveforms).")
    if np.issubdtype(array.dtype, np.integer):
        hint = " (16-bit PCM? divide by 32768, or read files with audio_io.load_audio)" if array.dtype == np.int16 else ""
        raise TypeError(f"{name}: expected a float waveform with values in [-1, 1], got dtype {array.dtype}{hint}.")
    if np.iscomplexobj(array):
        raise TypeError(f"{name}: expected a real waveform, got complex dtype {array.dtype} "
                        f"(an STFT? take np.abs(...) for a magnitude).")
    if not np.issubdtype(array.dtype, np.floating):
        raise TypeError(f"{name}: expected a float waveform, got dtype {array.dtype}.")
    if array.ndim < 1 or array.ndim > max_ndim:
        expected = "(num_samples,)" if max_ndim == 1 else f"(..., num_samples) with at most {max_ndim} axes"
        hint = " (stereo (samples, 2)? average the channels: x.mean(axis=1))" if array.ndim == 2 and max_ndim == 1 else ""
        raise ValueError(f"{name}: expected shape {expected}, got shape {array.shape}{hint}.")
    if array.shape[-1] < min_length:
        raise ValueError(f"{name}: expected at least {min_length} samples, got {array.shape[-1]} "
                         f"(shape {array.shape}).")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name}: contains NaN or inf values; a waveform must be finite.")
    return array.astype(np.float32, copy=False)


def _as_rng(rng) -> np.random.Generator:
    if rng is None or isinstance(rng, (int, np.integer)):
        return np.random.default_rng(rng)
    if isinstance(rng, np.random.Generator):
        return rng
    raise TypeError(f"rng must be a numpy Generator, an int seed or None, got {type(rng).__name__}.")


# --------------------------------------------------------------------------- filtering and resampling


def alias_frequency(frequency_hz, sample_rate):
    """Where a tone of ``frequency_hz`` appears after sampling at ``sample_rate``.

    Sampled, frequencies f and f + k * sample_rate (any integer k) and -f give the same
    samples, so every tone lands somewhere in [0, sample_rate / 2]: the distance from f
    to the nearest multiple of the sample rate. Tones below the Nyquist frequency
    ``sample_rate / 2`` stay where they are; the others *alias*. Number or array in,
    float64 out.
    """
    f = np.asarray(frequency_hz, dtype=np.float64)
    if not np.all(np.isfinite(f)) or np.any(f < 0):
        raise ValueError(f"frequency_hz: expected finite, non-negative frequencies, got {frequency_hz!r}.")
    sample_rate = require_float(sample_rate, "sample_rate", low=0.0, low_open=True)
    folded = np.abs(f - sample_rate * np.round(f / sample_rate))
    return float(folded) if folded.ndim == 0 else folded


def _windowed_sinc(offsets: np.ndarray, cutoff: float, half_width: float) -> np.ndarray:
    """An ideal low-pass impulse response ``2 fc sinc(2 fc t)`` (``cutoff`` = fc in cycles
    per sample) times a Hamming window that is zero beyond ``|t| = half_width``."""
    u = offsets / half_width
    window = np.where(np.abs(u) <= 1.0, 0.54 + 0.46 * np.cos(np.pi * u), 0.0)
    return 2.0 * cutoff * np.sinc(2.0 * cutoff * offsets) * window


def lowpass_fir(cutoff_hz: float, sample_rate: float, num_taps: int = 101) -> np.ndarray:
    """A linear-phase FIR low-pass filter by the window method (Hamming-windowed sinc).

    Returns float32 taps of shape (num_taps,), symmetric, summing to 1 (gain 1 at 0 Hz).
    ``cutoff_hz`` must lie in (0, sample_rate / 2); ``num_taps`` must be odd so the
    filter has a centre tap (a delay of exactly (num_taps - 1) / 2 samples).
    More taps give a sharper transition between pass band and stop band.
    """
    sample_rate = require_float(sample_rate, "sample_rate", low=0.0, low_open=True)
    nyquist = sample_rate / 2
    if not 0 < require_float(cutoff_hz, "cutoff_hz") < nyquist:
        raise ValueError(f"cutoff_hz must lie strictly between 0 and the Nyquist frequency "
                         f"sample_rate / 2 = {nyquist:g} Hz, got {cutoff_hz!r}.")
    num_taps = positive_int(num_taps, "num_taps")
    if num_taps % 2 == 0:
        raise ValueError(f"num_taps must be odd (a centre tap keeps the delay a whole number of "
                         f"samples), got {num_taps}; use {num_taps + 1}.")
    require_array_budget((num_taps,), 48, "num_taps")
    half = (num_taps - 1) / 2
    offsets = np.arange(num_taps) - half
    taps = _windowed_sinc(offsets, cutoff_hz / sample_rate, half + 1)
    return (taps / taps.sum()).astype(np.float32)


def apply_fir(signal, taps) -> np.ndarray:
    """Filter ``signal`` (shape (..., num_samples)) with FIR ``taps`` (shape (num_taps,), odd).

    The output has the input's shape, float32, and is aligned with it (the filter's
    delay of (num_taps - 1) / 2 samples is removed); samples beyond the ends count as 0.
    """
    x = validate_waveform(signal, "signal", max_ndim=8)
    h = np.asarray(taps)
    if h.ndim != 1 or h.size == 0 or h.size % 2 == 0 or not np.issubdtype(h.dtype, np.floating):
        raise ValueError(f"taps: expected a float array of shape (num_taps,) with num_taps odd, "
                         f"got shape {h.shape} and dtype {h.dtype} (make them with lowpass_fir).")
    flat = x.reshape(-1, x.shape[-1]).astype(np.float64)
    out = np.stack([np.convolve(row, h.astype(np.float64), mode="full") for row in flat])
    delay = (h.size - 1) // 2
    out = out[:, delay:delay + x.shape[-1]]
    return out.reshape(x.shape).astype(np.float32)


def frequency_response(taps, sample_rate: float, num_points: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    """Gain of an FIR filter: ``(frequencies_hz, gain_db)``, each float64 of shape
    (num_points // 2 + 1,) from 0 Hz to the Nyquist frequency; gain floored at -120 dB."""
    if np.asarray(taps).dtype.kind in "USO":
        raise TypeError("taps: expected float filter coefficients (make them with lowpass_fir), got strings.")
    h = np.asarray(taps, np.float64)
    if h.ndim != 1 or h.size == 0:
        raise ValueError(f"taps: expected shape (num_taps,), got {h.shape}.")
    num_points = positive_int(num_points, "num_points")
    require_array_budget((num_points,), 32, "num_points")
    if num_points < h.size:
        raise ValueError(f"num_points must be at least the number of taps ({h.size}), got {num_points}.")
    sample_rate = require_float(sample_rate, "sample_rate", low=0.0, low_open=True)
    gain = np.abs(np.fft.rfft(h, n=num_points))
    freqs = np.fft.rfftfreq(num_points, d=1.0 / sample_rate)
    return freqs, 20 * np.log10(np.maximum(gain, 1e-6))


def decimate(signal, factor: int, antialias: bool = True, num_taps: int = 101) -> np.ndarray:
    """Keep every ``factor``-th sample: (num_samples,) -> (ceil(num_samples / factor),) float32.

    With ``antialias`` (the right way) a low-pass filter first removes everything above
    the new Nyquist frequency; without it, those frequencies *alias*: they come back
    folded to lower frequencies that were never in the sound.
    """
    x = validate_waveform(signal, "signal")
    factor, antialias = positive_int(factor, "factor"), require_bool(antialias, "antialias")
    if factor == 1:
        return x.copy()
    if antialias:
        x = apply_fir(x, lowpass_fir(0.45 / factor, 1.0, num_taps))
    return np.ascontiguousarray(x[::factor])


def resample(signal, orig_rate: int, target_rate: int, num_zeros: int = 16, rolloff: float = 0.9) -> np.ndarray:
    """Resample a waveform from ``orig_rate`` to ``target_rate`` (any two int rates).

    (num_samples,) -> (ceil(num_samples * target_rate / orig_rate),) float32.
    Band-limited interpolation: each output sample is the input convolved with a
    windowed-sinc low-pass filter evaluated at the output instant, i.e. the FIR filter of
    `lowpass_fir` read *between* the input samples. The cut-off is ``rolloff`` times the
    lower of the two Nyquist frequencies, so downsampling does not alias. ``num_zeros``:
    zero crossings of the sinc kept on each side (more = sharper, slower).
    """
    x = validate_waveform(signal, "signal", min_length=0)
    orig_rate, target_rate = positive_int(orig_rate, "orig_rate"), positive_int(target_rate, "target_rate")
    num_zeros = positive_int(num_zeros, "num_zeros")
    rolloff = require_float(rolloff, "rolloff", 0.0, 1.0, low_open=True)
    if orig_rate == target_rate or x.size == 0:
        return x.copy()
    ratio = target_rate / orig_rate
    cutoff = 0.5 * min(1.0, ratio) * rolloff  # cycles per input sample
    half_width = int(math.ceil(num_zeros / min(1.0, ratio)))
    num_out = -(-x.size * target_rate // orig_rate)
    require_array_budget((num_out, 2 * half_width), 8, "the rates and num_zeros (the interpolation work)")
    padded = np.pad(x.astype(np.float64), half_width + 1)
    taps = np.arange(-half_width + 1, half_width + 1)
    out = np.empty(num_out, np.float64)
    chunk = max(1, 2_000_000 // taps.size)
    for start in range(0, num_out, chunk):
        m = np.arange(start, min(start + chunk, num_out))
        t = m * orig_rate / target_rate  # output instants, in input samples
        k = np.floor(t).astype(np.int64)[:, None] + taps[None, :]
        weights = _windowed_sinc(t[:, None] - k, cutoff, half_width)
        out[m] = np.sum(padded[k + half_width + 1] * weights, axis=1)
    return out.astype(np.float32)


# --------------------------------------------------------------------------- framing and STFT


def num_frames(num_samples: int, frame_length: int, hop_length: int, pad_end: bool = False) -> int:
    """How many frames `frame_signal` makes: ``1 + (num_samples - frame_length) // hop_length``
    (0 if the signal is shorter than a frame), or ``ceil(num_samples / hop_length)`` with
    ``pad_end``."""
    num_samples = require_int(num_samples, "num_samples", 0)
    frame_length, hop_length = positive_int(frame_length, "frame_length"), positive_int(hop_length, "hop_length")
    if require_bool(pad_end, "pad_end"):
        return -(-num_samples // hop_length)
    return 0 if num_samples < frame_length else 1 + (num_samples - frame_length) // hop_length


def frame_signal(signal, frame_length: int = FRAME_LENGTH, hop_length: int = HOP_LENGTH,
                 pad_end: bool = False) -> np.ndarray:
    """Cut a waveform into overlapping frames, like ``tf.signal.frame``.

    (..., num_samples) -> (..., num_frames, frame_length) float32, with frame ``i`` =
    ``signal[..., i * hop_length : i * hop_length + frame_length]`` and ``num_frames``
    from `num_frames`. Without ``pad_end`` the samples after the last whole frame are
    dropped and the signal must hold at least one frame; with it the end is padded with
    zeros so every sample lands in a frame.
    """
    frame_length = positive_int(frame_length, "frame_length")
    hop_length = positive_int(hop_length, "hop_length")
    x = validate_waveform(signal, "signal", max_ndim=8, min_length=0)
    n = x.shape[-1]
    if not pad_end and n < frame_length:
        raise ValueError(f"signal: has {n} samples, fewer than one frame of frame_length={frame_length}; "
                         f"use a shorter frame, pad the signal, or pass pad_end=True.")
    count = num_frames(n, frame_length, hop_length, pad_end)
    needed = (count - 1) * hop_length + frame_length if count else 0
    if needed > n:
        x = np.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, needed - n)])
    index = np.arange(count)[:, None] * hop_length + np.arange(frame_length)[None, :]
    return x[..., index]


def hann_window(frame_length: int, periodic: bool = True) -> np.ndarray:
    """The Hann window ``0.5 - 0.5 cos(2 pi n / D)``, n = 0..frame_length-1, float32 of shape
    (frame_length,), exactly as ``tf.signal.hann_window``.

    Periodic (for spectral analysis): D = frame_length. Symmetric (``np.hanning``):
    D = frame_length - 1. Like TensorFlow, an odd-length "periodic" window is the
    symmetric one, and a window of length 1 is [1.0].
    """
    frame_length = positive_int(frame_length, "frame_length")
    require_array_budget((frame_length,), 8, "frame_length")
    if frame_length == 1:
        return np.ones(1, np.float32)
    denominator = frame_length if (require_bool(periodic, "periodic") and frame_length % 2 == 0) else frame_length - 1
    n = np.arange(frame_length)
    return (0.5 - 0.5 * np.cos(2 * np.pi * n / denominator)).astype(np.float32)


def _check_fft_length(fft_length, frame_length: int) -> int:
    fft_length = positive_int(fft_length, "fft_length")
    if fft_length < frame_length:
        raise ValueError(f"fft_length must be at least frame_length={frame_length} (the frame is "
                         f"zero-padded up to it), got {fft_length}; use {1 << (frame_length - 1).bit_length()}.")
    return fft_length


def stft(signal, frame_length: int = FRAME_LENGTH, hop_length: int = HOP_LENGTH,
         fft_length: int = FFT_LENGTH, pad_end: bool = False) -> np.ndarray:
    """Short-time Fourier transform, like ``tf.signal.stft`` with its defaults.

    (..., num_samples) -> complex64 (..., num_frames, fft_length // 2 + 1): each frame is
    multiplied by a periodic Hann window, zero-padded to ``fft_length`` and transformed
    with a real FFT. Bin ``k`` is the frequency ``k * sample_rate / fft_length``.
    """
    frame_length = positive_int(frame_length, "frame_length")
    fft_length = _check_fft_length(fft_length, frame_length)
    frames = frame_signal(signal, frame_length, hop_length, pad_end)
    require_array_budget(frames.shape[:-1] + (fft_length,), 16, "fft_length")
    windowed = frames.astype(np.float64) * hann_window(frame_length).astype(np.float64)
    return np.fft.rfft(windowed, n=fft_length, axis=-1).astype(np.complex64)


def magnitude_spectrogram(signal, frame_length: int = FRAME_LENGTH, hop_length: int = HOP_LENGTH,
                          fft_length: int = FFT_LENGTH) -> np.ndarray:
    """``|stft(signal)|``: float32 (..., num_frames, fft_length // 2 + 1)."""
    return np.abs(stft(signal, frame_length, hop_length, fft_length)).astype(np.float32)


def power_spectrogram(signal, frame_length: int = FRAME_LENGTH, hop_length: int = HOP_LENGTH,
                      fft_length: int = FFT_LENGTH) -> np.ndarray:
    """``|stft(signal)|**2`` (energy per bin): float32 (..., num_frames, fft_length // 2 + 1)."""
    return np.square(magnitude_spectrogram(signal, frame_length, hop_length, fft_length))


def fft_frequencies(fft_length: int = FFT_LENGTH, sample_rate: int = COURSE_SAMPLE_RATE) -> np.ndarray:
    """The centre frequency in Hz of each STFT bin: float64 (fft_length // 2 + 1,)."""
    require_array_budget((positive_int(fft_length, "fft_length"),), 8, "fft_length")
    return np.fft.rfftfreq(fft_length, d=1.0 / positive_int(sample_rate, "sample_rate"))


# --------------------------------------------------------------------------- mel scale


def _frequencies(value, name: str) -> np.ndarray:
    if np.asarray(value).dtype.kind in "USO":
        raise TypeError(f"{name}: expected numbers (Hz or mel), got {value!r:.60}.")
    array = np.asarray(value, dtype=np.float64)
    if not np.all(np.isfinite(array)) or np.any(array < 0):
        raise ValueError(f"{name}: expected finite, non-negative values, got range "
                         f"[{np.min(array):.4g}, {np.max(array):.4g}].")
    return array


def hz_to_mel(frequencies_hz):
    """Hz -> mel on the HTK scale used by ``tf.signal``: ``1127 ln(1 + f / 700)``.

    Roughly linear below 700 Hz and logarithmic above: equal steps in mel sound like
    equal steps in pitch. Accepts a number or an array of non-negative Hz; float64 out.
    """
    return MEL_HIGH_Q * np.log1p(_frequencies(frequencies_hz, "frequencies_hz") / MEL_BREAK_HZ)


def mel_to_hz(mels):
    """The inverse of `hz_to_mel`: ``700 (exp(m / 1127) - 1)``; float64 out."""
    return MEL_BREAK_HZ * np.expm1(_frequencies(mels, "mels") / MEL_HIGH_Q)


def mel_filterbank(num_mel_bins: int = NUM_MEL_BINS, num_spectrogram_bins: int = FFT_LENGTH // 2 + 1,
                   sample_rate: int = COURSE_SAMPLE_RATE, lower_hz: float = LOWER_HZ,
                   upper_hz: float | None = None) -> np.ndarray:
    """Triangular mel filters, as ``tf.signal.linear_to_mel_weight_matrix``.

    Returns float32 of shape (num_spectrogram_bins, num_mel_bins): multiply a spectrogram
    (..., num_spectrogram_bins) by it to get (..., num_mel_bins). The ``num_mel_bins + 2``
    band edges are equally spaced in *mel* between ``lower_hz`` and ``upper_hz`` (default:
    the Nyquist frequency); filter ``j`` rises from edge j to 1 at edge j+1 and falls to 0
    at edge j+2, the slopes measured in mel. The 0 Hz (DC) row is all zeros.
    """
    num_mel_bins = positive_int(num_mel_bins, "num_mel_bins")
    num_spectrogram_bins = positive_int(num_spectrogram_bins, "num_spectrogram_bins")
    if num_spectrogram_bins < 2:
        raise ValueError(f"num_spectrogram_bins must be at least 2 (fft_length // 2 + 1), got {num_spectrogram_bins}.")
    sample_rate = positive_int(sample_rate, "sample_rate")
    require_array_budget((num_spectrogram_bins, num_mel_bins + 2), 40, "num_spectrogram_bins and num_mel_bins")
    nyquist = sample_rate / 2
    upper_hz = nyquist if upper_hz is None else float(upper_hz)
    if not 0.0 <= lower_hz < upper_hz <= nyquist:
        raise ValueError(f"expected 0 <= lower_hz < upper_hz <= sample_rate / 2 = {nyquist:g} Hz, "
                         f"got lower_hz={lower_hz!r}, upper_hz={upper_hz!r}.")
    bins_mel = hz_to_mel(np.linspace(0.0, nyquist, num_spectrogram_bins))[1:, None]  # (bins - 1, 1)
    edges = np.linspace(hz_to_mel(lower_hz), hz_to_mel(upper_hz), num_mel_bins + 2)
    lower, center, upper = edges[None, :-2], edges[None, 1:-1], edges[None, 2:]  # (1, mels) each
    rising = (bins_mel - lower) / (center - lower)
    falling = (upper - bins_mel) / (upper - center)
    weights = np.maximum(0.0, np.minimum(rising, falling))
    return np.pad(weights, [(1, 0), (0, 0)]).astype(np.float32)


def log_mel(spectrogram, mel_matrix, eps: float = LOG_EPS) -> np.ndarray:
    """``log(spectrogram @ mel_matrix + eps)``: (..., frames, bins) and (bins, mels) ->
    float32 (..., frames, mels). ``eps`` > 0 keeps silent frames finite (log 0 = -inf)."""
    spec = np.asarray(spectrogram)
    mel = np.asarray(mel_matrix)
    if mel.dtype.kind in "USO" or np.asarray(spectrogram).dtype.kind in "USO":
        raise TypeError("spectrogram and mel_matrix must hold numbers, got strings or objects.")
    if not np.issubdtype(spec.dtype, np.floating) or spec.ndim < 2:
        raise ValueError(f"spectrogram: expected a real float array (..., frames, bins), got shape "
                         f"{spec.shape} and dtype {spec.dtype} (complex STFT? take np.abs(...) ** 2).")
    if mel.ndim != 2 or mel.shape[0] != spec.shape[-1]:
        raise ValueError(f"mel_matrix: expected shape (bins, mels) with bins = {spec.shape[-1]} to match the "
                         f"spectrogram's last axis, got {mel.shape}"
                         + (" (transposed?)" if mel.ndim == 2 and mel.shape[1] == spec.shape[-1] else "") + ".")
    if np.any(spec < 0) or np.any(mel < 0):
        raise ValueError("spectrogram and mel_matrix: expected non-negative powers and filter weights, got negative "
                         "values (is the spectrogram already a log spectrogram?).")
    eps = require_float(eps, "eps", low=0.0, low_open=True)
    return np.log(spec.astype(np.float64) @ mel.astype(np.float64) + eps).astype(np.float32)


def log_mel_spectrogram(signal, sample_rate: int = COURSE_SAMPLE_RATE, frame_length: int = FRAME_LENGTH,
                        hop_length: int = HOP_LENGTH, fft_length: int = FFT_LENGTH,
                        num_mel_bins: int = NUM_MEL_BINS, lower_hz: float = LOWER_HZ,
                        upper_hz: float | None = None, power: float = 2.0, eps: float = LOG_EPS) -> np.ndarray:
    """Waveform -> log-mel spectrogram, the input of the course's audio encoders.

    (..., num_samples) float -> float32 (..., num_frames, num_mel_bins):
    ``log(|stft|**power @ mel_filterbank + eps)``. ``power`` 2 uses energies, 1 magnitudes.
    """
    require_choice(power, (1, 2), "power (1 magnitude, 2 energy)")
    spec = np.abs(stft(signal, frame_length, hop_length, fft_length)).astype(np.float64) ** power
    mel = mel_filterbank(num_mel_bins, fft_length // 2 + 1, sample_rate, lower_hz, upper_hz)
    return log_mel(spec, mel, eps)


# --------------------------------------------------------------------------- augmentation and batching


def add_noise(signal, snr_db: float, rng=None) -> np.ndarray:
    """Add white Gaussian noise at a signal-to-noise ratio of ``snr_db`` decibels.

    (num_samples,) -> float32 (num_samples,). The noise power is
    ``mean(signal**2) / 10**(snr_db / 10)``; values may leave [-1, 1]. ``rng``: a NumPy
    Generator or an int seed (None: fresh entropy).
    """
    x = validate_waveform(signal, "signal")
    snr_db = require_float(snr_db, "snr_db", -300.0, 300.0)  # beyond: 10**(snr / 10) overflows or vanishes
    power = float(np.mean(np.square(x, dtype=np.float64)))
    if power == 0.0:
        raise ValueError("signal is silent (all zeros): a signal-to-noise ratio is undefined.")
    noise_std = math.sqrt(power / 10 ** (snr_db / 10))
    return (x + noise_std * _as_rng(rng).standard_normal(x.shape)).astype(np.float32)


def time_shift(signal, shift: int) -> np.ndarray:
    """Delay (``shift`` > 0) or advance (< 0) a waveform by ``shift`` samples, filling
    with silence; shape (num_samples,) kept, float32. Unlike ``np.roll`` nothing wraps
    around, so the order of events in the sound is kept."""
    x = validate_waveform(signal, "signal", min_length=0)
    shift = require_int(shift, "shift")
    if abs(shift) > x.size:
        raise ValueError(f"shift must be at most the signal length {x.size} in magnitude, got {shift}.")
    out = np.zeros_like(x)
    if shift >= 0:
        out[shift:] = x[:x.size - shift]
    else:
        out[:shift] = x[-shift:]
    return out


def random_time_shift(signal, max_shift: int, rng=None) -> np.ndarray:
    """`time_shift` by a uniform random integer in [-max_shift, max_shift]."""
    x = validate_waveform(signal, "signal", min_length=0)
    max_shift = require_int(max_shift, "max_shift", low=0, high=x.size)
    return time_shift(x, int(_as_rng(rng).integers(-max_shift, max_shift + 1)))


def pad_waveforms(waveforms: Sequence, length: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Stack waveforms of different lengths into one batch.

    Returns ``(batch, mask)``: float32 (N, length) padded with zeros at the end (longer
    ones are cut), and bool (N, length), True on real samples. ``length`` defaults to
    the longest waveform.
    """
    if isinstance(waveforms, np.ndarray) and waveforms.dtype != object:
        waveforms = list(waveforms) if waveforms.ndim == 2 else [waveforms]
    if len(waveforms) == 0:
        raise ValueError("waveforms: expected at least one waveform, got an empty sequence.")
    arrays = [validate_waveform(w, f"waveforms[{i}]", min_length=0) for i, w in enumerate(waveforms)]
    length = max(a.size for a in arrays) if length is None else positive_int(length, "length")
    require_array_budget((len(arrays), length), 5, "length")
    batch = np.zeros((len(arrays), length), np.float32)
    mask = np.zeros((len(arrays), length), bool)
    for i, a in enumerate(arrays):
        n = min(a.size, length)
        batch[i, :n], mask[i, :n] = a[:n], True
    return batch, mask


def log_mel_batch(waveforms: Sequence, length: int | None = None, **kwargs) -> tuple[np.ndarray, np.ndarray]:
    """Log-mel features for a batch of waveforms of different lengths.

    Returns ``(features, frame_mask)``: float32 (N, num_frames, num_mel_bins) computed on
    the zero-padded batch of `pad_waveforms`, and bool (N, num_frames), True on frames
    that lie entirely inside the real samples. ``kwargs`` go to `log_mel_spectrogram`.
    """
    batch, mask = pad_waveforms(waveforms, length)
    features = log_mel_spectrogram(batch, **kwargs)
    frame_length = kwargs.get("frame_length", FRAME_LENGTH)
    hop_length = kwargs.get("hop_length", HOP_LENGTH)
    real = [num_frames(int(n), frame_length, hop_length) for n in mask.sum(axis=1)]
    frame_mask = np.arange(features.shape[1])[None, :] < np.array(real)[:, None]
    return features, frame_mask


def segment_tones(signal, sample_rate: int = COURSE_SAMPLE_RATE, threshold: float = 0.02,
                  min_gap_s: float = 0.02) -> list[tuple[int, int]]:
    """Find the tones of a clean sound: ``[(start, end), ...]`` sample indices (end
    exclusive) of the stretches where ``|signal|`` exceeds ``threshold``, joining stretches
    separated by less than ``min_gap_s`` seconds (a tone's own zero crossings)."""
    x = validate_waveform(signal, "signal", min_length=0)
    sample_rate = positive_int(sample_rate, "sample_rate")
    threshold = require_float(threshold, "threshold", 0.0, 1.0, low_open=True, high_open=True)
    min_gap_s = require_float(min_gap_s, "min_gap_s", low=0.0)
    loud = np.flatnonzero(np.abs(x) > threshold)
    if loud.size == 0:
        return []
    breaks = np.flatnonzero(np.diff(loud) > min_gap_s * sample_rate)
    starts = np.concatenate([[loud[0]], loud[breaks + 1]])
    ends = np.concatenate([loud[breaks], [loud[-1]]]) + 1
    return [(int(s), int(e)) for s, e in zip(starts, ends)]


# --------------------------------------------------------------------------- plots


def plot_waveform(signal, sample_rate: int = COURSE_SAMPLE_RATE, ax=None, title: str = "Waveform"):
    """Plot amplitude against time in seconds; returns the matplotlib Axes."""
    import matplotlib.pyplot as plt

    x = validate_waveform(signal, "signal")
    sample_rate = positive_int(sample_rate, "sample_rate")
    ax = ax if ax is not None else plt.gca()
    ax.plot(np.arange(x.size) / sample_rate, x, linewidth=0.6)
    ax.set(xlabel="time (s)", ylabel="amplitude", title=title)
    return ax


def plot_spectrogram(spectrogram, sample_rate: int = COURSE_SAMPLE_RATE, hop_length: int = HOP_LENGTH,
                     ax=None, title: str = "Spectrogram", mel: bool = False, colorbar_label: str | None = None):
    """Show a (frames, bins) spectrogram with time on x and frequency on y; returns the Axes.

    With ``mel`` the y axis is the mel bin index, else frequency in Hz (bins span 0 Hz
    to the Nyquist frequency). Plot log values (log-mel, or ``20 log10`` magnitudes).
    """
    import matplotlib.pyplot as plt

    spec = np.asarray(spectrogram)
    if spec.ndim != 2 or not np.issubdtype(spec.dtype, np.floating):
        raise ValueError(f"spectrogram: expected a real float array (frames, bins), got shape {spec.shape} "
                         f"and dtype {spec.dtype}.")
    sample_rate = positive_int(sample_rate, "sample_rate")
    hop_length = positive_int(hop_length, "hop_length")
    ax = ax if ax is not None else plt.gca()
    seconds = spec.shape[0] * hop_length / sample_rate
    top = spec.shape[1] if mel else sample_rate / 2
    image = ax.imshow(spec.T, origin="lower", aspect="auto", extent=(0, seconds, 0, top), cmap="magma")
    ax.set(xlabel="time (s)", ylabel="mel bin" if mel else "frequency (Hz)", title=title)
    if colorbar_label:
        ax.figure.colorbar(image, ax=ax, label=colorbar_label)
    return ax
