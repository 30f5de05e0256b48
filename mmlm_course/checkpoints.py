"""Atomic, resumable training checkpoints (used by the capstone and `mmlm-course train`).

A checkpoint is a folder ``step-00001234/`` holding the model weights
(``model.weights.h5``), the optimizer's variables (``optimizer.npz``, no pickle) and the
training state (``state.json``: step, epoch, anything JSON-serialisable). It is written
under a temporary name and renamed into place only when complete, and ``latest.json`` is
replaced atomically afterwards. A process killed at any moment therefore leaves either
the previous complete checkpoint or the new complete one as ``latest``, never a torn one.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np

from mmlm_course.validation import positive_int

LATEST = "latest.json"


def _write_atomically(path: Path, text: str) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(temporary, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


class CheckpointStore:
    """Save and restore (model weights, optimizer state, training state) in ``folder``.

    ``keep``: how many complete checkpoints to keep (older ones are deleted).
    """

    def __init__(self, folder, keep: int = 2):
        self.folder = Path(folder)
        self.keep = positive_int(keep, "keep")

    def save(self, model, optimizer, state: dict) -> Path:
        """Write a checkpoint for ``state["step"]`` and make it the latest."""
        step = int(state["step"])
        self.folder.mkdir(parents=True, exist_ok=True)
        final = self.folder / f"step-{step:08d}"
        temporary = self.folder / f".tmp-step-{step:08d}-{os.getpid()}"
        shutil.rmtree(temporary, ignore_errors=True)
        if not optimizer.built:  # a checkpoint taken before the first step still restores
            optimizer.build(model.trainable_variables)
        try:
            temporary.mkdir()
            model.save_weights(temporary / "model.weights.h5")
            arrays = {f"v{i:04d}": np.asarray(v) for i, v in enumerate(optimizer.variables)}
            np.savez(temporary / "optimizer.npz", **arrays)
            (temporary / "state.json").write_text(json.dumps(state, indent=1))
            for file in temporary.iterdir():
                with open(file, "rb") as handle:
                    os.fsync(handle.fileno())
            if final.exists():
                shutil.rmtree(final)
            os.replace(temporary, final)
            _write_atomically(self.folder / LATEST, json.dumps({"checkpoint": final.name, "step": step}))
        except OSError as error:                 # a full disk, a quota, a folder removed under us
            shutil.rmtree(temporary, ignore_errors=True)
            raise ValueError(f"could not write the checkpoint of step {step} in {self.folder} "
                             f"({error.strerror or error}); the previous checkpoint is kept. Free some space, "
                             "then run the same command again to resume.") from None
        self._prune()
        return final

    def latest(self) -> tuple[Path, dict] | None:
        """(checkpoint folder, its state) of the newest checkpoint that can be read, or None.

        ``latest.json`` names the newest; if it (or the pointer itself) is damaged, for
        example by a disk error or a hand-edited file, the checkpoints before it are tried
        newest first. Each one skipped is recorded in ``self.skipped`` as (name, problem),
        for the caller to report.
        """
        self.skipped: list[tuple[str, str]] = []
        candidates = []
        try:
            candidates.append(self.folder / json.loads((self.folder / LATEST).read_text())["checkpoint"])
        except FileNotFoundError:
            pass
        except (OSError, ValueError, KeyError, TypeError) as error:
            self.skipped.append((LATEST, f"{type(error).__name__}: {error}"))
        candidates += sorted((p for p in self.folder.glob("step-*") if p.is_dir()), reverse=True)
        for folder in dict.fromkeys(candidates):                   # in order, each once
            problem = _unreadable(folder)
            if problem is None:
                return folder, json.loads((folder / "state.json").read_text())
            self.skipped.append((folder.name, problem))
        return None

    def restore(self, model, optimizer=None) -> dict | None:
        """Load the latest readable checkpoint (`latest`) into a built ``model`` and
        ``optimizer``; return its training state, or None when there is nothing to resume.
        With ``optimizer=None`` only the weights are loaded (a run resuming into a new stage
        starts that stage's optimizer fresh, as an uninterrupted run does)."""
        found = self.latest()
        if found is None:
            return None
        folder, state = found
        if optimizer is None:
            model.load_weights(folder / "model.weights.h5")
            return state
        if not optimizer.built:
            optimizer.build(model.trainable_variables)
        with np.load(folder / "optimizer.npz", allow_pickle=False) as saved:
            values = [saved[f"v{i:04d}"] for i in range(len(saved.files))]
        if len(values) != len(optimizer.variables):
            raise ValueError(f"{folder}: the checkpoint has {len(values)} optimizer variables but this optimizer "
                             f"has {len(optimizer.variables)}; was the run's preset or model changed?")
        model.load_weights(folder / "model.weights.h5")
        for variable, value in zip(optimizer.variables, values):
            variable.assign(value)
        return state

    def _prune(self) -> None:
        complete = sorted(p for p in self.folder.glob("step-*") if p.is_dir())
        for old in complete[: -self.keep]:
            shutil.rmtree(old, ignore_errors=True)
        for stale in self.folder.glob(".tmp-step-*"):
            if stale.is_dir() and not stale.name.endswith(f"-{os.getpid()}"):
                shutil.rmtree(stale, ignore_errors=True)


def _unreadable(folder: Path) -> str | None:
    """Why the checkpoint in ``folder`` cannot be restored, or None when every file reads."""
    import h5py

    try:
        state = json.loads((folder / "state.json").read_text())
        if not isinstance(state, dict) or not isinstance(state.get("step"), int):
            return "state.json holds no step"
        with np.load(folder / "optimizer.npz", allow_pickle=False) as saved:
            for name in saved.files:
                saved[name]                                           # reads (and checks) every array
        with h5py.File(folder / "model.weights.h5", "r") as weights:
            weights.visititems(lambda name, item: item[()] if isinstance(item, h5py.Dataset) else None)
    except Exception as error:        # h5py, zipfile and numpy raise many kinds for a damaged file
        return f"{type(error).__name__}: {str(error)[:160]}"
    return None
