"""Quality task of lesson 07: the ShapeWorld decoder language model.

Trains the lesson's recipe on more data, then measures the test perplexity (with a
unigram baseline), the share of sampled captions that parse under the ShapeWorld grammar,
and the key-value cache's speed-up for 64 generated tokens.
"""

import time

import keras
import numpy as np

from mmlm_course import language_model as lm
from mmlm_course import preprocessing, shapeworld
from mmlm_course.validation import require_int

PERPLEXITY_TARGET = 2.0   # the grammar's own randomness keeps it well above 1
PARSE_TARGET = 0.95
SPEEDUP_TARGET = 3.0


def train_shapeworld_lm(num_examples: int = 3072, epochs: int = 3, batch_size: int = 64,
                        learning_rate: float = 6e-3, dim: int = 64, num_layers: int = 2, num_heads: int = 4,
                        max_length: int = 96, seed: int = 0, verbose: int = 0):
    """Train a `DecoderLM` on ShapeWorld captions and question/answer texts (the recipe of
    lesson 07): Adam with a linear warm-up over the first 10% of the steps, then cosine
    decay. Returns ``(model, tokenizer, history)``."""
    keras.utils.set_random_seed(seed)
    tokenizer = preprocessing.Tokenizer.for_shapeworld(extra_special=lm.TASK_TOKENS)
    data = shapeworld.generate(require_int(num_examples, "num_examples", 1), "train", seed=seed)
    ids = tokenizer.encode_batch(lm.shapeworld_texts(data), add_bos=True, add_eos=True)
    inputs, targets = lm.next_token_pairs(ids)
    model = lm.DecoderLM(len(tokenizer), max_length=max_length, dim=dim, num_layers=num_layers, num_heads=num_heads)
    steps = require_int(epochs, "epochs", 1) * max(1, len(inputs) // require_int(batch_size, "batch_size", 1))
    schedule = keras.optimizers.schedules.CosineDecay(0.0, steps, warmup_target=learning_rate,
                                                      warmup_steps=max(1, steps // 10))
    model.compile(optimizer=keras.optimizers.Adam(schedule), loss=lm.next_token_loss)
    model(inputs[:1])                                      # create the weights ...
    model.optimizer.build(model.trainable_variables)       # ... and Adam's slots: fit then traces its step once
    history = model.fit(inputs, targets, batch_size=batch_size, epochs=epochs, verbose=verbose)
    return model, tokenizer, history


def shapeworld_language_model(num_examples: int = 6144, epochs: int = 3, samples: int = 1024,
                              generation_batch: int = 64, new_tokens: int = 64) -> dict:
    """Train, then measure perplexity, caption parse share (temperature 1) and cache speed-up."""
    start = time.perf_counter()
    model, tokenizer, history = train_shapeworld_lm(num_examples=num_examples, epochs=epochs)
    train_seconds = time.perf_counter() - start

    def encode(data):
        return tokenizer.encode_batch(lm.shapeworld_texts(data), add_bos=True, add_eos=True)

    train_ids = encode(shapeworld.generate(num_examples, "train", seed=0))
    test_ids = encode(shapeworld.generate(1000, "test", seed=0))
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
