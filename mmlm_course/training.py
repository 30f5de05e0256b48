"""Lesson 05: training helpers: a warmup + cosine learning-rate schedule and a tiny task.

- `WarmupCosineDecay`: linear warmup from 0 to a peak learning rate, then a cosine
  decay to a final rate, as used to train Transformers and CLIP (lesson 09 imports it).
  A registered `keras.optimizers.schedules.LearningRateSchedule`, written with `keras.ops`.
- `schedule_values`: evaluate any schedule at a range of steps (for plots).
- `color_classification_data`: single-object ShapeWorld images labelled with the
  object's colour: a task small enough to train a model in a second, used for the
  lesson's hyperparameter search.
"""

from __future__ import annotations

import math

import keras
import numpy as np
from keras import ops

from mmlm_course import shapeworld


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
        if not isinstance(peak_learning_rate, (int, float)) or not 0 < peak_learning_rate < math.inf:
            raise ValueError(f"peak_learning_rate must be a positive number, got {peak_learning_rate!r}.")
        for arg, value in (("total_steps", total_steps), ("warmup_steps", warmup_steps)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise TypeError(f"{arg} must be an int (a number of optimizer steps), got {value!r}.")
        if total_steps < 1:
            raise ValueError(f"total_steps must be >= 1, got {total_steps}.")
        if not 0 <= warmup_steps < total_steps:
            raise ValueError(f"warmup_steps must lie in [0, total_steps) = [0, {total_steps}), got {warmup_steps}: "
                             "leave at least one step for the decay.")
        if not isinstance(final_learning_rate, (int, float)) or not 0 <= final_learning_rate <= peak_learning_rate:
            raise ValueError(f"final_learning_rate must lie in [0, peak_learning_rate] = [0, {peak_learning_rate}], "
                             f"got {final_learning_rate!r}.")
        self.peak_learning_rate = float(peak_learning_rate)
        self.total_steps = int(total_steps)
        self.warmup_steps = int(warmup_steps)
        self.final_learning_rate = float(final_learning_rate)
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
    return np.array([float(schedule(int(step))) for step in steps], np.float64)


def color_classification_data(num_examples: int, split: str = "train", seed: int = 0,
                              image_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Single-object ShapeWorld images and the object's colour as a class id.

    Returns ``images`` uint8 (N, image_size, image_size, 3) (with ShapeWorld's pixel
    noise) and ``labels`` int32 (N,) indexing `shapeworld.COLOR_NAMES`. Deterministic
    from ``(split, seed)``; the splits use different random streams.
    """
    if isinstance(num_examples, bool) or not isinstance(num_examples, (int, np.integer)) or num_examples < 1:
        raise ValueError(f"num_examples must be a positive int, got {num_examples!r}.")
    if split not in shapeworld.SPLITS:
        raise ValueError(f"Unknown split {split!r}; expected one of {shapeworld.SPLITS}.")
    rng = np.random.default_rng([shapeworld.SPLITS.index(split), seed, 5])
    images = np.empty((num_examples, image_size, image_size, 3), np.uint8)
    labels = np.empty(num_examples, np.int32)
    for i in range(num_examples):
        scene = shapeworld.sample_scene(rng, split, num_objects=1)
        images[i] = shapeworld.render_image(scene, image_size, rng)
        labels[i] = shapeworld.COLOR_NAMES.index(scene.objects[0].color)
    return images, labels
