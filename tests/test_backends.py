"""The model code contains no TensorFlow: the capstone (lesson 08's multimodal model and its
training loop) trains, and lesson 07's compiled generation runs, under the JAX and PyTorch
backends of Keras with TensorFlow made unimportable, so their data arrives as NumPy.

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
MODEL_MODULES = ["attention", "encoders", "language_model", "mllm", "instructions", "grid_encoder", "relation_head",
                 "stages", "generation", "losses", "metrics", "fusion", "detector", "qa", "retrieval",
                 "retrieval_training", "capstone", "checkpoints", "audio_lm", "audiovisual"]

NO_TENSORFLOW = """
import importlib.abc
import sys


class NoTensorFlow(importlib.abc.MetaPathFinder):
    # TensorFlow absent, as on a JAX or PyTorch machine: `import tensorflow` raises
    # ImportError, and (unlike a None entry in sys.modules) "tensorflow" stays out of
    # sys.modules, which Keras reads to decide whether it runs inside a TensorFlow graph.
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "tensorflow":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


sys.meta_path.insert(0, NoTensorFlow())
import keras
assert keras.backend.backend() == sys.argv[1], keras.backend.backend()
assert "tensorflow" not in sys.modules
"""

RUN_CAPSTONE = NO_TENSORFLOW + """
from mmlm_course import capstone
overrides = dict(stage1_steps=2, stage2_steps=4, eval_examples=12)
if sys.argv[3] in ("objects", "both"):   # the ShapeWorld presets' model: object detector + relation head
    overrides.update(train_examples=128, detector_examples=64, detector_epochs=1,
                     model=dict(image_size=64, vision="objects", relation_head=True, dim=16, num_layers=1,
                                num_heads=2))
modality = "both" if sys.argv[3] == "both" else "image"     # both: lesson 09's audio side too
config = capstone.resolve_config("tiny", modality=modality, **overrides)
metrics = capstone.train(config, sys.argv[2], progress=False)
"""


@pytest.mark.parametrize("vision", ["grid", "objects", "both"])
@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_capstone_trains_without_tensorflow(backend, vision, tmp_path):
    if importlib.util.find_spec(backend) is None:
        pytest.skip(f"{backend} is not installed")
    run = tmp_path / "run"
    result = subprocess.run([sys.executable, "-c", RUN_CAPSTONE, backend, str(run), vision], cwd=ROOT,
                            env={**os.environ, "KERAS_BACKEND": backend}, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert f"backend {backend}" in result.stdout                       # the device line names the backend
    history = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    assert [r["step"] for r in history] == list(range(1, 7))
    assert all(np.isfinite(r["loss"]) and r["loss"] < 10 for r in history)
    metrics = json.loads((run / "metrics.json").read_text())
    assert 0.0 <= metrics["test"]["caption_truth"] <= 1.0 and (run / "model.keras").exists()


RUN_GENERATION = NO_TENSORFLOW + """
import numpy as np
from mmlm_course import language_model as lm

keras.utils.set_random_seed(0)
model = lm.DecoderLM(13, max_length=16, dim=16, num_layers=2, num_heads=2)
prompt = np.array([[2, 5], [2, 7], [2, 9]], np.int32)
cached, cached_logits = lm.generate(model, prompt, 6, return_logits=True)
plain, plain_logits = lm.generate(model, prompt, 6, use_cache=False, return_logits=True)
assert np.array_equal(cached, plain), (cached, plain)
assert np.allclose(cached_logits, plain_logits, atol=1e-4)
assert np.allclose(cached_logits[:, 0], np.asarray(model(prompt))[:, -1], atol=1e-4)
print("generated", cached.shape)
"""


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_compiled_generation_without_tensorflow(backend):
    """Lesson 07's generation steps are compiled by Keras for the backend (no tf.function),
    and the key-value cache gives the tokens of the full recomputation there too."""
    if importlib.util.find_spec(backend) is None:
        pytest.skip(f"{backend} is not installed")
    result = subprocess.run([sys.executable, "-c", RUN_GENERATION, backend], cwd=ROOT,
                            env={**os.environ, "KERAS_BACKEND": backend}, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "generated (3, 6)" in result.stdout


RUN_AUDIO = NO_TENSORFLOW + """
import numpy as np
from mmlm_course import audio_lm, instructions, preprocessing, stages, training

keras.utils.set_random_seed(0)
data = audio_lm.generate(8, "train", seed=0, snr_db=(5, 40), max_shift=800)
transcriber = audio_lm.CTCTranscriber()
transcriber.build()
transcriber.front_end.adapt(data.log_mels)
transcriber.compile(optimizer=keras.optimizers.Adam(1e-3))
ctc = training.train_steps(transcriber, data.log_mels, data.labels, 2, batch_size=4)
tokenizer = preprocessing.Tokenizer.for_shapeworld(extra_special=instructions.TASK_TOKENS)
for options in (dict(tokens="frames"), dict(tokens="notes", relation_head=True)):
    model = audio_lm.AudioLLaVA(len(tokenizer), num_layers=1, **options)
    model.build()
    model.load_transcriber(transcriber)
    stages.compile_for_stage(model, 2, 1e-3, total_steps=4)
    x, y = audio_lm.make_examples(data, tokenizer, model.max_text_length)
    log = training.train_steps(model, x, y, 2, batch_size=4)
    result = audio_lm.evaluate(model, tokenizer, data)
    assert np.isfinite(ctc["loss"]).all() and np.isfinite(log["loss"]).all(), (ctc, log)
print("audio", len(audio_lm.transcribe(transcriber, data.log_mels)), round(result["qa_exact_match"], 3))
"""


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_audio_language_model_trains_without_tensorflow(backend):
    """Lesson 09's CTC transcriber (keras.ops.ctc_loss) and audio LLaVA (stacked frames, and
    note tokens with the relation head) train and decode on the other backends too."""
    if importlib.util.find_spec(backend) is None:
        pytest.skip(f"{backend} is not installed")
    result = subprocess.run([sys.executable, "-c", RUN_AUDIO, backend], cwd=ROOT,
                            env={**os.environ, "KERAS_BACKEND": backend}, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "audio 8 " in result.stdout


@pytest.mark.parametrize("module", MODEL_MODULES)
def test_model_modules_use_no_tensorflow(module):
    """No TensorFlow import anywhere in the module (not even inside a function) and no
    `tf.` anywhere: compiling is left to Keras (`Model.predict_on_batch`, `fit`)."""
    tree = ast.parse((ROOT / "mmlm_course" / f"{module}.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
            assert not any(n.startswith("tensorflow") for n in names), f"{module} imports tensorflow"
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            assert node.value.id != "tf", f"{module} uses tf.{node.attr}"
