"""Checks for lesson 10: resuming at the right batch, atomic writes, caption truth.

`10.write_json_atomically` watches the learner's file operations through an audit hook
(`sys.addaudithook`: the events ``open``, ``os.rename``, ``os.remove``...), which sees
``os.replace`` however the learner reached it (``from os import replace`` included). The
hook is installed once, when this module is imported (before any learner code runs), and
records only while the check's scenario calls the learner's function.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

from mmlm_course import shapeworld
from mmlm_course.exercises import Checker, draw_cases, exercise
from mmlm_course.exercises.checker import error_message

# --------------------------------------------------------------------------- 10.resume_position


def _reference_resume_position(step, steps_per_epoch):
    return divmod(step, steps_per_epoch)


def _position_cases() -> list[tuple[int, int]]:
    from hypothesis import strategies as st

    taught = [(0, 10), (9, 10), (10, 10), (25, 10), (7, 1), (0, 1), (123, 40), (39, 40), (1_000_003, 1000)]
    return taught + draw_cases(st.tuples(st.integers(0, 10 ** 6), st.integers(1, 500)), 8)


@exercise(
    "10.resume_position",
    reference=_reference_resume_position,
    mistakes={
        "epoch and batch swapped": lambda step, spe: divmod(step, spe)[::-1],
        "1-based epoch": lambda step, spe: (step // spe + 1, step % spe),
        "batch off by one": lambda step, spe: (step // spe, step % spe + 1),
        "true division for the epoch": lambda step, spe: (step / spe, step % spe),
        "rounds the epoch up": lambda step, spe: (-(-step // spe), step % spe),
        "counts steps from 1": lambda step, spe: divmod(step - 1, spe) if step else (0, 0),
        "batch within the epoch from the wrong divisor": lambda step, spe: (step // spe, step % (spe + 1)),
        "a list [epoch, batch], not a tuple": lambda step, spe: [step // spe, step % spe],
    },
)
def _check_resume_position(c: Checker) -> None:
    for step, steps_per_epoch in _position_cases():
        what = f"position of step {step} with {steps_per_epoch} steps per epoch"
        got = c.call(step, steps_per_epoch)
        if isinstance(got, list) and len(got) == 2:
            c.fail(what, f"expected a tuple (epoch, batch), got the list {str(got)[:60]}",
                   "the text asks for a tuple: a trainer compares and unpacks it as one, and [2, 5] == (2, 5) is "
                   "False in Python; `return epoch, batch` makes a tuple")
        if not (isinstance(got, tuple) and len(got) == 2):
            c.fail(what, f"expected a tuple (epoch, batch), got {type(got).__name__} {str(got)[:60]}",
                   "return `epoch, batch`")
        values = []
        for name, value in zip(("epoch", "batch"), got):
            if isinstance(value, np.ndarray) and value.shape == ():
                value = value[()]
            if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)) \
                    or isinstance(value, (float, np.floating)) and not (np.isfinite(value) and value == int(value)):
                c.fail(what, f"the {name} is {value!r}, not a whole number",
                       "an epoch and a batch are counted in whole steps: integer division (//) and remainder (%)")
            values.append(int(value))
        c.expect_equal(what, tuple(values), divmod(step, steps_per_epoch),
                       "steps count from 0: step s is batch s mod n of epoch s div n")


# --------------------------------------------------------------------------- 10.write_json_atomically

_AUDITED = frozenset({"open", "os.rename", "os.remove", "os.truncate", "shutil.copyfile", "os.link", "os.symlink"})
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_TRUNC
_PEEK = 100_000                        # characters of a file the check reads
_AUDIT = {"log": None, "busy": False}        # log: a list while a scenario calls the learner's function


def _real(path) -> str | None:
    try:
        if isinstance(path, int):
            return None
        return os.path.realpath(os.fsdecode(os.fspath(path)))
    except Exception:                  # an odd path argument: not one the check cares about
        return None


def _peek(path: str | None) -> str | None:
    try:
        with open(path, "rb") as handle:
            return handle.read(_PEEK).decode("utf-8", "replace")
    except Exception:
        return None


def _audit(event: str, args: tuple) -> None:
    """The audit hook: records file operations while a scenario runs the learner's function."""
    state = _AUDIT
    if state["log"] is None or state["busy"] or event not in _AUDITED:
        return
    state["busy"] = True               # the hook's own file reads raise events too
    try:
        if event == "open":
            path, mode, flags = args
            writes = any(m in mode for m in "wax+") if isinstance(mode, str) else bool((flags or 0) & _WRITE_FLAGS)
            if writes and _real(path):
                state["log"].append(("open", _real(path), None, None))
        elif event == "os.rename":      # os.rename, os.replace, Path.replace, shutil.move within a file system
            src = _real(args[0])
            state["log"].append(("rename", src, _real(args[1]), _peek(src)))   # what src holds at the rename
        elif event in ("os.remove", "os.truncate"):
            state["log"].append((event.split(".")[1], _real(args[0]), None, None))
        else:
            state["log"].append(("copy" if event == "shutil.copyfile" else "link", _real(args[0]), _real(args[1]),
                                 None))
    except Exception:                  # a hook must never break the operation it watches
        pass
    finally:
        state["busy"] = False


sys.addaudithook(_audit)               # once, at import: before any learner code; a no-op until a scenario runs


def _first_data():
    return {"step": 120, "stage": 2, "losses": [2.5, 1.25], "best": None, "done": False}


def _second_data():
    return {"step": 240, "stage": 2, "losses": [2.5, 1.25, 0.75], "best": {"step": 200, "loss": 0.5}, "done": False}


def _third_data():
    return {"step": 360, "stage": 2, "losses": [], "done": True}        # no "best": the old file's must not stay


class _Unserializable:
    """Stands for a value json cannot write: the crash in the middle of a save."""


def _broken_data():
    return {"step": 300, "stage": 2, "losses": [0.25], "model": _Unserializable(), "done": True}


_SAVES = (("the first save (a new file)", _first_data), ("a second save over the first", _second_data),
          ("a save of data json cannot serialise", _broken_data), ("a save after that failed save", _third_data))
_BROKEN = 2                            # the save that must fail


def _place(path: str | None, folder: str, cwd: str | None) -> list:
    """Where a file is, as plain data: ["here", name] in the target's folder, else the kind of folder."""
    if path is None:
        return ["unknown", ""]
    parent, name = os.path.split(path)
    if parent == folder:
        return ["here", name]
    if parent == cwd:
        return ["the current working folder", name]
    if parent == os.path.realpath(tempfile.gettempdir()):
        return ["the system's temporary folder", name]
    return ["another folder", name]


def _one_save(write, target: Path, data) -> dict:
    folder = os.path.realpath(target.parent)
    log: list = []
    _AUDIT["log"] = log
    try:
        write(target, data)
        raised = None
    except NotImplementedError:
        raise
    except Exception as error:
        message = error_message(error)
        for prefix in {str(target.parents[2]), os.path.realpath(target.parents[2])}:   # the random folder
            message = message.replace(prefix, "...")
        message = message[:200]
        raised = [type(error).__name__, message]
    finally:
        _AUDIT["log"] = None
    try:
        cwd = os.path.realpath(os.getcwd())
    except OSError:                    # the learner's code removed the working folder
        cwd = None
    events = [[kind, _place(src, folder, cwd), _place(dst, folder, cwd) if dst else None, text]
              for kind, src, dst, text in log if kind != "open" or os.path.dirname(src) == folder]
    return {"raised": raised, "events": events, "content": _peek(str(target)) if target.is_file() else None,
            "listing": sorted(os.listdir(target.parent))[:20]}


def _saves(write) -> list:
    """The scenario: four saves into a fresh folder (run/checkpoints/latest.json); after each, what the
    learner's file operations were, what the target holds, and what the folder lists."""
    with tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as base:
        target = Path(base) / "run" / "checkpoints" / "latest.json"
        target.parent.mkdir(parents=True)
        results = []
        for index, (_, data) in enumerate(_SAVES):
            results.append(_one_save(write, target, data()))
            if results[-1]["raised"] and index != _BROKEN:
                break
        return results


def _decoded(c: Checker, what: str, save: dict, missing_hint: str,
             invalid_hint: str = "write the data with json.dump (or json.dumps), and close the file before the rename"):
    """The target's JSON, decoded here from the text the scenario read; any problem is a check failure."""
    content = save.get("content")
    if content is None:
        c.fail(what, f"`path` does not exist (the folder holds {save.get('listing')})", missing_hint)
    try:
        return json.loads(content)
    except (ValueError, TypeError, RecursionError) as error:
        c.fail(what, f"`path` does not hold valid JSON ({str(error)[:80]}; it starts with {str(content)[:40]!r})",
               invalid_hint)


def _expect_atomic(c: Checker, what: str, save: dict) -> None:
    events = save["events"]
    target = ["here", "latest.json"]
    if any(kind == "open" and src == target for kind, src, _, _ in events):
        c.fail(what, "`path` itself was opened for writing: a process killed during the write leaves a torn file",
               "write the JSON to a temporary file next to `path`, then os.replace(temporary, path)")
    if any(kind in ("copy", "link") and dst == target for kind, _, dst, _ in events):
        c.fail(what, "`path` was written by a copy (or a link), which fills it in place, not in one step",
               "put the finished temporary file in place with os.replace(temporary, path)")
    renames = [i for i, (kind, _, dst, _) in enumerate(events) if kind == "rename" and dst == target]
    if not renames:
        c.fail(what, "`path` was not put in place by a rename (os.replace)",
               "write a temporary file next to `path`, then os.replace(temporary, path): a rename is atomic")
    final = renames[-1]
    _, source, _, text = events[final]
    if source[0] != "here":
        c.fail(what, f"the temporary file was in {source[0]}, not in the folder of `path`",
               "a rename is atomic only within one file system, and a different folder can be another one (on "
               "Colab, Drive and the local disk are): create the temporary file in path's own folder")
    for kind, src, _, _ in events[:final]:
        if (kind in ("remove", "truncate") and src == target) or (kind == "rename" and src == target):
            c.fail(what, f"`path` was {'moved away' if kind == 'rename' else 'removed'} before the temporary file "
                   "took its place: in between there is no file at all",
                   "os.replace overwrites `path` in one step: do not delete or move the old file first")
    if text is not None:
        try:
            json.loads(text)
            complete = True
        except (ValueError, TypeError, RecursionError):
            complete = False
        if not complete:
            c.fail(what, f"when the temporary file was renamed onto `path` it held only {len(text)} characters",
                   "close (or flush) the temporary file before the rename, so it is complete when it takes "
                   "path's place")
    c.passed.append(f"{what}: atomic")


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


def _temporary_in_system_folder(path, data):
    handle = tempfile.NamedTemporaryFile("w", suffix=".json", delete=False)
    try:
        with handle:
            json.dump(data, handle)
    except TypeError:
        os.remove(handle.name)
        raise
    os.replace(handle.name, path)


def _temporary_in_parent_folder(path, data):
    temporary = Path(path).parent.parent / (Path(path).name + ".tmp")
    with open(temporary, "w", encoding="utf-8") as handle:
        json.dump(data, handle)
    os.replace(temporary, path)


def _removes_then_renames(path, data):
    temporary = Path(str(path) + ".tmp")
    with open(temporary, "w", encoding="utf-8") as handle:
        json.dump(data, handle)
    if os.path.exists(path):
        os.remove(path)
    os.rename(temporary, path)


def _renames_before_closing(path, data):
    handle = open(str(path) + ".tmp", "w", encoding="utf-8")
    json.dump(data, handle)
    os.replace(str(path) + ".tmp", path)
    handle.close()


def _copies_over(path, data):
    import shutil

    with open(str(path) + ".tmp", "w", encoding="utf-8") as handle:
        json.dump(data, handle)
    shutil.copyfile(str(path) + ".tmp", path)


def _exclusive_temporary(path, data):
    with open(str(path) + ".tmp", "x", encoding="utf-8") as handle:      # a leftover from a crash blocks every save
        json.dump(data, handle)
    os.replace(str(path) + ".tmp", path)


def _merges_into_the_old_file(path, data):
    old = json.loads(Path(path).read_text(encoding="utf-8")) if os.path.exists(path) else {}
    _reference_write_json_atomically(path, {**old, **data})


def _writes_empty_on_error(path, data):
    try:
        text = json.dumps(data)
    except TypeError:
        text = "{}"
    _reference_write_json_atomically(path, json.loads(text))


@exercise(
    "10.write_json_atomically",
    reference=_reference_write_json_atomically,
    mistakes={"writes the file in place": _direct_write, "never renames the temporary file": _never_renames,
              "serialises first, then overwrites in place": _serialize_first,
              "temporary file in the system's temporary folder (another file system on Colab)":
                  _temporary_in_system_folder,
              "temporary file in the folder above": _temporary_in_parent_folder,
              "removes the old file, then renames": _removes_then_renames,
              "renames before closing the temporary file": _renames_before_closing,
              "copies the temporary file over the target": _copies_over,
              "opens the temporary file exclusively ('x'): a leftover blocks later saves": _exclusive_temporary,
              "saves {} when the data cannot be serialised": _writes_empty_on_error,
              "merges the data into the previous file": _merges_into_the_old_file},
)
def _check_write_json_atomically(c: Checker) -> None:
    saves = c.scenario("four saves into a temporary folder", _saves)
    if not isinstance(saves, list) or not saves or not all(isinstance(s, dict) for s in saves):
        c.fail("saves", "the check could not read what your function did", "only write files")
    for index, save in enumerate(saves):
        what, make = _SAVES[index]
        raised = save.get("raised")
        if index == _BROKEN:
            after = _decoded(c, f"`path` after {what}", save, "when json.dump fails, the previous file must stay: "
                             "do not delete, move or open `path` before the new data is complete",
                             "when json.dump fails, the previous file must stay: never put a temporary file that "
                             "json.dump could not finish in its place")
            if after != _second_data():
                unsaved = isinstance(after, dict) and after.get("step") == _broken_data()["step"]
                c.fail(f"`path` after {what}",
                       "it holds the data json could not serialise, turned into something else" if unsaved
                       else f"it no longer holds the previous save (it holds {str(after)[:60]})",
                       "when json.dump fails, `path` must still hold the previous save: let the save fail "
                       "before anything touches `path`")
            c.passed.append(f"`path` after {what}")
            continue
        if raised:
            if index > _BROKEN:
                hint = "a temporary file left over by a failed save must not block the next save"
            elif "Path" in raised[1]:
                hint = "`path` is a pathlib.Path; write a temporary file next to it, then os.replace(temporary, path)"
            else:
                hint = "this data holds only what JSON can hold (numbers, lists, dicts, None): this save must succeed"
            c.fail(what, f"your function raised {raised[0]}: {raised[1]}", hint)
        written = _decoded(c, f"`path` after {what}", save,
                           "the data must end up in `path` itself: rename the temporary file onto it")
        c.expect_equal(f"`path` after {what}", written, make(),
                       "json.dump(data, file) writes the data; the file must hold exactly that, no more, no less")
        _expect_atomic(c, what, save)
    if len(saves) != len(_SAVES):
        c.fail("saves", f"only {len(saves)} of {len(_SAVES)} saves ran", "do not stop the process")


# --------------------------------------------------------------------------- 10.caption_truth_rate


def _reference_caption_truth_rate(captions, scenes):
    return float(np.mean([shapeworld.caption_is_true(c, s) for c, s in zip(captions, scenes)]))


def _truth_cases() -> list:
    """(what, captions, scenes, truths): the truths are worked out here, before any learner code runs."""
    data = shapeworld.generate(40, "test", seed=5)
    captions, scenes = list(data.captions), list(data.scenes)
    shuffled = captions[1:] + captions[:1]                   # mostly false for their scene, true for another
    nonsense = ["the picture shows a red circle"] * 5 + ["a circle is a circle"] * 5
    other = next((s for s in scenes if not shapeworld.caption_is_true(captions[0], s)), scenes[1])
    cases = [("true captions", captions, scenes), ("captions of other scenes", shuffled, scenes),
             ("captions outside the grammar", nonsense, scenes[:10]),
             ("a mix of true and shifted captions", captions[:5] + shuffled[5:12], scenes[:12]),
             ("one caption", captions[:1], scenes[:1]), ("one shifted caption", shuffled[:1], scenes[:1]),
             ("true captions and captions outside the grammar", captions[:6] + nonsense[:4], scenes[:10]),
             ("repeated captions (the same caption for several scenes)",
              captions[:1] * 3 + captions[1:2] * 2, [scenes[0], scenes[0], other, scenes[1], scenes[1]])]
    return [(what, caps, scns, [bool(shapeworld.caption_is_true(c, s)) for c, s in zip(caps, scns)])
            for what, caps, scns in cases]


def _distinct_captions_rate(captions, scenes):
    """Each distinct caption counted once (with the last scene it came with)."""
    return _reference_caption_truth_rate(*zip(*dict(zip(captions, scenes)).items()))


def _rate_among_parsing(captions, scenes):
    parsing = [(c, s) for c, s in zip(captions, scenes) if shapeworld.caption_parses(c)]
    return _reference_caption_truth_rate(*zip(*parsing)) if parsing else 0.0


def _truth_hint(got: float, captions: list, scenes: list, truths: list) -> str:
    expected = sum(truths) / len(truths)
    parsing = [t for c, t in zip(captions, truths) if shapeworld.caption_parses(c)]
    once = [{c: t for c, t in zip(captions, truths)}, {(c, s): t for c, s, t in zip(captions, scenes, truths)}]
    if got > 1 and abs(got - sum(truths)) <= 1e-6:
        return "that is the number of true captions: return their share of all captions"
    if got > 1 and abs(got - 100 * expected) <= 1e-4:
        return "that is a percentage: return the share, a float in [0, 1]"
    if len(parsing) < len(truths) and parsing and abs(got - sum(parsing) / len(parsing)) <= 1e-6:
        return ("a caption outside the grammar is a caption the model got wrong: it counts as false, and the share is "
                "of all captions")
    if any(len(distinct) < len(truths) and abs(got - sum(distinct.values()) / len(distinct)) <= 1e-6
           for distinct in once):
        return ("a caption can occur several times, with its own scene or another one: count every caption of the "
                "list, repeats included")
    return ("a caption counts only when shapeworld.caption_is_true says every statement holds in its own scene; the "
            "rate is the share of such captions")


@exercise(
    "10.caption_truth_rate",
    reference=_reference_caption_truth_rate,
    mistakes={
        "counts captions that parse": lambda caps, scenes: float(np.mean([shapeworld.caption_parses(c) for c in caps])),
        "returns a count, not a share":
            lambda caps, scenes: float(sum(shapeworld.caption_is_true(c, s) for c, s in zip(caps, scenes))),
        "compares with the reference caption":
            lambda caps, scenes: float(np.mean([c.startswith("there is") for c in caps])),
        "true in any scene counts": lambda caps, scenes: float(np.mean(
            [any(shapeworld.caption_is_true(c, s) for s in scenes) for c in caps])),
        "share of false captions": lambda caps, scenes: 1 - _reference_caption_truth_rate(caps, scenes),
        "divides by the number of scenes plus one": lambda caps, scenes: float(
            sum(shapeworld.caption_is_true(c, s) for c, s in zip(caps, scenes)) / (len(scenes) + 1)),
        "counts each distinct caption once (a dict of caption -> scene)": _distinct_captions_rate,
        "leaves the captions outside the grammar out of the share": _rate_among_parsing,
    },
)
def _check_caption_truth_rate(c: Checker) -> None:
    for what, captions, scenes, truths in _truth_cases():
        got = c.call(list(captions), list(scenes), read_only=True)
        if isinstance(got, np.ndarray) and got.shape == ():
            got = got[()]
        if isinstance(got, (bool, np.bool_)) or not isinstance(got, (int, float, np.integer, np.floating)):
            c.fail(what, f"expected a float share in [0, 1], got {type(got).__name__} {str(got)[:60]}",
                   "return the mean of the per-caption truths")
        expected, got = sum(truths) / len(truths), float(got)
        if not abs(got - expected) <= 1e-6:
            c.fail(f"truth rate of {what}", f"got {got:.6g}, expected {expected:.6g} ({sum(truths)} of "
                   f"{len(truths)} captions true of their own scene)", _truth_hint(got, captions, scenes, truths))
        c.passed.append(f"truth rate of {what}")
