"""Quality task of lessons 08 and 09: the main job, `mmlm-course train` with no options.

It runs the real command line in a fresh run folder, the way a learner would, times it
from start to finish (data, text pretraining, both training stages, evaluation, the
samples plot), and reads the figures back from the run's ``metrics.json``: caption truth
and question-answering exact match on the ShapeWorld test split, with the compositional
split (held-out colour-shape pairs) beside them. The preset is ``cpu``: lesson 08's
recipe, trained longer than the notebook can afford.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CAPTION_TRUTH_TARGET = 0.90
QA_TARGET = 0.95
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
        **{f"qa_{kind}": round(value, 3) for kind, value in test["qa_by_type"].items()},
        "train_examples_per_s": metrics["examples_per_second"],
        "train_seconds": metrics["train_seconds_this_session"],
        "seconds": round(seconds, 1),
        "budget_s": BUDGET_S,
    }
    figures["reached"] = bool(test["caption_truth"] >= CAPTION_TRUTH_TARGET and test["qa_exact_match"] >= QA_TARGET
                              and seconds <= BUDGET_S)
    return figures


TASKS = {"capstone_train": capstone_train}
