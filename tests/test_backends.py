"""The model code contains no TensorFlow: lesson 07's language model trains under the JAX and
PyTorch backends of Keras with TensorFlow made unimportable (data then arrives as NumPy).

JAX is part of the test install, so that run always happens; PyTorch is optional (its
default wheel is several GB), and its run is skipped only when torch is not installed.
"""

import ast
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
MODEL_MODULES = ["encoders", "language_model", "losses", "fusion"]

RUN = """
import sys, json
sys.modules["tensorflow"] = None          # TensorFlow absent: `import tensorflow` raises ImportError
import keras, numpy as np
assert keras.backend.backend() == sys.argv[1], keras.backend.backend()
from mmlm_course import language_model as lm
keras.utils.set_random_seed(0)
model = lm.DecoderLM(vocab_size=12, max_length=8, dim=16, num_layers=1, num_heads=2)
ids = np.random.default_rng(0).integers(1, 12, size=(64, 8)).astype("int32")
inputs, targets = lm.next_token_pairs(ids)
model.compile(optimizer=keras.optimizers.Adam(1e-2), loss=lm.next_token_loss)
history = model.fit(inputs, targets, batch_size=16, epochs=3, verbose=0)
tokens = lm.generate(model, ids[:2, :2], 4)
print(json.dumps({"loss": history.history["loss"], "tokens": np.asarray(tokens).tolist()}))
"""


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_language_model_trains_without_tensorflow(backend):
    if importlib.util.find_spec(backend) is None:
        pytest.skip(f"{backend} is not installed")
    result = subprocess.run([sys.executable, "-c", RUN, backend], cwd=ROOT,
                            env={**os.environ, "KERAS_BACKEND": backend}, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert all(np.isfinite(report["loss"])) and report["loss"][-1] < report["loss"][0]
    assert np.asarray(report["tokens"]).shape == (2, 4)


@pytest.mark.parametrize("module", MODEL_MODULES)
def test_model_modules_use_no_tensorflow_in_layers_or_at_import(module):
    """No module-level TensorFlow import, and no `tf.` inside any class (layers, models,
    losses). A backend-specific compile helper may import it lazily, as it does jax."""
    tree = ast.parse((ROOT / "mmlm_course" / f"{module}.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Import):
            assert not any(a.name.startswith("tensorflow") for a in node.names), f"{module} imports tensorflow"
        if isinstance(node, ast.ImportFrom):
            assert not (node.module or "").startswith("tensorflow"), f"{module} imports from tensorflow"
    for cls in (n for n in ast.walk(tree) if isinstance(n, ast.ClassDef)):
        for node in ast.walk(cls):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
                assert node.value.id != "tf", f"{module}.{cls.name} uses tf.{node.attr}"
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
                assert not any(n.startswith("tensorflow") for n in names), f"{module}.{cls.name} imports tensorflow"
