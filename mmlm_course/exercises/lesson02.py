"""Checks for lesson 02: audio features (aliasing, framing, STFT, mel filterbank, log-mel).

Every expected value is computed here in float64 NumPy from the lesson's formulas, not with
the package's `audio` functions (a learner's notebook can change those); the registered
mistakes use the package freely.
"""

from __future__ import annotations

import numpy as np

from mmlm_course import audio, shapeworld
from mmlm_course.exercises import Checker, draw_cases, exercise


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


def _expect_float32(c: Checker, what: str, got, shape: tuple, hint: str) -> np.ndarray:
    """The shape first (its hint is the most precise), then the float32 the text asks for."""
    array = c.expect_array(what, got, shape, hint=hint)
    if np.iscomplexobj(array):
        c.fail(what, f"got complex values ({array.dtype})", "return real magnitudes: np.abs(...), as float32")
    if array.dtype != np.float32:
        c.fail(what, f"expected dtype float32, got {array.dtype}",
               "the exercise asks for float32: convert the result with .astype(np.float32)")
    return array


# --------------------------------------------------------------------------- 02.alias_frequency


def _alias64(frequency: float, rate: float) -> float:
    return abs(frequency - rate * round(frequency / rate))


def _mirror_once_abs(f, sr):
    return float(f if f <= sr / 2 else abs(sr - f))


def _subtract_rate_once(f, sr):
    g = f - sr if f > sr else f
    return float(g if g <= sr / 2 else sr - g)


def _folds_at_integer_nyquist(f, sr):
    r = f % sr
    return float(sr - r if r > sr // 2 else r)


_ALIAS_CASES = ((440.0, 16000), (6000.0, 8000), (9000.0, 8000), (3954.0, 4000), (16000.0, 16000),
                (12000.0, 16000), (4000.0, 8000), (23000.0, 16000), (0.0, 8000), (1977.0, 4000),
                (35000.0, 16000), (41000.0, 16000), (100300.0, 8000), (52920.5, 22050),   # beyond twice the rate
                (16537.25, 11025),                                     # an odd rate: Nyquist 5512.5, not 5512
                (9000, 8000), (20000, 8000), (440, 16000))                                 # ints in, a float out


def _drawn_alias_cases(count: int = 12) -> list[tuple[float, int]]:
    from hypothesis import strategies as st
    rates = st.sampled_from([8000, 16000, 22050, 44100])
    return draw_cases(st.tuples(st.floats(0.0, 250_000.0, allow_nan=False, allow_infinity=False), rates), count)


@exercise(
    "02.alias_frequency",
    reference=audio.alias_frequency,
    mistakes={
        "takes the frequency modulo the sample rate": lambda f, sr: float(f % sr),
        "mirrors at the sample rate only once": lambda f, sr: float(f if f <= sr / 2 else sr - f),
        "ignores aliasing": lambda f, sr: float(f),
        "takes the frequency modulo the Nyquist frequency": lambda f, sr: float(f % (sr / 2)),
        "abs(sample_rate - f) above the Nyquist frequency": _mirror_once_abs,
        "subtracts the sample rate once, then mirrors": _subtract_rate_once,
        "folds at sample_rate // 2": _folds_at_integer_nyquist,
        "returns an int for int inputs": lambda f, sr: abs(f - sr * round(f / sr)),
        "rounds to a whole number of Hz": lambda f, sr: int(round(audio.alias_frequency(f, sr))),
    },
)
def _check_alias_frequency(c: Checker) -> None:
    for frequency, rate in list(_ALIAS_CASES) + _drawn_alias_cases():
        what = f"a {frequency!r} Hz tone sampled at {rate} Hz"
        got = c.call(frequency, rate)
        if isinstance(got, np.ndarray) and got.ndim == 0:
            got = got[()]
        if isinstance(got, (bool, np.bool_)) or not isinstance(got, (int, float, np.integer, np.floating)):
            c.fail(what, f"expected a float, got {type(got).__name__}", "return one frequency in Hz, as a float")
        if not isinstance(got, (float, np.floating)):
            c.fail(what, f"expected a float, got {type(got).__name__} {got!r}",
                   "the exercise asks for a float, also when the inputs are ints: convert with float(...)")
        expected = _alias64(float(frequency), float(rate))
        if not abs(float(got) - expected) <= 1e-6 * rate:
            nyquist = rate / 2
            if frequency <= nyquist:
                where = "this tone is below the Nyquist frequency, so it should not move"
            elif not 0 <= float(got) <= nyquist:
                where = f"the answer must lie between 0 and the Nyquist frequency {nyquist:g} Hz"
            elif frequency > 2 * rate:
                where = ("this tone is more than twice the sample rate: one subtraction or one mirror is not "
                         "enough")
            else:
                where = "this tone lies above the Nyquist frequency, so it folds back"
            c.fail(what, f"you said it appears at {float(got)!r} Hz",
                   f"{where}; frequencies f, f + k * sample_rate (any integer k) and -f give the same samples")
        c.passed.append(f"alias of {frequency!r} Hz at {rate} Hz")


# --------------------------------------------------------------------------- 02.frame_signal


def _frames64(signal, frame_length: int, hop_length: int) -> np.ndarray:
    signal = np.asarray(signal, np.float64)
    count = 1 + (len(signal) - frame_length) // hop_length
    return np.stack([signal[i * hop_length:i * hop_length + frame_length] for i in range(count)])


def _non_overlapping(signal, frame_length, hop_length):
    return audio.frame_signal(signal, frame_length, frame_length)


def _len_over_hop(signal, frame_length, hop_length):
    count = len(signal) // hop_length
    frames = [signal[i * hop_length:i * hop_length + frame_length] for i in range(count)]
    return np.stack([np.pad(f, (0, frame_length - len(f))) for f in frames])


def _hop_sized(signal, frame_length, hop_length):
    count = 1 + (len(signal) - frame_length) // hop_length
    return np.stack([signal[i * hop_length:(i + 1) * hop_length] for i in range(count)])


def _pads_a_short_signal(signal, frame_length, hop_length):
    return audio.frame_signal(np.pad(signal, (0, max(0, frame_length - len(signal)))), frame_length, hop_length)


def _frames_cut(candidate, signal, frame_length: int, hop_length: int):
    """How many frames the learner's function cuts from ``signal``, or "refused" if it raises:
    refusing a signal shorter than one frame is right too (audio.frame_signal does)."""
    try:
        result = candidate(signal.copy(), frame_length, hop_length)
    except Exception:
        return "refused"
    try:
        return len(result)
    except TypeError:
        return f"a {type(result).__name__} with no length"


def _drawn_frame_cases(count: int = 8) -> list[tuple[int, int, int]]:
    from hypothesis import strategies as st
    sizes = st.tuples(st.integers(1, 24), st.integers(1, 24), st.integers(0, 60))
    return [(frame + extra, frame, hop) for frame, hop, extra in draw_cases(sizes, count)]


@exercise(
    "02.frame_signal",
    reference=lambda signal, frame_length, hop_length: audio.frame_signal(signal, frame_length, hop_length),
    mistakes={
        "frames do not overlap (hop = frame_length)": _non_overlapping,
        "len(signal) // hop frames, the last ones zero-padded": _len_over_hop,
        "forgets the + 1 and drops the last frame": lambda s, fl, hl: audio.frame_signal(s, fl, hl)[:-1],
        "cuts frames of hop_length samples": _hop_sized,
        "returns (frame_length, num_frames)": lambda s, fl, hl: audio.frame_signal(s, fl, hl).T,
        "returns float64": lambda s, fl, hl: np.array([list(f) for f in audio.frame_signal(s, fl, hl)], float),
        "returns a list of frames": lambda s, fl, hl: list(audio.frame_signal(s, fl, hl)),
        "pads a signal shorter than one frame into a frame": _pads_a_short_signal,
        "multiplies the frames by the Hann window":
            lambda s, fl, hl: audio.frame_signal(s, fl, hl) * audio.hann_window(fl),
    },
)
def _check_frame_signal(c: Checker) -> None:
    cases = [(1000, 400, 160), (1040, 400, 160), (400, 400, 100), (50, 8, 10), (17, 4, 2), (1600, 400, 400),
             (401, 400, 1)]
    for n, frame_length, hop_length in cases + _drawn_frame_cases():
        signal = (np.arange(n, dtype=np.float32) + 1.0)  # sample i holds i + 1, so a value names its position
        what = f"frames of a {n}-sample signal (frame_length={frame_length}, hop_length={hop_length})"
        got = c.call(signal, frame_length, hop_length)
        expected = _frames64(signal, frame_length, hop_length)
        array = np.asarray(got) if hasattr(got, "shape") else None
        if (array is not None and array.ndim == 2 and array.shape[0] > 1 and array.shape[1] == frame_length
                and array.dtype.kind in "iuf" and np.isfinite(array[:2]).all()
                and np.all(np.diff(array[:2], axis=1) == 1)):   # two runs of the signal: their starts name them
            step = array[1, 0] - array[0, 0]
            if step != hop_length:
                c.fail(what, f"frame 1 starts {step:g} samples after frame 0",
                       "consecutive frames start hop_length samples apart, so they overlap when "
                       "hop_length < frame_length")
        _expect_float32(c, what, got, expected.shape,
                        hint="(num_frames, frame_length): a frame starts every hop_length samples and the last "
                             "frame must fit entirely inside the signal (no padding)")
        if not np.array_equal(array.astype(np.float64), expected):
            if frame_length > 2 and any(_matches(array, expected * window) for window in
                                        (_periodic_hann64(frame_length), np.hanning(frame_length))):
                c.fail(what, "your frames are multiplied by a window",
                       "frame_signal only cuts the signal into frames; the Hann window comes in the STFT (exercise 3)")
            frame, sample = (int(i) for i in np.argwhere(array.astype(np.float64) != expected)[0])
            c.fail(what, f"frame {frame}, sample {sample} differs (each sample here holds its position + 1)",
                   "frame i is signal[i * hop_length : i * hop_length + frame_length]")
    signal = np.arange(100, dtype=np.float32) + 1.0
    what = "frames of a 100-sample signal (frame_length=400, hop_length=160), shorter than one frame"
    count = c.scenario(what, lambda candidate: _frames_cut(candidate, signal, 400, 160))
    if count not in (0, "refused"):
        c.fail(what, f"got {count}" if isinstance(count, str) else f"got {count} frame{'s' * (count != 1)}",
               "a frame must fit entirely inside the signal (no padding), and this signal holds none: return no "
               "frames, or refuse the signal with a ValueError as audio.frame_signal does")
    c.passed.append(what)


# --------------------------------------------------------------------------- 02.stft_magnitude


def _periodic_hann64(frame_length: int) -> np.ndarray:
    """tf.signal.hann_window for an even frame_length (the only lengths checked here)."""
    return 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(frame_length) / frame_length)


def _stft64(signal, frame_length, hop_length, fft_length) -> np.ndarray:
    frames = _frames64(signal, frame_length, hop_length) * _periodic_hann64(frame_length)
    return np.abs(np.fft.rfft(frames, n=fft_length, axis=-1))


def _stft_no_window(signal, frame_length, hop_length, fft_length):
    return np.abs(np.fft.rfft(_frames64(signal, frame_length, hop_length), n=fft_length)).astype(np.float32)


def _stft_symmetric(signal, frame_length, hop_length, fft_length):
    frames = _frames64(signal, frame_length, hop_length) * np.hanning(frame_length)
    return np.abs(np.fft.rfft(frames, n=fft_length)).astype(np.float32)


def _stft_power(signal, frame_length, hop_length, fft_length):
    return (_stft64(signal, frame_length, hop_length, fft_length) ** 2).astype(np.float32)


def _stft_full(signal, frame_length, hop_length, fft_length):
    frames = _frames64(signal, frame_length, hop_length) * audio.hann_window(frame_length)
    return np.abs(np.fft.fft(frames, n=fft_length)).astype(np.float32)


def _stft_no_nyquist_bin(signal, frame_length, hop_length, fft_length):
    return _stft_full(signal, frame_length, hop_length, fft_length)[:, :fft_length // 2]


def _stft_no_fft_length(signal, frame_length, hop_length, fft_length):
    return audio.magnitude_spectrogram(signal, frame_length, hop_length, frame_length)


def _stft_complex(signal, frame_length, hop_length, fft_length):
    return audio.stft(signal, frame_length, hop_length, fft_length)


def _stft_float64(signal, frame_length, hop_length, fft_length):
    frames = _frames64(signal, frame_length, hop_length) * audio.hann_window(frame_length)
    return np.abs(np.fft.rfft(frames, n=fft_length))


@exercise(
    "02.stft_magnitude",
    reference=lambda signal, frame_length, hop_length, fft_length:
        audio.magnitude_spectrogram(signal, frame_length, hop_length, fft_length),
    mistakes={
        "no window": _stft_no_window,
        "symmetric Hann window (np.hanning)": _stft_symmetric,
        "power instead of magnitude": _stft_power,
        "full FFT with the mirrored negative frequencies": _stft_full,
        "keeps fft_length // 2 bins, without the Nyquist bin": _stft_no_nyquist_bin,
        "ignores fft_length": _stft_no_fft_length,
        "returns the complex STFT": _stft_complex,
        "returns float64": _stft_float64,
    },
)
def _check_stft_magnitude(c: Checker) -> None:
    cases = [(_scene_sound(), 400, 160, 512), (_noise(3000, seed=1), 256, 128, 256), (_noise(700, seed=2), 64, 48, 128),
             (_noise(64, seed=3), 64, 16, 64)]                                  # one frame, fft_length == frame_length
    for signal, frame_length, hop_length, fft_length in cases:
        what = f"STFT magnitude (frame_length={frame_length}, hop_length={hop_length}, fft_length={fft_length})"
        got = c.call(signal, frame_length, hop_length, fft_length)
        expected = _stft64(signal, frame_length, hop_length, fft_length)
        array = _expect_float32(c, what, got, expected.shape,
                                hint=f"(num_frames, fft_length // 2 + 1): one row per frame, and a real FFT "
                                     f"(np.fft.rfft with n=fft_length) keeps only the {fft_length // 2 + 1} "
                                     f"non-negative frequencies")
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
            frame, k = np.unravel_index(int(np.argmax(np.abs(array.astype(np.float64) - expected))), expected.shape)
            c.fail(what, "values differ from the windowed STFT magnitude by more than 1e-4 of its maximum "
                   f"(most at frame {frame}, bin {k})",
                   "frame with hop_length, multiply by hann_window(frame_length), np.fft.rfft(..., n=fft_length), "
                   "then np.abs")
        c.passed.append(f"{what} values")


# --------------------------------------------------------------------------- 02.mel_filterbank


def _hz_to_mel64(hz):
    return 1127.0 * np.log1p(np.asarray(hz, np.float64) / 700.0)


def _triangles(bins: np.ndarray, edges: np.ndarray) -> np.ndarray:
    lower, center, upper = edges[None, :-2], edges[None, 1:-1], edges[None, 2:]
    rising = (bins[:, None] - lower) / (center - lower)
    falling = (upper - bins[:, None]) / (upper - center)
    return np.maximum(0.0, np.minimum(rising, falling))


def _mel64(num_mel_bins, num_spectrogram_bins, sample_rate, lower_hz, upper_hz) -> np.ndarray:
    bins = _hz_to_mel64(np.linspace(0.0, sample_rate / 2, num_spectrogram_bins))
    return _triangles(bins, np.linspace(_hz_to_mel64(lower_hz), _hz_to_mel64(upper_hz), num_mel_bins + 2))


def _mel_in_hz(num_mel_bins, num_spectrogram_bins, sample_rate, lower_hz, upper_hz):
    bins = np.linspace(0, sample_rate / 2, num_spectrogram_bins)
    return _triangles(bins, np.linspace(lower_hz, upper_hz, num_mel_bins + 2)).astype(np.float32)


def _bins_left_in_hz(num_mel_bins, num_spectrogram_bins, sample_rate, lower_hz, upper_hz):
    bins = np.linspace(0, sample_rate / 2, num_spectrogram_bins)
    edges = np.linspace(_hz_to_mel64(lower_hz), _hz_to_mel64(upper_hz), num_mel_bins + 2)
    return _triangles(bins, edges).astype(np.float32)


def _wrong_bin_spacing(num_mel_bins, num_spectrogram_bins, sample_rate, lower_hz, upper_hz):
    bins = np.arange(num_spectrogram_bins) * sample_rate / num_spectrogram_bins
    edges = np.linspace(_hz_to_mel64(lower_hz), _hz_to_mel64(upper_hz), num_mel_bins + 2)
    return _triangles(_hz_to_mel64(bins), edges).astype(np.float32)


def _bins_up_to_the_rate(num_mel_bins, num_spectrogram_bins, sample_rate, lower_hz, upper_hz):
    bins = _hz_to_mel64(np.linspace(0, sample_rate, num_spectrogram_bins))
    edges = np.linspace(_hz_to_mel64(lower_hz), _hz_to_mel64(upper_hz), num_mel_bins + 2)
    return _triangles(bins, edges).astype(np.float32)


def _unclipped(num_mel_bins, num_spectrogram_bins, sample_rate, lower_hz, upper_hz):
    bins = audio.hz_to_mel(np.linspace(0, sample_rate / 2, num_spectrogram_bins))[:, None]
    edges = np.linspace(audio.hz_to_mel(lower_hz), audio.hz_to_mel(upper_hz), num_mel_bins + 2)
    rising = (bins - edges[:-2]) / (edges[1:-1] - edges[:-2])
    falling = (edges[2:] - bins) / (edges[2:] - edges[1:-1])
    return np.minimum(rising, falling).astype(np.float32)


@exercise(
    "02.mel_filterbank",
    reference=audio.mel_filterbank,
    mistakes={
        "edges equally spaced in Hz instead of mel": _mel_in_hz,
        "compares bin frequencies in Hz with band edges in mel": _bins_left_in_hz,
        "bin k at k * sample_rate / num_spectrogram_bins": _wrong_bin_spacing,
        "bins spread up to the sample rate instead of its half": _bins_up_to_the_rate,
        "no clipping at zero": _unclipped,
        "returns (num_mel_bins, num_spectrogram_bins)": lambda *args: audio.mel_filterbank(*args).T,
        "returns float64": lambda *args: audio.mel_filterbank(*args).astype(np.float64),
    },
)
def _check_mel_filterbank(c: Checker) -> None:
    cases = [(40, 257, 16000, 20.0, 8000.0), (20, 129, 8000, 125.0, 3800.0), (10, 65, 16000, 300.0, 4000.0),
             (8, 33, 8000, 0.0, 4000.0),        # the whole band: 0 Hz to the Nyquist frequency
             (1, 17, 16000, 500.0, 2000.0),     # one filter
             (24, 17, 16000, 0.0, 8000.0)]      # more filters than bins: some catch no bin at all
    for num_mel_bins, num_spectrogram_bins, sample_rate, lower_hz, upper_hz in cases:
        args = (num_mel_bins, num_spectrogram_bins, sample_rate, lower_hz, upper_hz)
        what = f"mel_filterbank({num_mel_bins}, {num_spectrogram_bins}, {sample_rate}, {lower_hz:g}, {upper_hz:g})"
        got = c.call(*args)
        expected = _mel64(*args)
        array = _expect_float32(c, what, got, expected.shape,
                                hint="shape (num_spectrogram_bins, num_mel_bins), so spectrogram @ filterbank works")
        array = array.astype(np.float64)
        if not np.all(np.isfinite(array)):
            c.fail(what, "some weights are inf or NaN", "every weight is a finite number between 0 and 1")
        if array.min() < 0 or array.max() > 1 + 1e-5:
            c.fail(what, f"weights range from {array.min():.3g} to {array.max():.3g}",
                   "each filter is a triangle that rises from 0 to 1 and falls back to 0: clip the slopes "
                   "at 0 from below (np.maximum(0, np.minimum(rising, falling)))")
        diagnoses = [
            (_mel_in_hz, "your band edges are equally spaced in Hz; space them equally in mel (hz_to_mel), "
                         "so low frequencies get narrow filters and high ones wide filters"),
            (_bins_left_in_hz, "your band edges are in mel but the bin frequencies are still in Hz: "
                               "convert both to mel before comparing them"),
            (_wrong_bin_spacing, "the bins of an fft_length-point FFT are sample_rate / fft_length Hz apart, "
                                 "and num_spectrogram_bins = fft_length // 2 + 1 (the last bin is the Nyquist "
                                 "frequency)"),
            (_bins_up_to_the_rate, "the spectrogram bins go from 0 Hz to the Nyquist frequency sample_rate / 2"),
        ]
        for mistake, hint in diagnoses:
            if not _matches(expected, mistake(*args), rtol=1e-4) and _matches(array, mistake(*args), rtol=1e-4):
                c.fail(what, "the triangles sit in the wrong places", hint)
        c.expect_close(what, array, expected, atol=1e-4, rtol=0,
                       hint="build each triangle in mel: it rises from edge j to 1 at edge j + 1 and falls to 0 "
                            "at edge j + 2")


# --------------------------------------------------------------------------- 02.log_mel


def _log_mel_cases() -> list[tuple[str, np.ndarray, np.ndarray, float]]:
    rng = np.random.default_rng(5)
    power = (_stft64(_scene_sound(), 400, 160, 512) ** 2).astype(np.float32)   # silent frames are exact zeros
    small = _mel64(10, 65, 16000, 300.0, 4000.0).astype(np.float32)
    lesson = _mel64(40, 257, 16000, 20.0, 8000.0).astype(np.float32)
    return [("the lesson's sound, with silent frames", power, lesson, 1e-6),
            ("random energies", rng.random((7, 65)).astype(np.float32) ** 3, small, 1e-3),
            ("energies of the size of eps", (1e-4 * rng.random((5, 65))).astype(np.float32), small, 1e-3),
            ("one frame, eps = 1", (10 * rng.random((1, 65))).astype(np.float32), small, 1.0)]


@exercise(
    "02.log_mel",
    reference=audio.log_mel,
    mistakes={
        "forgets eps": lambda spec, mel, eps: np.log(spec @ mel).astype(np.float32),
        "adds eps after the log": lambda spec, mel, eps: (np.log(spec @ mel) + eps).astype(np.float32),
        "log10 instead of the natural log": lambda spec, mel, eps: np.log10(spec @ mel + eps).astype(np.float32),
        "takes the log before the filterbank": lambda spec, mel, eps: (np.log(spec + eps) @ mel).astype(np.float32),
        "clips at eps instead of adding it":
            lambda spec, mel, eps: np.log(np.maximum(spec @ mel, eps)).astype(np.float32),
        "squares the power spectrogram again": lambda spec, mel, eps: np.log(spec ** 2 @ mel + eps).astype(np.float32),
        "log1p, ignoring eps": lambda spec, mel, eps: np.log1p(spec @ mel).astype(np.float32),
        "returns float64": lambda spec, mel, eps: np.log(spec.astype(np.float64) @ mel + eps),
    },
)
def _check_log_mel(c: Checker) -> None:
    for name, spectrogram, mel_matrix, eps in _log_mel_cases():
        what = f"log-mel of {name}, shape {spectrogram.shape} (eps={eps:g})"
        got = c.call(spectrogram, mel_matrix, eps)
        expected = np.log(spectrogram.astype(np.float64) @ mel_matrix.astype(np.float64) + eps)
        array = _expect_float32(c, what, got, expected.shape,
                                hint="(frames, bins) @ (bins, mels) gives (frames, mels)").astype(np.float64)
        if not np.all(np.isfinite(array)):
            c.fail(what, f"{int(np.sum(~np.isfinite(array)))} values are -inf or NaN",
                   "silent frames have zero energy and log(0) = -inf: add eps inside the log")
        if np.allclose(array, expected / np.log(10), atol=1e-3):
            c.fail(what, "values are the natural log divided by ln(10)", "use the natural logarithm np.log")
        c.expect_close(what, array, expected, atol=1e-3, rtol=1e-5,
                       hint="apply the filterbank to the spectrogram first, then take log(mel_energies + eps)")
