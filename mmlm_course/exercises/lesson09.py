"""Checks for lesson 09: resuming at the right batch, atomic writes, caption truth."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np

from mmlm_course import shapeworld
from mmlm_course.exercises import Checker, exercise


def _reference_resume_position(step, steps_per_epoch):
    return divmod(step, steps_per_epoch)


@exercise(
    "09.resume_position",
    reference=_reference_resume_position,
    mistakes={
        "epoch and batch swapped": lambda step, spe: divmod(step, spe)[::-1],
        "1-based epoch": lambda step, spe: (step // spe + 1, step % spe),
        "batch off by one": lambda step, spe: (step // spe, step % spe + 1),
    },
)
def _check_resume_position(c: Checker) -> None:
    for step, steps_per_epoch in [(0, 10), (9, 10), (10, 10), (25, 10), (7, 1), (123, 40)]:
        got = c.call(step, steps_per_epoch)
        if not (isinstance(got, tuple) and len(got) == 2):
            c.fail("result", f"expected a tuple (epoch, batch), got {got!r}", "return `epoch, batch`")
        expected = divmod(step, steps_per_epoch)
        c.expect_equal(f"position of step {step} with {steps_per_epoch} steps per epoch", tuple(int(v) for v in got),
                       expected, "steps count from 0: step s is batch s mod n of epoch s div n")


class _Unserializable:
    """Stands for a value json cannot write: the crash in the middle of a save."""


def _reference_write_json_atomically(path, data):
    path = Path(path)
    temporary = path.with_name(path.name + ".tmp")
    with open(temporary, "w", encoding="utf-8") as handle:
        json.dump(data, handle)
    os.replace(temporary, path)


def _direct_write(path, data):
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(data, handle)


def _never_renames(path, data):
    with open(str(path) + ".tmp", "w", encoding="utf-8") as handle:
        json.dump(data, handle)


def _serialize_first(path, data):
    text = json.dumps(data)
    Path(path).write_text(text)


@exercise(
    "09.write_json_atomically",
    reference=_reference_write_json_atomically,
    mistakes={"writes the file in place": _direct_write, "never renames the temporary file": _never_renames,
              "serialises first, then overwrites in place": _serialize_first},
)
def _check_write_json_atomically(c: Checker) -> None:
    replaced = []
    real_replace, real_rename = os.replace, os.rename

    def recording_replace(src, dst, *args, **kwargs):
        replaced.append(Path(dst))
        return real_replace(src, dst, *args, **kwargs)

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "latest.json"
        os.replace, os.rename = recording_replace, recording_replace
        try:
            _call_allowing_none(c, path, {"step": 120, "stage": 2})
            if not path.exists() or json.loads(path.read_text()) != {"step": 120, "stage": 2}:
                c.fail("the file after a save", "it does not hold the data", "the data must end up in `path` itself")
            c.passed.append("content")
            if Path(path).resolve() not in [p.resolve() for p in replaced]:
                c.fail("how the file was written", "`path` was not put in place with os.replace (or os.rename)",
                       "write a temporary file next to `path`, then os.replace(temporary, path): a rename is atomic")
            c.passed.append("atomic rename")
            try:
                c.candidate(path, {"step": 240, "bad": _Unserializable()})
            except TypeError:
                pass
            except NotImplementedError:
                c.call(path, {})
            if json.loads(path.read_text()) != {"step": 120, "stage": 2}:
                c.fail("the file after a save that crashed", "the previous content was destroyed",
                       "never open `path` itself for writing: a crash then leaves a half-written file")
            c.passed.append("survives a crash")
        finally:
            os.replace, os.rename = real_replace, real_rename


def _call_allowing_none(c: Checker, *args):
    """The function returns None by design: call it, turning only crashes into failures."""
    try:
        c.candidate(*args)
    except NotImplementedError:
        c.call(*args)  # reports "not attempted"
    except Exception as error:
        c.fail("save", f"your function raised {type(error).__name__}: {error}", "check the file names you use")


def _reference_caption_truth_rate(captions, scenes):
    return float(np.mean([shapeworld.caption_is_true(c, s) for c, s in zip(captions, scenes)]))


@exercise(
    "09.caption_truth_rate",
    reference=_reference_caption_truth_rate,
    mistakes={
        "counts captions that parse": lambda caps, scenes: float(np.mean([shapeworld.caption_parses(c) for c in caps])),
        "returns a count, not a share": lambda caps, scenes: float(sum(shapeworld.caption_is_true(c, s) for c, s in zip(caps, scenes))),
        "compares with the reference caption": lambda caps, scenes: float(np.mean([c.startswith("there is") for c in caps])),
    },
)
def _check_caption_truth_rate(c: Checker) -> None:
    data = shapeworld.generate(40, "test", seed=5)
    shuffled = data.captions[1:] + data.captions[:1]          # mostly false for their scene
    nonsense = ["the picture shows a red circle"] * 5 + ["a circle is a circle"] * 5
    for captions, scenes, what in [(data.captions, data.scenes, "true captions"),
                                   (shuffled, data.scenes, "captions of other scenes"),
                                   (nonsense, data.scenes[:10], "captions outside the grammar")]:
        got = c.call(list(captions), list(scenes))
        if not isinstance(got, (float, np.floating)):
            c.fail(what, f"expected a float share in [0, 1], got {type(got).__name__} {got!r}", "return the mean")
        c.expect_close(f"truth rate of {what}", np.float64(got), _reference_caption_truth_rate(captions, scenes),
                       "a caption counts only when shapeworld.caption_is_true says every statement holds in its own scene")
