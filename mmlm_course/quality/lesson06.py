"""Quality task of lesson 06: CLIP-style retrieval on ShapeWorld.

Trains a dual encoder longer than the notebook does, with the benchmark's towers
(`quality.retrieval_towers.ObjectDualEncoder`): lesson 04's object detector, pretrained
here on the training scenes and frozen (as LiT keeps a pretrained image encoder locked),
read by a relation-binding image tower, and a text tower that binds subject, reference and
relation (`ObjectPairTower`, `RoleTextTower`), trained with lesson 06's
`retrieval_training.train_dual_encoder`. It measures
verifier-based recall@K on a 1,000-image test gallery (its 1,000 captions are the
queries), both ways, plus the same figures on 1,000 images of the compositional split
(scenes with a colour-shape pair never seen in training). Target: text-to-image
recall@1 >= 0.8 on the test gallery.
"""

from __future__ import annotations

import time

from mmlm_course import detector, env, retrieval, retrieval_training, shapeworld
from mmlm_course.preprocessing import Tokenizer
from mmlm_course.quality.retrieval_towers import ObjectDualEncoder

TARGET_T2I_RECALL_AT_1 = 0.8
BENCHMARK = {
    "train_examples": 10_000,
    "epochs": 20,
    "batch_size": 64,
    "learning_rate": 3e-3,
    "relation_probability": 0.6,
    "detector_examples": 6_000,
    "detector_epochs": 3,
    "model": {"embed_dim": 64, "role_dim": 8, "relation_dim": 4, "text_layers": 2},  # ObjectDualEncoder
}
GALLERY_SIZE = 1_000


def retrieval_benchmark(config: dict | None = None, seed: int = 0) -> dict:
    """Train the dual encoder with ``config`` (default `BENCHMARK`) and return its figures."""
    config = dict(BENCHMARK if config is None else config)
    env.set_seed(seed)
    start = time.perf_counter()
    train = shapeworld.generate(config["train_examples"], "train", seed=seed)
    test = shapeworld.generate(GALLERY_SIZE, "test", seed=seed)
    compositional = shapeworld.generate(GALLERY_SIZE, "compositional", seed=seed)
    tokenizer = Tokenizer.for_shapeworld()
    model = ObjectDualEncoder(len(tokenizer), **config["model"])
    token_model, _ = detector.pretrain_object_encoder(train.subset(range(min(config["detector_examples"], len(train)))),
                                                      epochs=config["detector_epochs"])
    model.build()
    detector.load_detector(model.object_encoder, token_model)
    history = retrieval_training.train_dual_encoder(model, tokenizer, train, config["epochs"],
                                                    batch_size=config["batch_size"],
                                                    learning_rate=config["learning_rate"], seed=seed,
                                                    relation_probability=config["relation_probability"])
    train_seconds = time.perf_counter() - start
    test_report = retrieval.retrieval_report(model, tokenizer, test, ks=(1, 5, 10))
    comp_report = retrieval.retrieval_report(model, tokenizer, compositional, ks=(1, 5))
    recall = test_report["t2i_recall@1"]
    return {
        "t2i_recall@1": round(recall, 3),
        "t2i_recall@5": round(test_report["t2i_recall@5"], 3),
        "t2i_recall@10": round(test_report["t2i_recall@10"], 3),
        "i2t_recall@1": round(test_report["i2t_recall@1"], 3),
        "i2t_recall@5": round(test_report["i2t_recall@5"], 3),
        "compositional_t2i_recall@1": round(comp_report["t2i_recall@1"], 3),
        "compositional_t2i_recall@5": round(comp_report["t2i_recall@5"], 3),
        "compositional_i2t_recall@1": round(comp_report["i2t_recall@1"], 3),
        "relation_accuracy": round(retrieval.relation_accuracy(model, tokenizer, test), 3),
        "gallery": GALLERY_SIZE,
        "target": TARGET_T2I_RECALL_AT_1,
        "reached": recall >= TARGET_T2I_RECALL_AT_1,
        "final_loss": round(history["loss"][-1], 3),
        "temperature": round(history["temperature"][-1], 4),
        "train_seconds": round(train_seconds, 1),
        "seconds": round(time.perf_counter() - start, 1),
    }


TASKS = {"retrieval": retrieval_benchmark}
