"""The learner's environment: a quiet TensorFlow import, seeding and the `doctor` report.

TensorFlow 2.21 writes C++ log lines (oneDNN, CUDA probing) straight to file descriptor 2
before its own log level is read, so Jupyter shows them as red stderr in every notebook.
`setup_notebook` imports TensorFlow with that descriptor pointed at /dev/null, which keeps
notebook outputs clean and comparable by nbval.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import platform
import sys

# Set before anything imports TensorFlow; setdefault keeps a value the user chose.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

TENSORFLOW_FLOOR = (2, 16)
KERAS_FLOOR = (3, 0)


@contextlib.contextmanager
def silenced_stderr_fd():
    """Point file descriptor 2 at /dev/null inside the block (C++ logs go there)."""
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def quiet_import_tensorflow():
    """Import TensorFlow (and probe its devices) without its start-up log lines.

    Returns the `tensorflow` module, or None when TensorFlow is not installed (the
    capstone also runs under the JAX and PyTorch backends of Keras).
    """
    if "tensorflow" in sys.modules:
        return sys.modules["tensorflow"]
    try:
        with silenced_stderr_fd():
            import tensorflow as tf

            tf.config.list_physical_devices()
    except ImportError:
        return None
    return tf


def set_seed(seed: int = 0, deterministic_ops: bool = True) -> None:
    """Seed Python, NumPy and Keras; optionally make TensorFlow ops deterministic.

    Deterministic ops make a notebook print the same numbers on every run on the same
    machine, which nbval needs; they can be slower, so the GPU presets turn them off.
    """
    import keras

    keras.utils.set_random_seed(seed)
    tf = sys.modules.get("tensorflow")
    if deterministic_ops and tf is not None:
        tf.config.experimental.enable_op_determinism()


def setup_notebook(seed: int = 0) -> None:
    """First call of every course notebook: quiet TensorFlow, seeds, readable plots."""
    quiet_import_tensorflow()
    set_seed(seed)
    import matplotlib

    matplotlib.rcParams.update({"figure.dpi": 80, "axes.grid": False, "image.interpolation": "nearest"})


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def _version_tuple(version: str) -> tuple[int, int]:
    major, minor = (version.split(".") + ["0"])[:2]
    return int(major), int("".join(ch for ch in minor if ch.isdigit()) or 0)


def in_colab() -> bool:
    """True inside Google Colab."""
    return "google.colab" in sys.modules or "COLAB_RELEASE_TAG" in os.environ


def version_warnings(versions: dict) -> list[str]:
    """Known-bad set-ups, as sentences that say how to fix them (empty when all is well).

    ``versions`` maps a distribution name (tensorflow, keras, tf-keras) to its installed
    version string, or None when it is missing, as in `environment_report`.
    """
    warnings: list[str] = []
    tf_version = versions.get("tensorflow")
    if tf_version is None:
        warnings.append("TensorFlow is not installed: lessons 00-08 need it "
                        "(pip install 'tensorflow>=2.16').")
    elif _version_tuple(tf_version) < TENSORFLOW_FLOOR:
        warnings.append(f"TensorFlow {tf_version} is older than the course's floor "
                        f"{'.'.join(map(str, TENSORFLOW_FLOOR))}: pip install -U 'tensorflow>=2.16'.")
    keras_version = versions.get("keras")
    if keras_version is None or _version_tuple(keras_version) < KERAS_FLOOR:
        warnings.append(f"Keras 3 is expected but Keras {keras_version} is installed: "
                        "pip install -U 'keras>=3'.")
    if os.environ.get("TF_USE_LEGACY_KERAS", "0").lower() in ("1", "true"):
        warnings.append("TF_USE_LEGACY_KERAS is set, so tf.keras is Keras 2 (tf-keras): "
                        "unset it, the course is written for Keras 3.")
    elif versions.get("tf-keras") is not None:
        warnings.append(f"tf-keras {versions['tf-keras']} (Keras 2) is installed beside Keras 3; "
                        "harmless unless TF_USE_LEGACY_KERAS=1, but `import keras` must give 3.x.")
    return warnings


def environment_report() -> dict:
    """Versions, devices and known-bad set-ups, as a plain dict.

    Keys: python, platform, cpu_count, colab, keras_backend, versions (distribution ->
    version or None), devices (list of str), warnings (list of str from `version_warnings`;
    empty when all is well).
    """
    versions = {name: _version(name) for name in
                ("tensorflow", "keras", "tf-keras", "numpy", "jax", "torch", "mmlm-course")}
    backend = os.environ.get("KERAS_BACKEND", "tensorflow")
    return {
        "python": platform.python_version(),
        "platform": f"{platform.system()} {platform.machine()}",
        "cpu_count": os.cpu_count(),
        "colab": in_colab(),
        "keras_backend": backend,
        "versions": versions,
        "devices": _devices(backend),
        "warnings": version_warnings(versions),
    }


def _devices(backend: str) -> list[str]:
    if backend == "tensorflow":
        tf = quiet_import_tensorflow()
        if tf is None:
            return ["cpu (TensorFlow missing)"]
        return [f"{d.device_type.lower()}:{d.name.rsplit(':', 1)[-1]}" for d in tf.config.list_physical_devices()]
    if backend == "jax":
        import jax

        return [f"{d.platform}:{d.id}" for d in jax.devices()]
    if backend == "torch":
        import torch

        return ["gpu:0"] if torch.cuda.is_available() else ["cpu:0"]
    return [f"unknown backend {backend!r}"]


def has_gpu() -> bool:
    """True when the active Keras backend sees a GPU."""
    return any(d.startswith("gpu") or d.startswith("cuda") for d in _devices(os.environ.get("KERAS_BACKEND", "tensorflow")))


def format_report(report: dict) -> str:
    """The `mmlm-course doctor` text for an `environment_report()` dict."""
    lines = [
        f"Python      {report['python']} on {report['platform']} ({report['cpu_count']} CPU cores)",
        f"Colab       {'yes' if report['colab'] else 'no'}",
        f"Backend     keras backend = {report['keras_backend']}",
        f"Devices     {', '.join(report['devices'])}",
    ]
    for name, version in report["versions"].items():
        lines.append(f"  {name:<12}{version or '-'}")
    if report["warnings"]:
        lines += ["Warnings:"] + [f"  ! {w}" for w in report["warnings"]]
    else:
        lines.append("All good: no known-bad set-up found.")
    return "\n".join(lines)
