"""Checks for lesson 02: audio features (aliasing, framing, STFT, mel filterbank, log-mel)."""

from __future__ import annotations

import numpy as np

from mmlm_course import audio, shapeworld
from mmlm_course.exercises import Checker, exercise


def _scene_sound() -> np.ndarray:
    """A fixed ShapeWorld sound: tones separated by silence (float32, 16 kHz)."""
    return shapeworld.render_sound(shapeworld.generate(1, "validation", seed=2).scenes[0])


def _noise(num_samples: int, seed: int = 0) -> np.ndarray:
    return (0.3 * np.random.default_rng(seed).standard_normal(num_samples)).astype(np.float32)


def _matches(got: np.ndarray, expected: np.ndarray, rtol: float = 1e-4) -> bool:
    got, expected = np.asarray(got, np.float64), np.asarray(expected, np.float64)
    if got.shape != expected.shape:
        return False
    scale = max(float(np.max(np.abs(expected))), 1e-12) if expected.size else 1.0
    return bool(np.all(np.abs(got - expected) <= rtol * scale))


# --------------------------------------------------------------------------- 02.alias_frequency


@exercise(
    "02.alias_frequency",
    reference=audio.alias_frequency,
    mistakes={
        "takes the frequency modulo the sample rate": lambda f, sr: float(f % sr),
        "mirrors at the sample rate only once": lambda f, sr: float(f if f <= sr / 2 else sr - f),
        "ignores aliasing": lambda f, sr: float(f),
        "takes the frequency modulo the Nyquist frequency": lambda f, sr: float(f % (sr / 2)),
    },
)
def _check_alias_frequency(c: Checker) -> None:
    cases = [(440.0, 16000), (6000.0, 8000), (9000.0, 8000), (3954.0, 4000), (16000.0, 16000),
             (12000.0, 16000), (4000.0, 8000), (23000.0, 16000), (0.0, 8000), (1977.0, 4000)]
    for frequency, rate in cases:
        got = c.call(frequency, rate)
        if isinstance(got, np.ndarray) and got.ndim == 0:
            got = got.item()
        if isinstance(got, bool) or not isinstance(got, (int, float, np.integer, np.floating)):
            c.fail(f"alias of {frequency:g} Hz at {rate} Hz", f"expected a number, got {type(got).__name__}",
                   "return one frequency in Hz (a float)")
        expected = audio.alias_frequency(frequency, rate)
        if not abs(float(got) - expected) <= 1e-6 * max(1.0, expected):
            nyquist = rate / 2
            where = ("this tone is below the Nyquist frequency, so it should not move"
                     if frequency <= nyquist else
                     f"the answer must lie between 0 and the Nyquist frequency {nyquist:g} Hz")
            c.fail(f"a {frequency:g} Hz tone sampled at {rate} Hz", f"you said it appears at {float(got):g} Hz",
                   f"{where}; frequencies f, f + k * sample_rate and -f give the same samples")
        c.passed.append(f"alias of {frequency:g} Hz at {rate} Hz")


# --------------------------------------------------------------------------- 02.frame_signal


def _non_overlapping(signal, frame_length, hop_length):
    return audio.frame_signal(signal, frame_length, frame_length)


def _len_over_hop(signal, frame_length, hop_length):
    count = len(signal) // hop_length
    frames = [signal[i * hop_length:i * hop_length + frame_length] for i in range(count)]
    return np.stack([np.pad(f, (0, frame_length - len(f))) for f in frames])


def _hop_sized(signal, frame_length, hop_length):
    count = 1 + (len(signal) - frame_length) // hop_length
    return np.stack([signal[i * hop_length:(i + 1) * hop_length] for i in range(count)])


@exercise(
    "02.frame_signal",
    reference=lambda signal, frame_length, hop_length: audio.frame_signal(signal, frame_length, hop_length),
    mistakes={
        "frames do not overlap (hop = frame_length)": _non_overlapping,
        "len(signal) // hop frames, the last ones zero-padded": _len_over_hop,
        "forgets the + 1 and drops the last frame": lambda s, fl, hl: audio.frame_signal(s, fl, hl)[:-1],
        "cuts frames of hop_length samples": _hop_sized,
        "returns (frame_length, num_frames)": lambda s, fl, hl: audio.frame_signal(s, fl, hl).T,
    },
)
def _check_frame_signal(c: Checker) -> None:
    cases = [(1000, 400, 160), (1040, 400, 160), (400, 400, 100), (50, 8, 10), (17, 4, 2), (1600, 400, 400)]
    for n, frame_length, hop_length in cases:
        signal = (np.arange(n, dtype=np.float32) + 1.0)  # sample i holds i + 1, so a value names its position
        what = f"frames of a {n}-sample signal (frame_length={frame_length}, hop_length={hop_length})"
        got = c.call(signal.copy(), frame_length, hop_length)
        expected = audio.frame_signal(signal, frame_length, hop_length)
        array = np.asarray(got) if hasattr(got, "shape") else None
        if array is not None and array.ndim == 2 and array.shape[0] > 1 and array.shape[1] == frame_length:
            step = array[1, 0] - array[0, 0]
            if step != hop_length:
                c.fail(what, f"frame 1 starts {step:g} samples after frame 0",
                       "consecutive frames start hop_length samples apart, so they overlap when "
                       "hop_length < frame_length")
        c.expect_array(what, got, expected.shape, np.float32,
                       hint="(num_frames, frame_length): a frame starts every hop_length samples and the "
                            "last frame must fit entirely inside the signal (no padding); keep float32")
        c.expect_equal(what, array, expected, "frame i is signal[i * hop_length : i * hop_length + frame_length]")


# --------------------------------------------------------------------------- 02.stft_magnitude


def _frames(signal, frame_length, hop_length):
    return audio.frame_signal(signal, frame_length, hop_length).astype(np.float64)


def _stft_no_window(signal, frame_length, hop_length, fft_length):
    return np.abs(np.fft.rfft(_frames(signal, frame_length, hop_length), n=fft_length)).astype(np.float32)


def _stft_symmetric(signal, frame_length, hop_length, fft_length):
    frames = _frames(signal, frame_length, hop_length) * np.hanning(frame_length)
    return np.abs(np.fft.rfft(frames, n=fft_length)).astype(np.float32)


def _stft_power(signal, frame_length, hop_length, fft_length):
    return audio.magnitude_spectrogram(signal, frame_length, hop_length, fft_length) ** 2


def _stft_full(signal, frame_length, hop_length, fft_length):
    frames = _frames(signal, frame_length, hop_length) * audio.hann_window(frame_length)
    return np.abs(np.fft.fft(frames, n=fft_length)).astype(np.float32)


def _stft_no_fft_length(signal, frame_length, hop_length, fft_length):
    return audio.magnitude_spectrogram(signal, frame_length, hop_length, frame_length)


def _stft_complex(signal, frame_length, hop_length, fft_length):
    return audio.stft(signal, frame_length, hop_length, fft_length)


@exercise(
    "02.stft_magnitude",
    reference=lambda signal, frame_length, hop_length, fft_length:
        audio.magnitude_spectrogram(signal, frame_length, hop_length, fft_length),
    mistakes={
        "no window": _stft_no_window,
        "symmetric Hann window (np.hanning)": _stft_symmetric,
        "power instead of magnitude": _stft_power,
        "full FFT with the mirrored negative frequencies": _stft_full,
        "ignores fft_length": _stft_no_fft_length,
        "returns the complex STFT": _stft_complex,
    },
)
def _check_stft_magnitude(c: Checker) -> None:
    cases = [(_scene_sound(), 400, 160, 512), (_noise(3000, seed=1), 256, 128, 256), (_noise(700, seed=2), 64, 48, 128)]
    for signal, frame_length, hop_length, fft_length in cases:
        what = f"STFT magnitude (frame_length={frame_length}, hop_length={hop_length}, fft_length={fft_length})"
        got = c.call(signal.copy(), frame_length, hop_length, fft_length)
        expected = audio.magnitude_spectrogram(signal, frame_length, hop_length, fft_length)
        if hasattr(got, "dtype") and np.iscomplexobj(got):
            c.fail(what, f"got complex values ({np.asarray(got).dtype})",
                   "return the magnitude |X|: np.abs(...) of the FFT, as float32")
        c.expect_array(what, got, expected.shape, np.float32,
                       hint=f"(num_frames, fft_length // 2 + 1): one row per frame, and a real FFT "
                            f"(np.fft.rfft with n=fft_length) keeps only the {fft_length // 2 + 1} "
                            f"non-negative frequencies; return float32")
        array = np.asarray(got)
        diagnoses = [
            (_stft_no_window, "multiply every frame by hann_window(frame_length) before the FFT; "
                              "without a window the abrupt frame edges smear energy over all bins"),
            (_stft_symmetric, "np.hanning is the symmetric Hann window; tf.signal uses the periodic one: "
                              "use mmlm_course.audio.hann_window(frame_length)"),
            (_stft_power, "this is the power |X|**2; the exercise asks for the magnitude |X|"),
        ]
        for mistake, hint in diagnoses:
            if _matches(array, mistake(signal, frame_length, hop_length, fft_length), rtol=1e-5):
                c.fail(what, "values differ from the windowed STFT magnitude", hint)
        if not _matches(array, expected):
            c.fail(what, "values differ from the windowed STFT magnitude by more than 1e-4 of its maximum",
                   "frame with hop_length, multiply by hann_window(frame_length), np.fft.rfft(..., n=fft_length), "
                   "then np.abs")
        c.passed.append(f"{what} values")


# --------------------------------------------------------------------------- 02.mel_filterbank


def _triangles(bins: np.ndarray, edges: np.ndarray) -> np.ndarray:
    lower, center, upper = edges[None, :-2], edges[None, 1:-1], edges[None, 2:]
    rising = (bins[:, None] - lower) / (center - lower)
    falling = (upper - bins[:, None]) / (upper - center)
    return np.maximum(0.0, np.minimum(rising, falling)).astype(np.float32)


def _mel_in_hz(num_mel_bins, num_spectrogram_bins, sample_rate, lower_hz, upper_hz):
    bins = np.linspace(0, sample_rate / 2, num_spectrogram_bins)
    return _triangles(bins, np.linspace(lower_hz, upper_hz, num_mel_bins + 2))


def _bins_left_in_hz(num_mel_bins, num_spectrogram_bins, sample_rate, lower_hz, upper_hz):
    bins = np.linspace(0, sample_rate / 2, num_spectrogram_bins)
    edges = np.linspace(audio.hz_to_mel(lower_hz), audio.hz_to_mel(upper_hz), num_mel_bins + 2)
    return _triangles(bins, edges)


def _wrong_bin_spacing(num_mel_bins, num_spectrogram_bins, sample_rate, lower_hz, upper_hz):
    bins = np.arange(num_spectrogram_bins) * sample_rate / num_spectrogram_bins
    edges = np.linspace(audio.hz_to_mel(lower_hz), audio.hz_to_mel(upper_hz), num_mel_bins + 2)
    return _triangles(audio.hz_to_mel(bins), edges)


@exercise(
    "02.mel_filterbank",
    reference=audio.mel_filterbank,
    mistakes={
        "edges equally spaced in Hz instead of mel": _mel_in_hz,
        "compares bin frequencies in Hz with band edges in mel": _bins_left_in_hz,
        "bin k at k * sample_rate / num_spectrogram_bins": _wrong_bin_spacing,
        "returns (num_mel_bins, num_spectrogram_bins)": lambda *args: audio.mel_filterbank(*args).T,
    },
)
def _check_mel_filterbank(c: Checker) -> None:
    cases = [(40, 257, 16000, 20.0, 8000.0), (20, 129, 8000, 125.0, 3800.0), (10, 65, 16000, 300.0, 4000.0)]
    for num_mel_bins, num_spectrogram_bins, sample_rate, lower_hz, upper_hz in cases:
        what = (f"mel_filterbank({num_mel_bins}, {num_spectrogram_bins}, {sample_rate}, "
                f"{lower_hz:g}, {upper_hz:g})")
        got = c.call(num_mel_bins, num_spectrogram_bins, sample_rate, lower_hz, upper_hz)
        expected = audio.mel_filterbank(num_mel_bins, num_spectrogram_bins, sample_rate, lower_hz, upper_hz)
        c.expect_array(what, got, expected.shape, np.float32,
                       hint="shape (num_spectrogram_bins, num_mel_bins), so spectrogram @ filterbank works; "
                            "return float32")
        array = np.asarray(got, np.float64)
        if array.min() < 0 or array.max() > 1 + 1e-5:
            c.fail(what, f"weights range from {array.min():.3g} to {array.max():.3g}",
                   "each filter is a triangle that rises from 0 to 1 and falls back to 0: clip the slopes "
                   "at 0 from below (np.maximum(0, np.minimum(rising, falling)))")
        args = (num_mel_bins, num_spectrogram_bins, sample_rate, lower_hz, upper_hz)
        diagnoses = [
            (_mel_in_hz, "your band edges are equally spaced in Hz; space them equally in mel (hz_to_mel), "
                         "so low frequencies get narrow filters and high ones wide filters"),
            (_bins_left_in_hz, "your band edges are in mel but the bin frequencies are still in Hz: "
                               "convert both to mel before comparing them"),
            (_wrong_bin_spacing, "the bins of an fft_length-point FFT are sample_rate / fft_length Hz apart, "
                                 "and num_spectrogram_bins = fft_length // 2 + 1 (the last bin is the Nyquist "
                                 "frequency)"),
        ]
        for mistake, hint in diagnoses:
            if _matches(array, mistake(*args), rtol=1e-4):
                c.fail(what, "the triangles sit in the wrong places", hint)
        c.expect_close(what, array, expected, atol=1e-4, rtol=0,
                       hint="build each triangle in mel: it rises from edge j to 1 at edge j + 1 and falls to 0 "
                            "at edge j + 2")


# --------------------------------------------------------------------------- 02.log_mel


def _power_and_filterbank():
    power = audio.power_spectrogram(_scene_sound())  # silent frames are exact zeros
    return power, audio.mel_filterbank()


@exercise(
    "02.log_mel",
    reference=audio.log_mel,
    mistakes={
        "forgets eps": lambda spec, mel, eps: np.log(spec @ mel).astype(np.float32),
        "adds eps after the log": lambda spec, mel, eps: (np.log(spec @ mel) + eps).astype(np.float32),
        "log10 instead of the natural log": lambda spec, mel, eps: np.log10(spec @ mel + eps).astype(np.float32),
        "takes the log before the filterbank": lambda spec, mel, eps: (np.log(spec + eps) @ mel).astype(np.float32),
    },
)
def _check_log_mel(c: Checker) -> None:
    power, filterbank = _power_and_filterbank()
    rng = np.random.default_rng(5)
    cases = [(power, filterbank, 1e-6),
             (rng.random((7, 65)).astype(np.float32) ** 3, audio.mel_filterbank(10, 65, 16000, 300.0, 4000.0), 1e-3)]
    for spectrogram, mel_matrix, eps in cases:
        what = f"log-mel of a {spectrogram.shape} spectrogram (eps={eps:g})"
        with np.errstate(divide="ignore"):
            got = c.call(spectrogram.copy(), mel_matrix.copy(), eps)
        expected = audio.log_mel(spectrogram, mel_matrix, eps)
        c.expect_array(what, got, expected.shape, np.float32,
                       hint="(frames, bins) @ (bins, mels) gives (frames, mels); return float32")
        array = np.asarray(got, np.float64)
        if not np.all(np.isfinite(array)):
            c.fail(what, f"{int(np.sum(~np.isfinite(array)))} values are -inf or NaN",
                   "silent frames have zero energy and log(0) = -inf: add eps inside the log")
        if np.allclose(array, expected / np.log(10), atol=1e-3):
            c.fail(what, "values are the natural log divided by ln(10)", "use the natural logarithm np.log")
        c.expect_close(what, array, expected, atol=1e-3, rtol=1e-5,
                       hint="apply the filterbank to the spectrogram first, then take log(mel_energies + eps)")
