"""Tests for mmlm_course.language_model (lesson 07)."""

import mmlm_course

mmlm_course.setup_notebook(seed=0)

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from keras import ops  # noqa: E402

from mmlm_course import attention  # noqa: E402
from mmlm_course import language_model as lm  # noqa: E402
from mmlm_course import losses, preprocessing, shapeworld  # noqa: E402

VOCAB = 13


@pytest.fixture(scope="module")
def model():
    keras.utils.set_random_seed(1)
    m = lm.DecoderLM(VOCAB, max_length=24, dim=16, num_layers=2, num_heads=4)
    m(np.zeros((1, 2), np.int32))
    return m


def _ids(batch=3, length=7, seed=0):
    return np.random.default_rng(seed).integers(0, VOCAB, size=(batch, length)).astype(np.int32)


def _softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


# --------------------------------------------------------------------------- decoding helpers


def test_temperature_probabilities_matches_numpy_and_is_stable():
    logits = np.array([[1.0, 2.0, 3.0], [1000.0, 999.0, -3.0]], np.float32)
    for t in (0.5, 1.0, 2.0):
        got = ops.convert_to_numpy(lm.temperature_probabilities(logits, t))
        np.testing.assert_allclose(got, _softmax(logits.astype(np.float64) / t), atol=1e-6)
    with pytest.raises(ValueError, match="temperature"):
        lm.temperature_probabilities(logits, 0.0)
    with pytest.raises(ValueError, match="vocab_size"):
        lm.temperature_probabilities(logits[0], 1.0)
    with pytest.raises(TypeError, match="float"):
        lm.temperature_probabilities(np.ones((1, 3), np.int32), 1.0)


def test_top_k_filter_keeps_k_largest_per_row():
    logits = np.array([[0.1, 3.0, -1.0, 2.0], [5.0, 4.0, 3.0, 2.0]], np.float32)
    got = ops.convert_to_numpy(lm.top_k_filter(logits, 2))
    np.testing.assert_array_equal(got, [[-np.inf, 3.0, -np.inf, 2.0], [5.0, 4.0, -np.inf, -np.inf]])
    np.testing.assert_array_equal(ops.convert_to_numpy(lm.top_k_filter(logits, 4)), logits)
    with pytest.raises(ValueError, match="k must be <="):
        lm.top_k_filter(logits, 5)
    with pytest.raises(ValueError, match="k must be >="):
        lm.top_k_filter(logits, 0)


def test_sample_next_token_greedy_top_k_and_seed():
    logits = np.random.default_rng(0).normal(size=(4, 9)).astype(np.float32)
    greedy = ops.convert_to_numpy(lm.sample_next_token(logits, temperature=0.0))
    np.testing.assert_array_equal(greedy, logits.argmax(-1))
    assert greedy.dtype == np.int32
    top1 = ops.convert_to_numpy(lm.sample_next_token(logits, 1.0, top_k=1, seed=3))
    np.testing.assert_array_equal(top1, logits.argmax(-1))
    a = ops.convert_to_numpy(lm.sample_next_token(logits, 1.0, seed=5))
    b = ops.convert_to_numpy(lm.sample_next_token(logits, 1.0, seed=5))
    np.testing.assert_array_equal(a, b)
    many = np.tile(logits[:1], (2000, 1))
    draws = ops.convert_to_numpy(lm.sample_next_token(many, 1.0, top_k=3, seed=1))
    assert set(draws.tolist()) <= set(np.argsort(-logits[0])[:3].tolist())
    with pytest.raises(ValueError, match="temperature"):
        lm.sample_next_token(logits, -1.0)


def test_sampling_frequencies_follow_the_tempered_softmax():
    logits = np.log(np.array([[0.5, 0.3, 0.2]], np.float32))
    draws = ops.convert_to_numpy(lm.sample_next_token(np.tile(logits, (4000, 1)), 1.0, seed=2))
    np.testing.assert_allclose(np.bincount(draws, minlength=3) / 4000, [0.5, 0.3, 0.2], atol=0.03)


# --------------------------------------------------------------------------- the model


def test_model_output_shape_and_dtype(model):
    logits = model(_ids())
    assert tuple(logits.shape) == (3, 7, VOCAB)
    assert keras.backend.standardize_dtype(logits.dtype) == "float32"


def test_model_is_causal(model):
    ids = _ids()
    changed = ids.copy()
    changed[:, 4:] = (changed[:, 4:] + 1) % VOCAB
    a, b = ops.convert_to_numpy(model(ids)), ops.convert_to_numpy(model(changed))
    np.testing.assert_allclose(a[:, :4], b[:, :4], atol=1e-5)
    assert not np.allclose(a[:, 4:], b[:, 4:])


def test_prefix_embeddings_go_in_front(model):
    ids = _ids()
    prefix = np.random.default_rng(2).normal(size=(3, 4, 16)).astype(np.float32)
    logits = ops.convert_to_numpy(model(ids, prefix_embeddings=prefix))
    assert logits.shape == (3, 7, VOCAB)
    full = np.concatenate([prefix, ops.convert_to_numpy(model.embed(ids))], axis=1)
    every = ops.convert_to_numpy(model.decode_embeddings(full))
    np.testing.assert_allclose(logits, every[:, 4:], atol=1e-5)
    assert not np.allclose(logits, ops.convert_to_numpy(model(ids)), atol=1e-3)   # the prefix is attended to


def test_model_input_errors(model):
    with pytest.raises(ValueError, match="model width"):
        model(_ids(), prefix_embeddings=np.zeros((3, 2, 8), np.float32))
    with pytest.raises(ValueError, match="batch size"):
        model(_ids(), prefix_embeddings=np.zeros((2, 2, 16), np.float32))
    with pytest.raises(ValueError, match="batch, time"):
        model(np.zeros((7,), np.int32))
    with pytest.raises(TypeError, match="integer"):
        model(np.zeros((2, 3), np.float32))
    with pytest.raises(ValueError, match="vocab_size"):
        model(np.full((2, 3), 13, np.int32))
    with pytest.raises(ValueError, match="max_length"):
        model(np.zeros((1, 25), np.int32))
    with pytest.raises(ValueError, match="divisible"):
        lm.DecoderLM(VOCAB, dim=10, num_heads=4)


def test_keras_round_trip(model, tmp_path):
    path = tmp_path / "lm.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded, lm.DecoderLM) and loaded.get_config() == model.get_config()
    ids = _ids()
    np.testing.assert_allclose(ops.convert_to_numpy(loaded(ids)), ops.convert_to_numpy(model(ids)), atol=1e-6)
    assert keras.saving.get_registered_name(lm.DecoderLM) == "mmlm_course>DecoderLM"


def test_blocks_are_causal_transformer_blocks(model):
    assert all(isinstance(block, attention.TransformerBlock) and block.causal for block in model.blocks)
    assert model.count_params() == sum(block.count_params() for block in model.blocks) + (
        VOCAB * 16 + 24 * 16 + 2 * 16 + 16 * VOCAB + VOCAB)      # embeddings, final norm, head


def test_decode_embeddings_returns_the_weights_and_fills_the_cache(model):
    x = ops.convert_to_numpy(model.embed(_ids(2, 5)))
    logits, weights = model.decode_embeddings(x, return_attention_scores=True)
    assert len(weights) == 2 and tuple(weights[0].shape) == (2, 4, 5, 5)
    cache = model.init_cache(2, 8)
    first, first_weights, cache = model.decode_embeddings(x[:, :3], cache=cache, return_attention_scores=True)
    last, cache = model.decode_embeddings(x[:, 3:], cache=cache, start=3)
    np.testing.assert_allclose(np.concatenate([ops.convert_to_numpy(first), ops.convert_to_numpy(last)], axis=1),
                               ops.convert_to_numpy(logits), atol=1e-5)
    np.testing.assert_allclose(ops.convert_to_numpy(first_weights[1])[..., :3],
                               ops.convert_to_numpy(weights[1])[:, :, :3, :3], atol=1e-6)
    keys = ops.convert_to_numpy(cache[0][0])
    assert keys.shape == (2, 4, 8, 4) and np.all(keys[:, :, 5:] == 0) and np.any(keys[:, :, :5] != 0)


# --------------------------------------------------------------------------- objective


def test_next_token_pairs_and_loss():
    ids = np.array([[2, 5, 6, 3, 0], [2, 7, 3, 0, 0]], np.int32)
    inputs, targets = lm.next_token_pairs(ids)
    np.testing.assert_array_equal(inputs, ids[:, :-1])
    np.testing.assert_array_equal(targets, ids[:, 1:])
    logits = np.random.default_rng(0).normal(size=(2, 4, 9)).astype(np.float32)
    got = float(lm.next_token_loss(targets.astype(np.float32), logits))   # Keras passes y_true as float
    expected = float(losses.masked_sequence_loss(targets, logits, targets != 0))
    assert got == pytest.approx(expected, rel=1e-6)
    with pytest.raises(ValueError, match="at least 2"):
        lm.next_token_pairs(ids[:, :1])


def test_perplexity_is_exp_of_the_masked_loss(model):
    ids = np.array([[2, 5, 6, 3, 0], [2, 7, 3, 0, 0]], np.int32)
    inputs, targets = lm.next_token_pairs(ids)
    loss = float(lm.next_token_loss(targets, model(inputs)))
    assert lm.perplexity(model, ids, batch_size=1) == pytest.approx(np.exp(loss), rel=1e-5)
    with pytest.raises(ValueError, match="must lie in"):
        lm.perplexity(model, ids + 20)


def test_uniform_model_has_perplexity_vocab_size():
    m = lm.DecoderLM(VOCAB, max_length=8, dim=8, num_layers=1, num_heads=2)
    m(np.zeros((1, 2), np.int32))
    m.head.kernel.assign(np.zeros(m.head.kernel.shape, np.float32))
    assert lm.perplexity(m, _ids(2, 6)) == pytest.approx(VOCAB, rel=1e-5)


def test_shapeworld_texts_and_unigram_baseline():
    data = shapeworld.generate(3, "train", seed=0)
    texts = lm.shapeworld_texts(data)
    assert texts[0] == f"<caption> {data.captions[0]}"
    assert texts[1] == f"<question> {data.questions[0]} {data.answers[0]}"
    tokenizer = preprocessing.Tokenizer.for_shapeworld(extra_special=lm.TASK_TOKENS)
    ids = tokenizer.encode_batch(texts, add_bos=True, add_eos=True)
    assert ids[0, 0] == tokenizer.bos_id and tokenizer.decode(ids[1]) == f"{data.questions[0]} {data.answers[0]}"
    assert 1.0 < lm.unigram_perplexity(ids, ids, len(tokenizer)) < len(tokenizer)
    with pytest.raises(ValueError, match="kinds"):
        lm.shapeworld_texts(data, kinds=("image",))


# --------------------------------------------------------------------------- generation


def test_cached_and_uncached_generation_agree(model):
    prompt = _ids(4, 3, seed=5)
    tokens_c, logits_c = lm.generate(model, prompt, 12, use_cache=True, return_logits=True)
    tokens_u, logits_u = lm.generate(model, prompt, 12, use_cache=False, return_logits=True)
    assert tokens_c.shape == (4, 12) and tokens_c.dtype == np.int32 and logits_c.shape == (4, 12, VOCAB)
    np.testing.assert_array_equal(tokens_c, tokens_u)
    np.testing.assert_allclose(logits_c, logits_u, atol=1e-4)
    # the first generated token is the model's greedy choice after the prompt
    np.testing.assert_allclose(logits_c[:, 0], ops.convert_to_numpy(model(prompt))[:, -1], atol=1e-4)
    # a shorter generation on the same (reused) cache: what an earlier one left there is never read
    other = _ids(4, 5, seed=9)
    np.testing.assert_array_equal(lm.generate(model, other, 4), lm.generate(model, other, 4, use_cache=False))


def test_cached_generation_from_a_prefix_and_with_sampling(model):
    prompt = _ids(2, 2, seed=6)
    prefix = np.random.default_rng(3).normal(size=(2, 5, 16)).astype(np.float32)
    kwargs = dict(prefix_embeddings=prefix, temperature=1.0, top_k=5, seed=7, return_logits=True)
    tokens_c, logits_c = lm.generate(model, prompt, 8, use_cache=True, **kwargs)
    tokens_u, logits_u = lm.generate(model, prompt, 8, use_cache=False, **kwargs)
    np.testing.assert_array_equal(tokens_c, tokens_u)
    np.testing.assert_allclose(logits_c, logits_u, atol=1e-4)
    eager = lm.generate(model, prompt, 8, use_cache=True, compiled=False, **kwargs)[0]
    np.testing.assert_array_equal(tokens_c, eager)
    np.testing.assert_allclose(logits_c[:, 0], ops.convert_to_numpy(model(prompt, prefix_embeddings=prefix))[:, -1],
                               atol=1e-4)


def test_generate_stops_and_pads(model):
    prompt = _ids(3, 2, seed=8)
    free = lm.generate(model, prompt, 10)
    stop = int(free[0, 2])
    first = int(np.argmax(free[0] == stop))                        # where row 0 first emits it
    tokens = lm.generate(model, prompt, 10, stop_id=stop, pad_id=0)
    np.testing.assert_array_equal(tokens[0, :first + 1], free[0, :first + 1])
    assert np.all(tokens[0, first + 1:] == 0)
    for row, free_row in zip(tokens, free):                       # ends once every row has stopped
        assert stop in row or len(row) == 10


def test_generate_errors(model):
    with pytest.raises(ValueError, match="max_length"):
        lm.generate(model, _ids(1, 4), 30)
    with pytest.raises(ValueError, match="prompt_ids"):
        lm.generate(model, np.array([1, 2], np.int32), 3)
    with pytest.raises(ValueError, match="must lie in"):
        lm.generate(model, np.array([[1, 99]], np.int32), 3)
    with pytest.raises(ValueError, match="top_k"):
        lm.generate(model, _ids(1, 2), 3, temperature=1.0, top_k=50)
    with pytest.raises(ValueError, match="batch size"):
        lm.generate(model, _ids(1, 2), 3, prefix_embeddings=np.zeros((2, 1, 16), np.float32))
    with pytest.raises(TypeError, match="DecoderLM"):
        lm.generate(object(), _ids(1, 2), 3)


def test_attention_weights_are_causal_rows_of_a_softmax(model):
    weights = lm.attention_weights(model, _ids(2, 6), block_index=1)
    assert weights.shape == (2, 4, 6, 6) and weights.dtype == np.float32
    np.testing.assert_allclose(weights.sum(-1), 1.0, atol=1e-5)
    assert np.all(np.triu(weights, k=1) == 0)
    with pytest.raises(ValueError, match="block_index"):
        lm.attention_weights(model, _ids(), block_index=2)


def test_attention_weights_are_those_of_the_first_block(model):
    ids = _ids(2, 6)
    block = model.blocks[0]
    x = ops.convert_to_numpy(model.embed(ids)) + ops.convert_to_numpy(model.position_embedding.embeddings)[:6]
    h = ops.convert_to_numpy(block.norm1(x))
    mha = block.attention
    q, k = (np.einsum("btd,dhk->bhtk", h, ops.convert_to_numpy(kernel)) + ops.convert_to_numpy(bias)[:, None]
            for kernel, bias in ((mha.query_kernel, mha.query_bias), (mha.key_kernel, mha.key_bias)))
    scores = np.where(np.tril(np.ones((6, 6), bool)), q @ np.swapaxes(k, -1, -2) / np.sqrt(4), -np.inf)
    expected = np.exp(scores - scores.max(-1, keepdims=True))
    expected /= expected.sum(-1, keepdims=True)
    np.testing.assert_allclose(lm.attention_weights(model, ids, block_index=0), expected, atol=1e-5)


def test_attention_weights_with_a_prefix(model):
    prefix = np.random.default_rng(4).normal(size=(2, 3, 16)).astype(np.float32)
    weights = lm.attention_weights(model, _ids(2, 5), block_index=0, prefix_embeddings=prefix)
    assert weights.shape == (2, 4, 8, 8)
    np.testing.assert_allclose(weights.sum(-1), 1.0, atol=1e-5)


def test_time_generation_reports_both_paths(model):
    figures = lm.time_generation(model, _ids(2, 2), max_new_tokens=4, repeats=1)
    assert set(figures) == {"cached_s", "uncached_s", "speedup"}
    assert figures["speedup"] == pytest.approx(figures["uncached_s"] / figures["cached_s"])


# Issue #16: bad input to the public functions raises a clear TypeError / ValueError.
_IDS = np.array([[1, 5, 6, 2, 0], [1, 7, 8, 9, 2]], np.int32)


@pytest.mark.parametrize("call,error,word", [
    (lambda: lm.DecoderLM(20, num_layers=10**9), ValueError, "num_layers"),
    (lambda: lm.shapeworld_texts(None), TypeError, "ShapeWorldData"),
    (lambda: lm.next_token_loss(None, np.zeros((2, 4, 20), np.float32)), TypeError, "targets"),
    (lambda: lm.next_token_loss(np.zeros((2, 4)).astype(str), np.zeros((2, 4, 20), np.float32)), TypeError,
     "targets"),
    (lambda: lm.unigram_perplexity(_IDS, _IDS, 10**9), ValueError, "vocab_size"),
    (lambda: lm.unigram_perplexity(_IDS, _IDS, 20, pad_id="0"), TypeError, "pad_id"),
    (lambda: lm.unigram_perplexity(_IDS, _IDS, 20, pad_id=-1), ValueError, "pad_id"),
    (lambda: lm.sample_next_token(np.full((2, 5), np.nan, np.float32)), ValueError, "NaN"),
    (lambda: lm.sample_next_token(np.zeros((2, 5), np.float32), temperature=float("inf")), ValueError,
     "temperature"),
    (lambda: lm.sample_next_token(np.zeros((2, 5), np.float32), seed=2.5), TypeError, "seed"),
    (lambda: lm.sample_next_token(np.zeros((2, 5), np.float32), seed=-1), ValueError, "seed"),
])
def test_bad_inputs_raise_clear_errors(call, error, word):
    with pytest.raises(error, match=word):
        call()


@pytest.mark.parametrize("call,error,word", [
    (lambda: lm.next_token_pairs(np.array([[1, -5, 2]])), ValueError, ">= 0"),
    (lambda: lm.temperature_probabilities(np.zeros((2, 5), np.float32), float("inf")), ValueError, "temperature"),
])
def test_negative_ids_and_infinite_temperature_are_refused(call, error, word):
    with pytest.raises(error, match=word):
        call()
