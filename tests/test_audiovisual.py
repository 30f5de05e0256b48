"""audiovisual: one language model reading image tokens and audio tokens of the same scene."""

import keras
import numpy as np
import pytest

from mmlm_course import audio_lm, audiovisual, instructions, preprocessing, shapeworld, stages

FIELDS = dict(image_size=32, stem=1, encoder_filters=[8, 8, 8], vision_dim=8, dim=16, num_layers=1, num_heads=2,
              stack=8)


@pytest.fixture(scope="module")
def tokenizer():
    return preprocessing.Tokenizer.for_shapeworld(extra_special=instructions.TASK_TOKENS)


@pytest.fixture(scope="module")
def data():
    return audiovisual.generate(6, "train", seed=2, image_size=32)


@pytest.fixture()
def model(tokenizer):
    keras.utils.set_random_seed(0)
    return audiovisual.build_model(FIELDS, tokenizer)


def test_the_data_is_the_same_scenes_seen_and_heard(data):
    world = shapeworld.generate(6, "train", seed=2, image_size=32)
    assert data.world.captions == world.captions and np.array_equal(data.world.images, world.images)
    heard = audio_lm.sound_features(world.sounds(), seed=2)
    assert np.allclose(data.log_mels, heard) and len(data) == 6
    assert [audio_lm.notes_text(row) for row in data.labels] == [
        audio_lm.notes_text(audio_lm.note_labels(scene)) for scene in world.scenes]
    augmented = audiovisual.generate(6, "train", seed=2, image_size=32, augment=True)
    assert not np.allclose(augmented.log_mels, data.log_mels)       # delay and noise on the training sounds
    assert augmented.world.captions == data.world.captions


def test_rows_pair_each_text_with_its_scenes_picture_and_sound(data, tokenizer):
    x, y = audiovisual.make_examples(data, tokenizer, 20)
    assert set(x) == {"images", "log_mels", "token_ids"} and len(y) == 12
    for row in (0, 1, 7):
        assert np.array_equal(x["images"][row], data.world.images[row // 2])
        assert np.array_equal(x["log_mels"][row], data.log_mels[row // 2])


def test_modality_dropout_blacks_out_pictures_or_silences_sounds_but_never_hides_what_only_the_picture_shows(
        tokenizer):
    data = audiovisual.generate(400, "train", seed=5, image_size=32)
    whole, _ = audiovisual.make_examples(data, tokenizer, 20)
    x, y = audiovisual.make_examples(data, tokenizer, 20, dropout=0.5, seed=1)
    again, _ = audiovisual.make_examples(data, tokenizer, 20, dropout=0.5, seed=1)
    assert all(np.array_equal(x[k], again[k]) for k in x)                       # seeded
    blind = ~x["images"].reshape(len(y), -1).any(axis=1)
    deaf = np.all(np.isclose(x["log_mels"], audiovisual.silence()), axis=(1, 2))
    kept = ~blind & ~deaf
    assert not (blind & deaf).any()
    assert np.array_equal(x["images"][kept], whole["images"][kept])
    assert np.array_equal(x["log_mels"][~deaf], whole["log_mels"][~deaf])
    assert 0.4 < kept.mean() < 0.6 and 0.15 < blind.mean() < 0.3 and deaf.mean() > blind.mean()
    texts = [t for c, q in zip(data.world.captions, data.world.questions) for t in (c, q)]
    shown_only = np.array([("above" in t or "below" in t) for t in texts])
    assert shown_only.any() and not (blind & shown_only).any()
    plain, _ = audiovisual.make_examples(data, tokenizer, 20, dropout=0.0)
    assert all(np.array_equal(plain[k], whole[k]) for k in x)
    with pytest.raises(ValueError, match="dropout"):
        audiovisual.make_examples(data, tokenizer, 20, dropout=1.5)


def test_the_language_model_reads_image_tokens_then_audio_tokens(model, data, tokenizer):
    x, _ = audiovisual.make_examples(data, tokenizer, 20)
    assert model.num_prefix_tokens == model.config.num_image_tokens + model.num_audio_tokens == 16 + 10
    assert model.language_model.max_length == model.num_prefix_tokens + 20
    logits = np.asarray(model(x))
    assert logits.shape == (12, 20, len(tokenizer))
    # each input reaches the logits: another sound, or another picture, changes them
    other_sound = np.asarray(model({**x, "log_mels": x["log_mels"][::-1]}))
    other_image = np.asarray(model({**x, "images": x["images"][::-1]}))
    assert not np.allclose(logits, other_sound) and not np.allclose(logits, other_image)


def test_both_pretrained_encoders_stay_frozen_in_both_stages(tokenizer):
    model = audiovisual.build_model({**FIELDS, "vision": "objects", "image_size": 64, "relation_head": True},
                                    tokenizer)
    for stage in (1, 2):
        stages.set_stage_trainable(model, stage)
        assert model.audio_encoder.trainable_weights == [] and model.image_encoder.trainable_weights == []
        assert model.audio_projector.trainable and model.projector.trainable and model.relation_head.trainable
        assert model.language_model.trainable == (stage == 2)


def test_the_model_saves_and_loads_with_the_same_outputs(model, data, tokenizer, tmp_path):
    x, _ = audiovisual.make_examples(data, tokenizer, 20)
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras", compile=False)
    assert isinstance(loaded, audiovisual.AudioVisualLLaVA) and loaded.stack == 8
    assert np.allclose(np.asarray(loaded(x)), np.asarray(model(x)), atol=1e-5)


def test_the_text_is_pretrained_behind_every_prefix_slot(model, tokenizer):
    history = stages.pretrain_language_model(model, ["<caption> a red circle"] * 4, tokenizer, batch_size=4)
    assert np.isfinite(history.history["loss"][-1])
    assert model.language_model.max_length == model.num_prefix_tokens + model.config.max_text_length


def test_bad_inputs_say_what_was_expected(model, data, tokenizer):
    x, _ = audiovisual.make_examples(data, tokenizer, 20)
    with pytest.raises(ValueError, match="log_mels"):
        model({"images": x["images"], "token_ids": x["token_ids"]})
    with pytest.raises(ValueError, match="same batch size"):
        model({**x, "log_mels": x["log_mels"][:3]})
    with pytest.raises(ValueError, match="one clip per image"):
        audiovisual.generate_texts(model, tokenizer, data.world.images, data.log_mels[:2], [""] * 6)
    with pytest.raises(ValueError, match="senses"):
        audiovisual.evaluate(model, tokenizer, data, senses="smell")
    with pytest.raises(TypeError, match="AudioVisualLLaVA"):
        audiovisual.generate_texts(object(), tokenizer, data.world.images, data.log_mels, [""] * 6)


def test_evaluation_can_mute_the_sound_or_blank_the_picture(model, data, tokenizer, monkeypatch):
    seen = []

    def record(model, tokenizer, images, log_mels, prompts, batch_size=64):
        seen.append((images.copy(), np.asarray(log_mels).copy()))
        return [""] * len(prompts)

    monkeypatch.setattr(audiovisual, "generate_texts", record)
    silence = audiovisual.silence()
    figures = audiovisual.evaluate(model, tokenizer, data, senses="image")
    assert figures["caption_truth"] == 0.0
    assert np.array_equal(seen[-1][0], data.world.images) and np.allclose(seen[-1][1], silence)
    audiovisual.evaluate(model, tokenizer, data, senses="sound")
    assert not seen[-1][0].any() and np.array_equal(seen[-1][1], data.log_mels)
    audiovisual.evaluate(model, tokenizer, data)
    assert np.array_equal(seen[-1][0], data.world.images) and np.array_equal(seen[-1][1], data.log_mels)


def test_generation_gives_one_text_per_scene(model, data, tokenizer):
    texts = audiovisual.generate_texts(model, tokenizer, data.world.images, data.log_mels,
                                       [""] * 3 + data.world.questions[3:], batch_size=4, max_new_tokens=3)
    assert len(texts) == 6 and all(isinstance(t, str) for t in texts)
