"""Lessons 06 and 07: answers written differently from the references, that do what the text asks, pass
their checks, directly and when the check is replayed from a record (as the grader runs it)."""

import collections
import re

import keras
import numpy as np
import pytest
from keras import ops

from mmlm_course import attention, encoders, shapeworld
from mmlm_course.exercises import CheckFailed, run_check
from check_helpers import by_name, passes


# --------------------------------------------------------------------------- 06.similarity_logits


def similarity_with_keras_ops(image_embeddings, text_embeddings, temperature):
    u = ops.normalize(ops.convert_to_tensor(image_embeddings), axis=-1)
    v = ops.normalize(ops.convert_to_tensor(text_embeddings), axis=-1)
    return ops.matmul(u, ops.transpose(v)) / temperature


def similarity_with_loops(image_embeddings, text_embeddings, temperature):
    rows = []
    for image in image_embeddings:
        row = []
        for text in text_embeddings:
            cosine = float(np.dot(image, text)) / (float(np.linalg.norm(image)) * float(np.linalg.norm(text)))
            row.append(cosine / temperature)
        rows.append(row)
    return rows                                                   # a list of lists


def similarity_with_einsum_in_float64(image_embeddings, text_embeddings, temperature):
    u = np.asarray(image_embeddings, np.float64)
    v = np.asarray(text_embeddings, np.float64)
    u = u / np.sqrt((u ** 2).sum(axis=1))[:, None]
    v = v / np.sqrt((v ** 2).sum(axis=1))[:, None]
    return np.einsum("id,jd->ij", u, v) * (1.0 / temperature)


@by_name([similarity_with_keras_ops, similarity_with_loops, similarity_with_einsum_in_float64])
def test_06_similarity_logits_other_correct_answers_pass(answer):
    passes("06.similarity_logits", answer)


# --------------------------------------------------------------------------- 06.caption_hits


def hits_by_comprehension(captions, scenes):
    return np.array([[shapeworld.caption_is_true(c, s) for s in scenes] for c in captions], dtype=bool)


def hits_as_nested_lists(captions, scenes):
    return [[bool(shapeworld.caption_is_true(c, s)) for s in scenes] for c in captions]


def hits_cached_per_distinct_caption(captions, scenes):
    rows = {}
    for caption in dict.fromkeys(captions):
        rows[caption] = [shapeworld.caption_is_true(caption, scene) for scene in scenes]
    return np.array([rows[caption] for caption in captions])


def hits_from_the_package(captions, scenes):
    return shapeworld.caption_truth_matrix(captions, scenes)


@by_name([hits_by_comprehension, hits_as_nested_lists, hits_cached_per_distinct_caption, hits_from_the_package])
def test_06_caption_hits_other_correct_answers_pass(answer):
    passes("06.caption_hits", answer)


# --------------------------------------------------------------------------- 06.recall_with_hits


def recall_with_loops(scores, hits, k):
    found = 0
    for row_scores, row_hits in zip(scores.tolist(), hits.tolist()):
        best = max(s for s, h in zip(row_scores, row_hits) if h)
        rank = 1 + sum(1 for s, h in zip(row_scores, row_hits) if not h and s >= best)
        found += rank <= k
    return found / len(scores)


def recall_by_sorting_wrong_candidates_first(scores, hits, k):
    """Sort by score, and among equal scores put the wrong candidates first: the first hit's place is its rank."""
    recalled = []
    for row_scores, row_hits in zip(scores, hits):
        order = np.lexsort((row_hits, -row_scores))               # last key first: score, then non-hits first
        recalled.append(bool(row_hits[order][:k].any()))
    return np.mean(recalled)                                      # a NumPy float


def recall_with_keras_ops(scores, hits, k):
    scores, hits = ops.convert_to_tensor(scores), ops.convert_to_tensor(hits)
    best = ops.max(ops.where(hits, scores, -np.inf), axis=1, keepdims=True)
    rank = 1 + ops.sum(ops.cast(ops.logical_and(scores >= best, ops.logical_not(hits)), "int32"), axis=1)
    return ops.mean(ops.cast(rank <= k, "float32"))               # a 0-d tensor


@by_name([recall_with_loops, recall_by_sorting_wrong_candidates_first, recall_with_keras_ops])
def test_06_recall_with_hits_other_correct_answers_pass(answer):
    passes("06.recall_with_hits", answer)


# --------------------------------------------------------------------------- 06.zero_shot_predict


def zero_shot_normalising_only_the_prompts(image_embeddings, prompt_embeddings, prompt_classes):
    """An image's own length does not change which prompt is best."""
    prompts = prompt_embeddings / np.linalg.norm(prompt_embeddings, axis=1, keepdims=True)
    return prompt_classes[np.argmax(image_embeddings @ prompts.T, axis=1)]


def zero_shot_with_keras_ops(image_embeddings, prompt_embeddings, prompt_classes):
    cosine = ops.matmul(ops.normalize(image_embeddings, axis=-1), ops.transpose(ops.normalize(prompt_embeddings)))
    return ops.take(prompt_classes, ops.argmax(cosine, axis=1))   # an int tensor


def zero_shot_as_a_list(image_embeddings, prompt_embeddings, prompt_classes):
    labels = []
    for image in image_embeddings:
        cosines = [np.dot(image, p) / (np.linalg.norm(image) * np.linalg.norm(p)) for p in prompt_embeddings]
        labels.append(int(prompt_classes[int(np.argmax(cosines))]))
    return labels


def zero_shot_last_of_tied_prompts(image_embeddings, prompt_embeddings, prompt_classes):
    """The text leaves ties open: the last best prompt is as good as the first."""
    cosine = (image_embeddings / np.linalg.norm(image_embeddings, axis=1, keepdims=True)) @ (
        prompt_embeddings / np.linalg.norm(prompt_embeddings, axis=1, keepdims=True)).T
    return prompt_classes[cosine.shape[1] - 1 - np.argmax(cosine[:, ::-1], axis=1)]


@by_name([zero_shot_normalising_only_the_prompts, zero_shot_with_keras_ops, zero_shot_as_a_list,
          zero_shot_last_of_tied_prompts])
def test_06_zero_shot_predict_other_correct_answers_pass(answer):
    passes("06.zero_shot_predict", answer)


# --------------------------------------------------------------------------- 06.swapped_twins


def _article(phrase):
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def twins_with_a_regex(caption):
    match = re.fullmatch(r"an? (.+?) is (to the left of|to the right of|above|below) an? (.+)", caption)
    if match is None:
        return {}
    first, relation, second = match.group(1).split(), match.group(2), match.group(3).split()
    result = {}
    for kind, values in (("size", shapeworld.SIZES), ("shape", shapeworld.SHAPES),
                         ("color", shapeworld.COLOR_NAMES)):                       # another key order
        x, y = [w for w in first if w in values], [w for w in second if w in values]
        if x and y and x != y:
            swap = {x[0]: y[0], y[0]: x[0]}
            a = " ".join(swap.get(w, w) if w in values else w for w in first)
            b = " ".join(swap.get(w, w) if w in values else w for w in second)
            result[kind] = f"{_article(a)} is {relation} {_article(b)}"
    if first != second:
        result["relation"] = f"{_article(' '.join(second))} is {relation} {_article(' '.join(first))}"
    return result


def twins_by_splitting_on_is(caption):
    if caption.startswith("there is"):
        return {}
    left, right = caption.split(" is ")
    relation = next(r for r in shapeworld.RELATIONS if right.startswith(r + " "))
    a, b = left.split()[1:], right[len(relation):].split()[1:]
    twins = collections.OrderedDict()
    candidates = {"relation": (b, a)}
    for kind in ("color", "shape", "size"):
        values = shapeworld.ATTRIBUTES[kind]
        i = next((k for k, w in enumerate(a) if w in values), None)
        j = next((k for k, w in enumerate(b) if w in values), None)
        if i is not None and j is not None:
            new_a, new_b = list(a), list(b)
            new_a[i], new_b[j] = b[j], a[i]
            candidates[kind] = (new_a, new_b)
    for kind, (x, y) in candidates.items():
        twin = " ".join([_article(" ".join(x)), "is", relation, _article(" ".join(y))])
        if twin != caption:
            twins[kind] = twin
    return twins


def twins_from_the_parser(caption):
    statement = shapeworld.parse_caption(caption)[0]
    twins = collections.defaultdict(str)
    if statement[0] != "relation":
        return twins
    _, first, relation, second = statement

    def say(a, b):
        phrase = lambda d: shapeworld.with_article(" ".join(d[k] for k in ("size", "color", "shape") if k in d))
        return f"{phrase(a)} is {relation} {phrase(b)}"

    for kind in ("relation", "color", "shape", "size"):
        if kind == "relation":
            twin = say(second, first)
        elif kind in first and kind in second:
            twin = say({**first, kind: second[kind]}, {**second, kind: first[kind]})
        else:
            continue
        if twin != caption:
            twins[kind] = twin
    return twins


def twins_with_a_placeholder_replace(caption):
    words = caption.split()
    if words[0] == "there":
        return {}
    i = words.index("is")
    j = next(k for k in range(i + 1, len(words)) if words[k] in ("a", "an"))
    twins = {"relation": " ".join([_article(" ".join(words[j + 1:]))] + words[i:j] + [_article(" ".join(words[1:i]))])}
    for kind, values in shapeworld.ATTRIBUTES.items():
        found = [w for w in words if w in values]
        if len(found) == 2:
            text = caption.replace(found[0], "@").replace(found[1], found[0]).replace("@", found[1])
            text = re.sub(r"\ban? (\w)", lambda m: ("an " if m.group(1) in "aeiou" else "a ") + m.group(1), text)
            twins[kind] = text
    return {kind: twin for kind, twin in twins.items() if twin != caption}


def twins_moving_phrases_with_their_articles(caption):
    """The relation twin needs no article fix: each noun phrase keeps its own article."""
    twins = twins_from_the_parser(caption)
    relation = next((r for r in shapeworld.RELATIONS if f" is {r} " in caption), None)
    if relation is not None:
        first, second = caption.split(f" is {relation} ")
        twins.pop("relation", None)
        if first != second:
            twins["relation"] = f"{second} is {relation} {first}"
    return dict(twins)


@by_name([twins_with_a_regex, twins_by_splitting_on_is, twins_from_the_parser, twins_with_a_placeholder_replace,
          twins_moving_phrases_with_their_articles])
def test_06_swapped_twins_other_correct_answers_pass(answer):
    passes("06.swapped_twins", answer)


def hits_sorting_the_captions(captions, scenes):
    hits = shapeworld.caption_truth_matrix(captions, scenes)
    captions.sort()                                              # right hits, but the caller's list reordered
    return hits


def similarity_normalising_in_place(image_embeddings, text_embeddings, temperature):
    image_embeddings /= np.linalg.norm(image_embeddings, axis=1, keepdims=True)
    text_embeddings /= np.linalg.norm(text_embeddings, axis=1, keepdims=True)
    return image_embeddings @ text_embeddings.T / temperature


def recall_writing_minus_inf_into_the_scores(scores, hits, k):
    original = scores.copy()
    scores[~hits] = -np.inf
    return float(np.mean(1 + ((original >= scores.max(axis=1, keepdims=True)) & ~hits).sum(axis=1) <= k))


def zero_shot_normalising_the_prompts_in_place(image_embeddings, prompt_embeddings, prompt_classes):
    prompt_embeddings /= np.linalg.norm(prompt_embeddings, axis=1, keepdims=True)
    return prompt_classes[np.argmax(image_embeddings @ prompt_embeddings.T, axis=1)]


@pytest.mark.parametrize("exercise_id, answer", [
    ("06.caption_hits", hits_sorting_the_captions), ("06.similarity_logits", similarity_normalising_in_place),
    ("06.recall_with_hits", recall_writing_minus_inf_into_the_scores),
    ("06.zero_shot_predict", zero_shot_normalising_the_prompts_in_place),
], ids=lambda x: x if isinstance(x, str) else x.__name__)
def test_06_answers_that_change_their_arguments_fail(exercise_id, answer):
    """Lesson 03's rule for every later exercise: the arguments stay as they are."""
    with pytest.raises(CheckFailed, match="changed its input in place"):
        run_check(exercise_id, answer)


# --------------------------------------------------------------------------- 06.text_tower


def _tower(call, mask_zero=False):
    """The notebook's TextTower with a learner's ``call`` (and, where asked, an embedding that masks id 0)."""

    def __init__(self, vocab_size, max_length, width=64, embed_dim=128, num_heads=4, **kwargs):
        keras.layers.Layer.__init__(self, **kwargs)
        self.token_embedding = keras.layers.Embedding(vocab_size, width, mask_zero=mask_zero)
        self.position_embedding = encoders.PositionEmbedding(max_length, width)
        self.block = attention.TransformerBlock(width, num_heads, 2 * width)
        self.final_norm = keras.layers.LayerNormalization(epsilon=1e-5)
        self.projection = keras.layers.Dense(embed_dim)

    return type("TextTower", (keras.layers.Layer,), {"__init__": __init__, "call": call})


def tower_with_float_weights_and_ops_normalize(self, token_ids, training=None):
    real = ops.cast(ops.not_equal(token_ids, 0), "float32")                       # (B, T)
    x = self.position_embedding(self.token_embedding(token_ids))
    x = self.final_norm(self.block(x, mask=ops.cast(real, "bool"), training=training))
    pooled = ops.einsum("btd,bt->bd", x, real) / ops.sum(real, axis=1, keepdims=True)
    return ops.normalize(self.projection(pooled), axis=-1)


def tower_with_a_masking_embedding(self, token_ids):
    """mask_zero=True: Keras hands the padding mask to the block by itself."""
    x = self.final_norm(self.block(self.position_embedding(self.token_embedding(token_ids))))
    mask = ops.expand_dims(ops.cast(token_ids != 0, x.dtype), -1)
    z = self.projection(ops.sum(x * mask, axis=1) / ops.sum(mask, axis=1))
    return z / ops.sqrt(ops.sum(z * z, axis=1, keepdims=True))


def tower_with_a_greater_than_mask_and_ops_norm(self, token_ids, training=False):
    """The mask as token_ids > 0 (keras.ops throughout, so it also runs on a symbolic keras.Input)."""
    real = ops.cast(token_ids > 0, "float32")
    x = self.position_embedding(self.token_embedding(token_ids))
    x = self.final_norm(self.block(x, mask=real > 0, training=training))
    v = self.projection(ops.sum(x * real[..., None], axis=1) / ops.sum(real, axis=1)[:, None])
    return v / ops.norm(v, axis=-1, keepdims=True)


@pytest.mark.parametrize("answer", [_tower(tower_with_float_weights_and_ops_normalize),
                                    _tower(tower_with_a_masking_embedding, mask_zero=True),
                                    _tower(tower_with_a_greater_than_mask_and_ops_norm)],
                         ids=["float_weights", "masking_embedding", "greater_than_mask"])
def test_06_text_tower_other_correct_answers_pass(answer):
    passes("06.text_tower", answer)


def test_06_text_tower_refuses_an_instance_and_a_foreign_layer():
    from mmlm_course.exercises import CheckFailed, registry

    reference = registry()["06.text_tower"].reference
    with pytest.raises(CheckFailed, match="instance"):
        run_check("06.text_tower", reference(12, 8, width=16, embed_dim=6, num_heads=2))

    class MyDense(keras.layers.Dense):
        pass

    def foreign(*args, **kwargs):
        tower = reference(*args, **kwargs)
        tower.projection = MyDense(kwargs["embed_dim"])
        return tower

    with pytest.raises(CheckFailed, match="cannot rebuild"):
        run_check("06.text_tower", foreign)


# --------------------------------------------------------------------------- 07.causal_mask


def mask_from_np_tri(length):
    return np.tri(length, dtype=bool)


def mask_as_a_tensor(length):
    return ops.cast(ops.tril(ops.ones((length, length))), "bool")


def mask_as_nested_lists(length):
    return [[j <= i for j in range(length)] for i in range(length)]


@by_name([mask_from_np_tri, mask_as_a_tensor, mask_as_nested_lists])
def test_07_causal_mask_other_correct_answers_pass(answer):
    passes("07.causal_mask", answer)


# --------------------------------------------------------------------------- 07.top_k_filter


def top_k_with_partition(logits, k):
    kth = np.partition(logits, -k, axis=-1)[:, -k:][:, :1]
    return np.where(logits < kth, -np.inf, logits)


def top_k_in_place_per_row(logits, k):
    for row in logits:                                            # changes its input: lesson 03's rule forbids it
        row[row < sorted(row)[-k]] = float("-inf")
    return logits


def temperature_dividing_in_place(logits, temperature):
    logits /= temperature
    return np.exp(logits - logits.max(-1, keepdims=True)) / np.exp(logits - logits.max(-1, keepdims=True)).sum(
        -1, keepdims=True)


@pytest.mark.parametrize("exercise_id, answer", [("07.top_k_filter", top_k_in_place_per_row),
                                                 ("07.temperature_probabilities", temperature_dividing_in_place)],
                         ids=lambda x: x if isinstance(x, str) else x.__name__)
def test_07_answers_that_change_their_arguments_fail(exercise_id, answer):
    """Lesson 03's rule holds in lesson 07 too: the logits stay as they are."""
    with pytest.raises(CheckFailed, match=r"changed its input in place \(`logits`\)"):
        run_check(exercise_id, answer)


def top_k_with_keras_ops(logits, k):
    values, _ = ops.top_k(logits, k)
    return ops.where(logits >= values[:, -1:], logits, float("-inf"))


def top_k_as_nested_lists(logits, k):
    rows = []
    for row in logits.tolist():
        kth = sorted(row, reverse=True)[k - 1]
        rows.append([value if value >= kth else float("-inf") for value in row])
    return rows


@by_name([top_k_with_partition, top_k_with_keras_ops, top_k_as_nested_lists])
def test_07_top_k_filter_other_correct_answers_pass(answer):
    passes("07.top_k_filter", answer)


# --------------------------------------------------------------------------- 07.temperature_probabilities


def temperature_with_keras_softmax(logits, temperature):
    return ops.softmax(ops.convert_to_tensor(logits) / temperature, axis=-1)


def temperature_shifting_before_dividing(logits, temperature):
    shifted = (logits - logits.max(axis=-1, keepdims=True)) / temperature          # float32 throughout
    e = np.exp(shifted)
    return e / e.sum(axis=-1, keepdims=True)


def temperature_with_logsumexp(logits, temperature):
    z = np.asarray(logits, np.float64) / temperature
    m = z.max(axis=-1, keepdims=True)
    return np.exp(z - m - np.log(np.exp(z - m).sum(axis=-1, keepdims=True)))


def temperature_with_activations_softmax(logits, temperature):
    return keras.activations.softmax(ops.convert_to_tensor(logits / temperature), axis=-1)


def temperature_with_float32_logsumexp(logits, temperature):
    z = ops.convert_to_tensor(logits, "float32") / temperature       # float32 rounds logsumexp(2000) to ~1e-4
    return ops.exp(z - ops.logsumexp(z, axis=-1, keepdims=True))


@by_name([temperature_with_keras_softmax, temperature_shifting_before_dividing, temperature_with_logsumexp,
           temperature_with_activations_softmax, temperature_with_float32_logsumexp])
def test_07_temperature_probabilities_other_correct_answers_pass(answer):
    passes("07.temperature_probabilities", answer)


# --------------------------------------------------------------------------- 07.update_cache


def cache_by_slice_assignment(cache, new, position):
    out = np.array(cache)                                         # a copy: works on a tensor too
    out[:, position:position + new.shape[1]] = np.asarray(new)
    return out


def cache_by_concatenating_three_pieces(cache, new, position):
    end = position + new.shape[1]
    return np.concatenate([cache[:, :position], new, cache[:, end:]], axis=1)


def cache_with_keras_concatenate(cache, new, position):
    end = position + new.shape[1]
    return ops.concatenate([cache[:, :position], new, cache[:, end:]], axis=1)


def cache_by_padding_and_where(cache, new, position):
    length, steps = cache.shape[1], new.shape[1]
    rest = [(0, 0)] * (len(cache.shape) - 2)
    padded = ops.pad(new, [(0, 0), (position, length - position - steps)] + rest)
    time = ops.arange(length)
    inside = ops.reshape((time >= position) & (time < position + steps), [1, length] + [1] * len(rest))
    return ops.where(inside, padded, cache)


@by_name([cache_by_slice_assignment, cache_by_concatenating_three_pieces, cache_with_keras_concatenate,
           cache_by_padding_and_where])
def test_07_update_cache_other_correct_answers_pass(answer):
    passes("07.update_cache", answer)


# --------------------------------------------------------------------------- 07.decoder_lm


def _decoder(blocks="list", positions="embedding", epsilon=1e-5, mlp=4):
    class MiniGPT(keras.Model):
        def __init__(self, vocab_size, max_length, dim, num_layers, num_heads, **kwargs):
            super().__init__(**kwargs)
            self.token_embedding = keras.layers.Embedding(vocab_size, dim)
            self.position_embedding = (encoders.PositionEmbedding(max_length, dim) if positions == "layer"
                                       else keras.layers.Embedding(max_length, dim))
            layers = [attention.TransformerBlock(dim, num_heads, mlp * dim, causal=True) for _ in range(num_layers)]
            self.blocks = keras.Sequential(layers) if blocks == "sequential" else layers
            self.final_norm = keras.layers.LayerNormalization(epsilon=epsilon)
            self.head = keras.layers.Dense(vocab_size)

        def call(self, token_ids, training=None):
            x = self.token_embedding(token_ids)
            if positions == "embedding":
                x = ops.add(x, self.position_embedding(ops.expand_dims(ops.arange(token_ids.shape[1]), 0)))
            elif positions == "table":                                # the first T rows of the table itself
                self.position_embedding(ops.arange(1))                # builds it
                x = x + self.position_embedding.embeddings[:token_ids.shape[1]]
            else:
                x = self.position_embedding(x)
            if blocks == "sequential":
                x = self.blocks(x, training=training)
            else:
                for i in range(len(self.blocks)):
                    x = self.blocks[i](x, training=training)
            return self.head(self.final_norm(x))

    return MiniGPT


@pytest.mark.parametrize("answer", [_decoder(blocks="sequential"), _decoder(positions="layer"),
                                    _decoder(blocks="sequential", positions="layer"), _decoder(positions="table")],
                         ids=["sequential_blocks", "position_embedding_layer", "both", "position_table_rows"])
def test_07_decoder_lm_other_correct_answers_pass(answer):
    passes("07.decoder_lm", answer)
