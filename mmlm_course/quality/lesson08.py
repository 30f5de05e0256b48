"""Quality task of lesson 08: the ablation behind §4b, and the comparison of connectors in §9.

Lesson 08's model trained with the notebook's recipe (4,000 scenes, batch 32, 50 stage-1 and
1,200 stage-2 steps, Adam at 8e-3 with warmup-cosine) in four variants, each run by lesson
10's `capstone.train` and evaluated once on the 200-scene test split:

- ``objects_head``: the object detector (pretrained, frozen) and the relation head, as the
  notebook trains it;
- ``objects_no_head``: the same without the relation head;
- ``grid_no_head``: a grid encoder learned with the rest instead of the detector (the photo
  model of lesson 10). A relation head needs object tokens, so there is no grid + head row;
- ``cross_attention``: the first row's parts connected the other way (§9): gated
  cross-attention from the text to the image tokens instead of the image tokens in front.

It reports caption truth, QA exact match and the exact match of every question type, per
variant. The job differs from the notebook only in its stage 0: it pretrains the language
model on all 8,000 training texts at the stage-1 rate (the notebook: 2,560 texts at 3e-3),
and its batches are drawn in another order. The
notebook quotes the table; this task is how it is measured again.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

RECIPE = dict(train_examples=4000, detector_examples=4000, eval_examples=200, batch_size=32, stage1_steps=50,
              stage2_steps=1200, learning_rate=8e-3, stage1_learning_rate=8e-3, checkpoint_every=1250)
VARIANTS = {
    "objects_head": dict(vision="objects", relation_head=True),
    "objects_no_head": dict(vision="objects", relation_head=False),
    "grid_no_head": dict(vision="grid", relation_head=False),
    "cross_attention": dict(vision="objects", relation_head=True, architecture="cross_attention"),
}


def lesson08_ablation() -> dict:
    """Train the four variants; return caption truth, QA and the accuracy of every question type of each."""
    from mmlm_course import capstone

    figures, start = {}, time.perf_counter()
    for name, parts in VARIANTS.items():
        config = capstone.resolve_config("notebook", **RECIPE, model=dict(image_size=64, num_layers=2, **parts))
        with tempfile.TemporaryDirectory(prefix="mmlm-ablation-") as folder:
            metrics = capstone.train(config, Path(folder) / "run", progress=False, log=lambda line: None)
        test = metrics["test"]
        figures[f"{name}_caption_truth"] = round(test["caption_truth"], 3)
        figures[f"{name}_qa"] = round(test["qa_exact_match"], 3)
        figures.update({f"{name}_qa_{kind}": round(value, 3) for kind, value in test["qa_by_type"].items()})
        print(f"  {name}: caption truth {test['caption_truth']:.1%}, QA {test['qa_exact_match']:.1%}, "
              f"relation questions {test['qa_by_type']['relation']:.1%}", flush=True)
    figures["seconds"] = round(time.perf_counter() - start, 1)
    return figures


TASKS = {"lesson08_ablation": lesson08_ablation}
