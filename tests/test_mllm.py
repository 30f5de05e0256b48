"""Tests for lesson 08: mllm (the model), instructions, grid_encoder, relation_head, stages, generation."""

import mmlm_course

mmlm_course.setup_notebook(seed=0)

import dataclasses  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from keras import ops  # noqa: E402

from mmlm_course import detector, generation, grid_encoder, instructions  # noqa: E402
from mmlm_course import language_model as lm  # noqa: E402
from mmlm_course import mllm, preprocessing, qa, relation_head, shapeworld, stages, training  # noqa: E402
from mmlm_course.encoders import masked_mean_pool  # noqa: E402

TINY = mllm.MLLMConfig(image_size=16, encoder_filters=(4, 8), vision_dim=8, dim=16, num_layers=2, num_heads=2,
                       max_text_length=20)
TOKENIZER = preprocessing.Tokenizer.for_shapeworld(extra_special=instructions.TASK_TOKENS)


@pytest.fixture(scope="module")
def data():
    return shapeworld.generate(6, "validation", seed=1, image_size=16)


@pytest.fixture(scope="module")
def model():
    keras.utils.set_random_seed(3)
    return mllm.build_model(TINY, TOKENIZER)


@pytest.fixture(scope="module")
def cross_model():
    keras.utils.set_random_seed(4)
    m = mllm.build_model(dataclasses.replace(TINY, architecture="cross_attention"), TOKENIZER)
    for layer in m.cross_attention:  # open the gates so the image matters in the tests
        layer.gate.assign(1.0)
    return m


def _batch(data, model_config=TINY, tasks=instructions.TASKS):
    return instructions.make_examples(data, TOKENIZER, model_config.max_text_length, tasks)


# --------------------------------------------------------------------------- tokens and the instruction format


def test_tokenizer_has_task_tokens_after_the_specials():
    assert TOKENIZER.id_to_token[:7] == ["<pad>", "<unk>", "<bos>", "<eos>", "<caption>", "<question>", "<answer>"]
    assert instructions.TASK_TOKENS[:2] == lm.TASK_TOKENS
    real = preprocessing.Tokenizer.from_texts(["a dog runs", "a cat"], extra_special=instructions.TASK_TOKENS)
    assert real.id_to_token[4:8] == ["<caption>", "<question>", "<answer>", "a"]
    assert {4, 5, 6} <= real.special_ids
    with pytest.raises(ValueError, match="task tokens"):
        instructions.require_task_tokens(preprocessing.Tokenizer.for_shapeworld())
    with pytest.raises(TypeError, match="Tokenizer"):
        instructions.require_task_tokens(["<pad>"])


def test_prompt_ids_formats():
    ids = TOKENIZER.token_to_id
    assert instructions.prompt_ids("", TOKENIZER) == [TOKENIZER.bos_id, ids["<caption>"]]
    question = instructions.prompt_ids("what color is the circle?", TOKENIZER)
    assert question[:2] == [TOKENIZER.bos_id, ids["<question>"]] and question[-1] == ids["<answer>"]
    assert TOKENIZER.decode(question) == "what color is the circle?"


def test_answer_only_targets_matches_a_loop():
    rng = np.random.default_rng(0)
    ids = rng.integers(4, 30, size=(4, 9)).astype(np.int32)
    lengths = np.array([1, 2, 5, 8])
    inputs, targets = instructions.answer_only_targets(ids, lengths)
    assert inputs.dtype == targets.dtype == np.int32 and inputs.shape == targets.shape == (4, 8)
    for b in range(4):
        for t in range(8):
            assert inputs[b, t] == ids[b, t]
            assert targets[b, t] == (ids[b, t + 1] if t + 1 >= lengths[b] else 0)


def test_answer_only_targets_errors():
    ids = np.ones((2, 5), np.int32)
    with pytest.raises(ValueError, match="prompt_lengths"):
        instructions.answer_only_targets(ids, np.array([1, 2, 3]))
    with pytest.raises(ValueError, match="answer token"):
        instructions.answer_only_targets(ids, np.array([1, 5]))
    with pytest.raises(ValueError, match="expected int"):
        instructions.answer_only_targets(ids.astype(np.float32), np.array([1, 1]))


def test_make_examples_rows_and_masks(data):
    x, y = _batch(data)
    n = len(data)
    assert set(x) == {"images", "token_ids"}
    assert x["images"].shape == (2 * n, 16, 16, 3) and x["images"].dtype == np.uint8
    assert x["token_ids"].shape == y.shape == (2 * n, TINY.max_text_length)
    assert x["token_ids"].dtype == y.dtype == np.int32
    np.testing.assert_array_equal(x["images"][0], x["images"][1])        # image 0: caption row, question row
    caption_row, question_row = x["token_ids"][0], x["token_ids"][1]
    assert TOKENIZER.decode(caption_row) == data.captions[0]
    assert TOKENIZER.decode(y[0]) == data.captions[0]                       # every caption token is a target
    assert TOKENIZER.decode(y[1]) == data.answers[0]                        # only the answer is a target
    assert TOKENIZER.id_to_token[caption_row[1]] == "<caption>"
    assert TOKENIZER.id_to_token[question_row[1]] == "<question>"
    x_qa, y_qa = _batch(data, tasks=("qa",))
    assert len(y_qa) == n
    np.testing.assert_array_equal(y_qa, y[1::2])


def test_make_examples_errors(data):
    with pytest.raises(ValueError, match="tasks"):
        instructions.make_examples(data, TOKENIZER, 20, tasks=("vqa",))
    with pytest.raises(ValueError, match="task tokens"):
        instructions.make_examples(data, preprocessing.Tokenizer.for_shapeworld(), 20)
    with pytest.raises(ValueError, match="no room"):
        instructions.make_examples(data, TOKENIZER, 5, tasks=("qa",))
    with pytest.raises(TypeError, match="ShapeWorldData"):
        instructions.make_examples(data.images, TOKENIZER, 20)


def test_make_examples_from_texts_for_real_data():
    images = np.random.default_rng(0).integers(0, 256, size=(2, 16, 16, 3), dtype=np.uint8)
    captions = ["a dog runs on the grass", "two people walk along a long sandy beach near the sea"]
    qa = [("what animal is this?", "dog"), ("how many people", "two")]
    tokenizer = preprocessing.Tokenizer.from_texts(captions + [q for q, _ in qa] + [a for _, a in qa],
                                                   extra_special=instructions.TASK_TOKENS)
    x, y = instructions.make_examples_from_texts(images, captions, qa, tokenizer, max_text_length=8)
    assert x["token_ids"].shape == y.shape == (4, 8)
    assert TOKENIZER.id_to_token[x["token_ids"][3, 1]] == "<question>"
    assert tokenizer.decode(y[3]) == "two"                                  # no "?" needed: <answer> marks it
    assert tokenizer.decode(y[2]) == "two people walk along a long sandy"  # a long caption is cut
    x, y = instructions.make_examples_from_texts(images, captions, None, tokenizer, max_text_length=20)
    assert len(y) == 2 and tokenizer.decode(y[1]) == captions[1]
    with pytest.raises(ValueError, match="same batch size"):
        instructions.make_examples_from_texts(images, captions[:1], None, tokenizer, 20)
    with pytest.raises(ValueError, match="captions, qa or both"):
        instructions.make_examples_from_texts(images, None, None, tokenizer, 20)
    with pytest.raises(ValueError, match="channels"):
        instructions.make_examples_from_texts(images[..., :2], captions, None, tokenizer, 20)


def test_instruction_texts_interleave_images_and_skip_missing_texts(data):
    texts = instructions.instruction_texts(data.captions, list(zip(data.questions, data.answers)))
    assert texts[0] == f"<caption> {data.captions[0]}"
    assert texts[1] == f"<question> {data.questions[0]} <answer> {data.answers[0]}"
    assert len(texts) == 2 * len(data)
    assert instructions.instruction_texts(["a dog", ""], [None, ("what?", "cat")]) == \
        ["<caption> a dog", "<question> what? <answer> cat"]
    with pytest.raises(ValueError, match="one entry per image"):
        instructions.instruction_texts(["a dog"], [("what?", "cat"), ("who?", "me")])
    with pytest.raises(ValueError, match="captions, qa or both"):
        instructions.instruction_texts()


# --------------------------------------------------------------------------- configuration and models


def test_config_round_trips_and_validates():
    config = mllm.MLLMConfig()
    assert mllm.MLLMConfig(**dataclasses.asdict(config)) == config
    assert mllm.MLLMConfig(**json.loads(json.dumps(dataclasses.asdict(config)))) == config
    assert config.image_size == 64 and config.num_image_tokens == 16 and config.grid_size == 4
    assert mllm.MLLMConfig(image_size=32, stem=1).grid_size == 4
    assert config.image_mean == preprocessing.SHAPEWORLD_MEAN and config.image_std == preprocessing.SHAPEWORLD_STD
    with pytest.raises(ValueError, match="divisible by stem"):
        mllm.MLLMConfig(image_size=60)
    with pytest.raises(ValueError, match="image_std"):
        mllm.MLLMConfig(image_std=(0.1, 0.0, 0.1))
    with pytest.raises(ValueError, match="divisible by num_heads"):
        mllm.MLLMConfig(dim=30, num_heads=4)
    with pytest.raises(ValueError, match="architecture"):
        mllm.MLLMConfig(architecture="late")
    with pytest.raises(TypeError, match="num_layers"):
        mllm.MLLMConfig(num_layers=2.0)
    with pytest.raises(ValueError, match="max_text_length"):
        mllm.MLLMConfig(max_text_length=2)


def test_grid_encoder_space_to_depth_and_coordinates():
    encoder = grid_encoder.GridImageEncoder(image_size=8, filters=(4,), embed_dim=6, stem=2)
    images = np.random.default_rng(0).normal(size=(2, 8, 8, 3)).astype(np.float32)
    packed = ops.convert_to_numpy(encoder.space_to_depth(images))               # (2, 4, 4, 12)
    assert packed.shape == (2, 4, 4, 12)
    np.testing.assert_array_equal(packed[:, 1, 2], images[:, 2:4, 4:6].reshape(2, 12))   # no pixel lost
    with_xy = ops.convert_to_numpy(encoder.add_coordinates(packed))             # (2, 4, 4, 14)
    np.testing.assert_allclose(with_xy[0, :, :, 12], np.tile(np.linspace(-1, 1, 4), (4, 1)), atol=1e-6)  # columns
    np.testing.assert_allclose(with_xy[0, :, :, 13], np.tile(np.linspace(-1, 1, 4), (4, 1)).T, atol=1e-6)  # rows
    assert tuple(encoder(images).shape) == (2, 4, 6)                             # 2x2 grid of tokens
    with pytest.raises(ValueError, match="divisible by stem"):
        grid_encoder.GridImageEncoder(image_size=10, filters=(4,), stem=2)
    with pytest.raises(ValueError, match="expected ndim=4"):
        encoder(images[0])                                                      # one image, no batch axis


def test_llava_forward_shapes_and_image_dtypes(model, data):
    x, _ = _batch(data)
    logits = model(x)
    assert tuple(logits.shape) == (2 * len(data), TINY.max_text_length, len(TOKENIZER))
    assert keras.backend.standardize_dtype(logits.dtype) == "float32"
    as_float = dict(x, images=x["images"].astype(np.float32) / 255.0)
    np.testing.assert_allclose(ops.convert_to_numpy(model(as_float)), ops.convert_to_numpy(logits), atol=1e-5)
    assert model.language_model.max_length == TINY.num_image_tokens + TINY.max_text_length


def test_llava_is_the_language_model_with_an_image_prefix(model, data):
    x, _ = _batch(data)
    prefix = model.image_tokens(x["images"])
    assert tuple(prefix.shape) == (2 * len(data), TINY.num_image_tokens, TINY.dim)
    expected = model.language_model(x["token_ids"], prefix_embeddings=prefix)
    np.testing.assert_allclose(ops.convert_to_numpy(model(x)), ops.convert_to_numpy(expected), atol=1e-5)
    # the exercise's concatenation + positions is exactly what the language model does
    decoder = model.language_model
    table = decoder.position_embedding.embeddings
    sequence = mllm.prepend_image_tokens(prefix, decoder.embed(x["token_ids"]), table)
    x_manual = sequence
    for block in decoder.blocks:
        x_manual = block(x_manual)
    manual = decoder.head(decoder.final_norm(x_manual))[:, TINY.num_image_tokens:]
    np.testing.assert_allclose(ops.convert_to_numpy(manual), ops.convert_to_numpy(expected), atol=1e-4)


def test_projector_is_the_exercise_mlp(model):
    features = np.random.default_rng(0).normal(size=(2, TINY.num_image_tokens, TINY.vision_dim)).astype(np.float32)
    projector = model.projector
    expected = mllm.project_tokens(features, projector.hidden.kernel, projector.hidden.bias,
                                   projector.output_layer.kernel, projector.output_layer.bias)
    np.testing.assert_allclose(ops.convert_to_numpy(projector(features)), ops.convert_to_numpy(expected), atol=1e-5)


def test_image_changes_the_prediction(model, cross_model, data):
    x, _ = _batch(data)
    for m in (model, cross_model):
        swapped = dict(x, images=x["images"][::-1])
        assert not np.allclose(ops.convert_to_numpy(m(x)), ops.convert_to_numpy(m(swapped)), atol=1e-4)


def test_input_errors(model, data):
    x, _ = _batch(data)
    with pytest.raises(ValueError, match="same batch size"):
        model({"images": x["images"], "token_ids": x["token_ids"][:3]})
    with pytest.raises(ValueError, match="images must have shape"):
        model({"images": np.zeros((2, 32, 32, 3), np.uint8), "token_ids": x["token_ids"][:2]})
    with pytest.raises(ValueError, match="expected a dict"):
        model(x["images"])
    with pytest.raises(ValueError, match="max_text_length"):
        model({"images": x["images"][:1], "token_ids": np.ones((1, 30), np.int32)})
    with pytest.raises(TypeError, match="integer"):
        model({"images": x["images"][:1], "token_ids": np.ones((1, 5), np.float32)})


@pytest.mark.parametrize("architecture", mllm.ARCHITECTURES)
def test_keras_round_trip(architecture, data, tmp_path):
    keras.utils.set_random_seed(5)
    config = dataclasses.replace(TINY, architecture=architecture)
    original = mllm.build_model(config, TOKENIZER)
    x, _ = _batch(data)
    path = tmp_path / f"{architecture}.keras"
    original.save(path)
    loaded = keras.models.load_model(path)
    assert type(loaded) is type(original) and loaded.config == config
    assert set(original.get_config()) >= {"config", "vocab_size"}                # the config, stored once
    assert "dim" not in original.get_config() and original.get_config()["config"]["dim"] == TINY.dim
    np.testing.assert_allclose(ops.convert_to_numpy(loaded(x)), ops.convert_to_numpy(original(x)), atol=1e-5)
    for cls in (mllm.LLaVAModel, mllm.CrossAttentionMLLM, mllm.ImageTokenProjector, mllm.GatedCrossAttention,
                grid_encoder.GridImageEncoder, relation_head.RelationHead):
        assert keras.saving.get_registered_name(cls) == f"mmlm_course>{cls.__name__}"


def test_model_classes_refuse_a_config_of_the_other_architecture():
    with pytest.raises(ValueError, match="architecture"):
        mllm.CrossAttentionMLLM(TINY, len(TOKENIZER))
    with pytest.raises(TypeError, match="MLLMConfig"):
        mllm.LLaVAModel(dataclasses.asdict(TINY), len(TOKENIZER))


# --------------------------------------------------------------------------- two-stage training


def _weights(layer):
    return [np.array(ops.convert_to_numpy(w)) for w in layer.weights]


def _changed(before, after):
    return any(not np.array_equal(a, b) for a, b in zip(before, after))


@pytest.mark.parametrize("architecture", mllm.ARCHITECTURES)
def test_stages_train_the_right_parts(architecture, data):
    keras.utils.set_random_seed(6)
    model = mllm.build_model(dataclasses.replace(TINY, architecture=architecture), TOKENIZER)
    x, y = _batch(data)
    parts = {"image_encoder": model.image_encoder, "projector": model.projector,
             "language_model": model.language_model}
    count = stages.compile_for_stage(model, 1, 1e-2)
    connector = sum(int(np.prod(w.shape)) for w in model.projector.weights)
    if architecture == "cross_attention":
        connector += sum(int(np.prod(w.shape)) for layer in model.cross_attention for w in layer.weights)
    assert count == connector == stages.trainable_parameter_count(model)
    before = {name: _weights(part) for name, part in parts.items()}
    for _ in range(2):  # two steps: a closed cross-attention gate passes no gradient to the projector at first
        loss = model.train_on_batch(x, y)
    assert math.isfinite(float(loss))
    changed = {name: _changed(before[name], _weights(part)) for name, part in parts.items()}
    assert changed == {"image_encoder": False, "projector": True, "language_model": False}
    assert stages.compile_for_stage(model, 2, 1e-2, total_steps=10) == model.count_params()
    before = {name: _weights(part) for name, part in parts.items()}
    for _ in range(2):  # the warmup's learning rate is 0 at step 0
        model.train_on_batch(x, y)
    assert all(_changed(before[name], _weights(part)) for name, part in parts.items())
    with pytest.raises(ValueError, match="stage"):
        stages.compile_for_stage(model, 3, 1e-3)
    with pytest.raises(ValueError, match="learning_rate"):
        stages.compile_for_stage(model, 1, 0.0)


def test_train_steps_runs_exactly_the_steps(data):
    keras.utils.set_random_seed(8)
    model = mllm.build_model(TINY, TOKENIZER)
    x, y = _batch(data)                                                         # 12 rows
    stages.compile_for_stage(model, 2, 1e-2, total_steps=7)
    log = training.train_steps(model, x, y, steps=7, batch_size=5, log_every=3)
    assert log["steps"] == [3, 6, 7] and len(log["loss"]) == 3
    assert int(ops.convert_to_numpy(model.optimizer.iterations)) == 7
    assert all(math.isfinite(v) for v in log["loss"]) and log["rows_per_second"] > 0
    with pytest.raises(ValueError, match="same number of rows"):
        training.train_steps(model, x, y[:3], steps=1)
    with pytest.raises(ValueError, match="larger than"):
        training.train_steps(model, x, y, steps=1, batch_size=13)


def test_train_steps_resumed_trains_the_same_batches_as_one_run(data):
    """Steps 0..3, then 4..6 from start_step=4, give the weights of one run of 7 steps."""
    x, y = _batch(data)
    results = []
    for parts in ([(0, 7)], [(0, 4), (4, 7)]):
        keras.utils.set_random_seed(8)
        model = mllm.build_model(TINY, TOKENIZER)
        stages.compile_for_stage(model, 2, 1e-2, total_steps=7)
        seen = []
        for first, last in parts:
            log = training.train_steps(model, x, y, last, batch_size=5, seed=3, start_step=first,
                                       on_step=lambda step, logs: seen.append((step, logs["loss"])))
            assert log["steps"][-1] == last
        assert [step for step, _ in seen] == list(range(1, 8))
        results.append((model.get_weights(), [loss for _, loss in seen]))
    np.testing.assert_allclose(results[0][1], results[1][1], rtol=1e-5)
    for a, b in zip(results[0][0], results[1][0]):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_language_model_weights_move_between_architectures(model, data):
    keras.utils.set_random_seed(9)
    cross = mllm.build_model(dataclasses.replace(TINY, architecture="cross_attention"), TOKENIZER)
    source = model.language_model
    stages.load_language_model_weights(cross, source.get_weights(), offset=TINY.num_image_tokens)
    table_variable = cross.language_model.position_embedding.embeddings
    for target, original in zip(cross.language_model.weights, source.weights):
        if target is not table_variable:
            np.testing.assert_array_equal(ops.convert_to_numpy(target), ops.convert_to_numpy(original))
    table = ops.convert_to_numpy(table_variable)
    np.testing.assert_array_equal(table, ops.convert_to_numpy(source.position_embedding.embeddings)[
        TINY.num_image_tokens:TINY.num_image_tokens + TINY.max_text_length])
    with pytest.raises(ValueError, match="weight arrays"):
        stages.load_language_model_weights(cross, source.get_weights()[:-1])


def test_loss_counts_answer_tokens_only(model, data):
    x, y = _batch(data)
    logits = model(x)
    loss = float(model.compute_loss(x, y, logits))
    log_probs = ops.convert_to_numpy(ops.log_softmax(logits, axis=-1))
    real = y != 0
    expected = -np.take_along_axis(log_probs, y[..., None], -1)[..., 0][real].mean()
    assert loss == pytest.approx(expected, rel=1e-5)


def test_pretraining_puts_text_behind_a_blank_image(data):
    keras.utils.set_random_seed(7)
    model = mllm.build_model(TINY, TOKENIZER)
    texts = instructions.instruction_texts(data.captions, list(zip(data.questions, data.answers)))
    encoder_before = _weights(model.image_encoder)
    history = stages.pretrain_language_model(model, texts, TOKENIZER, epochs=2, batch_size=4)
    assert len(history.history["loss"]) == 2 and math.isfinite(history.history["loss"][-1])
    assert not _changed(encoder_before, _weights(model.image_encoder))


# --------------------------------------------------------------------------- generation, evaluation, attention


def _greedy_by_full_forward(m, images, prompt: str, steps: int) -> str:
    ids = instructions.prompt_ids(prompt, TOKENIZER)
    for _ in range(steps):
        logits = m({"images": images[None], "token_ids": np.array([ids], np.int32)})
        token = int(np.argmax(ops.convert_to_numpy(logits)[0, -1]))
        ids.append(token)
        if token == TOKENIZER.eos_id or len(ids) == TINY.max_text_length:
            break
    return TOKENIZER.decode(ids[len(instructions.prompt_ids(prompt, TOKENIZER)):])


def test_generate_texts_matches_greedy_full_forward(model, cross_model, data):
    prompts = ["", data.questions[0], "", data.questions[3]]
    images = data.images[:4]
    for m in (model, cross_model):
        texts = generation.generate_texts(m, TOKENIZER, images, prompts, max_new_tokens=6, batch_size=3)
        assert len(texts) == 4 and all(isinstance(t, str) for t in texts)
        expected = [_greedy_by_full_forward(m, image, prompt, 6) for image, prompt in zip(images, prompts)]
        assert texts == expected


def test_generate_texts_errors(model, data):
    with pytest.raises(ValueError, match="same batch size"):
        generation.generate_texts(model, TOKENIZER, data.images[:3], ["", ""])
    with pytest.raises(ValueError, match="16x16"):
        generation.generate_texts(model, TOKENIZER, np.zeros((1, 64, 64, 3), np.uint8), [""])
    with pytest.raises(ValueError, match="0, 1"):
        generation.generate_texts(model, TOKENIZER, np.full((1, 16, 16, 3), 200.0, np.float32), [""])
    with pytest.raises(TypeError, match="list of strings"):
        generation.generate_texts(model, TOKENIZER, data.images[:1], "")
    with pytest.raises(TypeError, match="mllm model"):
        generation.generate_texts(model.language_model, TOKENIZER, data.images[:1], [""])


def test_evaluate_reports_the_figures(model, data):
    result = generation.evaluate(model, TOKENIZER, data, batch_size=4)
    for key in ("caption_truth", "caption_parses", "qa_exact_match"):
        assert 0.0 <= result[key] <= 1.0
    assert set(result["qa_by_type"]) == set(data.question_types)
    assert len(result["captions"]) == len(result["answers"]) == len(data)
    truth = np.mean([shapeworld.caption_is_true(c, s) for c, s in zip(result["captions"], data.scenes)])
    assert result["caption_truth"] == pytest.approx(truth)


def test_image_attention_is_read_from_the_attention_layers(model, cross_model, data):
    x, _ = _batch(data)
    images, ids = x["images"][:3], x["token_ids"][:3, :8]
    maps = generation.image_attention(model, images, ids)
    assert maps.shape == (3, TINY.num_layers, TINY.num_heads, 8, TINY.num_image_tokens) and maps.dtype == np.float32
    assert np.all(maps >= 0) and np.all(maps.sum(-1) <= 1 + 1e-5)
    # the first block's own attention layer, run on [image tokens ; text] + positions
    decoder, prefix = model.language_model, model.image_tokens(images)
    sequence = mllm.prepend_image_tokens(prefix, decoder.embed(ids), decoder.position_embedding.embeddings)
    block = decoder.blocks[0]
    _, weights = block.attention(block.norm1(sequence), return_attention_scores=True)   # (B, H, P + T, P + T)
    P = TINY.num_image_tokens
    np.testing.assert_allclose(maps[:, 0], ops.convert_to_numpy(weights)[:, :, P:, :P], atol=1e-5)
    # causal: a later token changes no earlier position's weights
    changed = np.array(ids)
    changed[:, 5:] = TOKENIZER.token_to_id["circle"]
    np.testing.assert_allclose(generation.image_attention(model, images, changed)[:, :, :, :5], maps[:, :, :, :5],
                               atol=1e-5)
    cross = generation.image_attention(cross_model, images, ids)
    assert cross.shape == maps.shape
    np.testing.assert_allclose(cross.sum(-1), 1.0, atol=1e-5)
    with pytest.raises(ValueError, match="same batch size"):
        generation.image_attention(model, images, ids[:2])
    with pytest.raises(ValueError, match="vocab_size"):
        generation.image_attention(model, images, np.full((3, 4), len(TOKENIZER), np.int32))


def test_lesson_08_modules_have_no_tensorflow():
    import inspect

    for module in (mllm, instructions, grid_encoder, relation_head, stages, generation):
        source = inspect.getsource(module)
        assert "tensorflow" not in source and "tf." not in source, module.__name__


def test_grid_coordinates_make_column_and_row_linearly_readable():
    table = np.asarray(grid_encoder.GridCoordinates(4, seed=3)((16, 32)))         # (16 cells, 32)
    xy = grid_encoder.grid_coordinate_features(4)[:, :2]                          # (16, 2): column, row
    readout, *_ = np.linalg.lstsq(table, xy, rcond=None)
    np.testing.assert_allclose(table @ readout, xy, atol=1e-4)
    assert xy[1, 0] > xy[0, 0] and xy[4, 1] > xy[0, 1]                            # reading order
    with pytest.raises(ValueError, match="table"):
        grid_encoder.GridCoordinates(4)((9, 32))


# --------------------------------------------------------------------------- object vision and the relation head

OBJECTS = mllm.MLLMConfig(image_size=64, vision="objects", relation_head=True, dim=16, num_layers=1, num_heads=2,
                          max_text_length=20)


@pytest.fixture(scope="module")
def object_data():
    return shapeworld.generate(6, "validation", seed=2)


@pytest.fixture(scope="module")
def object_model():
    keras.utils.set_random_seed(5)
    return mllm.build_model(OBJECTS, TOKENIZER)


def test_object_vision_config_is_validated():
    assert OBJECTS.num_image_tokens == shapeworld.MAX_OBJECTS
    with pytest.raises(ValueError, match="vision"):
        mllm.MLLMConfig(vision="patches")
    with pytest.raises(ValueError, match="64x64"):
        mllm.MLLMConfig(image_size=32, stem=1, vision="objects")
    with pytest.raises(ValueError, match="vision='objects'"):
        mllm.MLLMConfig(relation_head=True)
    with pytest.raises(TypeError, match="relation_head"):
        mllm.MLLMConfig(vision="objects", relation_head="yes")
    # the grid fields are unused with object vision: not checked, not needed
    unused = mllm.MLLMConfig(vision="objects", stem=3, encoder_filters=(), vision_dim=0)
    assert unused.num_image_tokens == shapeworld.MAX_OBJECTS
    with pytest.raises(ValueError, match="no grid"):
        unused.grid_size


def test_object_tokens_feed_the_projector_and_the_relation_head(object_model, object_data):
    features = ops.convert_to_numpy(object_model.image_features(object_data.images[:2]))
    assert features.shape == (2, shapeworld.MAX_OBJECTS, 14)
    floats = ops.convert_to_numpy(object_model.image_features(object_data.images[:2].astype("float32") / 255.0))
    np.testing.assert_allclose(floats, features, atol=1e-4)          # uint8 and float images are the same image
    x, _ = _batch(object_data, OBJECTS)
    logits = ops.convert_to_numpy(object_model(x))
    assert logits.shape == (len(x["token_ids"]), OBJECTS.max_text_length, len(TOKENIZER))
    decoder_only = object_model.language_model(x["token_ids"], prefix_embeddings=object_model.image_tokens(x["images"]))
    scores = ops.convert_to_numpy(object_model.relation_head(object_model.image_features(x["images"]), x["token_ids"]))
    np.testing.assert_allclose(logits, ops.convert_to_numpy(decoder_only) + scores, rtol=1e-4, atol=1e-4)


def test_relation_head_reads_only_the_words_so_far(object_model, object_data):
    """Position t's scores may use tokens 0..t, never later ones (they are what it predicts)."""
    x, _ = _batch(object_data, OBJECTS)
    objects = object_model.image_features(x["images"][:2])
    ids = np.array(x["token_ids"][:2])
    changed = ids.copy()
    changed[:, 6:] = TOKENIZER.token_to_id["circle"]
    before = ops.convert_to_numpy(object_model.relation_head(objects, ids))
    after = ops.convert_to_numpy(object_model.relation_head(objects, changed))
    np.testing.assert_allclose(before[:, :6], after[:, :6], atol=1e-5)
    assert np.abs(before[:, 6:] - after[:, 6:]).max() > 1e-4       # and it does read them once they are seen
    shorter = ops.convert_to_numpy(object_model.relation_head(objects, ids[:, :9]))
    np.testing.assert_allclose(shorter, before[:, :9], atol=1e-5)    # any length up to max_text_length


def test_object_model_round_trips_and_generates(object_model, object_data, tmp_path):
    x, _ = _batch(object_data, OBJECTS)
    path = tmp_path / "objects.keras"
    object_model.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_allclose(ops.convert_to_numpy(loaded(x)), ops.convert_to_numpy(object_model(x)), atol=1e-5)
    prompts = ["", object_data.questions[0]]
    texts = generation.generate_texts(object_model, TOKENIZER, object_data.images[:2], prompts, max_new_tokens=5)
    # recomputed at every step (no cache: the relation head needs the whole text so far)
    assert texts == [_greedy_by_full_forward(object_model, image, prompt, 5)
                     for image, prompt in zip(object_data.images[:2], prompts)]


def test_object_stages_keep_the_pretrained_detector_frozen(object_data):
    model = mllm.build_model(OBJECTS, TOKENIZER)
    head, projector, vision, total = (int(sum(np.prod(w.shape) for w in part.weights)) for part in
                                      (model.relation_head, model.projector, model.image_encoder, model))
    assert head > 0 and vision > 0
    assert stages.set_stage_trainable(model, 1) == projector + head    # stage 1: the new parts only
    assert stages.set_stage_trainable(model, 2) == total - vision      # stage 2: all but the pretrained detector
    assert not model.image_encoder.trainable


def test_load_object_encoder_copies_the_detector_and_refuses_others(object_data):
    model = mllm.build_model(OBJECTS, TOKENIZER)
    _, token_model = detector.build_object_encoder()
    token_model.set_weights([w + 0.01 for w in token_model.get_weights()])
    stages.load_object_encoder(model, token_model)
    np.testing.assert_allclose(ops.convert_to_numpy(model.image_encoder.detector(object_data.images[:2])),
                               ops.convert_to_numpy(token_model(object_data.images[:2])), atol=1e-5)
    with pytest.raises(ValueError, match="object encoder"):
        stages.load_object_encoder(model, qa.build_qa_model("image_only"))
    with pytest.raises(ValueError, match="vision='objects'"):
        stages.load_object_encoder(mllm.build_model(TINY, TOKENIZER), token_model)


def test_relation_head_equals_the_relation_network_at_every_position(object_model, object_data):
    """The head shares the word projections between positions; the scores must be those of
    lesson 04's relation network run on the words 0..t for each position t."""
    head = object_model.relation_head
    x, _ = _batch(object_data, OBJECTS)
    objects = object_model.image_features(x["images"][:3])
    ids = np.array(x["token_ids"][:3])
    scores = ops.convert_to_numpy(head(objects, ids))                                  # (3, L, V)
    words = head.words(ids)
    for t in range(ids.shape[1]):
        seen = np.zeros(ids.shape, bool)
        seen[:, :t + 1] = ids[:, :t + 1] != TOKENIZER.pad_id                            # the words 0..t
        context = head.context(masked_mean_pool(words, seen))
        fused = head.relation(objects, words, context, seen, objects[..., -1:])
        np.testing.assert_allclose(scores[:, t], ops.convert_to_numpy(head.scores(head.hidden(fused))),
                                   rtol=1e-4, atol=1e-4)


def test_cached_image_features_stand_in_for_the_images(object_data):
    keras.utils.set_random_seed(6)
    model = mllm.build_model(OBJECTS, TOKENIZER)
    x, y = _batch(object_data, OBJECTS)
    cached = stages.cache_image_features(model, x, batch_size=5)                        # 12 rows, 3 batches
    assert set(cached) == {"image_features", "token_ids"} and cached["token_ids"] is x["token_ids"]
    assert cached["image_features"].shape == (12, shapeworld.MAX_OBJECTS, 14)
    assert cached["image_features"].dtype == np.float32
    np.testing.assert_allclose(cached["image_features"], ops.convert_to_numpy(model.image_features(x["images"])),
                               atol=1e-5)
    np.testing.assert_allclose(ops.convert_to_numpy(model(cached)), ops.convert_to_numpy(model(x)), atol=1e-5)

    # One training step from the same weights: the same loss and the same new weights.
    start = model.get_weights()
    losses, weights = [], []
    for inputs in (x, cached):
        model.set_weights(start)
        stages.compile_for_stage(model, 2, 1e-2)
        losses.append(training.train_steps(model, inputs, y, steps=1, batch_size=12)["loss"][0])
        weights.append(model.get_weights())
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)
    for a, b in zip(*weights):
        np.testing.assert_allclose(a, b, atol=1e-5)
    assert any(not np.allclose(a, b) for a, b in zip(start, weights[1]))                # and it did train


def test_cached_image_features_errors(object_model, object_data):
    x, y = _batch(object_data, OBJECTS)
    cached = stages.cache_image_features(object_model, x)
    grid_model = mllm.build_model(TINY, TOKENIZER)
    with pytest.raises(ValueError, match="learns in stage 2"):
        stages.cache_image_features(grid_model, _batch(shapeworld.generate(2, "train", seed=0, image_size=16))[0])
    with pytest.raises(ValueError, match="vision='objects'"):
        grid_model({"image_features": cached["image_features"][:, :, :8], "token_ids": cached["token_ids"]})
    with pytest.raises(ValueError, match="keys"):
        stages.cache_image_features(object_model, cached)
    with pytest.raises(ValueError, match="image_features must have shape"):
        object_model({"image_features": cached["image_features"][..., :13], "token_ids": cached["token_ids"]})
    with pytest.raises(TypeError, match="floating-point"):
        object_model({"image_features": cached["image_features"].astype(np.int32), "token_ids": cached["token_ids"]})
    with pytest.raises(ValueError, match="expected a dict"):
        object_model({**cached, "images": x["images"]})                                   # one image side, not both
    with pytest.raises(ValueError, match="same batch size"):
        object_model({"image_features": cached["image_features"], "token_ids": cached["token_ids"][:3]})
    with pytest.raises(ValueError, match="same number of rows"):
        training.train_steps(object_model, cached, y[:3], steps=1)


def test_object_hallucination_counts_mentions_of_absent_objects():
    red_circle = shapeworld.ShapeObject("circle", "red", "large", 0.3, 0.5)
    blue_square = shapeworld.ShapeObject("square", "blue", "small", 0.7, 0.5)
    scene = shapeworld.Scene((red_circle, blue_square))
    captions = ["a red circle is to the left of a blue square",      # true: 2 mentions, 0 hallucinated
                "a blue square is to the left of a red circle",      # false relation, nothing hallucinated
                "there is a green triangle",                         # 1 of 1 hallucinated
                "a large red circle is above a small blue circle",   # 1 of 2 hallucinated
                "not a caption at all"]
    result = generation.object_hallucination(captions, [scene] * len(captions))
    assert result == {"chair_i": 2 / 7, "chair_s": 2 / 4, "mentions": 7, "unparsed": 1}


@pytest.mark.parametrize("captions,scenes,error,word", [
    (["there is a circle"], [], ValueError, "one scene per caption"),
    ([], [], ValueError, "no captions"),
    ([3], [None], TypeError, "str captions"),
])
def test_object_hallucination_rejects_bad_input(captions, scenes, error, word):
    with pytest.raises(error, match=word):
        generation.object_hallucination(captions, scenes)


# Issue #16: project_tokens / prepend_image_tokens check their inputs before TensorFlow does;
# the instruction helpers check the tokenizer and the pad id.
def _f(*shape):
    return np.ones(shape, np.float32)


@pytest.mark.parametrize("call,error,word", [
    (lambda: mllm.project_tokens(None, _f(6, 8), _f(8), _f(8, 5), _f(5)), TypeError, "features"),
    (lambda: mllm.project_tokens(_f(2, 4, 6), _f(6, 8), _f(8), _f(8, 5), _f(4)), ValueError, "do not chain"),
    (lambda: mllm.project_tokens(_f(2, 4, 6), _f(6, 8), _f(8, 1), _f(8, 5), _f(5)), ValueError, "b1"),
    (lambda: mllm.project_tokens(_f(2, 4, 6), _f(6, 8).astype(str), _f(8), _f(8, 5), _f(5)), TypeError, "w1"),
    (lambda: mllm.prepend_image_tokens(None, _f(2, 5, 4), _f(10, 4)), TypeError, "image_tokens"),
    (lambda: mllm.prepend_image_tokens(_f(2, 3, 4), _f(2, 5, 4).astype(str), _f(10, 4)), TypeError, "strings"),
    (lambda: instructions.prompt_ids("what color is the circle ?", None), TypeError, "Tokenizer"),
    (lambda: instructions.answer_only_targets(np.array([[1, 5, 6]]), np.array([1]), pad_id="0"), TypeError,
     "pad_id"),
    (lambda: instructions.answer_only_targets(np.array([[1, -5, 6]]), np.array([1])), ValueError, ">= 0"),
])
def test_bad_inputs_raise_clear_errors(call, error, word):
    with pytest.raises(error, match=word):
        call()


@pytest.mark.parametrize("captions,error", [([5], TypeError), ([b"a dog"], TypeError)])
def test_instruction_texts_checks_each_caption(captions, error):
    with pytest.raises(error, match="captions"):
        instructions.instruction_texts(captions)
