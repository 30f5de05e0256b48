"""Capstone run plumbing that needs no model: presets, batch order, the run folder."""

import json

import numpy as np
import pytest

from mmlm_course import capstone


def test_presets_resolve_and_unknown_preset_is_named():
    for name in capstone.PRESETS:
        config = capstone.resolve_config(name)
        assert config.total_steps == config.stage1_steps + config.stage2_steps > 0
    gpu = capstone.resolve_config("colab-t4")
    assert gpu.mixed_precision and gpu.jit_compile
    assert not capstone.resolve_config("cpu").mixed_precision
    with pytest.raises(ValueError, match="Unknown preset 'laptop'.*cpu"):
        capstone.resolve_config("laptop")


def test_batch_indices_are_a_deterministic_function_of_the_step():
    rows, batch = 100, 32                     # 3 full batches per epoch, 4 rows dropped
    first = [capstone.batch_indices(rows, batch, seed=0, step=s) for s in range(6)]
    again = [capstone.batch_indices(rows, batch, seed=0, step=s) for s in range(6)]
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    epoch0 = np.concatenate(first[:3])
    assert len(set(epoch0.tolist())) == 96                   # no row twice within an epoch
    assert not np.array_equal(first[0], first[3])            # a new permutation each epoch
    with pytest.raises(ValueError, match="larger than the 10 training rows"):
        capstone.batch_indices(10, 32, 0, 0)


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
