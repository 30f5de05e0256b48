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


def _flip_a_byte(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 1
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", [
    lambda c: _flip_a_byte(c / "model.weights.h5"),                 # no reader notices: only the checksum does
    lambda c: _flip_a_byte(c / "optimizer.npz"),
    lambda c: (c / "state.json").write_text(json.dumps({"step": 99})),
    lambda c: (c / "manifest.json").unlink(),
    lambda c: ((c / "state.json").unlink(), (c / "state.json").mkdir()),
    lambda c: (c / "model.weights.h5").write_bytes((c.parent / "step-00000001" / "model.weights.h5").read_bytes()),
])
def test_a_damaged_checkpoint_is_skipped_for_the_one_before(tmp_path, damage):
    model = _trained_model()
    store = CheckpointStore(tmp_path)
    store.save(model, model.optimizer, {"step": 1})
    model.train_on_batch(np.ones((8, 4), "float32"), np.zeros((8, 1), "float32"))
    store.save(model, model.optimizer, {"step": 2})
    damage(tmp_path / "step-00000002")
    folder, state = store.latest()
    assert (folder.name, state["step"]) == ("step-00000001", 1)
    assert store.skipped and store.skipped[0][0] == "step-00000002"


def test_latest_json_cannot_point_outside_the_store_and_a_folder_in_its_place_is_replaced(tmp_path):
    model = _trained_model()
    store = CheckpointStore(tmp_path / "run")
    store.save(model, model.optimizer, {"step": 1})
    CheckpointStore(tmp_path / "other").save(model, model.optimizer, {"step": 7})
    (tmp_path / "run" / "latest.json").write_text(json.dumps({"checkpoint": "../other/step-00000007", "step": 7}))
    assert store.latest()[1]["step"] == 1 and store.skipped[0][0] == "latest.json"
    (tmp_path / "run" / "latest.json").unlink()
    (tmp_path / "run" / "latest.json").mkdir()
    (tmp_path / "run" / "step-00000002").write_text("a file where the next checkpoint goes")
    store.save(model, model.optimizer, {"step": 2})
    assert json.loads((tmp_path / "run" / "latest.json").read_text())["step"] == 2
    assert store.latest()[1]["step"] == 2


def test_too_little_free_space_is_refused_before_h5py_writes_anything(tmp_path, monkeypatch):
    """On a full disk h5py can crash the process: the free space is checked first."""
    import collections
    import shutil

    model = _trained_model()
    store = CheckpointStore(tmp_path)
    store.save(model, model.optimizer, {"step": 1})
    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 1000, 1000))
    with pytest.raises(ValueError, match="step 2 .*No space left on device: 1,000 bytes free"):
        store.save(model, model.optimizer, {"step": 2})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest.json", "step-00000001"]
