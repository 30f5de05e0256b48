"""`mmlm-course train` as a real job: run folder, SIGKILL mid-run and resume, generate."""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
TRAIN = [sys.executable, "-m", "mmlm_course.tools.cli", "train", "--preset", "tiny", "--no-progress"]


def _history(run):
    return [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]


def test_killed_run_resumes_from_its_last_checkpoint(tmp_path):
    run = tmp_path / "run"
    process = subprocess.Popen(TRAIN + ["--steps", "60", "--out", str(run)], cwd=ROOT,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    latest = run / "checkpoints" / "latest.json"
    deadline = time.time() + 600
    while time.time() < deadline and process.poll() is None:
        if latest.exists() and json.loads(latest.read_text())["step"] >= 8:
            break
        time.sleep(0.05)
    assert process.poll() is None, "the run ended before it could be killed: " + process.stdout.read()
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    saved_step = json.loads(latest.read_text())["step"]
    assert 8 <= saved_step < 60
    before = [r for r in _history(run) if r["step"] <= saved_step]
    assert [r["step"] for r in before] == list(range(1, saved_step + 1))

    resumed = subprocess.run(TRAIN + ["--steps", "60", "--out", str(run)], cwd=ROOT,
                             capture_output=True, text=True, timeout=900)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert f"resumed from step {saved_step}" in resumed.stdout
    after = _history(run)
    assert [r["step"] for r in after] == list(range(1, 61))          # every step once, none lost or repeated
    assert after[:saved_step] == before                              # what was saved is kept as it was
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["steps"] == 60 and {"test", "compositional"} <= set(metrics)
    for name in ("config.json", "vocab.json", "samples.png", "model.keras"):
        assert (run / name).exists(), name
    assert any((run / "tensorboard").iterdir())

    image = tmp_path / "photo.png"
    Image.new("RGBA", (100, 80), (200, 30, 30, 255)).save(image)
    answer = subprocess.run([sys.executable, "-m", "mmlm_course.tools.cli", "generate", "--run", str(run), "--image",
                             str(image), "--prompt", "how many objects are there?"], cwd=ROOT,
                            capture_output=True, text=True, timeout=600)
    assert answer.returncode == 0, answer.stderr
    assert answer.stdout.strip() == answer.stdout.strip().splitlines()[0]    # one line of text

    (tmp_path / "notes.png").write_text("not an image")
    wrong = subprocess.run([sys.executable, "-m", "mmlm_course.tools.cli", "generate", "--run", str(run), "--image",
                            str(tmp_path / "notes.png")], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert wrong.returncode == 2 and "notes.png is not a readable image" in wrong.stderr
    assert "Traceback" not in wrong.stderr


def test_train_refuses_a_folder_of_another_run(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"preset": "cpu"}))
    result = subprocess.run(TRAIN + ["--out", str(run)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 2 and "different config" in result.stderr


def test_generate_needs_a_run_folder(tmp_path):
    result = subprocess.run([sys.executable, "-m", "mmlm_course.tools.cli", "generate", "--run", str(tmp_path),
                             "--image", "x.png"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "not a run folder" in result.stderr


def test_object_vision_run_pretrains_the_detector_first(tmp_path):
    """In-process: stage 0 trains lesson 04's detector on the run's scenes, then the model trains and evaluates."""
    import keras

    from mmlm_course import capstone

    config = capstone.resolve_config(
        "tiny", train_examples=128, eval_examples=12, detector_examples=64, detector_epochs=1, pretrain_epochs=0,
        model=dict(image_size=64, vision="objects", relation_head=True, dim=16, num_layers=1, num_heads=2))
    lines = []
    metrics = capstone.train(config, tmp_path / "run", progress=False, log=lines.append)
    assert "stage 0: pretraining the object detector on 64 scenes" in lines
    assert not any("language model" in line for line in lines)       # pretrain_epochs=0 skips that part
    assert {"test", "compositional"} <= set(metrics)
    model = keras.models.load_model(tmp_path / "run" / "model.keras")
    assert model.config.vision == "objects" and model.relation_head is not None


def _killed_at(step):
    """A `training.train_steps` that stops the run after ``step`` (as a kill would)."""
    from mmlm_course import training

    real = training.train_steps

    def stopping(*args, on_step=None, **kwargs):
        if on_step is None:                    # a loop of stage 0 (lesson 09's CTC pretraining): not the run's
            return real(*args, **kwargs)

        def hook(done, logs):
            on_step(done, logs)
            if done == step:
                raise KeyboardInterrupt("killed")
        return real(*args, on_step=hook, **kwargs)
    return stopping


def test_a_run_killed_just_after_the_stage_boundary_resumes_exactly(tmp_path, monkeypatch):
    """The stage-1 boundary checkpoint holds stage 1's optimizer; a run killed before stage 2's
    first checkpoint must resume from it, with stage 2's fresh optimizer, and train exactly the
    steps an uninterrupted run trains."""
    from mmlm_course import capstone, training

    config = capstone.resolve_config("tiny", train_examples=96, eval_examples=8, stage1_steps=4, stage2_steps=6,
                                     checkpoint_every=100)             # checkpoints: step 0, 4 (boundary), 10
    capstone.train(config, tmp_path / "whole", progress=False, log=lambda line: None)

    real_train_steps = training.train_steps
    monkeypatch.setattr(training, "train_steps", _killed_at(6))
    with pytest.raises(KeyboardInterrupt):
        capstone.train(config, tmp_path / "killed", progress=False, log=lambda line: None)
    monkeypatch.setattr(training, "train_steps", real_train_steps)
    lines = []
    capstone.train(config, tmp_path / "killed", progress=False, log=lines.append)
    assert any(line.startswith("resumed from step 4") and "fresh optimizer" in line for line in lines), lines
    whole, resumed = _history(tmp_path / "whole"), _history(tmp_path / "killed")
    assert [r["step"] for r in resumed] == list(range(1, 11))
    assert [r["loss"] for r in resumed] == pytest.approx([r["loss"] for r in whole], rel=1e-5)


def test_a_batch_larger_than_the_data_is_one_clear_error_before_anything_is_written(tmp_path):
    run = tmp_path / "run"
    result = subprocess.run(TRAIN + ["--batch-size", "5000", "--out", str(run)], cwd=ROOT, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "batch size 5000 is larger than the 512 training rows" in result.stderr
    assert "Traceback" not in result.stderr and not (run / "config.json").exists()
    bad = subprocess.run(TRAIN + ["--batch-size", "0", "--out", str(run)], cwd=ROOT, capture_output=True, text=True,
                         timeout=600)
    assert bad.returncode == 2 and "--batch-size must be at least 1" in bad.stderr


def test_a_damaged_latest_checkpoint_falls_back_to_the_one_before(tmp_path, monkeypatch):
    from mmlm_course import capstone, training

    config = capstone.resolve_config("tiny", train_examples=96, eval_examples=8, stage1_steps=2, stage2_steps=14,
                                     checkpoint_every=4)
    run = tmp_path / "run"
    real = training.train_steps
    monkeypatch.setattr(training, "train_steps", _killed_at(14))
    with pytest.raises(KeyboardInterrupt):
        capstone.train(config, run, progress=False, log=lambda line: None)
    monkeypatch.setattr(training, "train_steps", real)
    weights = run / "checkpoints" / "step-00000012" / "model.weights.h5"
    weights.write_bytes(weights.read_bytes()[:1000])                  # a torn write, a disk error
    lines = []
    capstone.train(config, run, progress=False, log=lines.append)
    assert any(line.startswith("checkpoint step-00000012 cannot be read") for line in lines), lines
    assert any(line.startswith("resumed from step 8") for line in lines), lines
    assert [r["step"] for r in _history(run)] == list(range(1, 17))


def test_one_trainer_per_run_folder(tmp_path):
    from mmlm_course import capstone

    config = capstone.resolve_config("tiny", train_examples=64, eval_examples=4, stage1_steps=2, stage2_steps=2)
    holder = capstone.RunFolder(tmp_path / "run")
    holder.start(config)                                                # another trainer holds the folder
    with pytest.raises(ValueError, match=f"in use by process {os.getpid()}"):
        capstone.train(config, tmp_path / "run", progress=False, log=lambda line: None)
    holder.release()                                                    # it stopped (a kill drops the lock too)
    assert capstone.train(config, tmp_path / "run", progress=False, log=lambda line: None)["steps"] == 4


def test_photo_runs_train_on_every_caption_and_hold_out_a_tenth_of_the_images(tmp_path):
    from mmlm_course import capstone

    root = tmp_path / "flickr8k"
    (root / "Images").mkdir(parents=True)
    lines = []
    for i in range(12):
        Image.new("RGB", (40, 30), (20 * i, 100, 200 - 10 * i)).save(root / "Images" / f"p{i}.jpg")
        lines += [f"p{i}.jpg#0\tA photo number {i}", f"p{i}.jpg#1\tAnother view of it"]
    (root / "Images" / "broken.jpg").write_bytes(b"not a jpeg")
    lines.append("broken.jpg#0\tA broken file")
    (root / "Flickr8k.token.txt").write_text("\n".join(lines) + "\n")
    config = capstone.resolve_config("tiny", data=f"flickr8k:{root}")
    data = capstone.load_run_data(config)
    assert len(data.held_out.records) == 1                       # 12 readable images: 1 held out
    assert len(data.y) == 2 * 11                                 # both captions of the other 11
    held = int(data.held_out.records[0].image_path.stem[1:])
    trained = {data.tokenizer.decode(row) for row in data.y}
    assert f"a photo number {held}" not in trained
    assert all(f"a photo number {i}" in trained for i in range(12) if i != held)
    assert [Path(p).name for p, _ in data.skipped] == ["broken.jpg"]
    assert "held out for evaluation" in data.report
    again = capstone.load_run_data(config)                        # seeded: the same image held out
    assert again.held_out.records[0].image_path == data.held_out.records[0].image_path

    metrics = capstone.train(dataclasses.replace(config, batch_size=8, stage1_steps=2, stage2_steps=2, checkpoint_every=4),
                             tmp_path / "run", progress=False, log=lambda line: None)
    assert set(metrics["held_out"]) == {"images", "bleu4", "cider"} and 0.0 <= metrics["held_out"]["bleu4"] <= 1.0
    assert 0.0 <= metrics["held_out"]["cider"] <= 10.0
    assert (tmp_path / "run" / "samples.png").stat().st_size > 0
    assert "broken.jpg" in (tmp_path / "run" / "skipped.txt").read_text()


def _run_killed_at_step_5_then_resumed(modality, tmp_path, monkeypatch):
    """A tiny run of ``modality`` killed after step 5, then resumed: (run folder, metrics)."""
    from mmlm_course import capstone, training

    config = capstone.resolve_config("tiny", modality=modality)
    run, lines = tmp_path / "run", []
    monkeypatch.setattr(training, "train_steps", _killed_at(5))
    with pytest.raises(KeyboardInterrupt):
        capstone.train(config, run, progress=False, log=lines.append)
    monkeypatch.undo()
    assert "stage 0: pretraining the audio encoder with CTC for 4 steps" in lines
    saved = json.loads((run / "checkpoints" / "latest.json").read_text())["step"]
    assert saved == 4                                            # checkpoint_every=4: step 5 is redone
    metrics = capstone.train(config, run, progress=False, log=lines.append)
    assert f"resumed from step {saved} " in " ".join(lines) + " "
    assert [r["step"] for r in _history(run)] == list(range(1, config.total_steps + 1))
    return run, metrics


def test_an_audio_run_trains_resumes_and_answers_about_a_wav_file(tmp_path, monkeypatch):
    """Lesson 09's model as the main job: stage 0 pretrains the audio encoder with CTC, the
    run folder and resume are the image runs', and `generate --audio` reads a WAV file."""
    from mmlm_course import audio_io, capstone, shapeworld

    run, metrics = _run_killed_at_step_5_then_resumed("audio", tmp_path, monkeypatch)
    assert 0.0 <= metrics["test"]["caption_truth"] <= 1.0 and {"test", "compositional"} <= set(metrics)
    assert (run / "samples.png").exists() and (run / "model.keras").exists()

    wav = audio_io.save_wav(tmp_path / "scene.wav", shapeworld.render_sound(shapeworld.generate(1, "test").scenes[0]))
    generate = [sys.executable, "-m", "mmlm_course.tools.cli", "generate", "--run", str(run)]
    answer = subprocess.run(generate + ["--audio", str(wav), "--prompt", "how many objects are there?"], cwd=ROOT,
                            capture_output=True, text=True, timeout=600)
    assert answer.returncode == 0, answer.stderr
    assert answer.stdout.count("\n") == 1                       # one line: the answer (a tiny model's may be empty)
    image = tmp_path / "photo.png"
    Image.new("RGB", (64, 64)).save(image)
    wrong = subprocess.run(generate + ["--image", str(image)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert wrong.returncode == 2 and "--audio FILE" in wrong.stderr and "Traceback" not in wrong.stderr
    long = audio_io.save_wav(tmp_path / "long.wav", np.zeros(3 * 16000, np.float32))
    too_long = subprocess.run(generate + ["--audio", str(long)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert too_long.returncode == 2 and "1.6 s" in too_long.stderr
    import soundfile

    soundfile.write(tmp_path / "empty.wav", np.zeros(0, np.float32), 16000)       # a valid WAV of no samples
    with pytest.raises(ValueError, match="holds no samples"):
        capstone.generate_from_run(run, tmp_path / "empty.wav")


def test_a_run_of_both_sees_and_hears_resumes_and_answers_about_an_image_and_a_sound(tmp_path, monkeypatch):
    """``--modality both``: stage 0 pretrains the audio encoder, a killed run resumes, the
    metrics add the test split with each input muted, and `generate` takes both files."""
    import keras

    from mmlm_course import audio_io, audiovisual, capstone, shapeworld

    run, metrics = _run_killed_at_step_5_then_resumed("both", tmp_path, monkeypatch)
    assert {"test", "compositional", "test_image_only", "test_sound_only", "compositional_image_only"} <= set(metrics)
    assert isinstance(keras.models.load_model(run / "model.keras", compile=False), audiovisual.AudioVisualLLaVA)

    scene = shapeworld.generate(1, "test")
    image, wav = tmp_path / "scene.png", audio_io.save_wav(tmp_path / "scene.wav",
                                                           shapeworld.render_sound(scene.scenes[0]))
    Image.fromarray(scene.images[0]).save(image)
    generate = [sys.executable, "-m", "mmlm_course.tools.cli", "generate", "--run", str(run)]
    for files in (["--image", str(image), "--audio", str(wav)], ["--image", str(image)], ["--audio", str(wav)]):
        answer = subprocess.run(generate + files + ["--prompt", "how many objects are there?"], cwd=ROOT,
                                capture_output=True, text=True, timeout=600)   # modality dropout: either input alone
        assert answer.returncode == 0, answer.stderr
    wrong = subprocess.run(generate, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert wrong.returncode == 2 and "neither --image nor --audio" in wrong.stderr and "Traceback" not in wrong.stderr
    # trained without modality dropout, the model needs both inputs
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**config, "modality_dropout": 0.0}))
    wrong = subprocess.run(generate + ["--image", str(image)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert wrong.returncode == 2 and "--image FILE --audio FILE" in wrong.stderr, wrong.stderr
    with pytest.raises(ValueError, match="an image and a sound"):
        capstone.generate_from_run(run, image)


def test_audio_runs_refuse_a_photo_dataset():
    from mmlm_course import capstone

    for modality in ("audio", "both"):
        with pytest.raises(ValueError, match="ShapeWorld's sounds"):
            capstone.resolve_config("tiny", data="flickr8k:/nowhere", modality=modality)
    with pytest.raises(ValueError, match="modality"):
        capstone.resolve_config("tiny", modality="video")


def test_too_few_steps_are_refused_with_what_to_pass(tmp_path):
    from mmlm_course import capstone

    result = subprocess.run(TRAIN + ["--steps", "3", "--out", str(tmp_path / "run")], cwd=ROOT, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 2 and "at least 4" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "run").exists()
    with pytest.raises(ValueError, match="stage1_steps"):
        capstone.resolve_config("tiny", stage1_steps=1)


def test_a_damaged_run_folder_resumes_and_generate_says_what_it_answers_with(tmp_path, monkeypatch):
    """A torn config.json is rewritten from the checkpoint, damaged history lines are dropped,
    an unfinished run answers with a note, and an unreadable model.keras falls back to the checkpoint."""
    from mmlm_course import capstone, training

    config = capstone.resolve_config("tiny", train_examples=96, eval_examples=8, stage1_steps=2, stage2_steps=4,
                                     checkpoint_every=2)
    run, lines = tmp_path / "run", []
    monkeypatch.setattr(training, "train_steps", _killed_at(5))
    with pytest.raises(KeyboardInterrupt):
        capstone.train(config, run, progress=False, log=lambda line: None)
    monkeypatch.undo()
    capstone.load_trained(run, log=lines.append)
    assert lines == ["note: the run stopped at step 4 of 6; answering with its last checkpoint (run the same "
                     "`mmlm-course train` command again to finish it)."]
    (run / "config.json").write_text((run / "config.json").read_text()[:40])
    with pytest.raises(ValueError, match="config.json cannot be read"):
        capstone.load_config(run)
    with open(run / "history.jsonl", "a") as history:
        history.write('[1]\n7\n{"loss": 1.0}\n{"step": 3, "sta')
    capstone.train(config, run, progress=False, log=lines.append)
    assert any("config.json cannot be read" in line and "rewritten from checkpoint step-00000004" in line
               for line in lines), lines
    assert [r["step"] for r in _history(run)] == list(range(1, 7))
    assert capstone.load_config(run) == config
    (run / "model.keras").write_bytes(b"PK\x03\x04 a torn zip")
    lines.clear()
    capstone.load_trained(run, log=lines.append)
    assert len(lines) == 1 and "model.keras cannot be read" in lines[0] and "step-00000006" in lines[0]
    (run / "config.json").unlink()                                  # the checkpoints' config still counts
    with pytest.raises(ValueError, match="different config"):
        capstone.train(dataclasses.replace(config, seed=1), run, progress=False, log=lambda line: None)


def test_an_unwritable_out_or_a_full_disk_is_one_clear_error_and_the_run_resumes(tmp_path, monkeypatch):
    import errno

    import keras

    from mmlm_course import capstone

    config = capstone.resolve_config("tiny", train_examples=64, eval_examples=4, stage1_steps=2, stage2_steps=2)
    (tmp_path / "a-file").write_text("not a folder")
    with pytest.raises(ValueError, match="cannot use .*a-file as the run folder"):
        capstone.train(config, tmp_path / "a-file", progress=False, log=lambda line: None)

    def full(self, path, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(keras.Model, "save", full)
    with pytest.raises(ValueError, match="No space left on device.*run the same command again to resume"):
        capstone.train(config, tmp_path / "run", progress=False, log=lambda line: None)
    monkeypatch.undo()
    assert sorted(p.name for p in (tmp_path / "run").iterdir() if p.name.startswith(".")) == [".lock"]  # no debris
    lines = []
    capstone.train(config, tmp_path / "run", progress=False, log=lines.append)
    assert "resumed from step 4 (step-00000004)" in lines and (tmp_path / "run" / "model.keras").exists()


def test_ctrl_c_says_how_to_resume(tmp_path, monkeypatch, capsys):
    from mmlm_course import capstone
    from mmlm_course.tools import cli

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(capstone, "train", interrupted)
    assert cli.main(["train", "--preset", "tiny", "--out", str(tmp_path / "run")]) == 130
    assert "run the same command again to resume" in capsys.readouterr().err


def test_fewer_than_ten_photos_still_give_samples_of_the_training_photos(tmp_path):
    from mmlm_course import capstone

    root = tmp_path / "flickr8k"
    (root / "Images").mkdir(parents=True)
    for i in range(3):
        Image.new("RGB", (40, 30), (60 * i, 100, 20)).save(root / "Images" / f"p{i}.jpg")
    (root / "Flickr8k.token.txt").write_text("".join(f"p{i}.jpg#{k}\tphoto {i} view {k}\n" for i in range(3)
                                                     for k in range(5)))
    config = capstone.resolve_config("tiny", data=f"flickr8k:{root}", batch_size=8, stage1_steps=2, stage2_steps=2)
    lines = []
    metrics = capstone.train(config, tmp_path / "run", progress=False, log=lines.append)
    assert "held_out" not in metrics and any("samples.png shows training photos" in line for line in lines)
    assert (tmp_path / "run" / "samples.png").stat().st_size > 0
