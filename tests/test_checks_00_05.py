"""Lessons 00, 01, 02 and 05: answers written differently from the reference pass their check,
and the checks cannot be steered by the code under test nor mislead with their messages.

Every registered mistake is fed to its check by tests/test_checks.py; here are the right
answers a learner may write another way (loops, lists, keras.ops, another valid formula).
"""

import math
import re

import keras
import numpy as np
import pytest
from keras import ops

from mmlm_course import audio, losses, preprocessing, shapeworld
from mmlm_course.exercises import CheckFailed, run_check
from check_helpers import passes


# --------------------------------------------------------------------------- 00


def _describe_joined(obj):
    return " ".join(["a", obj.size, obj.color, obj.shape])


def _describe_percent(obj):
    return "a %s %s %s" % (obj.size, obj.color, obj.shape)


@pytest.mark.parametrize("answer", [
    _describe_joined, _describe_percent,
    lambda obj: "a " + obj.describe(),
    lambda obj: shapeworld.with_article(f"{obj.size} {obj.color} {obj.shape}"),
], ids=["join", "percent", "describe", "with_article"])
def test_00_describe_object_alternatives_pass(answer):
    passes("00.describe_object", answer)


def _count_loop(scene, color):
    count = 0
    for obj in scene.objects:
        if obj.color == color:
            count += 1
    return count


@pytest.mark.parametrize("answer", [
    _count_loop,
    lambda scene, color: len([o for o in scene.objects if o.color == color]),
    lambda scene, color: [o.color for o in scene.objects].count(color),
    lambda scene, color: np.sum([o.color == color for o in scene.objects]),      # a NumPy int
    lambda scene, color: shapeworld.count_objects(scene, color=color),
], ids=["loop", "len", "list_count", "np_sum", "count_objects"])
def test_00_count_color_alternatives_pass(answer):
    passes("00.count_color", answer)


@pytest.mark.parametrize("got, word", [
    (lambda obj: f"a {obj.color} {obj.shape}", "missing"),
    (lambda obj: f"a {obj.size} {obj.color}", "missing"),
    (lambda obj: f"A {obj.size} {obj.color} {obj.shape}", "capital"),
    (lambda obj: f"a  {obj.size} {obj.color} {obj.shape}", "spaces"),
    (lambda obj: f"the {obj.size} {obj.color} {obj.shape}", "article"),
], ids=["no_size", "no_shape", "capital", "spaces", "the"])
def test_00_describe_object_says_what_differs(got, word):
    with pytest.raises(CheckFailed) as error:
        run_check("00.describe_object", got)
    assert word in str(error.value) and "order" not in str(error.value)


def test_00_describe_object_ignores_a_patched_noun_phrase(monkeypatch):
    def steer(obj):
        monkeypatch.setattr(shapeworld.ShapeObject, "noun_phrase", lambda self: "x")
        return "x"

    with pytest.raises(CheckFailed):
        run_check("00.describe_object", steer)


# --------------------------------------------------------------------------- 01


@pytest.mark.parametrize("answer", [
    lambda image: (image / 255).astype(np.float32),
    lambda image: np.divide(image, 255, dtype=np.float32),
    lambda image: np.asarray(image, np.float32) * np.float32(1 / 255),
    lambda image: ops.cast(image, "float32") / 255.0,
], ids=["divide_then_cast", "np_divide", "multiply", "keras_ops"])
def test_01_to_float_image_alternatives_pass(answer):
    passes("01.to_float_image", answer)


def _flip_regex(image, caption):
    swap = {"left": "right", "right": "left"}
    return np.flip(image, axis=1), re.sub(r"\b(left|right)\b", lambda m: swap[m.group(0)], caption)


def _flip_placeholder(image, caption):
    return np.fliplr(image), caption.replace("left", "@@").replace("right", "left").replace("@@", "right")


def _flip_loop(image, caption):
    words = []
    for word in caption.split():
        if word == "left":
            words.append("right")
        elif word == "right":
            words.append("left")
        else:
            words.append(word)
    return image[:, ::-1, :].copy(), " ".join(words)


def _flip_keras(image, caption):
    return ops.flip(image, axis=1), preprocessing.flip_caption(caption)


@pytest.mark.parametrize("answer", [_flip_regex, _flip_placeholder, _flip_loop, _flip_keras],
                         ids=lambda f: f.__name__)
def test_01_hflip_with_caption_alternatives_pass(answer):
    passes("01.hflip_with_caption", answer)


def test_01_hflip_with_caption_ignores_a_changed_flip_words(monkeypatch):
    """The check keeps its own swap table: emptying preprocessing.FLIP_WORDS changes nothing."""
    monkeypatch.setattr(preprocessing, "FLIP_WORDS", dict(preprocessing.FLIP_WORDS))

    def steer(image, caption):
        preprocessing.FLIP_WORDS.clear()
        return image[:, ::-1], caption

    with pytest.raises(CheckFailed) as error:
        run_check("01.hflip_with_caption", steer)
    assert "caption" in str(error.value)


def _encode_loop(text, token_to_id):
    ids = []
    for word in preprocessing.split_words(text):
        ids.append(token_to_id[word] if word in token_to_id else token_to_id["<unk>"])
    return ids


@pytest.mark.parametrize("answer", [
    _encode_loop,
    lambda text, vocab: np.array([vocab.get(w, vocab["<unk>"]) for w in preprocessing.split_words(text)], np.int64),
    lambda text, vocab: tuple(map(lambda w: vocab.get(w, vocab["<unk>"]), preprocessing.split_words(text))),
], ids=["loop", "array", "tuple_map"])
def test_01_encode_alternatives_pass(answer):
    passes("01.encode", answer)


def _pad_list_comprehension(sequences):
    length = max(map(len, sequences))
    ids = np.array([list(s) + [0] * (length - len(s)) for s in sequences], dtype=np.int32)
    return ids, ids != 0                            # the ids of real tokens are never <pad> = 0


def _pad_with_lengths(sequences):
    lengths = np.array([len(s) for s in sequences])
    mask = np.arange(lengths.max())[None, :] < lengths[:, None]
    ids = np.zeros(mask.shape, np.int32)
    ids[mask] = np.concatenate([np.asarray(s) for s in sequences])
    return ids, mask


def _pad_keras(sequences):
    ids = keras.utils.pad_sequences(sequences, padding="post", value=0, dtype="int32")
    return ids, np.arange(ids.shape[1])[None, :] < np.array([len(s) for s in sequences])[:, None]


@pytest.mark.parametrize("answer", [_pad_list_comprehension, _pad_with_lengths, _pad_keras,
                                    preprocessing.pad_sequences], ids=lambda f: f.__name__)
def test_01_pad_with_mask_alternatives_pass(answer):
    passes("01.pad_with_mask", answer)


def test_01_pad_with_mask_reports_the_position_of_a_mask_mismatch():
    def short_mask(sequences):
        ids, mask = preprocessing.pad_sequences(sequences)
        mask[:, 0] = False
        return ids, mask

    with pytest.raises(CheckFailed) as error:
        run_check("01.pad_with_mask", short_mask)
    assert "row" in str(error.value) and "position" in str(error.value)


# --------------------------------------------------------------------------- 02


def _alias_loop(frequency_hz, sample_rate):
    f = float(frequency_hz)
    while f > sample_rate / 2:
        f = abs(f - sample_rate)
    return f


@pytest.mark.parametrize("answer", [
    _alias_loop,
    lambda f, sr: float(min(f % sr, sr - f % sr)),
    lambda f, sr: np.abs(f - sr * np.round(f / sr)),                              # a NumPy float64
    lambda f, sr: float(np.abs((f + sr / 2) % sr - sr / 2)),
], ids=["loop", "modulo_min", "np_round", "shifted_modulo"])
def test_02_alias_frequency_alternatives_pass(answer):
    passes("02.alias_frequency", answer)


def test_02_alias_frequency_asks_for_a_float():
    with pytest.raises(CheckFailed) as error:
        run_check("02.alias_frequency", lambda f, sr: abs(f - sr * round(f / sr)))
    assert "float" in str(error.value)


def _frames_loop(signal, frame_length, hop_length):
    starts = range(0, len(signal) - frame_length + 1, hop_length)
    return np.array([signal[s:s + frame_length] for s in starts], dtype=np.float32)


def _frames_strided(signal, frame_length, hop_length):
    return np.lib.stride_tricks.sliding_window_view(signal, frame_length)[::hop_length]


def _frames_tf(signal, frame_length, hop_length):
    tf = pytest.importorskip("tensorflow")
    return tf.signal.frame(signal, frame_length, hop_length)


@pytest.mark.parametrize("answer", [_frames_loop, _frames_strided, _frames_tf], ids=lambda f: f.__name__)
def test_02_frame_signal_alternatives_pass(answer):
    passes("02.frame_signal", answer)


def _stft_scipy_window(signal, frame_length, hop_length, fft_length):
    from scipy.signal import get_window
    frames = np.lib.stride_tricks.sliding_window_view(signal, frame_length)[::hop_length]
    return np.abs(np.fft.rfft(frames * get_window("hann", frame_length), n=fft_length)).astype(np.float32)


def _stft_dft_matrix(signal, frame_length, hop_length, fft_length):
    frames = audio.frame_signal(signal, frame_length, hop_length) * audio.hann_window(frame_length)
    n, k = np.arange(frame_length)[:, None], np.arange(fft_length // 2 + 1)[None, :]
    return np.abs(frames.astype(np.float64) @ np.exp(-2j * np.pi * k * n / fft_length)).astype(np.float32)


def _stft_tf(signal, frame_length, hop_length, fft_length):
    tf = pytest.importorskip("tensorflow")
    return tf.abs(tf.signal.stft(signal, frame_length, hop_length, fft_length))


@pytest.mark.parametrize("answer", [_stft_scipy_window, _stft_dft_matrix, _stft_tf],
                         ids=lambda f: f.__name__)
def test_02_stft_magnitude_alternatives_pass(answer):
    passes("02.stft_magnitude", answer)


def _mel_loop(num_mel_bins, num_spectrogram_bins, sample_rate, lower_hz, upper_hz):
    def mel(hz):
        return 2595.0 * math.log10(1.0 + hz / 700.0)          # the same scale, another constant
    edges = [mel(lower_hz) + j * (mel(upper_hz) - mel(lower_hz)) / (num_mel_bins + 1) for j in range(num_mel_bins + 2)]
    weights = np.zeros((num_spectrogram_bins, num_mel_bins), np.float32)
    for k in range(num_spectrogram_bins):
        m = mel(k * (sample_rate / 2) / (num_spectrogram_bins - 1))
        for j in range(num_mel_bins):
            rising = (m - edges[j]) / (edges[j + 1] - edges[j])
            falling = (edges[j + 2] - m) / (edges[j + 2] - edges[j + 1])
            weights[k, j] = max(0.0, min(rising, falling))
    return weights


def _mel_tf(num_mel_bins, num_spectrogram_bins, sample_rate, lower_hz, upper_hz):
    tf = pytest.importorskip("tensorflow")
    return tf.signal.linear_to_mel_weight_matrix(num_mel_bins, num_spectrogram_bins, sample_rate, lower_hz, upper_hz)


@pytest.mark.parametrize("answer", [_mel_loop, _mel_tf], ids=lambda f: f.__name__)
def test_02_mel_filterbank_alternatives_pass(answer):
    passes("02.mel_filterbank", answer)


@pytest.mark.parametrize("answer", [
    lambda spec, mel, eps: np.log(np.matmul(spec, mel) + eps).astype(np.float32),
    lambda spec, mel, eps: ops.log(ops.matmul(spec, mel) + eps),
    lambda spec, mel, eps: np.log(spec.astype(np.float64) @ mel.astype(np.float64) + eps).astype(np.float32),
    lambda spec, mel, eps: np.log(np.tensordot(spec, mel, axes=1) + np.float32(eps)),
], ids=["matmul", "keras_ops", "float64_inside", "tensordot"])
def test_02_log_mel_alternatives_pass(answer):
    passes("02.log_mel", answer)


def test_02_checks_ignore_a_patched_audio_module(monkeypatch):
    def steer(signal, frame_length, hop_length):
        monkeypatch.setattr(audio, "frame_signal", lambda *args, **kwargs: np.zeros((1, 1), np.float32))
        return np.zeros((1, 1), np.float32)

    with pytest.raises(CheckFailed):
        run_check("02.frame_signal", steer)


def _count_reduce_sum(scene, color):
    tf = pytest.importorskip("tensorflow")
    return tf.reduce_sum(tf.cast([o.color == color for o in scene.objects], tf.int32))     # a 0-d int tensor


def test_00_count_color_accepts_a_0d_int_tensor_and_says_shape_in_one_line():
    passes("00.count_color", _count_reduce_sum)
    with pytest.raises(CheckFailed) as error:
        run_check("00.count_color", lambda scene, color: np.zeros((2, 2), np.int64))
    assert "shape (2, 2)" in str(error.value) and "\n" not in str(error.value)


def test_01_encode_ignores_a_patched_split_words(monkeypatch):
    """The check splits its texts before the answer runs: an answer that makes
    preprocessing.split_words split like itself still fails."""
    def steer(text, token_to_id):
        monkeypatch.setattr(preprocessing, "split_words", lambda t: t.split())
        return [token_to_id.get(w, token_to_id["<unk>"]) for w in text.split()]

    with pytest.raises(CheckFailed):
        run_check("01.encode", steer)


def test_01_hflip_with_caption_names_the_pixel_that_differs():
    with pytest.raises(CheckFailed) as error:
        run_check("01.hflip_with_caption", lambda image, caption: (np.roll(image[:, ::-1], 1, axis=1),
                                                                   preprocessing.flip_caption(caption)))
    assert "row 0, column 0" in str(error.value)


def _frames_empty_loop(signal, frame_length, hop_length):
    count = max(0, 1 + (len(signal) - frame_length) // hop_length)
    frames = np.zeros((count, frame_length), np.float32)
    for i in range(count):
        frames[i] = signal[i * hop_length:i * hop_length + frame_length]
    return frames


def _frames_refusing(signal, frame_length, hop_length):
    if len(signal) < frame_length:
        raise IndexError("the signal is shorter than one frame")
    return _frames_empty_loop(signal, frame_length, hop_length)


@pytest.mark.parametrize("answer", [_frames_empty_loop, _frames_refusing], ids=lambda f: f.__name__)
def test_02_frame_signal_a_signal_shorter_than_a_frame_gives_no_frame_or_an_error(answer):
    passes("02.frame_signal", answer)       # also _frames_loop (shape (0,)) and _frames_strided (ValueError) above


def test_02_frame_signal_names_the_frame_and_sample_that_differ():
    with pytest.raises(CheckFailed) as error:
        run_check("02.frame_signal", lambda s, fl, hl: audio.frame_signal(s, fl, hl) * np.float32(1.5))
    assert "frame 0, sample 0" in str(error.value)


def _stft_own_frames(signal, frame_length, hop_length, fft_length):
    count = 1 + (len(signal) - frame_length) // hop_length
    frames = np.stack([signal[i * hop_length:i * hop_length + frame_length] for i in range(count)])
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(frame_length) / frame_length)
    return np.abs(np.fft.rfft(frames * window, n=fft_length)).astype(np.float32)


def test_02_checks_ignore_package_functions_the_learner_replaced(monkeypatch):
    """A notebook that plugs its own (wrong) functions into `audio` does not change what the
    later checks compute: a right answer still passes."""
    monkeypatch.setattr(audio, "frame_signal", lambda *args, **kwargs: [np.zeros(3)])
    monkeypatch.setattr(audio, "hann_window", lambda *args, **kwargs: np.ones(3))
    monkeypatch.setattr(audio, "mel_filterbank", lambda *args, **kwargs: np.zeros((3, 3), np.float32))
    monkeypatch.setattr(audio, "power_spectrogram", lambda *args, **kwargs: np.zeros((3, 3), np.float32))
    monkeypatch.setattr(audio, "hz_to_mel", lambda hz: [0.0])
    passes("02.stft_magnitude", _stft_own_frames)
    passes("02.log_mel", lambda spec, mel, eps: np.log(spec @ mel + eps).astype(np.float32))
    passes("02.mel_filterbank", _mel_loop)


# --------------------------------------------------------------------------- 05


def _log_softmax_rows(logits):
    out = np.empty(logits.shape, np.float64)
    for i, row in enumerate(np.asarray(logits, np.float64)):
        top = max(row)
        out[i] = row - top - math.log(sum(math.exp(z - top) for z in row))
    return out


def _log_softmax_scipy(logits):
    from scipy.special import logsumexp
    return logits - logsumexp(logits, axis=-1, keepdims=True)


def _log_softmax_as_lists(logits):
    """Plain Python: a list of rows, each a list of floats."""
    rows = []
    for row in logits.tolist():
        top = max(row)
        total = top + math.log(sum(math.exp(z - top) for z in row))
        rows.append([z - total for z in row])
    return rows


def _log_softmax_in_place_on_a_copy(logits):
    z = logits.copy()
    z -= z.max(axis=-1, keepdims=True)
    z -= np.log(np.exp(z).sum(axis=-1, keepdims=True))
    return z


@pytest.mark.parametrize("answer", [
    _log_softmax_rows, _log_softmax_scipy, _log_softmax_as_lists, _log_softmax_in_place_on_a_copy,
    lambda z: ops.log_softmax(z, axis=-1),
    lambda z: z - (z.max(-1, keepdims=True) + np.log(np.exp(z - z.max(-1, keepdims=True)).sum(-1, keepdims=True))),
    lambda z: z - np.logaddexp.reduce(z.astype(np.float64), axis=-1, keepdims=True),
], ids=["rows", "scipy", "lists", "in_place_on_a_copy", "keras_ops", "numpy", "logaddexp_float64"])
def test_05_log_softmax_alternatives_pass(answer):
    passes("05.log_softmax", answer)


def _masked_mean_keras(values, mask):
    weights = ops.cast(mask, "float32")
    return ops.sum(ops.where(mask, values, 0.0)) / ops.maximum(ops.sum(weights), 1.0)


@pytest.mark.parametrize("answer", [
    lambda values, mask: values[mask].sum() / max(mask.sum(), 1),
    lambda values, mask: float(np.mean(values[mask])) if mask.any() else 0.0,
    _masked_mean_keras,
    lambda values, mask: float(np.ma.masked_array(values, ~mask).mean()) if mask.any() else 0.0,
    lambda values, mask: np.average(values, weights=mask) if mask.any() else 0.0,
], ids=["sum_over_count", "mean_or_zero", "keras_ops", "masked_array", "weighted_average"])
def test_05_masked_mean_alternatives_pass(answer):
    passes("05.masked_mean", answer)


def _info_nce_notebook(image_emb, text_emb, temperature):
    u = image_emb / ops.sqrt(ops.sum(image_emb ** 2, axis=1, keepdims=True))
    v = text_emb / ops.sqrt(ops.sum(text_emb ** 2, axis=1, keepdims=True))
    similarity = ops.matmul(u, ops.transpose(v)) / temperature
    image_to_text = -ops.mean(ops.diagonal(losses.log_softmax(similarity)))
    text_to_image = -ops.mean(ops.diagonal(losses.log_softmax(ops.transpose(similarity))))
    return (image_to_text + text_to_image) / 2


def _info_nce_cross_entropy(image_emb, text_emb, temperature):
    similarity = ops.matmul(ops.normalize(image_emb, axis=1), ops.transpose(ops.normalize(text_emb, axis=1)))
    logits = similarity / temperature
    labels = ops.arange(ops.shape(logits)[0])
    rows = keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True)
    columns = keras.losses.sparse_categorical_crossentropy(labels, ops.transpose(logits), from_logits=True)
    return (ops.mean(rows) + ops.mean(columns)) / 2


def _info_nce_scipy(image_emb, text_emb, temperature):
    from scipy.special import logsumexp
    u = image_emb / np.linalg.norm(image_emb, axis=1, keepdims=True)
    v = text_emb / np.linalg.norm(text_emb, axis=1, keepdims=True)
    s = (u @ v.T) / temperature
    diagonal = np.diag(s)
    return float(np.mean(logsumexp(s, axis=1) - diagonal) + np.mean(logsumexp(s, axis=0) - diagonal)) / 2


@pytest.mark.parametrize("answer", [_info_nce_notebook, _info_nce_cross_entropy, _info_nce_scipy],
                         ids=lambda f: f.__name__)
def test_05_symmetric_info_nce_alternatives_pass(answer):
    passes("05.symmetric_info_nce", answer)


def _recall_loop(scores, targets, k):
    hits = 0
    for row, target in zip(scores, targets):
        rank = sum(1 for score in row if score >= row[target])
        hits += rank <= k
    return hits / len(scores)


def _recall_next_score(scores, targets, k):
    """A hit when the true score beats the (k+1)-th highest score: ties at the boundary miss."""
    hits = []
    for row, target in zip(scores, targets):
        descending = np.sort(row)[::-1]
        hits.append(k >= len(row) or row[target] > descending[k])
    return float(np.mean(hits))


def _recall_keras(scores, targets, k):
    true = ops.take_along_axis(scores, ops.expand_dims(ops.convert_to_tensor(targets), 1), axis=1)
    ranks = ops.sum(ops.cast(scores >= true, "int32"), axis=1)
    return ops.mean(ops.cast(ranks <= k, "float32"))


@pytest.mark.parametrize("answer", [_recall_loop, _recall_next_score, _recall_keras], ids=lambda f: f.__name__)
def test_05_recall_at_k_alternatives_pass(answer):
    passes("05.recall_at_k", answer)


def test_05_recall_at_k_hint_for_ignored_targets_is_not_about_ties():
    def diagonal(scores, targets, k):
        true = np.diag(scores)[:, None]
        return float(np.mean((scores >= true).sum(1) <= k))

    with pytest.raises(CheckFailed) as error:
        run_check("05.recall_at_k", diagonal)
    assert "targets" in str(error.value) and "tie" not in str(error.value).lower()


def test_05_recall_at_k_hint_for_a_percentage_is_not_about_ranks():
    def percentage(scores, targets, k):
        true = scores[np.arange(len(scores)), targets][:, None]
        return 100 * float(np.mean((scores >= true).sum(1) <= k))

    with pytest.raises(CheckFailed, match="not a percentage"):
        run_check("05.recall_at_k", percentage)


def test_05_adam_step_names_a_wrong_order_of_the_results():
    def moments_first(param, grad, m, v, t, learning_rate=1e-3, beta_1=0.9, beta_2=0.999, epsilon=1e-8):
        new_param, new_m, new_v = _adam_float64(param, grad, m, v, t, learning_rate, beta_1, beta_2, epsilon)
        return new_m, new_v, new_param

    with pytest.raises(CheckFailed, match=r"in the order \(new_m, new_v, new_param\)"):
        run_check("05.adam_step", moments_first)


def _adam_float64(param, grad, m, v, t, learning_rate=1e-3, beta_1=0.9, beta_2=0.999, epsilon=1e-8):
    param, grad, m, v = (np.asarray(a, np.float64) for a in (param, grad, m, v))
    m = np.add(np.multiply(beta_1, m), np.multiply(1 - beta_1, grad))
    v = np.add(np.multiply(beta_2, v), np.multiply(1 - beta_2, np.square(grad)))
    m_hat = m / (1 - math.pow(beta_1, t))
    v_hat = v / (1 - math.pow(beta_2, t))
    return param - learning_rate * m_hat / (np.sqrt(v_hat) + epsilon), m, v


def _adam_in_place_tuple(param, grad, m, v, t, learning_rate=1e-3, beta_1=0.9, beta_2=0.999, epsilon=1e-8):
    m = beta_1 * m + (1 - beta_1) * grad
    v = beta_2 * v + (1 - beta_2) * grad * grad
    param -= learning_rate * (m / (1 - beta_1 ** t)) / (np.sqrt(v / (1 - beta_2 ** t)) + epsilon)
    return param, m, v


@pytest.mark.parametrize("answer", [_adam_float64, _adam_in_place_tuple], ids=lambda f: f.__name__)
def test_05_adam_step_alternatives_pass(answer):
    passes("05.adam_step", answer)


def _log_softmax_in_place(logits):
    logits -= logits.max(axis=-1, keepdims=True)
    return logits - np.log(np.exp(logits).sum(axis=-1, keepdims=True))


def _masked_mean_in_place(values, mask):
    values *= mask
    return values.sum() / max(mask.sum(), 1)


def _info_nce_in_place(image_emb, text_emb, temperature):
    image_emb /= np.linalg.norm(image_emb, axis=1, keepdims=True)
    text_emb /= np.linalg.norm(text_emb, axis=1, keepdims=True)
    return _info_nce_scipy(image_emb, text_emb, temperature)


def _recall_in_place(scores, targets, k):
    scores -= scores[np.arange(len(scores)), targets][:, None]       # 0 for the true item
    return float(np.mean((scores >= 0).sum(axis=1) <= k))


@pytest.mark.parametrize("exercise_id, answer", [
    ("05.log_softmax", _log_softmax_in_place), ("05.masked_mean", _masked_mean_in_place),
    ("05.symmetric_info_nce", _info_nce_in_place), ("05.recall_at_k", _recall_in_place),
], ids=lambda x: x if isinstance(x, str) else x.__name__)
def test_05_right_values_computed_in_place_fail_on_the_changed_input(exercise_id, answer):
    """As lesson 03 says for every later exercise: the arguments stay as they are (adam_step excepted)."""
    with pytest.raises(CheckFailed, match="changed its input in place"):
        run_check(exercise_id, answer)
