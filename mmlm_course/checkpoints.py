"""Atomic, resumable training checkpoints (used by the capstone and `mmlm-course train`).

A checkpoint is a folder ``step-00001234/`` holding the model weights
(``model.weights.h5``), the optimizer's variables (``optimizer.npz``, no pickle), the
training state (``state.json``: step, epoch, anything JSON-serialisable) and the SHA-256 of
those three files (``manifest.json``). It is written under a temporary name and renamed
into place only when complete, and ``latest.json`` is replaced atomically afterwards. A
process killed at any moment therefore leaves either the previous complete checkpoint or
the new complete one as ``latest``, never a torn one; a file damaged later (a disk error,
a flipped byte, a file copied in from another run) no longer matches its checksum, and
the checkpoint before it is used instead.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
from pathlib import Path

import numpy as np

from mmlm_course.validation import positive_int

LATEST = "latest.json"
FILES = ("model.weights.h5", "optimizer.npz", "state.json")       # what manifest.json vouches for
_NAME = re.compile(r"step-\d{8}")


def replace_atomically(path, write) -> None:
    """Call ``write(temporary)`` (a path beside ``path``, with its suffix), then move that file
    into ``path``: a kill at any moment leaves the old file or the new one, never a torn one
    (a folder in its place is removed first)."""
    path = Path(path)
    temporary = path.with_name(f".{path.stem}-{os.getpid()}{path.suffix}")
    try:
        write(temporary)
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def write_atomically(path, text: str) -> None:
    """`replace_atomically` for a text file, flushed to the disk before it replaces ``path``."""
    def write(temporary):
        with open(temporary, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
    replace_atomically(path, write)


def require_space(folder, variables) -> None:
    """OSError (no space left) unless the disk of ``folder`` has room for ``variables`` (Keras
    variables) and a margin. Checked before writing weights: on a full disk h5py, which writes
    them, can crash the whole process instead of raising an error."""
    needed = sum(int(np.prod(v.shape)) * np.dtype(v.dtype).itemsize for v in variables) * 5 // 4 + 2 ** 20
    free = shutil.disk_usage(folder).free
    if free < needed:
        raise OSError(errno.ENOSPC, f"No space left on device: {free:,} bytes free, {needed:,} needed", str(folder))


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


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
            require_space(self.folder, list(model.weights) + list(optimizer.variables))
            temporary.mkdir()
            model.save_weights(temporary / "model.weights.h5")
            arrays = {f"v{i:04d}": np.asarray(v) for i, v in enumerate(optimizer.variables)}
            np.savez(temporary / "optimizer.npz", **arrays)
            (temporary / "state.json").write_text(json.dumps(state, indent=1))
            manifest = {name: _sha256(temporary / name) for name in FILES}
            (temporary / "manifest.json").write_text(json.dumps(manifest, indent=1))
            for file in temporary.iterdir():
                with open(file, "rb") as handle:
                    os.fsync(handle.fileno())
            if final.is_dir() and not final.is_symlink():
                shutil.rmtree(final)
            elif final.exists() or final.is_symlink():
                final.unlink()
            os.replace(temporary, final)
            write_atomically(self.folder / LATEST, json.dumps({"checkpoint": final.name, "step": step}))
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
        newest first. Only ``step-NNNNNNNN`` folders inside this store count. Each one skipped
        is recorded in ``self.skipped`` as (name, problem), for the caller to report.
        """
        self.skipped: list[tuple[str, str]] = []
        candidates = []
        try:
            name = json.loads((self.folder / LATEST).read_text())["checkpoint"]
            if not isinstance(name, str) or not _NAME.fullmatch(name):
                raise ValueError(f"it names {name!r}, not a step-NNNNNNNN folder of {self.folder}")
            candidates.append(self.folder / name)
        except FileNotFoundError:
            pass
        except (OSError, ValueError, KeyError, TypeError) as error:
            self.skipped.append((LATEST, f"{type(error).__name__}: {error}"))
        candidates += sorted((p for p in self.folder.glob("step-*") if _NAME.fullmatch(p.name)), reverse=True)
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
    """Why the checkpoint in ``folder`` cannot be restored, or None when every file is the
    one that was written (its SHA-256 is the manifest's) and the state is its step's."""
    try:
        manifest = json.loads((folder / "manifest.json").read_text())
        if not isinstance(manifest, dict) or sorted(manifest) != sorted(FILES):
            return f"manifest.json lists {sorted(manifest) if isinstance(manifest, dict) else manifest!r}"
        for name in FILES:
            if _sha256(folder / name) != manifest[name]:
                return f"{name} is not the file that was written (its checksum differs)"
        state = json.loads((folder / "state.json").read_text())
    except (OSError, ValueError) as error:     # missing, a folder, unreadable, not JSON
        return f"{type(error).__name__}: {str(error)[:160]}"
    if not isinstance(state, dict) or state.get("step") != int(folder.name[len("step-"):]):
        return f"state.json is not the state of {folder.name}"
    return None
