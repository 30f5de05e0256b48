"""Quality task of the foundation: ShapeWorld generation speed (budget 10 s for 10,000)."""

import time

from mmlm_course import shapeworld


def shapeworld_generation(num_examples: int = 10_000) -> dict:
    """Time generating ``num_examples`` 64x64 ShapeWorld examples (budget: 10 s)."""
    start = time.perf_counter()
    shapeworld.generate(num_examples, "train", seed=0)
    seconds = time.perf_counter() - start
    return {"examples": num_examples, "seconds": round(seconds, 2), "budget_s": 10.0, "reached": seconds <= 10.0}


TASKS = {"shapeworld_generation": shapeworld_generation}
