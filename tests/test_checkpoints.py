import json

import keras
import numpy as np
import pytest

from mmlm_course.checkpoints import CheckpointStore


def _trained_model(steps=3, seed=0):
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="mse")
    x, y = np.ones((8, 4), "float32"), np.zeros((8, 1), "float32")
    for _ in range(steps):
        model.train_on_batch(x, y)
    return model


def test_round_trip_restores_weights_and_optimizer_state(tmp_path):
    model = _trained_model()
    store = CheckpointStore(tmp_path)
    store.save(model, model.optimizer, {"step": 3, "epoch": 0})
    fresh = _trained_model(steps=1, seed=1)
    state = store.restore(fresh, fresh.optimizer)
    assert state == {"step": 3, "epoch": 0}
    for a, b in zip(model.weights, fresh.weights):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    for a, b in zip(model.optimizer.variables, fresh.optimizer.variables):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_nothing_to_resume_and_pruning(tmp_path):
    model = _trained_model()
    store = CheckpointStore(tmp_path, keep=2)
    assert store.restore(model, model.optimizer) is None
    for step in (1, 2, 3):
        store.save(model, model.optimizer, {"step": step})
    assert sorted(p.name for p in tmp_path.glob("step-*")) == ["step-00000002", "step-00000003"]
    assert store.latest()[1]["step"] == 3


def test_a_torn_write_never_becomes_latest(tmp_path):
    model = _trained_model()
    store = CheckpointStore(tmp_path)
    store.save(model, model.optimizer, {"step": 5})
    torn = tmp_path / ".tmp-step-00000006-99999"   # what a kill during the next save leaves
    torn.mkdir()
    (torn / "model.weights.h5").write_bytes(b"half a file")
    assert json.loads((tmp_path / "latest.json").read_text())["step"] == 5
    assert store.restore(model, model.optimizer)["step"] == 5
    store.save(model, model.optimizer, {"step": 7})
    assert not torn.exists()


def test_mismatched_optimizer_is_named(tmp_path):
    model = _trained_model()
    CheckpointStore(tmp_path).save(model, model.optimizer, {"step": 1})
    other = _trained_model()
    other.compile(optimizer=keras.optimizers.SGD(momentum=0.0), loss="mse")
    other.train_on_batch(np.ones((2, 4), "float32"), np.zeros((2, 1), "float32"))
    with pytest.raises(ValueError, match="optimizer variables"):
        CheckpointStore(tmp_path).restore(other, other.optimizer)


def test_a_full_disk_is_one_clear_error_and_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    import errno

    model = _trained_model()
    optimizer = model.optimizer
    store = CheckpointStore(tmp_path / "ckpt")
    store.save(model, optimizer, {"step": 1})

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(np, "savez", full)
    with pytest.raises(ValueError, match="step 2 .*No space left on device.*previous checkpoint is kept"):
        store.save(model, optimizer, {"step": 2})
    assert store.latest()[1]["step"] == 1
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["latest.json", "step-00000001"]   # no debris
