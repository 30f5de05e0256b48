"""Lesson 10, the capstone: train lesson 08's multimodal LLM (with ``modality="audio"``
lesson 09's audio LLaVA; with ``modality="both"`` one model that sees and hears,
`audiovisual.AudioVisualLLaVA`) as a real job.

`train` is what `mmlm-course train` runs and what the capstone notebook calls. It
- resolves a *preset* (from a 2-core CPU to a large GPU) into a `RunConfig`, prints it
  with the device found, and writes it to the run folder as ``config.json``;
- trains in lesson 08's stages (`stages`: the detector and the language model alone, then
  the projector, then everything) with lesson 05's step loop, `training.train_steps`,
  which runs under any Keras backend (data arrives as NumPy batches; on a GPU with the
  TensorFlow backend, through a `tf.data` pipeline that prepares the next batches meanwhile);
- saves an atomic checkpoint every ``checkpoint_every`` steps (`mmlm_course.checkpoints`)
  and, when started again with the same ``out`` folder, resumes from the last one at the
  exact batch it had reached, mid-epoch included (the batch of a step is a function of
  the step: `training.batch_indices`);
- logs every step to ``history.jsonl`` and TensorBoard (when the ``tensorboard`` package
  is installed);
- evaluates caption truth and question-answering exact match on the test and
  compositional splits (ShapeWorld; a model of both inputs also with the sound muted, on
  both splits, and with the picture black, on the test split), or BLEU-4, CIDEr-D and
  exact match on the held-out photos of a real dataset, and writes ``metrics.json`` and
  ``samples.png`` (and ``skipped.txt``, the images a real dataset could not read).

Run folder layout::

    OUT/config.json  vocab.json  history.jsonl  metrics.json  samples.png
    OUT/checkpoints/latest.json  step-00000120/...    OUT/model.keras    OUT/tensorboard/
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from mmlm_course import env
from mmlm_course.checkpoints import CheckpointStore, replace_atomically, require_space, write_atomically
from mmlm_course.run_data import evaluate_photos, load_run_data, save_photo_samples, save_samples
from mmlm_course.datasets import parse_data_spec
from mmlm_course.validation import require_choice, require_float, require_int, require_str


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """Everything that defines a run. ``model`` is a dict of `mllm.MLLMConfig` fields, or
    with ``modality="audio"`` of `audio_lm.AudioLLaVA` arguments (lesson 09; ShapeWorld's
    sounds, its front end pretrained with CTC for ``ctc_steps`` steps in stage 0), or with
    ``modality="both"`` of both (`audiovisual.build_model`), each training row losing its
    picture or its sound with probability ``modality_dropout`` (`audiovisual.make_examples`)."""

    preset: str
    data: str = "shapeworld"
    modality: str = "image"
    train_examples: int = 6000
    detector_examples: int = 6000
    detector_epochs: int = 3
    ctc_steps: int = 800
    modality_dropout: float = 0.0
    eval_examples: int = 600
    batch_size: int = 64
    pretrain_epochs: int = 1
    stage1_steps: int = 100
    stage2_steps: int = 900
    learning_rate: float = 3e-3
    stage1_learning_rate: float = 3e-3
    checkpoint_every: int = 100
    mixed_precision: bool = False
    jit_compile: bool = False
    seed: int = 0
    model: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        require_choice(require_str(self.preset, "preset"), tuple(PRESETS) + tuple(AUDIO_PRESETS), "preset")
        parse_data_spec(self.data)
        require_choice(self.modality, MODALITIES, "modality")
        for name, low in (("train_examples", 1), ("eval_examples", 1), ("batch_size", 1), ("detector_examples", 0),
                          ("detector_epochs", 0), ("ctc_steps", 0), ("pretrain_epochs", 0), ("checkpoint_every", 1),
                          ("seed", 0)):
            require_int(getattr(self, name), name, low, 10**7)
        for name in ("learning_rate", "stage1_learning_rate"):
            require_float(getattr(self, name), name, 0.0, 10.0, low_open=True)
        require_float(self.modality_dropout, "modality_dropout", 0.0, 1.0)
        if self.modality_dropout and self.modality != "both":
            raise ValueError(f"modality_dropout drops the picture or the sound of a row: it needs modality 'both', "
                             f"got modality {self.modality!r} with modality_dropout={self.modality_dropout}.")
        for name in ("stage1_steps", "stage2_steps"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 2:
                raise ValueError(f"{name} must be a whole number of at least 2 (a stage's warmup-cosine learning rate "
                                 f"needs two steps), got {getattr(self, name)!r}.")

    @property
    def total_steps(self) -> int:
        return self.stage1_steps + self.stage2_steps


# Lesson 08's model for ShapeWorld: lesson 04's object detector, pretrained and frozen, as
# the vision tower (one token per object), and lesson 04's relation network read at every
# text position (`relation_head.RelationHead`), as lesson 08 trains it in a minute. Without the relation
# head, relation questions fall to chance and every other answer suffers (lesson 08's ablation table).
_SHAPEWORLD_MODEL = dict(image_size=64, vision="objects", relation_head=True)
# Photos (Flickr8k, COCO, VQA) have no object labels to pretrain the detector on: there the
# model learns a grid image encoder with the rest (`grid_encoder.GridImageEncoder`).
PHOTO_MODEL = dict(vision="grid", relation_head=False)

PRESETS: dict[str, dict] = {
    # Seconds: for tests and a first look.
    # (a grid encoder on 32x32 images: the quickest model to build and to train a few steps)
    "tiny": dict(train_examples=256, eval_examples=60, batch_size=32, stage1_steps=4, stage2_steps=12,
                 checkpoint_every=4, model=dict(image_size=32, stem=1, dim=32, num_layers=1, num_heads=2,
                                                encoder_filters=[16, 32, 32], vision_dim=32)),
    # The capstone notebook: within its 180 s budget on a 2-core CPU.
    "notebook": dict(train_examples=8000, eval_examples=200, batch_size=64, detector_examples=4000, stage1_steps=100,
                     stage2_steps=1400, learning_rate=3e-3, checkpoint_every=500,
                     model=dict(_SHAPEWORLD_MODEL, num_layers=2)),
    # `mmlm-course train` with no arguments: lesson 08's recipe, at most 10 minutes on a 2-core CPU.
    "cpu": dict(train_examples=32000, eval_examples=1000, batch_size=64, stage1_steps=200, stage2_steps=3800,
                learning_rate=3e-3, checkpoint_every=200, model=dict(_SHAPEWORLD_MODEL, num_layers=2)),
    # A Colab T4 (16 GB): a bigger model and batches, float16 compute, XLA.
    "colab-t4": dict(train_examples=100000, eval_examples=2000, batch_size=256, stage1_steps=300, stage2_steps=6000,
                     checkpoint_every=500, learning_rate=1e-3, mixed_precision=True, jit_compile=True,
                     model=dict(_SHAPEWORLD_MODEL, dim=256, num_layers=4, num_heads=8, encoder_filters=[64, 128, 128],
                                vision_dim=128)),
    # A large GPU (A100 / H100 class).
    "gpu-large": dict(train_examples=300000, eval_examples=5000, batch_size=512, stage1_steps=500, stage2_steps=10000,
                      checkpoint_every=1000, learning_rate=8e-4, mixed_precision=True, jit_compile=True,
                      model=dict(_SHAPEWORLD_MODEL, dim=512, num_layers=6, num_heads=8,
                                 encoder_filters=[64, 128, 256], vision_dim=256)),
}


# Lesson 09's audio model per preset: ShapeWorld's sounds (log-mels take 25 KB a clip, so
# fewer clips than images), the front end pretrained with CTC, its best path read as note
# tokens with lesson 08's relation head (`audio_lm.AudioLLaVA`), the language model's sizes.
# The `cpu` preset is the recipe of `mmlm-course benchmark --only audio_lm`.
_SOUND_MODEL = dict(tokens="notes", relation_head=True)
AUDIO_PRESETS: dict[str, dict] = {
    "tiny": dict(train_examples=64, eval_examples=12, batch_size=16, ctc_steps=4, stage1_steps=2, stage2_steps=6,
                 checkpoint_every=4, model=dict(_SOUND_MODEL, dim=32, num_layers=1, num_heads=2)),
    "notebook": dict(train_examples=3000, eval_examples=200, batch_size=32, ctc_steps=300, stage1_steps=30,
                     stage2_steps=800, pretrain_epochs=0, checkpoint_every=200, model=dict(_SOUND_MODEL, num_layers=2)),
    "cpu": dict(train_examples=6000, eval_examples=500, batch_size=32, ctc_steps=800, stage1_steps=50,
                stage2_steps=8000, pretrain_epochs=0, checkpoint_every=500, model=dict(_SOUND_MODEL, num_layers=2)),
    "colab-t4": dict(train_examples=20000, eval_examples=2000, batch_size=128, ctc_steps=2000, stage1_steps=200,
                     stage2_steps=6000, learning_rate=1e-3, checkpoint_every=500, mixed_precision=True,
                     jit_compile=True, model=dict(_SOUND_MODEL, dim=256, num_layers=4, num_heads=8)),
    "gpu-large": dict(train_examples=50000, eval_examples=5000, batch_size=256, ctc_steps=4000, stage1_steps=300,
                      stage2_steps=10000, learning_rate=8e-4, checkpoint_every=1000, mixed_precision=True,
                      jit_compile=True, model=dict(_SOUND_MODEL, dim=512, num_layers=6, num_heads=8)),
}
# Lesson 10's model of both inputs: each preset's image model with lesson 09's audio front
# end beside it, on as many scenes as the audio preset and with its CTC pretraining.
BOTH_PRESETS: dict[str, dict] = {
    name: {**PRESETS[name], "train_examples": AUDIO_PRESETS[name]["train_examples"],
           "ctc_steps": AUDIO_PRESETS[name]["ctc_steps"], "modality_dropout": 0.5,
           "model": {**PRESETS[name]["model"], "stack": 8}}
    for name in PRESETS}
MODALITIES = ("image", "audio", "both")


def resolve_config(preset: str = "cpu", data: str = "shapeworld", modality: str = "image",
                   **overrides) -> RunConfig:
    """The `RunConfig` of a named preset, with ``overrides`` applied. For a real dataset
    (``data`` other than ShapeWorld) the model's vision becomes `PHOTO_MODEL`'s grid
    encoder: the object detector can only be pretrained on ShapeWorld scenes. With
    ``modality="audio"`` the preset's `AUDIO_PRESETS` entry is used: lesson 09's model on
    ShapeWorld's sounds; with ``"both"`` its `BOTH_PRESETS` entry."""
    require_choice(preset, tuple(PRESETS), "preset")
    require_choice(modality, MODALITIES, "modality")
    if modality != "image":
        if data != "shapeworld":
            raise ValueError(f"modality {modality!r} trains on ShapeWorld's sounds; data {data!r} is an image-text "
                             f"dataset. Use --data shapeworld with --modality {modality}, or --modality image for "
                             "that dataset.")
        presets = AUDIO_PRESETS if modality == "audio" else BOTH_PRESETS
        return RunConfig(preset=preset, data=data, modality=modality, **{**presets[preset], **overrides})
    fields = {**PRESETS[preset], **overrides}
    if data != "shapeworld":
        fields["model"] = {**fields.get("model", {}), **PHOTO_MODEL}
    return RunConfig(preset=preset, data=data, **fields)


def describe_device() -> str:
    """A one-line description of the device the active Keras backend will use."""
    report = env.environment_report()
    return f"backend {report['keras_backend']}, devices: {', '.join(report['devices'])}"


# --------------------------------------------------------------------------- the run folder


class RunFolder:
    """Paths and small files of one run."""

    def __init__(self, out):
        self.root = Path(out)
        self.checkpoints = CheckpointStore(self.root / "checkpoints")

    config_path = property(lambda self: self.root / "config.json")
    vocab_path = property(lambda self: self.root / "vocab.json")
    history_path = property(lambda self: self.root / "history.jsonl")
    metrics_path = property(lambda self: self.root / "metrics.json")
    model_path = property(lambda self: self.root / "model.keras")
    samples_path = property(lambda self: self.root / "samples.png")

    def start(self, config: RunConfig, log=print) -> bool:
        """Create or reopen the folder and take its lock; True when resuming. A folder that
        holds another config is refused rather than mixed with this one, and so is a folder
        another process is training in (the lock is the operating system's ``flock`` on
        ``.lock``: a killed process drops it, so its run can be resumed at once). A damaged or
        missing ``config.json`` is rewritten from the copy in the latest checkpoint (or, with
        no checkpoint yet, from ``config``: nothing trained is lost)."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise ValueError(f"cannot use {self.root} as the run folder ({error.strerror or error}): give --out a "
                             "folder you can write to.") from None
        self._take_lock()
        wanted = json.loads(json.dumps(dataclasses.asdict(config)))
        saved, problem = _read_config(self.config_path)
        latest = self.checkpoints.latest() if saved is None else None
        if latest is not None or problem:              # checkpoints without a config.json: theirs counts
            problem = problem or "it is missing"
            saved = wanted if latest is None else latest[1].get("config")
            if saved is None:
                raise ValueError(f"{self.config_path} cannot be read ({problem}) and the checkpoints do not record "
                                 "the run's config: put the file back, or choose a new --out.")
            log(f"{self.config_path} cannot be read ({problem}): rewritten from "
                + ("the options given (no checkpoint yet)" if latest is None else f"checkpoint {latest[0].name}"))
        if saved is not None and {**_DEFAULTS, **saved} != wanted:     # a field added since: its default
            raise ValueError(f"{self.root} holds a run with a different config ({self.config_path}); "
                             "resume it with the same options, or choose a new --out.")
        if saved is None or problem:
            write_atomically(self.config_path, json.dumps(wanted, indent=1, sort_keys=True))
        return saved is not None

    def _take_lock(self) -> None:
        try:
            import fcntl
        except ImportError:                      # Windows: no flock; one trainer per folder is then up to you
            return
        try:
            self._lock = open(self.root / ".lock", "a+")
        except OSError as error:
            raise ValueError(f"cannot lock the run folder {self.root} ({error.strerror or error} on "
                             f"{self.root / '.lock'}): give --out a folder you can write to.") from None
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.seek(0)
            holder = self._lock.read().strip() or "another process"
            self.release()
            raise ValueError(f"{self.root} is in use by {holder}: wait for that run to finish (or stop it), "
                             "or choose another --out.") from None
        self._lock.seek(0)
        self._lock.truncate()
        self._lock.write(f"process {os.getpid()}")
        self._lock.flush()

    def release(self) -> None:
        """Drop the folder's lock (closing the file releases the ``flock``)."""
        lock, self._lock = getattr(self, "_lock", None), None
        if lock is not None:
            lock.close()

    def history(self, up_to_step: int) -> list[dict]:
        """Logged steps 1..up_to_step (later ones were not checkpointed: they are redone)."""
        if not self.history_path.exists():
            return []
        rows = {}
        for line in self.history_path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:  # a line torn by a kill (or damaged): its step is redone anyway
                continue
            if isinstance(row, dict) and isinstance(row.get("step"), int) and 1 <= row["step"] <= up_to_step:
                rows[row["step"]] = row
        return [rows[step] for step in sorted(rows)]

_DEFAULTS = {f.name: f.default for f in dataclasses.fields(RunConfig) if f.default is not dataclasses.MISSING}


def _read_config(path: Path) -> tuple[dict | None, str | None]:
    """(the saved config dict, None), (None, None) when there is none, or (None, why it cannot be read)."""
    if not path.exists():
        return None, None
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        return None, f"{type(error).__name__}: {error}"
    if not isinstance(saved, dict) or not set(saved) <= {f.name for f in dataclasses.fields(RunConfig)}:
        return None, "it is not the config of a run"
    return saved, None


def load_config(run_dir) -> RunConfig:
    """The `RunConfig` saved in a run folder."""
    path = Path(run_dir) / "config.json"
    saved, problem = _read_config(path)
    if problem:
        raise ValueError(f"{path} cannot be read ({problem}): run `mmlm-course train` with the run's options and "
                         f"--out {run_dir} to rewrite it from its checkpoints.")
    if saved is None:
        raise FileNotFoundError(f"{run_dir} is not a run folder (no config.json); train one with "
                                "`mmlm-course train --out DIR`.")
    try:
        return RunConfig(**saved)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{path} does not hold a valid run config ({error}).") from None


# --------------------------------------------------------------------------- training


def _apply_precision(config: RunConfig, has_gpu: bool, log) -> None:
    import keras

    if config.mixed_precision and not has_gpu:
        log("note: this preset asks for mixed precision, but no GPU was found: training in float32 instead.")
    keras.mixed_precision.set_global_policy("mixed_float16" if config.mixed_precision and has_gpu else "float32")


def _tensorboard_writer(folder: Path):
    """A function (step, dict of scalars) -> None writing TensorBoard events with the
    ``tensorboard`` package's framework-free writer, or a no-op when it is not installed."""
    try:
        from tensorboard.summary import Writer
    except ImportError:
        return lambda step, scalars: None
    writer = Writer(str(folder))

    def write(step, scalars):
        for name, value in scalars.items():
            writer.add_scalar(name, value, step=step)
        writer.flush()

    return write


def train(config: RunConfig, out, progress: bool = True, log=print) -> dict:
    """Train (or resume) the run in ``out``; return the final metrics dict. One process
    at a time: a second trainer on the same folder is refused (`RunFolder.start`)."""
    folder = RunFolder(out)
    try:
        return _train(config, folder, progress, log)
    except OSError as error:
        if error.errno is None:            # one of the course's own messages (a missing dataset file)
            raise
        raise ValueError(f"could not read or write {error.filename or folder.root} ({error.strerror}): fix that (free "
                         "space, or move what is in the way), then run the same command again to resume.") from None
    finally:
        folder.release()


def _train(config: RunConfig, folder: "RunFolder", progress: bool, log) -> dict:
    import keras
    from tqdm import tqdm

    from mmlm_course import audio_lm, audiovisual, detector, generation, stages, training

    has_gpu = env.has_gpu()
    log(f"preset {config.preset} on {describe_device()}")
    _apply_precision(config, has_gpu, log)
    keras.utils.set_random_seed(config.seed)

    data = load_run_data(config)          # data and arguments are checked before the folder is written
    log(data.report)
    for path, reason in data.skipped[:5]:
        log(f"  skipped {path}: {reason}")
    if len(data.skipped) > 5:
        log(f"  ... and {len(data.skipped) - 5} more: every skipped file is listed in skipped.txt")
    rows = len(data.y)
    if config.batch_size > rows:
        raise ValueError(f"batch size {config.batch_size} is larger than the {rows} training rows of "
                         f"{config.data!r}: pass --batch-size {rows} or less, or use more data.")
    resuming = folder.start(config, log)
    replace_atomically(folder.vocab_path, data.tokenizer.save)
    if data.skipped:
        write_atomically(folder.root / "skipped.txt", "".join(f"{path}\t{reason}\n" for path, reason in data.skipped))
    model = build_run_model(config, data.tokenizer)
    hears, sees = config.modality != "image", config.modality != "audio"
    decoder = model.language_model
    log("model: " + ", ".join(([f"vision {model.config.vision!r}"] if sees else [])
                              + (["relation head"] if getattr(model, "relation_head", None) is not None else [])
                              + ([f"{model.num_audio_tokens} audio tokens"] if hears else [])
                              + [f"{len(decoder.blocks)} layers of width {decoder.dim}"]))
    jit = config.jit_compile and has_gpu

    def compile_stage(stage: int) -> int:
        learning_rate = config.stage1_learning_rate if stage == 1 else config.learning_rate
        steps = config.stage1_steps if stage == 1 else config.stage2_steps
        return stages.compile_for_stage(model, stage, learning_rate, total_steps=steps, jit_compile=jit)

    state = folder.checkpoints.latest()
    for name, problem in folder.checkpoints.skipped:
        log(f"checkpoint {name} cannot be read ({problem}): "
            + ("using the one before it" if state else "no readable checkpoint is left: starting from step 0"))
    pretrained_now = False
    uses_detector = sees and model.config.vision == "objects"
    if state is None and (hears or uses_detector or config.pretrain_epochs):
        # Stage 0: the parts that are pretrained alone first (lesson 08). The object
        # detector learns from the scenes (lesson 04), the audio front end from CTC
        # transcription (lesson 09), and both stay frozen; the language model learns the
        # text, so that stage 1 aligns the projector to a model that already speaks ShapeWorld.
        if hears:
            log(f"stage 0: pretraining the audio encoder with CTC for {config.ctc_steps} steps")
            transcriber = audio_lm.pretrain_transcriber(data.scenes, config.ctc_steps, seed=config.seed)
            model.load_transcriber(transcriber)
        if uses_detector:
            world = data.scenes.world if hears else data.scenes
            scenes = world.subset(range(min(config.detector_examples, len(world))))
            log(f"stage 0: pretraining the object detector on {len(scenes)} scenes")
            token_model, _ = detector.pretrain_object_encoder(scenes, epochs=config.detector_epochs)
            stages.load_object_encoder(model, token_model)
        if config.pretrain_epochs:
            log(f"stage 0: pretraining the language model on {len(data.texts)} texts")
            stages.pretrain_language_model(model, data.texts, data.tokenizer, epochs=config.pretrain_epochs,
                                           batch_size=config.batch_size, learning_rate=config.stage1_learning_rate)
        compile_stage(1)
        folder.checkpoints.save(model, model.optimizer, {"step": 0, "stage": 0, "config": dataclasses.asdict(config)})
        state, pretrained_now = folder.checkpoints.latest(), True
    start_step = state[1]["step"] if state else 0
    stage = 1 if start_step < config.stage1_steps else 2
    trainable = compile_stage(stage)
    if state and not pretrained_now:
        # A checkpoint from the end of an earlier stage (stage 0's, or stage 1's last step)
        # holds that stage's optimizer; the new stage starts a fresh one, stopped or not.
        same_stage = state[1].get("stage") == stage
        folder.checkpoints.restore(model, model.optimizer if same_stage else None)
        log(f"resumed from step {start_step} ({state[0].name})"
            + ("" if same_stage else f"; stage {stage} starts with a fresh optimizer, as without the stop"))
    elif resuming:
        log("no checkpoint yet in this run folder: starting from step 0")
    history = folder.history(start_step)
    write_atomically(folder.history_path, "".join(json.dumps(row) + "\n" for row in history))
    last_loss = history[-1].get("loss") if history else None
    log(f"stage {stage}: {trainable:,} trainable parameters")
    write_scalars = _tensorboard_writer(folder.root / "tensorboard")

    first_step, started = start_step, time.perf_counter()
    bar = tqdm(total=config.total_steps, initial=start_step, disable=not progress, file=sys.stderr,
               desc="training", unit="step", mininterval=1.0, dynamic_ncols=True)
    with open(folder.history_path, "a", encoding="utf-8") as history_file:

        def after_step(done: int, logs: dict) -> None:
            """History, TensorBoard and progress after every step; a checkpoint every
            ``checkpoint_every`` steps and at the end of each stage."""
            nonlocal last_loss
            last_loss = logs.get("loss")
            history_file.write(json.dumps({"step": done, "stage": stage, **logs}) + "\n")
            write_scalars(done, {f"train/{k}": v for k, v in logs.items()})
            bar.update(1)
            bar.set_postfix(loss=f"{last_loss:.3f}", stage=stage)
            if done % config.checkpoint_every == 0 or done in (config.stage1_steps, config.total_steps):
                history_file.flush()
                folder.checkpoints.save(model, model.optimizer,
                                        {"step": done, "stage": stage, "config": dataclasses.asdict(config)})

        for stage_number, end in ((1, config.stage1_steps), (2, config.total_steps)):
            if start_step >= end:
                continue
            if stage_number != stage:
                stage = stage_number
                log(f"stage {stage}: {compile_stage(stage):,} trainable parameters")
            training.train_steps(model, data.x, data.y, end, config.batch_size, seed=config.seed,
                                 start_step=start_step, on_step=after_step, prefetch=has_gpu)
            start_step = end
    bar.close()
    seconds = time.perf_counter() - started
    trained_steps = config.total_steps - first_step
    log(f"trained {trained_steps} steps in {seconds:.1f} s "
        f"({trained_steps * config.batch_size / max(seconds, 1e-9):.0f} examples/s)")

    require_space(folder.root, model.weights)
    replace_atomically(folder.model_path, model.save)
    metrics = {"steps": config.total_steps, "train_seconds_this_session": round(seconds, 1),
               "examples_per_second": round(trained_steps * config.batch_size / max(seconds, 1e-9), 1),
               "final_loss": last_loss}
    evaluate = {"audio": audio_lm.evaluate, "both": audiovisual.evaluate}.get(config.modality, generation.evaluate)
    runs = [(split, split, {}) for split in data.eval_sets]
    if config.modality == "both":      # what each input contributes: one muted, then the other
        runs += [("test_image_only", "test", {"senses": "image"}), ("test_sound_only", "test", {"senses": "sound"}),
                 ("compositional_image_only", "compositional", {"senses": "image"})]
    for name, split, options in runs:
        figures = evaluate(model, data.tokenizer, data.eval_sets[split], **options)
        metrics[name] = {"caption_truth": figures["caption_truth"], "qa_exact_match": figures["qa_exact_match"],
                         "qa_by_type": figures.get("qa_by_type", {})}
        log(f"{name}: caption truth {figures['caption_truth']:.1%}, QA exact match {figures['qa_exact_match']:.1%}")
    if data.held_out is not None:
        metrics["held_out"] = evaluate_photos(model, data.tokenizer, data.held_out)
        log("held out: " + ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}"
                                     for k, v in metrics["held_out"].items()))
    write_atomically(folder.metrics_path, json.dumps(metrics, indent=1))
    if data.eval_sets:
        replace_atomically(folder.samples_path, lambda path: save_samples(model, data.tokenizer,
                                                                           data.eval_sets["test"], path))
    else:                                 # photos: held out, or with fewer than 10 images the training ones
        replace_atomically(folder.samples_path, lambda path: save_photo_samples(model, data.tokenizer,
                                                                                 data.sample_photos, path))
    return metrics


def build_run_model(config: RunConfig, tokenizer):
    """The built, untrained model of a run: `mllm.build_model` for images, lesson 09's
    `audio_lm.AudioLLaVA` for ``modality="audio"``, `audiovisual.build_model` for both."""
    from mmlm_course import audio_lm, audiovisual, mllm

    if config.modality == "both":
        return audiovisual.build_model(config.model, tokenizer)
    if config.modality == "audio":
        model = audio_lm.AudioLLaVA(len(tokenizer), **config.model)
        model.build()
        return model
    return mllm.build_model(mllm.MLLMConfig(**config.model), tokenizer)


def load_trained(run_dir, log=print):
    """(model, tokenizer, config) of a finished run (its ``model.keras``), or of its
    latest checkpoint when the run was interrupted or its ``model.keras`` cannot be read
    (a note through ``log`` says so). For inference: the model comes back without its
    optimizer (``compile=False``); resuming training reads the checkpoints."""
    import keras

    from mmlm_course import preprocessing

    folder = RunFolder(run_dir)
    config = load_config(run_dir)
    try:
        tokenizer = preprocessing.Tokenizer.load(folder.vocab_path)
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ValueError(f"{folder.vocab_path} cannot be read ({type(error).__name__}: {error}): run "
                         f"`mmlm-course train` with the run's options and --out {run_dir} to write it again.") from None
    problem = None
    if folder.model_path.exists():
        try:
            return keras.models.load_model(folder.model_path, compile=False), tokenizer, config
        except Exception as error:       # keras, zipfile and h5py raise many kinds for a damaged file
            problem = f"{folder.model_path} cannot be read ({type(error).__name__}: {str(error)[:120]})"
    latest = folder.checkpoints.latest()
    if latest is None:
        raise FileNotFoundError(f"{problem or f'{run_dir} has no model.keras'} and no readable checkpoint: train "
                                "it (again) first.")
    if latest[1]["step"] == 0:
        raise ValueError(f"{run_dir} was stopped before its first training step (only the stage-0 checkpoint "
                         "exists): its answers would be an untrained model's. Resume the run first.")
    model = build_run_model(config, tokenizer)
    model.load_weights(latest[0] / "model.weights.h5")
    log(f"note: {problem}; answering with checkpoint {latest[0].name} instead." if problem else
        f"note: the run stopped at step {latest[1]['step']} of {config.total_steps}; answering with its last "
        "checkpoint (run the same `mmlm-course train` command again to finish it).")
    return model, tokenizer, config


def accepted_inputs(config: RunConfig) -> tuple[str, ...]:
    """What `generate_from_run` takes for a run: ``"image"``, ``"audio"`` or ``"both"`` (an
    image and a sound); a run of both trained with modality dropout takes either alone too."""
    if config.modality != "both":
        return (config.modality,)
    return ("both", "image", "audio") if config.modality_dropout else ("both",)


def generate_from_run(run_dir, path, prompt: str = "", max_new_tokens: int = 20, audio=None, log=print) -> str:
    """Answer ``prompt`` (empty: caption it) about the file at ``path``: an image for an
    image run, a sound file (WAV, FLAC, OGG or MP3) for an audio run (lesson 09). A run of
    both takes the image at ``path`` and the sound at ``audio``; trained with modality
    dropout, it also answers from one of them (``None`` for the other: black or silent).
    ``log`` gets `load_trained`'s note when the answer comes from a checkpoint."""
    from mmlm_course import audio_io, audio_lm, audiovisual, generation, preprocessing

    model, tokenizer, config = load_trained(run_dir, log)
    image_file, sound_file = (None, path) if config.modality == "audio" else (path, audio)
    given = {(True, False): "image", (False, True): "audio", (True, True): "both"}.get(
        (image_file is not None, sound_file is not None))
    if given not in accepted_inputs(config):
        words = {"both": "an image and a sound", "image": "an image", "audio": "a sound", None: "neither"}
        raise ValueError(f"this {config.modality} run takes "
                         + " or ".join(words[kind] for kind in accepted_inputs(config)) + f", got {words[given]}.")
    clips = None
    if sound_file is not None:
        wave = audio_io.load_audio(sound_file)                  # any encoding -> float32 mono at 16 kHz
        if not len(wave):
            raise ValueError(f"{sound_file} holds no samples: give a sound file with the scene's sound in it.")
        if len(wave) > audio_lm.CLIP_SAMPLES:
            raise ValueError(f"{sound_file} lasts {len(wave) / audio_lm.audio.COURSE_SAMPLE_RATE:.2f} s; the audio "
                             f"model hears clips of up to {audio_lm.CLIP_SAMPLES / audio_lm.audio.COURSE_SAMPLE_RATE} "
                             "s: cut it.")
        clips = audio_lm.sound_features([wave])                 # (1, frames, 40)
    if config.modality == "audio":
        return audio_lm.generate_texts(model, tokenizer, clips, [prompt], max_new_tokens=max_new_tokens)[0]
    size = model.config.image_size
    images = (np.zeros((1, size, size, 3), np.uint8) if image_file is None      # heard only: a black picture
              else preprocessing.load_image(image_file, size)[None])            # any mode -> uint8 (1, size, size, 3)
    if config.modality == "image":
        return generation.generate_texts(model, tokenizer, images, [prompt], max_new_tokens=max_new_tokens)[0]
    clips = audiovisual.silence()[None] if clips is None else clips            # seen only: a silent clip
    return audiovisual.generate_texts(model, tokenizer, images, clips, [prompt], max_new_tokens=max_new_tokens)[0]
