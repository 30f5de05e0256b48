"""audio_lm: ShapeWorld as sound, the audio front end, CTC transcription and the audio LLaVA."""

import numpy as np
import pytest

import keras
from keras import ops
from mmlm_course import audio_lm, detector, instructions, preprocessing, shapeworld, stages, training


@pytest.fixture(scope="module")
def data():
    return audio_lm.generate(12, "train", seed=3)


@pytest.fixture(scope="module")
def tokenizer():
    return preprocessing.Tokenizer.for_shapeworld(extra_special=instructions.TASK_TOKENS)


def test_sound_data_states_only_what_the_sound_carries(data):
    assert data.log_mels.shape == (12, 158, 40) and data.log_mels.dtype == np.float32
    assert np.isfinite(data.log_mels).all()
    texts = data.captions + data.questions
    assert not any(word in text for text in texts for word in ("above", "below"))
    assert all(audio_lm.caption_is_true_of_sound(c, s) for c, s in zip(data.captions, data.scenes))


def test_the_same_scenes_as_shapeworld_with_the_sound_relations(data):
    images = shapeworld.generate(12, "train", seed=3, relations=audio_lm.SOUND_RELATIONS)
    assert images.captions == data.captions and images.questions == data.questions


def test_shapeworld_refuses_relations_it_does_not_know():
    with pytest.raises(ValueError, match="relations"):
        shapeworld.generate(2, relations=("behind",))
    with pytest.raises(ValueError, match="relations"):
        shapeworld.generate(2, relations="to the left of")


def test_note_labels_follow_the_tones_from_left_to_right():
    left = shapeworld.ShapeObject("circle", "red", "small", 0.2, 0.8)
    right = shapeworld.ShapeObject("square", "blue", "large", 0.7, 0.1)
    scene = shapeworld.Scene((right, left))
    words = [audio_lm.NOTE_WORDS[i - 1] for i in audio_lm.note_labels(scene)]
    assert words == ["small", "red", "circle", "large", "blue", "square"]


def test_the_sound_verifier_refuses_what_cannot_be_heard():
    a = shapeworld.ShapeObject("circle", "red", "small", 0.2, 0.2)
    b = shapeworld.ShapeObject("square", "blue", "large", 0.7, 0.8)
    scene = shapeworld.Scene((a, b))
    assert audio_lm.caption_is_true_of_sound("a small red circle is to the left of a large blue square", scene)
    assert not audio_lm.caption_is_true_of_sound("a small red circle is to the right of a large blue square", scene)
    above = "a small red circle is above a large blue square"
    assert shapeworld.caption_is_true(above, scene) and not audio_lm.caption_is_true_of_sound(above, scene)
    assert not audio_lm.caption_is_true_of_sound("a red circle left of", scene)


def test_stack_frames_puts_neighbouring_frames_side_by_side_and_pads_the_last_token():
    frames = np.arange(2 * 5 * 3, dtype=np.float32).reshape(2, 5, 3)
    out = keras.ops.convert_to_numpy(audio_lm.stack_frames(frames, 2))
    assert out.shape == (2, 3, 6)
    np.testing.assert_array_equal(out[0, 0], np.concatenate([frames[0, 0], frames[0, 1]]))
    np.testing.assert_array_equal(out[1, 2], np.concatenate([frames[1, 4], np.zeros(3)]))
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(audio_lm.stack_frames(frames, 1)), frames)
    with pytest.raises(ValueError, match="k"):
        audio_lm.stack_frames(frames, 0)
    with pytest.raises(ValueError, match="rank|dimensions|batch"):
        audio_lm.stack_frames(frames[0], 2)


@pytest.mark.parametrize("frames, expected", [
    ([0, 3, 3, 0, 3, 5, 5], [3, 3, 5]),
    ([0, 0, 0], []),
    ([2, 2, 2], [2]),
    ([1, 0, 1, 1, 0], [1, 1]),
    ([], []),
])
def test_ctc_greedy_decode_merges_runs_then_drops_blanks(frames, expected):
    assert audio_lm.ctc_greedy_decode(np.array(frames, np.int64)) == expected


def test_sound_features_refuse_a_shift_that_does_not_fit():
    with pytest.raises(ValueError, match="max_shift"):
        audio_lm.sound_features([np.zeros(100, np.float32)], max_shift=audio_lm.MAX_SHIFT + 1)
    with pytest.raises(ValueError, match="does not fit"):
        audio_lm.sound_features([np.ones(audio_lm.CLIP_SAMPLES, np.float32)], max_shift=10)


def test_augmented_features_differ_and_are_reproducible():
    waves = shapeworld.generate(2, "train", seed=0).sounds()
    one = audio_lm.sound_features(waves, snr_db=(5, 20), max_shift=800, seed=1)
    two = audio_lm.sound_features(waves, snr_db=(5, 20), max_shift=800, seed=1)
    clean = audio_lm.sound_features(waves)
    np.testing.assert_array_equal(one, two)
    assert not np.allclose(one, clean)


def test_ctc_transcriber_trains_a_step_and_transcribes(data):
    keras.utils.set_random_seed(0)
    model = audio_lm.CTCTranscriber()
    model.build()
    model.front_end.adapt(data.log_mels)
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    assert model(data.log_mels[:2]).shape == (2, 79, len(audio_lm.NOTE_WORDS) + 1)
    log = training.train_steps(model, data.log_mels, data.labels, 2, batch_size=4)
    assert np.isfinite(log["loss"]).all() and log["loss"][0] > 0
    texts = audio_lm.transcribe(model, data.log_mels[:3])
    assert len(texts) == 3 and all(set(t.split()) <= set(audio_lm.NOTE_WORDS) for t in texts)


def test_audio_llava_reads_audio_tokens_in_front_of_the_text(data, tokenizer, tmp_path):
    keras.utils.set_random_seed(0)
    model = audio_lm.AudioLLaVA(len(tokenizer), num_layers=1)
    model.build()
    model.encoder.adapt(data.log_mels)
    x, y = audio_lm.make_examples(data, tokenizer, 20)
    assert x["log_mels"].shape == (24, 158, 40) and x["token_ids"].shape == y.shape == (24, 20)
    assert (y[0::2] != 0).any() and model.num_audio_tokens == 10
    logits = keras.ops.convert_to_numpy(model({k: v[:2] for k, v in x.items()}))
    assert logits.shape == (2, 20, len(tokenizer))
    path = tmp_path / "audio.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(loaded({k: v[:2] for k, v in x.items()})), logits,
                               atol=1e-5)
    with pytest.raises(ValueError, match="log_mels"):
        model({"images": x["log_mels"][:2], "token_ids": x["token_ids"][:2]})


def test_audio_llava_trains_in_lesson_08s_two_stages_with_its_encoder_frozen(data, tokenizer):
    keras.utils.set_random_seed(0)
    model = audio_lm.AudioLLaVA(len(tokenizer), num_layers=1)
    model.build()
    encoder = sum(int(np.prod(w.shape)) for w in model.encoder.trainable_weights)
    language = model.language_model.count_params()
    projector = model.projector.count_params()
    assert encoder > 0
    assert stages.set_stage_trainable(model, 1) == projector
    assert stages.set_stage_trainable(model, 2) == projector + language
    stages.compile_for_stage(model, 2, 1e-3, total_steps=4)
    x, y = audio_lm.make_examples(data, tokenizer, 20)
    log = training.train_steps(model, x, y, 2, batch_size=4)
    assert np.isfinite(log["loss"]).all()
    texts = audio_lm.generate_texts(model, tokenizer, data.log_mels[:3], ["", data.questions[1], ""])
    assert len(texts) == 3 and all(isinstance(t, str) for t in texts)
    result = audio_lm.evaluate(model, tokenizer, audio_lm.generate(6, "test", seed=0))
    assert 0.0 <= result["caption_truth"] <= 1.0 and set(result["qa_by_type"]) <= set(shapeworld.QUESTION_TYPES)
    with pytest.raises(ValueError, match="same batch size"):
        audio_lm.generate_texts(model, tokenizer, data.log_mels[:3], [""])


def test_ctc_greedy_decode_refuses_a_batch():
    with pytest.raises(ValueError, match="one clip"):
        audio_lm.ctc_greedy_decode(np.zeros((2, 5), np.int64))


# Issue #16: bad input to the public functions raises a clear TypeError / ValueError.
@pytest.mark.parametrize("call,error,word", [
    (lambda: audio_lm.note_labels(None), TypeError, "shapeworld.Scene"),
    (lambda: audio_lm.sound_features([np.zeros(100, np.float32)], seed=-1), ValueError, "seed"),
    (lambda: audio_lm.sound_features([np.zeros(100, np.float32)], snr_db="x"), TypeError, "snr_db"),
    (lambda: audio_lm.sound_features([np.zeros(100, np.float32)], snr_db=(20, 10)), ValueError, "low <= high"),
    (lambda: audio_lm.sound_features([np.zeros(100, np.float32)], snr_db=float("nan")), ValueError, "snr_db"),
    (lambda: audio_lm.caption_is_true_of_sound("there is a red circle", "x"), TypeError, "shapeworld.Scene"),
    (lambda: audio_lm.stack_frames(None, 2), TypeError, "frames"),
    (lambda: audio_lm.stack_frames(np.zeros((2, 8, 4), np.float32), 10**9), ValueError, "GiB"),
    (lambda: audio_lm.ctc_greedy_decode(np.array(["a", "b"])), TypeError, "frame_ids"),
    (lambda: audio_lm.ctc_greedy_decode(np.array([0, -3])), ValueError, ">= 0"),
    (lambda: audio_lm.ctc_greedy_decode(np.array([0, 3]), blank=None), TypeError, "blank"),
    (lambda: audio_lm.notes_text([1, -2]), ValueError, "labels"),
])
def test_bad_inputs_raise_clear_errors(call, error, word):
    with pytest.raises(error, match=word):
        call()


def test_a_copied_front_end_computes_the_same_features_as_the_one_it_copies(data):
    """`keras.layers.Normalization` keeps a copy of its statistics: `AudioFrontEnd.set_weights`
    refreshes it, so a copied (CTC-pretrained) front end normalises as the original does."""
    keras.utils.set_random_seed(1)
    trained = audio_lm.AudioFrontEnd()
    trained.build((None, 158, 40))
    trained.adapt(data.log_mels)
    copy = audio_lm.AudioFrontEnd()
    copy.build((None, 158, 40))
    copy.set_weights(trained.get_weights())
    assert np.allclose(np.asarray(copy(data.log_mels)), np.asarray(trained(data.log_mels)), atol=1e-6)
    model = audio_lm.AudioLLaVA(40, num_layers=1)
    model.build()
    model.encoder.set_weights(trained.get_weights())
    assert np.allclose(np.asarray(model.encoder(data.log_mels)), np.asarray(trained(data.log_mels)), atol=1e-6)


def test_note_tokens_group_the_best_path_in_threes_and_place_each_note_in_time():
    """CTC logits of "large red circle" then "small blue square" -> two note tokens with
    those words' features, the first earlier; the other two tokens are empty."""

    labels = [1 + audio_lm.NOTE_WORDS.index(w) for w in "large red circle small blue square".split()]
    ids = np.zeros(40, int)
    for j, label in enumerate(labels):
        ids[2 + 6 * j: 4 + 6 * j] = label            # each label held two frames, then blanks
    ids[5] = labels[0]                                # a label again after a blank: a new emission
    logits = np.eye(12, dtype=np.float32)[ids][None] * 20.0
    tokens = np.asarray(audio_lm.note_tokens(logits))
    features = detector.OBJECT_FEATURES
    assert tokens.shape == (1, 4, 14)
    # "large" emitted twice: the notes shift by one label, as best-path decoding would read it
    assert tokens[0, 0, features.index("p(large)")] > 1.9 and tokens[0, 1, features.index("objectness")] == 1.0
    clean = ids.copy()
    clean[5] = 0
    tokens = np.asarray(audio_lm.note_tokens(np.eye(12, dtype=np.float32)[clean][None] * 20.0))[0]
    for k, words in enumerate((("large", "red", "circle"), ("small", "blue", "square"))):
        on = [features.index(f"p({w})") for w in words]
        assert np.allclose(tokens[k, on], 1.0, atol=1e-3) and np.allclose(np.delete(tokens[k, :11], on), 0, atol=1e-3)
        assert tokens[k, features.index("y")] == 0.5 and tokens[k, features.index("objectness")] == 1.0
    assert 0 < tokens[0, features.index("x")] < tokens[1, features.index("x")] < 1
    assert not tokens[2:].any()


def test_a_note_token_model_reads_four_tokens_with_the_relation_head_and_keeps_the_transcriber_frozen(data, tokenizer,
                                                                                                      tmp_path):
    keras.utils.set_random_seed(0)
    transcriber = audio_lm.CTCTranscriber()
    transcriber.build()
    transcriber.front_end.adapt(data.log_mels)
    model = audio_lm.AudioLLaVA(len(tokenizer), num_layers=1, tokens="notes", relation_head=True)
    model.build()
    model.load_transcriber(transcriber)
    assert model.num_prefix_tokens == 4 and model.language_model.max_length == 4 + model.max_text_length
    ctc = ops.convert_to_numpy(transcriber(data.log_mels))
    expected = np.asarray(detector.CentredPositions()(audio_lm.note_tokens(ctc)))
    assert np.allclose(np.asarray(model.audio_features(data.log_mels)), expected, atol=1e-5)
    x, y = audio_lm.make_examples(data, tokenizer, model.max_text_length)
    for stage in (1, 2):
        stages.compile_for_stage(model, stage, 1e-3, total_steps=4)
        assert model.ctc_head.trainable_weights == [] and model.encoder.trainable_weights == []
        assert model.relation_head.trainable_weights and model.projector.trainable_weights
        training.train_steps(model, x, y, 2, batch_size=8)
    model.save(tmp_path / "notes.keras")
    loaded = keras.models.load_model(tmp_path / "notes.keras", compile=False)
    assert loaded.tokens == "notes" and loaded.relation_head is not None
    assert np.allclose(np.asarray(loaded(x)), np.asarray(model(x)), atol=1e-5)
    with pytest.raises(ValueError, match="tokens='notes'"):
        audio_lm.AudioLLaVA(len(tokenizer), relation_head=True)
    with pytest.raises(TypeError, match="CTCTranscriber"):
        model.load_transcriber(model)


def test_the_audio_benchmark_runs_both_models_on_a_tiny_recipe(monkeypatch):
    from mmlm_course.quality import lesson09

    monkeypatch.setattr(lesson09, "RECIPE", dict(train=80, evaluate=8, ctc_steps=2, ctc_rate=2e-3, stage1_steps=2,
                                                 stage2_steps=2, rate=3e-3, batch=8))
    figures = lesson09.audio_lm_task()
    for prefix in ("frames_", ""):
        for split in ("test", "compositional"):
            assert 0.0 <= figures[f"{prefix}{split}_caption_truth"] <= 1.0
            assert 0.0 <= figures[f"{prefix}{split}_qa"] <= 1.0
    assert figures["reached"] == (figures["test_caption_truth"] >= 0.9 and figures["test_qa"] >= 0.95)
