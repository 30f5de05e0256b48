"""Lesson 05: training: a learning-rate schedule, and the step loop of lessons 08 and 10.

- `WarmupCosineDecay`: linear warmup from 0 to a peak learning rate, then a cosine
  decay to a final rate, as used to train Transformers and CLIP (lessons 08 and 10 use it).
  A registered `keras.optimizers.schedules.LearningRateSchedule`, written with `keras.ops`.
- `schedule_values`: evaluate any schedule at a range of steps (for plots).
- `train_steps`: the course's one hand-written training loop, for runs counted in
  optimizer steps rather than epochs. It is *resumable*: the rows of step ``s`` are a pure
  function of ``(seed, s)`` (`batch_indices`), so a run stopped after any step continues
  from ``start_step`` with exactly the batches it would have seen. Lesson 08 trains its
  stages with it; lesson 10's job adds checkpoints and logs through its ``on_step`` hook.
  (Lessons that teach ``model.fit`` keep it.)
- `color_classification_data`: single-object ShapeWorld images labelled with the
  object's colour: a task small enough to train a model in a second, used for the
  lesson's hyperparameter search.
"""

from __future__ import annotations

import math
import time
from typing import Callable

import keras
import numpy as np
from keras import ops

from mmlm_course import shapeworld
from mmlm_course.validation import positive_int, require_array_budget, require_choice, require_float, require_int


@keras.saving.register_keras_serializable(package="mmlm_course")
class WarmupCosineDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Learning rate with a linear warmup and a cosine decay.

    ::

        step < warmup_steps:            peak * step / warmup_steps
        warmup_steps <= step < total:   final + (peak - final) * (1 + cos(pi * progress)) / 2,
                                        progress = (step - warmup_steps) / (total_steps - warmup_steps)
        step >= total_steps:            final

    Args:
        peak_learning_rate: the rate reached at the end of the warmup (> 0).
        total_steps: the number of optimizer steps of the whole run, warmup included
            (``epochs * steps_per_epoch``).
        warmup_steps: steps of linear warmup, in [0, total_steps). Warmup avoids large,
            badly aimed first steps while Adam's moment estimates are still noisy.
        final_learning_rate: the rate at the end, in [0, peak_learning_rate].

    Equal to ``keras.optimizers.schedules.CosineDecay(0.0, total_steps - warmup_steps,
    alpha=final / peak, warmup_target=peak, warmup_steps=warmup_steps)``; this version
    is parameterised by the total length of the run and validates its arguments.
    """

    def __init__(self, peak_learning_rate: float, total_steps: int, warmup_steps: int = 0,
                 final_learning_rate: float = 0.0, name: str = "WarmupCosineDecay"):
        super().__init__()
        self.peak_learning_rate = require_float(peak_learning_rate, "peak_learning_rate", low=0.0, low_open=True)
        self.total_steps = positive_int(total_steps, "total_steps")
        warmup_steps = require_int(warmup_steps, "warmup_steps")
        if not 0 <= warmup_steps < total_steps:
            raise ValueError(f"warmup_steps must lie in [0, total_steps) = [0, {total_steps}), got {warmup_steps}: "
                             "leave at least one step for the decay.")
        self.warmup_steps = warmup_steps
        final = require_float(final_learning_rate, "final_learning_rate")
        if not 0 <= final <= self.peak_learning_rate:
            raise ValueError(f"final_learning_rate must lie in [0, peak_learning_rate] = [0, {peak_learning_rate}], "
                             f"got {final_learning_rate!r}.")
        self.final_learning_rate = final
        self.name = name

    def __call__(self, step):
        step = ops.cast(step, "float32")
        peak, final = self.peak_learning_rate, self.final_learning_rate
        warmup = peak * step / max(self.warmup_steps, 1)
        decay_steps = self.total_steps - self.warmup_steps
        progress = ops.clip((step - self.warmup_steps) / decay_steps, 0.0, 1.0)
        cosine = final + (peak - final) * 0.5 * (1.0 + ops.cos(math.pi * progress))
        return ops.where(step < self.warmup_steps, warmup, cosine)

    def get_config(self):
        return {"peak_learning_rate": self.peak_learning_rate, "total_steps": self.total_steps,
                "warmup_steps": self.warmup_steps, "final_learning_rate": self.final_learning_rate,
                "name": self.name}


def schedule_values(schedule, steps) -> np.ndarray:
    """The learning rate of ``schedule`` (a LearningRateSchedule or any callable of the
    step) at each of ``steps``; returns float64 (len(steps),)."""
    if not callable(schedule):
        raise TypeError(f"schedule must be a LearningRateSchedule or a callable of the step, got {schedule!r}.")
    steps = np.asarray(steps)
    if steps.dtype.kind not in "iuf" or (steps.size and steps.min() < 0):
        raise TypeError(f"steps: expected step numbers (ints >= 0), got dtype {steps.dtype} with values "
                        f"{steps.ravel()[:5].tolist()}; e.g. np.arange(total_steps).")
    return np.array([float(schedule(int(step))) for step in steps], np.float64)


# --------------------------------------------------------------------------- the step loop


def batch_indices(num_rows: int, batch_size: int, seed: int, step: int) -> np.ndarray:
    """The row indices of global training step ``step`` (counted from 0): int (batch_size,).

    Each epoch is a fresh permutation of the rows seeded by ``(seed, epoch)``, and the last
    partial batch of an epoch is dropped, so step ``s`` is batch ``s mod n`` of epoch
    ``s div n`` (``n = num_rows // batch_size``) and always sees the same rows: that is
    what lets a resumed run continue at the exact batch it had reached.
    """
    num_rows, batch_size = positive_int(num_rows, "num_rows"), positive_int(batch_size, "batch_size")
    require_array_budget((num_rows,), 16, "num_rows (each epoch permutes every row)")
    steps_per_epoch = num_rows // batch_size
    if steps_per_epoch == 0:
        raise ValueError(f"batch_size={batch_size} is larger than the {num_rows} training rows: lower it.")
    epoch, position = divmod(require_int(step, "step", low=0), steps_per_epoch)
    order = np.random.default_rng([require_int(seed, "seed", low=0), epoch]).permutation(num_rows)
    return order[position * batch_size:(position + 1) * batch_size]


def _rows(x) -> int:
    return len(next(iter(x.values()))) if isinstance(x, dict) else len(x)


def _take(x, index):
    return {key: value[index] for key, value in x.items()} if isinstance(x, dict) else x[index]


def _batches(x, y, batch_size: int, seed: int, steps: range, prefetch: bool):
    """Yield ``(x_batch, y_batch)`` of NumPy arrays for each step of ``steps``.

    With ``prefetch`` and the TensorFlow backend they go through a `tf.data` pipeline that
    prepares the next batches on the CPU while the device trains; otherwise plain NumPy."""
    rows = _rows(x)

    def generator():
        for step in steps:
            index = batch_indices(rows, batch_size, seed, step)
            yield _take(x, index), y[index]

    if not prefetch or keras.backend.backend() != "tensorflow":
        yield from generator()
        return
    import tensorflow as tf

    signature = tf.nest.map_structure(
        lambda a: tf.TensorSpec((batch_size,) + a.shape[1:], tf.as_dtype(a.dtype)), (x, y))
    dataset = tf.data.Dataset.from_generator(generator, output_signature=signature).prefetch(tf.data.AUTOTUNE)
    yield from dataset.as_numpy_iterator()


def train_steps(model, x, y, steps: int, batch_size: int = 64, seed: int = 0, start_step: int = 0,
                log_every: int | None = None, on_step: Callable[[int, dict], None] | None = None,
                prefetch: bool = False) -> dict:
    """Train a compiled model on NumPy rows up to global step ``steps``, from ``start_step``.

    x: an array or a dict of arrays (a model's named inputs), y: the targets, one row per
    row of x. Step ``s`` (counted from 0) trains on the rows `batch_indices` gives it, with
    ``model.train_on_batch``, so the data stays NumPy and the loop runs on every Keras
    backend. ``start_step > 0`` resumes a run: calling ``train_steps(..., 40)`` and then
    ``train_steps(..., 100, start_step=40)`` trains the same batches as one call up to 100.

    ``on_step(step, logs)`` is called after every step with the number of steps done
    (``s + 1``) and the step's logs (a dict of floats, ``"loss"`` first): the hook for
    history files, progress bars and checkpoints. ``prefetch=True`` (TensorFlow backend)
    prepares the next batches in a `tf.data` pipeline while the current one trains: worth it
    when a GPU trains, while on a CPU both compete for the same cores.

    Returns ``{"steps": [...], "loss": [...], "seconds": s, "rows_per_second": r}``: the
    mean training loss of each ``log_every`` steps (default: 10 points), at global steps.
    """
    rows = _rows(x)
    for key, value in (x.items() if isinstance(x, dict) else [("x", x)]):
        if len(value) != rows:
            raise ValueError(f"every input must have the same number of rows, got {len(value)} {key!r} rows and "
                             f"{rows} in the first input.")
    if len(y) != rows:
        raise ValueError(f"x and y must have the same number of rows, got {rows} input rows and {len(y)} target "
                         "rows.")
    start_step = require_int(start_step, "start_step", low=0)
    steps = require_int(steps, "steps", low=start_step)
    batch_size = positive_int(batch_size, "batch_size")
    if batch_size > rows:
        raise ValueError(f"batch_size={batch_size} is larger than the {rows} training rows.")
    log_every = max(1, (steps - start_step) // 10) if log_every is None else positive_int(log_every, "log_every")
    logged_steps, logged_losses, window = [], [], []
    start = time.perf_counter()
    for step, (x_batch, y_batch) in zip(range(start_step, steps),
                                        _batches(x, y, batch_size, seed, range(start_step, steps), prefetch)):
        logs = {key: float(value) for key, value in model.train_on_batch(x_batch, y_batch, return_dict=True).items()}
        window.append(logs["loss"])
        done = step + 1
        if done % log_every == 0 or done == steps:
            logged_steps.append(done)
            logged_losses.append(float(np.mean(window)))
            window = []
        if on_step is not None:
            on_step(done, logs)
    seconds = time.perf_counter() - start
    return {"steps": logged_steps, "loss": logged_losses, "seconds": seconds,
            "rows_per_second": (steps - start_step) * batch_size / max(seconds, 1e-9)}


def color_classification_data(num_examples: int, split: str = "train", seed: int = 0,
                              image_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Single-object ShapeWorld images and the object's colour as a class id.

    Returns ``images`` uint8 (N, image_size, image_size, 3) (with ShapeWorld's pixel
    noise) and ``labels`` int32 (N,) indexing `shapeworld.COLOR_NAMES`. Deterministic
    from ``(split, seed)``; the splits use different random streams.
    """
    num_examples = positive_int(num_examples, "num_examples")
    require_choice(split, shapeworld.SPLITS, "split")
    image_size, seed = require_int(image_size, "image_size", 1), require_int(seed, "seed", 0)
    require_array_budget((num_examples, image_size, image_size, 3), 40, "num_examples and image_size")
    rng = np.random.default_rng([shapeworld.SPLITS.index(split), seed, 5])
    images = np.empty((num_examples, image_size, image_size, 3), np.uint8)
    labels = np.empty(num_examples, np.int32)
    for i in range(num_examples):
        scene = shapeworld.sample_scene(rng, split, num_objects=1)
        images[i] = shapeworld.render_image(scene, image_size, rng)
        labels[i] = shapeworld.COLOR_NAMES.index(scene.objects[0].color)
    return images, labels
