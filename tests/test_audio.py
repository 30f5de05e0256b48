"""Tests for mmlm_course.audio and audio_io: NumPy references, tf.signal agreement, WAV files, errors."""

import wave

import numpy as np
import pytest

from mmlm_course import audio, audio_io, shapeworld
from mmlm_course.env import quiet_import_tensorflow

tf = quiet_import_tensorflow()
RATE = audio.COURSE_SAMPLE_RATE


def sine(frequency, seconds=1.0, rate=RATE, amplitude=0.5):
    t = np.arange(int(seconds * rate)) / rate
    return (amplitude * np.sin(2 * np.pi * frequency * t)).astype(np.float32)


def peak_hz(signal, rate):
    spectrum = np.abs(np.fft.rfft(signal * np.hanning(signal.size)))
    return np.fft.rfftfreq(signal.size, 1 / rate)[np.argmax(spectrum)]


@pytest.fixture(scope="module")
def scene_sound():
    return shapeworld.render_sound(shapeworld.generate(1, "train", seed=0).scenes[0])


# --------------------------------------------------------------------------- validation


def test_validate_waveform_errors():
    assert audio.validate_waveform(np.zeros(5, np.float64)).dtype == np.float32
    with pytest.raises(TypeError, match="int16.*32768"):
        audio.validate_waveform(np.zeros(5, np.int16))
    with pytest.raises(TypeError, match="complex"):
        audio.validate_waveform(np.zeros(5, np.complex64))
    with pytest.raises(ValueError, match=r"expected shape \(num_samples,\).*stereo"):
        audio.validate_waveform(np.zeros((5, 2), np.float32))
    with pytest.raises(ValueError, match="NaN or inf"):
        audio.validate_waveform(np.array([0.0, np.nan], np.float32))
    with pytest.raises(ValueError, match="at least 3 samples, got 2"):
        audio.validate_waveform(np.zeros(2, np.float32), min_length=3)
    with pytest.raises(TypeError, match="ragged"):
        audio.validate_waveform(np.array([np.zeros(2), np.zeros(3)], dtype=object))


# --------------------------------------------------------------------------- aliasing, filters, resampling


def test_alias_frequency():
    assert audio.alias_frequency(440, 16000) == 440
    assert audio.alias_frequency(6000, 8000) == 2000
    assert audio.alias_frequency(9000, 8000) == 1000
    assert audio.alias_frequency(3954, 4000) == pytest.approx(46)
    np.testing.assert_allclose(audio.alias_frequency(np.array([0.0, 4000, 8000]), 8000), [0, 4000, 0])
    with pytest.raises(ValueError, match="non-negative"):
        audio.alias_frequency(-1.0, 8000)
    with pytest.raises(ValueError, match="sample_rate"):
        audio.alias_frequency(100.0, 0)


def test_alias_frequency_matches_sampling():
    """A 6 kHz tone sampled at 8 kHz really shows up at 2 kHz."""
    t = np.arange(8000) / 8000
    assert peak_hz(np.sin(2 * np.pi * 6000 * t), 8000) == pytest.approx(2000, abs=2)


def test_lowpass_fir_response():
    taps = audio.lowpass_fir(2000, 16000, 101)
    assert taps.shape == (101,) and taps.dtype == np.float32
    np.testing.assert_allclose(taps, taps[::-1], atol=1e-7)  # linear phase
    assert taps.sum() == pytest.approx(1.0, abs=1e-5)
    freqs, gain_db = audio.frequency_response(taps, 16000)
    assert np.all(np.abs(gain_db[freqs < 1500]) < 0.1)  # pass band
    assert np.all(gain_db[freqs > 2600] < -50)  # stop band


def test_lowpass_fir_errors():
    with pytest.raises(ValueError, match="Nyquist.*8000"):
        audio.lowpass_fir(8000, 16000)
    with pytest.raises(ValueError, match="odd.*use 103"):
        audio.lowpass_fir(1000, 16000, 102)
    with pytest.raises(ValueError, match="sample_rate must be >"):
        audio.lowpass_fir(1000, -1)


def test_apply_fir_matches_numpy_and_keeps_shape():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 200)).astype(np.float32)
    taps = audio.lowpass_fir(0.2, 1.0, 21)
    out = audio.apply_fir(x, taps)
    assert out.shape == x.shape and out.dtype == np.float32
    np.testing.assert_allclose(out[1], np.convolve(x[1], taps, mode="same"), atol=1e-5)
    with pytest.raises(ValueError, match="num_taps odd"):
        audio.apply_fir(x, np.ones(4, np.float32) / 4)


def test_decimate_without_filter_aliases():
    tone = sine(6000, rate=16000)  # above the 4 kHz Nyquist frequency of 8 kHz
    naive = audio.decimate(tone, 2, antialias=False)
    filtered = audio.decimate(tone, 2)
    assert naive.shape == filtered.shape == (8000,)
    assert peak_hz(naive, 8000) == pytest.approx(2000, abs=2)  # the alias
    assert np.abs(naive).max() > 0.45
    assert np.abs(filtered[200:-200]).max() < 0.01  # removed, not aliased
    low = sine(1000, rate=16000)
    np.testing.assert_allclose(audio.decimate(low, 2)[100:-100], low[::2][100:-100], atol=0.01)


def test_resample_sine_any_rate():
    for orig, target in [(44100, 16000), (8000, 16000), (22050, 16000), (16000, 11025)]:
        out = audio.resample(sine(440, rate=orig), orig, target)
        assert out.dtype == np.float32 and out.shape == (target,)  # one second in, one second out
        np.testing.assert_allclose(out[200:-200], sine(440, rate=target)[200:-200], atol=2e-3)


def test_resample_removes_frequencies_above_new_nyquist():
    out = audio.resample(sine(6000), RATE, 8000)
    assert np.abs(out[200:-200]).max() < 0.01
    kept = audio.resample(sine(3000), RATE, 8000)
    assert np.abs(kept[200:-200]).max() == pytest.approx(0.5, abs=0.01)


def test_resample_identity_and_errors():
    x = sine(440, 0.1)
    out = audio.resample(x, RATE, RATE)
    np.testing.assert_array_equal(out, x)
    assert out is not x
    assert audio.resample(np.zeros(0, np.float32), 8000, RATE).shape == (0,)
    assert audio.resample(np.zeros(3, np.float32), 3, 2).shape == (2,)
    with pytest.raises(ValueError, match="orig_rate must be >= 1"):
        audio.resample(x, 0, RATE)
    with pytest.raises(TypeError, match="target_rate must be an int"):
        audio.resample(x, RATE, 16000.5)


# --------------------------------------------------------------------------- WAV files


def write_raw_wav(path, data: np.ndarray, rate: int, width: int = 2):
    with wave.open(str(path), "wb") as file:
        file.setnchannels(1 if data.ndim == 1 else data.shape[1])
        file.setsampwidth(width)
        file.setframerate(rate)
        file.writeframes(data.tobytes())


def test_wav_round_trip_mono(tmp_path, scene_sound):
    path = audio_io.save_wav(tmp_path / "scene.wav", scene_sound)
    loaded = audio_io.load_audio(path)
    assert loaded.shape == scene_sound.shape and loaded.dtype == np.float32
    np.testing.assert_allclose(loaded, scene_sound, atol=1 / 32768)
    with wave.open(str(path)) as file:
        assert (file.getnchannels(), file.getsampwidth(), file.getframerate()) == (1, 2, RATE)


def test_load_audio_stereo_44k_is_mixed_and_resampled(tmp_path):
    left, right = sine(440, 0.5, 44100), sine(440, 0.5, 44100, amplitude=0.3)
    pcm = np.round(np.stack([left, right], axis=1) * 32767).astype("<i2")
    write_raw_wav(tmp_path / "stereo.wav", pcm, 44100)
    mono = audio_io.load_audio(tmp_path / "stereo.wav")
    assert mono.shape == (8000,) and mono.dtype == np.float32
    np.testing.assert_allclose(mono[200:-200], sine(440, 0.5, RATE, amplitude=0.4)[200:-200], atol=3e-3)
    both = audio_io.load_audio(tmp_path / "stereo.wav", mono=False)
    assert both.shape == (8000, 2)
    native = audio_io.load_audio(tmp_path / "stereo.wav", sample_rate=None, mono=False)
    assert native.shape == (22050, 2)
    np.testing.assert_array_equal(native, pcm.astype(np.float32) / 32768)


def test_load_audio_agrees_with_tf_decode_wav(tmp_path):
    pcm = np.random.default_rng(0).integers(-32768, 32768, size=(300, 2)).astype("<i2")
    write_raw_wav(tmp_path / "x.wav", pcm, 8000)
    ours = audio_io.load_audio(tmp_path / "x.wav", sample_rate=None, mono=False)
    theirs = tf.audio.decode_wav(tf.io.read_file(str(tmp_path / "x.wav")))
    np.testing.assert_array_equal(ours, theirs.audio.numpy())


@pytest.mark.parametrize("fmt,subtype,atol", [
    ("WAV", "PCM_U8", 1 / 64), ("WAV", "PCM_24", 1e-6), ("WAV", "PCM_32", 1e-6), ("WAV", "FLOAT", 1e-7),
    ("FLAC", "PCM_16", 1 / 16384), ("OGG", "VORBIS", 0.05),
])
def test_load_audio_reads_every_common_encoding(tmp_path, scene_sound, fmt, subtype, atol):
    import soundfile

    path = tmp_path / f"scene.{fmt.lower()}"
    soundfile.write(str(path), scene_sound, RATE, format=fmt, subtype=subtype)
    loaded = audio_io.load_audio(path)
    assert loaded.shape == scene_sound.shape and loaded.dtype == np.float32
    assert np.abs(loaded - scene_sound).max() <= atol


def test_load_audio_reads_four_channel_extensible_wav(tmp_path):
    import soundfile

    four = np.stack([sine(440, 0.2, RATE, amplitude=a) for a in (0.1, 0.2, 0.3, 0.4)], axis=1)
    soundfile.write(str(tmp_path / "four.wav"), four, RATE, subtype="PCM_24")   # WAVE_FORMAT_EXTENSIBLE
    assert audio_io.load_audio(tmp_path / "four.wav").shape == (3200,)


def test_truncated_and_non_audio_files_are_refused(tmp_path, scene_sound):
    data = audio_io.save_wav(tmp_path / "full.wav", scene_sound).read_bytes()
    (tmp_path / "cut.wav").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="cut.wav is truncated: its header announces"):
        audio_io.load_audio(tmp_path / "cut.wav")
    (tmp_path / "header.wav").write_bytes(data[:30])
    (tmp_path / "empty.wav").write_bytes(b"")
    (tmp_path / "notes.wav").write_text("these are not audio samples " * 10)
    (tmp_path / "avi.wav").write_bytes(b"RIFF\x10\x00\x00\x00AVI LIST" + bytes(20))
    for name in ("header.wav", "empty.wav", "notes.wav", "avi.wav"):
        with pytest.raises(ValueError, match=f"{name} is not a readable sound file"):
            audio_io.load_audio(tmp_path / name)
    with pytest.raises(ValueError, match="is a folder"):
        audio_io.load_audio(tmp_path)
    with pytest.raises(FileNotFoundError, match="No sound file"):
        audio_io.load_audio(tmp_path / "missing.wav")


def test_save_wav_errors(tmp_path):
    with pytest.raises(ValueError, match=r"\[-1, 1\].*peak of 2"):
        audio_io.save_wav(tmp_path / "loud.wav", np.array([0.0, 2.0], np.float32))
    with pytest.raises(TypeError, match="int16"):
        audio_io.save_wav(tmp_path / "int.wav", np.zeros(4, np.int16))
    with pytest.raises(ValueError, match="sample_rate"):
        audio_io.save_wav(tmp_path / "rate.wav", np.zeros(4, np.float32), sample_rate=0)


# --------------------------------------------------------------------------- framing and STFT vs tf.signal


@pytest.mark.parametrize("length", [1, 2, 7, 400, 401, 512])
@pytest.mark.parametrize("periodic", [True, False])
def test_hann_window_matches_tf(length, periodic):
    np.testing.assert_allclose(audio.hann_window(length, periodic),
                               tf.signal.hann_window(length, periodic=periodic).numpy(), atol=1e-6)


def test_hann_window_symmetric_is_numpy_hanning():
    np.testing.assert_allclose(audio.hann_window(10, periodic=False), np.hanning(10), atol=1e-7)


@pytest.mark.parametrize("n,frame_length,hop_length", [(1000, 400, 160), (1040, 400, 160), (50, 8, 10), (7, 3, 1)])
@pytest.mark.parametrize("pad_end", [False, True])
def test_frame_signal_matches_tf(n, frame_length, hop_length, pad_end):
    x = np.random.default_rng(n).standard_normal(n).astype(np.float32)
    ours = audio.frame_signal(x, frame_length, hop_length, pad_end=pad_end)
    theirs = tf.signal.frame(x, frame_length, hop_length, pad_end=pad_end).numpy()
    assert ours.dtype == np.float32
    np.testing.assert_array_equal(ours, theirs)
    assert ours.shape[0] == audio.num_frames(n, frame_length, hop_length, pad_end)


def test_frame_signal_batch_and_errors():
    x = np.arange(20, dtype=np.float32).reshape(2, 10)
    frames = audio.frame_signal(x, 4, 3)
    assert frames.shape == (2, 3, 4)
    np.testing.assert_array_equal(frames[1, 2], [16, 17, 18, 19])
    with pytest.raises(ValueError, match="fewer than one frame.*pad_end=True"):
        audio.frame_signal(np.zeros(10, np.float32), 16, 4)
    with pytest.raises(ValueError, match="hop_length must be >= 1"):
        audio.frame_signal(np.zeros(10, np.float32), 4, 0)
    assert audio.frame_signal(np.zeros(0, np.float32), 4, 2, pad_end=True).shape == (0, 4)


@pytest.mark.parametrize("frame_length,hop_length,fft_length", [(400, 160, 512), (256, 128, 256), (255, 100, 256)])
def test_stft_matches_tf_signal(scene_sound, frame_length, hop_length, fft_length):
    ours = audio.stft(scene_sound, frame_length, hop_length, fft_length)
    theirs = tf.signal.stft(scene_sound, frame_length, hop_length, fft_length).numpy()
    assert ours.dtype == np.complex64 and ours.shape == theirs.shape
    assert np.abs(ours - theirs).max() <= 1e-5 * np.abs(theirs).max()


def test_stft_batch_and_spectrograms(scene_sound):
    batch = np.stack([scene_sound, scene_sound[::-1]])
    spec = audio.magnitude_spectrogram(batch)
    assert spec.shape == (2, audio.num_frames(scene_sound.size, 400, 160), 257) and spec.dtype == np.float32
    np.testing.assert_allclose(spec[0], np.abs(audio.stft(scene_sound)), rtol=1e-6)
    np.testing.assert_allclose(audio.power_spectrogram(scene_sound), spec[0] ** 2, rtol=1e-6)
    with pytest.raises(ValueError, match="fft_length must be at least frame_length=400.*use 512"):
        audio.stft(scene_sound, 400, 160, 256)


def test_stft_peak_is_the_tone():
    spec = audio.magnitude_spectrogram(sine(1000))
    freqs = audio.fft_frequencies()
    assert freqs.shape == (257,) and freqs[-1] == RATE / 2
    assert freqs[np.argmax(spec[10])] == 1000.0


# --------------------------------------------------------------------------- mel


def test_hz_mel_round_trip_and_known_values():
    assert audio.hz_to_mel(0.0) == 0.0
    assert audio.hz_to_mel(700.0) == pytest.approx(1127 * np.log(2))
    hz = np.array([0.0, 100.0, 1000.0, 8000.0])
    np.testing.assert_allclose(audio.mel_to_hz(audio.hz_to_mel(hz)), hz, atol=1e-9)
    with pytest.raises(ValueError, match="non-negative"):
        audio.hz_to_mel(-5.0)


@pytest.mark.parametrize("args", [(40, 257, 16000, 20.0, 8000.0), (20, 129, 8000, 125.0, 3800.0),
                                  (64, 513, 22050, 0.0, 11025.0)])
def test_mel_filterbank_matches_tf(args):
    ours = audio.mel_filterbank(*args)
    theirs = tf.signal.linear_to_mel_weight_matrix(*args).numpy()
    assert ours.shape == theirs.shape and ours.dtype == np.float32
    np.testing.assert_allclose(ours, theirs, atol=2e-5)


def test_mel_filterbank_shape_of_triangles():
    bank = audio.mel_filterbank()
    assert bank.shape == (257, 40)
    assert np.all(bank >= 0) and np.all(bank <= 1) and np.all(bank[0] == 0)
    assert np.all(bank.max(axis=0) > 0.5)  # no empty filter at this resolution
    centres = np.argmax(bank, axis=0)
    assert np.all(np.diff(centres) > 0)  # filters go up in frequency
    widths = (bank > 0).sum(axis=0)
    assert widths[-1] > 5 * widths[0]  # wide at high frequencies: the mel scale


def test_mel_filterbank_errors():
    with pytest.raises(ValueError, match=r"lower_hz < upper_hz <= sample_rate / 2 = 8000"):
        audio.mel_filterbank(40, 257, 16000, 20.0, 9000.0)
    with pytest.raises(ValueError, match="num_mel_bins must be >= 1"):
        audio.mel_filterbank(0)


def test_log_mel_spectrogram_matches_tf_pipeline(scene_sound):
    ours = audio.log_mel_spectrogram(scene_sound)
    power = tf.abs(tf.signal.stft(scene_sound, 400, 160, 512)) ** 2
    mel = tf.signal.linear_to_mel_weight_matrix(40, 257, 16000, 20.0, 8000.0)
    theirs = tf.math.log(tf.tensordot(power, mel, 1) + 1e-6).numpy()
    assert ours.shape == theirs.shape == (audio.num_frames(scene_sound.size, 400, 160), 40)
    assert ours.dtype == np.float32
    np.testing.assert_allclose(ours, theirs, atol=1e-2)
    assert np.isclose(ours.min(), np.log(1e-6))  # silent frames: log(eps), finite


def test_log_mel_errors():
    bank = audio.mel_filterbank()
    with pytest.raises(ValueError, match=r"mel_matrix: expected shape \(bins, mels\).*transposed"):
        audio.log_mel(np.ones((3, 257), np.float32), bank.T)
    with pytest.raises(ValueError, match="complex STFT"):
        audio.log_mel(np.ones((3, 257), np.complex64), bank)
    with pytest.raises(ValueError, match="negative values"):
        audio.log_mel(-np.ones((3, 257), np.float32), bank)
    with pytest.raises(ValueError, match="eps must be >"):
        audio.log_mel(np.ones((3, 257), np.float32), bank, eps=0.0)
    with pytest.raises(ValueError, match="power"):
        audio.log_mel_spectrogram(sine(440), power=3)


# --------------------------------------------------------------------------- augmentation and batching


def test_add_noise_hits_the_snr():
    x = sine(440)
    noisy = audio.add_noise(x, 10.0, rng=0)
    assert noisy.dtype == np.float32 and noisy.shape == x.shape
    snr = 10 * np.log10(np.mean(x.astype(np.float64) ** 2) / np.mean((noisy - x).astype(np.float64) ** 2))
    assert snr == pytest.approx(10.0, abs=0.2)
    np.testing.assert_array_equal(noisy, audio.add_noise(x, 10.0, rng=0))  # seeded
    with pytest.raises(ValueError, match="silent"):
        audio.add_noise(np.zeros(10, np.float32), 10.0)
    with pytest.raises(ValueError, match="snr_db must be a finite"):
        audio.add_noise(x, float("inf"))
    with pytest.raises(TypeError, match="rng must be"):
        audio.add_noise(x, 10.0, rng="seed")


def test_time_shift_fills_with_silence():
    x = np.arange(1, 6, dtype=np.float32)
    np.testing.assert_array_equal(audio.time_shift(x, 2), [0, 0, 1, 2, 3])
    np.testing.assert_array_equal(audio.time_shift(x, -2), [3, 4, 5, 0, 0])
    np.testing.assert_array_equal(audio.time_shift(x, 0), x)
    np.testing.assert_array_equal(audio.time_shift(x, 5), np.zeros(5))
    with pytest.raises(ValueError, match="at most the signal length 5"):
        audio.time_shift(x, 6)
    with pytest.raises(TypeError, match="shift must be an int"):
        audio.time_shift(x, 1.5)
    shifted = audio.random_time_shift(x, 2, rng=1)
    assert shifted.shape == x.shape
    with pytest.raises(ValueError, match="max_shift"):
        audio.random_time_shift(x, 9)


def test_pad_waveforms():
    batch, mask = audio.pad_waveforms([np.ones(3, np.float32), np.ones(5, np.float32)])
    assert batch.shape == mask.shape == (2, 5) and batch.dtype == np.float32 and mask.dtype == bool
    np.testing.assert_array_equal(mask.sum(axis=1), [3, 5])
    np.testing.assert_array_equal(batch[0], [1, 1, 1, 0, 0])
    cut, cut_mask = audio.pad_waveforms([np.ones(5, np.float32)], length=4)
    assert cut.shape == (1, 4) and cut_mask.all()
    with pytest.raises(ValueError, match="at least one waveform"):
        audio.pad_waveforms([])
    with pytest.raises(ValueError, match=r"waveforms\[1\]: expected shape"):
        audio.pad_waveforms([np.ones(3, np.float32), np.ones((2, 3), np.float32)])


def test_log_mel_batch_masks_padding_frames():
    sounds = shapeworld.generate(3, "validation", seed=1).sounds()
    features, frame_mask = audio.log_mel_batch(sounds)
    longest = max(s.size for s in sounds)
    assert features.shape == (3, audio.num_frames(longest, 400, 160), 40) and features.dtype == np.float32
    assert frame_mask.dtype == bool and frame_mask.shape == features.shape[:2]
    for i, sound in enumerate(sounds):
        count = audio.num_frames(sound.size, 400, 160)
        assert frame_mask[i].sum() == count and frame_mask[i, :count].all()
        np.testing.assert_allclose(features[i, :count], audio.log_mel_spectrogram(sound), atol=1e-4)
    small, small_mask = audio.log_mel_batch(sounds, num_mel_bins=16, hop_length=320)
    assert small.shape[2] == 16 and small_mask[0].sum() == audio.num_frames(sounds[0].size, 400, 320)


def test_segment_tones_finds_each_object():
    data = shapeworld.generate(20, "test", seed=0)
    for scene, sound in zip(data.scenes, data.sounds()):
        segments = audio.segment_tones(sound)
        assert len(segments) == len(scene.objects)
        durations = [(end - start) / RATE for start, end in segments]
        ordered = sorted(scene.objects, key=lambda o: o.x)
        for seconds, obj in zip(durations, ordered):
            assert seconds == pytest.approx(shapeworld.TONE_SECONDS[obj.size], abs=0.01)
    assert audio.segment_tones(np.zeros(100, np.float32)) == []


def test_plots_run(scene_sound):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2)
    audio.plot_waveform(scene_sound, ax=axes[0])
    audio.plot_spectrogram(audio.log_mel_spectrogram(scene_sound), ax=axes[1], mel=True, colorbar_label="log energy")
    assert axes[1].get_ylabel() == "mel bin" and axes[0].get_xlabel() == "time (s)"
    with pytest.raises(ValueError, match=r"\(frames, bins\)"):
        audio.plot_spectrogram(np.zeros(5, np.float32))
    plt.close(fig)


# Issue #16: sizes that would take minutes or gigabytes are refused up front; snr_db is bounded.
_WAVE = np.sin(np.arange(800) / 5.0).astype(np.float32)


@pytest.mark.parametrize("call,error,word", [
    (lambda: audio.hann_window(10**10), ValueError, "GiB"),
    (lambda: audio.stft(_WAVE, 100, 50, fft_length=10**9), ValueError, "fft_length"),
    (lambda: audio.fft_frequencies(10**10), ValueError, "GiB"),
    (lambda: audio.mel_filterbank(10**9, 65, 8000), ValueError, "GiB"),
    (lambda: audio.pad_waveforms([_WAVE], length=10**10), ValueError, "length"),
    (lambda: audio.lowpass_fir(1000.0, 8000, num_taps=10**9 + 1), ValueError, "num_taps"),
    (lambda: audio.frequency_response(np.ones(5) / 5, 8000, num_points=10**9), ValueError, "num_points"),
    (lambda: audio.resample(_WAVE, 8000, 10**9), ValueError, "rates"),
    (lambda: audio.add_noise(_WAVE, 1e9), ValueError, "snr_db"),
])
def test_huge_or_absurd_arguments_raise_clear_errors(call, error, word):
    with pytest.raises(error, match=word):
        call()


def test_frequency_response_needs_a_positive_sample_rate():
    with pytest.raises(ValueError, match="sample_rate"):
        audio.frequency_response(np.ones(5) / 5, 0)


# Issue #16, part 2: every common sound encoding and rate, and files that are not sound.
@pytest.mark.parametrize("rate", [8000, 44100, 48000])
@pytest.mark.parametrize("fmt,subtype", [("WAV", "PCM_U8"), ("WAV", "PCM_16"), ("WAV", "PCM_24"), ("WAV", "PCM_32"),
                                         ("WAV", "FLOAT"), ("WAV", "DOUBLE"), ("WAVEX", "PCM_16"), ("FLAC", "PCM_16"),
                                         ("OGG", "VORBIS"), ("MP3", "MPEG_LAYER_III")])
def test_load_audio_reads_every_encoding_and_rate(tmp_path, rate, fmt, subtype):
    import soundfile

    tone = sine(440, 0.25, rate)
    path = tmp_path / f"tone.{fmt.lower()}"
    soundfile.write(str(path), np.stack([tone, tone], axis=1), rate, format=fmt, subtype=subtype)
    raw = audio_io.load_audio(path, sample_rate=None, mono=False)
    assert raw.dtype == np.float32 and raw.shape[1] == 2 and np.abs(raw).max() <= 1.0
    if fmt in ("WAV", "WAVEX", "FLAC"):                               # lossless: the samples themselves
        assert raw.shape[0] == len(tone) and np.abs(raw[:, 0] - tone).max() < (0.01 if subtype == "PCM_U8" else 1e-3)
    course = audio_io.load_audio(path)
    assert course.ndim == 1 and abs(len(course) - round(raw.shape[0] * RATE / rate)) <= 1


def test_load_audio_refuses_out_of_range_floats_and_bad_arguments(tmp_path):
    import soundfile

    soundfile.write(str(tmp_path / "loud.wav"), np.array([0.5, -3.0, 1.5]), RATE, subtype="FLOAT")
    soundfile.write(str(tmp_path / "nan.wav"), np.array([0.1, np.nan, 0.2]), RATE, subtype="FLOAT")
    with pytest.warns(UserWarning, match="loud.wav: float samples reach 3, past full scale"):
        loud = audio_io.load_audio(tmp_path / "loud.wav", sample_rate=None)
    np.testing.assert_allclose(loud, [0.5 / 3, -1.0, 0.5])
    with pytest.raises(ValueError, match="nan.wav holds NaN or infinite samples"):
        audio_io.load_audio(tmp_path / "nan.wav")
    soundfile.write(str(tmp_path / "zero.wav"), np.zeros(0), 8000, subtype="PCM_16")
    assert audio_io.load_audio(tmp_path / "zero.wav").shape == (0,)
    ok = audio_io.save_wav(tmp_path / "ok.wav", sine(440, 0.1))
    with pytest.raises(TypeError, match="mono must be True or False"):
        audio_io.load_audio(ok, mono="no")
    with pytest.raises(ValueError, match="sample_rate must be >= 1"):
        audio_io.load_audio(ok, sample_rate=0)
    with pytest.raises(TypeError, match="path must be a file path"):
        audio_io.load_audio(None)
    with pytest.raises(ValueError, match="does its folder exist"):
        audio_io.save_wav(tmp_path / "no" / "such.wav", sine(440, 0.1))
    with pytest.raises(ValueError, match="sample_rate must be <= 4294967295"):
        audio_io.save_wav(tmp_path / "fast.wav", sine(440, 0.1), sample_rate=10**18)
