"""Every registered exercise check accepts its reference and rejects each typical mistake."""

import numpy as np
import pytest

from mmlm_course import exercises

REGISTRY = exercises.registry()
CASES = [(exercise_id, name) for exercise_id, ex in REGISTRY.items() for name in ex.mistakes]


@pytest.mark.parametrize("exercise_id", sorted(REGISTRY))
def test_reference_passes(exercise_id):
    passed = exercises.run_check(exercise_id, REGISTRY[exercise_id].reference)
    assert passed, "a check must perform at least one comparison"


@pytest.mark.parametrize("exercise_id", sorted(REGISTRY))
def test_at_least_two_mistakes(exercise_id):
    assert len(REGISTRY[exercise_id].mistakes) >= 2


@pytest.mark.parametrize("exercise_id,mistake", CASES)
def test_typical_mistake_is_rejected(exercise_id, mistake):
    with pytest.raises(exercises.CheckFailed) as error:
        exercises.run_check(exercise_id, REGISTRY[exercise_id].mistakes[mistake])
    message = str(error.value)
    assert message.startswith(exercise_id) and "\n" not in message.strip()


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
            self.blocks = [attention.TransformerBlock(dim, num_heads, 2 * dim, causal=True) for _ in range(num_layers)]
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
