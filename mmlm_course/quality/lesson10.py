"""Quality task of lessons 08 and 10: the main job, `mmlm-course train` with no options.

It runs the real command line in a fresh run folder, the way a learner would, times it
from start to finish (data, text pretraining, both training stages, evaluation, the
samples plot), and reads the figures back from the run's ``metrics.json``: caption truth
and question-answering exact match on the ShapeWorld test split, with the compositional
split (held-out colour-shape pairs) beside them, each with its target. The preset is
``cpu``: lesson 08's recipe, trained longer than the notebook can afford.

`detector_diversity` is the experiment behind lesson 10's compositional section: the
detector's held-out colour and shape accuracy, per stream design and per number of
colour-shape pairs its training scenes show.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from mmlm_course import shapeworld

CAPTION_TRUTH_TARGET = 0.95  # test split
QA_TARGET = 0.95
COMPOSITIONAL_CAPTION_TRUTH_TARGET = 0.90  # scenes with a colour-shape pair never seen in training
COMPOSITIONAL_QA_TARGET = 0.95
BUDGET_S = 600.0


def capstone_train() -> dict:
    """Run ``mmlm-course train --out TMP`` (all defaults) and report its figures."""
    with tempfile.TemporaryDirectory(prefix="mmlm-capstone-") as folder:
        out = Path(folder) / "run"
        command = [sys.executable, "-m", "mmlm_course.tools.cli", "train", "--out", str(out), "--no-progress"]
        start = time.perf_counter()
        finished = subprocess.run(command, capture_output=True, text=True)
        seconds = time.perf_counter() - start
        if finished.returncode != 0:
            raise RuntimeError(f"`mmlm-course train` failed with exit code {finished.returncode}:\n"
                               f"{finished.stdout[-3000:]}\n{finished.stderr[-3000:]}")
        metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    test, compositional = metrics["test"], metrics["compositional"]
    figures = {
        "caption_truth": round(test["caption_truth"], 4),
        "qa_exact_match": round(test["qa_exact_match"], 4),
        "caption_truth_target": CAPTION_TRUTH_TARGET,
        "qa_target": QA_TARGET,
        "compositional_caption_truth": round(compositional["caption_truth"], 4),
        "compositional_qa_exact_match": round(compositional["qa_exact_match"], 4),
        "compositional_targets": f"{COMPOSITIONAL_CAPTION_TRUTH_TARGET} / {COMPOSITIONAL_QA_TARGET}",
        **{f"qa_{kind}": round(value, 3) for kind, value in test["qa_by_type"].items()},
        "train_examples_per_s": metrics["examples_per_second"],
        "train_seconds": metrics["train_seconds_this_session"],
        "seconds": round(seconds, 1),
        "budget_s": BUDGET_S,
    }
    figures["reached"] = bool(test["caption_truth"] >= CAPTION_TRUTH_TARGET and test["qa_exact_match"] >= QA_TARGET
                              and compositional["caption_truth"] >= COMPOSITIONAL_CAPTION_TRUTH_TARGET
                              and compositional["qa_exact_match"] >= COMPOSITIONAL_QA_TARGET
                              and seconds <= BUDGET_S)
    return figures


TASKS = {"capstone_train": capstone_train}


# Diversity levels of the detector ablation: which colour-shape pairs the training scenes
# show. Each level shows every colour and every shape, none of `shapeworld.HELD_OUT`.
DIVERSITY = {
    6: {"circle": ("red", "yellow"), "triangle": ("green", "purple"), "square": ("blue", "orange")},
    12: {"circle": ("red", "green", "yellow", "purple"), "triangle": ("green", "blue", "purple", "orange"),
         "square": ("red", "blue", "yellow", "orange")},
}
DETECTOR_SCENES = 4000  # stage 0 of the capstone's notebook preset


def recolour(data, colours_by_shape: dict, seed: int = 0):
    """``data``'s scenes with every object recoloured to one of the colours ``colours_by_shape``
    allows for its shape (drawn uniformly), re-rendered: the same layouts, shapes and sizes,
    fewer colour-shape pairs. Returns ShapeWorldData without captions or questions (a
    detector learns from images and scenes only)."""
    rng = np.random.default_rng(seed)
    scenes = [shapeworld.Scene(tuple(dataclasses.replace(o, color=str(rng.choice(colours_by_shape[o.shape])))
                                     for o in scene.objects)) for scene in data.scenes]
    images = np.stack([shapeworld.render_image(scene, data.images.shape[1], rng) for scene in scenes])
    empty = [""] * len(scenes)
    return shapeworld.ShapeWorldData(images, scenes, empty, empty, empty, empty, data.split, data.seed)


def detector_diversity(seed: int = 0) -> dict:
    """Held-out colour and shape accuracy of lesson 04's detector, shared and factorised
    streams, pretrained on 4,000 training scenes that show 6, 12 or all 15 seen colour-shape
    pairs (CLEVR-HOPE's question: does diversity help?). Measured with
    `detector.attribute_accuracy` on 1,000 compositional scenes, objects of the held-out
    pairs only."""
    from mmlm_course import detector, env

    start = time.perf_counter()
    train = shapeworld.generate(DETECTOR_SCENES, "train", seed=seed)
    compositional = shapeworld.generate(1000, "compositional", seed=seed)
    variants = {**{pairs: recolour(train, colours, seed) for pairs, colours in DIVERSITY.items()}, 15: train}
    figures = {}
    for streams in detector.STREAMS:
        for pairs, data in sorted(variants.items()):
            env.set_seed(seed)
            token_model, _ = detector.pretrain_object_encoder(data, encoder=detector.build_object_encoder(
                streams=streams))
            table = detector.attribute_accuracy(token_model, compositional)
            held = [row for pair, row in table.items() if pair in shapeworld.HELD_OUT]
            objects = sum(row["objects"] for row in held)
            for attribute in ("color", "shape"):
                figures[f"{streams}_{pairs}_pairs_{attribute}"] = round(
                    sum(row[attribute] * row["objects"] for row in held) / objects, 3)
    figures["held_out_objects"] = objects
    figures["seconds"] = round(time.perf_counter() - start, 1)
    return figures


TASKS["detector_diversity"] = detector_diversity
