"""Quality task of lesson 07: the ShapeWorld decoder language model.

Trains the lesson's recipe on more data, then measures the test perplexity (with a
unigram baseline), the share of sampled captions that parse under the ShapeWorld grammar,
and the key-value cache's speed-up for 64 generated tokens.
"""

import time

import numpy as np

from mmlm_course import language_model as lm
from mmlm_course import shapeworld

PERPLEXITY_TARGET = 2.0   # the grammar's own randomness keeps it well above 1
PARSE_TARGET = 0.95
SPEEDUP_TARGET = 3.0


def shapeworld_language_model(num_examples: int = 6144, epochs: int = 3, samples: int = 1024,
                              generation_batch: int = 64, new_tokens: int = 64) -> dict:
    """Train, then measure perplexity, caption parse share (temperature 1) and cache speed-up."""
    start = time.perf_counter()
    model, tokenizer, history = lm.train_shapeworld_lm(num_examples=num_examples, epochs=epochs)
    train_seconds = time.perf_counter() - start
    train_ids = lm.encode_texts(lm.shapeworld_texts(shapeworld.generate(num_examples, "train", seed=0)), tokenizer)
    test_ids = lm.encode_texts(lm.shapeworld_texts(shapeworld.generate(1000, "test", seed=0)), tokenizer)
    perplexity = lm.perplexity(model, test_ids)
    captions = lm.sample_texts(model, tokenizer, lm.CAPTION, samples, temperature=1.0, seed=1,
                               batch_size=generation_batch)
    parse_share = float(np.mean([shapeworld.caption_parses(c) for c in captions]))
    prompt = np.tile(np.array([[tokenizer.bos_id, tokenizer.token_to_id[lm.CAPTION]]], np.int32), (generation_batch, 1))
    timing = lm.time_generation(model, prompt, new_tokens, repeats=5)
    return {
        "test_perplexity": round(perplexity, 3),
        "unigram_perplexity": round(lm.unigram_perplexity(train_ids, test_ids, len(tokenizer)), 2),
        "perplexity_target": PERPLEXITY_TARGET,
        "caption_parse_share": round(parse_share, 4),
        "parse_target": PARSE_TARGET,
        "cache_speedup_64_tokens": round(timing["speedup"], 2),
        "cached_s": round(timing["cached_s"], 3),
        "uncached_s": round(timing["uncached_s"], 3),
        "speedup_target": SPEEDUP_TARGET,
        "generation_batch": generation_batch,
        "final_train_loss": round(float(history.history["loss"][-1]), 4),
        "reached": bool(perplexity <= PERPLEXITY_TARGET and parse_share >= PARSE_TARGET
                        and timing["speedup"] >= SPEEDUP_TARGET),
        "train_seconds": round(train_seconds, 1),
        "seconds": round(time.perf_counter() - start, 1),
    }


TASKS = {"language_model_shapeworld": shapeworld_language_model}
