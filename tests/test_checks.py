"""Exercise checks: every exercise registers typical mistakes; other correct answers pass.

That each check accepts its reference and rejects each mistake, directly and when the
grader replays it, is tested in tests/test_check_replay.py."""

import keras
import numpy as np
import pytest

from mmlm_course import exercises

REGISTRY = exercises.registry()


@pytest.mark.parametrize("exercise_id", sorted(REGISTRY))
def test_at_least_two_mistakes(exercise_id):
    assert len(REGISTRY[exercise_id].mistakes) >= 2


def _adam_as_keras_writes_it(param, grad, m, v, t, learning_rate=1e-3, beta_1=0.9, beta_2=0.999, epsilon=1e-8):
    """Keras' form: the bias correction folded into the learning rate (epsilon moves a little)."""
    m = m + (grad - m) * (1 - beta_1)
    v = v + (grad * grad - v) * (1 - beta_2)
    alpha = learning_rate * np.sqrt(1 - beta_2 ** t) / (1 - beta_1 ** t)
    return param - alpha * m / (np.sqrt(v) + epsilon), m, v


def _adam_in_place_returning_a_list(param, grad, m, v, t, learning_rate=1e-3, beta_1=0.9, beta_2=0.999,
                                    epsilon=1e-8):
    m *= beta_1
    m += (1 - beta_1) * grad
    v *= beta_2
    v += (1 - beta_2) * np.square(grad)
    return [param - learning_rate * (m / (1 - beta_1 ** t)) / (np.sqrt(v / (1 - beta_2 ** t)) + epsilon), m, v]


@pytest.mark.parametrize("answer", [_adam_as_keras_writes_it, _adam_in_place_returning_a_list],
                         ids=lambda f: f.__name__)
def test_other_correct_adam_updates_pass(answer):
    assert exercises.run_check("05.adam_step", answer)


def _block_answer(call):
    """The notebook's TransformerBlock class with a learner's ``call``."""
    import keras

    from mmlm_course import attention

    def __init__(self, embed_dim, num_heads, mlp_dim, **kwargs):
        keras.layers.Layer.__init__(self, **kwargs)
        self.norm1 = keras.layers.LayerNormalization(epsilon=1e-5)
        self.attention = attention.MultiHeadAttention(num_heads, embed_dim // num_heads)
        self.norm2 = keras.layers.LayerNormalization(epsilon=1e-5)
        self.mlp_in = keras.layers.Dense(mlp_dim, activation="gelu")
        self.mlp_out = keras.layers.Dense(embed_dim)
        self.supports_masking = True

    return type("TransformerBlock", (keras.layers.Layer,), {"__init__": __init__, "call": call})


def _block_with_add_layers(self, x, mask=None, training=None):
    import keras
    h = self.attention(self.norm1(x), mask=mask, training=training)
    x = keras.layers.Add()([x, h])
    return keras.layers.Add()([x, self.mlp_out(self.mlp_in(self.norm2(x)))])


def _block_with_context_mask(self, x, mask=None):
    h = self.norm1(x)
    x = x + self.attention(h, context=h, mask=mask, context_mask=mask)
    y = self.norm2(x)
    return x + self.mlp_out(self.mlp_in(y))


@pytest.mark.parametrize("call", [_block_with_add_layers, _block_with_context_mask], ids=lambda f: f.__name__)
def test_other_correct_transformer_blocks_pass(call):
    assert exercises.run_check("03.transformer_block", _block_answer(call))


def _gpt_answer(tied: bool):
    """Other correct decoders: a smaller MLP and bias-free head, or nanoGPT's tied head."""
    import keras
    from keras import ops

    from mmlm_course import attention

    class Answer(keras.Model):
        def __init__(self, vocab_size, max_length, dim, num_layers, num_heads, **kwargs):
            super().__init__(**kwargs)
            self.token_embedding = keras.layers.Embedding(vocab_size, dim)
            self.position_embedding = keras.layers.Embedding(max_length, dim)
            self.blocks = [attention.TransformerBlock(dim, num_heads, 4 * dim, causal=True) for _ in range(num_layers)]
            self.final_norm = keras.layers.LayerNormalization(epsilon=1e-5)
            if not tied:
                self.head = keras.layers.Dense(vocab_size, use_bias=False)

        def call(self, token_ids):
            positions = ops.arange(ops.shape(token_ids)[1])
            x = self.token_embedding(token_ids) + self.position_embedding(positions)
            for block in self.blocks:
                x = block(x)
            x = self.final_norm(x)
            return ops.matmul(x, ops.transpose(self.token_embedding.embeddings)) if tied else self.head(x)

    return Answer


@pytest.mark.parametrize("tied", [False, True], ids=["bias_free_head", "tied_head"])
def test_other_correct_decoders_pass(tied):
    assert exercises.run_check("07.decoder_lm", _gpt_answer(tied))


def _tower_answer(call):
    """The notebook's TextTower class with a learner's ``call``."""
    import keras

    from mmlm_course import attention, encoders

    def __init__(self, vocab_size, max_length, width=64, embed_dim=128, num_heads=4, **kwargs):
        keras.layers.Layer.__init__(self, **kwargs)
        self.token_embedding = keras.layers.Embedding(vocab_size, width)
        self.position_embedding = encoders.PositionEmbedding(max_length, width)
        self.block = attention.TransformerBlock(width, num_heads, 2 * width)
        self.final_norm = keras.layers.LayerNormalization(epsilon=1e-5)
        self.projection = keras.layers.Dense(embed_dim)

    return type("TextTower", (keras.layers.Layer,), {"__init__": __init__, "call": call})


def _tower_with_course_helpers(self, token_ids, training=None):
    from keras import ops

    from mmlm_course import encoders, losses
    mask = token_ids > 0
    x = self.token_embedding(token_ids)
    x = self.position_embedding(x)
    x = self.final_norm(self.block(x, mask=mask, training=training))
    return losses.l2_normalize(self.projection(encoders.masked_mean_pool(x, ops.convert_to_tensor(mask))))


def _tower_with_where_and_norm(self, token_ids):
    from keras import ops
    real = ops.expand_dims(ops.not_equal(token_ids, 0), -1)                      # (B, T, 1)
    x = self.block(self.position_embedding(self.token_embedding(token_ids)), mask=real[..., 0])
    x = ops.where(real, self.final_norm(x), 0.0)
    pooled = ops.sum(x, axis=1) / ops.cast(ops.count_nonzero(real, axis=1), x.dtype)  # (B, width)
    z = self.projection(pooled)
    return z / ops.norm(z, axis=-1, keepdims=True)


@pytest.mark.parametrize("call", [_tower_with_course_helpers, _tower_with_where_and_norm],
                         ids=lambda f: f.__name__)
def test_06_other_correct_text_towers_pass(call):
    assert exercises.run_check("06.text_tower", _tower_answer(call))


def test_06_text_tower_reference_is_the_dual_encoders_text_tower():
    """What lesson 06 says: DualEncoder.encode_texts is the exercise's tower (with text_layers blocks)."""
    from keras import ops

    from mmlm_course import retrieval

    model = retrieval.DualEncoder(12, max_length=8, embed_dim=6, text_dim=16, text_layers=1, num_heads=2)
    model.build()
    tower = REGISTRY["06.text_tower"].reference(12, 8, width=16, embed_dim=6, num_heads=2)
    token_ids = np.array([[3, 7, 2, 9, 4, 0, 0, 0], [5, 11, 6, 0, 0, 0, 0, 0]], np.int32)
    tower(token_ids)
    encoder = model.text_encoder
    pairs = [(tower.token_embedding, encoder.token_embedding), (tower.position_embedding, encoder.position_embedding),
             (tower.block, encoder.blocks[0]), (tower.final_norm, encoder.final_norm),
             (tower.projection, model.text_projection)]
    for mine, theirs in pairs:
        mine.set_weights(theirs.get_weights())
    np.testing.assert_allclose(ops.convert_to_numpy(tower(token_ids)),
                               ops.convert_to_numpy(model.encode_texts(token_ids)), atol=1e-5)


def _fusion_model_subclass(num_objects, num_features, question_length, vocab_size, num_answers):
    """04.fusion_model as a keras.Model subclass: other sizes, a hand-written masked mean."""

    class ConcatQA(keras.Model):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.object_features = keras.layers.Dense(24, activation="relu")
            self.words = keras.layers.Embedding(vocab_size, 24)
            self.hidden = keras.layers.Dense(48, activation="relu")
            self.answer = keras.layers.Dense(num_answers)

        def call(self, inputs):
            image = keras.ops.mean(self.object_features(inputs["objects"]), axis=1)
            real = keras.ops.cast(keras.ops.not_equal(inputs["token_ids"], 0), "float32")[..., None]
            question = keras.ops.sum(self.words(inputs["token_ids"]) * real, axis=1) / keras.ops.maximum(
                keras.ops.sum(real, axis=1), 1.0)
            return self.answer(self.hidden(keras.ops.concatenate([image, question], axis=-1)))

    return ConcatQA()


def _fusion_model_functional_list(num_objects, num_features, question_length, vocab_size, num_answers):
    """04.fusion_model as a functional model with a list of inputs, two hidden layers. (Flatten in place of
    the mean over the objects is a registered mistake: the slots' order would matter.)"""
    objects = keras.Input((num_objects, num_features), name="objects")
    token_ids = keras.Input((question_length,), dtype="int32", name="token_ids")
    image = keras.layers.GlobalAveragePooling1D()(keras.layers.Dense(16, activation="relu")(objects))
    question = keras.layers.GlobalAveragePooling1D()(keras.layers.Embedding(vocab_size, 8, mask_zero=True)(token_ids))
    hidden = keras.layers.Dense(64, activation="relu")(keras.layers.Concatenate()([image, question]))
    hidden = keras.layers.Dense(32, activation="relu")(hidden)
    return keras.Model([objects, token_ids], keras.layers.Dense(num_answers)(hidden))


@pytest.mark.parametrize("answer", [_fusion_model_subclass, _fusion_model_functional_list], ids=lambda f: f.__name__)
def test_04_other_correct_fusion_models_pass(answer):
    assert exercises.run_check("04.fusion_model", answer)
