"""Capstone run plumbing that needs no model: presets, the run folder. (The batch order is
`training.batch_indices`, tested in tests/test_training.py.)"""

import json

import pytest

from mmlm_course import capstone


def test_presets_resolve_and_unknown_preset_is_named():
    for name in capstone.PRESETS:
        config = capstone.resolve_config(name)
        assert config.total_steps == config.stage1_steps + config.stage2_steps > 0
    gpu = capstone.resolve_config("colab-t4")
    assert gpu.mixed_precision and gpu.jit_compile
    assert not capstone.resolve_config("cpu").mixed_precision
    with pytest.raises(ValueError, match="preset"):
        capstone.resolve_config("laptop")


def test_run_folder_refuses_another_config_and_truncates_history(tmp_path):
    folder = capstone.RunFolder(tmp_path)
    config = capstone.resolve_config("tiny")
    assert folder.start(config) is False
    assert folder.start(config) is True
    with pytest.raises(ValueError, match="different config"):
        folder.start(capstone.resolve_config("tiny", seed=1))
    rows = [{"step": s, "loss": 1.0 / s} for s in range(1, 6)]
    folder.history_path.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 6, "lo')
    assert [r["step"] for r in folder.history(3)] == [1, 2, 3]
    assert [r["step"] for r in folder.history(10)] == [1, 2, 3, 4, 5]   # the torn line is ignored


def test_a_run_folder_from_before_a_new_config_field_still_resumes(tmp_path):
    """A field added to RunConfig since the run started (here modality_dropout) takes its
    default, so an older run folder resumes; a different value is still refused."""
    folder = capstone.RunFolder(tmp_path)
    config = capstone.resolve_config("tiny")
    folder.start(config)
    saved = json.loads(folder.config_path.read_text())
    del saved["modality_dropout"]
    folder.config_path.write_text(json.dumps(saved))
    assert folder.start(config) is True
    both = capstone.RunFolder(tmp_path / "both")
    both.start(capstone.resolve_config("tiny", modality="both"))
    with pytest.raises(ValueError, match="different config"):
        both.start(capstone.resolve_config("tiny", modality="both", modality_dropout=0.0))


def test_load_config_of_a_non_run_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a run folder"):
        capstone.load_config(tmp_path)


def test_shapeworld_presets_use_the_object_detector_and_photos_the_grid():
    for name in ("notebook", "cpu", "colab-t4", "gpu-large"):
        model = capstone.resolve_config(name).model
        assert model["vision"] == "objects" and model["relation_head"], name
        photos = capstone.resolve_config(name, data="flickr8k:/data/flickr8k").model
        assert photos["vision"] == "grid" and not photos["relation_head"], name
        assert {k: v for k, v in photos.items() if k not in capstone.PHOTO_MODEL} == \
            {k: v for k, v in model.items() if k not in capstone.PHOTO_MODEL}


def _photo_folder(root, images="Images"):
    from PIL import Image

    (root / images).mkdir(parents=True)
    for name, color in [("dog.jpg", (200, 120, 40)), ("sea.jpg", (30, 90, 200))]:
        Image.new("RGB", (40, 30), color).save(root / images / name)
    return root


def test_photo_data_builds_rows_and_a_vocabulary_from_its_own_texts(tmp_path):
    from mmlm_course import instructions

    root = _photo_folder(tmp_path / "flickr8k")
    (root / "Flickr8k.token.txt").write_text("dog.jpg#0\tA brown dog runs\nsea.jpg#0\tThe blue sea\n")
    data = capstone.load_run_data(capstone.resolve_config("tiny", data=f"flickr8k:{root}"))
    assert data.x["images"].shape == (2, 32, 32, 3) and data.x["token_ids"].shape == data.y.shape
    assert data.tokenizer.id_to_token[4:7] == list(instructions.TASK_TOKENS)
    assert "dog" in data.tokenizer.token_to_id
    assert data.texts == ["<caption> A brown dog runs", "<caption> The blue sea"]
    assert data.tokenizer.decode(data.y[0]) == "a brown dog runs"


def test_vqa_data_has_questions_and_no_captions(tmp_path):
    root = _photo_folder(tmp_path / "vqa", images="images")
    (root / "images" / "dog.jpg").rename(root / "images" / "COCO_train2014_000000000001.jpg")
    (root / "images" / "sea.jpg").rename(root / "images" / "COCO_train2014_000000000002.jpg")
    questions = {"questions": [{"image_id": i, "question": q, "question_id": 10 + i}
                               for i, q in ((1, "what animal is it?"), (2, "what color is the sea?"))]}
    answers = {"annotations": [{"question_id": 11, "multiple_choice_answer": "dog"},
                               {"question_id": 12, "multiple_choice_answer": "blue"}]}
    (root / "q.json").write_text(json.dumps(questions))
    (root / "a.json").write_text(json.dumps(answers))
    spec = f"vqa:{root / 'q.json'},{root / 'a.json'},{root / 'images'}"
    data = capstone.load_run_data(capstone.resolve_config("tiny", data=spec))
    assert len(data.y) == 2 and data.tokenizer.decode(data.y[1]) == "blue"
    assert data.texts[0] == "<question> what animal is it? <answer> dog"


# Issue #16: a RunConfig with a bad field is refused when it is made, not mid-run.
@pytest.mark.parametrize("change,error,word", [
    ({"preset": None}, TypeError, "preset"),
    ({"data": 5}, TypeError, "spec"),
    ({"data": "nonsense"}, ValueError, "data kind"),
    ({"modality": "smell"}, ValueError, "modality"),
    ({"batch_size": 0}, ValueError, "batch_size"),
    ({"train_examples": "100"}, TypeError, "train_examples"),
    ({"train_examples": 10**9}, ValueError, "train_examples"),
    ({"learning_rate": float("nan")}, ValueError, "learning_rate"),
    ({"modality": "both", "modality_dropout": 1.5}, ValueError, "modality_dropout"),
    ({"modality_dropout": 0.3}, ValueError, "needs modality 'both'"),
])
def test_run_config_bad_fields(change, error, word):
    from mmlm_course.capstone import RunConfig
    with pytest.raises(error, match=word):
        RunConfig(**{"preset": "cpu", **change})


def test_run_config_unknown_preset():
    from mmlm_course.capstone import RunConfig
    with pytest.raises(ValueError, match="preset"):
        RunConfig(preset="no-such-preset")
