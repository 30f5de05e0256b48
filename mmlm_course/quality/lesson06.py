"""Quality task of lesson 06: CLIP-style retrieval on ShapeWorld, plain and NegCLIP.

Trains the lesson's own `retrieval.DualEncoder` twice, longer than the notebook does and
with the same settings and seed, once with the default hard negatives
(`retrieval_training.perturb_caption`, figures under a ``plain_`` prefix) and once with
NegCLIP's swapped-word negatives (`retrieval_training.swap_negative`). For each it measures
verifier-based recall@K on a 1,000-image test gallery (its 1,000 captions are the
queries), both ways, text-to-image recall@1 on 1,000 images of the compositional split,
and the bag-of-words test (`retrieval_training.twin_accuracy`: caption against its
swapped-relation and swapped-attribute twins, 0.5 = chance). Targets, for the NegCLIP
model: text-to-image recall@1 >= 0.85 and swapped-twin accuracy (all twins pooled) >= 0.90.
"""

from __future__ import annotations

import time

from mmlm_course import env, retrieval, retrieval_training, shapeworld
from mmlm_course.preprocessing import Tokenizer

TARGETS = {"t2i_recall_at_1": 0.85, "swapped_twin_accuracy": 0.90}
BENCHMARK = {
    "train_examples": 10_000,
    "epochs": 30,
    "batch_size": 64,
    "learning_rate": 3e-3,
    "model": {"embed_dim": 128, "image_features": 256, "text_layers": 2, "image_pooling": "moments"},  # the lesson's
}
GALLERY_SIZE = 1_000
NEGATIVES = {"plain_": retrieval_training.perturb_caption, "": retrieval_training.swap_negative}


def retrieval_benchmark(config: dict | None = None, seed: int = 0) -> dict:
    """Train the plain and the NegCLIP dual encoder with ``config`` (default `BENCHMARK`)
    and return their figures, the NegCLIP model's without prefix."""
    config = dict(BENCHMARK if config is None else config)
    start = time.perf_counter()
    train = shapeworld.generate(config["train_examples"], "train", seed=seed)
    test = shapeworld.generate(GALLERY_SIZE, "test", seed=seed)
    compositional = shapeworld.generate(GALLERY_SIZE, "compositional", seed=seed)
    tokenizer = Tokenizer.for_shapeworld()
    figures, raw = {}, {}
    for prefix, make_negative in NEGATIVES.items():
        env.set_seed(seed)
        model = retrieval.DualEncoder(len(tokenizer), **config["model"])
        history = retrieval_training.train_dual_encoder(model, tokenizer, train, config["epochs"],
                                                        batch_size=config["batch_size"],
                                                        learning_rate=config["learning_rate"], seed=seed,
                                                        make_negative=make_negative)
        report = retrieval.retrieval_report(model, tokenizer, test, ks=(1, 5, 10))
        twins = retrieval_training.twin_accuracy(model, tokenizer, test)
        raw[prefix] = {"t2i_recall_at_1": report["t2i_recall@1"], "swapped_twin_accuracy": twins["accuracy"]["all"]}
        figures.update({
            f"{prefix}t2i_recall_at_1": round(report["t2i_recall@1"], 3),
            f"{prefix}t2i_recall_at_5": round(report["t2i_recall@5"], 3),
            f"{prefix}i2t_recall_at_1": round(report["i2t_recall@1"], 3),
            f"{prefix}compositional_t2i_recall_at_1": round(
                retrieval.retrieval_report(model, tokenizer, compositional, ks=(1,))["t2i_recall@1"], 3),
            f"{prefix}swapped_twin_accuracy": round(twins["accuracy"]["all"], 3),
            **{f"{prefix}{kind}_twin_accuracy": round(twins["accuracy"][kind], 3)
               for kind in ("relation", "attribute", "color", "shape", "size")},
            f"{prefix}final_loss": round(history["loss"][-1], 3),
            f"{prefix}train_seconds": round(sum(history["seconds"]), 1),
        })
    reached = {key: raw[""][key] >= target for key, target in TARGETS.items()}   # unrounded figures
    return {
        **figures,
        **{f"{kind}_twins": count for kind, count in twins["count"].items()},   # the test gallery's, same for both
        "gallery": GALLERY_SIZE,
        "epochs": config["epochs"],
        **{f"{key}_target": target for key, target in TARGETS.items()},
        **{f"{key}_reached": value for key, value in reached.items()},
        "reached": all(reached.values()),
        "seconds": round(time.perf_counter() - start, 1),
    }


TASKS = {"retrieval": retrieval_benchmark}
